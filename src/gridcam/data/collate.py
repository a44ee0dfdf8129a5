"""Collate functions that drop unreadable items and count them.

A dataset's ``ds[i]`` is ``None`` for an item it cannot read (after reporting the problem) and its
``ds.load(i)`` is the :class:`~gridcam.problems.Problem` itself; the collate functions remove
either and say how many they removed (``collate_loc`` also keeps the Problems, so they cross the
worker-process boundary inside the batch and the main process can report and count them once).
"""

from __future__ import annotations

import torch

from gridcam.problems import Problem


def _unusable(item) -> bool:
    return item is None or isinstance(item, Problem)


def load_item(dataset, index: int):
    """Item ``index`` of ``dataset`` or the :class:`~gridcam.problems.Problem` that prevents it,
    without reporting anything (the caller reports in the main process): ``dataset.load(index)``
    when the dataset has it (every gridcam reader), through ``Subset``; else ``dataset[index]``,
    a ``None`` becoming an ``unreadable`` Problem named ``#index``."""
    base, i = dataset, int(index)
    while isinstance(base, torch.utils.data.Subset):
        base, i = base.dataset, int(base.indices[i])
    load = getattr(base, "load", None)
    if callable(load):
        return load(i)
    item = base[i]
    if item is None:
        return Problem("unreadable", f"#{i}", "the dataset could not give this item")
    return item


def _stack_targets(targets: list) -> torch.Tensor:
    if not targets:
        return torch.zeros(0, dtype=torch.long)
    if isinstance(targets[0], torch.Tensor) and targets[0].dim() > 0:
        return torch.stack(targets).float()
    return torch.as_tensor([int(t) for t in targets], dtype=torch.long)


def collate_skip(batch: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``[(image (3,h,w), target) | None | Problem] -> (images (B,3,h,w), targets, n_skipped)``.

    ``targets`` is (B,) long for int labels or (B,C) float for multi-hot ones. If every item is
    ``None`` the result has B = 0: images (0,3,0,0), targets (0,) long.
    """
    kept = [b for b in batch if not _unusable(b)]
    n_skipped = len(batch) - len(kept)
    if not kept:
        return torch.zeros(0, 3, 0, 0), torch.zeros(0, dtype=torch.long), n_skipped
    images = torch.stack([b[0] for b in kept])
    return images, _stack_targets([b[1] for b in kept]), n_skipped


class LocBatch(list):
    """A list of LocItems that also carries ``n_skipped`` (items that were ``None`` or a Problem)
    and ``problems`` (those Problems)."""

    def __init__(self, items=(), n_skipped: int = 0, problems: list | None = None):
        super().__init__(items)
        self.n_skipped = n_skipped
        self.problems = list(problems or [])

    def __reduce__(self):  # keep the counts across the worker -> main process pickling
        return (LocBatch, (list(self), self.n_skipped, self.problems))


def collate_loc(items: list) -> LocBatch:
    """Localisation items are not stacked (sizes differ; the evaluator batches by size): the
    usable items as a list, with ``.n_skipped`` = how many were ``None`` or a Problem and
    ``.problems`` the Problems."""
    kept = [it for it in items if not _unusable(it)]
    return LocBatch(kept, len(items) - len(kept), [it for it in items if isinstance(it, Problem)])


__all__ = ["collate_skip", "collate_loc", "LocBatch", "load_item"]
