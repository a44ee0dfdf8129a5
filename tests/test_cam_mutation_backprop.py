"""Exact cases for the modified-backward methods (excitation backprop and its contrastive variant),
integrated gradients and SmoothGrad that the closed-form tests in test_cam_methods.py do not reach:
residual sums below the read layer, functional calls with keyword arguments, the classifier
found by identity or by the fallback, the chunk plans of the path/noise loops, option bounds,
non-zero baselines and dtypes. Every expected value is built in the test (formulas, conservation
of the winning probability, the documented noise plan)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gridcam.cam import attribution, backprop, saliency

EXCITE = backprop.explain_excitation_backprop
CONTRAST = backprop.explain_contrastive_excitation_backprop


# ------------------------------------------------------------------------ chunk plans and bounds
class _Recorder(nn.Module):
    """A tiny conv net that records the batch size of every forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softplus(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(4, 3))
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(x.shape[0]))
        return self.net(x)


def _ig(model, x, t, **kw):
    return attribution.explain_integrated_gradients(model, None, x, t, **kw)


def _sg(model, x, t, **kw):
    return saliency.explain_smoothgrad(model, None, x, t, generator=torch.Generator().manual_seed(0),
                                       **kw)


@pytest.mark.parametrize("fn, count", [(_ig, "steps"), (_sg, "samples")])
@pytest.mark.parametrize("B, opts, sizes", [
    (1, {}, [1, 32, 18]),            # defaults: 50 points, 32 images per forward
    (2, {"n": 3, "chunk": 1}, [2, 2, 2, 2]),  # chunk < B: still one point (B images) per forward
    (1, {"n": 3, "chunk": 2}, [1, 2, 1]),     # the last forward takes the remainder only
    (2, {"n": 5, "chunk": 4}, [2, 4, 4, 2]),
])
def test_forward_plan_follows_steps_samples_and_chunk(fn, count, B, opts, sizes):
    """The first forward is the clean images' logits; then ``max(1, chunk // B)`` path points /
    noisy copies of the B images per forward, ``steps``/``samples`` in all (default 50, chunk 32)."""
    model = _Recorder().eval()
    opts = dict(opts)
    if "n" in opts:
        opts[count] = opts.pop("n")
    fn(model, torch.rand(B, 3, 6, 6), torch.zeros(B, dtype=torch.long), **opts)
    assert model.sizes == sizes


@pytest.mark.parametrize("fn, count", [(_ig, "steps"), (_sg, "samples")])
def test_counts_below_one_are_refused_and_one_is_accepted(fn, count):
    model, x, t = _Recorder().eval(), torch.rand(2, 3, 6, 6), torch.tensor([0, 2])
    with pytest.raises(ValueError, match=rf"{count} >= 1 .*got 0, 32"):
        fn(model, x, t, **{count: 0})
    with pytest.raises(ValueError, match=rf"chunk >= 1.*got 3, 0"):
        fn(model, x, t, **{count: 3, "chunk": 0})
    heat, _ = fn(model, x, t, **{count: 1, "chunk": 1})  # the smallest valid plan
    assert heat.shape == (2, 1, 6, 6) and heat.sum() > 0


def test_integrated_gradients_chunking_does_not_change_the_map():
    model, x, t = _Recorder().eval(), torch.rand(2, 3, 6, 6), torch.tensor([[0, 2], [1, 1]])
    ref, _ = _ig(model, x, t, steps=7, chunk=32)
    for chunk in (1, 2, 5):
        heat, _ = _ig(model, x, t, steps=7, chunk=chunk)
        torch.testing.assert_close(heat, ref, rtol=1e-5, atol=1e-7)


def _monotone_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softplus(), nn.Flatten(), nn.Linear(4 * 36, 3)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
        net[0].bias.fill_(-2.0)
    return net


@pytest.mark.parametrize("baseline", [-0.5, 0.25])
def test_integrated_gradients_completeness_with_a_non_zero_baseline(baseline):
    """sum IG = f(x) - f(x0) for the constant image x0 = baseline; x > x0 everywhere and a
    monotone net make every attribution >= 0, so the |IG| map sums to that signed gap."""
    net = _monotone_net()
    x = torch.rand(2, 3, 8, 8) * 0.5 + 0.3  # in (0.3, 0.8) > baseline
    targets = torch.tensor([[0, 2], [1, 1]])
    heat, _ = _ig(net, x, targets, steps=16, baseline=baseline)
    with torch.no_grad():
        gap = (net(x) - net(torch.full_like(x, baseline))).gather(1, targets)
    torch.testing.assert_close(heat.sum((2, 3)), gap, rtol=1e-5, atol=1e-6)
    # one step: (x - x0) * grad at the midpoint, by hand
    one, _ = _ig(net, x, targets[:, :1], steps=1, baseline=baseline)
    mid = ((x + baseline) / 2).requires_grad_(True)
    (g,) = torch.autograd.grad(net(mid).gather(1, targets[:, :1]).sum(), mid)
    torch.testing.assert_close(one[:, 0], ((x - baseline) * g).abs().sum(1), rtol=1e-5, atol=1e-7)


def test_integrated_gradients_map_is_float32_under_a_float64_default_dtype():
    """A user who set torch's default dtype to float64 (model and images in float64) still gets
    float32 maps, as documented."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        net = _monotone_net()
        x = torch.rand(1, 3, 8, 8)
        heat, _ = _ig(net, x, torch.tensor([1]), steps=3)
    finally:
        torch.set_default_dtype(old)
    assert x.dtype == torch.float64 and heat.dtype == torch.float32


# ------------------------------------------------------------------------------------ SmoothGrad
def _grad(model, x, cls):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x)[:, cls].sum(), x)
    return g


@pytest.mark.parametrize("B, samples, chunk", [(1, 3, 2), (2, 3, 1), (2, 5, 4)])
def test_smoothgrad_follows_the_documented_noise_plan(B, samples, chunk):
    """The noise of each forward is ``randn((k, B, 3, H, W))``, k = max(1, chunk // B), the last
    k the remainder; the map is max over channels of the mean |gradient| over all copies."""
    model = _Recorder().eval()
    x = torch.randn(B, 3, 6, 6)
    targets = torch.arange(B) % 3
    heat, _ = _sg(model, x, targets, samples=samples, chunk=chunk, sigma=0.3)
    gen = torch.Generator().manual_seed(0)
    per, noise = max(1, chunk // B), []
    for start in range(0, samples, per):
        noise.append(torch.randn((min(per, samples - start), *x.shape), generator=gen))
    noise = torch.cat(noise)  # (samples,B,3,H,W)
    scale = 0.3 * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    for b in range(B):
        grads = [_grad(model, x[b:b + 1] + noise[i, b:b + 1] * scale[b], int(targets[b]))[0].abs()
                 for i in range(samples)]
        torch.testing.assert_close(heat[b, 0], torch.stack(grads).mean(0).amax(0),
                                   rtol=1e-5, atol=1e-7)


def test_smoothgrad_on_a_bfloat16_model_draws_bfloat16_noise():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3)).eval().to(torch.bfloat16)
    x = torch.randn(2, 3, 8, 8).to(torch.bfloat16)
    heat, logits = _sg(net, x, torch.tensor([0, 1]), samples=2)
    assert heat.dtype == torch.float32 and heat.shape == (2, 1, 8, 8)
    assert logits.dtype == torch.bfloat16


# ------------------------------------------------------------------- excitation: residual sums
def _conv_excite(x, w, p, padding):
    """Excitation through conv(x, w): x * conv_transpose(p / conv(x, w+), w+)."""
    wp = w.clamp(min=0)
    z = F.conv2d(x, wp, padding=padding)
    return x * F.conv_transpose2d(p / (z + 1e-20), wp, padding=padding)


def _top(pooled, w2, c):
    """Winning probability of each pooled unit for class c: a_k w2+[c,k] / sum (bias: no share)."""
    share = pooled * w2[c].clamp(min=0)
    return share / share.sum(1, keepdim=True)


class _Residual(nn.Module):
    """x (B,2,4,4) >= 0 -> relu(conv3x3 pad 1, no bias) + x -> GAP -> linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.fc = nn.Linear(2, 3)
        with torch.no_grad():
            self.conv.weight.uniform_(-0.5, 1.0)
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0], [0.5, -1.0], [-1.0, 3.0]]))

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.fc(F.adaptive_avg_pool2d(h + x, 1).flatten(1))


def test_excitation_splits_a_residual_sum_in_proportion():
    """Below a same-shape sum s = h + x the probability splits as h/s and x/s (not p to both):
    the map at the input is computed by hand and sums to 1 per target."""
    net = _Residual().eval()
    x = torch.rand(2, 2, 4, 4) + 0.05
    targets = torch.tensor([[0, 2], [1, 0]])
    heat, logits = EXCITE(net, None, x, targets)
    torch.testing.assert_close(logits, net(x).detach())
    with torch.no_grad():
        h = torch.relu(F.conv2d(x, net.conv.weight, padding=1))
        s = h + x
        for t in range(2):
            top = torch.stack([_top(s.mean((2, 3))[b:b + 1], net.fc.weight, int(targets[b, t]))[0]
                               for b in range(2)])  # (B,2)
            p_s = s / s.sum((2, 3), keepdim=True) * top[:, :, None, None]
            p_x = x / s * p_s + _conv_excite(x, net.conv.weight, h / s * p_s, padding=1)
            torch.testing.assert_close(heat[:, t], p_x.sum(1).clamp(min=0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(heat.sum((2, 3)), torch.ones(2, 2), rtol=1e-5, atol=1e-6)


class _Adds(nn.Module):
    """x -> (x + mean_hw(x))  (a broadcast sum)  or  (c + x)  (c a constant) -> GAP -> linear."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        if self.kind == "broadcast":
            s = x + x.mean((2, 3), keepdim=True)
        else:
            s = torch.full_like(x, 0.5) + x
        return self.fc(F.adaptive_avg_pool2d(s, 1).flatten(1))


@pytest.mark.parametrize("kind", ["broadcast", "constant"])
def test_excitation_gives_a_plain_gradient_to_sums_that_are_not_residual(kind):
    """Only a sum of two same-shape tensors that both carry excitation is split; a broadcast sum
    or a sum with a constant passes the probability on unchanged (an ordinary gradient)."""
    net = _Adds(kind).eval()
    x = torch.rand(1, 2, 3, 3) + 0.1
    heat, _ = EXCITE(net, None, x, torch.tensor([[0, 1]]))
    s = x + (x.mean((2, 3), keepdim=True) if kind == "broadcast" else 0.5)
    for c in range(2):
        top = _top(s.mean((2, 3)), net.fc.weight, c)  # (1,2)
        p_s = s / s.sum((2, 3), keepdim=True) * top[:, :, None, None]
        if kind == "broadcast":  # the gradient of the mean spreads each channel's total evenly
            p_x = p_s + top[:, :, None, None] / 9
        else:
            p_x = p_s
        torch.testing.assert_close(heat[:, c], p_x.sum(1), rtol=1e-5, atol=1e-7)


# -------------------------------------------------------- excitation: functional calls, keywords
class _Functional(nn.Module):
    """The same network twice: through functional calls with keyword arguments (``padding=``,
    ``kernel_size=``, ``bias=``, a bias-less ``F.linear(x, w)``, ``torch.relu``) or through
    modules (positional arguments only)."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.functional = functional
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.mid = nn.Linear(12, 5, bias=False)
        self.fc = nn.Linear(5, 4)
        with torch.no_grad():
            self.conv.weight.uniform_(-0.3, 1.0)
            self.mid.weight.uniform_(-0.2, 1.0)

    def forward(self, x):
        if not self.functional:
            h = nn.AvgPool2d(2)(F.relu(self.conv(x))).flatten(1)
            return self.fc(self.mid(h))
        h = torch.relu(F.conv2d(x, self.conv.weight, self.conv.bias, padding=1))
        h = F.avg_pool2d(h, kernel_size=2).flatten(1)
        return F.linear(F.linear(h, self.mid.weight), self.fc.weight, bias=self.fc.bias)


def test_excitation_through_functional_calls_with_keywords_matches_the_module_spelling():
    x = torch.rand(2, 2, 4, 4) + 0.05
    targets = torch.tensor([[0, 3], [2, 1]])
    modules = _Functional(False).eval()
    functional = _Functional(True).eval()
    functional.load_state_dict(modules.state_dict())
    ref, ref_logits = EXCITE(modules, None, x, targets)
    heat, logits = EXCITE(functional, None, x, targets)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(logits, modules(x).detach())
    torch.testing.assert_close(heat, ref, rtol=1e-5, atol=1e-7)
    # x >= 0 and biases take no share: the probability of each target is conserved to the input
    torch.testing.assert_close(heat.sum((2, 3)), torch.ones(2, 2), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- contrastive: the classifier
class _Deep(nn.Module):
    """conv1x1 -> relu -> conv1x1 -> relu -> GAP -> linear (the classifier); optional extras:
    ``view``: logits returned through a view (not the linear's output object); ``aux``: a second
    linear head run AFTER the classifier, its output discarded."""

    def __init__(self, extra: str = "") -> None:
        super().__init__()
        torch.manual_seed(3)
        self.extra = extra
        self.c1, self.c2 = nn.Conv2d(2, 3, 1), nn.Conv2d(3, 3, 1)
        self.fc, self.aux = nn.Linear(3, 3), nn.Linear(3, 2)
        with torch.no_grad():
            self.c1.weight.uniform_(-0.2, 1.0)
            self.c2.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [-1.0, 1.0, 2.0],
                                               [0.5, 0.5, -1.0]]).view(3, 3, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0, 2.0], [-0.5, 1.5, -2.0],
                                               [2.0, 0.5, -1.0]]))

    def forward(self, x):
        h = F.adaptive_avg_pool2d(torch.relu(self.c2(torch.relu(self.c1(x)))), 1).flatten(1)
        logits = self.fc(h)
        if self.extra == "aux":
            self.aux(h)
        return logits.view(logits.shape) if self.extra == "view" else logits


@pytest.mark.parametrize("extra", ["view", "aux"])
def test_contrastive_uses_the_call_that_produced_the_logits_else_the_last(extra):
    """The classifier is the linear whose output IS the logits (an auxiliary head run after it
    is not), and the last conv/linear call when the logits are a view of it."""
    x = torch.rand(2, 2, 3, 3) + 0.05
    targets = torch.tensor([[0, 1, 2], [2, 0, 1]])
    ref, _ = CONTRAST(_Deep().eval(), None, x, targets)
    heat, _ = CONTRAST(_Deep(extra).eval(), None, x, targets)
    torch.testing.assert_close(heat, ref)
    plain, _ = EXCITE(_Deep().eval(), None, x, targets)
    assert not torch.allclose(ref, plain, atol=1e-3)  # the contrast is really there


def test_contrastive_map_is_read_at_the_layer():
    """At the CAM layer of a ResNet (stride 32) the map has the layer's resolution, not the input's."""
    from test_cam import _model

    from gridcam import models

    net = _model(num_classes=4)
    heat, _ = CONTRAST(net, models.cam_layer(net), torch.randn(2, 3, 64, 64),
                       torch.tensor([[0, 1], [2, 3]]))
    assert heat.shape == (2, 2, 2, 2) and (heat >= 0).all() and heat.sum() > 0


def test_contrastive_without_conv_or_linear_says_so():
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(ValueError, match=r"^contrastive excitation backprop .*no conv/linear layer"):
        CONTRAST(net, None, torch.rand(1, 3, 4, 4), torch.tensor([1]))


def test_a_layer_that_never_runs_is_named():
    class NeverCalled(nn.Module):
        def forward(self, x):
            return x

    net = _Deep().eval()
    net.unused = NeverCalled()
    with pytest.raises(ValueError, match=r"layer NeverCalled produced no tensor"):
        EXCITE(net, net.unused, torch.rand(1, 2, 3, 3), torch.tensor([0]))
