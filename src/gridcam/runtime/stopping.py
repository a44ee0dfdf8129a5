"""How a training run stops early: SIGTERM/SIGINT (:class:`StopFlag` -> :class:`TrainingInterrupted`
after a resumable checkpoint) and a non-finite loss (:class:`NonFiniteLoss`, nothing broken saved)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["NonFiniteLoss", "StopFlag", "StopRequested", "TrainingInterrupted"]


class StopFlag:
    """SIGTERM/SIGINT handler that asks the loop to stop after the current step.

    A second SIGINT (Ctrl-C twice) raises KeyboardInterrupt at once. Handlers are installed only
    in the main thread (Python's rule) and restored by :meth:`restore`.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"gridcam: received {signal.Signals(signum).name}; finishing the current step and "
              "saving a resumable checkpoint (Ctrl-C again to abort at once)", file=sys.stderr, flush=True)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


class StopRequested(Exception):
    """Inside an epoch: every rank agreed to stop after ``steps_done`` steps (a signal arrived)."""

    def __init__(self, steps_done: int):
        self.steps_done = steps_done


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT arrived: the step finished and a resumable checkpoint was written."""

    def __init__(self, signum: int, checkpoint: Path | None, epoch: int, step: int):
        self.signum = signum
        self.checkpoint = checkpoint
        name = signal.Signals(signum).name
        where = f"epoch {epoch + 1}, step {step}"
        saved = (f"; resumable checkpoint {checkpoint} (continue with --resume {checkpoint})"
                 if checkpoint else "")
        super().__init__(f"interrupted by {name} at {where}{saved}")


class NonFiniteLoss(Exception):
    """The loss became NaN/inf: the run stopped before the optimizer used it; no checkpoint of the
    broken state was written."""

    def __init__(self, epoch: int, step: int, values: dict[str, float], last_good: Path | None):
        self.epoch, self.step, self.values, self.last_good = epoch, step, values, last_good
        vals = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
        keep = (f"the last good checkpoint {last_good} is untouched" if last_good
                else "no checkpoint had been written yet")
        super().__init__(
            f"non-finite loss at epoch {epoch + 1}, step {step + 1}: {vals}; training stopped and "
            f"{keep}. Lower --lr or --lambda, or try without --amp.")
