"""Methods that change the backward pass: deconvnet, guided backpropagation, excitation
backpropagation and its contrastive variant.

The change is made by a context manager around the FORWARD (:func:`backward_rules`): a
``TorchFunctionMode`` that routes ``F.relu`` (and, for excitation backprop, ``F.conv*``,
``F.linear``, average pools, ``F.batch_norm`` and same-shape tensor sums) through small
``autograd.Function`` s carrying the method's backward rule. Nothing on the model is touched (no
patched attribute, no hook, no weight flip), so the model is exactly as before when the block
exits, also on an exception; it works for any classifier that calls these functions, including
``nn.ReLU(inplace=True)`` (the rule's ReLU returns a new tensor instead of writing in place, and
``nn.ReLU`` returns what ``F.relu`` returns). A direct ``x.relu_()`` call whose result is ignored
is not supported. The graph keeps the rules after the block, so the backward can run later.

Every method does one forward for all T targets of a batch and one batched backward
(``is_grads_batched``) and returns ``(heatmaps (B,T,h,w) float32 >= 0, logits (B,C))``, detached.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .gradcam import _as_2d_targets, _prepare_images, target_gradients
from .hooks import capture
from .inputs import InputError

__all__ = [
    "RULES",
    "backward_rules",
    "explain_deconvnet",
    "explain_guided_backprop",
    "explain_excitation_backprop",
    "explain_contrastive_excitation_backprop",
]

RULES = ("guided", "deconvnet", "excitation", "contrastive")
_EPS = 1e-20  # TorchRay's guard for the excitation normaliser


# ------------------------------------------------------------------------------------ ReLU rules
class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients where the input was positive."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0)


class _DeconvReLU(torch.autograd.Function):
    """ReLU whose backward is a ReLU of the gradient (the forward's mask is not used)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.clamp(min=0)


# ---------------------------------------------------------------------------- excitation rules
class _Excite(torch.autograd.Function):
    """A linear op ``y = f(x, W)`` (conv, linear, average pool) with the excitation-backprop
    backward ``p' = x * f*(W+, p / f(x, W+))`` (``f*``: the op's vector-Jacobian product w.r.t.
    ``x``; pools have no weight and use themselves). With ``flag["contrast"]`` set at backward
    time (the classifier), ``p' = x * (f*(W+, p/f(x,W+)) - f*(W-, p/f(x,W-)))``, ``W- = (-W)+``:
    the target's excitation minus its dual's, as the contrastive variant needs."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor | None, fn: Any, rest: tuple, kwargs: dict,
                flag: dict) -> Tensor:
        ctx.fn, ctx.rest, ctx.kwargs, ctx.flag = fn, rest, kwargs, flag
        ctx.save_for_backward(x, weight)
        if weight is None:
            return fn(x, *rest, **kwargs)
        return fn(x, weight, *rest, **kwargs)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        x, weight = ctx.saved_tensors
        x = x.detach()

        def excite(w: Tensor | None) -> Tensor:
            xr = x.requires_grad_(True) if not x.requires_grad else x
            with torch.enable_grad():
                z = ctx.fn(xr, *ctx.rest, **ctx.kwargs) if w is None else ctx.fn(xr, w, None, *ctx.rest[1:], **ctx.kwargs)
                (g,) = torch.autograd.grad(z, xr, grad / (z + _EPS))
            return g

        if weight is None:
            out = excite(None)
        else:
            out = excite(weight.detach().clamp(min=0))
            if ctx.flag.get("contrast"):
                out = out - excite((-weight.detach()).clamp(min=0))
        return x * out, None, None, None, None, None


def _split(grad: Tensor, a: Tensor, b: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
    """The residual sum's excitation rule: ``p_a = a/(a+b) p``, ``p_b = b/(a+b) p`` (0 where the
    sum is 0)."""
    zero = out == 0
    ratio = torch.where(zero, 0.0, grad / torch.where(zero, torch.ones_like(out), out))
    return a * ratio, b * ratio


class _ExciteSum(torch.autograd.Function):
    """``a + b`` (a residual connection) whose backward splits ``p`` in proportion:
    ``p_a = a/(a+b) p``, ``p_b = b/(a+b) p``."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor) -> Tensor:
        out = a + b
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        return _split(grad, *ctx.saved_tensors)


class _ExciteSumInPlace(torch.autograd.Function):
    """``a += b`` / ``a.add_(b)`` (torchvision's and timm's residual sums, written in place) with
    :class:`_ExciteSum`'s proportional backward. ``a`` is modified in place as the model expects
    (``mark_dirty``); its value before the sum is kept for the split, so the result equals the
    out-of-place rule exactly."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor) -> Tensor:
        before = a.detach().clone()
        a.add_(b)
        ctx.mark_dirty(a)
        ctx.save_for_backward(before, b, a)
        return a

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        return _split(grad, *ctx.saved_tensors)


class _PassThrough(torch.autograd.Function):
    """Batch norm with an identity backward: excitation passes through normalisation layers."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, fn: Any, rest: tuple, kwargs: dict) -> Tensor:
        return fn(x, *rest, **kwargs)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        return grad, None, None, None


_RELUS = {F.relu, torch.relu, Tensor.relu}
_WEIGHTED = {F.conv1d, F.conv2d, F.conv3d, F.linear}
_POOLS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
          F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d}
_ADDS = {torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__}
_IN_PLACE_ADDS = {Tensor.add_, Tensor.__iadd__}


class _RuleMode(TorchFunctionMode):
    """Routes the functions a rule changes through its ``autograd.Function`` (see module doc)."""

    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule
        self.weighted: list[tuple[Tensor, dict]] = []  # (output, flag) of each conv/linear call

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in _RELUS and args and isinstance(args[0], Tensor):
            if self.rule in ("guided", "deconvnet"):
                fn = _GuidedReLU if self.rule == "guided" else _DeconvReLU
                return fn.apply(args[0])
            return torch.relu(args[0])  # excitation: ordinary ReLU, out of place
        if self.rule in ("excitation", "contrastive"):
            out = self._excitation(func, args, kwargs)
            if out is not NotImplemented:
                return out
        return func(*args, **kwargs)

    def _excitation(self, func: Any, args: tuple, kwargs: dict) -> Any:
        if func in _WEIGHTED:  # input, weight and bias may each come by position or keyword
            x = args[0] if args else kwargs.pop("input")
            weight = args[1] if len(args) > 1 else kwargs.pop("weight")
            rest = args[2:]
            bias = rest[0] if rest else kwargs.pop("bias", None)
            flag: dict = {}
            out = _Excite.apply(x, weight, func, (bias, *rest[1:]), kwargs, flag)
            self.weighted.append((out, flag))
            return out
        if func in _POOLS:
            return _Excite.apply(args[0], None, func, tuple(args[1:]), kwargs, {})
        if func is F.batch_norm:
            return _PassThrough.apply(args[0], func, tuple(args[1:]), kwargs)
        if ((func in _ADDS or func in _IN_PLACE_ADDS) and len(args) == 2 and not kwargs
                and all(isinstance(a, Tensor) for a in args) and args[0].shape == args[1].shape
                and args[0].requires_grad and args[1].requires_grad):
            return (_ExciteSumInPlace if func in _IN_PLACE_ADDS else _ExciteSum).apply(*args)
        return NotImplemented


@contextmanager
def backward_rules(rule: str) -> Iterator[_RuleMode]:
    """Run the forwards inside this block with ``rule``'s backward.

    Args:
        rule: ``"guided"``, ``"deconvnet"``, ``"excitation"`` or ``"contrastive"`` (excitation
            whose classifier, the conv/linear call that produced the logits, backpropagates the
            target's excitation minus that of its dual ``-W``; see :func:`mark_classifier`).
    Yields:
        the active mode (its ``weighted`` list records each conv/linear output for the contrast).

    The model itself is never modified, so there is nothing to restore; the mode is popped on exit,
    also when the forward raises.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    mode = _RuleMode(rule)
    with mode:
        yield mode


def mark_classifier(mode: _RuleMode, logits: Tensor) -> None:
    """Make the conv/linear call that produced ``logits`` (else the last one) use the contrast rule."""
    if not mode.weighted:
        raise ValueError("contrastive excitation backprop found no conv/linear layer in the forward")
    flag = next((f for out, f in mode.weighted if out is logits), mode.weighted[-1][1])
    flag["contrast"] = True


# ------------------------------------------------------------------------------------- methods
def _explain(rule: str, model: nn.Module, layer: nn.Module | None, images: Tensor,
             targets: Tensor) -> tuple[Tensor, Tensor]:
    """(d_rule logit_t / d inputs (B,T,K,h,w) float32, logits (B,C)); inputs = the output of
    ``layer``, or the images when ``layer`` is None."""
    targets = _as_2d_targets(targets, images)
    with torch.inference_mode(False), torch.enable_grad():
        x = _prepare_images(images)
        if layer is None:
            with backward_rules(rule) as mode:
                logits = model(x)
            inputs = x
        else:
            with capture(layer) as feats, backward_rules(rule) as mode:
                logits = model(x)
            inputs = feats.output
            if not isinstance(inputs, Tensor):
                raise InputError(f"the layer {type(layer).__name__} produced no tensor during the forward")
        if rule == "contrastive":
            mark_classifier(mode, logits)
        grads = target_gradients(logits, inputs, targets)
    return grads.float(), logits.detach()


def explain_guided_backprop(
    model: nn.Module, layer: nn.Module | None, images: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """Guided backpropagation (Springenberg et al., "Striving for Simplicity", ICLR-W 2015).

    Formula: the input gradient with each ReLU's backward replaced by
    ``dx = relu(dy) * [x > 0]``; map ``max_channels |dx|`` (TorchRay's reduction).
    Returns (B,T,H,W) float32 >= 0 at the input's resolution, logits (B,C).
    Cost: 1 forward + 1 backward per image (all T targets in one batched backward).
    ``layer`` is not used.
    """
    grads, logits = _explain("guided", model, None, images, targets)
    return grads.abs().amax(dim=2), logits


def explain_deconvnet(
    model: nn.Module, layer: nn.Module | None, images: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """DeconvNet (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014).

    Formula: the input gradient with each ReLU's backward replaced by ``dx = relu(dy)``;
    map ``max_channels |dx|``. Returns (B,T,H,W) float32 >= 0, logits (B,C).
    Cost: 1 forward + 1 backward per image. ``layer`` is not used.
    """
    grads, logits = _explain("deconvnet", model, None, images, targets)
    return grads.abs().amax(dim=2), logits


def explain_excitation_backprop(
    model: nn.Module, layer: nn.Module | None, images: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """Excitation backprop (Zhang et al., "Top-down Neural Attention by Excitation Backprop",
    ECCV 2016), with TorchRay's rules.

    Formula: marginal winning probability ``P(a_j) = sum_i a_j w+_ij / (sum_k a_k w+_ik) P(a_i)``
    through conv/linear/average-pool layers (``w+ = max(w, 0)``), split in proportion at residual
    sums, unchanged through batch norm, ordinary gradient through ReLU and max pooling; map
    ``max(sum_channels P, 0)`` at the output of ``layer`` (it must be non-negative, e.g. after a
    ReLU: the CAM layer, or an earlier block for a finer map).
    Returns (B,T,h,w) float32 >= 0 at ``layer``'s resolution, logits (B,C).
    Cost: 1 forward + 1 backward per image (the backward re-runs each conv with ``w+``: ~2x a
    plain backward). Without ``layer`` the map is read at the input.
    """
    grads, logits = _explain("excitation", model, layer, images, targets)
    return grads.sum(dim=2).clamp(min=0), logits


def explain_contrastive_excitation_backprop(
    model: nn.Module, layer: nn.Module | None, images: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """Contrastive excitation backprop (c-MWP, Zhang et al. ECCV 2016).

    Formula: ``max(sum_channels (P_c - P_dual(c)), 0)`` at the output of ``layer``, where
    ``P_dual(c)`` is the excitation of the classifier unit with negated weights ``-w_c``.
    TorchRay subtracts the two at a "contrast layer"; every rule below the classifier is linear in
    the excitation, so subtracting right below the classifier (done here, in one backward) gives
    the same map. The classifier is the conv/linear call that produced the logits.
    Returns (B,T,h,w) float32 >= 0, logits (B,C).
    Cost: 1 forward + 1 backward per image (TorchRay: 2 forwards + 2 backwards).
    """
    grads, logits = _explain("contrastive", model, layer, images, targets)
    return grads.sum(dim=2).clamp(min=0), logits
