"""A finished study read and shown: ``study.json`` loaded (:func:`load`), its paper-layout
Markdown tables (:func:`table`) and its one-sentence verdicts (:func:`verdicts`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from gridcam.errors import GridcamError
from gridcam.study import pairs
from gridcam.study import stats as study_stats
from gridcam.study.config import METRICS, NOT_RECIPE
from gridcam.study.stats import split_name

__all__ = ["across", "check_one_recipe", "has_paper_top1", "load", "table", "verdicts"]


#: the top-1 columns: the paper's protocol (val at the training size, from the rows' training logs)
#: and the localisation pass's (val at the evaluation size); a study without the first (written
#: before it existed) shows the second as "Top-1", as it did then
TOP1 = (("val_top1", "Top-1"), ("top1", "Top-1 at eval size"))


def has_paper_top1(summary: dict[str, Any]) -> bool:
    """Whether a study's summary has the paper's top-1 (``val_top1``; a study written before it
    existed has only the evaluation pass's ``top1``)."""
    return any("val_top1" in r for r in summary.get("rows", {}).values())


def _top1_columns(summary: dict[str, Any] | None) -> list[tuple[str, str]]:
    if summary is None or has_paper_top1(summary):
        return list(TOP1)
    return [("top1", "Top-1")]


def _columns(methods: tuple[str, ...], summary: dict[str, Any] | None = None
             ) -> dict[str, list[tuple[str, str]]]:
    """Per method, the table's columns: the top-1 columns and every metric the summary's rows have."""
    rows = (summary or {}).get("rows", {})
    cols = {}
    for m in methods:
        cols[m] = _top1_columns(summary) + [(f"{m}/{k}", h) for k, h in METRICS[1:]
                                            if summary is None or any(f"{m}/{k}" in r for r in rows.values())]
    return cols


def table(study: dict[str, Any], method: str | None = None) -> str:
    """Markdown of a ``study.json``: the paper-layout table per explanation method."""
    methods = tuple(study["config"]["methods"]) if method is None else (method,)
    parts = []
    if method is None and study.get("verdicts"):
        parts.append("".join(f"- {v}\n" for v in study["verdicts"]))
    cols = _columns(methods, study["summary"])
    for m in methods:
        md = study_stats.markdown(study["summary"], cols[m])
        for name, d in study.get("per_image", {}).items():
            n = d.get(f"{m}/spg", {}).get("n", 0)
            md += (f"| *{name}, per (image, class) pair, n = {n}* | "
                   + " | ".join("–" if key in dict(TOP1) else study_stats.cell(d.get(key), signed=True)
                                for key, _ in cols[m]) + " |\n")
        n = study.get("common_pairs", {}).get(m)
        note = study["summary_note"] + (
            f"; PG, SPG and CH over the (image, class) pairs every row scored: {sum(n.values())} "
            f"in all" if n else "")
        parts.append(f"**{m}** ({note})\n\n" + md)
    return "\n".join(parts)


def check_one_recipe(studies: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """GridcamError naming the first ``(name, study)`` whose recipe differs from the first one's,
    and the fields that differ: every config field but :data:`~gridcam.study.config.NOT_RECIPE`
    that both files have (an older file may lack a newer field)."""
    if not studies:
        raise GridcamError("no results files to compare")
    first = studies[0][1]["config"]
    for name, study in studies[1:]:
        other = study["config"]
        differ = sorted(k for k in set(first) & set(other) if k not in NOT_RECIPE and first[k] != other[k])
        if differ:
            raise GridcamError(f"{name}: not the recipe of {studies[0][0]} ({', '.join(differ)} differ); "
                               "only runs of one recipe can be compared across machines")


def _top1_range(row: dict[str, Any], key: str) -> str:
    vals = (row.get(key) or {}).get("values") or []
    return f"{min(vals):.1f}–{max(vals):.1f}" if vals else "–"


def across(studies: Sequence[tuple[str, dict[str, Any]]], method: str = "gradcam", checked: bool = False) -> str:
    """Markdown: one study per line (``(label, study)``, the label naming e.g. the machine that
    ran it), to show how far runs of one recipe on several machines agree: the seeds, every row a
    comparison is made against with its top-1 over the seeds as lowest–highest, then per
    comparison the mean ± 95 % interval over seeds of ``method``'s SPG and CH gains and of the
    top-1 change, and the study's wall time. Top-1 is the paper's protocol where every study has
    it, else the evaluation pass's for all (one column, one protocol). GridcamError when the
    studies are not of one recipe (:func:`check_one_recipe`; ``checked``: the caller did that)."""
    if not checked:
        check_one_recipe(studies)
    names = list(dict.fromkeys(n for _, s in studies for n in s["summary"]["diffs"] if split_name(n)))
    bases = list(dict.fromkeys(split_name(n)[1] for n in names))
    key = "val_top1" if all(has_paper_top1(s["summary"]) for _, s in studies) else "top1"
    top1 = "top-1" if key == "val_top1" else "top-1 at eval size"
    head = (["Ran on", "Seeds"] + [f"{b} {top1}" for b in bases]
            + [f"*{n}* {h}" for n in names for h in ("SPG", "CH", top1)] + ["Wall time"])
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " :---: |" * (len(head) - 1)]
    for label, study in studies:
        rows, diffs = study["summary"]["rows"], study["summary"]["diffs"]
        cells = [label, str(study["config"].get("seeds", "–"))]
        cells += [_top1_range(rows.get(b, {}), key) for b in bases]
        for n in names:
            d = diffs.get(n, {})
            cells += [study_stats.cell(d.get(f"{method}/{m}"), signed=True) for m in ("spg", "ch")]
            cells.append(study_stats.cell(d.get(key), signed=True))
        wall = study.get("wall_seconds")
        cells.append(f"{float(wall) / 60:.1f} min" if wall else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdicts(summary: dict[str, Any], per_image: dict[str, Any]) -> list[str]:
    """One sentence per comparison (per-image intervals of Grad-CAM's SPG and CH, top-1 cost in
    the paper's protocol where the study has it, else at the evaluation size)."""
    out = []
    for name, diffs in per_image.items():
        d = summary["diffs"].get(name, {})
        out.append(pairs.verdict(name, diffs, d.get("val_top1") or d.get("top1")))
    return out


def load(out: str | Path) -> dict[str, Any]:
    """Read ``OUT/study.json`` (or a study.json path); GridcamError naming the file if unusable."""
    path = Path(out)
    if path.is_dir():
        path = path / "study.json"
    try:
        study = json.loads(path.read_text())
        study["summary"], study["config"]["methods"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GridcamError(f"{path}: not a readable study.json ({exc})") from None
    return study
