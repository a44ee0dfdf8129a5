"""The built-in architectures that ``gridcam models`` lists: each name and its one-line description.

The one place they are written. The constructors live beside torch in
:mod:`gridcam.models.registry`, which registers each name of :data:`ARCHITECTURES` with its
description. This module imports neither torch nor anything else of gridcam, so ``gridcam models``
lists the architectures without loading torch (about 2 s of start-up on a 2-core machine).
``tests/test_catalogs.py`` checks that its names are the registry's built-ins.
"""

from __future__ import annotations

__all__ = ["ARCHITECTURES"]

#: built-in architecture name -> one-line description, in the order ``gridcam models`` lists them.
ARCHITECTURES: dict[str, str] = {
    "resnet18": "torchvision ResNet (BasicBlock [2,2,2,2]), CAM layer layer4",
    "resnet34": "torchvision ResNet (BasicBlock [3,4,6,3]), CAM layer layer4",
    "resnet50": "torchvision ResNet (Bottleneck [3,4,6,3]), CAM layer layer4",
    "resnet101": "torchvision ResNet (Bottleneck [3,4,23,3]), CAM layer layer4",
    "resnet152": "torchvision ResNet (Bottleneck [3,8,36,3]), CAM layer layer4",
    "tiny_resnet": "ResNet BasicBlock [1,1,1,1], widths 16/32/64/128: CPU tests and demos",
    "tiny_resnet_s16": "tiny_resnet with layer4 at stride 1 (stride 16: 4x4 maps at 64 px): the CPU study",
    "alexnet": "torchvision AlexNet, CAM layer features (6x6 at 224 px)",
    "vgg11": "torchvision VGG 11, CAM layer features",
    "vgg11_bn": "torchvision VGG 11 with batch norm, CAM layer features",
    "vgg13": "torchvision VGG 13, CAM layer features",
    "vgg13_bn": "torchvision VGG 13 with batch norm, CAM layer features",
    "vgg16": "torchvision VGG 16, CAM layer features",
    "vgg16_bn": "torchvision VGG 16 with batch norm, CAM layer features",
    "vgg19": "torchvision VGG 19, CAM layer features",
    "vgg19_bn": "torchvision VGG 19 with batch norm, CAM layer features",
}
