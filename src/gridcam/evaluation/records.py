"""Per-image records of an evaluation (``--per-image FILE.jsonl``): write, resume, merge ranks.

One JSON line per scored or skipped pair and one ``"done"`` line per image (with what the
classification scores need, and the image's data problems), written batch by batch and flushed.
The first line is a header with the format version and the settings (the format is documented in
docs/evaluation.md#per-image-records); a file of another format version is refused, not resumed.
On restart the file is read, images of completed batches are folded into the totals without
recomputation, the file is rewritten without any partial batch, and only the remaining
batches run. Under ``torchrun`` each rank appends to ``FILE.part<rank>``; at the end rank 0
appends the parts to FILE and deletes them (an interrupted distributed run leaves the parts, which
the next run, with any number of ranks, reads too).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from gridcam import metrics as M
from gridcam.runtime import distributed as D
from gridcam.runtime.files import read_jsonl
from gridcam.evaluation.totals import Evaluation
from gridcam.errors import GridcamError
from gridcam.problems import Problem

__all__ = ["HEADER_KEY", "PerImageWriter", "append_parts", "make_header",
           "merge_parts", "part_path", "prepare_resume", "start_or_resume"]

HEADER_KEY = "gridcam_per_image"
#: 2: reason codes in ``skipped``, ``file``/``where``/``problems``, SPG seeded by image key.
FORMAT_VERSION = 2


def make_header(config: Mapping[str, Any]) -> dict[str, Any]:
    """The first line of a per-image file: the format and the settings that produced it."""
    return {HEADER_KEY: FORMAT_VERSION, "config": dict(config)}


def _line(rec: Mapping[str, Any]) -> str:
    return json.dumps(rec, separators=(",", ":")) + "\n"


class PerImageWriter:
    """Appends per-image JSON lines, one flushed write per batch (so a batch is all-or-nothing
    except for a crash in the middle of one write, which resumption detects). ``path`` None: a
    writer that writes nothing."""

    def __init__(self, path: Path | None):
        self.f = open(path, "a", encoding="utf-8") if path is not None else None

    def write(self, records: list[dict[str, Any]]) -> None:
        if self.f is None or not records:
            return
        self.f.write("".join(_line(r) for r in records))
        self.f.flush()

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


def part_path(path: Path, rank: int, world: int) -> Path:
    """The file this rank appends to: ``path`` itself in a single process, else its rank's part."""
    return path if world == 1 else path.with_name(f"{path.name}.part{rank}")


def _skip_problem(rec: Mapping[str, Any]) -> Problem:
    """The Problem of a stored skip record (``skipped`` code, ``reason`` cause, ``file``, ``where``)."""
    return Problem(rec["skipped"], str(rec.get("file", rec.get("image", ""))),
                   str(rec.get("reason", "")), rec.get("where"))


def _fold_record(ev: Evaluation, rec: Mapping[str, Any]) -> None:
    """Add one stored per-image record to the totals (exactly what computing it added)."""
    if rec.get("done"):
        if "skipped" in rec:
            ev.skip_image(_skip_problem(rec))
            return
        ev.images += 1
        for p in rec.get("problems", []):
            ev.note_problem(Problem(p["reason"], p["file"], p["cause"], p.get("where")))
        if isinstance(ev.cls, M.MultiLabelCounts):
            C = ev.cls.num_classes
            pred = torch.zeros(1, C, dtype=torch.bool)
            truth = torch.zeros(1, C, dtype=torch.bool)
            pred[0, rec["pred"]] = True
            truth[0, rec["labels"]] = True
            ev.cls.add_predictions(pred, truth)
        elif "topk" in rec:
            ev.cls.add_flags(torch.tensor([rec["topk"]], dtype=torch.bool))
        return
    if "method" not in rec:  # a pair the data layer left out: counts for every method
        ev.skip_pairs(_skip_problem(rec))
        return
    counts = ev.loc[rec["method"]]
    if "skipped" in rec:
        counts.skip(rec["skipped"])
    else:
        counts.add_record(rec["class"], rec.get("pg_hit"), rec.get("spg"), rec.get("ch"))
        ev.add_beyond(rec["method"], rec)


def _check_header(src: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Raise GridcamError naming every setting that differs between a stored header and now."""
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        raise GridcamError(
            f"{src} was written by an evaluation with other settings ("
            + "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff)
            + "); remove it or choose another --per-image file")


def prepare_resume(path: Path, header: dict[str, Any], batches: list[list[int]],
                   ev: Evaluation) -> set[int]:
    """Read ``path`` (and its ``.part*`` files), fold the images of completed batches into ``ev``,
    rewrite ``path`` with only those (header first), and return their indices.

    Raises GridcamError when the file was written with different settings.
    """
    sources = [p for p in [path, *sorted(path.parent.glob(path.name + ".part*"))] if p.is_file()]
    done: set[int] = set()
    for src in sources:
        for rec in read_jsonl(src):
            if HEADER_KEY in rec:
                if rec[HEADER_KEY] != header[HEADER_KEY]:
                    raise GridcamError(
                        f"{src} is a per-image file of format {rec[HEADER_KEY]!r}, written by "
                        f"another version of gridcam (this one writes format {header[HEADER_KEY]}); "
                        "remove it or choose another --per-image file")
                _check_header(src, rec.get("config", {}), header["config"])
            elif rec.get("done"):
                done.add(int(rec["index"]))
    keep = {i for b in batches if all(i in done for i in b) for i in b}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(_line(header))
        for src in sources:
            for rec in read_jsonl(src):
                if HEADER_KEY not in rec and int(rec.get("index", -1)) in keep:
                    _fold_record(ev, rec)
                    out.write(_line(rec))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    for src in sources[1:]:
        src.unlink()
    return keep


def start_or_resume(path: Path, header: dict[str, Any], batches: list[list[int]],
                    ev: Evaluation, rank: int) -> set[int]:
    """Rank 0 resumes ``path`` (:func:`prepare_resume`, folding finished batches into ``ev``) or
    starts it with ``header``; every rank returns the indices already done.

    Every rank learns the outcome, so a refused file stops all of them (no rank left waiting).
    """
    status: tuple[str, Any] = ("ok", [])
    if rank == 0:
        try:
            if path.exists():
                status = ("ok", sorted(prepare_resume(path, header, batches, ev)))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(_line(header))
        except (GridcamError, OSError) as exc:
            status = ("error", str(exc))
    status = D.broadcast_object(status)  # type: ignore[assignment]
    if status[0] == "error":
        raise GridcamError(status[1])
    return set(status[1])


def append_parts(path: Path, world: int) -> None:
    """Rank 0, after the pass: append every rank's part file to ``path`` and delete the parts."""
    with open(path, "a", encoding="utf-8") as out:
        for r in range(world):
            part = path.with_name(f"{path.name}.part{r}")
            if part.is_file():
                with open(part, encoding="utf-8") as f:
                    for line in f:
                        out.write(line)
                part.unlink()
        out.flush()


def merge_parts(path: Path, rank: int, world: int) -> None:
    """After a distributed pass: rank 0 appends the ranks' parts to ``path`` (all ranks wait)."""
    if world > 1:
        D.barrier()
        if rank == 0:
            append_parts(path, world)
        D.barrier()
