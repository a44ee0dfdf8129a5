"""A finished study read and shown: ``study.json`` loaded (:func:`load`), its paper-layout
Markdown tables (:func:`table`) and its one-sentence verdicts (:func:`verdicts`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gridcam.errors import GridcamError
from gridcam.study import pairs
from gridcam.study import stats as study_stats
from gridcam.study.config import METRICS

__all__ = ["load", "table", "verdicts"]


#: the top-1 columns: the paper's protocol (val at the training size, from the rows' training logs)
#: and the localisation pass's (val at the evaluation size); a study without the first (written
#: before it existed) shows the second as "Top-1", as it did then
TOP1 = (("val_top1", "Top-1"), ("top1", "Top-1 at eval size"))


def _top1_columns(summary: dict[str, Any] | None) -> list[tuple[str, str]]:
    rows = (summary or {}).get("rows", {})
    if summary is None or any("val_top1" in r for r in rows.values()):
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
