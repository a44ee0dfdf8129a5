"""One training run, set up: what the loop, an epoch, the checkpoint writer and validation read.

:func:`gridcam.training.setup.set_up` builds it; it sits below both the setup and the checkpoint
code (:mod:`gridcam.training.resume`), which both need the type.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gridcam.runtime import distributed as du
from gridcam.training.config import TrainConfig
from gridcam.training.data import Datasets, Loaders

__all__ = ["Run"]


@dataclass
class Run:
    """A training run, set up. ``model`` is the bare module (checkpoints, validation, CAM layer);
    ``net`` is what the steps call (DDP-wrapped under ``torchrun``). The loop updates ``best``
    (best validation score so far, -inf before any) and ``last_saved`` (the last checkpoint
    written or resumed from). ``state``: the resumed checkpoint, None for a fresh run."""

    c: TrainConfig
    info: du.DistInfo
    save_dir: Path
    per_rank: int
    seed: int
    resume: str | None
    state: dict[str, Any] | None
    ds: Datasets
    loaders: Loaders
    model: nn.Module
    net: nn.Module
    layer: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: Any
    autocast: Callable[[], Any]
    meta: dict[str, Any]
    start_epoch: int = 0
    start_step: int = 0
    best: float = -math.inf
    last_saved: Path | None = None

    @property
    def multi_label(self) -> bool:
        return self.ds.multi_label

    @property
    def grid_batches(self) -> bool:
        """Batches carry loader-side negatives (``--negatives dataset`` with λ > 0)."""
        return self.c.negatives == "dataset" and self.c.lam > 0
