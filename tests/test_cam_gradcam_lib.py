"""The CAM family against pytorch-grad-cam 1.5.7 (a test-only dependency).

The gradient CAMs and Eigen-CAM run on a torchvision resnet18 at layer4 (the CAM layer, where a
global-average-pooled head gives every pixel of a channel the same gradient) and at layer3 (where
the gradient varies per pixel, so Grad-CAM, HiResCAM and XGrad-CAM differ). Score-CAM and
Ablation-CAM do one forward per channel, so they run on gridcam's tiny_resnet (128 channels in
layer4 instead of 512). Random weights, random BatchNorm, 2 images.

pytorch-grad-cam returns maps min-max scaled and resized to the input. Two comparisons:

* raw: its map at the layer's resolution, from the CAM object's own ``get_cam_image`` on the
  activations and gradients it recorded in the same call, clipped at 0 as its
  ``compute_cam_per_layer`` does, against gridcam's map (to 1e-5 of the map's maximum);
* end result: its output against gridcam's map put through its own post-processing
  (:func:`_pgc_scaling`), to 1e-5.

Equal: ``gradcam(variant="classic")`` = GradCAM, ``gradcam`` (default, elementwise) = ``hirescam``
= HiResCAM, ``xgradcam`` = XGradCAM, ``layercam`` = LayerCAM. Pinned differences, each reproduced
exactly by recomputing one side with the other's choice: Grad-CAM++ (pytorch-grad-cam adds 1e-6
to alpha's denominator), Eigen-CAM (sign of the principal direction), Score-CAM (softmax over the
channels of the target logits instead of the class probability; align_corners=True upsampling),
Ablation-CAM (divides by y_t instead of abs(y_t): for a negative target logit its map is
gridcam's with the sign of the sum flipped).
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gridcam import cam, models
from gridcam.cam import cams
from reference_checks import close, correlation, randomize_batch_norm
from test_cam_family import GapNet

pgc = pytest.importorskip("pytorch_grad_cam", reason="grad-cam (pip install -e .[test]) is not installed")
torchvision = pytest.importorskip("torchvision")
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

X = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))  # layer3 8x8, layer4 4x4
X_TINY = X[:, :, :96, :96].contiguous()  # tiny_resnet's layer4: 3x3
TARGETS = torch.tensor([3, 5])


@functools.cache
def _pristine(arch: str) -> nn.Module:
    torch.manual_seed(0)
    if arch == "resnet18":
        model = torchvision.models.resnet18(num_classes=7)
    else:
        model = models.create("tiny_resnet", num_classes=7)
    return randomize_batch_norm(model, seed=0).eval()


def _model(arch: str = "resnet18") -> nn.Module:
    """A fresh copy: pytorch-grad-cam's backward leaves ``.grad`` on the parameters."""
    return copy.deepcopy(_pristine(arch))


def _pgc(peer: str, model: nn.Module, layer: nn.Module, x: Tensor, targets: Tensor,
         **attrs: object) -> tuple[Tensor, Tensor, Tensor]:
    """pytorch-grad-cam's ``peer`` on ``x``: (raw map (B,h,w) at the layer's resolution, signed,
    not scaled; its end result (B,H,W); the activations (B,K,h,w) it recorded)."""
    with getattr(pgc, peer)(model, [layer]) as method:
        for name, value in attrs.items():
            setattr(method, name, value)
        wanted = [ClassifierOutputTarget(int(t)) for t in targets]
        full = method(x, wanted)
        record = method.activations_and_grads
        acts = record.activations[0].numpy()
        grads = record.gradients[0].numpy() if record.gradients else None
        raw = method.get_cam_image(x, layer, wanted, acts, grads, False)
    return torch.from_numpy(raw), torch.from_numpy(full), torch.from_numpy(acts)


def _pgc_scaling(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """pytorch-grad-cam's post-processing of (B,h,w) maps clipped at 0: min-max scale and resize
    each to ``size`` (H,W) (``compute_cam_per_layer``), then min-max scale again
    (``aggregate_multi_layers``, one layer); a map that is 0 everywhere stays 0."""
    return torch.from_numpy(scale_cam_image(scale_cam_image(maps.numpy(), size[::-1])))


def _both(method: str, peer: str, layer: str, **opts: object) -> tuple[Tensor, Tensor, Tensor]:
    """(gridcam's map, pytorch-grad-cam's raw map clipped at 0, its end result) on resnet18."""
    model = _model()
    ours, _ = cam.explain(method, model, getattr(model, layer), X, TARGETS, **opts)
    raw, full, _ = _pgc(peer, model, getattr(model, layer), X, TARGETS)
    return ours, raw.clamp(min=0), full


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
@pytest.mark.parametrize("method, opts, peer", [
    ("gradcam", {"variant": "classic"}, "GradCAM"),
    ("gradcam", {}, "HiResCAM"),
    ("hirescam", {}, "HiResCAM"),
    ("xgradcam", {}, "XGradCAM"),
    ("layercam", {}, "LayerCAM"),
])
def test_gradient_cams_match_pytorch_grad_cam(method, opts, peer, layer):
    ours, raw, full = _both(method, peer, layer, **opts)
    close(ours, raw)
    torch.testing.assert_close(_pgc_scaling(ours, X.shape[-2:]), full, rtol=0, atol=1e-5)


def test_gridcams_default_gradcam_is_hirescam_not_pytorch_grad_cams_gradcam():
    """At layer3 the gradient varies per pixel: gridcam's default ``gradcam`` (the paper's
    elementwise variant) is HiResCAM there, and differs from pytorch-grad-cam's GradCAM (channel
    means of the gradient), which is ``variant="classic"``."""
    ours, raw, _ = _both("gradcam", "GradCAM", "layer3")
    assert (ours - raw).abs().max() > 0.1 * raw.max()


def _gradcampp(acts: Tensor, grads: Tensor, eps: float) -> Tensor:
    """Grad-CAM++ (B,h,w) from activations (B,K,h,w) and gradients (B,K,h,w), with ``eps`` added
    to alpha's denominator: ``alpha = g^2 / (2 g^2 + sum_ab A_ab g^3 + eps)``, 0 where g = 0."""
    g2 = grads * grads
    den = 2 * g2 + acts.sum(dim=(-2, -1), keepdim=True) * g2 * grads + eps
    alpha = torch.where(grads != 0, g2 / den, 0.0)
    weights = (alpha * grads.clamp(min=0)).sum(dim=(-2, -1))
    return torch.einsum("bk,bkhw->bhw", weights, acts).clamp(min=0)


@pytest.mark.parametrize("layer, band", [("layer3", (0.999, 0.9999)), ("layer4", (0.998, 0.9995))])
def test_gradcampp_differs_from_pytorch_grad_cam_by_its_eps(layer, band):
    """pytorch-grad-cam adds eps = 1e-6 to alpha's denominator ``2 g^2 + S g^3``. With gradients
    of ~1e-3 (g^2 ~ 1e-6, as here) that is not small: it shrinks the alphas of channels with small
    gradients. Its map is gridcam's formula with that eps (to 1e-5), gridcam's the formula
    without; the two correlate 0.9990-0.9995 per map (measured)."""
    model = _model()
    ours, raw, _ = _both("gradcampp", "GradCAMPlusPlus", layer)
    acts, grads, _, _ = cams.layer_activations(model, getattr(model, layer), X, TARGETS)
    close(ours, _gradcampp(acts, grads[:, 0], eps=0.0))
    close(raw, _gradcampp(acts, grads[:, 0], eps=1e-6))
    corr = correlation(ours, raw)
    assert bool(((corr > band[0]) & (corr < band[1])).all()), corr


def _pgc_direction(acts: Tensor) -> np.ndarray:
    """The principal direction (B,K) pytorch-grad-cam's ``get_2d_projection`` projects on: the
    first right singular vector of the centred (h*w, K) activations, with LAPACK's sign."""
    flat = acts.flatten(2).transpose(1, 2).numpy()
    flat = flat - flat.mean(axis=1, keepdims=True)
    return np.stack([np.linalg.svd(f, full_matrices=True)[2][0] for f in flat])


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_eigencam_matches_pytorch_grad_cam_up_to_the_direction_sign(layer):
    """Same projection; gridcam orients the direction v so that sum(v) > 0, pytorch-grad-cam keeps
    the sign the SVD returns: gridcam's map is ReLU(sign(sum v) * its signed map)."""
    model = _model()
    ours, _ = cam.explain("eigencam", model, getattr(model, layer), X, TARGETS)
    raw, full, acts = _pgc("EigenCAM", model, getattr(model, layer), X, TARGETS)
    sign = torch.from_numpy(np.sign(_pgc_direction(acts).sum(axis=1))).float()
    close(ours, (sign[:, None, None] * raw).clamp(min=0))
    assert bool((sign > 0).all())  # on these inputs the signs agree, and so do the end results
    torch.testing.assert_close(_pgc_scaling(ours, X.shape[-2:]), full, rtol=0, atol=1e-5)


def test_eigencam_sign_follows_the_activations_not_the_svd():
    """Rank-one activations A_k = pattern * u_k + c_k: for u and -u the SVD returns the same
    direction up to sign, and pytorch-grad-cam's map is the same for both (high where the pattern
    is high), although for -u the activations are high where the pattern is low. gridcam's map
    follows the activations: for -u it is ReLU(-(pytorch-grad-cam's signed map))."""
    pattern = torch.arange(12.0).view(3, 4) ** 1.5
    model = GapNet(torch.ones(2, 3)).eval()
    for sign in (1.0, -1.0):
        u = sign * torch.tensor([1.0, 2.0, 2.0]) / 3
        A = (pattern[None] * u[:, None, None] + torch.tensor([5.0, 1.0, 2.0])[:, None, None])[None]
        theirs = torch.from_numpy(get_2d_projection(A.numpy()))
        ours, _ = cams.explain_eigencam(model, model.layer, A, torch.tensor([0]))
        assert theirs[0, 2, 3] > 0  # pytorch-grad-cam: the pattern's peak, for u and for -u
        close(ours[:, 0], (sign * theirs).clamp(min=0))


def _scorecam(model: nn.Module, x: Tensor, targets: Tensor, *, align_corners: bool,
              over_channels: bool) -> Tensor:
    """Score-CAM (B,h,w) at tiny_resnet's layer4 with the two choices where gridcam and
    pytorch-grad-cam differ. Masks: each channel upsampled bilinearly (``align_corners``: False in
    gridcam and the authors' code, True in pytorch-grad-cam's ``UpsamplingBilinear2d``) and
    min-max normalised (+1e-8 in the denominator, pytorch-grad-cam's). Weights: the target's
    class probability (softmax over the classes) of the masked image, 0 for a constant channel
    (gridcam, the authors' code); or, ``over_channels``, a softmax over the K channels of the
    masked images' target logits, constant channels included (pytorch-grad-cam)."""
    acts, _, _, t = cams.layer_activations(model, model.layer4, x, targets, gradients=False)
    maps = F.interpolate(acts, size=x.shape[-2:], mode="bilinear", align_corners=align_corners)
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - lo
    masks = (maps - lo) / (span + 1e-8)
    with torch.no_grad():
        logits = torch.stack([model(x[b] * masks[b][:, None]) for b in range(len(x))])  # (B,K,C)
    index = t[:, None, :].expand(-1, logits.shape[1], -1)
    if over_channels:
        weights = torch.softmax(logits.gather(2, index)[..., 0], dim=1)
    else:
        weights = torch.softmax(logits, dim=2).gather(2, index)[..., 0]
        weights = torch.where(span.flatten(1) > 0, weights, 0.0)
    return torch.einsum("bk,bkhw->bhw", weights, acts).clamp(min=0)


def test_scorecam_differs_from_pytorch_grad_cam_in_weights_and_upsampling():
    """gridcam's map is the formula with gridcam's two choices, pytorch-grad-cam's the formula with
    its two (each to 1e-5); either choice alone changes the map by more than 1 % of its maximum;
    the two maps correlate 0.978 and 0.989 (measured) and differ by up to 0.18 after scaling."""
    model = _model("tiny_resnet")
    ours, _ = cam.explain("scorecam", model, model.layer4, X_TINY, TARGETS)
    raw, _, _ = _pgc("ScoreCAM", model, model.layer4, X_TINY, TARGETS, batch_size=64)
    raw = raw.clamp(min=0)
    formula = functools.partial(_scorecam, model, X_TINY, TARGETS)
    close(ours, formula(align_corners=False, over_channels=False))
    close(raw, formula(align_corners=True, over_channels=True))
    for half in (formula(align_corners=True, over_channels=False),
                 formula(align_corners=False, over_channels=True)):
        half = half / half.amax(dim=(-2, -1), keepdim=True)
        assert float((half - ours / ours.amax(dim=(-2, -1), keepdim=True)).abs().max()) > 0.01
        assert float((half - raw / raw.amax(dim=(-2, -1), keepdim=True)).abs().max()) > 0.01
    corr = correlation(ours, raw)
    assert bool(((corr > 0.97) & (corr < 0.995)).all()), corr


def test_ablationcam_matches_pytorch_grad_cam_but_for_the_sign_of_a_negative_logit():
    """Image 0 has a positive target logit: equal maps. Image 1's target logit is negative:
    pytorch-grad-cam divides the logit drop by y_t, gridcam by abs(y_t), so its signed map is
    minus gridcam's. Here gridcam's sum is positive everywhere: pytorch-grad-cam's map is 0
    everywhere, which its min-max scaling leaves at 0, while gridcam's scales to a maximum of 1:
    a difference of 1.0 after scaling. pytorch-grad-cam ablates a channel to 0 only when the
    layer's output has a 0 somewhere (else to its minimum - 1e7), gridcam always to 0: the same
    after a ReLU."""
    model = _model("tiny_resnet")
    with torch.no_grad():
        logits = model(X_TINY)
    targets = torch.stack([logits[0].argmax(), logits[1].argmin()])
    assert logits[0, targets[0]] > 0 > logits[1, targets[1]]
    ours, _ = cam.explain("ablationcam", model, model.layer4, X_TINY, targets)
    raw, full, acts = _pgc("AblationCAM", model, model.layer4, X_TINY, targets, batch_size=64)
    assert acts.min() == 0
    close(ours[0], raw[0].clamp(min=0))
    close(ours[1], (-raw[1]).clamp(min=0))
    assert raw[1].max() < 0 and full[1].max() == 0
    scaled = _pgc_scaling(ours, X_TINY.shape[-2:])
    torch.testing.assert_close(scaled[0], full[0], rtol=0, atol=1e-5)
    assert abs(float((scaled[1] - full[1]).abs().max()) - 1.0) < 1e-5
