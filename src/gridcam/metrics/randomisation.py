"""The model randomisation test (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018):
the rank correlation between a method's heatmap on the trained model and on the same model with
its top re-initialised. A method that explains the model should change when the model does, so a
LOW correlation is good; a method whose maps survive the randomisation (edge detectors, input
magnitude) shows the input more than the model.

:func:`spearman` is Spearman's rho of each pair of maps: Pearson's correlation of their ranks,
tied values getting the average of their ranks (as ``scipy.stats.spearmanr``). Pure tensor code.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["average_ranks", "spearman"]


def average_ranks(x: Tensor) -> Tensor:
    """(P,N) values -> (P,N) float64 ranks 1..N within each row, ties averaged."""
    P, N = x.shape
    s, order = torch.sort(x, dim=1, stable=True)
    pos = torch.arange(N, device=x.device).expand(P, N)
    first = torch.ones_like(s, dtype=torch.bool)  # a run of equal values starts here
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    last = torch.ones_like(first)  # ... ends here
    last[:, :-1] = first[:, 1:]
    start = torch.where(first, pos, 0).cummax(dim=1).values
    end = torch.where(last, pos, N).flip(1).cummin(dim=1).values.flip(1)
    ranks = torch.empty((P, N), dtype=torch.float64, device=x.device)
    ranks.scatter_(1, order, (start + end).double() / 2 + 1)
    return ranks


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rho of P pairs of maps.

    Args:
        a, b: (P,...) maps of equal shape (flattened per pair).
    Returns:
        (P,) float64 in [-1, 1]; NaN where a map is constant (no ranks to correlate).
    """
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(f"a and b must be (P,...) of equal shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    ra = average_ranks(a.detach().reshape(a.shape[0], -1))
    rb = average_ranks(b.detach().reshape(b.shape[0], -1))
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    den = torch.sqrt((ra * ra).sum(dim=1) * (rb * rb).sum(dim=1))
    rho = (ra * rb).sum(dim=1) / den.clamp(min=torch.finfo(torch.float64).tiny)
    return torch.where(den > 0, rho.clamp(-1.0, 1.0), torch.full_like(den, float("nan")))
