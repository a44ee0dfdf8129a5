"""One registry maps an architecture name to a constructor (timm-style). The built-ins' names and
descriptions are :mod:`gridcam.models.catalog` (torch-free: ``gridcam models`` lists it); outside
code may :func:`register` more."""

from __future__ import annotations

from types import ModuleType
from typing import Callable

import torch
from torch import nn

from gridcam.errors import GridcamError
from gridcam.models import catalog
from gridcam.models.info import info
from gridcam.models.layers import get_layer

Constructor = Callable[[int, str], nn.Module]
_REGISTRY: dict[str, tuple[Constructor, str]] = {}


def register(name: str, description: str) -> Callable[[Constructor], Constructor]:
    """Decorator: register ``fn(num_classes, pooling) -> nn.Module`` under ``name``."""

    def wrap(fn: Constructor) -> Constructor:
        _REGISTRY[name] = (fn, description)
        return fn

    return wrap


def list_models() -> list[str]:
    """Names accepted by :func:`create`, in registration order."""
    return list(_REGISTRY)


def describe(name: str) -> str:
    """The one-line description of registered architecture ``name``."""
    return _REGISTRY[name][1]


def create_builtin(name: str, num_classes: int = 1000, pooling: str = "avg") -> nn.Module:
    """Build a registered (built-in) architecture, randomly initialised; :func:`gridcam.models.create`
    also takes outside models. Raises GridcamError for an unknown name or an unsupported pooling."""
    if name not in _REGISTRY:
        raise GridcamError(f"unknown architecture {name!r}; choose one of: {', '.join(_REGISTRY)}")
    if pooling not in ("avg", "max"):
        raise GridcamError(f"pooling must be 'avg' or 'max', got {pooling!r}")
    if num_classes < 1:
        raise GridcamError(f"num_classes must be >= 1, got {num_classes}")
    return _REGISTRY[name][0](num_classes, pooling)


def _torchvision_models() -> ModuleType:
    """``torchvision.models``, imported on first use: importing torchvision (and torch._dynamo
    with it) takes seconds, which ``import gridcam.models`` need not wait for."""
    import torchvision.models

    return torchvision.models


def _tiny_resnet(num_classes: int, pooling: str, strides: tuple[int, int, int, int] = (1, 2, 2, 2)) -> nn.Module:
    """tiny_resnet (BasicBlock [1,1,1,1], widths 16/32/64/128) with the given per-layer strides."""
    from torchvision.models.resnet import BasicBlock

    from gridcam.models.resnet import WidthResNet, with_pooling

    return with_pooling(WidthResNet(BasicBlock, [1, 1, 1, 1], num_classes, widths=(16, 32, 64, 128),
                                    strides=strides), pooling)


def _resnet(name: str) -> Constructor:
    """torchvision's ``name`` (resnet18 ... resnet152), with the pooling the row asks for."""
    def build(num_classes: int, pooling: str) -> nn.Module:
        from gridcam.models.resnet import with_pooling

        return with_pooling(getattr(_torchvision_models(), name)(num_classes=num_classes), pooling)

    return build


def _avg_only(name: str, build: Callable[[int], nn.Module]) -> Constructor:
    def constructor(num_classes: int, pooling: str) -> nn.Module:
        if pooling != "avg":
            raise GridcamError(
                f"{name} supports only global average pooling; --maxpool (GMP) is for ResNets")
        return build(num_classes)

    return constructor


#: built-in name -> its constructor; the names and descriptions are :data:`catalog.ARCHITECTURES`.
_BUILTINS: dict[str, Constructor] = {
    **{name: _resnet(name) for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")},
    "tiny_resnet": _tiny_resnet,
    "tiny_resnet_s16": lambda n, pooling: _tiny_resnet(n, pooling, strides=(1, 2, 2, 1)),
    "alexnet": _avg_only("alexnet", lambda n: _torchvision_models().alexnet(num_classes=n)),
    **{name: _avg_only(name, lambda n, name=name: getattr(_torchvision_models(), name)(num_classes=n))
       for name in ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")},
}
for _name, _description in catalog.ARCHITECTURES.items():
    register(_name, _description)(_BUILTINS[_name])


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def cam_layer(model: nn.Module, name: str | None = None) -> nn.Module:
    """The module whose output Grad-CAM uses.

    ``name``: a dotted path (``layer4``, ``features.7``, ``blocks.-1.norm1``). Without it: the layer
    :func:`gridcam.models.build` recorded on the model (any outside model; for a layer whose output
    needs a reshape, such as a ViT block's tokens, the ``GridTap`` whose output is the folded
    (B,K,h,w) grid), else ResNet ``layer4``, AlexNet/VGG ``features``. Works for torchvision's own
    models too (same attribute names) and through DDP wrappers.
    """
    m = unwrap(model)
    if name is not None:
        return get_layer(m, name)
    record = info(m)
    if record is not None:  # a reshaped layer: the tap its folded grid passes through
        return record.tap if record.tap is not None else get_layer(m, record.cam_layer)
    for attr in ("layer4", "features"):
        if isinstance(getattr(m, attr, None), nn.Module):
            return getattr(m, attr)
    raise GridcamError(
        f"cannot find the CAM layer of {type(m).__name__}: expected a 'layer4' (ResNet) or "
        "'features' (AlexNet/VGG) sub-module; build it with models.build(...) or pass --cam-layer")


def classifier_prefix(model: nn.Module) -> str:
    """State-dict prefix of the final linear layer (``fc`` or ``classifier.6``), for transfer."""
    last = None
    for name, module in unwrap(model).named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise GridcamError(f"{type(model).__name__} has no linear classifier")
    return last


def shapes_on_meta(name: str, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a registered architecture's state dict, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = create_builtin(name, num_classes=num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
