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

Every method is registered in :mod:`gridcam.cam.registry` as a :class:`Method` record (function,
declared options, whether it uses the layer, description, cost); see that module to add one.
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
from . import perturbation as _perturbation
from . import inputs
from .hooks import Captured, capture
from .inputs import InputError, closest
from .registry import METHOD_INFO, METHODS, ExplainFn, Method, method_label, register, select_options
from .saliency import (
    SMOOTHGRAD_SAMPLES,
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

_LAYER = "read at the output of `layer` (default: the CAM layer)"
_GEN = "torch.Generator for the noise (None: the global one)"

register("gradcam", Method(
    explain_gradcam, {"variant": "'elementwise' (paper, default) or 'classic'"}, uses_layer=True,
    description="Grad-CAM: activations x gradients at the CAM layer", cost="1F+1B", relative=1.0, label="Grad-CAM"))
register("hirescam", Method(
    functools.partial(explain_gradcam, variant="elementwise"), uses_layer=True,
    description="HiResCAM = Grad-CAM 'elementwise' (the paper's variant)", cost="1F+1B", label="HiResCAM"))
register("linear_approx", Method(
    functools.partial(explain_gradcam, variant="elementwise"), uses_layer=True,
    description="TorchRay linear approximation: ReLU(sum_k A_k dS/dA_k) at `layer`", cost="1F+1B", label="Linear approximation"))
register("gradient", Method(
    explain_gradient, description="|d logit / d input|, max over colour channels",
    cost="1F+1B", relative=2.0, label="Gradient"))
register("input_x_gradient", Method(
    explain_input_x_gradient, description="|input x gradient|, summed over colour channels",
    cost="1F+1B", relative=2.0, label="Input x gradient"))
register("deconvnet", Method(
    explain_deconvnet, description="DeconvNet: gradient with ReLU backward = ReLU(grad)",
    cost="1F+1B", relative=2.0, label="DeconvNet"))
register("guided_backprop", Method(
    explain_guided_backprop, description="guided backprop: positive gradients through active ReLUs",
    cost="1F+1B", relative=2.0, label="Guided backprop"))
register("excitation_backprop", Method(
    explain_excitation_backprop, uses_layer=True,
    description="excitation backprop: marginal winning probability at `layer`",
    cost="1F+1B (B ~2x a plain one)", relative=3.0, label="Excitation backprop"))
register("contrastive_excitation_backprop", Method(
    explain_contrastive_excitation_backprop, uses_layer=True,
    description="contrastive excitation backprop: target minus its dual at `layer`",
    cost="1F+1B (B ~2x a plain one)", relative=3.0, label="Contrastive excitation backprop"))
register("smoothgrad", Method(
    explain_smoothgrad,
    {"samples": f"noisy copies n ({SMOOTHGRAD_SAMPLES}, the paper's)",
     "sigma": "noise std relative to the image's range (0.15)", "generator": _GEN,
     "chunk": "images per forward, the memory budget (32)"},
    description="SmoothGrad: gradient averaged over noisy copies", cost="(n+1)F+nB, n = samples (50)",
    relative=2.0 * SMOOTHGRAD_SAMPLES, label="SmoothGrad"))
register("integrated_gradients", Method(
    explain_integrated_gradients,
    {"steps": "Gauss-Legendre points n (50)", "baseline": "constant baseline image value (0.0)",
     "chunk": "images per forward, the memory budget (32)"},
    description="integrated gradients from a constant baseline", cost="(n+1)F+nB, n = steps (50)",
    relative=100.0, label="Integrated gradients"))


#: Rough cost of part of the CAM family and the perturbation methods relative to Grad-CAM (one
#: target, default options, resnet18 at 224 px on CPU: ``benchmarks/cam_family.py``).
_RELATIVE = {"gradcampp": 1.0, "xgradcam": 1.0, "layercam": 1.0, "eigencam": 0.6, "ablationcam": 4.0,
             "scorecam": 600.0, "occlusion": 450.0, "rise": 800.0, "extremal_perturbation": 950.0}


def _label(description: str) -> str:
    """The display name a table's description starts with (``"Score-CAM: ..."``), else ""."""
    head, sep, _ = description.partition(": ")
    return head if sep else ""


def _register_table(table: dict[str, tuple[Any, dict[str, Any], str, str, bool]]) -> None:
    """Register the methods of a module's ``METHODS`` table ``name -> (fn, {option: default},
    description, cost, uses_layer)`` (the CAM family and the perturbation methods). Each
    description starts with the method's display name and a colon (``"Score-CAM: ..."``): that
    is its label (:func:`_label`)."""
    for name, (fn, defaults, description, cost, uses_layer) in table.items():
        if name in METHOD_INFO:  # hirescam: already the elementwise Grad-CAM above
            continue
        register(name, Method(fn, {k: f"default {v!r}" for k, v in defaults.items()},
                              uses_layer=uses_layer, description=description, cost=cost,
                              relative=_RELATIVE.get(name, 1.0), label=_label(description)))


_register_table(_cams.METHODS)
_register_table(_perturbation.METHODS)


def list_methods() -> list[str]:
    """Names accepted by :func:`explain`, sorted."""
    return sorted(METHODS)


def describe_methods() -> list[dict[str, Any]]:
    """One dict per registered method, cheapest first: name, label (the display name), description,
    cost, options, layer."""
    rows = [{"name": n, "label": method_label(n), "description": m.description, "cost": m.cost,
             "relative": m.relative,
             "options": dict(m.options), "uses_layer": m.uses_layer}
            for n, m in METHOD_INFO.items()]
    return sorted(rows, key=lambda r: (r["relative"], r["name"]))


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
