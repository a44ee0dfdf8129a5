"""Problems with the user's data, told plainly: stable reason codes, one line per problem, a count.

A *problem* is something wrong with one input that gridcam works around (skips an image, an
annotation or an (image, class) pair; repairs what it can) instead of stopping the run. Every
problem has a stable reason code (:data:`REASONS`, for scripts and ``results.json``), the file it
is in, optionally *where* in that file (an annotation id, an XML element, a JSON key), and the
cause in words. On stderr it is one line, with no Python source path::

    gridcam: warning: /data/val/ILSVRC2012_val_00000007.xml: <object>[2]/<bndbox>/<xmin>: not a number: 'x'

The readers never print from inside a worker process on their own account: they return or raise a
:class:`Problem` and a :class:`Collector` in the main process prints it once (the same code, file
and place are told once however often they are met) and counts it by reason; :meth:`summary`
gives the counts at the end of a run. Where no collector is active (library use, worker
processes) :func:`report` falls back to a :class:`DataWarning` carrying the same
one-line text, so nothing is lost.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Iterator

from gridcam.errors import GridcamError


class DataWarning(UserWarning):
    """A data item was skipped or repaired; the message names the file (see gridcam.problems)."""

#: Stable reason codes -> what they mean and what gridcam does (listed by the table in
#: docs/data.md#bad-input-one-line-per-problem-nothing-good-thrown-away).
REASONS: dict[str, str] = {
    # image files
    "not_found": "the image file does not exist: image skipped",
    "empty_file": "the file has zero bytes: image skipped",
    "not_an_image": "not an image format PIL can identify: image skipped",
    "truncated": "the image data ends early (a JPEG without its end marker, a cut-off copy): "
                 "image skipped",
    "corrupt_image": "the image data cannot be decoded: image skipped",
    "too_large": "larger than PIL's decompression-bomb limit: image skipped",
    "unreadable": "the file cannot be read (permissions, a folder): image skipped",
    "size_mismatch": "the decoded size differs from the annotated one and no EXIF rotation explains "
                     "it: boxes/masks clipped or padded to the decoded image, pair scored",
    "exif_rotated": "the JPEG carries an EXIF orientation: rotated when the annotation matches the "
                    "displayed frame, else the stored frame is used; pair scored",
    # ImageNet / VOC annotations
    "xml_missing": "no XML (or CSV row) for the image: image skipped",
    "xml_malformed": "the XML is not well-formed, or a required element is missing or not a "
                     "number (the element is named): image skipped",
    "unknown_class": "the first object's wnid is not among the classes: pair skipped, no top-k label",
    "no_objects": "the annotation lists no object: pair skipped",
    "all_difficult": "every box of the class is marked difficult: pair skipped (the paper's rule; "
                     "counted, not printed)",
    "box_outside": "every box of the class lies outside the image: pair skipped",
    # COCO annotations
    "no_annotations": "the COCO image has no annotation: image skipped, as in the paper (one line "
                      "per file)",
    "unknown_category": "the annotation's category_id is not among the file's categories: "
                        "annotation skipped",
    "unknown_image": "the annotation's image_id is not among the file's images: annotation skipped",
    "bad_annotation": "the annotation lacks an integer image_id or category_id: annotation skipped",
    "bad_segmentation": "the segmentation cannot be decoded: its bbox is used when it has one, else "
                        "the annotation is skipped; a category left with no instance is a skipped pair",
    "empty_mask": "the category's instances cover no pixel: pair skipped",
    # scoring
    "zero_heatmap": "the explanation is zero everywhere: pair skipped",
}


@dataclass(frozen=True)
class Problem:
    """One problem: ``code`` (a key of :data:`REASONS`), ``file``, ``cause`` (words), ``where``
    (annotation id / XML element / JSON key, or ``None``). ``str(problem)`` is the cause."""

    code: str
    file: str
    cause: str
    where: str | None = None

    def __post_init__(self) -> None:
        if self.code not in REASONS:
            raise ValueError(f"unknown problem code {self.code!r}")

    def __str__(self) -> str:
        return self.cause

    def line(self) -> str:
        """``gridcam: warning: FILE[: WHERE]: cause`` (one line: newlines in the cause folded)."""
        where = f": {self.where}" if self.where else ""
        cause = " ".join(self.cause.split())
        return f"gridcam: warning: {self.file}{where}: {cause}"

    def record(self) -> dict[str, str]:
        """The JSON form, for per-image records and results.json."""
        out = {"reason": self.code, "file": self.file, "cause": self.cause}
        if self.where:
            out["where"] = self.where
        return out


class ProblemError(GridcamError):
    """An exception that carries a :class:`Problem` (raised by readers, e.g. ``BadImage``)."""

    def __init__(self, problem: Problem):
        self.problem = problem
        where = f": {problem.where}" if problem.where else ""
        super().__init__(f"{problem.file}{where}: {problem.cause}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.problem,))


class Collector:
    """Prints each distinct problem once (``stream``, default stderr) and counts problems by code.

    ``report(p, count=n)`` counts ``n`` occurrences told in one line (e.g. "48 of 5000 images have
    no annotations"). Thread-safe. Only the process that created it prints; see :func:`report`.
    """

    def __init__(self, stream: IO[str] | None = None, quiet: bool = False):
        self.stream = stream
        self.quiet = quiet
        self.counts: Counter[str] = Counter()
        self.problems: list[Problem] = []
        self._seen: set[tuple[str, str, str | None]] = set()
        self._lock = threading.Lock()
        self.pid = os.getpid()

    def report(self, problem: Problem, count: int = 1) -> bool:
        """Count and print ``problem`` unless the same (code, file, where) was told already.
        Returns True when it was new."""
        key = (problem.code, problem.file, problem.where)
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
            self.counts[problem.code] += int(count)
            self.problems.append(problem)
        if not self.quiet:
            print(problem.line(), file=self.stream or sys.stderr, flush=True)
        return True

    def summary(self) -> str:
        """``gridcam: N problem(s) in the data: 3 truncated, 1 xml_missing`` or ``""``."""
        if not self.counts:
            return ""
        parts = ", ".join(f"{n} {code}" for code, n in sorted(self.counts.items()))
        total = sum(self.counts.values())
        return f"gridcam: {total} data problem(s) worked around: {parts}"


_ACTIVE: list[Collector] = []


def active() -> Collector | None:
    """The innermost collector of this process, or None."""
    for c in reversed(_ACTIVE):
        if c.pid == os.getpid():  # a forked worker inherits the list but must not use it
            return c
    return None


@contextmanager
def collecting(stream: IO[str] | None = None, summary: bool = True,
               quiet: bool = False) -> Iterator[Collector]:
    """Make a :class:`Collector` the target of :func:`report` inside the block; on exit print its
    :meth:`~Collector.summary` (when ``summary`` and anything was reported)."""
    col = Collector(stream, quiet)
    _ACTIVE.append(col)
    try:
        yield col
    finally:
        _ACTIVE.remove(col)
        if summary and col.counts and not quiet:
            print(col.summary(), file=stream or sys.stderr, flush=True)


def report(problem: Problem, count: int = 1) -> None:
    """Tell ``problem``: to the active collector of this process, else as a ``DataWarning`` whose
    message is the one-line text (``warnings`` shows each distinct message once)."""
    col = active()
    if col is not None:
        col.report(problem, count)
        return
    warnings.warn(problem.line().removeprefix("gridcam: warning: "), DataWarning, stacklevel=3)


def note(text: str) -> None:
    """One informational line ``gridcam: note: TEXT`` on stderr (a choice gridcam made for the
    user, e.g. which annotation file it uses), not a problem and not counted."""
    print(f"gridcam: note: {' '.join(text.split())}", file=sys.stderr, flush=True)


@contextmanager
def plain_warnings() -> Iterator[None]:
    """Inside the block, a ``DataWarning``, or a ``UserWarning`` raised by gridcam's own code, is
    shown as one line ``gridcam: warning: MESSAGE`` on stderr, without Python's source path and
    line (other warnings keep Python's format). Forked worker processes inherit the format."""
    old = warnings.showwarning
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        ours = issubclass(category, UserWarning) and os.path.abspath(str(filename)).startswith(package)
        if issubclass(category, DataWarning) or ours:
            text = " ".join(str(message).split())
            if not text.startswith("gridcam: "):
                text = f"gridcam: warning: {text}"
            print(text, file=file or sys.stderr, flush=True)
        else:
            old(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = old


def reason_counts(problems: list[Problem]) -> dict[str, int]:
    """``{code: n}`` sorted by code."""
    return dict(sorted(Counter(p.code for p in problems).items()))


__all__ = ["REASONS", "DataWarning", "Problem", "ProblemError", "Collector", "active", "collecting", "report",
           "note", "plain_warnings", "reason_counts"]
