"""Collate functions that drop unreadable items (``None``) and count them.

A dataset returns ``None`` for an item it cannot read (after a warning that names the file); the
collate function removes it and reports how many it removed, so the training/evaluation loop can
sum the count over the run and report it at the end — the number crosses the worker-process
boundary inside the batch.
"""

from __future__ import annotations

import torch


def _stack_targets(targets: list) -> torch.Tensor:
    if not targets:
        return torch.zeros(0, dtype=torch.long)
    if isinstance(targets[0], torch.Tensor) and targets[0].dim() > 0:
        return torch.stack(targets).float()
    return torch.as_tensor([int(t) for t in targets], dtype=torch.long)


def collate_skip(batch: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``[(image (3,h,w), target) | None] -> (images (B,3,h,w), targets, n_skipped)``.

    ``targets`` is (B,) long for int labels or (B,C) float for multi-hot ones. If every item is
    ``None`` the result has B = 0: images (0,3,0,0), targets (0,) long.
    """
    kept = [b for b in batch if b is not None]
    n_skipped = len(batch) - len(kept)
    if not kept:
        return torch.zeros(0, 3, 0, 0), torch.zeros(0, dtype=torch.long), n_skipped
    images = torch.stack([b[0] for b in kept])
    return images, _stack_targets([b[1] for b in kept]), n_skipped


class LocBatch(list):
    """A list of LocItems that also carries ``n_skipped`` (items that were ``None``)."""

    def __init__(self, items=(), n_skipped: int = 0):
        super().__init__(items)
        self.n_skipped = n_skipped

    def __reduce__(self):  # keep n_skipped across the worker -> main process pickling
        return (LocBatch, (list(self), self.n_skipped))


def collate_loc(items: list) -> LocBatch:
    """Localisation items are not stacked (sizes differ; the evaluator batches by size): the
    non-``None`` items as a list, with ``.n_skipped`` = how many were ``None``."""
    kept = [it for it in items if it is not None]
    return LocBatch(kept, len(items) - len(kept))


__all__ = ["collate_skip", "collate_loc", "LocBatch"]
