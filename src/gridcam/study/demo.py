"""``gridcam demo``: the study's ``quick`` preset (``gridcam study --preset quick``) plus an HTML page.

1. writes the synthetic ImageNet-style dataset of the preset (real JPEGs, real VOC XML) — or reuses it;
2. trains the paper's four rows (Baseline, Ours: GC, GMP, Ours: GMP + GC) for one seed with the
   same data and schedule, through the training engine (:mod:`gridcam.study.runner`);
3. scores every model with the pointing game, the stochastic pointing game and the content
   heatmap, for Grad-CAM and the gradient-based methods, in one pass each;
4. writes ``OUT/study.json``, ``OUT/study.md`` and ``OUT/report/index.html``: the page of
   ``gridcam report`` over the four rows' runs (curves, the table in the paper's layout with the
   differences, heatmaps of every row side by side, a training composite, a plain sentence).

Every step is resumable: rerunning the same command reuses the data, continues unfinished training
from its checkpoints and reuses finished evaluations. One seed says little: ``gridcam study
--preset cpu`` repeats it over 3 seeds with 95 % intervals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gridcam.study import runner as study
from gridcam.study.tables import has_paper_top1

METHODS = study.METHODS


def run(out: str | Path, **overrides: Any) -> dict[str, Any]:
    """Run the quick study into ``out`` (``overrides``: :class:`study.StudyConfig` fields), write
    the report page of its seed-0 runs, and return the study dict (see :func:`study.run_study`)."""
    from gridcam.report.run_report import ReportConfig, build

    config = study.config_for("quick", out=str(out), **overrides)
    print(f"[demo] {study.describe(config)}", flush=True)
    result = study.run_study(config)
    out = Path(out)
    rows = [r for r in study.ROWS if r.slug in config.rows]
    page = build(ReportConfig(runs=[str(out / "runs" / r.slug / "seed0") for r in rows],
                              names=[r.name for r in rows], out=str(out / "report"),
                              input_resize=config.eval_resize, verdicts=_page_lines(result, config),
                              title="gridcam demo: the paper's four rows on synthetic data (seed 0)"))
    print(study.table(result), end="")
    print(f"[demo] done in {result['wall_seconds']:.0f}s; report: {page['page']}")
    return result


def _page_lines(result: dict[str, Any], config: Any) -> list[str] | None:
    """The study's verdicts, then which top-1 the page's table shows (the evaluation pass's, at
    ``eval_resize``) against the verdicts' (the paper's protocol, at the training size)."""
    lines = list(result.get("verdicts") or [])
    if lines and has_paper_top1(result["summary"]):
        lines.append(f"The verdicts' top-1 is the paper's (val images at the {config.image_size} px training "
                     f"size); the table's Top-1 Acc is the localisation pass's, at {config.eval_resize} px "
                     "(docs/study.md, \"Two top-1 columns\").")
    return lines or None
