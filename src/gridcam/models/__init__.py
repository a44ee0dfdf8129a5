"""Architectures with torchvision-identical state dicts, a name registry, and safe weight loading.

>>> from gridcam import models
>>> model = models.create("resnet18", num_classes=1000, pooling="max")   # GMP ResNet-18
>>> layer = models.cam_layer(model)                                      # model.layer4

Outside models (torchvision, timm, Hugging Face, the user's own) go through :func:`build`, which
also picks and records the CAM layer and its reshape rule::

    built = models.build("timm:convnext_tiny", num_classes=10, cam_layer="stages.3")
"""

from __future__ import annotations

import argparse

from gridcam.models.adapters import BuiltModel, ModelInfo, build, info, input_config, swap_to_gmp
from gridcam.models.checkpoint import (
    checkpoint_num_classes,
    create_from_checkpoint,
    guess_arch,
    load_checkpoint,
    load_state_dict,
    read_checkpoint,
)
from gridcam.models.layers import LayerOutput, get_layer, probe
from gridcam.models.registry import (
    cam_layer,
    classifier_prefix,
    create,
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


def cli_list(args: argparse.Namespace) -> int:
    """``gridcam models``: one line per architecture."""
    for name in list_models():
        print(f"{name:<12} {describe(name)}")
    print("outside models: torchvision:NAME, timm:NAME, hf:NAME_OR_PATH, MODULE:FACTORY "
          "(see `gridcam layers -a ARCH`)")
    return 0


def cli_layers(args: argparse.Namespace) -> int:
    """``gridcam layers -a ARCH``: every layer's output for one probe input, the default CAM layer."""
    from gridcam.models.layers import format_layers

    built = build(args.arch, num_classes=args.num_classes, cam_layer=None, reshape="auto",
                  input_size=args.input_size)
    outputs = probe(built.model, built.input_size)
    for line in format_layers(built, outputs, show_all=args.all):
        print(line)
    return 0
