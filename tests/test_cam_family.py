"""The CAM family (gridcam.cam.cams): each method against its formula on hand-made activations,
batching over images and targets, and the model left exactly as it was (also after an error)."""

import math

import pytest
import torch
from torch import nn

from gridcam import models
from gridcam.errors import GridcamError
from gridcam.cam import catalog, cams, perturbation

ALL = {**cams.METHODS, **perturbation.METHODS}
# Small settings so every method runs in well under a second on a tiny model.
FAST = {"rise": {"num_masks": 16}, "occlusion": {"window": 16, "stride": 16},
        "extremal_perturbation": {"iterations": 2}}


class GapNet(nn.Module):
    """logits = W mean_hw(A) + c with A = the input itself: the CAM layer is ``self.layer``
    (an identity), so the test chooses the activations A (B,K,h,w) directly."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.layer = nn.Identity()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(torch.zeros(weight.shape[0]) if bias is None else bias)

    def forward(self, x):
        return self.fc(self.layer(x).mean(dim=(2, 3)))


class ConvNet(nn.Module):
    """A head with a ReLU after the CAM layer, so d logit / dA varies per pixel."""

    def __init__(self, k: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.layer = nn.Identity()
        self.conv = nn.Conv2d(k, 5, 1)
        self.fc = nn.Linear(5, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(self.layer(x))).mean(dim=(2, 3)))


def _gap_case():
    torch.manual_seed(0)
    A = torch.rand(2, 3, 4, 5) + 0.1  # positive activations (post-ReLU), K=3, 4x5
    A[1, 2] = 0.0  # one dead channel
    V = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 1.0, 3.0], [0.2, 0.3, -0.4]])
    return GapNet(V).eval(), A, V


def _relu(x):
    return x.clamp_min(0)


def test_gradient_cams_closed_forms_on_a_gap_net():
    """With GAP + linear, g_kij = V_tk / (h w) for every pixel, so: XGrad-CAM and HiResCAM are
    ReLU(sum_k V_tk A_k)/hw, LayerCAM uses ReLU(V_tk), Grad-CAM++'s alpha is 1/(2 + S_k g_k)."""
    model, A, V = _gap_case()
    targets = torch.tensor([[0, 1, 2], [2, 0, 1]])
    hw = A.shape[2] * A.shape[3]
    outs = {n: cams.METHODS[n][0](model, model.layer, A, targets)[0]
            for n in ("xgradcam", "hirescam", "layercam", "gradcampp")}
    for b in range(2):
        for t in range(3):
            c = int(targets[b, t])
            lin = sum(V[c, k] * A[b, k] for k in range(3)) / hw
            torch.testing.assert_close(outs["xgradcam"][b, t], _relu(lin), atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(outs["hirescam"][b, t], _relu(lin), atol=1e-6, rtol=1e-5)
            layer = sum(_relu(V[c, k]) * A[b, k] for k in range(3)) / hw
            torch.testing.assert_close(outs["layercam"][b, t], _relu(layer), atol=1e-6, rtol=1e-5)
            # Grad-CAM++ by the paper with S = exp(Y): dS/dA = e^Y g, d2S = e^Y g^2, d3S = e^Y g^3.
            y = float(model(A[b:b + 1])[0, c].detach())
            paper = torch.zeros(A.shape[2:], dtype=torch.float64)
            for k in range(3):
                g = float(V[c, k]) / hw
                s = float(A[b, k].sum())
                d1, d2, d3 = math.exp(y) * g, math.exp(y) * g ** 2, math.exp(y) * g ** 3
                den = 2 * d2 + s * d3
                alpha = d2 / den if den != 0 else 0.0
                paper += alpha * max(d1, 0.0) * hw * A[b, k].double()  # sum over the hw pixels
            ours = outs["gradcampp"][b, t].double() * math.exp(y)  # we drop the factor e^Y
            torch.testing.assert_close(ours, _relu(paper), atol=1e-6, rtol=1e-5)


def test_gradient_cams_match_their_formulas_with_per_pixel_gradients():
    torch.manual_seed(1)
    model = ConvNet().eval()
    A = torch.rand(2, 3, 5, 4)
    targets = torch.tensor([[0, 3], [1, 1]])
    for b in range(2):
        for t in range(2):
            a = A[b:b + 1].clone().requires_grad_(True)
            (g,) = torch.autograd.grad(model(a)[0, targets[b, t]], a)
            g, a = g[0], a[0].detach()
            s = a.sum(dim=(1, 2), keepdim=True)
            den = 2 * g ** 2 + s * g ** 3
            alpha = torch.where(den != 0, g ** 2 / den, torch.zeros_like(g))
            expected = {
                "gradcampp": (alpha * _relu(g)).sum(dim=(1, 2), keepdim=True) * a,
                "xgradcam": (a / s * g).sum(dim=(1, 2), keepdim=True) * a,
                "hirescam": g * a,
                "layercam": _relu(g) * a,
            }
            for name, want in expected.items():
                got = cams.METHODS[name][0](model, model.layer, A, targets)[0][b, t]
                torch.testing.assert_close(got, _relu(want.sum(0)), atol=1e-6, rtol=1e-5,
                                           msg=name)


def test_eigencam_is_the_first_principal_component_with_a_fixed_sign():
    pattern = torch.arange(12.0).view(3, 4) ** 1.5  # distinct values
    centred = pattern - pattern.mean()
    model = GapNet(torch.ones(2, 3)).eval()
    for u, sign in (([1.0, 2.0, 2.0], 1.0), ([-2.0, -1.0, 2.0], -1.0)):
        u = torch.tensor(u) / 3  # unit norm; rank-1 activations A_k = pattern * u_k (+ offset)
        A = (pattern[None] * u[:, None, None] + torch.tensor([5.0, 1.0, 2.0])[:, None, None])[None]
        heat, _ = cams.explain_eigencam(model, model.layer, A, torch.tensor([[0, 1]]))
        assert heat.shape == (1, 2, 3, 4)
        # v is oriented so that sum(v) > 0: for u with a negative sum the map is the mirror image.
        torch.testing.assert_close(heat[0, 0], _relu(sign * centred), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(heat[0, 1], heat[0, 0])
    # A full-rank case against the covariance matrix's top eigenvector.
    torch.manual_seed(2)
    A = torch.rand(1, 4, 5, 6)
    X = A[0].flatten(1).t().double()
    Xc = X - X.mean(0)
    _, vecs = torch.linalg.eigh(Xc.t() @ Xc)
    v = vecs[:, -1] * torch.sign(vecs[:, -1].sum())
    model = GapNet(torch.ones(2, 4)).eval()
    heat, _ = cams.explain_eigencam(model, model.layer, A, torch.tensor([0]))
    torch.testing.assert_close(heat[0, 0].double(), _relu(Xc @ v).view(5, 6), atol=1e-5, rtol=1e-4)


def test_scorecam_weights_are_the_masked_images_probabilities():
    torch.manual_seed(3)
    model = ConvNet().eval()
    A = torch.rand(2, 3, 6, 5)
    A[0, 1] = 0.7  # a constant channel: weight 0, no forward
    targets = torch.tensor([[0, 2], [3, 1]])
    heat, logits = cams.explain_scorecam(model, model.layer, A, targets, method_batch=2)
    torch.testing.assert_close(logits, model(A))
    for b in range(2):
        for t in range(2):
            want = torch.zeros(6, 5)
            for k in range(3):
                m = A[b, k]
                if m.max() == m.min():
                    continue
                mask = (m - m.min()) / (m.max() - m.min())
                p = torch.softmax(model((A[b] * mask)[None]), 1)[0, targets[b, t]]
                want += p * A[b, k]
            torch.testing.assert_close(heat[b, t], _relu(want), atol=1e-6, rtol=1e-5)
    # The obvious answer: a class that only sees channel 0 puts the map where channel 0 is.
    V = torch.zeros(10, 3)
    V[0, 0] = 100.0
    obvious = GapNet(V).eval()
    B = torch.zeros(1, 3, 4, 4)
    B[0, 0, 1, 2] = 1.0  # channel 0: one hot pixel
    B[0, 1, 3, 0] = 1.0  # channel 1: elsewhere, ignored by class 0
    heat, _ = cams.explain_scorecam(obvious, obvious.layer, B, torch.tensor([[0]]))
    assert heat[0, 0].argmax() == 1 * 4 + 2
    assert heat[0, 0, 1, 2] > 8 * heat[0, 0, 3, 0]  # weights ~0.98 vs 1/10


def test_ablationcam_closed_form_on_a_gap_net():
    """Zeroing channel k removes V_tk mean(A_k) from the logit: w_k = V_tk mean(A_k) / |y_t|."""
    model, A, V = _gap_case()
    bias = torch.tensor([0.0, -5.0, 0.1])
    with torch.no_grad():
        model.fc.bias.copy_(bias)  # class 1 gets a negative logit: |y| keeps the map's sign
    targets = torch.tensor([[0, 1, 2], [1, 2, 0]])
    for mb in (1, 2, 64):
        heat, logits = cams.explain_ablationcam(model, model.layer, A, targets, method_batch=mb)
        for b in range(2):
            for t in range(3):
                c = int(targets[b, t])
                y = logits[b, c]
                want = sum(V[c, k] * A[b, k].mean() * A[b, k] for k in range(3)) / y.abs()
                torch.testing.assert_close(heat[b, t], _relu(want), atol=1e-6, rtol=1e-5)


def test_ablationcam_rejects_a_head_that_is_not_per_sample():
    class Pooled(nn.Module):  # the head averages the batch: ablated copies cannot be told apart
        def __init__(self):
            super().__init__()
            self.layer = nn.Identity()

        def forward(self, x):
            return self.layer(x).mean(dim=(0, 2, 3))[None]

    model = Pooled().eval()
    with pytest.raises(ValueError, match="per sample"):
        cams.explain_ablationcam(model, model.layer, torch.rand(1, 3, 4, 4), torch.tensor([0]))
    assert not model.layer._forward_hooks


@pytest.mark.parametrize("name", sorted(cams.METHODS))
def test_batched_over_images_and_targets(name):
    """One call for B images x T targets equals B*T calls with one image and one target."""
    torch.manual_seed(4)
    model = models.create("tiny_resnet", num_classes=6).eval()
    layer = models.cam_layer(model)
    x = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([[0, 5, 2], [1, 1, 4]])
    fn = cams.METHODS[name][0]
    heat, logits = fn(model, layer, x, targets)
    assert heat.shape[:2] == (2, 3) and heat.dtype == torch.float32
    assert not heat.requires_grad and not logits.requires_grad and bool((heat >= 0).all())
    for b in range(2):
        for t in range(3):
            one, _ = fn(model, layer, x[b:b + 1], targets[b:b + 1, t])
            torch.testing.assert_close(heat[b, t], one[0, 0], atol=1e-5, rtol=1e-4)


def _snapshot(model):
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
              len(getattr(m, "_backward_pre_hooks", {}))) for m in model.modules()]
    return ({k: v.clone() for k, v in model.state_dict().items()}, hooks,
            [p.requires_grad for p in model.parameters()], model.training)


def _assert_unchanged(model, before, x):
    state, hooks, req, training = _snapshot(model)
    assert hooks == before[1] and req == before[2] and training == before[3]
    for k, v in before[0].items():
        assert torch.equal(state[k], v), k
    assert all(p.grad is None for p in model.parameters())


class Flaky(nn.Module):
    """Wraps a model; raises on the n-th forward (to test clean-up on errors)."""

    def __init__(self, inner, fail_at):
        super().__init__()
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return self.inner(x)


@pytest.mark.parametrize("name", sorted(ALL))
def test_model_is_left_unchanged_also_after_an_error(name):
    torch.manual_seed(5)
    model = models.create("tiny_resnet", num_classes=4).eval()
    layer = models.cam_layer(model)
    x = torch.randn(2, 3, 32, 32)
    ref = model(x).detach()
    before = _snapshot(model)
    fn, _ = ALL[name]
    layer = layer if catalog.ENTRIES[name].uses_layer else None
    fn(model, layer, x, torch.tensor([[0, 3], [2, 2]]), **FAST.get(name, {}))
    _assert_unchanged(model, before, x)
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
    for fail_at in (1, 2):  # in the first forward; in the second, if the method does one
        flaky = Flaky(model, fail_at).eval()
        try:
            fn(flaky, layer, x, torch.tensor([0, 1]), **FAST.get(name, {}))
            assert fail_at > 1, "the first forward raised, so must the method"
        except RuntimeError as err:
            assert "boom" in str(err)
        _assert_unchanged(model, before, x)
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(ALL))
def test_same_maps_under_inference_mode(name):
    """The evaluator may call a method under torch.inference_mode()."""
    torch.manual_seed(6)
    model = models.create("tiny_resnet", num_classes=4).eval()
    fn, _ = ALL[name]
    layer = models.cam_layer(model) if catalog.ENTRIES[name].uses_layer else None
    x, targets = torch.randn(2, 3, 32, 32), torch.tensor([[0, 1], [2, 3]])
    want, _ = fn(model, layer, x, targets, **FAST.get(name, {}))
    with torch.inference_mode():
        got, _ = fn(model, layer, x.clone(), targets, **FAST.get(name, {}))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_registry_entries_are_complete():
    import inspect

    assert set(ALL) == {"gradcampp", "xgradcam", "hirescam", "scorecam", "ablationcam", "eigencam",
                        "layercam", "rise", "occlusion", "extremal_perturbation"}
    for name, (fn, options) in ALL.items():
        params = inspect.signature(fn).parameters
        declared = {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY}
        assert declared == options, name
        entry = catalog.ENTRIES[name]  # what `gridcam methods` shows (hirescam: the Grad-CAM one)
        assert entry.description and entry.cost and isinstance(entry.uses_layer, bool)
        assert fn.__doc__ and "Cost" in fn.__doc__, name


def test_bad_layer_and_bad_options_raise_clear_errors():
    model = models.create("tiny_resnet", num_classes=4).eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="CAM layer Identity"):
        cams.explain_gradcampp(model, nn.Identity(), x, torch.tensor([0]))
    with pytest.raises(GridcamError, match="method_batch"):
        cams.explain_scorecam(model, models.cam_layer(model), x, torch.tensor([0]), method_batch=0)
    with pytest.raises(ValueError, match="targets must lie"):
        cams.explain_eigencam(model, models.cam_layer(model), x, torch.tensor([9]))
