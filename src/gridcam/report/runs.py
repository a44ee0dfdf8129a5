"""Reading finished runs for ``gridcam report``: the epoch log, results JSON, per-image JSONL, weights.

A run folder is a training ``--save-dir`` (``train_log.jsonl``, ``checkpoint_NNN.pth.tar``,
``model_best.pth.tar``) into which evaluation results were written: ``results.json`` (or any JSON
file with ``metrics`` and ``classification``, e.g. the demo's ``localization.json``; the newest
wins) and optionally the ``--per-image`` JSONL. A folder holding only results is fine too.
Everything is read as plain JSON; weights with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from gridcam.runtime.files import read_jsonl
from gridcam.errors import GridcamError
from gridcam.report.summary import Row

PER_IMAGE_HEADER = "gridcam_per_image"
#: Per-pair keys of the per-image JSONL -> metric keys of the table.
PAIR_KEYS = {"spg": "stochastic_pointing_game", "ch": "content_heatmap"}


@dataclass
class Run:
    """One run folder, read."""

    name: str
    path: Path
    log: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] | None = None
    results_file: Path | None = None
    per_image: Path | None = None
    checkpoint: Path | None = None

    @property
    def config(self) -> dict[str, Any]:
        return dict((self.results or {}).get("config") or {})


def _is_results(path: Path) -> bool:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and isinstance(obj.get("metrics"), dict) and "classification" in obj


def _is_per_image(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            first = json.loads(f.readline() or "{}")
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and PER_IMAGE_HEADER in first


def _epoch_of(p: Path) -> int:
    m = re.search(r"checkpoint_(\d+)", p.name)
    return int(m.group(1)) if m else -1


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read a run folder (or a results JSON file directly)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        folder, candidates = path.parent, [path]
    elif path.is_dir():
        folder = path
        candidates = sorted(path.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    else:
        raise GridcamError(f"{path}: no such run folder")
    run = Run(name or folder.name, folder)
    if (folder / "train_log.jsonl").is_file():
        run.log = list(read_jsonl(folder / "train_log.jsonl"))
    for cand in candidates:
        if _is_results(cand):
            run.results_file = cand
            run.results = json.loads(cand.read_text(encoding="utf-8"))
            break
    per_image = run.config.get("per_image")
    if per_image and Path(per_image).is_file():
        run.per_image = Path(per_image)
    else:
        run.per_image = next((p for p in sorted(folder.glob("*.jsonl")) if p.name != "train_log.jsonl"
                              and _is_per_image(p)), None)
    ckpt = run.config.get("checkpoint")
    if ckpt and Path(ckpt).is_file():
        run.checkpoint = Path(ckpt)
    else:
        numbered = sorted(folder.glob("checkpoint_*.pth.tar"), key=_epoch_of)
        best = folder / "model_best.pth.tar"
        run.checkpoint = numbered[-1] if numbered else (best if best.is_file() else None)
    if not run.log and run.results is None:
        raise GridcamError(f"{path}: not a run folder (no train_log.jsonl and no results JSON)")
    run.log = _pretraining_log(run.checkpoint) + run.log
    return run


def _pretraining_log(checkpoint: Path | None) -> list[dict[str, Any]]:
    """The epoch records of the run a checkpoint started from (``--pretrained``: same classes,
    e.g. the study's shared pre-training), its epochs numbered before the run's own, so a curve
    of a short run continues its start's instead of being two or three points. Empty when the
    checkpoint records no such start or its folder has no ``train_log.jsonl``."""
    from gridcam.runtime.checkpoint import load

    if checkpoint is None:
        return []
    try:
        start = ((load(checkpoint).get("args") or {}).get("pretrained"))
    except GridcamError:
        return []
    log_file = Path(start).parent / "train_log.jsonl" if start else None
    if log_file is None or not log_file.is_file():
        return []
    records = [r for r in read_jsonl(log_file) if isinstance(r.get("epoch"), int) and not r.get("evaluate")]
    last = max((r["epoch"] for r in records), default=0)
    return [{**r, "epoch": r["epoch"] - last} for r in records]


def rows_from_runs(runs: Sequence[Run]) -> list[Row]:
    """One :class:`Row` per (run, method) with results, grouped by method in the runs' order."""
    rows = []
    methods: list[str] = []
    for run in runs:
        for m in (run.results or {}).get("metrics", {}):
            if m not in methods:
                methods.append(m)
    for method in methods:
        for run in runs:
            res = run.results or {}
            if method not in res.get("metrics", {}):
                continue
            metrics = {k: v for k, v in {**res.get("classification", {}), **res["metrics"][method]}.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            images = (res.get("images") or {}).get("evaluated") if isinstance(res.get("images"), dict) else None
            if images is None:
                images = res.get("classification", {}).get("images")
            rows.append(Row(run.name, method, metrics, images=images))
    return rows


def pair_scores(path: Path, method: str) -> dict[tuple[int, int], dict[str, Any]]:
    """``(image index, class) -> record`` of the scored pairs of ``method`` in a per-image JSONL."""
    out = {}
    for rec in read_jsonl(path):
        if rec.get("method") == method and "skipped" not in rec and "index" in rec and "class" in rec:
            out[(int(rec["index"]), int(rec["class"]))] = rec
    return out


#: per-image record field -> results key of the localisation metrics
RECORD_KEYS = {"pg_hit": "pointing_game", "spg": "stochastic_pointing_game", "ch": "content_heatmap"}


def scores_on_pairs(records: Mapping[Any, Mapping[str, Any]], keys: Sequence[Any]) -> dict[str, float]:
    """PG, SPG and CH (in %, results-file keys) of one model over the pairs ``keys`` of its
    per-image ``records`` (``key -> record``, the key ending with the class): PG as the paper
    scores it (mean over classes of hits / pairs), SPG and CH as means over pairs."""
    out: dict[str, float] = {}
    hits: dict[int, list[bool]] = {}
    for k in keys:
        if "pg_hit" in records[k]:
            hits.setdefault(int(k[-1]), []).append(bool(records[k]["pg_hit"]))
    if hits:
        out["pointing_game"] = 100.0 * sum(sum(h) / len(h) for h in hits.values()) / len(hits)
    for rec_key in ("spg", "ch"):
        vals = [float(records[k][rec_key]) for k in keys if rec_key in records[k]]
        if vals:
            out[RECORD_KEYS[rec_key]] = 100.0 * sum(vals) / len(vals)
    return out


def on_common_pairs(rows: Sequence[Row], runs: Sequence[Run]) -> list[Row]:
    """``rows`` with PG, SPG and CH recomputed, per method, over the (image, class) pairs that
    EVERY run scored (a pair one model skipped, e.g. for an all-zero heatmap, is left out of every
    model's mean), and ``pairs`` set to their number. Unchanged when a run has no per-image file."""
    if len(runs) < 2 or any(r.per_image is None for r in runs):
        return list(rows)
    by_name = {r.name: r for r in runs}
    out = []
    cache: dict[str, tuple[dict[str, dict], list]] = {}
    for row in rows:
        if row.method not in cache:
            recs = {r.name: pair_scores(r.per_image, row.method) for r in runs}  # type: ignore[arg-type]
            common = sorted(set.intersection(*(set(v) for v in recs.values())))
            cache[row.method] = (recs, common)
        recs, common = cache[row.method]
        if row.name not in by_name or not common:
            out.append(row)
            continue
        metrics = {**row.metrics, **scores_on_pairs(recs[row.name], common)}
        out.append(replace(row, metrics=metrics, pairs=len(common)))
    return out


def paired_ci(runs: Sequence[Run], method: str) -> dict[tuple[str, str], tuple[float, float, int]]:
    """95 % normal intervals (in points) of the mean paired per-image SPG and CH difference of each
    run to the first, over the pairs scored in both per-image files. Empty without those files."""
    if len(runs) < 2 or runs[0].per_image is None:
        return {}
    ref = pair_scores(runs[0].per_image, method)
    out = {}
    for run in runs[1:]:
        if run.per_image is None:
            continue
        other = pair_scores(run.per_image, method)
        common = sorted(set(ref) & set(other))
        for short, key in PAIR_KEYS.items():
            d = [100.0 * (other[c][short] - ref[c][short]) for c in common
                 if short in other[c] and short in ref[c]]
            if len(d) < 2:
                continue
            mean = sum(d) / len(d)
            sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
            half = 1.96 * sd / math.sqrt(len(d))
            out[(run.name, key)] = (mean - half, mean + half, len(d))
    return out


def choose_images(scores: Mapping[tuple[int, int], Sequence[float]], n: int) -> list[tuple[tuple[int, int], str]]:
    """Pick ``n`` (image, class) pairs from per-run scores (one value per run, higher = better):
    about half where the runs disagree most (largest spread) and the rest where they agree best
    (smallest spread, among the better-scored), each with a short reason. One pair per image."""
    items = []
    seen: set[int] = set()
    for key, vals in scores.items():
        if key[0] in seen or len(vals) == 0:
            continue
        seen.add(key[0])
        items.append((key, max(vals) - min(vals), sum(vals) / len(vals)))
    if not items:
        return []
    n_dis = min(len(items), (n + 1) // 2)
    by_spread = sorted(items, key=lambda t: (-t[1], t[0]))
    chosen = [(k, "largest disagreement") for k, _, _ in by_spread[:n_dis]]
    taken = {k for k, _ in chosen}
    rest = [t for t in items if t[0] not in taken]
    rest.sort(key=lambda t: (round(t[1], 6) - 0.25 * t[2], t[0]))
    chosen += [(k, "agreement") for k, _, _ in rest[: n - len(chosen)]]
    return chosen
