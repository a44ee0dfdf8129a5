"""Explanations: Grad-CAM (differentiable, batched) and the methods used to score explanations.

Training uses :func:`capture` + :func:`grad_cam` (``create_graph=True``); evaluation uses
:func:`explain` with a method name from :data:`METHODS` (``gridcam methods`` lists them with
their cost)::

    from gridcam import cam, models
    model = models.create("tiny_resnet", num_classes=10).eval()
    with cam.capture(models.cam_layer(model)) as feats:
        logits = model(x)
    heat = cam.grad_cam(logits, feats.output, targets)          # (B,h,w), paper-normalised
    heat, logits = cam.explain("gradcam", model, models.cam_layer(model), x, targets[:, None])
    heat, logits = cam.explain("integrated_gradients", model, images=x, targets=targets, steps=32)

Every method is registered in :mod:`gridcam.cam.registry` as a :class:`Method` record: its function
(here or in a torch module's table) with its entry in :mod:`gridcam.cam.catalog` (display name,
description, cost, options, whether it uses the layer), the torch-free listing ``gridcam methods``
prints; see the registry to add one.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import torch
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
    zero_maps,
)
from .attribution import explain_integrated_gradients
from .backprop import (
    backward_rules,
    explain_contrastive_excitation_backprop,
    explain_deconvnet,
    explain_excitation_backprop,
    explain_guided_backprop,
)
from . import cams as _cams
from . import catalog
from . import perturbation as _perturbation
from . import inputs
from .hooks import Captured, capture
from .inputs import InputError, closest
from .registry import METHOD_INFO, METHODS, ExplainFn, Method, method_label, register, select_options
from .saliency import (
    explain_gradient,
    explain_input_x_gradient,
    explain_smoothgrad,
)

__all__ = [
    "METHODS",
    "METHOD_INFO",
    "ExplainFn",
    "Method",
    "backward_rules",
    "describe_methods",
    "method_label",
    "register",
    "select_options",
    "NORMALIZATIONS",
    "VARIANTS",
    "Captured",
    "InputError",
    "capture",
    "explain",
    "grad_cam",
    "list_methods",
    "normalize_cam",
    "target_gradients",
    "upsample",
    "zero_maps",
]

#: name -> the function behind each entry of :data:`catalog.ENTRIES` (the entry holds what
#: ``gridcam methods`` shows); the CAM family and the perturbation methods come from their tables.
_FUNCTIONS: dict[str, ExplainFn] = {
    "gradcam": explain_gradcam,
    "hirescam": functools.partial(explain_gradcam, variant="elementwise"),
    "linear_approx": functools.partial(explain_gradcam, variant="elementwise"),
    "gradient": explain_gradient,
    "input_x_gradient": explain_input_x_gradient,
    "deconvnet": explain_deconvnet,
    "guided_backprop": explain_guided_backprop,
    "excitation_backprop": explain_excitation_backprop,
    "contrastive_excitation_backprop": explain_contrastive_excitation_backprop,
    "smoothgrad": explain_smoothgrad,
    "integrated_gradients": explain_integrated_gradients,
    # hirescam is the elementwise Grad-CAM above (equal maps), not cams.explain_hirescam
    **{name: fn for name, (fn, _) in _cams.METHODS.items() if name != "hirescam"},
    **{name: fn for name, (fn, _) in _perturbation.METHODS.items()},
}


def _record(name: str, entry: catalog.Entry) -> Method:
    """The registry record of catalog entry ``entry``: its function and what the entry says."""
    return Method(_FUNCTIONS[name], dict(entry.options), uses_layer=entry.uses_layer,
                  description=entry.description, cost=entry.cost, relative=entry.relative,
                  label=entry.label)


for _name, _entry in catalog.ENTRIES.items():
    register(_name, _record(_name, _entry))


def list_methods() -> list[str]:
    """Names accepted by :func:`explain`, sorted."""
    return sorted(METHODS)


def describe_methods() -> list[dict[str, Any]]:
    """One dict per registered method, cheapest first: name, label (the display name), description,
    cost, relative, options, uses_layer (:func:`catalog.describe` of :data:`METHOD_INFO`)."""
    return catalog.describe(METHOD_INFO)


def explain(
    method: str,
    model: nn.Module,
    *args: Any,
    layer: nn.Module | str | None = None,
    images: Tensor | np.ndarray | None = None,
    targets: Tensor | np.ndarray | int | None = None,
    **opts: Any,
) -> tuple[Tensor, Tensor]:
    """Heatmaps of ``method`` for T target classes per image, for evaluation.

    Called ``explain(method, model, layer, images, targets)``, ``explain(method, model, images,
    targets)`` or with ``layer=``, ``images=``, ``targets=`` as keywords, in any mix (an argument
    given twice is refused). Every mistake is one :class:`~gridcam.errors.GridcamError` line naming
    the argument and what to pass (:mod:`gridcam.cam.inputs`).

    Args:
        method: a name in :data:`METHODS` (``list_methods()``, ``gridcam methods``).
        model: classifier, best in ``eval()`` mode. A model in train mode is explained as it is
            (BatchNorm normalises with the batch's statistics, Dropout is random), with a warning;
            its buffers (BatchNorm running statistics, ``num_batches_tracked``) are put back
            afterwards, so the model is left exactly as it was.
        layer: the CAM layer for methods that read a layer (``METHOD_INFO[method].uses_layer``): a
            module of ``model`` or a dotted path (``"layer4"``, ``"features.-1"``, as
            ``--cam-layer`` takes); None: the model's CAM layer (``models.cam_layer``).
        images: (B,C,H,W) float normalised images, a tensor or numpy array, on the model's device.
            One (C,H,W) image is a batch of one (results keep B=1). A float dtype other than the
            model's (float64 numpy, float32 into a ``.half()`` model) is cast to the model's.
            Channels last, integer pixels (uint8), NaN/inf values are refused.
        targets: (B,T) or (B,) integer class indices (tensor, numpy array or list), or one int
            for every image (then like (B,)).
        **opts: the method's options (``METHOD_INFO[method].options``). A misspelt option raises
            naming the closest valid keyword; an option of another registered method is ignored,
            so one option set can be passed for several methods.

    Returns:
        heatmaps (B,T,h',w') float32 (or (B,h',w') for (B,) targets), non-negative, NOT
        normalised (the evaluator resizes them to the original image and normalises), detached;
        (h',w') is the layer's size for layer methods and the input's size for the others.
        logits (B,C) detached.
    Raises:
        GridcamError: unknown method, keyword or option; a layer that is not the model's; images
            or targets that cannot be explained as given; no layer for a method that needs one.
    """
    if not isinstance(method, str) or method not in METHODS:
        near = closest(method, METHODS) if isinstance(method, str) else None
        raise GridcamError(
            f"unknown explanation method {method!r}{f' (did you mean {near!r}?)' if near else ''}; "
            f"choose one of: {', '.join(list_methods())}"
        )
    model = inputs.check_model(method, model)
    layer, images, targets = inputs.split_arguments(method, args, layer, images, targets)
    info = METHOD_INFO.get(method)
    inputs.check_keywords(method, opts, set().union(*(m.options for m in METHOD_INFO.values())),
                          info.options if info is not None else ())
    if images is None or targets is None:
        raise GridcamError(f"explain({method!r}) needs images (B,3,H,W) and targets (B,) or (B,T)")
    kwargs = select_options(method, opts)
    layer = inputs.check_layer(method, model, layer)
    images, _ = inputs.check_images(method, model, images)
    targets = inputs.check_targets(method, targets, images)
    if layer is None and (info is None or info.uses_layer):
        layer = _default_layer(method, model)
    if model.training:
        warnings.warn(
            f"explain({method!r}) on a model in train mode: BatchNorm mixes the images of a batch "
            "and Dropout is random (its buffers are put back afterwards); call model.eval() first",
            stacklevel=2)
    with inputs.buffers_kept(model):
        heat, logits = METHODS[method](model, layer, images, targets, **kwargs)
    if targets.dim() == 1:
        heat = heat[:, 0]
    return heat, logits


def _default_layer(method: str, model: nn.Module) -> nn.Module:
    from ..models import cam_layer  # lazy: models is a sibling package, not a dependency of cam

    try:
        return cam_layer(model)
    except Exception as e:  # any failure means: the caller must say which layer
        raise GridcamError(
            f"explanation method {method!r} reads a layer: pass layer= (e.g. the last convolutional "
            f"block of the model); it could not be found automatically ({e})"
        ) from None
