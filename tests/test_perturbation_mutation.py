"""Perturbation methods (gridcam.cam.perturbation) against hand-computed answers and references
written here: RISE's draws and masks, the Gaussian blur and the smooth mask, occlusion's window
placement, extremal perturbation's optimisation loop; defaults, validation messages, dtypes, the
``method_batch`` cap and the progress bar's counts. Written to kill the mutants that survived
tests/test_perturbation.py (issue 15)."""

import math
import re
import warnings

import pytest
import torch
from torch import nn

from gridcam.cam import perturbation as P
from gridcam.errors import GridcamError


# ---------------------------------------------------------------- references written for the tests
def bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of a half-pixel (align_corners=False) linear resize, float64."""
    A = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0 if i1 != i0 else 0.0
        A[i, i0] += 1 - frac
        A[i, i1] += frac
    return A


def blur_matrix(n: int, sigma: float, radius: int) -> torch.Tensor:
    """(n, n) Gaussian blur with reflect padding (the border pixel is not repeated), float64."""
    w = [math.exp(-0.5 * (k / sigma) ** 2) for k in range(-radius, radius + 1)]
    total = sum(w)
    A = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for k, wk in zip(range(-radius, radius + 1), w):
            j = i + k
            j = -j if j < 0 else (2 * (n - 1) - j if j > n - 1 else j)
            A[i, j] += wk / total
    return A


def ref_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable blur of (..., H, W), radius max(1, min(ceil(2 sigma), H-1, W-1)), float64."""
    H, W = x.shape[-2:]
    r = max(1, min(math.ceil(2 * sigma), H - 1, W - 1))
    return blur_matrix(H, sigma, r) @ x.double() @ blur_matrix(W, sigma, r).T


class Linear(nn.Module):
    """logits = W . flatten(x) + b: every pixel matters, so every perturbation changes a score."""

    def __init__(self, shape, classes=3, scale=1.0, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(math.prod(shape), classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g) * scale)
            self.fc.bias.copy_(torch.randn(classes, generator=g))

    def forward(self, x):
        return self.fc(x.flatten(1))


class SquaredLinear(Linear):
    """logits = W . flatten(x^2) + b: nonlinear, so a term of the input that does not depend on
    the mask still changes the gradient."""

    def forward(self, x):
        return self.fc((x * x).flatten(1))


class Recording(nn.Module):
    """Wraps a model and records the batch size of every forward."""

    def __init__(self, model):
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x):
        self.sizes.append(len(x))
        return self.model(x)


class BarRecorder:
    """Stands in for ``_bar``: records (progress, total, desc) and the sum of the updates."""

    def __init__(self):
        self.calls = []

    def __call__(self, progress, total, desc):
        rec = {"progress": progress, "total": total, "desc": desc, "n": 0}
        self.calls.append(rec)

        class Bar:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def update(self, k):
                assert isinstance(k, int), k
                rec["n"] += k

        return Bar()


# ------------------------------------------------------------------------------------ RISE masks
def test_rise_masks_defaults_and_draws():
    a, b = P.rise_masks(6, (10, 10)), P.rise_masks(6, (10, 10), cells=7, p=0.5, seed=0)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    # the grids are 1 exactly where the uniform draw is strictly below p; then dy, then dx
    gen = torch.Generator().manual_seed(3)
    u = torch.rand((5, 1, 3, 3), generator=gen)
    dy = torch.randint(0, 4, (5,), generator=gen)  # ceil(10 / 3) = 4
    dx = torch.randint(0, 3, (5,), generator=gen)  # ceil(7 / 3) = 3
    p = float(u.flatten()[4])  # a tie: u < p is False there, u <= p would be True
    grids, gy, gx = P.rise_masks(5, (10, 7), cells=3, p=p, seed=3)
    assert grids.shape == (5, 1, 3, 3) and grids.dtype == torch.float32
    assert torch.equal(grids, (u < p).float()) and float(grids.flatten()[4]) == 0
    assert torch.equal(gy, dy) and torch.equal(gx, dx)


def test_rise_mask_shifts_cover_every_offset():
    _, dy, dx = P.rise_masks(300, (16, 12), cells=4, seed=1)
    assert set(dy.tolist()) == {0, 1, 2, 3}  # [0, ceil(16/4))
    assert set(dx.tolist()) == {0, 1, 2}  # [0, ceil(12/4))


def test_expand_masks_hand_computed():
    """2x2 grids on a 4x6 image: upsampled to 6x9 (half-pixel bilinear), cropped at (dy, dx)."""
    grids = torch.zeros(2, 1, 2, 2)
    grids[0, 0, 0, 0] = 1  # only the top-left cell on
    grids[1, 0, 1, 1] = 1  # only the bottom-right cell on
    # weight of cell 0 along each axis of the upsampled 6 x 9 grid (by hand)
    a_h = torch.tensor([1, 1, 2 / 3, 1 / 3, 0, 0])
    a_w = torch.tensor([18, 18, 17, 13, 9, 5, 1, 0, 0]) / 18
    masks = P._expand_masks(grids, torch.tensor([1, 0]), torch.tensor([2, 0]), (4, 6))
    assert masks.shape == (2, 4, 6)
    torch.testing.assert_close(masks[0], torch.outer(a_h[1:5], a_w[2:8]))
    torch.testing.assert_close(masks[1], torch.outer(1 - a_h[0:4], 1 - a_w[0:6]))


# ------------------------------------------------------------------------------------ RISE
def test_rise_is_the_formula_over_its_own_masks():
    """S_t = 1/(N p) sum_i softmax(f(x * M_i))_t M_i with the masks of rise_masks (cells, p)."""
    model = Linear((3, 10, 8), classes=4, scale=0.2).eval()
    x = torch.rand(2, 3, 10, 8, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[0, 3], [2, 2]])
    heat, logits = P.explain_rise(model, None, x, targets, num_masks=7, cells=3, p=0.3, seed=5,
                                  method_batch=5)
    grids, dy, dx = P.rise_masks(7, (10, 8), cells=3, p=0.3, seed=5)
    masks = P._expand_masks(grids, dy, dx, (10, 8))
    want = torch.zeros(2, 2, 10, 8)
    with torch.no_grad():
        for m in masks:
            probs = torch.softmax(model(x * m), dim=1).gather(1, targets)  # (B,T)
            want += probs[..., None, None] * m
    torch.testing.assert_close(heat, want / (7 * 0.3))
    torch.testing.assert_close(logits, model(x).detach())


def test_rise_defaults_are_the_papers():
    model = Linear((3, 8, 8), classes=2, scale=0.1).eval()
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([1])
    a, _ = P.explain_rise(model, None, x, t, method_batch=1000)
    b, _ = P.explain_rise(model, None, x, t, num_masks=4000, cells=7, p=0.5, seed=0,
                          method_batch=1000)
    assert torch.equal(a, b)


def test_rise_validates_its_options():
    model = Linear((3, 8, 8), classes=2).eval()
    x, t = torch.rand(1, 3, 8, 8), torch.tensor([0])
    for p in (0, 0.0, 1.5):
        with pytest.raises(GridcamError, match=rf"0 < p <= 1, got {p}"):
            P.explain_rise(model, None, x, t, p=p, num_masks=2)
    with pytest.raises(GridcamError, match=r"num_masks >= 1 and cells >= 1, got 0, 7"):
        P.explain_rise(model, None, x, t, num_masks=0)
    with pytest.raises(GridcamError, match=r"num_masks >= 1 and cells >= 1, got 3, 0"):
        P.explain_rise(model, None, x, t, num_masks=3, cells=0)
    for bad in (torch.ones(5, 8, 7), torch.ones(5, 9, 8), torch.ones(8, 8)):
        with pytest.raises(GridcamError, match=re.escape(f"rise masks must be (N,8,8), got shape {tuple(bad.shape)}")):
            P.explain_rise(model, None, x, t, masks=bad)
    # the edges of the valid ranges work: p = 1, one mask, one cell
    heat, _ = P.explain_rise(model, None, x, t, p=1, num_masks=1, cells=1)
    assert heat.shape == (1, 1, 8, 8) and bool(torch.isfinite(heat).all())
    ones, _ = P.explain_rise(model, None, x, t, p=1.0, masks=torch.ones(3, 8, 8))
    prob = torch.softmax(model(x), 1)[0, 0].detach()
    torch.testing.assert_close(ones, prob.expand(1, 1, 8, 8))


def test_rise_accepts_masks_of_any_dtype():
    model = Linear((3, 6, 5), classes=3).eval()
    x = torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([[0, 1], [2, 0]])
    binary = torch.rand(4, 6, 5, generator=torch.Generator().manual_seed(3)) > 0.5
    want, _ = P.explain_rise(model, None, x, t, masks=binary.float(), p=0.5)
    for masks in (binary, binary.double(), binary.to(torch.uint8)):
        heat, _ = P.explain_rise(model, None, x, t, masks=masks, p=0.5)
        assert heat.dtype == torch.float32
        torch.testing.assert_close(heat, want)


def test_rise_runs_a_bfloat16_model():
    model = Linear((3, 6, 6), classes=3, scale=0.3).eval()
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([2, 0])
    want, _ = P.explain_rise(model, None, x, t, num_masks=12, cells=2)
    heat, _ = P.explain_rise(model.bfloat16(), None, x.bfloat16(), t, num_masks=12, cells=2)
    assert heat.dtype == torch.float32
    torch.testing.assert_close(heat, want, atol=0.03, rtol=0.03)


# ------------------------------------------------------------------------------------ occlusion
def test_windows_as_captum_places_them():
    assert P._windows(17, 5, 3).tolist() == [0, 3, 6, 9, 12]
    assert P._windows(15, 5, 3).tolist() == [0, 3, 6, 9, 12]  # 12 reaches the border exactly
    assert P._windows(10, 4, 4).tolist() == [0, 4, 8]  # the last one cut by the border
    assert P._windows(8, 8, 1).tolist() == [0]


def ref_occlusion(model, x, targets, window, stride, baseline):
    """Mean logit drop over the windows covering each pixel; windows start at 0, s, 2s, ... and
    the last is the first that reaches the border."""
    B, _, H, W = x.shape

    def starts(n):
        out = [0]
        while out[-1] + window < n:
            out.append(out[-1] + stride)
        return out

    with torch.no_grad():
        score0 = model(x).gather(1, targets)
        total = torch.zeros(B, targets.shape[1], H, W, dtype=torch.float64)
        count = torch.zeros(H, W, dtype=torch.float64)
        for top in starts(H):
            for left in starts(W):
                occ = x.clone()
                occ[:, :, top:top + window, left:left + window] = baseline
                drop = (score0 - model(occ).gather(1, targets)).double()
                total[:, :, top:top + window, left:left + window] += drop[..., None, None]
                count[top:top + window, left:left + window] += 1
    return (total / count).clamp_min(0).float()


def test_occlusion_matches_the_reference_on_a_model_that_sees_every_pixel():
    model = Linear((3, 17, 15), classes=4).eval()
    x = torch.randn(3, 3, 17, 15, generator=torch.Generator().manual_seed(6))
    targets = torch.tensor([[0, 3], [1, 1], [2, 0]])
    heat, logits = P.explain_occlusion(model, None, x, targets, window=5, stride=3, baseline=0.7,
                                       method_batch=4)
    assert heat.shape == (3, 2, 17, 15) and heat.dtype == torch.float32
    torch.testing.assert_close(heat, ref_occlusion(model, x, targets, 5, 3, 0.7),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, model(x).detach())


def test_occlusion_defaults_and_the_edges_of_its_ranges():
    model = Linear((3, 48, 48), classes=2).eval()
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(7))
    t = torch.tensor([1])
    a, _ = P.explain_occlusion(model, None, x, t)
    b, _ = P.explain_occlusion(model, None, x, t, window=32, stride=16, baseline=0.0)
    assert torch.equal(a, b)
    # stride 1 and a window as large as the image are valid: one window, the whole image
    small = Linear((3, 6, 6), classes=2).eval()
    y = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(8))
    heat, _ = P.explain_occlusion(small, None, y, torch.tensor([0, 1]), window=6, stride=1)
    with torch.no_grad():
        drop = (small(y) - small(torch.zeros_like(y))).gather(1, torch.tensor([[0], [1]]))
    torch.testing.assert_close(heat, drop.clamp_min(0)[..., None, None].expand(2, 1, 6, 6))


# ------------------------------------------------------------------------------------ blur, masks
@pytest.mark.parametrize("sigma,H,W", [
    (1.0, 9, 11),  # radius ceil(2 sigma) = 2
    (0.5, 6, 7),  # radius 1
    (2.0, 9, 9),  # radius 4
    (2.0, 3, 10),  # radius capped by H - 1 = 2
    (2.0, 10, 4),  # radius capped by W - 1 = 3
    (1.5, 2, 5),  # radius capped at 1
])
def test_gaussian_blur_matches_the_reference(sigma, H, W):
    x = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    out = P._gaussian_blur(x, sigma)
    assert out.shape == x.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, ref_blur(x, sigma), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(P._gaussian_blur(x.float(), sigma), ref_blur(x, sigma).float())


def test_gaussian_blur_of_sigma_zero_is_the_identity():
    x = torch.randn(1, 2, 5, 4)
    assert torch.equal(P._gaussian_blur(x, 0.0), x)
    assert torch.equal(P._gaussian_blur(x, 0), x)


def test_smooth_mask_is_bilinear_then_blurred():
    param = torch.rand(2, 1, 3, 4, generator=torch.Generator().manual_seed(10))
    got = P._smooth_mask(param, (9, 11), 2)
    up = bilinear_matrix(3, 9) @ param.double() @ bilinear_matrix(4, 11).T
    torch.testing.assert_close(got, ref_blur(up, 2.0).float())


# ------------------------------------------------------------------------- extremal perturbation
def ref_extremal(model, x, target, *, area, iterations, step, blur, lr):
    """The preserve-variant optimisation for one (image, target) pair, written out (the smooth
    mask and the blur are the library's, checked exactly above)."""
    H, W = x.shape[-2:]
    blurred = P._gaussian_blur(x[None], blur)
    param = torch.ones(1, 1, math.ceil(H / step) + 1, math.ceil(W / step) + 1, requires_grad=True)
    k = int(round(area * H * W))
    wanted = torch.cat([torch.zeros(H * W - k), torch.ones(k)])  # sorted: a fraction area of ones
    opt = torch.optim.Adam([param], lr=lr)
    lam = 300.0
    for _ in range(iterations):
        mask = P._smooth_mask(param, (H, W), step)
        reward = model(mask * x + (1 - mask) * blurred)[0, target]
        loss = lam * ((mask.flatten().sort().values - wanted) ** 2).mean() - reward
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            param.clamp_(0, 1)
        lam *= 1.0035 ** (800 / (iterations - 1)) if iterations > 1 else 1.0
    with torch.no_grad():
        return P._smooth_mask(param, (H, W), step)[0, 0].clamp(0, 1)


@pytest.mark.parametrize("iterations,lr,area,net", [
    (2, 0.3, 0.25, Linear), (4, 0.6, 0.3, Linear), (5, 0.2, 0.1, Linear),
    (3, 0.3, 0.2, SquaredLinear)])
def test_extremal_perturbation_matches_the_reference(iterations, lr, area, net):
    model = net((3, 8, 10), classes=3, scale=4.0, seed=11).eval()
    x = torch.randn(2, 3, 8, 10, generator=torch.Generator().manual_seed(12))
    targets = torch.tensor([[0, 2], [1, 0]])
    heat, logits = P.explain_extremal_perturbation(
        model, None, x, targets, area=area, iterations=iterations, step=3, blur=1.5, lr=lr,
        method_batch=1)
    assert heat.shape == (2, 2, 8, 10) and heat.dtype == torch.float32
    for b in range(2):
        for t in range(2):
            want = ref_extremal(model, x[b], int(targets[b, t]), area=area,
                                iterations=iterations, step=3, blur=1.5, lr=lr)
            torch.testing.assert_close(heat[b, t], want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logits, model(x).detach())


def test_extremal_perturbation_defaults():
    model = Linear((3, 12, 12), classes=2, scale=0.5).eval()
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(13))
    t = torch.tensor([0])
    a, _ = P.explain_extremal_perturbation(model, None, x, t)
    b, _ = P.explain_extremal_perturbation(model, None, x, t, area=0.1, iterations=80, step=7,
                                           blur=20.0, lr=0.05)
    assert torch.equal(a, b)


def test_extremal_perturbation_validates_its_options():
    model = Linear((3, 4, 5), classes=2).eval()
    x, t = torch.rand(1, 3, 4, 5), torch.tensor([0])
    for kw in (dict(area=0.0), dict(area=1.0), dict(area=1.5), dict(iterations=0),
               dict(step=0), dict(iterations=5, step=0), dict(iterations=0, step=3)):
        with pytest.raises(GridcamError, match=r"0 < area < 1, iterations >= 1, step >= 1, got"):
            P.explain_extremal_perturbation(model, None, x, t, **kw)
    # the edges of the valid ranges: one iteration, a parameter every pixel; a non-square image
    heat, _ = P.explain_extremal_perturbation(model, None, x, t, iterations=1, step=1, area=0.5)
    assert heat.shape == (1, 1, 4, 5) and float(heat.min()) >= 0 and float(heat.max()) <= 1


def test_extremal_masks_stay_within_one_despite_rounding():
    """Parameters that never move (tiny lr) stay 1; blurring a constant 1 rounds to 1.0000001 at
    some pixels of a 3x3 image with sigma 1, and the result must still be at most 1."""
    model = Linear((3, 3, 3), classes=2).eval()
    x = torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(14))
    heat, _ = P.explain_extremal_perturbation(model, None, x, torch.tensor([0, 1]), area=0.5,
                                              iterations=1, step=1, blur=1.0, lr=1e-12)
    assert float(heat.max()) <= 1.0
    torch.testing.assert_close(heat, torch.ones_like(heat))


def test_extremal_perturbation_keeps_a_float32_mask_for_a_bfloat16_model():
    """area*H*W rounds to 0, so the target mask is all zeros and (the model's weights being 0)
    every parameter's gradient is positive: one Adam step from 1 gives 1 - lr = 0.95 everywhere,
    which bfloat16 cannot hold (0.9492 or 0.9531)."""
    model = Linear((3, 4, 4), classes=2, scale=0.0).bfloat16().eval()
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(15)).bfloat16()
    heat, _ = P.explain_extremal_perturbation(model, None, x, torch.tensor([1]), area=0.01,
                                              iterations=1, step=2, blur=1.0, lr=0.05)
    assert heat.dtype == torch.float32
    torch.testing.assert_close(heat, torch.full((1, 1, 4, 4), 0.95), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------- dtypes, batch, progress
def test_float64_inputs_give_float32_maps():
    model = Linear((3, 6, 6), classes=3).double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(16))
    t = torch.tensor([0, 2])
    rise, _ = P.explain_rise(model, None, x, t, num_masks=3, cells=2)
    occ, _ = P.explain_occlusion(model, None, x, t, window=3, stride=3)
    ext, _ = P.explain_extremal_perturbation(model, None, x, t, iterations=2, step=3, blur=1.0)
    assert rise.dtype == occ.dtype == ext.dtype == torch.float32
    assert rise.shape == occ.shape == ext.shape == (2, 1, 6, 6)


def test_method_batch_caps_every_perturbed_forward():
    inner = Linear((3, 6, 6), classes=3).eval()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(17))
    one = Recording(inner)
    P.explain_rise(one, None, x[:1], torch.tensor([0]), num_masks=3, cells=2, method_batch=1)
    assert one.sizes == [1, 1, 1, 1]  # the clean forward, then one mask at a time
    rec = Recording(inner)
    P.explain_rise(rec, None, x, torch.tensor([0, 1]), num_masks=3, cells=2, method_batch=3)
    assert rec.sizes == [2, 2, 2, 2]  # 3 // 2 = 1 mask for both images per forward
    rec = Recording(inner)
    P.explain_occlusion(rec, None, x[:1], torch.tensor([0]), window=3, stride=3, method_batch=1)
    assert rec.sizes == [1] * 5  # clean + 4 windows
    rec = Recording(inner)
    P.explain_occlusion(rec, None, x, torch.tensor([0, 1]), window=3, stride=3, method_batch=3)
    assert rec.sizes == [2] * 5
    rec = Recording(inner)
    P.explain_extremal_perturbation(rec, None, x, torch.tensor([0, 2]), iterations=2, step=3,
                                    blur=1.0, method_batch=1)
    assert rec.sizes == [2, 1, 1, 1, 1]
    rec = Recording(inner)
    targets = torch.tensor([[0, 1, 2], [2, 1, 0]])  # 6 pairs in chunks of 4 and 2
    P.explain_extremal_perturbation(rec, None, x, targets, iterations=2, step=3, blur=1.0,
                                    method_batch=4)
    assert rec.sizes == [2, 4, 4, 2, 2]


@pytest.mark.parametrize("progress", [False, True])
def test_progress_bar_totals_and_names(monkeypatch, progress):
    bars = BarRecorder()
    monkeypatch.setattr(P, "_bar", bars)
    model = Linear((3, 6, 6), classes=3).eval()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(18))
    t = torch.tensor([[0, 1], [2, 0]])
    kw = {"progress": True} if progress else {}
    P.explain_rise(model, None, x, t, num_masks=5, cells=2, method_batch=4, **kw)
    P.explain_occlusion(model, None, x, t, window=3, stride=3, method_batch=4, **kw)
    P.explain_extremal_perturbation(model, None, x, t, iterations=3, step=3, blur=1.0,
                                    method_batch=3, **kw)
    got = [(c["progress"], c["total"], c["desc"], c["n"]) for c in bars.calls]
    assert got == [(progress, 10, "rise", 10), (progress, 8, "occlusion", 8),
                   (progress, 12, "extremal_perturbation", 12)]


def test_no_warnings():
    model = Linear((3, 6, 6), classes=3).eval()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(19))
    t = torch.tensor([0, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        P.explain_rise(model, None, x, t, num_masks=3, cells=2)
        P.explain_occlusion(model, None, x, t, window=3, stride=3)
        P.explain_extremal_perturbation(model, None, x, t, iterations=2, step=3, blur=1.0)
