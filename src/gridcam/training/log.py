"""What a training run reports: a JSON-lines epoch log, optional TensorBoard, a rank-0 progress bar.

* ``train_log.jsonl`` in the save dir: one JSON object per epoch (and one per evaluation-only
  run), appended and flushed immediately so a killed run keeps every finished epoch.
* TensorBoard event files in ``<save_dir>/tensorboard`` when ``torch.utils.tensorboard`` and the
  ``tensorboard`` package import (optional dependency: ``pip install gridcam[tensorboard]``).
* A tqdm bar on rank 0 with the running losses and images/s; when stderr is not a terminal (batch
  jobs, log files) a plain line at an epoch's first step and every ``print_freq`` steps instead of
  carriage-return updates.
* The lines a run reports: an opening line before the first epoch (:func:`format_opening`), one
  line per epoch (and per validation) (:func:`print_epoch`, :func:`format_val`). They go to
  stderr by default (a Python caller's stdout stays its own); ``gridcam train`` sends them to
  stdout with :func:`report_to`, so ``gridcam train ... > log.txt`` keeps them.
Only rank 0 writes anything; the other ranks get no-op objects.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

__all__ = ["EpochLog", "Progress", "fmt", "format_opening", "format_val", "jsonable", "print_epoch",
           "print_skipped", "report_to", "say"]

#: Where the report lines go (:func:`say`); None: sys.stderr at the time of printing.
_REPORT: IO[str] | None = None


@contextlib.contextmanager
def report_to(stream: IO[str]) -> Iterator[None]:
    """Within the block, the report lines (opening, epochs, validation) go to ``stream``."""
    global _REPORT
    before, _REPORT = _REPORT, stream
    try:
        yield
    finally:
        _REPORT = before


def say(line: str) -> None:
    """Print one report line where :func:`report_to` says (default stderr), flushed at once."""
    print(line, file=_REPORT if _REPORT is not None else sys.stderr, flush=True)


def jsonable(obj: Any) -> Any:
    """Plain-JSON version of metrics: tensors/numpy to numbers/lists, non-finite floats to strings
    ("nan", "inf") so every line stays valid JSON."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


class EpochLog:
    """Append-only JSON-lines log (+ TensorBoard scalars when available).

    Args:
        save_dir: directory of the run; the log is ``save_dir / "train_log.jsonl"``.
        enabled: False on ranks other than 0 (then every method is a no-op).
        tensorboard: try to write TensorBoard events too.
    """

    def __init__(self, save_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(save_dir) / "train_log.jsonl"
        self.writer: Any = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:  # optional: torch.utils.tensorboard needs the tensorboard package
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(Path(save_dir) / "tensorboard"))
            except Exception:
                self.writer = None

    def write(self, record: Mapping[str, Any], step: int | None = None) -> None:
        """Append ``record`` as one JSON line; numeric leaves also go to TensorBoard as
        ``group/name`` scalars at global step ``step`` (default ``record["epoch"]``)."""
        if not self.enabled:
            return
        record = jsonable(dict(record))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")
            f.flush()
        if self.writer is not None:
            step = int(record.get("epoch", 0) if step is None else step)
            for name, value in _flatten(record):
                if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "epoch":
                    self.writer.add_scalar(name, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _flatten(record: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in record.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            yield from _flatten(v, prefix=name + "/")
        else:
            yield name, v


class Progress:
    """Iterate a loader with a rank-0 progress display.

    Args:
        iterable: the batches.
        total: number of batches (for the bar and the ETA).
        desc: label, e.g. ``"epoch 3/90"``.
        enabled: False on ranks other than 0.
        print_freq: refresh the numbers every this many steps.
        bar: tqdm bar (True), plain lines (False) or decide from ``sys.stderr.isatty()`` (None).
        initial: steps already done (a resumed epoch).
    """

    def __init__(self, iterable: Iterable[Any], total: int, desc: str, enabled: bool = True,
                 print_freq: int = 10, bar: bool | None = None, initial: int = 0):
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self.print_freq = max(1, int(print_freq))
        self.initial = initial
        self.start = time.perf_counter()
        if bar is None:
            bar = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.bar: tqdm | None = None
        if enabled and bar:
            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                            leave=True, file=sys.stderr)

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable:
            yield item
            if self.bar is not None:
                self.bar.update(1)

    def due(self, step: int) -> bool:
        """Whether to refresh the numbers after 0-based ``step`` (saves a device sync otherwise):
        every ``print_freq`` steps, the last step, and the first step of an epoch started afresh
        (a sign of life within seconds, as torchvision's MetricLogger gives)."""
        return self.enabled and ((step + 1) % self.print_freq == 0 or step + 1 == self.total
                                 or step == self.initial == 0)

    def show(self, step: int, values: Mapping[str, float]) -> None:
        """Display the running ``values`` (losses, img/s) after 0-based ``step``."""
        if not self.enabled:
            return
        text = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in values.items()}
        if self.bar is not None:
            self.bar.set_postfix(text, refresh=False)
        else:
            fields = "  ".join(f"{k} {v}" for k, v in text.items())
            print(f"{self.desc} [{step + 1}/{self.total}]  {fields}", file=sys.stderr, flush=True)

    def write(self, message: str) -> None:
        """Print a message without breaking the bar (rank 0 only)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ------------------------------------------------------------------------- epoch lines
def fmt(v: Any) -> str:
    """A metric for humans: ``n/a`` for None, two decimals for floats."""
    return "n/a" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))


def format_val(m: Mapping[str, Any], multi_label: bool) -> str:
    """One line of validation metrics (top-1/top-5, or F1/precision/recall for multi-label)."""
    if multi_label:
        return (f"val: F1 overall {fmt(m.get('f1_overall'))}  per-class {fmt(m.get('f1_per_class'))}  "
                f"P/R overall {fmt(m.get('precision_overall'))}/{fmt(m.get('recall_overall'))}  "
                f"per-class {fmt(m.get('precision_per_class'))}/{fmt(m.get('recall_per_class'))}  "
                f"loss {fmt(m.get('loss'))}  ({m.get('images')} images)")
    return (f"val: top-1 {fmt(m.get('top1'))}  top-5 {fmt(m.get('top5'))}  loss {fmt(m.get('loss'))}  "
            f"({m.get('images')} images)")


def format_opening(*, arch: str, dataset: str, data: str, classes: int, train_images: int | None,
                   val_images: int | None, device: str, world: int, epochs: tuple[int, int],
                   batch: int, lr: float, lam: float, save_dir: str, evaluate: bool = False) -> str:
    """The opening line of a run: what is trained on what, where, for how long, in which batches;
    ``epochs``: (first, last), 1-based (a resumed run starts later)."""
    images = (f"{train_images} training + {val_images or 0} validation images" if not evaluate
              else f"{val_images or 0} validation images")
    where = device + (f" x {world} processes" if world > 1 else "")
    if evaluate:
        return f"gridcam train: validating {arch} on {dataset} {data} ({classes} classes, {images}) on {where}"
    first, last = epochs
    if first == 1:
        span = f"{last} epoch{'s' if last != 1 else ''}"
    else:
        span = f"epochs {first}-{last}" if first <= last else f"all {last} epochs done"
    return (f"gridcam train: {arch} on {dataset} {data} ({classes} classes, {images}) on {where}; "
            f"{span}, batch {batch}, lr {lr:g}, lambda {lam:g}; checkpoints in {save_dir}")


def print_epoch(record: Mapping[str, Any], multi_label: bool) -> None:
    """The line of a finished epoch (its ``train_log.jsonl`` record), where :func:`report_to` says."""
    t = record["train"]
    parts = [f"epoch {record['epoch']}: lr {record['lr']:.4g}", f"train loss {fmt(t['loss'])}",
             f"cls {fmt(t['cls_loss'])}"]
    if t.get("gc_loss") is not None:
        parts.append(f"gc {t['gc_loss']:.4g}")
    parts.append(f"{fmt(t['img_per_s'])} img/s")
    line = "  ".join(parts)
    if record["val"] is not None:
        line += "  |  " + format_val(record["val"], multi_label)
    say(line + ("  *best*" if record["is_best"] and record["val"] is not None else ""))


def print_skipped(epoch: int, count: int) -> None:
    """One line: how many unreadable training images an epoch skipped (0-based ``epoch``); each
    file and its cause is told once on its own line (:mod:`gridcam.problems`)."""
    print(f"gridcam: epoch {epoch + 1}: {count} unreadable training image(s) skipped",
          file=sys.stderr, flush=True)
