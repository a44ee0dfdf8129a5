"""Every random number of a training run, from one run seed.

* :func:`derive_seed` turns the run seed and a purpose tuple (``"item", epoch, index``;
  ``"step", epoch, step, rank``; ...) into a stable 63-bit seed, so each random choice is fixed
  by what it is for, not by the order in which things happen to run;
* :func:`seed_globals` seeds torch/random/numpy at the start of each epoch of each rank;
* :func:`rng_state` / :func:`set_rng_state` turn one process's generator states into plain
  tensors and lists (``torch.load(weights_only=True)``-loadable) and back;
* :func:`gather_rng` / :func:`restore_rng` do that for every rank, for checkpoints written or
  resumed in the middle of an epoch.
"""

from __future__ import annotations

import hashlib
import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from gridcam.runtime import distributed as du
from gridcam.errors import GridcamError

__all__ = ["derive_seed", "gather_rng", "restore_rng", "rng_state", "seed_globals", "set_rng_state"]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the run seed and a purpose/epoch/index tuple (stable across runs and
    platforms, unlike ``hash()``)."""
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def seed_globals(seed: int, epoch: int, rank: int) -> None:
    """Seed torch's, Python's and numpy's global generators for ``epoch`` on ``rank``."""
    s = derive_seed(seed, "global", epoch, rank)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % (2**32))


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


def gather_rng() -> dict[str, Any]:
    """Every rank's :func:`rng_state` (a collective: all ranks call it), as stored in checkpoints:
    ``{"world_size": W, "ranks": [state of rank 0, ...]}``."""
    states = du.all_gather_object(rng_state())
    return {"world_size": len(states), "ranks": states}


def restore_rng(saved: Mapping[str, Any] | None, info: du.DistInfo) -> None:
    """Put this rank's generators back as :func:`gather_rng` saved them; nothing when there is no
    saved state. Written with another world size: nothing either, said in one warning (the run
    goes on, but not bit-exactly). A state list shorter than its world size is a damaged
    checkpoint: GridcamError."""
    if not saved:
        return
    world = int(saved.get("world_size", 0))
    if world != info.world_size:
        if info.is_main:
            warnings.warn(f"the checkpoint's random states were saved by {world} process(es) and this "
                          f"run has {info.world_size}: the resume goes on, but not bit-exactly",
                          stacklevel=2)
        return
    ranks = saved.get("ranks") or []
    if len(ranks) != world:
        raise GridcamError(f"the checkpoint's random states are damaged: {len(ranks)} rank state(s) "
                           f"for a world size of {world}")
    set_rng_state(ranks[info.rank])
