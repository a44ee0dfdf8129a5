"""``gridcam report``: one page comparing finished runs (the demo's page is this report).

The page ``OUT/index.html`` has, in order: a plain sentence saying what the numbers show (and
whether differences are within noise), the results table in the paper's layout with the differences
to the first run, training curves, side-by-side heatmaps of the models on the same validation
images with the ground truth drawn (half chosen where the models disagree most, half where they
agree), and one training composite (the 2x2 image, its target map, each model's map of it).
Pictures are PNG files beside the page, so the folder moves as one.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from gridcam.errors import GridcamError
from gridcam.report.names import class_names
from gridcam.report.explain import class_lines
from gridcam.report.overlay import (SCALE_NOTE, captioned, check_picture_options, for_display, heat_panel,
                                    mask_outline, sheet)
from gridcam.report.plots import plot_curves
from gridcam.report.runs import (Run, choose_images, load_run, on_common_pairs, pair_scores, paired_ci,
                                 rows_from_runs)
from gridcam.report.summary import method_name, results_table, sentences

CELL = 200


@dataclass
class ReportConfig:
    """Settings of one ``gridcam report`` run."""

    runs: Sequence[str]
    out: str = "report"
    names: Sequence[str] | None = None
    images: int = 6
    candidates: int = 48
    method: str = "gradcam"
    title: str | None = None
    input_resize: int | None = None
    #: heatmap opacity in [0, 1] and matplotlib colormap of the heatmap pictures
    alpha: float = 0.5
    cmap: str = "jet"
    #: verdict lines to show first instead of the computed ones (the study's per-image verdicts)
    verdicts: Sequence[str] | None = None


@dataclass
class Loaded:
    run: Run
    model: torch.nn.Module
    layer: torch.nn.Module
    meta: dict[str, Any]


def _load_models(runs: Sequence[Run]) -> list[Loaded]:
    from gridcam import models

    out = []
    for run in runs:
        if run.checkpoint is None:
            continue
        model, meta = models.create_from_checkpoint(run.checkpoint)
        out.append(Loaded(run, model.eval(), models.cam_layer(model), meta))
    return out


def _dataset(first: Loaded, input_resize: int):
    """The validation set the first run was evaluated (or trained) on; ``None`` if not found."""
    from gridcam import data
    from gridcam.data.transforms import eval_transform

    cfg = first.run.config
    args = first.meta.get("args") or {}
    root = cfg.get("root") or args.get("data")
    kind = cfg.get("dataset") or first.meta.get("dataset") or args.get("dataset") or "imagenet"
    if not root or not Path(root).is_dir():
        return None
    try:
        if kind == "coco":
            return data.CocoLoc(root, split=cfg.get("split") or args.get("val_split") or "val2014",
                                transform=eval_transform(input_resize))
        return data.ImageNetValLoc(root, classes=first.meta.get("classes"), transform=eval_transform(input_resize))
    except GridcamError:
        return None


def _heat(lm: Loaded, method: str, item: dict[str, Any], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(H,W) heatmap of class index ``k`` at the original size, normalised to sum 1 (zeros if
    empty), and the model's class probabilities (C,) for the image (sigmoid for a multi-label
    model, softmax otherwise)."""
    from gridcam import cam

    heat, logits = cam.explain(method, lm.model, lm.layer, item["image"][None], torch.tensor([[k]]))
    heat = cam.upsample(heat.detach().float()[:, 0], item["size"])[0].clamp_min(0)
    s = heat.sum()
    logits = logits.detach().float()[0]
    probs = torch.sigmoid(logits) if _multilabel(lm) else torch.softmax(logits, dim=0)
    return (heat / s if s > 0 else heat), probs


def _multilabel(lm: Loaded) -> bool:
    kind = lm.run.config.get("dataset") or lm.meta.get("dataset") or (lm.meta.get("args") or {}).get("dataset")
    return kind == "coco"


def _candidate_scores(loaded: Sequence[Loaded], ds, method: str, n: int) -> dict[tuple[int, int], list[float]]:
    """Per (image, class): each model's content heatmap (mass inside the mask), on ``n`` images
    spread over the validation set (used when no per-image JSONL is available)."""
    step = max(1, len(ds) // max(1, n))
    scores = {}
    for i in range(0, len(ds), step)[:n]:
        item = ds[i]
        if item is None or len(item["classes"]) == 0:
            continue
        k = int(item["classes"][0])
        mask = item["masks"][0]
        scores[(i, k)] = [float(_heat(lm, method, item, k)[0][mask].sum()) for lm in loaded]
    return scores


def heatmap_comparison(loaded: Sequence[Loaded], ds, cfg: ReportConfig, names: list[str], path: Path) -> tuple[Path, str] | None:
    """The side-by-side sheet; returns (path, how the images were chosen)."""
    method = cfg.method
    runs = [lm.run for lm in loaded]
    if all(r.per_image is not None for r in runs):
        per = [pair_scores(r.per_image, method) for r in runs]  # type: ignore[arg-type]
        common = set(per[0]).intersection(*per[1:])
        scores = {k: [p[k].get("spg", p[k].get("ch", 0.0)) for p in per] for k in common}
        how, metric = "the per-image stochastic pointing game of the evaluation (per-image JSONL)", "SPG"
    else:
        scores = _candidate_scores(loaded, ds, method, cfg.candidates)
        how, metric = f"the content heatmap computed here on {len(scores)} validation images", "CH"
    chosen = choose_images(scores, cfg.images)
    if not chosen:
        return None
    rows = []
    for (i, k), why in chosen:
        item = ds[i]
        if item is None:
            continue
        image = _load(item["path"])
        present = item["classes"].tolist()
        mask = item["masks"][present.index(k)] if k in present else None
        shown = for_display(image, CELL, 2 * CELL)
        ground = mask_outline(shown, mask) if mask is not None else shown
        maps = [_heat(lm, method, item, k) for lm in loaded]
        captions = [[f"{Path(item['path']).name}", f"{names[k]}: {why}"],
                    *([f"{metric} {100 * s:.1f} %", *class_lines(names, probs, k)]
                      for s, (_, probs) in zip(scores[(i, k)], maps))]
        n = max(map(len, captions))   # blank lines first: the pictures of a row line up
        captions = [[""] * (n - len(c)) + c for c in captions]
        cells = [captioned(ground, captions[0], size=12, width=CELL + 40)]
        cells += [heat_panel(image, heat, lines, height=CELL, max_width=2 * CELL, alpha=cfg.alpha,
                             cmap=cfg.cmap, mask=mask) for (heat, _), lines in zip(maps, captions[1:])]
        rows.append(cells)
    img = sheet(rows, col_labels=["image + ground truth", *(lm.run.name for lm in loaded)], note=SCALE_NOTE)
    img.save(path)
    return path, how


def _load(path: str) -> Image.Image:
    from gridcam.data.io import load_image

    return load_image(path)


def _composite_items(ds) -> list[tuple[int, int]] | None:
    """(dataset index, class) of the first usable image and of three negatives (images without its
    class; of distinct classes when the data has them)."""
    first: tuple[int, int] | None = None
    negatives: list[tuple[int, int]] = []
    for i in range(len(ds)):
        item = ds[i]
        if item is None or len(item["classes"]) == 0:
            continue
        present = item["classes"].tolist()
        if first is None:
            first = (i, int(present[0]))
        elif first[1] not in present:
            negatives.append((i, int(present[0])))
            if len({c for _, c in negatives}) >= 3:
                break
    if first is None or len(negatives) < 3:
        return None
    distinct: dict[int, tuple[int, int]] = {}
    for t in negatives:
        distinct.setdefault(t[1], t)
    ordered = list(distinct.values()) + [t for t in negatives if t not in distinct.values()]
    return [first, *ordered[:3]]


def training_composite(loaded: Sequence[Loaded], ds, path: Path, size: int, alpha: float = 0.5,
                       cmap: str = "jet") -> Path | None:
    """Rows per model: the 2x2 composite (image of class c top-right, three of other classes), its
    target map (the image's own normalised Grad-CAM placed in its quadrant) and the model's Grad-CAM
    of the composite for c, with the consistency loss (mean |u - T|) of that example."""
    from gridcam import cam, grid
    from gridcam.data import transforms as T

    to_tensor = T.Compose([T.Resize((size, size)), T.to_tensor_normalize()], allow_draft=False)
    items = _composite_items(ds)
    if items is None:
        return None
    picked = [(to_tensor(_load(ds[i]["path"])), c) for i, c in items]
    x, c = picked[0][0][None], picked[0][1]
    q = torch.tensor([1])
    composite = grid.compose(x, torch.stack([p[0] for p in picked[1:]])[None], q)
    shown = Image.fromarray((T.denormalize(composite[0]).permute(1, 2, 0).numpy() * 255).astype("uint8"))
    target_cls = torch.tensor([c])
    rows = []
    for lm in loaded:
        with cam.capture(lm.layer) as feats:
            logits = lm.model(x)
        t = cam.grad_cam(logits, feats.output, target_cls)
        with cam.capture(lm.layer) as feats:
            logits = lm.model(composite)
        u = cam.grad_cam(logits, feats.output, target_cls)
        target = grid.place(t, q)
        loss = (f"mean |u - T| = {float(grid.consistency_loss(u, target)):.4f}"
                if u.shape == target.shape else "maps of different sizes")
        panel = dict(height=CELL, max_width=CELL, alpha=alpha, cmap=cmap, size=12)
        rows.append([captioned(for_display(shown, CELL, CELL), ["composite (class at top right)", ""], size=12),
                     heat_panel(shown, target[0].detach(), ["target T: own map, placed", ""], **panel),
                     heat_panel(shown, u[0].detach(), ["model's map u", loss], **panel)])
    sheet(rows, row_labels=[lm.run.name for lm in loaded], note=SCALE_NOTE).save(path)
    return path


def _curves_logs(runs: Sequence[Run]) -> dict[str, list[dict[str, Any]]]:
    return {r.name: r.log for r in runs if r.log}


def build(cfg: ReportConfig) -> dict[str, Any]:
    """Write the page; return ``{"page", "markdown", "sentence", "verdicts", "rows"}``."""
    from gridcam import cam

    if cfg.method not in cam.list_methods():
        raise GridcamError(f"--method {cfg.method}: unknown (choose from {', '.join(cam.list_methods())})")
    check_picture_options(alpha=cfg.alpha, cmap=cfg.cmap, input_resize=cfg.input_resize)
    names = list(cfg.names or [])
    runs = [load_run(p, names[i] if i < len(names) else None) for i, p in enumerate(cfg.runs)]
    if len({r.name for r in runs}) < len(runs):
        for r in runs:
            r.name = f"{r.path.parent.name}/{r.path.name}"
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = on_common_pairs(rows_from_runs(runs), runs)
    ci = paired_ci(runs, cfg.method)
    items = list(cfg.verdicts) if cfg.verdicts else sentences(rows, method=cfg.method, paired_ci=ci)
    missing = [r.name for r in runs if r.results is None]
    if missing:
        items.append(f"No evaluation results in: {', '.join(missing)}.")
    text = " ".join(items)
    figures: list[tuple[str, Path, str]] = []
    curves = plot_curves(_curves_logs(runs), out / "curves.png")
    if curves is not None:
        figures.append(("Training curves", curves, "One line per run; epochs as logged in train_log.jsonl."))
    loaded = _load_models(runs)
    if loaded:
        first = loaded[0]
        resize = cfg.input_resize or int(first.run.config.get("input_resize") or 224)
        ds = _dataset(first, resize)
        if ds is not None and len(ds):
            classes = class_names(_num_outputs(first.model), first.meta, near=[ds.root] if hasattr(ds, "root") else [])
            got = heatmap_comparison(loaded, ds, cfg, classes, out / "heatmaps.png")
            if got is not None:
                figures.append((f"{method_name(cfg.method)} of the same validation images",
                                got[0], f"Ground truth outlined in white. Chosen by {got[1]}: half where "
                                "the models disagree most, half where they agree."))
            size = int((first.meta.get("args") or {}).get("image_size") or resize)
            comp = training_composite(loaded, ds, out / "composite.png", size, cfg.alpha, cfg.cmap)
            if comp is not None:
                figures.append(("One training composite", comp,
                                "Grad-CAM consistency compares the model's map of the 2x2 image (u) with the "
                                "image's own map placed in its quadrant (T)."))
    title = cfg.title or "gridcam report: " + " vs ".join(r.name for r in runs)
    page = write_page(out / "index.html", title, runs, rows, items, figures)
    return {"page": page, "markdown": results_table(rows, "markdown") if rows else "", "sentence": text,
            "verdicts": items,
            "rows": rows}


def _num_outputs(model: torch.nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return int(last[-1].out_features) if last else 0


def write_page(path: Path, title: str, runs: Sequence[Run], rows: list, verdicts: Sequence[str],
               figures: Sequence[tuple[str, Path, str]]) -> Path:
    """The HTML page; pictures are linked relative to it."""
    from gridcam.runtime.files import atomic_file

    e = html.escape
    parts = [f"<!doctype html><html lang='en'><meta charset='utf-8'><title>{e(title)}</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
             "color:#222;line-height:1.4}h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;"
             "border-bottom:1px solid #ddd}ul.summary{font-size:1.05em;background:#f4f7fb;padding:.8em 1em .8em 2em;"
             "border-left:4px solid #4a7bd0}table{border-collapse:collapse;margin:1em 0;font-size:.92em}"
             "td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}td:first-child,td:nth-child(2)"
             "{text-align:left}th{background:#eee}th:first-child,th:nth-child(2){text-align:left}tr.diff td{color:#555;font-style:italic;background:#fafafa}"
             "img{max-width:100%;display:block;margin:.5em 0}.runs td,.runs th{text-align:left}"
             "figcaption{color:#555;font-size:.9em}</style>",
             f"<h1>{e(title)}</h1>", "<ul class='summary'>" + "".join(
                 f"<li>{e(v, quote=False)}</li>" for v in verdicts) + "</ul>"]
    parts.append("<h2>Runs</h2><table class='runs'><tr><th>name</th><th>folder</th><th>weights</th>"
                 "<th>results</th><th>epochs logged</th></tr>" + "".join(
                     f"<tr><td>{e(r.name)}</td><td>{e(str(r.path))}</td><td>{e(r.checkpoint.name if r.checkpoint else '-')}</td>"
                     f"<td>{e(r.results_file.name if r.results_file else '-')}</td>"
                     f"<td>{sum(1 for x in r.log if isinstance(x.get('epoch'), int) and not x.get('evaluate'))}</td></tr>"
                     for r in runs) + "</table>")
    if rows:
        grouped = len({r.name for r in rows}) > 1
        parts.append("<h2>Results</h2>" + results_table(rows, "html") + (
            "<p><small>Δ rows: each run minus the first, per method (points).</small></p>" if grouped else ""))
    for caption, img, note in figures:
        rel = os.path.relpath(img, path.parent)
        parts.append(f"<h2>{e(caption)}</h2><figure><img src='{e(rel)}' alt='{e(caption)}'>"
                     f"<figcaption>{e(note)}</figcaption></figure>")
    with atomic_file(path, "w") as f:
        f.write("\n".join(parts) + "\n</html>\n")
    return path
