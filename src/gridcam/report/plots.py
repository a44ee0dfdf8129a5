"""Training curves from ``train_log.jsonl`` records, drawn with matplotlib's Agg backend (no display)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

#: (title, getter) of each panel; a panel is drawn only when some run has values for it.
PANELS = (
    ("training loss (total)", lambda r: (r.get("train") or {}).get("loss")),
    ("GC loss (training)", lambda r: (r.get("train") or {}).get("gc_loss")),
    ("validation top-1 (%)", lambda r: (r.get("val") or {}).get("top1")),
    ("validation F1 overall (%)", lambda r: (r.get("val") or {}).get("f1_overall")),
)


def _number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def curves(logs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """``{panel title: {run name: (epochs, values)}}`` from each run's epoch records (records without
    an epoch, e.g. evaluation-only lines, are ignored; a resumed epoch logged twice keeps the last)."""
    out: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for title, get in PANELS:
        for name, records in logs.items():
            by_epoch: dict[int, float] = {}
            for r in records:
                if r.get("evaluate") or not isinstance(r.get("epoch"), int):
                    continue
                v = _number(get(r))
                if v is not None:
                    by_epoch[r["epoch"]] = v
            if by_epoch:
                xs = sorted(by_epoch)
                out.setdefault(title, {})[name] = (xs, [by_epoch[x] for x in xs])
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
        for name, (xs, ys) in runs.items():
            ax.plot(xs, ys, marker="o", markersize=3, color=colors[name], label=name)
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
