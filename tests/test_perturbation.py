"""Perturbation methods (gridcam.cam.perturbation): RISE, occlusion, extremal perturbation on
models whose answer is known, occlusion against Captum, seeding and chunking invariance."""

import pytest
import torch
from torch import nn

from gridcam.cam import perturbation as P
from gridcam.errors import GridcamError


class PatchNet(nn.Module):
    """Class 0's logit = sum over channels of f(x) inside one patch; class 1's is a constant.
    ``square=True`` uses f(x) = x^2 (so blurring the patch lowers it), else f(x) = x."""

    def __init__(self, top, left, size, square=False, scale=1.0):
        super().__init__()
        self.box = (slice(top, top + size), slice(left, left + size))
        self.square, self.scale = square, scale

    def forward(self, x):
        patch = x[:, :, self.box[0], self.box[1]]
        score = (patch ** 2 if self.square else patch).sum(dim=(1, 2, 3)) * self.scale
        return torch.stack([score, torch.ones_like(score)], dim=1)


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).amax(dim=(2, 3)))


def test_rise_with_all_ones_masks_is_the_probability_over_p():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.randn(2, 3, 12, 10)
    targets = torch.tensor([[0, 4], [2, 2]])
    heat, logits = P.explain_rise(model, None, x, targets, masks=torch.ones(6, 12, 10), p=0.5,
                                  method_batch=4)
    probs = torch.softmax(model(x), 1).gather(1, targets).detach()
    torch.testing.assert_close(heat, (probs / 0.5)[..., None, None].expand(2, 2, 12, 10))
    torch.testing.assert_close(logits, model(x).detach())


def test_rise_masks_are_seeded_and_independent_of_chunking():
    torch.manual_seed(1)
    model = TinyCNN().eval()
    x = torch.randn(3, 3, 16, 16)
    targets = torch.tensor([1, 2, 3])
    a, _ = P.explain_rise(model, None, x, targets, num_masks=20, cells=4, method_batch=3, seed=7)
    b, _ = P.explain_rise(model, None, x, targets, num_masks=20, cells=4, method_batch=64, seed=7)
    c, _ = P.explain_rise(model, None, x[1:2], targets[1:2], num_masks=20, cells=4,
                          generator=torch.Generator().manual_seed(7))
    d, _ = P.explain_rise(model, None, x, targets, num_masks=20, cells=4, seed=8)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[1:2], c)
    assert not torch.allclose(a, d)
    grids, dy, dx = P.rise_masks(50, (16, 16), cells=4, seed=0)
    masks = P._expand_masks(grids, dy, dx, (16, 16))
    assert masks.shape == (50, 16, 16) and float(masks.min()) >= 0 and float(masks.max()) <= 1
    assert int(dy.max()) < 4 and int(dx.max()) < 4


def test_rise_finds_the_patch_the_model_looks_at():
    model = PatchNet(8, 16, 8, scale=4 / 192).eval()  # logit 0..4: the softmax does not saturate
    x = torch.ones(1, 3, 32, 32)
    heat, _ = P.explain_rise(model, None, x, torch.tensor([0]), num_masks=400, cells=4, seed=0)
    blocks = torch.nn.functional.avg_pool2d(heat[0], 8)[0]  # (4,4) means of 8x8 blocks
    assert int(blocks.argmax()) == 1 * 4 + 2  # the patch's block
    outside = (blocks.sum() - blocks[1, 2]) / 15
    assert blocks[1, 2] > outside + 0.05, (float(blocks[1, 2]), float(outside))


def test_occlusion_on_a_model_that_looks_at_one_patch():
    """Disjoint 8x8 windows, one of them the patch: the map is the patch's score there, 0 else."""
    torch.manual_seed(2)
    model = PatchNet(8, 16, 8).eval()
    x = torch.rand(2, 3, 32, 32)
    heat, logits = P.explain_occlusion(model, None, x, torch.tensor([[0, 1], [0, 0]]), window=8,
                                       stride=8, method_batch=5)
    want = torch.zeros(2, 32, 32)
    want[:, 8:16, 16:24] = x[:, :, 8:16, 16:24].sum(dim=(1, 2, 3))[:, None, None]
    torch.testing.assert_close(heat[:, 0], want)
    torch.testing.assert_close(heat[0, 1], torch.zeros(32, 32))  # class 1 ignores the image
    torch.testing.assert_close(heat[1, 1], want[1])


@pytest.mark.parametrize("size,window,stride", [((17, 15), 5, 3), ((12, 12), 4, 4)])
def test_occlusion_matches_captum(size, window, stride):
    captum = pytest.importorskip("captum.attr")
    torch.manual_seed(3)
    model = TinyCNN().eval()
    x = torch.randn(2, 3, *size)
    targets = torch.tensor([[1, 3], [0, 4]])
    heat, _ = P.explain_occlusion(model, None, x, targets, window=window, stride=stride,
                                  baseline=0.0, method_batch=7)
    occ = captum.Occlusion(model)
    for t in range(2):
        ref = occ.attribute(x, sliding_window_shapes=(3, window, window),
                            strides=(3, stride, stride), baselines=0.0, target=targets[:, t],
                            perturbations_per_eval=16)
        # Captum's window spans all 3 channels, so its 3 channel maps are equal: take the mean.
        torch.testing.assert_close(heat[:, t], ref.mean(dim=1).clamp_min(0), atol=1e-5, rtol=1e-5)


def test_occlusion_rejects_bad_windows():
    model = TinyCNN().eval()
    with pytest.raises(GridcamError, match="stride <= window"):
        P.explain_occlusion(model, None, torch.rand(1, 3, 8, 8), torch.tensor([0]), window=4,
                            stride=5)
    with pytest.raises(GridcamError, match="image side 8"):
        P.explain_occlusion(model, None, torch.rand(1, 3, 8, 8), torch.tensor([0]), window=9)


def test_extremal_perturbation_finds_the_patch():
    torch.manual_seed(4)
    model = PatchNet(16, 8, 8, square=True).eval()
    x = torch.randn(2, 3, 32, 32)  # noise: blurring the patch lowers sum(x^2) there
    heat, logits = P.explain_extremal_perturbation(
        model, None, x, torch.tensor([[0], [0]]), area=64 / 1024, iterations=40, step=4,
        blur=3.0, lr=0.1)
    assert heat.shape == (2, 1, 32, 32) and float(heat.min()) >= 0 and float(heat.max()) <= 1
    for b in range(2):
        m = heat[b, 0]
        inside = m[16:24, 8:16].mean()
        outside = (m.sum() - m[16:24, 8:16].sum()) / (1024 - 64)
        assert inside > 0.5 and outside < 0.15, (float(inside), float(outside))
        y, xx = divmod(int(m.argmax()), 32)
        assert 14 <= y < 26 and 6 <= xx < 18


def test_extremal_perturbation_is_deterministic_and_chunk_independent():
    torch.manual_seed(5)
    model = TinyCNN().eval()
    x = torch.randn(2, 3, 16, 16)
    targets = torch.tensor([[0, 1], [2, 3]])
    kw = dict(iterations=3, step=4, blur=2.0)
    a, _ = P.explain_extremal_perturbation(model, None, x, targets, method_batch=1, **kw)
    b, _ = P.explain_extremal_perturbation(model, None, x, targets, method_batch=64, **kw)
    c, _ = P.explain_extremal_perturbation(model, None, x, targets, method_batch=1, **kw)
    assert torch.equal(a, c)
    # Chunks are optimised independently, but Adam's first steps are ~lr * sign(gradient), so
    # rounding differences of near-zero gradients between batch sizes show as small differences.
    torch.testing.assert_close(a, b, atol=2e-2, rtol=0)
    with pytest.raises(GridcamError, match="0 < area < 1"):
        P.explain_extremal_perturbation(model, None, x, targets, area=1.5)
