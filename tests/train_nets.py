"""Small models with random layers for the training tests (``-a train_nets:dropout_cnn``).

``tests/`` is on ``sys.path`` under pytest, so these factories are importable by that name.
"""

from __future__ import annotations

import torch
from torch import nn


class DropoutCNN(nn.Module):
    """Two strided convolutions (the last is the CAM layer), dropout, global pooling, linear:
    a model whose training forward draws from the global RNG, as AlexNet's and VGG's do."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Dropout2d(0.2),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5),
                                  nn.Linear(16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def dropout_cnn(num_classes: int = 10) -> nn.Module:
    return DropoutCNN(num_classes)
