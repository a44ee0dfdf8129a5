"""Exact cases for gridcam.training.steps (gc_step's defaults, devices, draws, validity masks and
variant; amp_setup's choices), written against surviving mutants of `make mutation`."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
import torch.nn.functional as F

from gridcam import grid, models
from gridcam.training import steps

from test_train_steps import _reference_cam, _reference_composite, _reference_target


def _model(classes: int = 5, pooling: str = "avg", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.create("tiny_resnet", num_classes=classes, pooling=pooling)


def _x(b: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------- lam == 0
def test_lambda_zero_returns_the_loss_parts_and_logits():
    model = _model(classes=4)
    x = _x(3)
    multi = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    out = steps.gc_step(model, models.cam_layer(model), x, multi, lam=0.0, multi_label=True)
    logits = model(x)
    expected = 80 * F.binary_cross_entropy_with_logits(logits, multi)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.cls_loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not out.cls_loss.requires_grad
    torch.testing.assert_close(out.logits, logits.detach())


def test_outputs_live_on_the_images_device():
    # "meta" stands in for an accelerator: every tensor gc_step makes must follow the images.
    model = _model().to("meta")
    x = torch.empty(2, 3, 64, 64, device="meta")
    y = torch.empty(2, dtype=torch.long, device="meta")
    out = steps.gc_step(model, models.cam_layer(model), x, y, lam=0.0)
    assert {t.device.type for t in (out.loss, out.cls_loss, out.gc_loss, out.gc_samples)} == {"meta"}
    negs = torch.empty(2, 3, 3, 64, 64, device="meta")
    q = torch.tensor([0, 3], device="meta")
    out = steps.gc_step(model, models.cam_layer(model), x, y, cam_classes=torch.tensor([0, 1]), lam=1.0,
                        negatives=negs, quadrants=q)
    assert out.cam_classes.device.type == "meta" and out.gc_samples.device.type == "meta"
    out = steps.gc_step(model, models.cam_layer(model), x, y, cam_classes=torch.tensor([0, 1]), lam=1.0,
                        negatives=negs)  # quadrants drawn on the images' device
    assert out.quadrants.device.type == "meta"


# ------------------------------------------------------------------------------- lam > 0
def test_default_lambda_is_the_papers_25():
    model = _model()
    out = steps.gc_step(model, models.cam_layer(model), _x(), torch.tensor([0, 1, 2, 3]),
                        generator=torch.Generator().manual_seed(0))
    assert out.gc_loss.item() > 0
    assert out.loss.item() == pytest.approx(out.cls_loss.item() + 25.0 * out.gc_loss.item(), rel=1e-6)


def test_cam_classes_are_returned_as_long():
    model = _model()
    out = steps.gc_step(model, models.cam_layer(model), _x(), torch.tensor([0, 1, 2, 3]),
                        cam_classes=torch.tensor([1, 1, 2, 0], dtype=torch.int32), lam=1.0,
                        generator=torch.Generator().manual_seed(0))
    assert out.cam_classes.dtype == torch.long and out.cam_classes.tolist() == [1, 1, 2, 0]


def test_in_batch_draws_come_from_the_generator_only():
    """Negatives then quadrants are drawn from ``generator`` in that order, whatever the global RNG:
    the step equals one given exactly those negatives and quadrants."""
    model = _model()
    layer = models.cam_layer(model)
    x, y = _x(6), torch.tensor([0, 1, 2, 0, 1, 3])
    gen = torch.Generator().manual_seed(7)
    idx, _ = grid.sample_negatives(y, y, num=3, generator=gen)
    q = grid.random_quadrants(6, generator=gen)
    ref = steps.gc_step(model, layer, x, y, lam=2.0, negatives=x[idx], quadrants=q)
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        out = steps.gc_step(model, layer, x, y, lam=2.0, generator=torch.Generator().manual_seed(7))
        assert out.quadrants.tolist() == q.tolist()
        assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)


def test_multi_label_cam_class_comes_from_the_generator():
    model = _model(classes=8)
    g = torch.Generator().manual_seed(3)
    targets = (torch.rand(12, 8, generator=g) < 0.6).float()
    targets[:, 0] = 1  # every row has several present categories
    expected, _ = grid.choose_present_class(targets, generator=torch.Generator().manual_seed(5))
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        out = steps.gc_step(model, models.cam_layer(model), _x(12), targets, lam=1.0, multi_label=True,
                            generator=torch.Generator().manual_seed(5))
        assert out.cam_classes.tolist() == expected.tolist()


def test_valid_combines_the_callers_mask_present_classes_and_negatives():
    model = _model(classes=4)
    # row 2 has no category (not present); the caller excludes row 1; every class is absent from
    # some other row, so every row with a category has in-batch negatives.
    targets = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.float32)
    valid = torch.tensor([True, False, True, True])
    out = steps.gc_step(model, models.cam_layer(model), _x(), targets, lam=1.0, multi_label=True,
                        valid=valid, generator=torch.Generator().manual_seed(0))
    assert int(out.gc_samples) == 2
    out = steps.gc_step(model, models.cam_layer(model), _x(), torch.tensor([0, 1, 2, 3]), lam=1.0,
                        valid=valid, generator=torch.Generator().manual_seed(0))
    assert int(out.gc_samples) == 3


def test_classic_variant_is_used_for_both_heatmaps():
    model = _model(pooling="max")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 3, 64, 64, generator=g)
    negs = torch.randn(4, 3, 3, 64, 64, generator=g)
    y, q = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 3, 0, 2])
    out = steps.gc_step(model, models.cam_layer(model), x, y, lam=10.0, negatives=negs, quadrants=q,
                        variant="classic")
    # Classic Grad-CAM of a max-pooled ResNet: d logit_c / dA_k is W_ck at the (a.s. unique) argmax
    # of channel k, so its spatial mean is W_ck / (h w) and the classic map is ReLU(W_c . A) / (h w):
    # the formula of _reference_cam (the elementwise map would be sparse instead).
    with torch.no_grad():
        logits, t = _reference_cam(model, x, y)
        _, u = _reference_cam(model, _reference_composite(x, negs, q), y)
    gc = (u - _reference_target(t, q)).abs().mean()
    assert out.gc_loss.item() == pytest.approx(gc.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(F.cross_entropy(logits, y).item() + 10.0 * gc.item(), rel=1e-5)


class _OddMap(torch.nn.Module):
    """A 3x3 valid conv as CAM layer: 8x8 images give a 6x6 map but their 16x16 composite a 14x14
    one, not 12x12, so L_gc compares the maps resized to pixels (the AlexNet case)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer4 = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer4(x).mean(dim=(-2, -1)))


def test_maps_not_a_2x2_grid_are_compared_at_pixel_resolution():
    model = _OddMap()
    g = torch.Generator().manual_seed(6)
    x, negs = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 3, 8, 8, generator=g)
    y, q = torch.tensor([0, 2]), torch.tensor([2, 1])
    out = steps.gc_step(model, model.layer4, x, y, lam=1.0, negatives=negs, quadrants=q)
    with torch.no_grad():
        _, t = _reference_cam(model, x, y)  # (2,6,6)
        _, u = _reference_cam(model, _reference_composite(x, negs, q), y)  # (2,14,14)
    assert t.shape == (2, 6, 6) and u.shape == (2, 14, 14)
    t_px = F.interpolate(t[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    u_px = F.interpolate(u[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    gc = (u_px - _reference_target(t_px, q)).abs().mean()
    assert out.gc_loss.item() == pytest.approx(gc.item(), rel=1e-5)


# ------------------------------------------------------------------------------- amp_setup
def test_amp_setup_choices_on_cuda(monkeypatch):
    """The choice is made from the device and the flag alone, so it is checked here without a GPU
    (the autocast objects are only built, never entered)."""
    cuda = torch.device("cuda")
    autocast, scaler = steps.amp_setup(cuda, False)
    assert scaler is None and isinstance(autocast(), contextlib.nullcontext)
    with warnings.catch_warnings():  # without a GPU: "CUDA is not available", harmless here
        warnings.simplefilter("ignore", UserWarning)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        autocast, scaler = steps.amp_setup(cuda, True)
        ctx = autocast()
        assert scaler is None
        assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
        autocast, scaler = steps.amp_setup(cuda, True)
        ctx = autocast()
        assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.float16
        assert isinstance(scaler, torch.amp.GradScaler) and scaler._device == "cuda"
