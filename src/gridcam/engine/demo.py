"""``gridcam demo``: the study's ``quick`` preset (``gridcam study --preset quick``) plus an HTML page.

1. writes the synthetic ImageNet-style dataset of the preset (real JPEGs, real VOC XML) — or reuses it;
2. trains the paper's four rows (Baseline, Ours: GC, GMP, Ours: GMP + GC) for one seed with the
   same data and schedule, through the training engine (:mod:`gridcam.engine.study`);
3. scores every model with the pointing game, the stochastic pointing game and the content
   heatmap, for Grad-CAM and the gradient-based methods, in one pass each;
4. writes ``OUT/study.json``, ``OUT/study.md`` and ``OUT/report/index.html`` (the table in the
   paper's layout and Grad-CAM overlays of every row).

Every step is resumable: rerunning the same command reuses the data, continues unfinished training
from its checkpoints and reuses finished evaluations. One seed says little: ``gridcam study
--preset cpu`` repeats it over 3 seeds with 95 % intervals.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gridcam import cam, data, models
from gridcam.data.transforms import eval_transform
from gridcam.engine import study
from gridcam.engine.checkpoint import checkpoint_name
from gridcam.engine.study_stats import cell
from gridcam.report import overlay, save_overlay_grid, write_report

METHODS = study.METHODS


def run(out: str | Path, **overrides: Any) -> dict[str, Any]:
    """Run the quick study into ``out`` (``overrides``: :class:`study.StudyConfig` fields); write
    the page; return the study dict (see :func:`study.run_study`)."""
    config = study.config_for("quick", out=str(out), **overrides)
    print(f"[demo] {study.describe(config)}", flush=True)
    result = study.run_study(config)
    out = Path(out)
    rows = [r for r in study.ROWS if r.slug in config.rows]
    checkpoints = {r.name: out / "runs" / r.slug / "seed0" / checkpoint_name(config.epochs) for r in rows}
    sheet = _overlay_sheet(Path(result["config"]["data_root"]), checkpoints, config.eval_resize,
                           out / "report" / "heatmaps.png")
    tables = {}
    for method in config.methods:
        headers, body = _rows(result, method)
        tables[f"{method}: {result['summary_note']}"] = (headers, body)
    page = write_report(
        out / "report" / "index.html", "gridcam demo: the paper's four rows on synthetic data", tables,
        images={"Grad-CAM (elementwise) of the true class: image + box | " + " | ".join(checkpoints): sheet},
        notes=[study.describe(config),
               "PG/SPG: tolerance 15 px, SPG 100 draws; CH: heatmap mass inside the box. "
               f"Data: {result['config']['data_root']}."])
    print(study.table(result), end="")
    print(f"[demo] done in {result['wall_seconds']:.0f}s; report: {page}")
    return result


def _rows(result: dict[str, Any], method: str) -> tuple[list[str], list[list[object]]]:
    headers = ["Model", "Top-1 Acc (%)", "Pointing Game", "Stochastic Pointing Game", "Content Heatmap"]
    keys = ["top1", f"{method}/pg", f"{method}/spg", f"{method}/ch"]
    body: list[list[object]] = []
    for name, ms in result["summary"]["rows"].items():
        body.append([name, *(cell(ms.get(k)) for k in keys)])
    for name, ms in result["summary"]["diffs"].items():
        body.append([name, *(cell(ms.get(k), signed=True) for k in keys)])
    return headers, body


def _overlay_sheet(root: Path, checkpoints: dict[str, Path], resize: int, path: Path, n: int = 6) -> Path:
    """Rows of (image with its box, one Grad-CAM per model) for the first ``n`` val images."""
    from PIL import Image

    ds = data.ImageNetValLoc(root, transform=eval_transform(resize))
    nets = {name: models.create_from_checkpoint(ckpt)[0].eval() for name, ckpt in checkpoints.items()}
    rows = []
    for i in range(min(n, len(ds))):
        item = ds[i]
        if item is None:
            continue
        image = Image.open(item["path"]).convert("RGB")
        ys, xs = item["masks"][0].nonzero(as_tuple=True)
        box = [(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))] if len(ys) else []
        row = [overlay(image, item["masks"][0].new_zeros(1, 1).float(), alpha=0.0, boxes=box)]
        for model in nets.values():
            heat, _ = cam.explain("gradcam", model, models.cam_layer(model), item["image"][None],
                                  item["classes"][None, :1])
            row.append(overlay(image, cam.upsample(heat[:, 0], item["size"])[0], boxes=box))
        rows.append(row)
    return save_overlay_grid(rows, path, labels=["image", *nets])


def main(args: argparse.Namespace) -> int:
    run(args.out, epochs=args.epochs, lam=args.lam, seeds=args.seeds)
    return 0
