"""Checkpoint files: their names, atomic writes, safe reads, and the dict a training run stores.

What a run puts in the dict and how it continues from one (``--resume``) is
:mod:`gridcam.training.resume`; the atomic write itself is :func:`gridcam.runtime.files.atomic_file`.

A checkpoint is a dict (DESIGN.md, "Recipes") readable with ``torch.load(weights_only=True)``,
i.e. only tensors and plain containers/numbers/strings, so loading one never runs code:

``epoch``        epochs completed (``checkpoint_001.pth.tar`` holds ``epoch = 1``, as the paper's
                 scripts name them); for a mid-epoch ``last.pth.tar`` the epoch in progress
``step``         batches already done in that epoch (0 for end-of-epoch checkpoints)
``arch``, ``num_classes``, ``pooling``, ``state_dict`` (no ``module.`` prefix)
``best_acc1``    best validation score so far (ImageNet top-1 %, COCO overall F1 %)
``optimizer``, ``scheduler``, ``scaler`` (None without fp16 AMP)
``rng``          ``{"world_size": W, "ranks": [state of rank 0, ...]}``, each state
                 ``{"torch", "cuda", "numpy", "python"}`` (see :mod:`gridcam.runtime.rng`)
``args``         the training configuration as plain types; ``seed``; ``dataset``; ``classes``
``metrics``      the last validation metrics

Files: ``checkpoint_{epoch:03d}.pth.tar`` after each epoch (numbered by epochs completed, 001
first, as the paper's scripts), ``model_best.pth.tar`` (copy of the best one), ``last.pth.tar`` written when a run is
interrupted (SIGTERM/SIGINT) so it can be resumed. Every write goes to a temporary file in the same
directory, is flushed to disk, then renamed over the target (``os.replace`` is atomic), so a crash
or a kill never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import torch

from gridcam import models
from gridcam.errors import GridcamError
from gridcam.models.checkpoint import safe_load
from gridcam.runtime.files import atomic_file

__all__ = [
    "atomic_file",
    "BEST_NAME",
    "LAST_NAME",
    "checkpoint_name",
    "copy_atomic",
    "find_latest",
    "load",
    "save",
    "scheduler_state",
    "state_classes",
    "load_scheduler_state",
]

BEST_NAME = "model_best.pth.tar"
LAST_NAME = "last.pth.tar"


def checkpoint_name(epoch: int) -> str:
    """File name of the checkpoint written once ``epoch`` epochs are complete (1 -> 001)."""
    return f"checkpoint_{epoch:03d}.pth.tar"


def save(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``state`` with ``torch.save`` atomically (see :func:`atomic_file`); returns the path."""
    with atomic_file(path) as f:
        torch.save(dict(state), f)
    return Path(path)


def copy_atomic(src: str | Path, dst: str | Path) -> Path:
    """Copy a file atomically (for ``model_best.pth.tar``)."""
    with open(src, "rb") as fin, atomic_file(dst) as fout:
        shutil.copyfileobj(fin, fout)
    return Path(dst)


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` onto the CPU.

    Raises:
        GridcamError: the file is missing, truncated, not a checkpoint dict, or holds pickled
            objects (refused without running them).
    """
    path = Path(path)
    obj = safe_load(path)
    if not isinstance(obj, dict):
        raise GridcamError(f"checkpoint {path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def find_latest(save_dir: str | Path) -> Path | None:
    """The checkpoint in ``save_dir`` that is furthest along (for ``--resume auto``).

    Compares ``(epoch, step)`` of ``last.pth.tar`` and the highest ``checkpoint_NNN.pth.tar``;
    None when there is neither.
    """
    save_dir = Path(save_dir)
    candidates: list[tuple[tuple[int, int], Path]] = []
    numbered = sorted(save_dir.glob("checkpoint_[0-9][0-9][0-9]*.pth.tar"))
    if numbered:
        latest = max(numbered, key=lambda p: int(p.name[len("checkpoint_"):-len(".pth.tar")]))
        index = int(latest.name[len("checkpoint_"):-len(".pth.tar")])
        candidates.append(((index, 0), latest))
    last = save_dir / LAST_NAME
    if last.is_file():
        meta = load(last)
        candidates.append(((int(meta.get("epoch", 0)), int(meta.get("step", 0))), last))
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[0])[1]


# ------------------------------------------------------------------------ scheduler state
def scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """``scheduler.state_dict()`` with ``collections.Counter`` (MultiStepLR's milestones) turned
    into a plain dict, so it loads with ``weights_only=True`` on every supported torch."""
    sd = dict(scheduler.state_dict())
    for key, value in list(sd.items()):
        if isinstance(value, Counter):
            sd[key] = {int(k): int(v) for k, v in value.items()}
    return sd


def load_scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler,
                         state: Mapping[str, Any]) -> None:
    """Inverse of :func:`scheduler_state`."""
    sd = dict(state)
    if isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR) and isinstance(sd.get("milestones"), dict):
        sd["milestones"] = Counter({int(k): int(v) for k, v in sd["milestones"].items()})
    scheduler.load_state_dict(sd)


def state_classes(state: Mapping[str, Any]) -> int | None:
    """The class count of a checkpoint dict: its ``num_classes``, else its classifier's rows."""
    if state.get("num_classes") is not None:
        return int(state["num_classes"])
    tensors = {k: v for k, v in state["state_dict"].items() if isinstance(v, torch.Tensor)}
    try:
        return models.checkpoint_num_classes(tensors)
    except GridcamError:
        return None
