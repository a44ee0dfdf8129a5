"""The CAM family: class activation maps that weight the CAM layer's channels.

Every method here computes ``cam = ReLU(sum_k W_k * A_k)`` from the CAM layer's activations
``A`` (B,K,h,w); only the weighting ``W`` differs (pytorch-grad-cam's design idea). ``W`` is either
one weight per channel (B,T,K), or one weight per channel and position (B,T,K,h,w). The gradient
weightings need ``g = d logit_t / dA``: ONE forward and ONE batched backward
(``is_grads_batched``) for all T targets of a batch. Score-CAM and Ablation-CAM get their weights
from extra forwards of perturbed inputs (or perturbed activations), chunked by ``method_batch``;
Eigen-CAM needs no class at all.

All ``explain_*`` functions share the signature of :func:`gridcam.cam.explain`'s methods::

    heat, logits = explain_gradcampp(model, layer, images (B,3,H,W), targets (B,T) long)

and return ``heatmaps (B,T,h,w)`` float32 >= 0 at the CAM layer's resolution (not normalised,
detached) and ``logits (B,C)`` detached. Call ``model.eval()`` first. No hook outlives a call,
the model's parameters and buffers are never written, and no ``.grad`` is accumulated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..errors import GridcamError
from .gradcam import _as_2d_targets, _check_targets, _prepare_images, target_gradients, upsample
from .hooks import capture
from .inputs import InputError
from .registry import keyword_defaults

__all__ = [
    "METHODS",
    "explain_ablationcam",
    "explain_eigencam",
    "explain_gradcampp",
    "explain_hirescam",
    "explain_layercam",
    "explain_scorecam",
    "explain_xgradcam",
    "layer_activations",
]

#: Default number of perturbed images per forward (Score-CAM and the perturbation methods).
#: On one CPU thread ResNet-18 at 224 px ran 0.13 s/image in batches of 16, 0.17 in batches of 64.
DEFAULT_METHOD_BATCH = 16


def layer_activations(
    model: nn.Module, layer: nn.Module, images: Tensor, targets: Tensor, *, gradients: bool = True
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """One forward of ``images``; the CAM layer's activations and, optionally, their gradients.

    Args:
        model: classifier in eval mode. layer: a sub-module whose output is (B,K,h,w).
        images: (B,3,H,W). targets: (B,T) or (B,) long (-> T=1).
        gradients: also return ``d logits[b, targets[b,t]] / dA`` (one batched backward).
    Returns:
        ``acts`` (B,K,h,w) detached in the layer's dtype; ``grads`` (B,T,K,h,w) float32 or None;
        ``logits`` (B,C) detached; ``targets`` (B,T) long, validated.
    """
    targets = _as_2d_targets(targets, images)
    grad_mode = torch.enable_grad() if gradients else torch.no_grad()
    with torch.inference_mode(False), grad_mode, capture(layer) as feats:
        x = _prepare_images(images) if gradients else images.detach().clone()
        logits = model(x)
        acts = feats.output
        if not isinstance(acts, Tensor) or acts.dim() != 4:
            raise InputError(
                f"the CAM layer {type(layer).__name__} must output a (B,K,h,w) tensor during the "
                f"forward, got {type(acts).__name__}"
                + (f" of shape {tuple(acts.shape)}" if isinstance(acts, Tensor) else "")
            )
        if gradients:
            grads = target_gradients(logits, acts, targets).float()
        else:
            grads = None
            targets = _check_targets(logits, targets)
            targets = targets[:, None] if targets.dim() == 1 else targets
    return acts.detach(), grads, logits.detach(), targets


def _combine(weights: Tensor, acts: Tensor) -> Tensor:
    """``ReLU(sum_k W_k * A_k)``: weights (B,T,K) or (B,T,K,h,w), acts (B,K,h,w) -> (B,T,h,w)."""
    acts = acts.float()
    if weights.dim() == 3:
        cam = torch.einsum("btk,bkhw->bthw", weights.float(), acts)
    else:
        cam = (weights.float() * acts[:, None]).sum(dim=2)
    return cam.clamp_min(0)


Weighting = Callable[[Tensor, Tensor], Tensor]


def _gradient_cam(
    weighting: Weighting, model: nn.Module, layer: nn.Module, images: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """The shared core of the gradient CAMs: one forward, one batched backward, ``weighting``."""
    acts, grads, logits, _ = layer_activations(model, layer, images, targets)
    assert grads is not None
    return _combine(weighting(acts.float(), grads), acts), logits


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den != 0``, else 0 (broadcasting)."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), 0.0)


# ---- weightings: (acts (B,K,h,w) float32, grads (B,T,K,h,w) float32) -> W -------------------

def _gradcampp_weights(acts: Tensor, grads: Tensor) -> Tensor:
    g2 = grads * grads
    denom = 2 * g2 + acts.sum(dim=(-2, -1), keepdim=True)[:, None] * g2 * grads
    # The paper sets alpha = 0 where its denominator vanishes (there the gradient is 0 too).
    alpha = _safe_div(g2, denom)
    return (alpha * grads.clamp_min(0)).sum(dim=(-2, -1))


def _xgradcam_weights(acts: Tensor, grads: Tensor) -> Tensor:
    total = acts.sum(dim=(-2, -1), keepdim=True)  # (B,K,1,1)
    return (_safe_div(acts, total)[:, None] * grads).sum(dim=(-2, -1))


def _hirescam_weights(acts: Tensor, grads: Tensor) -> Tensor:
    return grads


def _layercam_weights(acts: Tensor, grads: Tensor) -> Tensor:
    return grads.clamp_min(0)


def explain_gradcampp(
    model: nn.Module, layer: nn.Module, images: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, "Grad-CAM++: Generalized Gradient-based Visual
    Explanations for Deep Convolutional Networks").

    ``cam = ReLU(sum_k w_k A_k)``, ``w_k = sum_ij alpha_kij ReLU(g_kij)``,
    ``alpha_kij = g_kij^2 / (2 g_kij^2 + sum_ab A_kab g_kij^3)`` (0 where the denominator is 0),
    ``g = d logit_t / dA``. This is the paper's formula for the exponential score ``S = exp(logit)``
    with its per-(image, target) factor ``exp(logit_t)`` dropped (that factor cancels in alpha and
    only scales the map; it overflows float32 for logits above ~88), the simplification
    pytorch-grad-cam uses.

    Returns (B,T,h,w) maps at the CAM layer's size, and logits (B,C).
    Cost per image: 1 forward + 1 backward for all T targets (batched backward).
    """
    return _gradient_cam(_gradcampp_weights, model, layer, images, targets)


def explain_xgradcam(
    model: nn.Module, layer: nn.Module, images: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """XGrad-CAM (Fu et al., BMVC 2020, "Axiom-based Grad-CAM").

    ``cam = ReLU(sum_k w_k A_k)``, ``w_k = sum_ij (A_kij / sum_ab A_kab) g_kij`` (0 for a channel
    whose activations sum to 0), ``g = d logit_t / dA``.

    Returns (B,T,h,w) maps at the CAM layer's size, and logits (B,C).
    Cost per image: 1 forward + 1 backward for all T targets.
    """
    return _gradient_cam(_xgradcam_weights, model, layer, images, targets)


def explain_hirescam(
    model: nn.Module, layer: nn.Module, images: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """HiResCAM (Draelos & Carin, 2020, "Use HiResCAM instead of Grad-CAM for faithful
    explanations of convolutional neural networks").

    ``cam = ReLU(sum_k g_k * A_k)`` (elementwise product), ``g = d logit_t / dA``. The paper's map
    is the sum itself; like every gridcam map it is clipped at 0 here, which makes it exactly the
    GC paper's "elementwise" Grad-CAM (``explain("gradcam", ..., variant="elementwise")``).

    Returns (B,T,h,w) maps at the CAM layer's size, and logits (B,C).
    Cost per image: 1 forward + 1 backward for all T targets.
    """
    return _gradient_cam(_hirescam_weights, model, layer, images, targets)


def explain_layercam(
    model: nn.Module, layer: nn.Module, images: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """LayerCAM (Jiang et al., IEEE TIP 2021, "LayerCAM: Exploring Hierarchical Class Activation
    Maps for Localization").

    ``cam = ReLU(sum_k ReLU(g_k) * A_k)`` (elementwise), ``g = d logit_t / dA``.

    Returns (B,T,h,w) maps at the CAM layer's size, and logits (B,C).
    Cost per image: 1 forward + 1 backward for all T targets.
    """
    return _gradient_cam(_layercam_weights, model, layer, images, targets)


def explain_eigencam(
    model: nn.Module, layer: nn.Module, images: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, "Eigen-CAM: Class Activation Map using
    Principal Components").

    ``cam = ReLU((A - mean_hw A) v)``: the activations, seen as h*w points in R^K, centred and
    projected on their first principal direction ``v`` (first right singular vector of the centred
    (h*w, K) matrix). Sign rule (an SVD's sign is arbitrary): ``v`` is oriented so that
    ``sum_k v_k > 0``; if that sum is exactly 0, so that its largest-magnitude component is
    positive. The map does not depend on the class: the same map is returned for all T targets.

    Returns (B,T,h,w) maps at the CAM layer's size, and logits (B,C).
    Cost per image: 1 forward, no backward.
    """
    acts, _, logits, targets = layer_activations(model, layer, images, targets, gradients=False)
    B, K, h, w = acts.shape
    points = acts.float().flatten(2).transpose(1, 2)  # (B,hw,K)
    centred = points - points.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    v = vh[:, 0]  # (B,K)
    total = v.sum(dim=1)
    peak = v.gather(1, v.abs().argmax(dim=1, keepdim=True))[:, 0]
    sign = torch.where(total != 0, total.sign(), peak.sign())
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    proj = (centred @ (v * sign[:, None])[:, :, None])[..., 0]  # (B,hw)
    cam = proj.clamp_min(0).view(B, 1, h, w).expand(B, targets.shape[1], h, w)
    return cam.contiguous(), logits


def explain_scorecam(
    model: nn.Module,
    layer: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    method_batch: int = DEFAULT_METHOD_BATCH,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Score-CAM (Wang et al., CVPR-W 2020, "Score-CAM: Score-Weighted Visual Explanations for
    Convolutional Neural Networks").

    ``cam = ReLU(sum_k w_k A_k)``, ``w_k = softmax(f(x * M_k))_t``, where ``M_k`` is ``A_k``
    upsampled (bilinear) to the image size and min-max normalised to [0,1] (the authors' code:
    the class probability of the masked image, no baseline subtracted). A channel whose map is
    constant gets ``w_k = 0`` without a forward (the authors' code skips it too).

    Args:
        method_batch: masked images per forward (memory ~ method_batch images' activations).
        progress: show a progress bar over the chunks.
    Returns (B,T,h,w) maps at the CAM layer's size, and logits (B,C).
    Cost per image: 1 forward + one forward per non-constant channel (K = 512 for ResNet-18), no
    backward; the T targets share those forwards.
    """
    _check_method_batch(method_batch)
    acts, _, logits, targets = layer_activations(model, layer, images, targets, gradients=False)
    B, K = acts.shape[:2]
    T = targets.shape[1]
    flat = acts.float().flatten(2)
    pairs = (flat.amax(dim=2) > flat.amin(dim=2)).nonzero()  # (N,2): (image, channel)
    weights = acts.new_zeros((B, T, K), dtype=torch.float32)
    x = images.detach()
    with torch.no_grad(), _bar(progress, len(pairs), "scorecam") as bar:
        for start in range(0, len(pairs), method_batch):
            bi, ki = pairs[start:start + method_batch].unbind(1)
            maps = upsample(acts[bi, ki][:, None].float(), x.shape[-2:])  # (n,1,H,W)
            lo = maps.amin(dim=(-2, -1), keepdim=True)
            span = (maps.amax(dim=(-2, -1), keepdim=True) - lo).clamp_min(1e-12)
            probs = F.softmax(model(x[bi] * ((maps - lo) / span).to(x.dtype)).float(), dim=1)
            weights[bi, :, ki] = probs.gather(1, targets[bi])
            bar.update(len(bi))
    return _combine(weights, acts), logits


def explain_ablationcam(
    model: nn.Module,
    layer: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    method_batch: int = 256,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020, "Ablation-CAM: Visual Explanations for Deep
    Convolutional Network via Gradient-free Localization").

    ``cam = ReLU(sum_k w_k A_k)``, ``w_k = (y_t - y_t^k) / |y_t|``: ``y_t`` the target logit,
    ``y_t^k`` the logit with channel k of the CAM layer set to 0. The paper divides by ``y_t``;
    gridcam divides by ``|y_t|`` (equal for a positive logit; for a negative one the paper's map
    would be flipped into its complement) and uses 1 where ``y_t = 0``.

    Implementation: a forward hook on ``layer`` replaces its (1,K,h,w) output for one image by
    ``n = method_batch`` ablated copies, so the trunk before the layer runs once per chunk and only
    the head runs n times. This needs a model whose part after ``layer`` works per sample on
    whatever batch it gets (true for ResNet/VGG/AlexNet heads; anything else raises).

    Args:
        method_batch: ablated copies per forward (default 256: a copy costs only the head and
            K*h*w floats, so larger chunks save trunk forwards). progress: show a progress bar.
    Returns (B,T,h,w) maps at the CAM layer's size, and logits (B,C).
    Cost per image: 1 + ceil(K' / method_batch) forwards, plus K' forwards of the head only
    (after the CAM layer), K' <= K the channels not 0 everywhere (a channel that is 0 everywhere
    adds nothing to the map: no forward); no backward; the T targets share them.
    """
    _check_method_batch(method_batch)
    acts, _, logits, targets = layer_activations(model, layer, images, targets, gradients=False)
    B, K = acts.shape[:2]
    score = logits.float().gather(1, targets)  # (B,T)
    scale = torch.where(score != 0, score.abs(), torch.ones_like(score))
    weights = score.new_zeros((B, targets.shape[1], K))
    # A channel that is 0 everywhere contributes w_k * 0 whatever w_k is: no forward for it.
    alive = acts.flatten(2).ne(0).any(dim=2)  # (B,K)
    with torch.no_grad(), _bar(progress, int(alive.sum()), "ablationcam") as bar:
        for b in range(B):
            channels = alive[b].nonzero()[:, 0]
            for start in range(0, len(channels), method_batch):
                ks = channels[start:start + method_batch]
                out = _ablated_forward(model, layer, images[b:b + 1], acts[b], ks)
                ablated = out.float()[:, targets[b]]  # (n,T)
                weights[b, :, ks] = ((score[b] - ablated) / scale[b]).t()
                bar.update(len(ks))
    return _combine(weights, acts), logits


def _ablated_forward(
    model: nn.Module, layer: nn.Module, image: Tensor, acts: Tensor, channels: Tensor
) -> Tensor:
    """Logits (n,C) of ``image`` (1,3,H,W) with ``layer``'s output replaced by n copies of
    ``acts`` (K,h,w), copy i with channel ``channels[i]`` zeroed."""
    n = len(channels)
    ablated = acts[None].repeat(n, 1, 1, 1)
    ablated[torch.arange(n, device=acts.device), channels] = 0

    def replace(_module: nn.Module, _inputs: Any, output: Any) -> Tensor:
        return ablated.to(output.dtype)

    handle = layer.register_forward_hook(replace)
    try:
        out = model(image.detach())
    finally:
        handle.remove()
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != n:
        raise ValueError(
            "ablationcam needs the part of the model after the CAM layer to work per sample on a "
            f"batch of {n} ablated activations, but the model returned "
            f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}"
        )
    return out


def _check_method_batch(method_batch: int) -> None:
    if isinstance(method_batch, bool) or not isinstance(method_batch, int) or method_batch < 1:
        raise GridcamError(f"method_batch must be an integer >= 1, got {method_batch!r}")


def _bar(progress: bool, total: int, desc: str) -> tqdm:
    """A tqdm progress bar (disabled unless ``progress``) used as a context manager."""
    return tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)


#: name -> (fn, {option: its default}) of the CAM family. The defaults are the functions' own
#: (:func:`~gridcam.cam.registry.keyword_defaults`); what ``gridcam methods`` shows of each method
#: (description, cost, options' help) is its entry in :mod:`gridcam.cam.catalog`.
METHODS: dict[str, tuple[Callable[..., tuple[Tensor, Tensor]], dict[str, Any]]] = {
    name: (fn, keyword_defaults(fn)) for name, fn in {
        "gradcampp": explain_gradcampp,
        "xgradcam": explain_xgradcam,
        "hirescam": explain_hirescam,  # registered as the elementwise Grad-CAM (cam/__init__.py)
        "layercam": explain_layercam,
        "eigencam": explain_eigencam,
        "scorecam": explain_scorecam,
        "ablationcam": explain_ablationcam,
    }.items()
}
