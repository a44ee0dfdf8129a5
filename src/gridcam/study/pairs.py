"""Per-image paired differences of a study: every compared model on the same (image, class) pairs.

The seed-level table (``stats.summarize``) says how much a row moves between seeds; with one seed
(the demo) it has no interval at all. Here each "Ours" row is compared with its baseline pair by
pair: for every (seed, image, class) that both models scored, the difference of their pointing
game hit, SPG and CH (and deletion, insertion, Focus and the randomisation test's rho where they
were scored), in points; the mean over those pairs gets a 95 % t-interval. A pair that one
model skipped (e.g. an all-zero heatmap) is left out for both, so the two means cover the same
pairs (``n`` says how many).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from gridcam.report.runs import RECORD_KEYS, pair_scores, scores_on_pairs
from gridcam.study.stats import pair_name, paired, split_name

__all__ = ["METRICS", "common_pairs", "per_image_diffs", "verdict"]

#: per-image record field -> study metric key
METRICS = {"pg_hit": "pg", "spg": "spg", "ch": "ch"}
#: the faithfulness metrics' record fields -> (study key, scale to the study's unit): deletion,
#: insertion and Focus in points, the randomisation test's rho as it is; paired where scored
BEYOND = {"deletion": ("deletion", 100.0), "insertion": ("insertion", 100.0), "focus": ("focus", 100.0),
          "randomisation": ("randomisation", 1.0)}


def _scores(files: Mapping[int, Path], method: str) -> dict[str, dict[tuple[int, int, int], float]]:
    """metric -> {(seed, image index, class): value in points} over the runs' per-image files."""
    out: dict[str, dict[tuple[int, int, int], float]] = {m: {} for m in METRICS.values()}
    fields = {**{f: (k, 100.0) for f, k in METRICS.items()}, **BEYOND}
    for seed, path in files.items():
        if not path.is_file():
            continue
        for (index, cls), rec in pair_scores(path, method).items():
            for field, (key, scale) in fields.items():
                if rec.get(field) is not None:
                    out.setdefault(key, {})[(seed, index, cls)] = scale * float(rec[field])
    return out


def per_image_diffs(run_dirs: Mapping[str, Mapping[int, Path]], pairs: Sequence[tuple[str, str]],
                    methods: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"Ours - Base": {"method/metric": {"mean", "half", "n"}}}`` from each row's
    ``per_image.jsonl`` (``run_dirs[row][seed]`` is the run folder), over the common pairs."""
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for ours, base in pairs:
        if ours not in run_dirs or base not in run_dirs:
            continue
        cols = {}
        for method in methods:
            a = _scores({s: d / "per_image.jsonl" for s, d in run_dirs[ours].items()}, method)
            b = _scores({s: d / "per_image.jsonl" for s, d in run_dirs[base].items()}, method)
            for key in (*METRICS.values(), *(k for k, _ in BEYOND.values())):
                if key not in METRICS.values() and not (set(a.get(key, {})) & set(b.get(key, {}))):
                    continue  # a faithfulness metric neither scored on common pairs
                stat = paired(a.get(key, {}), b.get(key, {}))
                cols[f"{method}/{key}"] = {k: stat[k] for k in ("mean", "half", "n")}
        result[pair_name(ours, base)] = cols
    return result


_RESULT_TO_STUDY = {RECORD_KEYS[field]: key for field, key in METRICS.items()}  # results key -> study key


def common_pairs(values: dict[str, dict[str, dict[int, float]]], run_dirs: Mapping[str, Mapping[int, Path]],
                 methods: Sequence[str]) -> dict[str, dict[int, int]]:
    """Recompute, in place, each row's PG/SPG/CH of ``values[row]["method/metric"][seed]`` over the
    (image, class) pairs that EVERY row scored in that seed (a pair one row skipped is left out of
    all rows' means), from the runs' ``per_image.jsonl``; returns ``{method: {seed: pairs}}``.
    Seeds where a row has no per-image file keep their own numbers (and are not listed)."""
    counts: dict[str, dict[int, int]] = {}
    seeds = sorted(set.intersection(*(set(d) for d in run_dirs.values()))) if run_dirs else []
    for method in methods:
        for seed in seeds:
            files = {row: d[seed] / "per_image.jsonl" for row, d in run_dirs.items()}
            if not all(f.is_file() for f in files.values()):
                continue
            recs = {row: pair_scores(f, method) for row, f in files.items()}
            common = sorted(set.intersection(*(set(r) for r in recs.values())))
            counts.setdefault(method, {})[seed] = len(common)
            for row, r in recs.items():
                for key, v in scores_on_pairs(r, common).items():
                    values[row][f"{method}/{_RESULT_TO_STUDY[key]}"][seed] = v
    return counts


def _interval(stat: Mapping[str, Any]) -> str:
    if stat.get("mean") is None:
        return "no common pairs"
    if stat.get("half") is None:
        return f"{stat['mean']:+.2f}"
    return f"{stat['mean']:+.2f} [{stat['mean'] - stat['half']:+.2f}, {stat['mean'] + stat['half']:+.2f}]"


def verdict(name: str, diffs: Mapping[str, Mapping[str, Any]], top1: Mapping[str, Any] | None,
            method: str = "gradcam") -> str:
    """One sentence: does ``name`` ("Ours - Base") localise better than its baseline with
    ``method``, judged by the per-image 95 % intervals of SPG and CH, at what top-1 cost?"""
    spg, ch = diffs.get(f"{method}/spg", {}), diffs.get(f"{method}/ch", {})

    def sign(s: Mapping[str, Any]) -> int:
        if s.get("mean") is None or s.get("half") is None:
            return 0
        return 1 if s["mean"] - s["half"] > 0 else -1 if s["mean"] + s["half"] < 0 else 0

    signs = (sign(spg), sign(ch))
    ours, base = split_name(name) or (name, "its baseline")
    if signs == (1, 1):
        head = f"{ours} localises better than {base}"
    elif -1 in signs and 1 not in signs:
        head = f"{ours} localises worse than {base}"
    elif 1 in signs and -1 not in signs:
        head = f"{ours} localises better than {base} on {'SPG' if signs[0] == 1 else 'CH'} only"
    else:
        head = f"no clear difference between {ours} and {base}"
    cost = ""
    if top1 and top1.get("mean") is not None:
        cost = f"; top-1 {top1['mean']:+.2f} points"
    return (f"{head} ({method}: SPG {_interval(spg)}, CH {_interval(ch)} points, 95 % interval over "
            f"{spg.get('n', 0)} (image, class) pairs{cost})")
