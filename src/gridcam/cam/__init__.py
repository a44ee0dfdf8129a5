"""Explanations: Grad-CAM (differentiable, batched) and gradient-based saliency methods.

Training uses :func:`capture` + :func:`grad_cam` (``create_graph=True``); evaluation uses
:func:`explain` with a method name from :data:`METHODS`::

    from gridcam import cam, models
    model = models.create("tiny_resnet", num_classes=10).eval()
    with cam.capture(models.cam_layer(model)) as feats:
        logits = model(x)
    heat = cam.grad_cam(logits, feats.output, targets)          # (B,h,w), paper-normalised
    heat, logits = cam.explain("gradcam", model, models.cam_layer(model), x, targets[:, None])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ..errors import GridcamError
from .gradcam import (
    NORMALIZATIONS,
    VARIANTS,
    explain_gradcam,
    grad_cam,
    normalize_cam,
    target_gradients,
    upsample,
)
from .hooks import Captured, capture
from .saliency import explain_gradient, explain_input_x_gradient, explain_smoothgrad

__all__ = [
    "METHODS",
    "NORMALIZATIONS",
    "VARIANTS",
    "Captured",
    "capture",
    "explain",
    "grad_cam",
    "list_methods",
    "normalize_cam",
    "target_gradients",
    "upsample",
]

ExplainFn = Callable[..., tuple[Tensor, Tensor]]

#: name -> ``fn(model, layer, images (B,3,H,W), targets (B,T), **opts)``
#: returning ``(heatmaps (B,T,h',w'), logits (B,C))``.
#: Add a method by adding an entry; the CLI lists this registry.
METHODS: dict[str, ExplainFn] = {
    "gradcam": explain_gradcam,
    "gradient": explain_gradient,
    "input_x_gradient": explain_input_x_gradient,
    "smoothgrad": explain_smoothgrad,
}


def list_methods() -> list[str]:
    """Names accepted by :func:`explain`, sorted."""
    return sorted(METHODS)


def explain(
    method: str,
    model: nn.Module,
    layer: nn.Module | None,
    images: Tensor,
    targets: Tensor,
    **opts: Any,
) -> tuple[Tensor, Tensor]:
    """Heatmaps of ``method`` for T target classes per image, for evaluation.

    Args:
        method: a name in :data:`METHODS` (``list_methods()``).
        model: classifier, in ``eval()`` mode.
        layer: the CAM layer (``models.cam_layer(model)``); only ``"gradcam"`` uses it.
        images: (B,3,H,W) normalised images.
        targets: (B,T) long class indices (a (B,) tensor means T=1).
        **opts: method options: ``variant`` ("elementwise"|"classic") for gradcam; ``samples``
            (default 8), ``sigma`` (0.15) and ``generator`` for smoothgrad. Options a method does not
            use are ignored, so one option set can be passed for every method.

    Returns:
        heatmaps (B,T,h',w') float32, non-negative, NOT normalised (the evaluator resizes them to
        the original image and normalises), detached; (h',w') is the CAM layer's size for gradcam
        and the input's size for the others. logits (B,C) detached.
    Raises:
        GridcamError: unknown method name (it comes from the command line).
    """
    try:
        fn = METHODS[method]
    except KeyError:
        raise GridcamError(
            f"unknown explanation method {method!r}; choose one of: {', '.join(list_methods())}"
        ) from None
    return fn(model, layer, images, targets, **opts)
