"""Statistics and tables of ``gridcam study``: means with t-intervals, paired differences.

Pure functions on plain numbers (no I/O): the study engine collects one value per (row, seed,
metric) and these turn them into the paper-layout table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["t_quantile", "mean_ci", "paired", "pair_name", "split_name", "summarize", "markdown", "cell"]

# two-sided 95 % Student t quantiles t_{0.975, df}, df = 1..30
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t_quantile(df: int) -> float:
    """``t_{0.975}`` with ``df`` degrees of freedom (df >= 1; beyond 30, a 1/df expansion)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    return 1.95996 + 2.3722 / df + 2.8224 / df**2


def mean_ci(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "half", "n", "values"}``: the mean and the half-width of its 95 % t-interval.

    ``half`` is None for fewer than two values (no interval from one seed).
    """
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return {"mean": None, "half": None, "n": 0, "values": []}
    m = sum(xs) / n
    half = None
    if n >= 2:
        sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
        half = t_quantile(n - 1) * sd / math.sqrt(n)
    return {"mean": m, "half": half, "n": n, "values": xs}


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, Any]:
    """Paired difference ``a - b`` over the seeds both have: :func:`mean_ci` of the differences."""
    seeds = sorted(set(a) & set(b))
    out = mean_ci([a[s] - b[s] for s in seeds])
    out["seeds"] = seeds
    return out


def pair_name(row: str, base: str) -> str:
    """The key of a paired difference: ``"row - base"`` (e.g. ``"Ours: GC - Baseline"``)."""
    return f"{row} - {base}"


def split_name(name: str) -> tuple[str, str] | None:
    """``(row, base)`` of a :func:`pair_name` key; None for a name that is not one."""
    row, sep, base = name.rpartition(" - ")
    return (row, base) if sep and row and base else None


def summarize(values: Mapping[str, Mapping[str, Mapping[int, float]]],
              pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``values[row][metric][seed]`` -> ``{"rows": {row: {metric: mean_ci}}, "diffs": {...}}``.

    ``pairs``: (row, baseline row) pairs whose paired differences are reported, keyed
    ``"row - baseline"``.
    """
    rows = {r: {m: mean_ci([v[s] for s in sorted(v)]) for m, v in ms.items()} for r, ms in values.items()}
    diffs = {}
    for r, base in pairs:
        if r in values and base in values:
            diffs[pair_name(r, base)] = {m: paired(values[r][m], values[base][m])
                                      for m in values[r] if m in values[base]}
    return {"rows": rows, "diffs": diffs}


def cell(stat: Mapping[str, Any] | None, signed: bool = False) -> str:
    """``mean`` or ``mean ± half`` with two decimals (signed for differences); "–" when empty."""
    if not stat or stat.get("mean") is None:
        return "–"
    text = f"{stat['mean']:+.2f}" if signed else f"{stat['mean']:.2f}"
    return text if stat.get("half") is None else f"{text} ± {stat['half']:.2f}"


def markdown(summary: Mapping[str, Any], columns: Sequence[tuple[str, str]]) -> str:
    """The paper-layout table: one line per row (mean ± 95 % CI half-width), then the differences.

    ``columns``: (metric key, header) pairs, e.g. ``("top1", "Top-1")``.
    """
    head = "| Model | " + " | ".join(h for _, h in columns) + " |"
    lines = [head, "| --- |" + " :---: |" * len(columns)]
    for row, ms in summary["rows"].items():
        lines.append(f"| {row} | " + " | ".join(cell(ms.get(k)) for k, _ in columns) + " |")
    for name, ms in summary["diffs"].items():
        lines.append(f"| *{name}* | " + " | ".join(cell(ms.get(k), signed=True) for k, _ in columns) + " |")
    return "\n".join(lines) + "\n"
