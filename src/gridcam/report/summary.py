"""The results table in the paper's layout, and one plain sentence saying what it shows.

Both take :class:`Row` objects, so any producer can feed them: ``gridcam report`` makes one row per
(run, method) from ``results.json``; a study over several seeds makes rows whose ``metrics`` are
means and whose ``ci`` are 95 % half-widths, and may add its own paired-difference rows.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

#: Column key -> heading, in the paper's order (classification first, then localisation).
COLUMNS = {
    "top1": "Top-1 Acc (%)", "top5": "Top-5 Acc (%)",
    "f1_per_class": "F1-PerClass (%)", "f1_overall": "F1-Overall (%)",
    "pointing_game": "Pointing Game", "stochastic_pointing_game": "Stochastic Pointing Game",
    "content_heatmap": "Content Heatmap",
    # beyond localisation (docs/metrics.md): shown when the results have them
    "deletion_auc": "Deletion AUC (%)", "insertion_auc": "Insertion AUC (%)", "focus": "Focus (%)",
    "randomisation_rank_correlation": "Randomisation (Spearman)",
}
SHORT = {"top1": "top-1", "top5": "top-5", "f1_per_class": "per-class F1", "f1_overall": "overall F1",
         "pointing_game": "PG", "stochastic_pointing_game": "SPG", "content_heatmap": "CH",
         "deletion_auc": "deletion AUC", "insertion_auc": "insertion AUC", "focus": "Focus",
         "randomisation_rank_correlation": "randomisation rho"}


class _MethodNames(Mapping[str, str]):
    """Method key -> display name, read from the method registry (:func:`gridcam.cam.method_label`,
    the one source of the names ``gridcam methods`` shows); kept under its old name."""

    def __getitem__(self, key: str) -> str:
        from gridcam import cam

        if key not in cam.METHOD_INFO:
            raise KeyError(key)
        return cam.method_label(key)

    def __iter__(self) -> Iterator[str]:
        from gridcam import cam

        return iter(cam.METHOD_INFO)

    def __len__(self) -> int:
        from gridcam import cam

        return len(cam.METHOD_INFO)


#: Method key -> display name (the registry's labels; :func:`method_name` is the function).
METHOD_NAMES: Mapping[str, str] = _MethodNames()


def method_name(method: str) -> str:
    """The display name of ``method`` (``"gradcampp"`` -> ``"Grad-CAM++"``), else ``method``."""
    from gridcam import cam

    return cam.method_label(method)


@dataclass
class Row:
    """One line of the table: a model (``name``) explained by ``method``.

    ``metrics``: column key (see :data:`COLUMNS`) -> value in % (the randomisation test's
    Spearman rho in [-1, 1]); ``ci``: key -> half-width of a 95 %
    interval (optional); ``difference``: the row is a difference between two models (signed cells);
    ``images``: how many validation images the numbers come from (for the sentence).
    """

    name: str
    method: str
    metrics: Mapping[str, float | None]
    ci: Mapping[str, float] = field(default_factory=dict)
    difference: bool = False
    images: int | None = None
    #: the (image, class) pairs every compared model scored, when the localisation metrics were
    #: recomputed over them (see :func:`gridcam.report.runs.on_common_pairs`)
    pairs: int | None = None


def _cell(row: Row, key: str) -> str:
    v = row.metrics.get(key)
    if v is None:
        return "-"
    text = f"{v:+.2f}" if row.difference else f"{v:.2f}"
    if key in row.ci and row.ci[key] is not None:
        text += f" ± {row.ci[key]:.2f}"
    return text


def columns(rows: Sequence[Row]) -> list[str]:
    """The metric keys any row has, in the paper's order."""
    return [k for k in COLUMNS if any(r.metrics.get(k) is not None for r in rows)]


def with_differences(rows: Sequence[Row]) -> list[Row]:
    """``rows`` grouped by method, each group followed by "Δ other − reference" rows (the reference
    is the group's first model). Rows that already are differences are kept as given."""
    if any(r.difference for r in rows):
        return list(rows)
    out: list[Row] = []
    for method in dict.fromkeys(r.method for r in rows):
        group = [r for r in rows if r.method == method]
        out += group
        ref = group[0]
        for other in group[1:]:
            keys = set(ref.metrics) & set(other.metrics)
            out.append(Row(f"Δ {other.name} − {ref.name}", method, {
                k: other.metrics[k] - ref.metrics[k] for k in keys   # type: ignore[operator]
                if other.metrics[k] is not None and ref.metrics[k] is not None}, difference=True,
                pairs=ref.pairs if other.pairs == ref.pairs else None))
    return out


def results_table(rows: Sequence[Row], fmt: str = "markdown", differences: bool = True) -> str:
    """The table (one row per model and method, plus difference rows) as Markdown or HTML."""
    if differences:
        rows = with_differences(rows)
    keys = columns(rows)
    pairs = any(r.pairs is not None for r in rows)
    head = ["Model", "Method", *(COLUMNS[k] for k in keys), *(["Pairs"] if pairs else [])]
    body = [[r.name, method_name(r.method), *(_cell(r, k) for k in keys),
             *([str(r.pairs) if r.pairs is not None else "-"] if pairs else [])] for r in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |",
                 "| --- | --- | " + " | ".join(":---:" for _ in keys) + " |"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    if fmt != "html":
        raise ValueError(f"fmt must be 'markdown' or 'html', got {fmt!r}")
    e = html.escape
    out = ["<table class='results'><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for r, cells in zip(rows, body):
        cls = " class='diff'" if r.difference else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _compare(key: str, a: float, b: float, who: str, ref: str) -> str:
    d = a - b
    if abs(d) < 0.005:
        return f"{SHORT[key]} is equal ({a:.2f})"
    side = "above" if d > 0 else "below"
    return f"{SHORT[key]} is {abs(d):.2f} points {side} {ref}'s ({a:.2f} vs {b:.2f})"


def sentence(rows: Sequence[Row], method: str | None = None,
             paired_ci: Mapping[tuple[str, str], tuple[float, float, int]] | None = None) -> str:
    """What the numbers show, comparing each model with the first one, for ``method`` (default:
    Grad-CAM if present). ``paired_ci``: ``(model name, metric key) -> (low, high, n)``, a 95 %
    interval of the paired per-image difference to the first model. Claims only differences
    and says whether an interval includes zero; without intervals it says none are available.
    """
    return " ".join(sentences(rows, method, paired_ci))


def sentences(rows: Sequence[Row], method: str | None = None,
              paired_ci: Mapping[tuple[str, str], tuple[float, float, int]] | None = None) -> list[str]:
    """:func:`sentence` as a list: one entry per model compared with the first (the report page
    shows them as a list)."""
    rows = [r for r in rows if not r.difference]
    if not rows:
        return ["No results to compare."]
    methods = list(dict.fromkeys(r.method for r in rows))
    method = method if method in methods else ("gradcam" if "gradcam" in methods else methods[0])
    group = [r for r in rows if r.method == method]
    ref = group[0]
    n = ref.images
    where = f" on {n} validation images" if n else ""
    if ref.pairs is not None and all(r.pairs == ref.pairs for r in group):
        where += f" (localisation over the {ref.pairs} (image, class) pairs every model scored)"
    if len(group) == 1:
        vals = ", ".join(f"{SHORT[k]} {ref.metrics[k]:.2f}" for k in columns([ref]))
        return [f"{ref.name} with {method_name(method)}{where}: {vals}."]
    parts = []
    loc = [k for k in ("stochastic_pointing_game", "content_heatmap", "pointing_game") if k in columns(group)]
    cls = [k for k in ("top1", "f1_overall") if k in columns(group)]
    for other in group[1:]:
        bits = [_compare(k, other.metrics[k], ref.metrics[k], other.name, ref.name)  # type: ignore[arg-type]
                for k in loc if other.metrics.get(k) is not None and ref.metrics.get(k) is not None]
        text = f"With {method_name(method)}{where}, {other.name}'s " + "; its ".join(bits)
        for k in cls:
            if other.metrics.get(k) is not None and ref.metrics.get(k) is not None:
                d = other.metrics[k] - ref.metrics[k]  # type: ignore[operator]
                text += (f"; {SHORT[k]} is " + (f"{abs(d):.2f} points {'higher' if d > 0 else 'lower'}"
                         if abs(d) >= 0.005 else "equal") + f" ({other.metrics[k]:.2f} vs {ref.metrics[k]:.2f})")
        text += "."
        noise = _noise(other.name, loc, paired_ci or {}, n, cls[0] if cls else None)
        parts.append(text + (" " + noise if noise else ""))
    return parts


def _noise(name: str, keys: Sequence[str], paired_ci: Mapping[tuple[str, str], tuple[float, float, int]],
           n: int | None, cls_key: str | None) -> str:
    notes = []
    for k in keys:
        if (name, k) in paired_ci:
            lo, hi, pairs = paired_ci[(name, k)]
            verdict = "includes 0, so the difference is within noise" if lo <= 0 <= hi else "excludes 0"
            notes.append(f"the 95% interval of the paired {SHORT[k]} difference over {pairs} pairs is "
                         f"[{lo:+.2f}, {hi:+.2f}] and {verdict}")
    one_image = f" (one image is {100 / n:.2f} points)" if n and cls_key == "top1" else ""
    if notes:
        label = SHORT[cls_key][0].upper() + SHORT[cls_key][1:] if cls_key else ""
        tail = f" {label} has no interval{one_image}." if cls_key else ""
        return notes[0][0].upper() + "; ".join(notes)[1:] + "." + tail
    if n and cls_key == "top1":
        return (f"No intervals are available (one run each); with {n} images, one image moves top-1 "
                f"by {100 / n:.2f} points.")
    return "No intervals are available (one run each)."
