"""The CAM family core (gridcam.cam.cams), ``explain`` and the method registry: small exact cases
written so that a one-token change in the code makes them fail (issue 15, mutation testing).

Hand-made activations go straight into an identity "CAM layer" (``GapNet`` from test_cam_family),
so every expected value below is computed by hand or by a few lines of independent code here.
"""

import functools
import math
import os
import re
import warnings

import pytest
import torch
from torch import nn

from gridcam import cam
from gridcam.cam import catalog, cams, perturbation, registry
from gridcam.cam.registry import Method
from gridcam.errors import GridcamError

from test_cam_family import GapNet


def _relu(x):
    return x.clamp_min(0)


class Logged(GapNet):
    """A GapNet that records, per forward: grad mode, whether its input requires grad, the input
    shape and the shape the head receives from the CAM layer (after any hook replaced it)."""

    def __init__(self, weight, bias=None):
        super().__init__(weight, bias)
        self.log = []

    def forward(self, x):
        a = self.layer(x)
        self.log.append({"grad": torch.is_grad_enabled(), "x_grad": x.requires_grad,
                         "input": tuple(x.shape), "head": tuple(a.shape)})
        return self.fc(a.mean(dim=(2, 3)))


# ----------------------------------------------------------------------- layer_activations
GRADIENT_FREE = [cams.explain_eigencam, cams.explain_scorecam, cams.explain_ablationcam]


@pytest.mark.parametrize("fn", GRADIENT_FREE, ids=lambda f: f.__name__)
def test_gradient_free_methods_build_no_graph(fn):
    """Eigen-, Score- and Ablation-CAM need no backward: every forward runs under no_grad on an
    input that does not require grad (no autograd graph is kept)."""
    torch.manual_seed(0)
    model = Logged(torch.randn(3, 4)).eval()
    fn(model, model.layer, torch.rand(2, 4, 3, 3) + 0.1, torch.tensor([[0, 2], [1, 0]]))
    assert model.log and all(not r["grad"] and not r["x_grad"] for r in model.log), model.log


def test_layer_activations_without_gradients():
    model = Logged(torch.tensor([[1.0, -1.0], [2.0, 0.5]])).eval()
    A = torch.rand(2, 2, 3, 3)
    acts, grads, logits, targets = cams.layer_activations(
        model, model.layer, A, torch.tensor([1, 0]), gradients=False)
    assert grads is None
    assert torch.equal(acts, A) and torch.equal(targets, torch.tensor([[1], [0]]))
    torch.testing.assert_close(logits, model(A))
    acts, grads, _, targets = cams.layer_activations(model, model.layer, A, torch.tensor([[0, 1]] * 2))
    assert grads.shape == (2, 2, 2, 3, 3) and targets.shape == (2, 2)
    # GAP over 3x3: d logit_0 / dA_k = V_0k / 9 at every pixel, for both images.
    want = (torch.tensor([1.0, -1.0]) / 9)[None, :, None, None].expand(2, 2, 3, 3)
    torch.testing.assert_close(grads[:, 0], want)


class _TupleLayer(nn.Module):
    def forward(self, x):
        return (x,)


class _TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = _TupleLayer()

    def forward(self, x):
        return self.layer(x)[0].mean(dim=(2, 3))


class _FlatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Flatten(2)

    def forward(self, x):
        return self.layer(x).mean(dim=2)


@pytest.mark.parametrize("gradients", [True, False])
def test_layer_activations_names_a_bad_layer_output(gradients):
    x = torch.rand(1, 3, 2, 2)
    net = _TupleNet().eval()
    with pytest.raises(ValueError, match=r"CAM layer _TupleLayer must output a \(B,K,h,w\) tensor "
                                         r"during the forward, got tuple$"):
        cams.layer_activations(net, net.layer, x, torch.tensor([0]), gradients=gradients)
    net = _FlatNet().eval()
    with pytest.raises(ValueError, match=r"CAM layer Flatten .* got Tensor of shape \(1, 3, 4\)$"):
        cams.layer_activations(net, net.layer, x, torch.tensor([0]), gradients=gradients)


# ----------------------------------------------------------------- gradient weightings, by hand
def test_gradcampp_and_xgradcam_zero_where_the_denominator_vanishes():
    """GAP over 2x2: g_k = V_k / 4. Channel 0 has sum S=-8 and g=1/4, so Grad-CAM++'s denominator
    g^2 (2 + S g) is exactly 0 (alpha := 0); channel 1 has g = 0 (alpha := 0, not 0/0); channel 2:
    alpha = 1/(2 + 10 * 0.5) = 1/7, w = 4 * 1/7 * 0.5 = 2/7. XGrad-CAM: channel 0 of the second
    image sums to 0 (weight 0, not sum(g))."""
    V = torch.tensor([[1.0, 0.0, 2.0]])
    model = GapNet(V).eval()
    A = torch.zeros(2, 3, 2, 2)
    A[0, 0] = -2.0
    A[0, 1] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    A[0, 2] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    heat, _ = cams.explain_gradcampp(model, model.layer, A[:1], torch.tensor([0]))
    assert torch.isfinite(heat).all()
    torch.testing.assert_close(heat[0, 0], A[0, 2] * 2 / 7, atol=1e-6, rtol=1e-6)
    # XGrad-CAM: w_k = sum_ij A_kij / S_k * g_k = g_k where S_k != 0, else 0.
    A[1, 0] = torch.tensor([[1.0, -1.0], [1.0, -1.0]])  # sums to 0
    A[1, 2] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    heat, _ = cams.explain_xgradcam(model, model.layer, A[1:], torch.tensor([0]))
    torch.testing.assert_close(heat[0, 0], A[1, 2] * 0.5, atol=1e-7, rtol=1e-6)


# ------------------------------------------------------------------------------------ Eigen-CAM
_REAL_SVD = torch.linalg.svd


def _flipping_svd(mask):
    """torch.linalg.svd with the singular vectors of image b negated where mask[b] (a valid SVD
    too: the sign of a singular pair is arbitrary, so the map must not change)."""
    def svd(a, *args, **kwargs):
        u, s, vh = _REAL_SVD(a, *args, **kwargs)
        f = torch.tensor([-1.0 if m else 1.0 for m in mask])
        return u * f[:, None, None], s, vh * f[:, None, None]
    return svd


@pytest.mark.parametrize("mask", [(False, False), (True, False), (False, True), (True, True)])
def test_eigencam_sign_rule_is_per_image_and_ignores_the_svd_sign(mask, monkeypatch):
    """Rank-1 activations A_b = pattern_b * u_b + offset: the map is ReLU(s_b |u_b| (pattern_b -
    mean)) with s_b = sign(sum u_b), for each image on its own whatever sign the SVD returns."""
    p0 = torch.arange(12.0).view(3, 4) ** 1.5
    p1 = torch.tensor([[3.0, 0.0, 1.0, 7.0], [2.0, 5.0, 4.0, 0.5], [6.0, 1.5, 2.5, 3.5]])
    u = torch.tensor([[1.0, 2.0, 2.0], [-2.0, -1.0, 2.0]]) / 3  # unit norm; sums 5/3 and -1/3
    offset = torch.tensor([5.0, 1.0, 2.0])[:, None, None]
    A = torch.stack([p0[None] * u[0, :, None, None] + offset, p1[None] * u[1, :, None, None] + offset])
    monkeypatch.setattr(torch.linalg, "svd", _flipping_svd(mask))
    model = GapNet(torch.ones(2, 3)).eval()
    heat, _ = cams.explain_eigencam(model, model.layer, A, torch.tensor([[0, 1], [1, 1]]))
    torch.testing.assert_close(heat[0, 0], _relu(p0 - p0.mean()), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(heat[1, 0], _relu(-(p1 - p1.mean())), atol=1e-4, rtol=1e-4)
    assert torch.equal(heat[:, 1], heat[:, 0])


@pytest.mark.parametrize("flip", [False, True])
def test_eigencam_zero_sum_direction_makes_the_largest_component_positive(flip, monkeypatch):
    """Two points +-u with u = (-3, 1, 2): v = +-u/sqrt(14) sums to exactly 0, so the rule is the
    largest component positive: v = (3, -1, -2)/sqrt(14), proj = (-1, 1) * (u.v) = (14, -14)/sqrt(14)."""
    u = torch.tensor([-3.0, 1.0, 2.0])
    t = torch.tensor([-1.0, 1.0])
    A = (t[None, :] * u[:, None])[None, :, None, :]  # (1,3,1,2), already centred
    v = _REAL_SVD(A.flatten(2).transpose(1, 2), full_matrices=False)[2][0, 0]
    if float(v.sum()) != 0.0:
        pytest.skip("this LAPACK's singular vector does not sum to exactly 0")
    monkeypatch.setattr(torch.linalg, "svd", _flipping_svd([flip]))
    model = GapNet(torch.ones(1, 3)).eval()
    heat, _ = cams.explain_eigencam(model, model.layer, A, torch.tensor([0]))
    torch.testing.assert_close(heat[0, 0], torch.tensor([[math.sqrt(14.0), 0.0]]))


# ------------------------------------------------------------------------------------ Score-CAM
def test_scorecam_chunks_forwards_by_method_batch():
    """B=1, K=5 non-constant channels, method_batch=2: forwards of 1 (the plain one), 2, 2, 1."""
    torch.manual_seed(1)
    model = Logged(torch.randn(3, 5)).eval()
    A = torch.rand(1, 5, 3, 3)
    cams.explain_scorecam(model, model.layer, A, torch.tensor([0]), method_batch=2)
    assert [r["input"][0] for r in model.log] == [1, 2, 2, 1]


def test_scorecam_keeps_the_image_dtype_and_float32_weights():
    """bfloat16 model and images: the masked images stay bfloat16 and the weights (probabilities
    computed in float32) are not rounded to bfloat16. No warning is raised (softmax has a dim)."""
    torch.manual_seed(2)
    V = torch.randn(3, 2)
    model = GapNet(V).to(torch.bfloat16).eval()
    A = (torch.rand(1, 2, 3, 3) + 0.2).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        heat, _ = cams.explain_scorecam(model, model.layer, A, torch.tensor([[0, 2]]))
    assert heat.dtype == torch.float32
    Af = A[0].float()
    for t, c in enumerate((0, 2)):
        want = torch.zeros(3, 3)
        for k in range(2):
            m = Af[k]
            mask = ((m - m.min()) / (m.max() - m.min())).to(torch.bfloat16)
            logits = model((A[0] * mask)[None]).float()
            want += torch.softmax(logits, dim=1)[0, c] * Af[k]
        torch.testing.assert_close(heat[0, t], _relu(want), atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------- progress bars
def _bar_case(fn):
    V = torch.tensor([[1.0, 2.0, -1.0], [0.5, -0.5, 1.0]])
    model = GapNet(V).eval()
    A = torch.rand(2, 3, 2, 2) + 0.1
    A[1, 2] = 0.0  # dead (ablation) and constant (score) channel: 5 channels to process
    return lambda **kw: fn(model, model.layer, A, torch.tensor([0, 1]), **kw)


@pytest.mark.parametrize("fn,desc", [(cams.explain_scorecam, "scorecam"),
                                     (cams.explain_ablationcam, "ablationcam")])
def test_progress_bar_only_on_request(fn, desc, capsys):
    run = _bar_case(fn)
    run()
    assert capsys.readouterr().err == ""
    run(progress=True)
    err = capsys.readouterr().err
    assert re.search(rf"(^|\r){desc}: +0%\|.*\| 0/5 \[.*\?img/s\]", err), repr(err)
    assert err.endswith("\r") and "\n" not in err, repr(err)  # leave=False: the line is cleared


@pytest.mark.parametrize("fn", [cams.explain_scorecam, cams.explain_ablationcam])
@pytest.mark.parametrize("bad", [True, 2.5, 0])
def test_method_batch_must_be_a_positive_int(fn, bad):
    with pytest.raises(GridcamError, match=rf"method_batch must be an integer >= 1, got {bad!r}"):
        _bar_case(fn)(method_batch=bad)


# --------------------------------------------------------------------------------- Ablation-CAM
def test_ablationcam_forwards_one_image_and_only_live_channels():
    """Image 0: channels 0,1 alive (channel 1 constant 1, not 0), channel 2 all zero (no forward).
    Image 1: all three alive. method_batch=2: each image's trunk input is that one image, the head
    gets 2 then 1 (or 1) ablated copies of the (K,h,w) activations."""
    V = torch.tensor([[1.0, 1.0, 5.0]])
    model = Logged(V).eval()
    A = torch.zeros(2, 3, 2, 2)
    A[0, 0] = torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    A[0, 1] = 1.0
    A[1] = torch.rand(3, 2, 2) + 0.1
    heat, logits = cams.explain_ablationcam(model, model.layer, A, torch.tensor([0, 0]),
                                            method_batch=2)
    assert [r["input"] for r in model.log] == [(2, 3, 2, 2), (1, 3, 2, 2), (1, 3, 2, 2),
                                               (1, 3, 2, 2)]
    assert [r["head"] for r in model.log] == [(2, 3, 2, 2), (2, 3, 2, 2), (2, 3, 2, 2),
                                              (1, 3, 2, 2)]
    # Image 0: y = 1 + 1 = 2; zeroing channel 0 or 1 gives 1: w = (2 - 1)/2 = 0.5 each.
    torch.testing.assert_close(heat[0, 0], 0.5 * A[0, 0] + 0.5 * A[0, 1])


def test_ablationcam_zero_logit_divides_by_one():
    """y = mean(A0) - mean(A1) = 2.5 - 2.5 = 0 exactly: w = (0 - y^k) / 1 = +2.5, -2.5."""
    model = GapNet(torch.tensor([[1.0, -1.0]])).eval()
    A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[4.0, 3.0], [2.0, 1.0]]]])
    heat, logits = cams.explain_ablationcam(model, model.layer, A, torch.tensor([0]))
    assert float(logits[0, 0]) == 0.0
    torch.testing.assert_close(heat[0, 0], torch.tensor([[0.0, 0.0], [2.5, 7.5]]))


def test_ablationcam_default_chunk_is_256_copies():
    torch.manual_seed(3)
    model = Logged(torch.randn(2, 300)).eval()
    cams.explain_ablationcam(model, model.layer, torch.rand(1, 300, 1, 1) + 0.1, torch.tensor([1]))
    assert [r["head"][0] for r in model.log] == [1, 256, 44]


class _Moody(GapNet):
    """Returns ``reply(logits)`` instead of the logits from its second forward on."""

    def __init__(self, reply):
        super().__init__(torch.ones(2, 3))
        self.reply, self.calls = reply, 0

    def forward(self, x):
        self.calls += 1
        out = super().forward(x)
        return out if self.calls == 1 else self.reply(out)


@pytest.mark.parametrize("reply,shown", [(lambda y: (y,), "tuple"),
                                         (lambda y: y[:, :, None], r"\(3, 2, 1\)"),
                                         (lambda y: y[:1], r"\(1, 2\)")])
def test_ablationcam_names_what_a_bad_head_returned(reply, shown):
    model = _Moody(reply).eval()
    with pytest.raises(ValueError, match=rf"^ablationcam needs the part of the model after the CAM "
                                         rf"layer to work per sample on a batch of 3 ablated "
                                         rf"activations, but the model returned {shown}$"):
        cams.explain_ablationcam(model, model.layer, torch.rand(1, 3, 2, 2) + 0.1,
                                 torch.tensor([0]))
    assert not model.layer._forward_hooks


# ------------------------------------------------------------------------------------- registry
@pytest.fixture
def fresh_registry(monkeypatch):
    """Empty METHOD_INFO / METHODS for registry and gridcam.cam (restored afterwards)."""
    info, fns = {}, {}
    for mod in (cam, registry):
        monkeypatch.setattr(mod, "METHOD_INFO", info)
        monkeypatch.setattr(mod, "METHODS", fns)
    return info, fns


def _fa(model, layer, images, targets, *, n=3, p=False):
    return images, targets


def _fb(model, layer, images, targets):
    return images, targets


def test_register_adds_the_record_once(fresh_registry):
    info, fns = fresh_registry
    m = Method(_fa, {"n": "count"}, uses_layer=True, description="d", cost="2F")
    assert registry.register("mine", m) is m
    assert info == {"mine": m} and fns == {"mine": _fa}
    with pytest.raises(ValueError, match="explanation method 'mine' is already registered"):
        registry.register("mine", Method(_fb))
    assert info["mine"] is m and fns["mine"] is _fa


def test_each_record_is_its_catalog_entry_with_its_function():
    """gridcam.cam registers every catalog entry, in order, with the function of its table."""
    assert list(cam.METHOD_INFO) == list(catalog.ENTRIES)
    for name, entry in catalog.ENTRIES.items():
        info = cam.METHOD_INFO[name]
        assert info == Method(cam.METHODS[name], dict(entry.options), uses_layer=entry.uses_layer,
                              description=entry.description, cost=entry.cost,
                              relative=entry.relative, label=entry.label), name
        assert info.options is not entry.options  # a record's options are its own copy
    for name, (fn, _) in {**cams.METHODS, **perturbation.METHODS}.items():
        if name != "hirescam":
            assert cam.METHOD_INFO[name].fn is fn, name
    assert cam.METHOD_INFO["gradcam"].fn is cam.explain_gradcam
    for name in ("hirescam", "linear_approx"):  # the elementwise Grad-CAM, no variant option
        fn = cam.METHOD_INFO[name].fn
        assert fn.func is cam.explain_gradcam and fn.keywords == {"variant": "elementwise"}
        assert cam.METHOD_INFO[name].options == {}


def test_cam_family_records():
    assert cam.METHOD_INFO["scorecam"] == Method(
        cams.explain_scorecam, {"method_batch": "default 16", "progress": "default False"},
        uses_layer=True, description=catalog.ENTRIES["scorecam"].description,
        cost=catalog.ENTRIES["scorecam"].cost, relative=600.0, label="Score-CAM")
    assert cam.METHOD_INFO["ablationcam"].options == {"method_batch": "default 256",
                                                      "progress": "default False"}
    assert cam.METHOD_INFO["eigencam"].relative == 0.6
    assert cam.METHOD_INFO["ablationcam"].relative == 4.0
    assert cams.METHODS["ablationcam"] == (cams.explain_ablationcam,
                                           {"method_batch": 256, "progress": False})


def test_keyword_defaults_are_the_keyword_only_parameters_not_fixed():
    def fn(model, layer, images, targets, plain=1, *, a=2, b=None):
        return images, targets

    assert registry.keyword_defaults(fn) == {"a": 2, "b": None}
    assert registry.keyword_defaults(functools.partial(fn, a=5)) == {"b": None}
    assert registry.keyword_defaults(_fb) == {}


def test_describe_methods_rows():
    rows = {r["name"]: r for r in cam.describe_methods()}
    assert set(rows["gradient"]) == {"name", "label", "description", "cost", "relative", "options",
                                     "uses_layer"}
    assert rows["gradient"]["uses_layer"] is False and rows["scorecam"]["uses_layer"] is True
    assert rows["scorecam"]["options"] == {"method_batch": "default 16", "progress": "default False"}


def test_hand_replaced_function_gets_every_option(monkeypatch):
    """METHODS[name] replaced by hand (or added without a record): its keywords pass as given."""
    seen = {}

    def mine(model, layer, images, targets, **kw):
        seen.update(kw)
        return torch.zeros(images.shape[0], targets.shape[1], 1, 1), torch.zeros(1, 2)

    monkeypatch.setitem(cam.METHODS, "gradcam", mine)
    model = GapNet(torch.ones(2, 3)).eval()
    x = torch.rand(1, 3, 2, 2)
    cam.explain("gradcam", model, model.layer, x, torch.tensor([[0]]), custom=5, samples=2)
    assert seen == {"custom": 5, "samples": 2}
    monkeypatch.setitem(cam.METHODS, "handmade", mine)  # no METHOD_INFO record at all
    assert cam.select_options("handmade", {"anything": 1}) == {"anything": 1}


def test_select_options_errors_list_the_options():
    with pytest.raises(GridcamError, match=r"unknown option\(s\) 'varient', 'zzz' for explanation "
                                           r"method 'smoothgrad'; its options are: samples \(.*\), "
                                           r"sigma \(.*\), generator \("):
        cam.select_options("smoothgrad", {"zzz": 1, "varient": 2})
    with pytest.raises(GridcamError, match=r"method 'gradient'; its options are: none$"):
        cam.select_options("gradient", {"zzz": 1})


# -------------------------------------------------------------------------------------- explain
def test_explain_unknown_method_lists_the_names():
    with pytest.raises(GridcamError, match=r"unknown explanation method 'nope'; choose one of: "
                                           r"ablationcam, .*gradcam, gradcampp, gradient, "):
        cam.explain("nope", nn.Identity(), None, torch.zeros(1, 3, 2, 2), torch.tensor([0]))


def test_explain_needs_images_and_targets():
    model = GapNet(torch.ones(2, 3)).eval()
    x = torch.rand(1, 3, 2, 2)
    for args in ((model.layer, x, None), (x,), (model.layer, None, torch.tensor([0]))):
        with pytest.raises(GridcamError, match=r"^explain\('gradcam'\) needs images \(B,3,H,W\) "
                                               r"and targets \(B,\) or \(B,T\)$"):
            cam.explain("gradcam", model, *args)


def _probe_method(monkeypatch, seen):
    def probe(model, layer, images, targets):
        seen["targets"] = targets
        return torch.zeros(images.shape[0], 1, 1, 1), torch.zeros(1, 2)

    monkeypatch.setitem(cam.METHOD_INFO, "probe", Method(probe))
    monkeypatch.setitem(cam.METHODS, "probe", probe)


def test_explain_moves_targets_to_the_images_device(monkeypatch):
    seen = {}
    _probe_method(monkeypatch, seen)
    images = torch.zeros(2, 3, 4, 4, device="meta")
    heat, _ = cam.explain("probe", nn.Identity().eval(), images, [[1], [0]])
    assert seen["targets"].device.type == "meta" and heat.shape == (2, 1, 1, 1)


def test_explain_train_mode_warning_points_at_the_caller(monkeypatch):
    _probe_method(monkeypatch, {})
    with pytest.warns(UserWarning) as rec:
        cam.explain("probe", nn.Identity().train(), torch.zeros(1, 3, 2, 2), torch.tensor([0]))
    (w,) = [w for w in rec if "train mode" in str(w.message)]
    assert re.search(r"^explain\('probe'\) on a model in train mode: BatchNorm mixes the images of "
                     r"a batch and Dropout is random \(its buffers are put back afterwards\); call "
                     r"model\.eval\(\) first$", str(w.message))
    assert not w.filename.endswith(os.path.join("gridcam", "cam", "__init__.py")), w.filename
