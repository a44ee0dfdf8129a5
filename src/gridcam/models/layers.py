"""Finding a model's CAM layer: dotted paths, one probing forward, defaults for known families.

A *probe* runs one forward of a (1,3,S,S) input with a hook on every sub-module and records what
each returned, in the order the modules finished (a container finishes after its children).
Each output is classified as

* ``grid``:   (B,K,h,w), usable as it is;
* ``nhwc``:   (B,h,w,C) channels-last (Swin stages), usable with the ``nhwc`` reshape;
* ``tokens``: (B,N,D) with N = P + h*w (ViT-style), usable with the ``vit`` reshape;
* ``other``:  anything else (logits, pooled vectors, non-tensors): not a CAM layer.

The default CAM layer (:func:`default_cam_layer`), in order: a path the model names itself
(``model.gridcam_cam_layer``), ``layer4`` (ResNets), ``features`` (AlexNet, VGG, DenseNet,
EfficientNet, MobileNet, ConvNeXt, Swin in torchvision), timm's ``feature_info[-1]``, else the last
module with a spatial output. When that choice is a transformer block (token output) the first
LayerNorm inside the last block is used instead (``blocks.11.norm1`` for a ViT-B): after the last
block only the class token reaches the classifier, so the patch tokens' gradients would be zero
there, while the last block's attention still mixes the patch tokens into the class token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gridcam.models.info import info
from gridcam.models.reshape import ChannelsLast, Reshape, TokenGrid
from gridcam.errors import GridcamError

__all__ = ["LayerOutput", "default_cam_layer", "format_layers", "get_layer", "patch_stride",
           "prefix_tokens", "probe", "reshape_for", "resolve_layer", "zero_heatmap_message"]

#: Parameter names of the non-patch tokens of ViT-style models (timm, torchvision, Hugging Face).
_PREFIX_PARAMS = ("cls_token", "class_token", "dist_token", "distillation_token", "reg_token",
                  "register_tokens")


@dataclass
class LayerOutput:
    """What one module returned in a probe.

    Attributes:
        name: dotted path (``get_layer(model, name)`` returns the module).
        type: the module's class name.
        shape: output shape (the first item of a tuple output), None for a non-tensor.
        kind: ``grid``, ``nhwc``, ``tokens`` or ``other`` (module docstring).
        order: position in the order the modules finished their forward.
    """

    name: str
    type: str
    shape: tuple[int, ...] | None
    kind: str
    order: int


def resolve_layer(model: nn.Module, path: str) -> tuple[str, nn.Module]:
    """``(canonical name, module)`` of the sub-module at a dotted ``path``.

    Negative indices count from the end of a ModuleList/Sequential (or any module whose children
    are named): ``blocks.-1.norm1`` of a 12-block ViT is ``("blocks.11.norm1", module)``. The
    canonical name is the one ``model.named_modules()`` gives, which probes and state dicts use,
    so a layer is recorded under it once, however it was spelt. Raises GridcamError naming the
    first part that does not exist and the names available there.
    """
    module = model
    done: list[str] = []
    for part in path.split("."):
        children = dict(module.named_children())
        if part.lstrip("-").isdigit() and part.startswith("-") and children:
            keys = list(children)
            idx = int(part)
            part = keys[idx] if -len(keys) <= idx else part
        if part not in children:
            where = ".".join(done) or type(model).__name__
            avail = ", ".join(list(children)[:12]) or "no sub-modules"
            raise GridcamError(f"no layer {path!r} in {type(model).__name__}: {where} has no "
                               f"{part!r} (it has: {avail}); `gridcam layers -a ARCH` lists them")
        module = children[part]
        done.append(part)
    return ".".join(done), module


def get_layer(model: nn.Module, path: str) -> nn.Module:
    """The sub-module at a dotted ``path`` (``layer4``, ``features.7``, ``blocks.-1.norm1``);
    see :func:`resolve_layer` for negative indices and errors."""
    return resolve_layer(model, path)[1]


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _kind(shape: tuple[int, ...] | None) -> str:
    if shape is None:
        return "other"
    if len(shape) == 4:
        # A square probe input gives a square map: NCHW has h == w in the last two dims.
        if shape[2] == shape[3] or shape[1] != shape[2]:
            return "grid"
        return "nhwc"
    if len(shape) == 3 and shape[1] > 1:
        try:
            TokenGrid().grid_size(shape[1])
        except GridcamError:
            return "other"
        return "tokens"
    return "other"


def probe(model: nn.Module, input_size: int = 224) -> list[LayerOutput]:
    """One forward of a (1,3,S,S) random input (eval mode, no gradients) -> every sub-module's
    output, in the order the modules finished. The model's train/eval mode is restored."""
    records: list[LayerOutput] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod: nn.Module, _inp: Any, out: Any, name: str = name) -> None:
            t = _first_tensor(out)
            shape = tuple(t.shape) if t is not None else None
            records.append(LayerOutput(name, type(mod).__name__, shape, _kind(shape), len(records)))

        handles.append(module.register_forward_hook(hook))
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x.to(device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    # A module called twice (a shared ReLU) keeps its last output.
    last: dict[str, LayerOutput] = {}
    for r in records:
        last.pop(r.name, None)
        last[r.name] = r
    return list(last.values())


def _block_norm(model: nn.Module, block: str) -> str:
    """The first LayerNorm inside the transformer block ``block`` (its pre-attention norm), else
    the block itself."""
    for name, module in get_layer(model, block).named_modules():
        if name and isinstance(module, nn.LayerNorm):
            return f"{block}.{name}"
    return block


def _is_block(model: nn.Module, name: str) -> bool:
    """Whether ``name`` is an item of a ModuleList/Sequential (a repeated block)."""
    parent, _, _ = name.rpartition(".")
    container = get_layer(model, parent) if parent else model
    return isinstance(container, (nn.ModuleList, nn.Sequential))


def default_cam_layer(model: nn.Module, outputs: list[LayerOutput], hint: str | None = None) -> str:
    """The dotted path of the default CAM layer (module docstring), given a :func:`probe`.

    ``hint``: a family's own choice (timm's ``feature_info[-1]['module']``), used when its output
    can be a grid. Raises GridcamError when no module's output can be made a grid.
    """
    by_name = {o.name: o for o in outputs}
    usable = ("grid", "nhwc", "tokens")
    named = getattr(model, "gridcam_cam_layer", None)
    candidates = [c for c in (named, "layer4", "features", hint) if isinstance(c, str)]
    choice = next((c for c in candidates if c in by_name and by_name[c].kind in usable), None)
    if choice is None:
        spatial = [o for o in outputs if o.kind in usable and not _one_by_one(o)]
        if not spatial:
            raise GridcamError(
                f"{type(model).__name__} has no layer whose output can be a (B,K,h,w) grid "
                "(a spatial map or a sequence of patch tokens); pass --cam-layer")
        # ViT-style when a transformer block comes after the last spatial map (the patch
        # embedding's convolution comes before the blocks).
        blocks = [o for o in spatial if o.kind == "tokens" and _is_block(model, o.name)]
        maps = [o for o in spatial if o.kind != "tokens"]
        if blocks and (not maps or blocks[-1].order > maps[-1].order):
            choice = blocks[-1].name
        else:
            choice = max(spatial, key=lambda o: o.order).name
    if by_name[choice].kind == "tokens":
        choice = _block_norm(model, choice)
    return choice


def _one_by_one(o: LayerOutput) -> bool:
    if o.shape is None or o.kind != "grid":
        return False
    return o.shape[2] * o.shape[3] == 1


def prefix_tokens(model: nn.Module) -> int | None:
    """Number of class/distillation/register tokens of a ViT-style model, when it says so
    (timm's ``num_prefix_tokens``, or its token parameters), else None."""
    n = getattr(model, "num_prefix_tokens", None)
    if isinstance(n, int):
        return n
    count, found = 0, False
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1] in _PREFIX_PARAMS:
            found = True
            count += int(p.shape[-2]) if p.dim() >= 2 else 1
    return count if found else None


def reshape_for(model: nn.Module, layer: str, output: LayerOutput, input_size: int) -> Reshape | None:
    """The reshape rule that makes ``layer``'s probed output a grid; GridcamError if none can."""
    if output.kind == "grid":
        return None
    if output.kind == "nhwc":
        return ChannelsLast()
    if output.kind == "tokens":
        assert output.shape is not None
        rule = TokenGrid(prefix=prefix_tokens(model))
        p, h, _ = rule.grid_size(output.shape[1])
        rule.prefix = p
        rule.stride = input_size // h if input_size % h == 0 else None
        return rule
    raise GridcamError(
        f"layer {layer!r} ({output.type}) outputs "
        f"{output.shape if output.shape is not None else 'no tensor'}, which cannot be made a "
        "(B,K,h,w) grid; choose a layer with a spatial or patch-token output "
        "(`gridcam layers -a ARCH` lists them)")


def _usable(model: nn.Module, o: LayerOutput, input_size: int) -> str:
    """'grid (K,h,w)', 'vit:P -> (D,h,w)', 'nhwc -> (C,h,w)' or '' for an output."""
    if o.kind == "other" or o.shape is None:
        return ""
    try:
        rule = reshape_for(model, o.name, o, input_size)
    except GridcamError:
        return ""
    if rule is None:
        return f"grid {o.shape[1:]}"
    grid, _ = rule.to_grid(torch.zeros(o.shape))
    return f"{rule} -> {tuple(grid.shape[1:])}"


def format_layers(built: Any, outputs: list[LayerOutput], show_all: bool = False,
                  given: str | None = None) -> list[str]:
    """Lines of ``gridcam layers``: one per layer (those usable as CAM layers unless ``show_all``),
    the model's CAM layer marked ``*``. ``built``: a :class:`gridcam.models.BuiltModel`;
    ``given``: the ``--cam-layer`` it was built with (None: the default)."""
    info = built.info
    lines = [f"{info.arch}: probe input (1, 3, {info.input_size}, {info.input_size}); "
             f"mean {info.mean}, std {info.std}; "
             f"{'inputs resized to ' + str(info.input_size) + ' px (fixed input size)' if info.fixed_input else 'any input size'}"]
    rows = []
    for o in sorted(outputs, key=lambda o: o.order):
        use = _usable(built.model, o, info.input_size)
        if use or show_all:
            mark = "*" if o.name == info.cam_layer else " "
            rows.append((mark, o.name, o.type, str(o.shape) if o.shape else "-", use or "-"))
    width = [max(len(r[i]) for r in rows) for i in range(1, 4)] if rows else [0, 0, 0]
    lines.append(f"  {'layer':<{width[0]}}  {'type':<{width[1]}}  {'output':<{width[2]}}  as CAM grid")
    lines += [f"{m} {n:<{width[0]}}  {t:<{width[1]}}  {s:<{width[2]}}  {u}" for m, n, t, s, u in rows]
    what = "default CAM layer" if given is None else "CAM layer"
    spelt = f", given as {given}" if given is not None and given != info.cam_layer else ""
    lines.append(f"{what}: {info.cam_layer}"
                 + (f" (reshape {info.reshape}{spelt})" if info.reshape is not None else
                    (f" ({spelt[2:]})" if spelt else ""))
                 + "; choose another with --cam-layer NAME")
    return lines


def patch_stride(model: nn.Module, outputs: list[LayerOutput], input_size: int,
                 cam_rule: Reshape | None = None) -> int | None:
    """Input pixels per patch of a ViT-style model, given a :func:`probe` at ``input_size``; None
    for any other model.

    The stride of ``cam_rule`` when it is a :class:`TokenGrid` that knows it, else that of the
    first token sequence of the probe (the patch embedding's, before any block), provided the
    model declares class/distillation tokens (:func:`prefix_tokens`, also 0): a model without them
    is not taken for a ViT because some layer returns a (B,N,D) tensor.
    """
    if isinstance(cam_rule, TokenGrid) and cam_rule.stride:
        return cam_rule.stride
    if prefix_tokens(model) is None:
        return None
    for o in sorted(outputs, key=lambda o: o.order):
        if o.kind != "tokens":
            continue
        try:
            rule = reshape_for(model, o.name, o, input_size)
        except GridcamError:  # e.g. the patch tokens before the class token is prepended
            continue
        if isinstance(rule, TokenGrid) and rule.stride:
            return rule.stride
    return None


def zero_heatmap_message(model: nn.Module, where: str, method: str = "Grad-CAM") -> str:
    """The one-line warning for a CAM layer whose ``method`` heatmaps are zero everywhere
    (``where``: "every image of the first training batch", ...): the layer, the likely cause, the
    command that lists the others. ``model``: built by :func:`gridcam.models.build` (its recorded
    layer and architecture are named), or any model."""
    record = info(model)
    layer = f"CAM layer {record.cam_layer!r}" if record is not None else "the CAM layer"
    arch = record.arch if record is not None else "ARCH"
    if record is not None and isinstance(record.reshape, TokenGrid):
        cause = ("after a ViT's last block only the class token reaches the classifier, so the "
                 "patch tokens get no gradient; use a layer inside that block (the default is "
                 "its first norm)")
    else:
        cause = ("the class scores send its output no gradient (a layer the classifier does not "
                 "read, or one after the global pooling), or none that survives the ReLU")
    return (f"{layer} gives all-zero {method} heatmaps for {where}: {cause}; "
            f"`gridcam layers -a {arch}` lists the layers")
