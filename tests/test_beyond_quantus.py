"""Deletion, insertion, Focus and the randomisation test against Quantus 0.6.0, the outside
reference: same model, same images, same heatmaps (docs/metrics.md lists every difference).

The numbers compared are those ``gridcam.evaluate`` wrote to its per-image records, so these
tests pin the evaluation itself, not only the metric functions.
"""

from __future__ import annotations

import warnings
import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus", reason="Quantus is the outside reference (pip install quantus==0.6.0)")

from gridcam import cam, grid, models  # noqa: E402
from gridcam import metrics as M  # noqa: E402
from gridcam.data import synthetic  # noqa: E402
from gridcam.data.imagenet import ImageNetValLoc  # noqa: E402
from gridcam.data.transforms import eval_transform  # noqa: E402
from gridcam.evaluation import beyond  # noqa: E402
from gridcam.evaluation.loop import evaluate  # noqa: E402
from gridcam.runtime.files import read_jsonl  # noqa: E402

RESIZE = 48
#: 48 steps: Quantus needs h*w divisible by its features per step, 3 * h*w / 48 (48x48, 48x64)
STEPS = 48
CLASSES = 3


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create("tiny_resnet", num_classes=CLASSES).eval()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> ImageNetValLoc:
    root = synthetic.make_imagenet(tmp_path_factory.mktemp("q") / "im", classes=CLASSES,
                                   train_per_class=1, val_per_class=3, image_size=64, seed=3)
    return ImageNetValLoc(root, transform=eval_transform(RESIZE))


@pytest.fixture(scope="module")
def records(model, dataset, tmp_path_factory) -> dict[int, dict]:
    # batch size 1 (and the suite's one thread): the evaluation's heatmaps are then bit-identical
    # to the single-image ``cam.explain`` below. Bilinear maps have near-equal pixels whose order a
    # 1e-7 rounding difference (another batch composition) swaps, moving a curve point by ~1e-3.
    path = tmp_path_factory.mktemp("rec") / "p.jsonl"
    evaluate(model, dataset, methods="gradcam", metrics="deletion,insertion,focus,randomisation",
             faithfulness_steps=STEPS, deletion_baseline="zero", insertion_baseline="blur",
             batch_size=1, per_image=path)
    recs = {int(r["index"]): r for r in read_jsonl(path) if r.get("method") == "gradcam"
            and "skipped" not in r}
    assert len(recs) >= 6
    return recs


def _heat(model, x: torch.Tensor, cls: int) -> torch.Tensor:
    """(1,1,h,w) Grad-CAM of ``x`` (1,C,h,w) for ``cls``, resized to the input as the evaluation does."""
    heat, _ = cam.explain("gradcam", model, models.cam_layer(model), x, torch.tensor([[cls]]))
    return cam.upsample(heat[:, 0], tuple(x.shape[-2:]))[:, None]


def _pixel_flipping(model, x: np.ndarray, y: int, a: np.ndarray, **kw) -> np.ndarray:
    h, w = x.shape[-2:]
    metric = quantus.PixelFlipping(features_in_step=3 * h * w // STEPS, normalise=False, abs=False,
                                   disable_warnings=True, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array(metric(model=model, x_batch=x, y_batch=np.array([y]), a_batch=a,
                               channel_first=True, device="cpu"))[0]


def _copy_from(source: np.ndarray):
    """A Quantus perturb_func that sets the given features to ``source``'s (batch of one)."""
    flat = source.reshape(1, -1)

    def perturb(arr: np.ndarray, indices: np.ndarray, **_: object) -> np.ndarray:
        out = arr.copy()
        out[np.arange(arr.shape[0])[:, None], indices] = flat[0, indices]
        return out

    return perturb


def _strict(heat: torch.Tensor) -> np.ndarray:
    """The heatmap as its rank order, without ties (gridcam's order: stable, row-major)."""
    h, w = heat.shape[-2:]
    return (h * w - M.pixel_ranks(heat[:, 0]).double())[:, None].numpy()


def _item(dataset, i: int) -> tuple[torch.Tensor, int]:
    it = dataset.load(i)
    return it["image"][None], int(it["classes"][0])


def test_deletion_and_insertion_equal_quantus_pixel_flipping(model, dataset, records) -> None:
    worst = 0.0
    for i, rec in records.items():
        x, cls = _item(dataset, i)
        a = _strict(_heat(model, x, cls))
        p0 = torch.softmax(model(x).double(), 1)[0, cls].item()
        # deletion with a zero baseline: Quantus's own default replacement, value 0.0
        q = _pixel_flipping(model, x.numpy(), cls, a, perturb_baseline=0.0)
        got = np.array(rec["deletion_curve"])
        assert len(got) == STEPS + 1 and len(q) == STEPS  # Quantus has no point for the unperturbed image
        worst = max(worst, float(np.abs(got[1:] - q).max()), abs(got[0] - p0))
        # the AUC: Quantus's curve with the unperturbed point in front, trapezoid over [0, 1]
        assert rec["deletion"] == pytest.approx(np.trapezoid(np.r_[p0, q]) / STEPS, abs=2e-7)
        # insertion from the blurred image: Quantus starting from it, putting x's values back
        xb = M.gaussian_blur(x).numpy()
        qi = _pixel_flipping(model, xb, cls, a, perturb_func=_copy_from(x.numpy()))
        worst = max(worst, float(np.abs(np.array(rec["insertion_curve"])[1:] - qi).max()))
    # records keep 6 decimals; the forwards differ by float rounding (other batch compositions)
    assert worst < 1e-6


def test_ties_are_the_one_difference_of_the_order(model, dataset, records) -> None:
    """Grad-CAM maps have many equal values (zeros after the ReLU). Quantus orders ties with
    numpy's unstable argsort, gridcam keeps row-major order: they remove different pixels at a
    step that splits a run of equal values, and the same ones at every other step."""
    splits = 0
    for i, rec in records.items():
        x, cls = _item(dataset, i)
        heat = _heat(model, x, cls)
        q = _pixel_flipping(model, x.numpy(), cls, heat.numpy(), perturb_baseline=0.0)
        s = torch.sort(heat.flatten(), descending=True).values
        m = M.step_pixels(s.numel(), STEPS)[1:]
        split = torch.tensor([0 < k < s.numel() and bool(s[k - 1] == s[k]) for k in m.tolist()])
        got = np.array(rec["deletion_curve"])[1:]
        assert np.abs(got[~split.numpy()] - q[~split.numpy()]).max() < 1e-6
        splits += int(split.sum())
    assert splits > 0  # the data do exercise ties


def test_region_perturbation_with_one_pixel_patches(model) -> None:
    """Quantus's region perturbation, patch 1 and every region evaluated, is the deletion curve
    with one pixel a step, as differences ``p_0 - p_k``."""
    torch.manual_seed(1)
    x = torch.randn(1, 3, 12, 12)
    heat = torch.rand(1, 1, 12, 12)  # continuous: no ties
    c = M.perturbation_curves(lambda v: model(v), x, heat[:, 0], torch.tensor([0]), torch.tensor([2]),
                              steps=144, deletion="zero", insertion=None, batch=50).deletion[0]
    metric = quantus.RegionPerturbation(patch_size=1, regions_evaluation=144, order="morf",
                                        perturb_baseline=0.0, normalise=False, abs=False,
                                        disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = np.array(metric(model=model, x_batch=x.numpy(), y_batch=np.array([2]),
                            a_batch=heat.numpy(), channel_first=True, device="cpu"))[0]
    assert np.abs((c[0] - c[1:]).numpy() - q).max() < 1e-6


def test_mean_baseline_differs_from_quantus_mean(model, dataset) -> None:
    """gridcam's "mean" is each channel's mean of the original image; Quantus's "mean" is the mean
    over all channels of the array as perturbed so far (it drifts as pixels are replaced)."""
    x, cls = _item(dataset, 0)
    heat = _heat(model, x, cls)
    a = _strict(heat)
    ours = M.perturbation_curves(lambda v: model(v), x, heat[:, 0], torch.tensor([0]),
                                 torch.tensor([cls]), steps=STEPS, deletion="mean", insertion=None,
                                 batch=16).deletion[0, 1:].numpy()
    same = _pixel_flipping(model, x.numpy(), cls, a,
                           perturb_func=_copy_from(M.baseline_images(x, "mean").numpy()))
    theirs = _pixel_flipping(model, x.numpy(), cls, a, perturb_baseline="mean")
    assert np.abs(ours - same).max() < 1e-6
    assert np.abs(ours - theirs).max() > 1e-3


def test_focus_equals_quantus(model, dataset, records) -> None:
    src = beyond.MosaicSource(dataset, seed=0)
    presence = dataset.presence_matrix()
    checked = 0
    for i, rec in records.items():
        item = src.load(i)
        plan, cls = item["focus"][0], int(item["classes"][0])
        assert rec["focus_images"] == plan["members"] and plan["members"][plan["quadrant"]] == i
        # two images of the class (the item and its partner) and two without it
        assert [bool(presence[j, cls]) for j in plan["members"]].count(True) == 2
        q = torch.tensor([plan["quadrant"]])
        mosaic = grid.compose(item["image"][None], plan["others"][None], q)
        heat = _heat(model, mosaic, cls)
        cells = np.zeros(4, dtype=int)
        cells[plan["quadrant"]] = 1
        cells[[c for c in range(4) if c != plan["quadrant"]][plan["partner"]]] = 1
        metric = quantus.Focus(normalise=False, abs=False, disable_warnings=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = metric(model=model, x_batch=mosaic.numpy(), y_batch=np.array([cls]),
                            a_batch=heat.numpy(), custom_batch=[tuple(cells)], channel_first=True,
                            device="cpu")[0]
        # Quantus divides by (total + 1e-9): relative difference <= 1e-9 / total
        assert rec["focus"] == pytest.approx(float(theirs), rel=1e-6)
        checked += 1
    assert checked >= 6


def test_randomisation_equals_quantus_spearman(model, dataset, records) -> None:
    from quantus.functions.similarity_func import correlation_spearman

    twin, twin_layer, names = beyond.randomised_copy(model, models.cam_layer(model), seed=0)
    assert names == ["layer4.0", "fc"]
    scored = 0
    for i, rec in records.items():
        x, cls = _item(dataset, i)
        a = _heat(model, x, cls).flatten().numpy()
        heat_r, _ = cam.explain("gradcam", twin, twin_layer, x, torch.tensor([[cls]]))
        b = cam.upsample(heat_r[:, 0], tuple(x.shape[-2:])).flatten().numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = float(correlation_spearman(a, b))
        if "randomisation" in rec:
            assert rec["randomisation"] == pytest.approx(ref, abs=1e-9)
            scored += 1
        else:  # a constant map: scipy (so Quantus) gives NaN, gridcam skips and counts the pair
            assert rec["randomisation_skipped"] == "constant_heatmap" and np.isnan(ref)
    assert scored >= 2
