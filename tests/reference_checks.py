"""Helpers shared by the tests that compare gridcam with other libraries (Captum, TorchRay,
pytorch-grad-cam)."""

from __future__ import annotations

import torch
from torch import nn


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """``ours`` equals the non-zero ``theirs`` to 1e-5, relative to ``theirs``' largest value."""
    assert ours.shape == theirs.shape and theirs.abs().sum() > 0
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))


def randomize_batch_norm(model: nn.Module, seed: int) -> nn.Module:
    """Draw every BatchNorm's statistics and affine parameters at random (in place), so that the
    normalisation is not the identity of a freshly initialised network (timm's ResNets even start
    with a zero scale at the end of each residual branch); returns ``model``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for tensor, lo, hi in ((m.running_mean, -0.3, 0.3), (m.running_var, 0.5, 1.5),
                                       (m.weight, 0.5, 1.5), (m.bias, -0.2, 0.3)):
                    tensor.copy_(torch.rand(tensor.shape, generator=gen) * (hi - lo) + lo)
    return model


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each pair of maps: (..., h, w) x (..., h, w) -> (...)."""
    a = a.flatten(-2).double()
    b = b.flatten(-2).double()
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
