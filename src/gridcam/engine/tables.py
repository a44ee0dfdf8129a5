"""Results as text: the paper's README table layout, one row per explanation method."""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["format_table"]


def format_table(results: Mapping[str, Any], multilabel: bool) -> str:
    """Markdown table in the layout of the paper's README tables, one row per method."""
    cls = results["classification"]

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}"

    if multilabel:
        head = ["Method", "F1-PerClass (%)", "F1-Overall (%)"]
        first = [f(cls.get("f1_per_class")), f(cls.get("f1_overall"))]
    else:
        head = ["Method", "Top-1 Acc (%)", "Top-5 Acc (%)"]
        first = [f(cls.get("top1")), f(cls.get("top5"))]
    head += ["Pointing Game", "Stochastic Pointing Game", "Content Heatmap", "Pairs", "Skipped"]
    rows = []
    for m, r in results["metrics"].items():
        rows.append([m, *first, f(r.get("pointing_game")), f(r.get("stochastic_pointing_game")),
                     f(r.get("content_heatmap")), str(r["evaluated"]), str(r["skipped"])])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])
