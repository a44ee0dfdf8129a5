"""The arguments of :func:`gridcam.cam.explain`, checked: every mistake is one line naming it.

:func:`explain` takes ``explain(method, model, [layer,] images, targets, **options)``, or any of
``layer=``, ``images=``, ``targets=`` as keywords. This module turns what a caller passed into what
the methods need, or refuses in one :class:`InputError` line (a :class:`GridcamError`, so the
command line prints it without a traceback; also a ``ValueError`` for older ``except`` clauses):

* ``layer``: an ``nn.Module`` of the model, or a dotted path (``"layer4"``, ``"blocks.-1.norm1"``,
  resolved by :func:`gridcam.models.get_layer`), or ``None`` (the CAM layer);
* ``images``: a float tensor or numpy array (B,C,H,W) of normalised images. A single (C,H,W) image
  becomes a batch of one (the results keep B=1). Channels last ((B,H,W,C) or (H,W,C)), integer
  pixels (uint8 0..255: the normalisation depends on how the model was trained, so nothing is
  scaled silently), NaN/inf values, an empty batch, or a device other than the model's are
  refused with what to pass. A float dtype other than the model's (float64 from numpy, float32
  into a ``.half()`` model) is cast to the model's dtype;
* ``targets``: integer class indices (B,) or (B,T) (tensor, numpy array, list); a plain int is
  one class for every image;
* options: a keyword no method declares is refused naming the closest valid keyword.

:func:`buffers_kept` runs an explanation of a model in train mode and puts every buffer back
(BatchNorm's running statistics and ``num_batches_tracked``), as the methods promise.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import GridcamError

__all__ = ["InputError", "buffers_kept", "check_images", "check_layer", "check_targets",
           "closest", "split_arguments"]

#: The keywords of ``explain`` itself (a misspelt one is named with the closest of these).
EXPLAIN_KEYWORDS = ("layer", "images", "targets")


class InputError(GridcamError, ValueError):
    """A bad argument of an explanation: one line naming it and what to pass."""


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice most like ``word`` (difflib, ratio >= 0.6), or None."""
    hits = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return hits[0] if hits else None


def _kind(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} numpy array of shape {value.shape}"
    return f"a {type(value).__module__}.{type(value).__qualname__}"


def split_arguments(method: str, args: tuple[Any, ...], layer: Any, images: Any,
                    targets: Any) -> tuple[Any, Any, Any]:
    """``(layer, images, targets)`` from the positional ``args`` after ``model`` and the keywords.

    ``args`` is ``(layer, images, targets)`` when its first item is a module, a dotted path or
    None, else ``(images, targets)``; an argument given both ways is refused.
    """
    names = ("images", "targets")
    if args and (args[0] is None or isinstance(args[0], (nn.Module, str))):
        names = ("layer", "images", "targets")
    if len(args) > len(names):
        raise InputError(
            f"explain({method!r}) takes (method, model, [layer,] images, targets) and options as "
            f"keywords; got {len(args)} positional arguments after model (pass options as name=value)")
    given = {"layer": layer, "images": images, "targets": targets}
    for name, value in zip(names, args):
        if given[name] is not None:
            raise InputError(f"explain({method!r}): {name} given twice, by position and as "
                             f"{name}=; pass it once")
        given[name] = value
    return given["layer"], given["images"], given["targets"]


def check_keywords(method: str, opts: Mapping[str, Any], known: Iterable[str],
                   own: Iterable[str] = ()) -> None:
    """Refuse a keyword that is no method's option (``known``) but looks most like one of explain's
    own (``target=`` for ``targets=``) rather than like one of the method's options ``own``; other
    unknown options are left to :func:`~gridcam.cam.registry.select_options`, which lists the
    method's options."""
    known = set(known)
    for key in opts:
        near = None if key in known else closest(key, [*EXPLAIN_KEYWORDS, *own])
        if near in EXPLAIN_KEYWORDS:
            raise InputError(f"explain({method!r}): unknown keyword {key}=; did you mean {near}=? "
                             "(explain takes layer=, images=, targets= and the method's options)")


def check_model(method: str, model: Any) -> nn.Module:
    """``model`` itself, if it is an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise InputError(f"explain({method!r}): model must be a torch.nn.Module (the classifier), "
                         f"got {_kind(model)}; the order is explain(method, model, [layer,] "
                         "images, targets)")
    return model


def check_layer(method: str, model: nn.Module, layer: Any) -> nn.Module | None:
    """``layer`` as a sub-module of ``model``: a module of it, a dotted path, or None (the default)."""
    if layer is None:
        return None
    if isinstance(layer, str):
        from ..models.layers import get_layer  # models sits below cam

        try:
            return get_layer(model, layer)
        except GridcamError as e:
            raise InputError(f"explain({method!r}): {e}") from None
    if not isinstance(layer, nn.Module):
        raise InputError(f"explain({method!r}): layer must be a module of the model or a dotted "
                         f"path such as 'layer4', got {_kind(layer)}")
    # Not checked against model.modules(): a CAM layer may be run without being a sub-module
    # (models.reshape.GridTap). A layer the forward never calls is refused by the method.
    return layer


def _first_conv_channels(model: nn.Module) -> int | None:
    """in_channels of the model's first 2-D convolution (its stem), or None without one."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


def _model_place(model: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """(device, floating dtype) of the model's first parameter or buffer; None where it has none."""
    device = dtype = None
    for t in (*model.parameters(), *model.buffers()):
        device = device or t.device
        if dtype is None and t.is_floating_point():
            dtype = t.dtype
        if dtype is not None:
            break
    return device, dtype


def _to_tensor(name: str, value: Any, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise InputError(f"{name}= is an object numpy array; pass {what}")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise InputError(f"{name}= must be {what}, got {_kind(value)}")


def check_images(method: str, model: nn.Module, images: Any) -> tuple[Tensor, bool]:
    """``images`` as a (B,C,H,W) tensor of the model's dtype; and whether a (C,H,W) image got its
    batch dimension. Refuses (one line) what cannot be explained as given."""
    what = ("a float tensor (B,3,H,W) of normalised images (e.g. "
            "gridcam.data.transforms.to_tensor_normalize()(pil_image)[None])")
    x = _to_tensor("images", images, what)
    known = _first_conv_channels(model)
    channels = known or 3
    shape = tuple(x.shape)
    added = False
    if x.dim() == 3:
        first, last = shape[0] == channels, shape[-1] == channels
        if first and not last:
            x, added = x[None], True
        elif last and not first:
            raise InputError(
                f"images= has shape {shape}: one H x W x C image (channels last); pass "
                f"images.permute(2, 0, 1)[None], a (1,{channels},H,W) batch")
        else:
            raise InputError(f"images= has shape {shape}: pass a batch (B,{channels},H,W) (one "
                             f"(C,H,W) image: images[None])")
    elif x.dim() != 4:
        raise InputError(f"images= has shape {shape} ({x.dim()}-D); pass {what}")
    if known is not None and x.shape[1] != channels:
        if x.shape[-1] == channels:
            hint = "channels last (B,H,W,C): pass images.permute(0, 3, 1, 2)"
        elif x.shape[1] == 1:
            hint = f"grey images: pass images.expand(-1, {channels}, -1, -1)"
        else:
            hint = f"pass (B,{channels},H,W)"
        raise InputError(f"images= has shape {tuple(x.shape)} but the model's first convolution "
                         f"takes {channels} channels; {hint}")
    if x.numel() == 0:
        raise InputError(f"images= has shape {tuple(x.shape)}: no pixels to explain")
    if not x.is_floating_point():
        hint = ("0..255 pixels? " if x.dtype == torch.uint8 else "") + (
            "explain takes float images normalised as the model was trained: e.g. "
            "(images.float() / 255 - mean) / std with gridcam.data.IMAGENET_MEAN / IMAGENET_STD "
            "as (1,3,1,1) tensors")
        raise InputError(f"images= is {x.dtype}; {hint}")
    device, dtype = _model_place(model)
    if device is not None and x.device != device:
        raise InputError(f"images= are on {x.device} but the model is on {device}; pass "
                         f"images.to('{device}')")
    if x.device.type != "meta" and not bool(torch.isfinite(x).all()):
        bad = ~torch.isfinite(x)
        nan = int(torch.isnan(x).sum())
        first = int(bad.flatten(1).any(1).nonzero()[0, 0])
        raise InputError(f"images= contain {nan} NaN and {int(bad.sum()) - nan} infinite values "
                         f"(the first in image {first}); explain needs finite normalised images")
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    return x, added


def check_targets(method: str, targets: Any, images: Tensor) -> Tensor:
    """``targets`` as long class indices (B,) or (B,T) on the images' device; refused in one line
    when not integer, negative, or not one row per image."""
    B = images.shape[0]
    if isinstance(targets, (bool, np.bool_)):
        raise InputError(f"targets= must be integer class indices, got {targets!r}")
    if isinstance(targets, (int, np.integer)):
        return torch.full((B,), int(targets), dtype=torch.long, device=images.device)
    if isinstance(targets, (list, tuple)):
        try:
            targets = np.asarray(targets)
        except ValueError:
            raise InputError("targets= is a ragged list; pass (B,) or (B,T) class indices with "
                             "the same T for every image") from None
    t = _to_tensor("targets", targets, "integer class indices (B,) or (B,T)")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise InputError(f"targets= is {t.dtype}; pass integer class indices (targets.long())")
    if t.dim() == 0:
        t = t.expand(B)
    if t.dim() not in (1, 2) or t.shape[0] != B:
        raise InputError(f"targets= has shape {tuple(t.shape)}; pass ({B},) or ({B},T): one row "
                         f"per image (images have B={B})")
    t = t.to(device=images.device, dtype=torch.long)
    if t.device.type == "cpu" and t.numel() and bool((t < 0).any()):
        raise InputError(f"targets= contain {int(t.min())}; class indices start at 0")
    return t


@contextmanager
def buffers_kept(model: nn.Module) -> Iterator[None]:
    """Run the body and put every buffer of ``model`` back as it was (the same tensor objects
    with their old values): a model in train mode updates BatchNorm's running statistics and
    ``num_batches_tracked`` on every forward. Nothing is copied for a model in eval mode."""
    if not any(m.training for m in model.modules()):
        yield
        return
    saved = [(m, key, buf, buf.detach().clone()) for m in model.modules()
             for key, buf in m._buffers.items() if buf is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, key, buf, old in saved:
                buf.copy_(old)
                m._buffers[key] = buf
