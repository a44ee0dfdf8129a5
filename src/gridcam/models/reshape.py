"""Reshape rules: turn a CAM layer's output into the (B,K,h,w) grid Grad-CAM works on.

A convolutional layer already gives (B,K,h,w). Two other layouts are common:

* **token sequences** (ViT, DeiT, BEiT, EVA, the Hugging Face ViT family): (B,N,D) where the first
  ``P`` tokens are class / distillation / register tokens and the other ``N-P = h*w`` are the image
  patches in row-major order. :class:`TokenGrid` drops the prefix tokens and folds the patch tokens
  into (B,D,h,w);
* **channels-last maps** (Swin in timm and torchvision, ConvNeXt blocks): (B,h,w,C).
  :class:`ChannelsLast` permutes them to (B,C,h,w).

A rule is used by :func:`gridcam.cam.capture`: its forward hook folds the output into a grid,
records the grid, and hands the model the output *rebuilt from that grid* (an exact permutation
of the original values, so the forward is unchanged). The logits therefore depend on the grid
itself and ``d logit / d grid`` is exactly the Grad-CAM gradient, also under ``create_graph=True``
(training through the heatmap). The idea follows pytorch-grad-cam's ``reshape_transform``; the
rebuild trick is what lets Grad-CAM, the consistency loss and evaluation use the grid unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gridcam.errors import GridcamError

__all__ = ["ChannelsLast", "GridTap", "Reshape", "TokenGrid", "fold", "parse_reshape"]

Restore = Callable[[Tensor], Tensor]


class Reshape:
    """Base class of the rules: ``to_grid(x) -> (grid (B,K,h,w), restore)`` with
    ``restore(grid)`` giving back a tensor equal to ``x`` (same shape and values)."""

    name = "reshape"

    def to_grid(self, x: Tensor) -> tuple[Tensor, Restore]:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.name


@dataclass
class TokenGrid(Reshape):
    """(B,N,D) token sequence -> (B,D,h,w): drop ``prefix`` leading tokens, fold the rest.

    Attributes:
        prefix: number of leading non-patch tokens (class 1, class + distillation 2, plus register
            tokens). ``None``: the smallest count in 0..8 that leaves a square number of tokens.
        stride: input pixels per patch. With ``input_hw`` (the model's current input size, set by
            the hook :func:`gridcam.models.build` installs) it gives ``h = H // stride`` and
            ``w = W // stride``, needed for non-square inputs. Without it the grid must be square.
        input_hw: (H,W) of the latest forward's input, or None.
    """

    prefix: int | None = None
    stride: int | None = None
    input_hw: tuple[int, int] | None = field(default=None, compare=False, repr=False)
    name = "tokens"

    def grid_size(self, n_tokens: int) -> tuple[int, int, int]:
        """-> (prefix, h, w) for a sequence of ``n_tokens``; GridcamError when no grid fits."""
        prefixes = [self.prefix] if self.prefix is not None else list(range(min(n_tokens, 9)))
        for p in prefixes:
            n = n_tokens - p
            if n <= 0:
                continue
            if self.stride and self.input_hw:
                h, w = self.input_hw[0] // self.stride, self.input_hw[1] // self.stride
                if h * w == n:
                    return p, h, w
            side = math.isqrt(n)
            if side * side == n:
                return p, side, side
        where = f" for a {self.input_hw[0]}x{self.input_hw[1]} input" if self.input_hw else ""
        raise GridcamError(
            f"cannot fold {n_tokens} tokens into a grid{where} "
            f"(prefix {'0..8' if self.prefix is None else self.prefix} tokens, "
            f"stride {self.stride}); set --reshape vit:P with the right number P of class tokens")

    def __str__(self) -> str:
        return "vit" if self.prefix is None else f"vit:{self.prefix}"

    def to_grid(self, x: Tensor) -> tuple[Tensor, Restore]:
        if x.dim() != 3:
            raise GridcamError(f"a token reshape needs a (B,N,D) output, got shape {tuple(x.shape)}")
        B, N, D = x.shape
        p, h, w = self.grid_size(N)
        head = x[:, :p]
        grid = x[:, p:].transpose(1, 2).reshape(B, D, h, w)

        def restore(g: Tensor) -> Tensor:
            return torch.cat([head, g.flatten(2).transpose(1, 2)], dim=1)

        return grid, restore


@dataclass
class ChannelsLast(Reshape):
    """(B,h,w,C) -> (B,C,h,w) (Swin stages, channels-last blocks)."""

    name = "nhwc"

    def to_grid(self, x: Tensor) -> tuple[Tensor, Restore]:
        if x.dim() != 4:
            raise GridcamError(f"a channels-last reshape needs a (B,h,w,C) output, got {tuple(x.shape)}")
        return x.permute(0, 3, 1, 2), lambda g: g.permute(0, 2, 3, 1)


def parse_reshape(spec: str | Reshape | None) -> Reshape | None:
    """``--reshape`` value -> rule. ``none``/None: no reshape; ``vit``: tokens with the prefix
    found automatically; ``vit:P``: tokens with P leading class/distillation tokens; ``nhwc``:
    channels-last maps. A :class:`Reshape` instance is returned as it is."""
    if spec is None or isinstance(spec, Reshape):
        return spec
    s = spec.strip().lower()
    if s in ("", "none"):
        return None
    if s == "nhwc":
        return ChannelsLast()
    if s in ("vit", "tokens"):
        return TokenGrid()
    head, _, tail = s.partition(":")
    if head in ("vit", "tokens") and tail.isdigit():
        return TokenGrid(prefix=int(tail))
    raise GridcamError(f"unknown reshape rule {spec!r}; use none, vit, vit:P (P class tokens) or nhwc")


def fold(rule: Reshape, output: Any, through: Callable[[Tensor], Tensor]) -> Any:
    """Fold ``output`` into a grid with ``rule``, pass the grid through ``through`` (a hook may
    record or replace it), and rebuild the output from what comes back. A tuple output (Hugging
    Face layers) is folded in its first item."""
    if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
        return (fold(rule, output[0], through), *output[1:])
    if not isinstance(output, Tensor):
        raise GridcamError(f"the {rule} reshape needs a tensor output, got a {type(output).__name__}")
    grid, restore = rule.to_grid(output)
    return restore(through(grid))


class GridTap(nn.Identity):
    """The CAM layer of a model whose chosen layer needs a reshape: an identity module that the
    layer's output, folded into a (B,K,h,w) grid, passes through on every forward.

    :func:`gridcam.models.build` installs a forward hook on the real layer (``source``) that folds
    its output, calls this tap on the grid and hands the model the output rebuilt from what the
    tap returned. Any hook on the tap (``cam.capture``, the evaluator's, pytorch-grad-cam's) thus
    sees a plain (B,K,h,w) tensor that the logits depend on. The tap is not a sub-module of the
    model, so state dicts are unchanged."""

    def __init__(self, source: str, rule: Reshape) -> None:
        super().__init__()
        self.source = source
        self.rule = rule

    def extra_repr(self) -> str:
        return f"{self.source}, reshape={self.rule}"
