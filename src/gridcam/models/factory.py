"""A model from a name or from a checkpoint file: the entry points of :mod:`gridcam.models`.

:func:`create` takes a built-in name (the registry) or an outside one (``torchvision:``, ``timm:``,
``hf:``, ``MODULE:FACTORY``: the adapters); :func:`create_from_checkpoint` reads the architecture
and class count from a file and loads it. This module sits above the registry, the checkpoint
reader and the adapters, so none of them needs to import another one back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from gridcam.errors import GridcamError
from gridcam.models.adapters import build
from gridcam.models.checkpoint import checkpoint_num_classes, guess_arch, load_state_dict, read_checkpoint
from gridcam.models.info import is_outside
from gridcam.models.registry import create_builtin

__all__ = ["create", "create_from_checkpoint"]


def create(name: str, num_classes: int = 1000, pooling: str = "avg") -> nn.Module:
    """Build an architecture, randomly initialised.

    ``name``: a built-in name, or an outside model (``torchvision:NAME``, ``timm:NAME``,
    ``hf:NAME_OR_PATH``, ``MODULE:FACTORY``; see :func:`gridcam.models.build`, whose choice of CAM
    layer and reshape is recorded on the model, so :func:`cam_layer` finds it).
    ``pooling``: "avg" (standard) or "max" (the paper's GMP; built-in ResNets, and outside models
    whose head is global pooling + linear). Raises GridcamError for an unknown name or an
    unsupported pooling.
    """
    if is_outside(name):
        return build(name, num_classes=num_classes, pooling=pooling).model
    return create_builtin(name, num_classes, pooling)


def create_from_checkpoint(path: str | Path, arch: str | None = None,
                           pooling: str | None = None, *, cam_layer: str | None = None,
                           reshape: Any = "auto", input_size: int | None = None,
                           mean: Any = None, std: Any = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint describes and load it -> (model, metadata).

    The number of classes comes from the file. ``arch``/``pooling`` default to what the file records
    (our checkpoints store them), else ``arch`` is guessed from the keys and shapes. ``arch`` may be
    an outside model (``timm:NAME``, ``MODULE:FACTORY`` ...); ``cam_layer``, ``reshape``,
    ``input_size``, ``mean`` and ``std`` (default: the file's own entries of those names, as
    training records them from ``ModelInfo.as_dict()``, else automatic) are passed to
    :func:`gridcam.models.build`, which records them on the model (``models.info(model)``).
    """
    sd, meta = read_checkpoint(path)
    arch = arch or meta.get("arch") or guess_arch(sd)
    if arch is None:
        raise GridcamError(f"cannot tell the architecture of {path}; pass it with -a/--arch")
    pooling = pooling or meta.get("pooling") or "avg"
    # What training recorded (ModelInfo.as_dict()) unless overridden.
    cam_layer = cam_layer or meta.get("cam_layer")
    if reshape == "auto" and isinstance(meta.get("reshape"), str) and cam_layer == meta.get("cam_layer"):
        reshape = meta["reshape"]
    input_size = input_size or meta.get("input_size")
    built = build(str(arch), num_classes=checkpoint_num_classes(sd), pooling=str(pooling),
                  cam_layer=cam_layer, reshape=reshape, input_size=input_size,
                  mean=mean if mean is not None else meta.get("mean"),
                  std=std if std is not None else meta.get("std"))
    load_state_dict(built.model, sd, source=str(path))
    return built.model, meta
