"""Integrated gradients: a path-integral attribution method.

Returns ``(heatmaps (B,T,H,W), logits (B,C))`` like every method of :mod:`gridcam.cam`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .gradcam import _as_2d_targets
from .saliency import _input_gradients

__all__ = ["explain_integrated_gradients", "gauss_legendre"]


def gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``alpha`` in (0,1) and weights (summing to 1) of the ``steps``-point Gauss-Legendre
    rule on [0,1] (Captum's default quadrature for integrated gradients)."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    return 0.5 * (nodes + 1.0), 0.5 * weights


def explain_integrated_gradients(
    model: nn.Module,
    layer: nn.Module | None,
    images: Tensor,
    targets: Tensor,
    *,
    steps: int = 50,
    baseline: float = 0.0,
    chunk: int = 32,
) -> tuple[Tensor, Tensor]:
    """Integrated gradients (Sundararajan et al., "Axiomatic Attribution for Deep Networks", ICML 2017).

    Formula: ``IG = (x - x0) * int_0^1 d logit_t / d x (x0 + a (x - x0)) da``, the integral by
    ``steps``-point Gauss-Legendre quadrature (Captum's default); map ``sum_channels |IG|`` (as
    input x gradient, which is IG with one step at a=1 and a zero baseline).

    Args:
        steps: quadrature points (>= 1); default 50 as Captum.
        baseline: the constant image x0 (0.0: the dataset's mean colour for normalised inputs,
            Captum's default baseline).
        chunk: images per forward (the memory budget): ``max(1, chunk // B)`` path points of
            the B images go through the model at once.
    Returns:
        heatmaps (B,T,H,W) float32 >= 0, logits (B,C) of the images.
    Cost: ``steps`` forwards and backwards per image, +1 forward for the logits.
    ``layer`` is not used.
    """
    if steps < 1 or chunk < 1:
        raise ValueError(f"integrated gradients needs steps >= 1 and chunk >= 1, got {steps}, {chunk}")
    targets = _as_2d_targets(targets, images)
    x = images.detach()
    B = x.shape[0]
    x0 = torch.full_like(x, float(baseline))
    alphas, weights = gauss_legendre(steps)
    with torch.no_grad():
        logits = model(x)
    total = torch.zeros((B, targets.shape[1], *x.shape[1:]), dtype=torch.float32, device=x.device)
    view = (-1, 1, *([1] * (x.dim() - 1)))
    per = max(1, chunk // B)
    for start in range(0, steps, per):
        a = torch.as_tensor(alphas[start:start + per], dtype=x.dtype, device=x.device).view(view)
        w = torch.as_tensor(weights[start:start + per], dtype=torch.float32, device=x.device).view(view)
        k = a.shape[0]
        path = (x0[None] + a * (x - x0)[None]).flatten(0, 1)  # (k*B,3,H,W)
        grads, _, _ = _input_gradients(model, path, targets.repeat(k, 1))
        total += (grads.unflatten(0, (k, B)) * w[..., None]).sum(dim=0)  # weights over (k,1,1,...)
    ig = (x - x0).float()[:, None] * total
    return ig.abs().sum(dim=2), logits.detach()
