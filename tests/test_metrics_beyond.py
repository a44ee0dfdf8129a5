"""Deletion, insertion, Focus, Spearman and the exact mean on inputs worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gridcam import metrics as M


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _linear_model() -> nn.Module:
    """Two classes, logits [sum of the pixels, 0]: P(class 0) = sigmoid(sum of the pixels)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
        model[1].bias.zero_()
    return model.double().eval()


#: a 1-channel 2x2 image and a heatmap ordering its pixels (0,0), (0,1), (1,0), (1,1)
IMAGE = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
HEAT = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])


def _curves(steps: int, deletion: str | None = "zero", insertion: str | None = "zero",
            heat: torch.Tensor = HEAT, batch: int = 3) -> M.Curves:
    return M.perturbation_curves(_linear_model(), IMAGE, heat, torch.tensor([0]), torch.tensor([0]),
                                 steps=steps, deletion=deletion, insertion=insertion, batch=batch)


def test_deletion_and_insertion_by_hand() -> None:
    c = _curves(4)
    # deletion: remove 1 (value 1), then 2, then 3, then 4 -> pixel sums 10, 9, 7, 4, 0
    want_del = [_sigmoid(v) for v in (10, 9, 7, 4, 0)]
    # insertion from zero: add 1, 2, 3, 4 -> sums 0, 1, 3, 6, 10
    want_ins = [_sigmoid(v) for v in (0, 1, 3, 6, 10)]
    assert c.deletion[0].tolist() == pytest.approx(want_del, abs=1e-15)
    assert c.insertion[0].tolist() == pytest.approx(want_ins, abs=1e-15)
    auc = M.curve_auc(c.deletion)
    assert float(auc[0]) == pytest.approx((sum(want_del) - (want_del[0] + want_del[-1]) / 2) / 4)
    # forwards: the image and the zero baseline once, 3 inner points per curve
    assert c.forwards == 2 + 2 * 3


def test_steps_that_do_not_divide_the_pixels_and_ties() -> None:
    assert M.step_pixels(4, 3).tolist() == [0, 1, 2, 4]  # floor(k * 4 / 3)
    assert M.step_pixels(10, 4).tolist() == [0, 2, 5, 7, 10]
    c = _curves(3, insertion=None)
    assert c.deletion[0].tolist() == pytest.approx([_sigmoid(v) for v in (10, 9, 7, 0)], abs=1e-15)
    # a flat heatmap: ties keep row-major pixel order, i.e. remove 1, 2, 3, 4
    flat = _curves(4, insertion=None, heat=torch.ones(1, 2, 2))
    assert flat.deletion[0].tolist() == pytest.approx([_sigmoid(v) for v in (10, 9, 7, 4, 0)], abs=1e-15)
    assert M.pixel_ranks(torch.tensor([[[0.5, 1.0], [0.5, 0.2]]])).tolist() == [[[1, 0], [2, 3]]]


def test_batch_size_and_pair_order_do_not_change_the_curves() -> None:
    heat = torch.stack([HEAT[0], HEAT[0].flip(0), torch.ones(2, 2)])
    kw = dict(steps=4, deletion="mean", insertion="zero")
    one = M.perturbation_curves(_linear_model(), IMAGE, heat, torch.zeros(3, dtype=torch.long),
                                torch.zeros(3, dtype=torch.long), batch=1, **kw)
    many = M.perturbation_curves(_linear_model(), IMAGE, heat, torch.zeros(3, dtype=torch.long),
                                 torch.zeros(3, dtype=torch.long), batch=64, **kw)
    assert torch.equal(one.deletion, many.deletion) and torch.equal(one.insertion, many.insertion)
    # mean baseline: deleted pixels become 2.5; removing 1, 2, 3, 4 -> sums 10, 11.5, 12, 11.5, 10
    assert one.deletion[0].tolist() == pytest.approx([_sigmoid(v) for v in (10, 11.5, 12, 11.5, 10)],
                                                     abs=1e-15)


def test_baselines() -> None:
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6)
    assert torch.equal(M.baseline_images(x, "zero"), torch.zeros_like(x))
    mean = M.baseline_images(x, "mean")
    assert torch.allclose(mean[1, 2], x[1, 2].mean().expand(5, 6))
    const = torch.full((1, 3, 7, 9), 0.25)
    assert torch.allclose(M.gaussian_blur(const), const)  # weights sum to 1, borders replicated
    blurred = M.gaussian_blur(x)
    assert blurred.shape == x.shape and float(blurred.std()) < float(x.std())
    with pytest.raises(ValueError, match="unknown baseline"):
        M.baseline_images(x, "black")
    with pytest.raises(ValueError, match="odd"):
        M.gaussian_blur(x, taps=4)


def test_curve_auc_is_the_trapezoid_over_unit_interval() -> None:
    c = torch.tensor([[1.0, 0.5, 0.0], [0.2, 0.2, 0.2]])
    assert M.curve_auc(c).tolist() == pytest.approx([0.5, 0.2])
    with pytest.raises(ValueError):
        M.curve_auc(torch.ones(1, 1))


def test_focus_by_hand() -> None:
    cells = torch.zeros(2, 2, 2, dtype=torch.bool)
    cells[:, 0, 1] = True  # top right
    cells[:, 1, 0] = True  # bottom left
    heat = torch.tensor([[[1.0, 2.0, 3.0, -4.0], [0, 0, 0, 0], [5, 0, 0, 0], [0, 0, 0, 0]],
                         [[-1.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]])
    f = M.focus(heat, cells)
    # positive relevance: TL 1 + 2, TR 3 (the -4 does not count), BL 5 -> (3 + 5) / 11
    assert float(f[0]) == pytest.approx(8 / 11, abs=1e-15)
    assert math.isnan(float(f[1]))  # no positive relevance
    # odd sizes split at H // 2, W // 2 (as Quantus): row 1 of 3 is in the bottom half
    odd = torch.zeros(1, 3, 3)
    odd[0, 1, 1] = 1.0
    br = torch.zeros(1, 2, 2, dtype=torch.bool)
    br[0, 1, 1] = True
    assert float(M.focus(odd, br)[0]) == 1.0


def test_spearman_by_hand_and_against_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    a = torch.tensor([[1.0, 2, 3, 4], [1.0, 1, 2, 0]])
    b = torch.tensor([[4.0, 3, 2, 1], [1.0, 2, 3, 0]])
    rho = M.spearman(a, b)
    assert float(rho[0]) == pytest.approx(-1.0)
    # ties: ranks of [1, 1, 2, 0] are [2.5, 2.5, 4, 1] -> rho = 0.9487 (= 3 / sqrt(10))
    assert float(rho[1]) == pytest.approx(3 / math.sqrt(10))
    assert M.average_ranks(torch.tensor([[3.0, 1, 3, 2]])).tolist() == [[3.5, 1.0, 3.5, 2.0]]
    assert math.isnan(float(M.spearman(torch.ones(1, 5), torch.arange(5.0)[None])[0]))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (5, 40), generator=g).float()
    y = torch.randint(0, 4, (5, 40), generator=g).float()
    ref = [scipy_stats.spearmanr(x[i].numpy(), y[i].numpy()).statistic for i in range(5)]
    assert M.spearman(x, y).tolist() == pytest.approx(ref, abs=1e-12)


def test_exact_mean_merges_in_any_order() -> None:
    vals = [0.1, 0.2, 0.7, -0.3, 1.0 / 3]
    one = M.ExactMean()
    one.add(vals)
    a, b = M.ExactMean(), M.ExactMean()
    a.add(vals[3:])
    b.add(vals[:3])
    b.skip("constant_heatmap", 2)
    merged = M.ExactMean.from_state(a.state()).merge(b)
    assert merged.fixed == one.fixed and merged.pairs == 5
    assert merged.skipped == {"constant_heatmap": 2}
    assert merged.mean() == pytest.approx(sum(vals) / 5, abs=1e-15)
    assert M.ExactMean().mean() is None
