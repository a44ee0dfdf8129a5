"""Results as text: one block per explanation method, each in the layout of the paper's README."""

from __future__ import annotations

from typing import Any, Mapping

from gridcam.evaluation.totals import BEYOND, PERCENT

__all__ = ["BEYOND_HEADS", "format_table"]

#: Column heads of the beyond-localisation metrics (shown when computed).
BEYOND_HEADS = {"deletion": "Deletion AUC (%)", "insertion": "Insertion AUC (%)", "focus": "Focus (%)",
                "randomisation": "Randomisation (Spearman)"}


def format_table(results: Mapping[str, Any], multilabel: bool) -> str:
    """Markdown: per method a ``**method**`` line and a one-row table in the layout of the paper's
    README tables (accuracy or F1 columns, then PG, SPG, CH; then deletion, insertion, Focus and
    randomisation when computed; plus the pairs scored and skipped). The classification columns
    come from the same forward, so they repeat in every block."""
    cls = results["classification"]

    def f(v: Any, digits: int = 2) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    if multilabel:
        head = ["F1-PerClass (%)", "F1-Overall (%)"]
        first = [f(cls.get("f1_per_class")), f(cls.get("f1_overall"))]
    else:
        head = ["Top-1 Acc (%)", "Top-5 Acc (%)"]
        first = [f(cls.get("top1")), f(cls.get("top5"))]
    beyond = [k for k in BEYOND if any(BEYOND[k] in r for r in results["metrics"].values())]
    head += ["Pointing Game", "Stochastic Pointing Game", "Content Heatmap",
             *(BEYOND_HEADS[k] for k in beyond), "Pairs", "Skipped"]
    blocks = []
    for m, r in results["metrics"].items():
        row = [*first, f(r.get("pointing_game")), f(r.get("stochastic_pointing_game")),
               f(r.get("content_heatmap")),
               *(f(r.get(BEYOND[k]), 2 if k in PERCENT else 3) for k in beyond),
               str(r["evaluated"]), str(r["skipped"])]
        widths = [max(len(h), len(c)) for h, c in zip(head, row)]
        line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
        sep = "| " + " | ".join(("-" * w) if i >= len(head) - 2 else (":" + "-" * (w - 2) + ":")
                                 for i, w in enumerate(widths)) + " |"
        blocks.append("\n".join([f"**{m}**", "", line(head), sep, line(row)]))
    return "\n\n".join(blocks)
