"""Architectures with torchvision-identical state dicts, a name registry, and safe weight loading.

>>> from gridcam import models
>>> model = models.create("resnet18", num_classes=1000, pooling="max")   # GMP ResNet-18
>>> layer = models.cam_layer(model)                                      # model.layer4

Outside models (torchvision, timm, Hugging Face, the user's own) go through :func:`build`, which
also picks and records the CAM layer and its reshape rule::

    built = models.build("timm:convnext_tiny", num_classes=10, cam_layer="stages.3")
"""

from __future__ import annotations

from gridcam.models.adapters import BuiltModel, build, input_config, swap_to_gmp
from gridcam.models.checkpoint import (
    checkpoint_num_classes,
    guess_arch,
    load_checkpoint,
    load_state_dict,
    read_checkpoint,
)
from gridcam.models.factory import create, create_from_checkpoint
from gridcam.models.info import ModelInfo, info
from gridcam.models.layers import LayerOutput, get_layer, probe
from gridcam.models.registry import (
    cam_layer,
    classifier_prefix,
    describe,
    list_models,
    register,
    unwrap,
)

__all__ = [
    "BuiltModel", "LayerOutput", "ModelInfo", "build", "get_layer", "info", "input_config", "probe",
    "swap_to_gmp",
    "cam_layer", "checkpoint_num_classes", "classifier_prefix", "create", "create_from_checkpoint",
    "describe", "guess_arch", "list_models", "load_checkpoint", "load_state_dict",
    "read_checkpoint", "register", "unwrap",
]
