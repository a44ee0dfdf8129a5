"""Running a study's trainings side by side: one process per CPU core, each on one thread.

A study is a set of *units*. With a shared pre-training: per seed one unit trains the plain start
(average pooling), and per seed and pooling one unit trains its rows from it (Baseline and Ours:
GC, or GMP and Ours: GMP + GC), each row trained and then scored; a rows unit waits for its
seed's start. Without one: per seed and pooling, the rows from scratch. Units share nothing but
files already written (the data, a finished start), so they run in separate processes; every
training pins one intra-op thread and seeds itself, so a unit's numbers do not depend on which
process ran it, or beside what (checked by ``tests/test_study.py``). On a GPU the units run one
after the other in this process.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from gridcam.errors import GridcamError

__all__ = ["KERNEL_CAPS", "Unit", "cpuinfo", "default_jobs", "kernels", "machine", "make_units", "next_ready",
           "run_units"]


@dataclass(frozen=True)
class Unit:
    """The rows of one seed that share a start (same pooling), in training order; a unit without
    rows trains the seed's shared start only. ``after``: indices of the units it waits for."""

    seed: int
    rows: tuple[Any, ...]  # gridcam.study.runner.Row
    after: tuple[int, ...] = ()
    workers: int | None = None  # loader processes of its trainings; None: the study's


def make_units(rows: Sequence[Any], seeds: int, shared_start: bool = False) -> list[Unit]:
    """The units in an order that runs them one after the other: with ``shared_start`` every
    seed's start first, then per seed the average-pooling rows and the max-pooling ones, each
    after its seed's start; without, only the rows units, seed-major."""
    starts = [Unit(seed, ()) for seed in range(seeds)] if shared_start else []
    out = list(starts)
    for seed in range(seeds):
        for gmp in (False, True):
            mine = tuple(r for r in rows if r.gmp == gmp)
            if mine:
                out.append(Unit(seed, mine, (seed,) if shared_start else ()))
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


def run_units(fn: Callable[..., list[dict[str, Any]]], units: Sequence[Unit], jobs: int,
              args: tuple) -> list[list[dict[str, Any]]]:
    """``fn(unit, *args)`` for every unit -> its records, in the order of ``units``.

    With ``jobs`` > 1 each unit runs in a fresh interpreter (``python -m gridcam.study.schedule``,
    at most ``jobs`` at a time, one thread each): nothing of this process is inherited, and the
    caller's own script is not re-imported (as ``multiprocessing``'s spawn would do, which breaks
    a script without an ``if __name__ == "__main__"`` guard). ``fn`` must be a module-level
    function of a gridcam module and ``args`` made of dataclasses, paths, tuples, lists, dicts and
    plain values (handed over as JSON, see :func:`_encode`). A unit that fails stops the study with
    one line naming it.
    """
    if jobs <= 1 or len(units) <= 1:
        return [fn(u, *args) for u in units]
    with tempfile.TemporaryDirectory(prefix="gridcam-units-") as tmp:
        pending = list(enumerate(units))
        running: list[tuple[int, subprocess.Popen, Path]] = []
        results: dict[int, list[dict[str, Any]]] = {}
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        try:
            while pending or running:
                while len(running) < jobs:
                    k = next_ready(pending, results)
                    if k is None:
                        break
                    i, unit = pending.pop(k)
                    job = Path(tmp) / f"unit{i}.json"
                    job.write_text(json.dumps(_encode([fn, unit, list(args)])))
                    proc = subprocess.Popen([sys.executable, "-m", "gridcam.study.schedule", str(job)], env=env)
                    running.append((i, proc, job))
                if not running:
                    raise GridcamError("study units wait for units that never run (a unit's `after` "
                                       "names no earlier unit)")
                i, proc, job = _first_done(running)
                if proc.returncode != 0:
                    what = ", ".join(r.name for r in units[i].rows) or "shared start"
                    raise GridcamError(f"study unit seed {units[i].seed} ({what}) "
                                       f"failed (exit {proc.returncode}; its error is printed above)")
                results[i] = json.loads(job.with_suffix(".out").read_text())
        finally:
            for _, proc, _ in running:
                proc.kill()
        return [results[i] for i in range(len(units))]


def next_ready(pending: Sequence[tuple[int, Unit]], done: Any) -> int | None:
    """Position in ``pending`` (``(index, unit)`` pairs) of the first unit whose ``after`` units
    are all in ``done``; None when every pending unit still waits."""
    return next((k for k, (_, u) in enumerate(pending) if all(j in done for j in u.after)), None)


def _first_done(running: list[tuple[int, subprocess.Popen, Path]]) -> tuple[int, subprocess.Popen, Path]:
    """Wait until one of the ``running`` processes exits; remove it from the list and return it."""
    while True:
        for k, (_, proc, _) in enumerate(running):
            if proc.poll() is not None:
                return running.pop(k)
        time.sleep(0.2)


def _encode(obj: Any) -> Any:
    """A unit's function and arguments as JSON: gridcam's module-level functions and dataclasses
    by name, paths and tuples tagged; everything else must already be plain JSON."""
    if callable(obj) and not isinstance(obj, type) and not is_dataclass(obj):
        return {"__call__": f"{obj.__module__}:{obj.__qualname__}"}
    if is_dataclass(obj) and not isinstance(obj, type):
        return {"__dataclass__": f"{type(obj).__module__}:{type(obj).__qualname__}",
                "fields": {f.name: _encode(getattr(obj, f.name)) for f in fields(obj)}}
    if isinstance(obj, Path):
        return {"__path__": str(obj)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(x) for x in obj]}
    if isinstance(obj, list):
        return [_encode(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    return obj


def _named(spec: str) -> Any:
    """The gridcam object ``module:name`` (nothing outside gridcam is ever imported)."""
    module, _, name = spec.partition(":")
    if module != "gridcam" and not module.startswith("gridcam."):
        raise GridcamError(f"a study unit names {spec!r}, which is not part of gridcam")
    return getattr(importlib.import_module(module), name)


def _decode(obj: Any) -> Any:
    """Inverse of :func:`_encode`."""
    if isinstance(obj, list):
        return [_decode(x) for x in obj]
    if not isinstance(obj, dict):
        return obj
    if "__call__" in obj:
        return _named(obj["__call__"])
    if "__dataclass__" in obj:
        return _named(obj["__dataclass__"])(**{k: _decode(v) for k, v in obj["fields"].items()})
    if "__path__" in obj:
        return Path(obj["__path__"])
    if "__tuple__" in obj:
        return tuple(_decode(x) for x in obj["__tuple__"])
    return {k: _decode(v) for k, v in obj.items()}


def _worker(job: str) -> int:
    """Run one unit written by :func:`run_units` (a file this process's parent made, never a
    user file) and write its records beside it; a GridcamError is one line, exit 2."""
    from gridcam import problems

    torch.set_num_threads(1)
    fn, unit, args = _decode(json.loads(Path(job).read_text()))
    try:
        with problems.plain_warnings():
            records = fn(unit, *args)
    except GridcamError as exc:
        print(f"gridcam: error: {exc}", file=sys.stderr)
        return 2
    Path(job).with_suffix(".out").write_text(json.dumps(records))
    return 0


#: the environment variables that cap the instruction set of oneDNN's and MKL's kernels (torch's
#: own, ATEN_CPU_CAPABILITY, shows in :func:`kernels`' capability)
KERNEL_CAPS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def kernels() -> dict[str, Any]:
    """The CPU kernels this process runs, which decide a CPU training's digits (docs/study.md,
    "Other CPUs' kernels"): ``{"kernels": "AVX512" | "AVX2" | "DEFAULT" | ..., "caps": {VAR:
    value}}``, ``caps`` only when one of :data:`KERNEL_CAPS` is set."""
    caps = {v: os.environ[v] for v in KERNEL_CAPS if os.environ.get(v)}
    return {"kernels": torch.backends.cpu.get_cpu_capability(), **({"caps": caps} if caps else {})}


def cpuinfo(text: str) -> dict[str, Any]:
    """The first processor of a ``/proc/cpuinfo`` text: ``{"cpu": model name, "family": int,
    "model": int}``, each only where the text has it (x86 has all three; aarch64, ppc64le and
    others name the CPU differently or not at all)."""
    first: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep:
            if first.get("processor") is not None:
                break  # the first processor's block ends at its blank line
            continue
        if key == "processor" and "processor" in first:
            break
        first.setdefault(key, value.strip())
    out: dict[str, Any] = {}
    if first.get("model name") or first.get("cpu"):  # ppc64le names it "cpu"
        out["cpu"] = first.get("model name") or first["cpu"]
    for key, name in (("cpu family", "family"), ("model", "model")):
        if first.get(key, "").isdigit():
            out[name] = int(first[key])
    return out


def machine(on_cpu: bool, jobs: int) -> dict[str, Any]:
    """What ran a study, for its results file: CPU model name, family and model number (from
    ``/proc/cpuinfo``, as ``lscpu`` shows them), the kernels torch ran (:func:`kernels`), cores,
    torch version, the GPU's name when one was used, and the processes."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = cpuinfo(f.read())
    except OSError:
        cpu = {}
    info: dict[str, Any] = {"cpu": cpu.pop("cpu", None), "cores": cpu_cores(), "torch": torch.__version__,
                            "jobs": jobs, **cpu, **kernels()}
    if not on_cpu and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(0)
    return info


if __name__ == "__main__":
    raise SystemExit(_worker(sys.argv[1]))
