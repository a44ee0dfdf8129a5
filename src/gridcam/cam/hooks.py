"""Capture a module's forward output with a hook that is always removed.

Grad-CAM needs the activations ``A`` of the CAM layer *inside* the autograd graph of the logits,
so that ``d logit / d A`` can be taken afterwards. A forward hook on the layer gives exactly that
without changing the model's code, and works for any ``nn.Module`` (ours, torchvision's, timm's).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from gridcam.cam.reshape import Reshape, parse_reshape
from gridcam.errors import GridcamError

__all__ = ["RESHAPE_ATTR", "Captured", "capture"]

#: Attribute under which :func:`gridcam.models.build` records a layer's reshape rule, so that a
#: plain ``capture(layer)`` (training, evaluation) applies it without being told.
RESHAPE_ATTR = "_gridcam_reshape"


class Captured:
    """Holder filled by :func:`capture`.

    Attributes:
        output: the hooked module's forward output from the most recent forward inside the
            ``with`` block (a tensor (B,K,h,w) for a CAM layer), or ``None`` before any forward.
            It is *not* detached: it stays in the autograd graph of whatever the forward returned.
        calls: how many forwards of the module were seen (a second forward overwrites ``output``;
            callers that need several outputs should use one ``capture`` per forward).
    """

    __slots__ = ("output", "calls")

    def __init__(self) -> None:
        self.output: Any = None
        self.calls: int = 0

    def __repr__(self) -> str:
        shape = tuple(self.output.shape) if isinstance(self.output, torch.Tensor) else None
        return f"Captured(calls={self.calls}, output_shape={shape})"


@torch.compiler.disable
def _record(feats: Captured, output: Any) -> None:
    """Store the hooked output. Excluded from torch.compile on purpose: the graph break it causes
    makes the CAM-layer output a real tensor between two compiled graphs, so ``d logits / d A``
    exists. Captured from inside one fused compiled graph, ``A`` would be a side output that the
    logits do not depend on in autograd's eyes and Grad-CAM would fail."""
    feats.output = output
    feats.calls += 1


def _split(output: Any) -> tuple[Any, Any]:
    """-> (the tensor to reshape, a function putting a replacement back into ``output``).
    Hugging Face layers return tuples whose first item is the hidden state."""
    if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0], lambda t: (t, *output[1:])
    return output, lambda t: t


@contextmanager
def capture(module: nn.Module, reshape: Reshape | str | None = "auto") -> Iterator[Captured]:
    """Context manager recording ``module``'s forward output in ``feats.output``.

    Example::

        with capture(models.cam_layer(model)) as feats:
            logits = model(x)
        heat = grad_cam(logits, feats.output, targets)

    The hook is registered on ``module`` itself (not on a wrapper), so it fires no matter how the
    model that contains it is called: plain, wrapped in ``DistributedDataParallel``, or through
    ``torch.compile`` (the hook makes dynamo break the graph at the layer, so the output stays
    connected to the logits; no recompilation per ``capture``). PyTorch cannot double-backward
    through an aot-compiled graph, so ``grad_cam(create_graph=True)`` (training) needs the part
    *after* the CAM layer to run eagerly (compile only the trunk). The hook is removed when the
    block exits, also when the forward raises, so repeated calls never stack hooks on the model.

    Args:
        module: the layer whose output is wanted (e.g. ``models.cam_layer(model)``). A wrapper
            such as DDP or a compiled module must not be passed here; pass the layer inside it.
        reshape: how to turn the output into a (B,K,h,w) grid (:mod:`gridcam.cam.reshape`):
            ``"auto"`` (default) = the rule :func:`gridcam.models.build` recorded on the layer, if
            any, else none; ``None``/``"none"`` = record the output as it is; a rule or its
            name (``"vit"``, ``"vit:1"``, ``"nhwc"``). With a rule, ``feats.output`` is the grid
            and the model continues from the output rebuilt from that grid (same values), so
            ``d logits / d feats.output`` exists; a tuple output is reshaped in its first item.
    Yields:
        a :class:`Captured` whose ``output`` is set after each forward of ``module``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"capture() needs an nn.Module, got {type(module).__name__}")
    feats = Captured()
    rule = getattr(module, RESHAPE_ATTR, None) if reshape == "auto" else parse_reshape(reshape)

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if rule is None:
            _record(feats, output)
            return None
        tensor, put_back = _split(output)
        if not isinstance(tensor, torch.Tensor):
            raise GridcamError(f"the CAM layer {type(module).__name__} returned a "
                               f"{type(tensor).__name__}, which the {rule} reshape cannot fold")
        grid, restore = rule.to_grid(tensor)
        _record(feats, grid)
        return put_back(restore(grid))

    handle = module.register_forward_hook(hook)
    try:
        yield feats
    finally:
        handle.remove()
