"""How a training run is stored in a checkpoint and continues from one (``--resume``).

The checkpoint dict's fields are listed in :mod:`gridcam.runtime.checkpoint`; this module fills
them from a :class:`~gridcam.training.run.Run` (:func:`save_run`), finds and checks the checkpoint
to resume (:func:`open_resume`), and puts the optimizer, schedule and seed back.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from gridcam import models
from gridcam.errors import GridcamError
from gridcam.runtime import distributed as du
from gridcam.runtime.checkpoint import find_latest, load, load_scheduler_state, save, scheduler_state, state_classes
from gridcam.runtime.rng import gather_rng
from gridcam.training.config import TrainConfig
from gridcam.training.run import Run

__all__ = ["is_transfer", "open_resume", "restore_training", "run_seed", "run_state", "save_run"]


def run_state(r: Run, epoch: int, step: int, rng: dict[str, Any],
              metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The checkpoint dict of run ``r`` after ``epoch`` epochs and ``step`` more steps (module doc)."""
    return {
        **r.meta,
        "epoch": epoch,
        "step": step,
        "state_dict": models.unwrap(r.model).state_dict(),
        "best_acc1": r.best if r.best != -math.inf else None,
        "optimizer": r.optimizer.state_dict(),
        "scheduler": scheduler_state(r.scheduler),
        "scaler": r.scaler.state_dict() if r.scaler is not None else None,
        "rng": rng,
        "args": r.c.plain(),
        "metrics": metrics,
    }


def save_run(r: Run, path: Path, epoch: int, step: int, metrics: dict[str, Any] | None) -> None:
    """Gather every rank's RNG state (a collective: all ranks call this), then rank 0 writes the
    checkpoint of ``r`` to ``path``."""
    rng = gather_rng()
    if r.info.is_main:
        save(run_state(r, epoch, step, rng, metrics), path)


def open_resume(c: TrainConfig, save_dir: Path, rank0: bool) -> tuple[str | None, dict[str, Any] | None]:
    """The checkpoint ``c.resume`` names (``"auto"``: :func:`find_latest` in ``save_dir``, agreed
    by all ranks) and its contents; ``(None, None)`` for a fresh run."""
    resume = c.resume
    if resume == "auto":
        found = find_latest(save_dir) if rank0 else None
        resume = du.broadcast_object(str(found) if found else None)  # type: ignore[assignment]
        if rank0:
            print(f"gridcam: --resume auto: {'continuing from ' + resume if resume else 'nothing to resume, starting fresh'}",
                  file=sys.stderr)
    if not resume:
        return None, None
    state = load(resume)
    if c.evaluate and "state_dict" not in state and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        state = {"state_dict": state, "epoch": 0}  # -e of a plain state dict (torchvision's weights)
    for key in ("state_dict", "epoch"):
        if key not in state:
            raise GridcamError(f"{resume}: not a gridcam/paper training checkpoint (no {key!r})")
    if state.get("arch") not in (None, c.arch):
        raise GridcamError(f"{resume} was trained with -a {state['arch']}, not -a {c.arch}")
    return resume, state


def is_transfer(c: TrainConfig, state: Mapping[str, Any], num_classes: int) -> bool:
    """Whether ``--resume`` of ``state`` is the paper's COCO initialisation: a COCO run (not
    ``-e``) resumed from a checkpoint with another class count (an ImageNet model)."""
    if c.dataset != "coco" or c.evaluate:
        return False
    n = state_classes(state)
    return n is not None and n != num_classes


def run_seed(c: TrainConfig, state: Mapping[str, Any] | None, rank0: bool) -> int:
    """The run seed: a resumed run keeps its own, else ``c.seed``, else one drawn once (the same
    on every rank)."""
    seed = c.seed
    if state is not None and state.get("seed") is not None and not c.evaluate:
        if seed is not None and seed != state["seed"] and rank0:
            warnings.warn(f"--seed {seed} ignored: resuming the run's own seed {state['seed']}", stacklevel=3)
        seed = int(state["seed"])
    if seed is None:
        seed = int(du.broadcast_object(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1)))
    return seed


def restore_training(state: Mapping[str, Any], c: TrainConfig, resume: str,
                     optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any) -> tuple[int, int, float]:
    """Put the optimizer, schedule and AMP scaler back as ``state`` saved them; returns
    ``(start_epoch, start_step, best)`` for the loop."""
    start_epoch = int(state["epoch"])
    start_step = int(state.get("step", 0))
    saved_batch = (state.get("args") or {}).get("batch_size")
    if start_step and saved_batch is not None and int(saved_batch) != c.batch_size:
        # the steps already done are counted in global batches of the interrupted run
        raise GridcamError(f"{resume} was written in the middle of an epoch with --batch-size "
                           f"{saved_batch}; resume it with the same global batch size")
    best = -math.inf if state.get("best_acc1") is None else float(state["best_acc1"])
    if state.get("scheduler"):
        if state.get("optimizer"):
            optimizer.load_state_dict(state["optimizer"])
        load_scheduler_state(scheduler, state["scheduler"])
    else:
        # The paper's checkpoints have no scheduler: replay it to the saved epoch on the fresh
        # optimizer, then keep the replayed learning rate over the one stored with the
        # optimizer state (replaying on top of that would decay it twice).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
            for _ in range(start_epoch):
                scheduler.step()
        lrs = [g["lr"] for g in optimizer.param_groups]
        if state.get("optimizer"):
            optimizer.load_state_dict(state["optimizer"])
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return start_epoch, start_step, best
