"""One training step's losses: plain classification, or classification + Grad-CAM consistency.

Pure per-batch tensor code (no I/O, no optimizer): :func:`gc_step` returns the total loss (in the
autograd graph) and detached parts; the loop does ``backward()`` and the optimizer step. Keeping it
pure makes it testable on its own and lets the benchmark time exactly what training runs.

The Grad-CAM consistency step (DESIGN.md, "The method"), for a batch ``x`` (B,3,H,W):

1. one forward of ``x`` with the CAM layer captured -> logits (the classification loss) and
   ``t = grad_cam(logits, A, c, create_graph=True)``: the heatmap comes from the SAME forward as
   the classification loss, and only ``d logit_c / dA`` is taken (a backward through the head
   alone, e.g. pooling + fc for a ResNet), not a backward through the whole network;
2. negatives: three per sample, from the batch itself (``grid.sample_negatives``: no extra
   decoding) or given by the loader (the paper's ``--negatives dataset``);
3. the composite (B,3,2H,2W) (``grid.compose``), one forward -> ``u`` for the same class, again a
   head-only gradient with ``create_graph=True``;
4. ``loss = cls + lam * grid.gc_loss(t, u, quadrants, (H, W))``; the caller runs ONE backward
   through everything (including the double backward through both heatmaps).

Cost: FLOPs of a 224 px forward+backward plus a 448 px forward+backward (4x), i.e. about 5x a
plain step; with ``lam == 0`` nothing but the plain step runs (no capture, no composite).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import ContextManager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gridcam import cam, grid

__all__ = ["StepResult", "amp_setup", "classification_loss", "gc_step", "gather_negatives"]


@dataclass
class StepResult:
    """What one step computed.

    Attributes:
        loss: scalar total loss, in the autograd graph (call ``backward()`` on it).
        cls_loss: scalar classification loss, detached, float32.
        gc_loss: scalar consistency loss ``L_gc``, detached, float32 (0 when ``lam == 0``).
        logits: (B,C) logits of the original images, detached (for accuracy counters).
        gc_samples: scalar long tensor, how many samples entered ``L_gc`` (samples without any
            negative in the batch, or multi-label samples without a category, are left out);
            kept on the device so reading it is the caller's choice of sync point.
        cam_classes: (B,) long, the class each heatmap was made for (None when ``lam == 0``).
        quadrants: (B,) long, where each image sat in its composite (None when ``lam == 0``).
        zero_maps: scalar bool on the device, True when every heatmap ``t`` of the batch is zero
            everywhere (``cam.zero_maps``: the CAM layer gets no gradient from the class
            scores, so ``L_gc`` trains nothing); None when ``lam == 0``.
    """

    loss: Tensor
    cls_loss: Tensor
    gc_loss: Tensor
    logits: Tensor
    gc_samples: Tensor
    cam_classes: Tensor | None = None
    quadrants: Tensor | None = None
    zero_maps: Tensor | None = None


#: Weight of the multi-label BCE term: the paper's ``loss = 80·BCE + λ·GC``.
BCE_WEIGHT = 80.0


def classification_loss(logits: Tensor, targets: Tensor, multi_label: bool) -> Tensor:
    """The paper's classification loss, computed in float32 (also under autocast).

    Args:
        logits: (B,C).
        targets: (B,) long class indices (single-label) or (B,C) multi-hot (multi-label).
        multi_label: choose the loss.
    Returns:
        scalar. Single-label: cross-entropy, mean over the batch. Multi-label:
        ``80 * BCEWithLogits(mean over B*C)``, the paper's COCO loss (DESIGN.md); the constant 80
        is kept for any number of categories so the CE/GC balance of the recipe (λ = 1) holds.
    """
    logits = logits.float()
    if multi_label:
        return BCE_WEIGHT * F.binary_cross_entropy_with_logits(logits, targets.float())
    return F.cross_entropy(logits, targets)


def gather_negatives(images: Tensor, idx: Tensor) -> Tensor:
    """(B,3,H,W) batch and (B,3) indices from ``grid.sample_negatives`` -> (B,3,3,H,W) negatives."""
    return images[idx]


def _null() -> ContextManager[None]:
    return contextlib.nullcontext()


def amp_setup(
    device: torch.device, enabled: bool
) -> tuple[Callable[[], ContextManager[object]], "torch.amp.GradScaler | None"]:
    """Mixed precision for the forwards: (autocast factory, GradScaler or None).

    On CUDA with ``enabled``: bf16 autocast where the GPU supports bf16 (no scaler needed: bf16
    has float32's exponent range), else fp16 autocast with a GradScaler. Anywhere else (CPU, or
    not enabled): a no-op context and no scaler, so training is float32. Autocast covers only the
    forwards; Grad-CAM and the losses are float32 (``cam.grad_cam`` upcasts), and the double
    backward runs in the dtypes the forward chose.
    """
    if not enabled or device.type != "cuda":
        return _null, None
    if torch.cuda.is_bf16_supported():
        return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)), None
    return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda")


def gc_step(
    model: nn.Module,
    layer: nn.Module,
    images: Tensor,
    targets: Tensor,
    cam_classes: Tensor | None = None,
    lam: float = 25.0,
    multi_label: bool = False,
    *,
    negatives: Tensor | None = None,
    quadrants: Tensor | None = None,
    valid: Tensor | None = None,
    generator: torch.Generator | None = None,
    detach_target: bool = False,
    variant: str = "elementwise",
    autocast: Callable[[], ContextManager[object]] = _null,
    channels_last: bool = False,
) -> StepResult:
    """Losses of one training step (forwards only; the caller runs ``result.loss.backward()``).

    Args:
        model: the classifier in train mode, possibly wrapped in DistributedDataParallel (the
            forwards go through the wrapper so DDP sees them).
        layer: its CAM layer (``models.cam_layer(model)``; the module inside any wrapper).
        images: (B,3,H,W) normalised batch on the model's device.
        targets: (B,) long (single-label) or (B,C) float multi-hot (multi-label).
        cam_classes: (B,) long, the class whose Grad-CAM is made consistent. None: the label
            (single-label) or a random present category (multi-label, ``grid.choose_present_class``
            with ``generator``).
        lam: weight of ``L_gc``. 0 = the baseline: one plain forward, no capture, no composite.
        multi_label: loss ``80 * BCE + lam * L_gc`` instead of ``CE + lam * L_gc``.
        negatives: (B,3,3,H,W) loader-provided negatives (``--negatives dataset``); None = draw
            three per sample from the batch (``grid.sample_negatives``, no extra decoding).
        quadrants: (B,) long in {0..3} where each image goes in its composite; None = random
            (``grid.random_quadrants`` with ``generator``).
        valid: (B,) bool, samples allowed into ``L_gc`` (e.g. from ``choose_present_class``);
            combined with the in-batch sampler's own validity.
        generator: torch.Generator on the images' device for the random choices above (seeded by
            the loop so a run and its resume draw the same).
        detach_target: stop gradients through ``t`` (the paper does not: default False).
        variant: Grad-CAM variant, "elementwise" (paper) or "classic".
        autocast: zero-argument factory of the autocast context for the forwards (mixed
            precision); heatmaps and losses are computed in float32 regardless.
        channels_last: give the composite the channels-last memory format (the model and the
            batch should then be channels-last too).
    Returns:
        :class:`StepResult`.
    """
    B = images.shape[0]
    device = images.device
    if lam == 0:
        with autocast():
            logits = model(images)
        cls = classification_loss(logits, targets, multi_label)
        zero = torch.zeros((), device=device)
        return StepResult(cls, cls.detach(), zero, logits.detach(), zero.long())

    with autocast(), cam.capture(layer) as feats:
        logits = model(images)
    cls = classification_loss(logits, targets, multi_label)

    if cam_classes is None:
        if multi_label:
            cam_classes, present = grid.choose_present_class(targets, generator=generator)
            valid = present if valid is None else valid & present
        else:
            cam_classes = targets
    cam_classes = cam_classes.to(device=device, dtype=torch.long)

    # t from the same forward as the classification loss. The graph of that forward must survive
    # for the single backward of the total loss, hence retain_graph=True also when t is detached
    # (then no graph of the heatmap itself is built: cheaper).
    t = cam.grad_cam(logits, feats.output, cam_classes, variant=variant,
                     create_graph=not detach_target, retain_graph=True)

    if negatives is None:
        idx, has_negatives = grid.sample_negatives(targets, cam_classes, num=3, generator=generator)
        valid = has_negatives if valid is None else valid & has_negatives
        negatives = gather_negatives(images, idx)
    if quadrants is None:
        quadrants = grid.random_quadrants(B, generator=generator, device=device)
    composite = grid.compose(images, negatives, quadrants)
    if channels_last:
        composite = composite.contiguous(memory_format=torch.channels_last)

    with autocast(), cam.capture(layer) as cfeats:
        clogits = model(composite)
    u = cam.grad_cam(clogits, cfeats.output, cam_classes, variant=variant, create_graph=True)
    gc = grid.gc_loss(t, u, quadrants, tuple(images.shape[-2:]), detach_target=detach_target,
                      valid=valid)
    n = torch.full((), B, device=device, dtype=torch.long) if valid is None else valid.sum()
    return StepResult(cls + lam * gc, cls.detach(), gc.detach(), logits.detach(), n, cam_classes, quadrants,
                      cam.zero_maps(t).all())
