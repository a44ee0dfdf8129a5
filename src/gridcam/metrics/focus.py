"""Focus (Arias-Duart et al., "Focus! Rating XAI methods and finding biases", FUZZ-IEEE 2022).

A 2x2 mosaic holds two images of the target class and two without it; the explanation of the
target class on the mosaic should put its relevance on the first two. Focus is the share of the
positive relevance that falls in the target-class quadrants:
``sum(max(h, 0) in target cells) / sum(max(h, 0))``, in [0, 1] (0.5 for a map spread evenly).
The quadrants split the map at ``H // 2`` and ``W // 2`` (as Quantus does). Pure tensor code.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["focus"]


def focus(heat: Tensor, cells: Tensor) -> Tensor:
    """Focus of P mosaic heatmaps.

    Args:
        heat: (P,H,W) heatmaps of the mosaics (any sign; only positive relevance counts).
        cells: (P,2,2) bool, True for the quadrants [row, column] that show the target class.
    Returns:
        (P,) float64 shares in [0, 1]; NaN where a map has no positive relevance.
    """
    if heat.dim() != 3 or cells.shape != (heat.shape[0], 2, 2):
        raise ValueError(f"heat must be (P,H,W) and cells (P,2,2); got {tuple(heat.shape)} and "
                         f"{tuple(cells.shape)}")
    P, H, W = heat.shape
    pos = heat.detach().double().clamp(min=0)
    rows = (torch.arange(H, device=heat.device) >= H // 2).long()  # 0 top half, 1 bottom half
    cols = (torch.arange(W, device=heat.device) >= W // 2).long()
    inside = cells.to(heat.device)[:, rows][:, :, cols]  # (P,H,W): the pixel's cell is a target
    total = pos.sum(dim=(1, 2))
    target = torch.where(inside, pos, 0.0).sum(dim=(1, 2))
    return torch.where(total > 0, target / total.clamp(min=torch.finfo(torch.float64).tiny),
                       torch.full_like(total, float("nan")))
