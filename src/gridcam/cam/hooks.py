"""Capture a module's forward output with a hook that is always removed.

Grad-CAM needs the activations ``A`` of the CAM layer *inside* the autograd graph of the logits,
so that ``d logit / d A`` can be taken afterwards. A forward hook on the layer gives exactly that
without changing the model's code, and works for any ``nn.Module`` (ours, torchvision's, timm's).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from gridcam.models.reshape import Reshape, fold, parse_reshape

__all__ = ["Captured", "capture"]


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


def _record(feats: Captured, output: Any) -> None:
    """Store the hooked output. Excluded from torch.compile on purpose: the graph break it causes
    makes the CAM-layer output a real tensor between two compiled graphs, so ``d logits / d A``
    exists. Captured from inside one fused compiled graph, ``A`` would be a side output that the
    logits do not depend on in autograd's eyes and Grad-CAM would fail."""
    feats.output = output
    feats.calls += 1


@functools.cache
def _recorder() -> Callable[[Captured, Any], None]:
    """:func:`_record` under ``torch.compiler.disable``, made on the first :func:`capture` (eagerly,
    never inside a compiled region): the decorator imports torch._dynamo, seconds of start-up that
    ``import gridcam.cam`` need not pay."""
    return torch.compiler.disable(_record)


@contextmanager
def capture(module: nn.Module, reshape: Reshape | str | None = None) -> Iterator[Captured]:
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
        reshape: optional rule turning the output into a (B,K,h,w) grid
            (:mod:`gridcam.models.reshape`; a rule or ``"vit"``, ``"vit:P"``, ``"nhwc"``). Then
            ``feats.output`` is the grid and the model continues from the output rebuilt from it
            (same values), so ``d logits / d feats.output`` exists. Not needed for the CAM layer of
            a model from :func:`gridcam.models.build`: that already is a grid (a ``GridTap``).
    Yields:
        a :class:`Captured` whose ``output`` is set after each forward of ``module``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"capture() needs an nn.Module, got {type(module).__name__}")
    feats = Captured()
    rule = parse_reshape(reshape)
    store = _recorder()

    def record(grid: torch.Tensor) -> torch.Tensor:
        store(feats, grid)
        return grid

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if rule is None:
            store(feats, output)
            return None
        return fold(rule, output, record)

    handle = module.register_forward_hook(hook)
    try:
        yield feats
    finally:
        handle.remove()
