"""Grad-CAM, differentiable and batched over images and target classes.

For a target class ``c`` the score is ``s = logit_c`` (pre-softmax), ``A`` (B,K,h,w) are the
activations of the CAM layer and ``g = ds/dA``. Two variants (see DESIGN.md):

* ``"classic"`` (Selvaraju et al.): ``cam = ReLU(sum_k mean_hw(g_k) * A_k)``;
* ``"elementwise"`` (what the paper trains and evaluates with): ``cam = ReLU(sum_k g_k * A_k)``.

With global average pooling both are equal up to scale; with global max pooling they differ.
``create_graph=True`` keeps the heatmap in the autograd graph so a loss on it reaches the model's
parameters (the consistency loss is trained this way).
"""

from __future__ import annotations

from collections.abc import Sequence
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hooks import capture
from .inputs import InputError

__all__ = [
    "VARIANTS",
    "NORMALIZATIONS",
    "target_gradients",
    "grad_cam",
    "normalize_cam",
    "upsample",
    "explain_gradcam",
    "zero_maps",
]

VARIANTS = ("elementwise", "classic")
NORMALIZATIONS = ("paper", None, "max")

# Devices where T targets take T backwards of one graph instead of one vmapped backward.
_LOOP_TARGETS_ON = ("cpu",)

# Added to the denominator and to the result by the paper's normalisation; exact value matters
# for reproducing its loss numbers.
_PAPER_EPS = 1e-8


def _check_targets(logits: Tensor, targets: Tensor) -> Tensor:
    """Validate ``targets`` against ``logits`` (B,C); return them as long on the logits' device."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B,C), got shape {tuple(logits.shape)}")
    targets = torch.as_tensor(targets, device=logits.device)
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise InputError(f"targets must be integer class indices, got dtype {targets.dtype}")
    targets = targets.long()
    if targets.dim() not in (1, 2) or targets.shape[0] != logits.shape[0]:
        raise InputError(
            f"targets must be (B,) or (B,T) with B={logits.shape[0]}, got shape {tuple(targets.shape)}"
        )
    # Checked on the CPU only: on a GPU it would cost a host sync per call (two per training step);
    # there an out-of-range index surfaces as a device-side assert from the gather instead.
    if (targets.device.type == "cpu" and targets.numel()
            and bool(((targets < 0) | (targets >= logits.shape[1])).any())):
        raise InputError(
            f"targets must lie in [0, {logits.shape[1]}), got values in "
            f"[{int(targets.min())}, {int(targets.max())}]"
        )
    return targets


def target_gradients(
    logits: Tensor,
    inputs: Tensor,
    targets: Tensor,
    *,
    create_graph: bool = False,
    retain_graph: bool | None = None,
) -> Tensor:
    """Gradient of each sample's target logit with respect to ``inputs``.

    Args:
        logits: (B,C) scores, computed from ``inputs`` (which must be in their autograd graph).
        inputs: (B,...) tensor, e.g. CAM-layer activations (B,K,h,w) or images (B,3,H,W).
        targets: (B,) long -> result (B,...); (B,T) long -> result (B,T,...). T classes per
            sample share ONE forward: on CPU T backwards of its graph, elsewhere one batched
            backward (``is_grads_batched=True``, i.e. vmap over the backward pass).
        create_graph: keep the result differentiable (needed to train through Grad-CAM).
        retain_graph: keep the graph for a later backward; defaults to ``create_graph``.

    Returns:
        d logits[b, targets[b(,t)]] / d inputs[b], in ``inputs``' dtype.

    Why a single backward is exact: the one-hot ``grad_outputs`` sums the per-sample scores, and
    sample b's logits depend only on sample b's inputs when the part of the network between
    ``inputs`` and the logits works per sample (true for ResNet/VGG/AlexNet heads in any mode,
    and for the whole network in ``eval()`` mode).
    """
    targets = _check_targets(logits, targets)
    if not inputs.requires_grad:
        raise ValueError(
            "the features/inputs are not in the autograd graph of the logits: run the forward with "
            "gradients enabled (not under torch.no_grad()/inference_mode) and with parameters or "
            "inputs that require grad"
        )
    if retain_graph is None:
        retain_graph = create_graph
    B, C = logits.shape
    if targets.dim() == 1:
        grad_out = torch.zeros_like(logits)
        grad_out.scatter_(1, targets[:, None], 1.0)
        (grads,) = torch.autograd.grad(
            logits, inputs, grad_out, create_graph=create_graph, retain_graph=retain_graph
        )
        return grads
    T = targets.shape[1]
    # grad_outputs for the batched backward: (T,B,C), one-hot at targets[b,t] in slice t.
    grad_out = logits.new_zeros((T, B, C))
    grad_out.scatter_(2, targets.t()[:, :, None], 1.0)
    if T == 1:
        (grads,) = torch.autograd.grad(
            logits, inputs, grad_out[0], create_graph=create_graph, retain_graph=retain_graph
        )
        return grads[:, None]
    if inputs.device.type in _LOOP_TARGETS_ON:
        # On CPU, T backwards of the one graph beat the vmapped backward (resnet18, 224 px, 10
        # images, T=3, 1 thread: 2.3 s vs 3.0 s; equal for 1 image); same gradients.
        parts = [
            torch.autograd.grad(logits, inputs, grad_out[t], create_graph=create_graph,
                                retain_graph=True if t < T - 1 else retain_graph)[0]
            for t in range(T)
        ]
        return torch.stack(parts, dim=1)
    (grads,) = torch.autograd.grad(
        logits,
        inputs,
        grad_out,
        create_graph=create_graph,
        retain_graph=retain_graph,
        is_grads_batched=True,
    )
    return grads.transpose(0, 1)  # (T,B,...) -> (B,T,...)


def normalize_cam(cam: Tensor, normalize: str | None = "paper") -> Tensor:
    """Normalise heatmaps over their last two (spatial) dims.

    Args:
        cam: (...,h,w) non-negative heatmaps.
        normalize: ``"paper"``: ``cam / (cam.sum(hw) + 1e-8) + 1e-8`` (the paper's rule, used for the
            consistency loss; a map then sums to ~1 so maps of different sizes are comparable);
            ``"max"``: ``cam / cam.max(hw)`` (an all-zero map stays zero); ``None``: unchanged.
    Returns:
        tensor of the same shape and dtype.
    """
    if normalize is None:
        return cam
    if normalize == "paper":
        return cam / (cam.sum(dim=(-2, -1), keepdim=True) + _PAPER_EPS) + _PAPER_EPS
    if normalize == "max":
        peak = cam.amax(dim=(-2, -1), keepdim=True)
        # Division by 1 where the map is all zero keeps it zero instead of NaN.
        return cam / torch.where(peak > 0, peak, torch.ones_like(peak))
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")


def zero_maps(heat: Tensor) -> Tensor:
    """Which heatmaps are zero everywhere: (...,h,w) -> (...) bool.

    Works on raw maps, ``"max"``-normalised ones (which stay zero) and ``"paper"``-normalised ones
    (a zero map becomes the constant 1e-8 there, while a map whose raw values sum well above 1e-8
    sums to ~1, so its largest value is about 1/(h*w) or more): a map is zero when no value
    exceeds twice the paper's epsilon.
    """
    return heat.detach().amax(dim=(-2, -1)) <= 2 * _PAPER_EPS


def grad_cam(
    logits: Tensor,
    features: Tensor,
    targets: Tensor,
    variant: str = "elementwise",
    create_graph: bool = False,
    normalize: str | None = "paper",
    *,
    retain_graph: bool | None = None,
) -> Tensor:
    """Grad-CAM heatmaps for the given target classes.

    Args:
        logits: (B,C) pre-softmax scores computed from ``features``.
        features: (B,K,h,w) CAM-layer activations, in the autograd graph of ``logits`` (take them
            with :func:`gridcam.cam.capture`).
        targets: (B,) long class per sample -> (B,h,w); (B,T) long -> (B,T,h,w), all T classes of a
            sample from the one forward that produced ``logits`` (batched backward).
        variant: ``"elementwise"`` (paper: ``ReLU(sum_k g_k A_k)``) or ``"classic"``
            (``ReLU(sum_k mean_hw(g_k) A_k)``).
        create_graph: keep the heatmap differentiable w.r.t. the model's parameters (training),
            through both the activations and their gradients. If False the result is detached.
        normalize: ``"paper"`` (default), ``"max"`` or ``None``; see :func:`normalize_cam`.
        retain_graph: keep the graph after the backward; defaults to ``create_graph``. Set it when
            the same forward is used for another backward later (e.g. the classification loss).

    Returns:
        float32 heatmaps, non-negative. The arithmetic is done in float32 even when the features
        are bf16/fp16 (autocast), because the paper normalisation's 1e-8 underflows in half
        precision.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if features.dim() != 4 or features.shape[0] != logits.shape[0]:
        raise ValueError(
            f"features must be (B,K,h,w) with B={logits.shape[0]}, got shape {tuple(features.shape)}"
        )
    grads = target_gradients(
        logits, features, targets, create_graph=create_graph, retain_graph=retain_graph
    ).float()
    # Without create_graph the gradients are constants and the graph is freed, so a heatmap still
    # tied to the activations would only invite a failing backward later: return it detached.
    acts = features.float() if create_graph else features.detach().float()
    if grads.dim() == 5:  # (B,T,K,h,w): broadcast the activations over T
        acts = acts[:, None]
    if variant == "classic":
        grads = grads.mean(dim=(-2, -1), keepdim=True)
    cam = torch.relu((grads * acts).sum(dim=-3))
    return normalize_cam(cam, normalize)


def upsample(heat: Tensor, size: int | Sequence[int]) -> Tensor:
    """Bilinearly resize heatmaps (``align_corners=False``), e.g. to the image's pixel size.

    Args:
        heat: (B,h,w) or (B,T,h,w).
        size: output (H,W), or an int for a square output.
    Returns:
        (B,H,W) or (B,T,H,W), same dtype; differentiable.
    """
    if heat.dim() not in (3, 4):
        raise ValueError(f"heat must be (B,h,w) or (B,T,h,w), got shape {tuple(heat.shape)}")
    if isinstance(size, int):
        size = (size, size)
    size = (int(size[0]), int(size[1]))
    lead = heat.shape[:-2]
    flat = heat.reshape(-1, 1, *heat.shape[-2:])
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def _prepare_images(images: Tensor) -> Tensor:
    """A fresh leaf copy of ``images`` that requires grad.

    Making the input require grad guarantees the CAM-layer output is in the graph even when the
    model's parameters are frozen; ``clone`` also turns an inference-mode tensor into a normal one.
    """
    return images.detach().clone().requires_grad_(True)


def _as_2d_targets(targets: Tensor, images: Tensor) -> Tensor:
    targets = torch.as_tensor(targets, device=images.device)
    return targets[:, None] if targets.dim() == 1 else targets


def explain_gradcam(
    model: nn.Module,
    layer: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    variant: str = "elementwise",
) -> tuple[Tensor, Tensor]:
    """Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization", ICCV 2017) for evaluation: one forward, one batched backward
    for all T targets.

    Formula: classic ``ReLU(sum_k mean_hw(g_k) A_k)``; elementwise (the paper's code, also
    HiResCAM: Draelos & Carin 2020, and TorchRay's "linear approximation" read at ``layer``)
    ``ReLU(sum_k g_k A_k)``, ``A`` = ``layer``'s output, ``g = d logit_t / dA``.
    Cost: 1 forward + 1 backward (through the head after ``layer``) per image.

    Args:
        model: the classifier (call ``model.eval()`` first).
        layer: its CAM layer (``models.cam_layer(model)``).
        images: (B,3,H,W) normalised images.
        targets: (B,T) long (a (B,) tensor is treated as T=1).
        variant: ``"elementwise"`` (paper) or ``"classic"``.

    Returns:
        heatmaps (B,T,h,w) float32 at the CAM layer's resolution, non-negative, not normalised,
        detached; logits (B,C) detached.
    """
    targets = _as_2d_targets(targets, images)
    with torch.inference_mode(False), torch.enable_grad():
        head = _forward_from_layer(model, layer, images)
        if head is not None:
            logits, feats_out = head
        else:
            with capture(layer) as feats:
                logits = model(_prepare_images(images))
            feats_out = feats.output
        if not isinstance(feats_out, torch.Tensor):
            raise InputError(
                f"the CAM layer {type(layer).__name__} produced no tensor during the forward "
                "(is it a sub-module of the model that is actually called?)"
            )
        heat = grad_cam(logits, feats_out, targets, variant=variant, normalize=None)
    return heat.detach(), logits.detach()


def _forward_from_layer(model: nn.Module, layer: nn.Module, images: Tensor) -> tuple[Tensor, Tensor] | None:
    """Forward with autograd recording only the head after ``layer``: ``(logits, A)``, or None.

    Grad-CAM needs ``d logits / dA`` only, so the trunk before the layer runs under ``no_grad``
    (no saved activations, cheaper kernels); a hook swaps the layer's output for a leaf ``A`` that
    requires grad and turns grad mode on for the rest of the forward. The same kernels give the
    same values as a fully recorded forward. The head sees a copy of ``A``, so an in-place op
    after the layer does not touch the leaf. None (use a recorded forward) when the layer ran
    other than once or the logits do not depend on it.
    """
    leaves: list[Tensor] = []

    def hook(_m: nn.Module, _inp: object, out: object) -> object:
        if not isinstance(out, torch.Tensor):
            return None
        leaf = out.detach().requires_grad_(True)
        leaves.append(leaf)
        torch.set_grad_enabled(True)  # the head is recorded; the no_grad block's exit restores
        return leaf.clone()

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(images.detach())
    finally:
        handle.remove()
    if len(leaves) != 1 or not logits.requires_grad:
        return None
    return logits, leaves[0]
