"""Benchmark: how long ``gridcam --help``, ``gridcam methods`` and ``gridcam models`` take to start.

Each command runs in a fresh interpreter (``python -m gridcam ...``, output discarded), and so do
two references: ``python -c pass`` (the interpreter alone) and ``python -c "import torch"`` (what
any command that needs torch pays first). None of the three commands imports torch:
``gridcam methods`` and ``gridcam models`` read the torch-free catalogs (``gridcam.cam.catalog``,
``gridcam.models.catalog``). Runs are interleaved and each figure is the best (minimum) of
``--repeats`` rounds, which is what the machine can do when nothing else is running.

Two targets, both must hold for ``pass``:

* relative, the cause (machine-independent): each command takes at most 0.5 x the ``import
  torch`` time of the same run, so a command that imports torch again fails on any machine;
* absolute, the issue's: each command takes at most 1.5 s (on a 2-core Intel Xeon).

Each holds when it holds in wall time or in CPU time (user + system, ``cpu_seconds``): on a
loaded machine wall time stretches at random, CPU time much less; a real regression, such as torch
imported again, costs both. ``pass_relative`` and ``pass_absolute`` say which held;
``pass_absolute`` is judged in wall time alone.

Prints ONE JSON line::

    {"benchmark": "startup", "seconds": {...}, "target": 1.5, "relative_target": {...},
     "pass": true, "pass_relative": true, "pass_absolute": true, ...}

Run: ``python benchmarks/startup.py [--repeats 5]`` (with gridcam importable, e.g. installed or
``PYTHONPATH=src``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

#: name -> the arguments after ``python``.
COMMANDS: dict[str, list[str]] = {
    "python": ["-c", "pass"],
    "import_torch": ["-c", "import torch"],
    "help": ["-m", "gridcam", "--help"],
    "methods": ["-m", "gridcam", "methods"],
    "models": ["-m", "gridcam", "models"],
}
#: The issue's target, seconds per command, on the reference machine.
TARGET = 1.5
#: command -> its largest allowed time as a multiple of ``import torch``'s (none imports torch).
RELATIVE = {"help": 0.5, "methods": 0.5, "models": 0.5}


def _time(args: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one ``python ARGS`` run, its output discarded;
    raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Best wall time and best CPU time of each of :data:`COMMANDS` over ``repeats`` interleaved
    rounds."""
    wall = {name: float("inf") for name in COMMANDS}
    cpu = dict(wall)
    for args in COMMANDS.values():  # warm-up: the file cache, .pyc files
        _time(args)
    for _ in range(repeats):
        for name, args in COMMANDS.items():
            w, c = _time(args)
            wall[name], cpu[name] = min(wall[name], w), min(cpu[name], c)
    return wall, cpu


def _within(seconds: dict[str, float]) -> bool:
    """Whether every command of :data:`RELATIVE` took at most its multiple of ``import torch``."""
    return all(seconds[name] <= factor * seconds["import_torch"] for name, factor in RELATIVE.items())


def _fast(seconds: dict[str, float]) -> bool:
    """Whether every command of :data:`RELATIVE` took at most :data:`TARGET` seconds."""
    return all(seconds[name] <= TARGET for name in RELATIVE)


def verdict(wall: dict[str, float], cpu: dict[str, float]) -> dict[str, object]:
    """The targets (see the module docstring) and whether they were met. ``pass``: within the
    relative targets and within the absolute one, each in wall time or in CPU time (a loaded
    machine stretches wall time at random; a real regression, such as torch imported again,
    costs both)."""
    relative = _within(wall) or _within(cpu)
    return {
        "target": TARGET,
        "relative_target": {name: round(f * wall["import_torch"], 3) for name, f in RELATIVE.items()},
        "pass": relative and (_fast(wall) or _fast(cpu)),
        "pass_relative": relative,
        "pass_absolute": _fast(wall),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds; the best is kept (default: 5)")
    args = parser.parse_args()
    wall, cpu = measure(max(1, args.repeats))
    seconds = {name: round(s, 3) for name, s in wall.items()}
    out = {"benchmark": "startup", "seconds": seconds,
           "cpu_seconds": {name: round(s, 3) for name, s in cpu.items()}, **verdict(wall, cpu),
           "repeats": args.repeats, "cpu_count": os.cpu_count(), "machine": platform.processor()
           or platform.machine(), "load_average_1min": round(os.getloadavg()[0], 2)
           if hasattr(os, "getloadavg") else None,
           "note": "pass: at most 0.5 x import torch timed in the same run (pass_relative) and at "
                   "most 1.5 s (pass_absolute: wall time), each in wall or CPU time"}
    print(json.dumps(out))
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
