"""torchvision's ResNet with the stage widths as a parameter (for ``tiny_resnet``), and the paper's
global max pooling (GMP) as a pooling choice.

The built-in ``resnet18`` ... ``resnet152``, ``alexnet`` and ``vgg*`` are torchvision's own models
(:mod:`gridcam.models.registry` builds them with ``torchvision.models``). What torchvision lacks:
its ResNet hard-codes the widths 64/128/256/512, so :class:`WidthResNet` sets the stem and the
four stages from ``widths`` and builds everything else with torchvision's own blocks,
``_make_layer``, initialisation and forward. ``pooling="max"`` swaps the global average pooling
for global max pooling; the attribute keeps torchvision's name ``avgpool`` (it has no parameters,
so state dicts are unaffected).
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["WidthResNet", "global_pool", "with_pooling"]


def global_pool(pooling: str) -> nn.Module:
    """``"avg"`` -> global average pooling; ``"max"`` -> global max pooling (the paper's GMP)."""
    if pooling == "avg":
        return nn.AdaptiveAvgPool2d((1, 1))
    if pooling == "max":
        return nn.AdaptiveMaxPool2d((1, 1))
    raise ValueError(f"pooling must be 'avg' or 'max', got {pooling!r}")


def with_pooling(model: ResNet, pooling: str) -> ResNet:
    """Set a ResNet's global pooling (``model.avgpool``) to ``pooling`` in place; returns the model."""
    model.avgpool = global_pool(pooling)
    return model


class WidthResNet(ResNet):
    """torchvision's ResNet (conv1, bn1, relu, maxpool, layer1..4, avgpool, fc; CAM layer
    ``layer4``, (B,C,H/s,W/s) with s = :attr:`cam_stride`, 32 by default) with stage widths
    ``widths`` instead of 64/128/256/512 and stage strides ``strides`` instead of 1/2/2/2.

    Modules are created in torchvision's order and initialised by torchvision's rule (Kaiming
    normal fan-out convolutions, unit batch norms), so for the same seed the weights are what
    torchvision's constructor would draw at those widths.
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 1000,
                 widths: tuple[int, int, int, int] = (64, 128, 256, 512),
                 strides: tuple[int, int, int, int] = (1, 2, 2, 2)):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = widths[0], 1, 1, 64
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0], stride=strides[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=strides[1])
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=strides[2])
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=strides[3])
        #: input pixels per cell of the CAM layer's map (the stem's 4 times the stages' strides)
        self.cam_stride = 4 * strides[0] * strides[1] * strides[2] * strides[3]
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
