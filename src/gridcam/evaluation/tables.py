"""Results as text: one block per explanation method, each in the layout of the paper's README."""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["format_table"]


def format_table(results: Mapping[str, Any], multilabel: bool) -> str:
    """Markdown: per method a ``**method**`` line and a one-row table in the layout of the paper's
    README tables (accuracy or F1 columns, then PG, SPG, CH; plus the pairs scored and skipped).
    The classification columns come from the same forward, so they repeat in every block."""
    cls = results["classification"]

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}"

    if multilabel:
        head = ["F1-PerClass (%)", "F1-Overall (%)"]
        first = [f(cls.get("f1_per_class")), f(cls.get("f1_overall"))]
    else:
        head = ["Top-1 Acc (%)", "Top-5 Acc (%)"]
        first = [f(cls.get("top1")), f(cls.get("top5"))]
    head += ["Pointing Game", "Stochastic Pointing Game", "Content Heatmap", "Pairs", "Skipped"]
    blocks = []
    for m, r in results["metrics"].items():
        row = [*first, f(r.get("pointing_game")), f(r.get("stochastic_pointing_game")),
               f(r.get("content_heatmap")), str(r["evaluated"]), str(r["skipped"])]
        widths = [max(len(h), len(c)) for h, c in zip(head, row)]
        line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
        sep = "| " + " | ".join(("-" * w) if i >= len(head) - 2 else (":" + "-" * (w - 2) + ":")
                                 for i, w in enumerate(widths)) + " |"
        blocks.append("\n".join([f"**{m}**", "", line(head), sep, line(row)]))
    return "\n\n".join(blocks)
