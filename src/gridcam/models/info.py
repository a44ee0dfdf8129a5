"""What :func:`gridcam.models.build` chose for a model (CAM layer, reshape rule, input constants),
recorded on the model itself so every later step (``models.cam_layer``, training, evaluation)
reads the same choice. Sits below the registry, the checkpoint reader and the adapters, which all
read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from gridcam.models.reshape import GridTap, Reshape
from gridcam.models.sources import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["INFO_ATTR", "ModelInfo", "info", "is_outside"]

INFO_ATTR = "_gridcam_info"


@dataclass
class ModelInfo:
    """What :func:`build` chose, recorded on the model (``models.info(model)``).

    Attributes:
        arch: the architecture string.
        cam_layer: dotted path of the CAM layer.
        reshape: rule making its output a grid (None for a (B,K,h,w) layer).
        mean, std: normalisation constants of the model's input (timm's pretrained_cfg, a Hugging
            Face image processor, the model's own ``pretrained_cfg``, else ImageNet's).
        input_size: the side S the model was probed at (its native input size).
        fixed_input: True when inputs are resized to S x S (the model cannot take 2S).
        patch: a ViT-style model's patch size in input pixels (else None): unless ``fixed_input``,
            inputs whose sides are not multiples of it are resized to the nearest ones
            (:func:`gridcam.models.adapters.patch_multiple`). Found by the probe, not recorded
            in checkpoints (a rebuild finds it again).
        tap: with a reshape, the :class:`~gridcam.models.reshape.GridTap` whose output is the grid:
            the module ``models.cam_layer(model)`` returns.
    """

    arch: str
    cam_layer: str
    reshape: Reshape | None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: int = 224
    fixed_input: bool = False
    patch: int | None = None
    hooks: list[Any] = field(default_factory=list, repr=False, compare=False)
    tap: GridTap | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON/checkpoint-friendly record: arch, cam_layer, reshape (``--reshape`` syntax),
        mean, std, input_size, fixed_input. :func:`gridcam.models.create_from_checkpoint` reads
        ``cam_layer``, ``reshape`` and ``input_size`` back from a checkpoint's top level."""
        return {"arch": self.arch, "cam_layer": self.cam_layer,
                "reshape": str(self.reshape) if self.reshape is not None else "none",
                "mean": list(self.mean), "std": list(self.std), "input_size": self.input_size,
                "fixed_input": self.fixed_input}


def is_outside(arch: str) -> bool:
    """Whether ``arch`` names an outside model (``prefix:name``) rather than a built-in one."""
    return ":" in arch


def info(model: nn.Module) -> ModelInfo | None:
    """The :class:`ModelInfo` :func:`build` recorded on ``model`` (None for a plain model)."""
    return getattr(model, INFO_ATTR, None)
