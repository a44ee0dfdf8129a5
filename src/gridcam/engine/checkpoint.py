"""Training checkpoints: the files (atomic writes, safe reads), what a run stores in them and how a
run continues from one (``--resume``).

A checkpoint is a dict (DESIGN.md, "Recipes") readable with ``torch.load(weights_only=True)``,
i.e. only tensors and plain containers/numbers/strings, so loading one never runs code:

``epoch``        epochs completed (``checkpoint_001.pth.tar`` holds ``epoch = 1``, as the paper's
                 scripts name them); for a mid-epoch ``last.pth.tar`` the epoch in progress
``step``         batches already done in that epoch (0 for end-of-epoch checkpoints)
``arch``, ``num_classes``, ``pooling``, ``state_dict`` (no ``module.`` prefix)
``best_acc1``    best validation score so far (ImageNet top-1 %, COCO overall F1 %)
``optimizer``, ``scheduler``, ``scaler`` (None without fp16 AMP)
``rng``          ``{"world_size": W, "ranks": [state of rank 0, ...]}``, each state
                 ``{"torch", "cuda", "numpy", "python"}`` (see :mod:`gridcam.engine.rng`)
``args``         the training configuration as plain types; ``seed``; ``dataset``; ``classes``
``metrics``      the last validation metrics

Files: ``checkpoint_{epoch:03d}.pth.tar`` after each epoch (numbered by epochs completed, 001
first, as the paper's scripts), ``model_best.pth.tar`` (copy of the best one), ``last.pth.tar`` written when a run is
interrupted (SIGTERM/SIGINT) so it can be resumed. Every write goes to a temporary file in the same
directory, is flushed to disk, then renamed over the target (``os.replace`` is atomic), so a crash
or a kill never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterator, Mapping

import torch

from gridcam import models
from gridcam.engine import distributed as du
from gridcam.engine.rng import gather_rng
from gridcam.errors import GridcamError
from gridcam.models.checkpoint import safe_load

if TYPE_CHECKING:
    from gridcam.engine.train_config import TrainConfig
    from gridcam.engine.train_setup import Run

__all__ = [
    "BEST_NAME",
    "LAST_NAME",
    "checkpoint_name",
    "copy_atomic",
    "find_latest",
    "is_transfer",
    "load",
    "save",
    "scheduler_state",
    "state_classes",
    "load_scheduler_state",
    "open_resume",
    "restore_training",
    "run_seed",
    "run_state",
    "save_run",
]

BEST_NAME = "model_best.pth.tar"
LAST_NAME = "last.pth.tar"


def checkpoint_name(epoch: int) -> str:
    """File name of the checkpoint written once ``epoch`` epochs are complete (1 -> 001)."""
    return f"checkpoint_{epoch:03d}.pth.tar"


def _fsync_dir(directory: Path) -> None:
    # Make the rename itself durable; not every platform lets a directory be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without changing it where /proc says it (Linux), else set and
    put back at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path`` for writing; on success fsync it and rename it onto
    ``path`` (``os.replace``), so a reader or a crash never sees half a file. On failure the temp
    file is removed and ``path`` is untouched. The file gets the mode a plain ``open()`` would
    give it (0666 less the umask), not mkstemp's 0600, so shared directories work."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the mode open() would: 0666 less the umask.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


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


# ------------------------------------------------------------------------- a run's state
def run_state(r: "Run", epoch: int, step: int, rng: dict[str, Any],
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


def save_run(r: "Run", path: Path, epoch: int, step: int, metrics: dict[str, Any] | None) -> None:
    """Gather every rank's RNG state (a collective: all ranks call this), then rank 0 writes the
    checkpoint of ``r`` to ``path``."""
    rng = gather_rng()
    if r.info.is_main:
        save(run_state(r, epoch, step, rng, metrics), path)


def open_resume(c: "TrainConfig", save_dir: Path, rank0: bool) -> tuple[str | None, dict[str, Any] | None]:
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


def state_classes(state: Mapping[str, Any]) -> int | None:
    """The class count of a checkpoint dict: its ``num_classes``, else its classifier's rows."""
    if state.get("num_classes") is not None:
        return int(state["num_classes"])
    tensors = {k: v for k, v in state["state_dict"].items() if isinstance(v, torch.Tensor)}
    try:
        return models.checkpoint_num_classes(tensors)
    except GridcamError:
        return None


def is_transfer(c: "TrainConfig", state: Mapping[str, Any], num_classes: int) -> bool:
    """Whether ``--resume`` of ``state`` is the paper's COCO initialisation: a COCO run (not
    ``-e``) resumed from a checkpoint with another class count (an ImageNet model)."""
    if c.dataset != "coco" or c.evaluate:
        return False
    n = state_classes(state)
    return n is not None and n != num_classes


def run_seed(c: "TrainConfig", state: Mapping[str, Any] | None, rank0: bool) -> int:
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


def restore_training(state: Mapping[str, Any], c: "TrainConfig", resume: str,
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
