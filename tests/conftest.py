"""Test-wide settings: one intra-op thread per process; tqdm's lock local to the process; the
machine (CPU model, torch's kernels) named just above the "N passed" line.

The suite runs on 2-core machines, often with a second process (DataLoader workers, a torchrun
peer) beside it; PyTorch's default of one thread per core then thrashes (a tiny forward measured
160x slower). One thread keeps timings stable.

tqdm's default write lock includes a multiprocessing semaphore, shared by every process forked
after it exists. `make mutation` forks one worker per mutant from the process that ran the tests
once; a worker killed (a mutant that hangs) while it holds that semaphore blocks every later
worker that draws a progress bar. The tests draw bars from one process only, so a plain thread
lock is all they need.
"""

import threading

import pytest
import torch
from tqdm import tqdm

torch.set_num_threads(1)
tqdm.set_lock(threading.RLock())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The machine, just above the "N passed" line (also under -q): CPU model and the kernels
    torch runs, which decide the digits of every training (docs/study.md, "Other CPUs' kernels")."""
    try:
        from gridcam.study.readme import where
        from gridcam.study.schedule import machine

        m = machine(on_cpu=True, jobs=1)
        line = f"machine: {where({'machine': m})}, {m['cores']} cores, torch {m['torch']}"
    except Exception as exc:  # noqa: BLE001 - a report line must never fail the session
        line = f"machine: not read ({exc})"
    terminalreporter.write_line(line)
