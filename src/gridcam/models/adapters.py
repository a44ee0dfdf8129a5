"""Outside models: ``torchvision:NAME``, ``timm:NAME``, ``hf:NAME_OR_PATH`` and ``MODULE:FACTORY``.

:func:`build` is the one entry point the engines use: it builds any architecture (the built-in
names too), loads a weights file, picks the CAM layer and its reshape rule, and records them on
the model, so that ``models.cam_layer(model)`` and ``cam.capture(layer)`` work unchanged::

    built = models.build("timm:vit_small_patch16_224", num_classes=10)
    built.cam_layer_name, built.reshape        # 'blocks.11.norm1', TokenGrid(prefix=1, stride=16)
    with cam.capture(models.cam_layer(built.model)) as feats:   # feats.output: (B,384,14,14)
        logits = built.model(x)

Optional packages are imported only when their prefix is used; none downloads anything (weights
come from files: ``checkpoint=``; Hugging Face models from a local directory or the local cache).

**Fixed input sizes.** The consistency loss feeds a 2S x 2S composite. A model that cannot take
it (a ViT whose position embeddings are fixed, a CNN with a flatten + linear head) is detected by
a probe at 2S, and from then on every input is resized bilinearly to S x S by a forward pre-hook
(evaluation's images too). The composite's map is then h x w instead of 2h x 2w, and
``grid.gc_loss`` compares the two heatmaps at pixel resolution, the rule the paper uses for
AlexNet. timm ViTs are built with ``dynamic_img_size=True`` (position embeddings interpolated) and
Hugging Face models are called with ``interpolate_pos_encoding=True`` where they accept it, so
they take the composite at full resolution and need no resizing beyond whole patches: a ViT's
input is resized to the nearest multiple of its patch size (:func:`patch_multiple`), so images of
any size (evaluation's, 85 x 64) go through its patch embedding and the map covers the image.

**Attention kernels.** Training through the heatmap needs second derivatives of the attention
after the CAM layer, which PyTorch's fused attention kernels lack; an outside model's Grad-CAM
training forwards therefore use the math kernel (:class:`_MathAttention`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gridcam.models.reshape import GridTap, Reshape, TokenGrid, fold, parse_reshape
from gridcam.errors import GridcamError
from gridcam.models.layers import (
    LayerOutput,
    default_cam_layer,
    patch_stride,
    prefix_tokens,
    probe,
    reshape_for,
    resolve_layer,
)
from gridcam.models.checkpoint import load_checkpoint
from gridcam.models.info import INFO_ATTR, ModelInfo, info, is_outside
from gridcam.models.registry import cam_layer as builtin_layer, create_builtin
from gridcam.models.sources import Defaults, construct, swap_to_gmp

__all__ = ["BuiltModel", "ModelInfo", "attach", "build", "construct", "info", "input_config", "is_outside",
           "swap_to_gmp"]

@dataclass
class BuiltModel:
    """:func:`build`'s result: the model, the module to hook for Grad-CAM (the layer itself, or
    its :class:`~gridcam.models.reshape.GridTap` when its output needs a reshape) and the recorded
    :class:`ModelInfo`."""

    model: nn.Module
    cam_layer: nn.Module
    info: ModelInfo

    @property
    def cam_layer_name(self) -> str:
        return self.info.cam_layer

    @property
    def reshape(self) -> Reshape | None:
        return self.info.reshape

    @property
    def mean(self) -> tuple[float, ...]:
        return self.info.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.info.std

    @property
    def input_size(self) -> int:
        return self.info.input_size


# ------------------------------------------------------------------------------------- building
def _accepts(model: nn.Module, size: int) -> bool:
    """Whether a forward of a (1,3,size,size) input runs (eval mode, no gradients)."""
    param = next(iter(model.parameters()), None)
    x = torch.zeros(1, 3, size, size)
    if param is not None:
        x = x.to(param.device)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
        return True
    except Exception:
        return False
    finally:
        model.train(was)


def _resize_hook(target: Callable[[int, int], tuple[int, int]]
                 ) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...] | None]:
    """A forward pre-hook resizing a (B,3,H,W) input bilinearly to ``target(H, W)`` (nothing
    happens, bit for bit, when that is already its size)."""

    def hook(_m: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0]
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            hw = target(int(x.shape[-2]), int(x.shape[-1]))
            if hw != tuple(x.shape[-2:]):
                return (F.interpolate(x, size=hw, mode="bilinear", align_corners=False,
                                      antialias=True), *args[1:])
        return None

    return hook


def patch_multiple(height: int, width: int, patch: int) -> tuple[int, int]:
    """The input size a ViT with ``patch`` px patches is given for a (height, width) input: each
    side rounded to the nearest multiple of ``patch`` (halves up), at least one patch.

    A patch embedding needs whole patches: timm's asserts it, Hugging Face's and most others'
    convolution drops the last ``side % patch`` pixels, so the map would be stretched over pixels
    the model never saw. Resizing by less than half a patch per side keeps every pixel and makes
    the map cover exactly the image, so mapping it back to the image (evaluation's bilinear resize
    to the original size, ``explain``'s overlay) needs nothing else; padding would feed the model
    a band of made-up pixels and leave every consumer of the map a crop to do.
    E.g. 85 x 64 with 16 px patches -> 80 x 64; 44 x 59 with 8 px -> 48 x 56."""
    return (max(1, (height + patch // 2) // patch) * patch,
            max(1, (width + patch // 2) // patch) * patch)


def _input_size_hook(rule: TokenGrid) -> Callable[[nn.Module, tuple[Any, ...]], None]:
    @torch.compiler.disable
    def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            rule.input_hw = (int(args[0].shape[-2]), int(args[0].shape[-1]))

    return hook


class _MathAttention:
    """Forward hooks running a training forward with PyTorch's math attention kernel.

    Training through Grad-CAM differentiates the heatmap (``create_graph=True``), i.e. takes a
    second derivative of every attention after the CAM layer. The fused kernels of
    ``scaled_dot_product_attention`` (flash, memory-efficient, also on the CPU) have no second
    derivative ("derivative for ..._backward is not implemented"); the math kernel has. Used only
    for a forward in training mode, with gradients on, while the CAM layer is hooked (a Grad-CAM
    step): evaluation and the plain (lambda = 0) training step keep the fused kernels."""

    def __init__(self, cam_module: nn.Module) -> None:
        self._stack: list[Any] = []
        self._cam = cam_module

    def enter(self, module: nn.Module, _args: Any) -> None:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        active = module.training and torch.is_grad_enabled() and bool(self._cam._forward_hooks)
        ctx = sdpa_kernel([SDPBackend.MATH]) if active else None
        if ctx is not None:
            ctx.__enter__()
        self._stack.append(ctx)

    def exit(self, _module: nn.Module, _args: Any, _out: Any) -> None:
        ctx = self._stack.pop() if self._stack else None
        if ctx is not None:
            ctx.__exit__(None, None, None)


def _tap_hook(rule: Reshape, tap: GridTap) -> Callable[[nn.Module, Any, Any], Any]:
    def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
        return fold(rule, out, tap)

    return hook


def attach(model: nn.Module, record: ModelInfo) -> nn.Module:
    """Record ``record`` on ``model`` and install its hooks: the fold through a GridTap when the
    CAM layer needs a reshape, the resize for a fixed input size (else, for a ViT, to whole
    patches: :func:`patch_multiple`), the input-size record a token reshape needs. The layer is
    recorded under its canonical name (:func:`~gridcam.models.layers.resolve_layer`). Replaces any
    earlier record and its hooks. Returns the module to hook for Grad-CAM (what
    ``models.cam_layer(model)`` returns from then on)."""
    old = info(model)
    if old is not None:
        for h in old.hooks:
            h.remove()
    record.cam_layer, layer = resolve_layer(model, record.cam_layer)
    record.hooks = []
    record.tap = None
    if record.fixed_input:
        size = record.input_size
        record.hooks.append(model.register_forward_pre_hook(_resize_hook(lambda _h, _w: (size, size))))
    elif record.patch:
        patch = record.patch
        record.hooks.append(model.register_forward_pre_hook(
            _resize_hook(lambda h, w: patch_multiple(h, w, patch))))
    if isinstance(record.reshape, TokenGrid):
        record.hooks.append(model.register_forward_pre_hook(_input_size_hook(record.reshape)))
    if record.reshape is not None:
        record.tap = GridTap(record.cam_layer, record.reshape)
        record.hooks.append(layer.register_forward_hook(_tap_hook(record.reshape, record.tap)))
    cam_module = record.tap if record.tap is not None else layer
    if is_outside(record.arch):
        math = _MathAttention(cam_module)
        record.hooks += [model.register_forward_pre_hook(math.enter),
                         model.register_forward_hook(math.exit, always_call=True)]
    object.__setattr__(model, INFO_ATTR, record)
    return cam_module


def _choose_reshape(model: nn.Module, name: str, out: LayerOutput, reshape: Reshape | str | None,
                    size: int) -> Reshape | None:
    """The rule for ``reshape`` ("auto" or a given one), checked against the probed output."""
    if reshape == "auto":
        return reshape_for(model, name, out, size)
    rule = parse_reshape(reshape)
    shape = out.shape
    if rule is None:
        if shape is None or len(shape) != 4:
            reshape_for(model, name, replace(out, kind="other"), size)  # raises, naming the layer
        return None
    if isinstance(rule, TokenGrid):
        if shape is None or len(shape) != 3:
            raise GridcamError(f"--reshape {reshape} needs a (B,N,D) token output, but layer "
                               f"{name!r} outputs {shape}")
        if rule.prefix is None:
            rule.prefix = prefix_tokens(model)
        p, h, _ = rule.grid_size(shape[1])
        rule.prefix = p
        rule.stride = size // h if size % h == 0 else None
    if shape is None:
        raise GridcamError(f"layer {name!r} outputs no tensor; it cannot be a CAM layer")
    rule.to_grid(torch.zeros(shape))  # raises a clear GridcamError when the rule does not fit
    return rule


def _constants(value: str | Sequence[float] | None, default: tuple[float, ...],
               what: str) -> tuple[float, ...]:
    """``--mean``/``--std``: None -> ``default``; "a,b,c" or 3 numbers -> a tuple (std > 0)."""
    if value is None:
        return tuple(default)
    try:
        out = tuple(float(v) for v in (value.split(",") if isinstance(value, str) else value))
    except ValueError:
        raise GridcamError(f"--{what} must be three numbers like 0.5,0.5,0.5, got {value!r}") from None
    if len(out) != 3 or (what == "std" and min(out) <= 0):
        raise GridcamError(f"--{what} must be three numbers{' > 0' if what == 'std' else ''}, got {value!r}")
    return out


def input_config(arch: str, mean: str | Sequence[float] | None = None,
                 std: str | Sequence[float] | None = None,
                 input_size: int | None = None) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """(mean, std, input size) a model of ``arch`` expects, without building it for real (an
    outside model is constructed on the meta device), for the data transforms that are set up
    before the model. Overrides win; ImageNet's constants and 224 px for built-in names."""
    d = Defaults()
    if is_outside(arch):
        try:
            with torch.device("meta"):
                _, d = construct(arch, 2)
        except GridcamError:
            raise
        except Exception:  # a constructor that cannot run on the meta device
            _, d = construct(arch, 2)
    return _constants(mean, d.mean, "mean"), _constants(std, d.std, "std"), int(input_size or d.input_size)


def build(
    arch: str,
    num_classes: int = 1000,
    pooling: str = "avg",
    cam_layer: str | None = None,
    reshape: Reshape | str | None = "auto",
    checkpoint: str | Path | None = None,
    *,
    input_size: int | None = None,
    mean: str | Sequence[float] | None = None,
    std: str | Sequence[float] | None = None,
) -> BuiltModel:
    """Build any architecture with its CAM layer chosen and recorded.

    Args:
        arch: a built-in name (``resnet50``), ``torchvision:NAME``, ``timm:NAME``,
            ``hf:NAME_OR_PATH`` or ``MODULE:FACTORY`` / ``file.py:FACTORY`` (a callable taking
            ``num_classes=`` and returning an ``nn.Module``).
        num_classes: size of the classifier.
        pooling: ``"avg"``, or ``"max"`` for GMP (swapped in where the head is global pooling +
            linear; GridcamError otherwise).
        cam_layer: dotted path of the CAM layer; None = the family's default
            (:func:`gridcam.models.layers.default_cam_layer`). Negative indices count from the
            end (``blocks.-1.norm1``); the canonical name (``blocks.11.norm1``) is recorded.
        reshape: ``"auto"`` (from the layer's output: tokens -> ``vit``, channels-last ->
            ``nhwc``), ``None``/``"none"``, ``"vit"``, ``"vit:P"``, ``"nhwc"`` or a rule.
        checkpoint: weights file loaded strictly (``torch.load(weights_only=True)``).
        input_size: the side S to probe at; default: the model's config (timm, Hugging Face), else 224.
        mean, std: override the normalisation constants (three numbers, or ``"0.5,0.5,0.5"``).
    Returns:
        :class:`BuiltModel`; its :class:`ModelInfo` is also recorded on ``model``.
    """
    if is_outside(arch):
        model, d = construct(arch, num_classes, pooling)
    else:
        model, d = create_builtin(arch, num_classes=num_classes, pooling=pooling), Defaults()
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    size = int(input_size or d.input_size)
    if cam_layer is not None:  # one spelling: blocks.-1.norm1 -> blocks.11.norm1, as probes name it
        cam_layer = resolve_layer(model, cam_layer)[0]
    record = ModelInfo(arch, "", None, _constants(mean, d.mean, "mean"), _constants(std, d.std, "std"), size)
    default = None if is_outside(arch) else next(
        n for n, m in model.named_modules() if m is builtin_layer(model))
    if default is not None and cam_layer in (None, default) and reshape in ("auto", None, "none"):
        record.cam_layer = default  # built-ins: the paper's layers, no probe
    else:
        try:
            outputs = probe(model, size)
        except GridcamError:
            raise
        except Exception as exc:
            raise GridcamError(f"{arch}: a forward of a (1,3,{size},{size}) input failed "
                               f"({type(exc).__name__}: {exc}); set the input size") from None
        record.cam_layer = cam_layer or default_cam_layer(model, outputs, d.hint)
        out = next((o for o in outputs if o.name == record.cam_layer), None)
        if out is None:
            raise GridcamError(f"layer {record.cam_layer!r} of {arch} is not called in the forward")
        record.reshape = _choose_reshape(model, record.cam_layer, out, reshape, size)
        record.fixed_input = not _accepts(model, 2 * size)
        record.patch = patch_stride(model, outputs, size, record.reshape)
    layer = attach(model, record)
    return BuiltModel(model, layer, record)
