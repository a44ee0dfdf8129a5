"""Training curves from ``train_log.jsonl`` records, drawn with matplotlib's Agg backend (no display)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

#: (title, getter, index in a record's ``train.curve`` points or None) of each panel; a panel is
#: drawn only when some run has values for it.
PANELS = (
    ("training loss (total)", lambda r: (r.get("train") or {}).get("loss"), 1),
    ("GC loss (training)", lambda r: (r.get("train") or {}).get("gc_loss"), 2),
    ("validation top-1 (%)", lambda r: (r.get("val") or {}).get("top1"), None),
    ("validation F1 overall (%)", lambda r: (r.get("val") or {}).get("f1_overall"), None),
)


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _points(record: Mapping[str, Any], get: Any, index: int | None) -> list[tuple[float, float]]:
    """One epoch record's (x, value) points: the steps of its ``train.curve`` at x = epoch - 1 +
    fraction done (a short run still draws a curve), else the epoch's value at x = epoch."""
    epoch = record["epoch"]
    curve = (record.get("train") or {}).get("curve") if index is not None else None
    if isinstance(curve, list) and curve:
        pts = [(epoch - 1 + float(p[0]), _number(p[index])) for p in curve
               if isinstance(p, (list, tuple)) and len(p) > index]
        return [(x, v) for x, v in pts if v is not None]
    v = _number(get(record))
    return [] if v is None else [(float(epoch), v)]


def curves(logs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """``{panel title: {run name: (x, values)}}`` from each run's epoch records (records without
    an epoch, e.g. evaluation-only lines, are ignored; a resumed epoch logged twice keeps the last).
    Training losses follow the records' within-epoch ``curve`` where they have one."""
    out: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for title, get, index in PANELS:
        for name, records in logs.items():
            by_epoch = {r["epoch"]: r for r in records
                        if not r.get("evaluate") and isinstance(r.get("epoch"), int)}
            pts = [p for e in sorted(by_epoch) for p in _points(by_epoch[e], get, index)]
            if pts:
                out.setdefault(title, {})[name] = ([x for x, _ in pts], [v for _, v in pts])
    return out


def plot_curves(logs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> Path | None:
    """One PNG with a panel per available quantity, one line per run; ``None`` if nothing to plot."""
    data = curves(logs)
    if not data:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6 * len(data), 3.0), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(data), squeeze=False)[0]
    colors = {name: f"C{i}" for i, name in enumerate(logs)}
    for ax, (title, runs) in zip(axes, data.items()):
        if all(len(xs) == 1 for xs, _ in runs.values()):
            _values(ax, title, runs, colors)  # one value per run (e.g. one epoch's validation): no curve
            continue
        for name, (xs, ys) in runs.items():
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, color=colors[name], label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch (≤ 0: the pre-training it started from)"
                      if any(x <= 0 for xs, _ in runs.values() for x in xs) else "epoch", fontsize=9)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes[0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for ax in axes[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen.keys()), loc="outside lower center", ncol=max(1, len(seen)),
               fontsize=9, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _values(ax: Any, title: str, runs: Mapping[str, tuple[list[float], list[float]]],
            colors: Mapping[str, str]) -> None:
    """A panel where every run has one value: a labelled horizontal bar per run, the axis starting
    a little below the smallest value so that differences show."""
    names = list(runs)
    vals = [runs[n][1][0] for n in names]
    lo, hi = min(vals), max(vals)
    pad = max(1.0, (hi - lo) * 0.5)
    ax.barh(range(len(names)), [v - (lo - pad) for v in vals], left=lo - pad,
            color=[colors[n] for n in names], label=names)
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(lo - pad, hi + pad)
    epoch = int(next(iter(runs.values()))[0][0])
    ax.set_title(f"{title}, epoch {epoch}" if all(int(x[0]) == epoch for x, _ in runs.values()) else title,
                 fontsize=10)
    ax.grid(alpha=0.3, axis="x")
