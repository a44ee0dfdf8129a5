"""Running a study's trainings side by side: one process per CPU core, each on one thread.

A study is a set of *units*: per seed and pooling (average or max), the shared plain pre-training
of that pooling followed by its rows (Baseline and Ours: GC, or GMP and Ours: GMP + GC), each row
trained and then scored. Units do not share anything but the (already written) data, so they run
in any order and in separate processes; every training pins one intra-op thread and seeds itself,
so a unit's numbers do not depend on which process ran it, or beside what (checked by
``tests/test_study.py``). On a GPU the units run one after the other in this process.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

__all__ = ["Unit", "default_jobs", "make_units", "run_units"]


@dataclass(frozen=True)
class Unit:
    """The rows of one seed that share a pre-training (same pooling), in training order."""

    seed: int
    rows: tuple[Any, ...]  # gridcam.study.runner.Row


def make_units(rows: Sequence[Any], seeds: int) -> list[Unit]:
    """Seed-major list of units: per seed, the average-pooling rows, then the max-pooling ones."""
    out = []
    for seed in range(seeds):
        for gmp in (False, True):
            mine = tuple(r for r in rows if r.gmp == gmp)
            if mine:
                out.append(Unit(seed, mine))
    return out


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_jobs(on_cpu: bool, units: int) -> int:
    """One process per core on a CPU (at most one per unit); one on a GPU."""
    return max(1, min(cpu_cores(), units)) if on_cpu else 1


def _one_thread_unit(fn: Callable[..., list[dict[str, Any]]], *args: Any) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    return fn(*args)


def run_units(fn: Callable[..., list[dict[str, Any]]], units: Sequence[Unit], jobs: int,
              args: tuple) -> list[list[dict[str, Any]]]:
    """``fn(unit, *args)`` for every unit -> its records, in the order of ``units``; with
    ``jobs`` > 1 in that many fresh processes (spawned: no state of this one is inherited), each
    on one thread. ``fn`` must be importable (a module-level function)."""
    if jobs <= 1 or len(units) <= 1:
        return [fn(u, *args) for u in units]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_one_thread_unit, fn, u, *args) for u in units]
        return [f.result() for f in futures]




def machine(on_cpu: bool, jobs: int) -> dict[str, Any]:
    """What ran a study, for its results file: CPU model (``lscpu``'s "Model name"), cores,
    torch version, the GPU's name when one was used, and the processes."""
    cpu = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": cpu_cores(), "torch": torch.__version__, "jobs": jobs}
    if not on_cpu and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(0)
    return info
