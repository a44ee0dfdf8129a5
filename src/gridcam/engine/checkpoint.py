"""Training checkpoint files: atomic writes, safe reads, RNG state as plain tensors/lists.

A checkpoint is a dict (DESIGN.md, "Recipes") readable with ``torch.load(weights_only=True)``,
i.e. only tensors and plain containers/numbers/strings, so loading one never runs code:

``epoch``        epochs completed (``checkpoint_001.pth.tar`` holds ``epoch = 1``, as the paper's
                 scripts name them); for a mid-epoch ``last.pth.tar`` the epoch in progress
``step``         batches already done in that epoch (0 for end-of-epoch checkpoints)
``arch``, ``num_classes``, ``pooling``, ``state_dict`` (no ``module.`` prefix)
``best_acc1``    best validation score so far (ImageNet top-1 %, COCO overall F1 %)
``optimizer``, ``scheduler``, ``scaler`` (None without fp16 AMP)
``rng``          ``{"world_size": W, "ranks": [state of rank 0, ...]}``, each state
                 ``{"torch", "cuda", "numpy", "python"}`` (see :func:`rng_state`)
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
import os
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

import numpy as np
import torch

from gridcam.errors import GridcamError
from gridcam.models.checkpoint import safe_load

__all__ = [
    "BEST_NAME",
    "LAST_NAME",
    "checkpoint_name",
    "copy_atomic",
    "find_latest",
    "load",
    "rng_state",
    "save",
    "scheduler_state",
    "load_scheduler_state",
    "set_rng_state",
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


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path`` for writing; on success fsync it and rename it onto
    ``path`` (``os.replace``), so a reader or a crash never sees half a file. On failure the temp
    file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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


# ------------------------------------------------------------------------------ RNG states
def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain lists (``weights_only``-loadable).

    ``torch``: CPU generator (uint8 tensor); ``cuda``: the current CUDA device's generator or
    None; ``numpy``: the legacy global MT19937 state; ``python``: ``random.getstate()`` as lists.
    """
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": [int(py_version), [int(v) for v in py_state], py_gauss],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (entries that are absent or None are skipped)."""
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"].to(torch.uint8))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8))
    npst = state.get("numpy")
    if npst is not None:
        np.random.set_state((
            npst["name"],
            npst["keys"].numpy().astype(np.uint32),
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["cached_gaussian"]),
        ))
    py = state.get("python")
    if py is not None:
        random.setstate((int(py[0]), tuple(int(v) for v in py[1]), py[2]))


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
