"""``gridcam explain``: a model's predictions and explanation heatmaps on a person's own images.

For every image: the top-k classes of every model (with readable names), one overlay PNG per
(model, method, requested class) with a colour bar, and — with several checkpoints or methods —
one side-by-side sheet (rows = models, columns = methods) for one class shared by all rows (the
``--class`` given, else the first model's top-1), so "Baseline vs GC" is one picture. Writes
``OUT/predictions.json`` and ``OUT/index.html`` listing every sheet.

Images of any size, grayscale, CMYK, palette or 16-bit are decoded to RGB by :mod:`gridcam.data.io`;
an unreadable file is reported in one line (``gridcam: warning: FILE: cause``) and skipped.
"""

from __future__ import annotations

import html
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from gridcam.errors import GridcamError
from gridcam.report.names import class_names, resolve_class
from gridcam.report.summary import METHOD_NAMES
from gridcam.report.overlay import captioned, fit, overlay, sheet, with_colorbar

#: Longest side of the pictures written (the heatmap is computed on the model input, then resized).
DISPLAY = 320
#: The model input's longer side is capped at this multiple of ``input_resize`` (a 1x5000 strip
#: would otherwise become 224 x 1.1M pixels).
MAX_ASPECT = 6


@dataclass
class ExplainConfig:
    """Settings of one ``gridcam explain`` run (see the CLI's ``--help`` for each)."""

    inputs: Sequence[str]
    checkpoints: Sequence[str]
    out: str = "explain"
    arch: str | None = None
    methods: Sequence[str] = ("gradcam",)
    target: str | None = None
    topk: int = 1
    input_resize: int = 224
    classes: str | None = None
    annotations: str | None = None
    alpha: float = 0.5
    cmap: str = "jet"
    device: str | None = None


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    layer: torch.nn.Module
    names: list[str]
    wnids: list[str] = field(default_factory=list)
    multilabel: bool = False   # COCO-style: independent sigmoid probabilities


def warn(path: object, cause: str) -> None:
    """The one-line warning for a skipped input."""
    print(f"gridcam: warning: {path}: {cause}", file=sys.stderr)


def collect_images(inputs: Sequence[str]) -> list[Path]:
    """Files as given (any extension: the decoder decides) plus the image files under folders, sorted."""
    from gridcam.data.folders import is_image_file

    out: list[Path] = []
    for spec in inputs:
        p = Path(spec)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f.name))
        elif p.exists():
            out.append(p)
        else:
            warn(p, "no such file or folder")
    return out


def model_names(paths: Sequence[str]) -> list[str]:
    """Short distinct labels: the run folder's name, else folder/file, else the whole path."""
    ps = [Path(p) for p in paths]
    for label in (lambda p: p.parent.name or p.stem, lambda p: f"{p.parent.name}/{p.name}", str):
        names = [label(p) for p in ps]
        if len(set(names)) == len(names):
            return names
    return [f"{i}: {p}" for i, p in enumerate(paths)]


def load_models(cfg: ExplainConfig, device: torch.device, near: Sequence[Path]) -> list[LoadedModel]:
    from gridcam import models

    out = []
    for name, path in zip(model_names(cfg.checkpoints), cfg.checkpoints):
        model, meta = models.create_from_checkpoint(path, arch=cfg.arch)
        model = model.to(device).eval()
        n = _num_classes(model)
        names = class_names(n, meta, cfg.classes, cfg.annotations, near=[Path(path).parent, *near])
        wnids = [str(c) for c in meta.get("classes") or []]
        multilabel = meta.get("dataset") == "coco" or cfg.annotations is not None
        out.append(LoadedModel(name, model, models.cam_layer(model), names, wnids, multilabel))
    return out


def _num_classes(model: torch.nn.Module) -> int:
    from gridcam.models.registry import classifier_prefix

    prefix = classifier_prefix(model)
    return int(model.state_dict()[f"{prefix}.weight"].shape[0])


def model_input(image: Image.Image, input_resize: int) -> torch.Tensor:
    """(1,3,h,w) normalised: shorter side ``input_resize``, the longer capped at MAX_ASPECT times it."""
    from gridcam.data import transforms as T

    w, h = image.size
    s = input_resize / min(w, h)
    s = min(s, MAX_ASPECT * input_resize / max(w, h))
    size = (max(1, round(h * s)), max(1, round(w * s)))
    return T.Compose([T.Resize(size), T.to_tensor_normalize()], allow_draft=False)(image)[None]


def display_image(image: Image.Image) -> Image.Image:
    s = min(1.0, DISPLAY / max(image.size))
    return image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))), Image.BILINEAR)


def _targets(lm: LoadedModel, probs: torch.Tensor, cfg: ExplainConfig, sheet_class: int | None) -> list[int]:
    if cfg.target is not None:
        return [resolve_class(cfg.target, lm.names, lm.wnids)]
    top = probs.topk(min(cfg.topk, probs.numel())).indices.tolist()
    return top + ([sheet_class] if sheet_class is not None and sheet_class not in top else [])


def explain_one(image: Image.Image, lm: LoadedModel, cfg: ExplainConfig, device: torch.device,
                sheet_class: int | None) -> dict[str, Any]:
    """Predictions and display-size heatmaps ``{method: (T,H,W)}`` of one model on one image."""
    from gridcam import cam

    x = model_input(image, cfg.input_resize).to(device)
    with torch.no_grad():
        logits = lm.model(x).float()
        probs = (torch.sigmoid(logits) if lm.multilabel else torch.softmax(logits, dim=1))[0].cpu()
    targets = _targets(lm, probs, cfg, sheet_class)
    disp = display_image(image)
    heats = {}
    t = torch.tensor([targets], dtype=torch.long, device=device)
    for method in cfg.methods:
        heat, _ = cam.explain(method, lm.model, lm.layer, x, t)
        heat = torch.nan_to_num(heat.detach().float().cpu()).clamp_min(0)
        heats[method] = cam.upsample(heat, (disp.height, disp.width))[0]
    k = min(max(cfg.topk, 5), probs.numel())
    top = probs.topk(k)
    return {"probs": probs, "targets": targets, "heats": heats, "display": disp,
            "topk": [{"index": int(i), "name": lm.names[int(i)], "prob": round(float(p), 4),
                      **({"wnid": lm.wnids[int(i)]} if len(lm.wnids) == len(lm.names) else {})}
                     for p, i in zip(top.values, top.indices)]}


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:60]


def _panel(disp: Image.Image, heat: torch.Tensor, cfg: ExplainConfig, lines: list[str]) -> Image.Image:
    return captioned(with_colorbar(overlay(disp, heat, alpha=cfg.alpha, cmap=cfg.cmap), cfg.cmap), lines)


def run(cfg: ExplainConfig) -> dict[str, Any]:
    """Explain every input image with every model and method; return the predictions record."""
    from gridcam import cam
    from gridcam.data.io import BadImage, load_image

    unknown = [m for m in cfg.methods if m not in cam.list_methods()]
    if unknown:
        raise GridcamError(f"--method {','.join(unknown)}: unknown (choose from {', '.join(cam.list_methods())})")
    if not cfg.checkpoints:
        raise GridcamError("--checkpoint PATH is required")
    if cfg.topk < 1:
        raise GridcamError(f"--topk {cfg.topk}: must be at least 1")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    paths = collect_images(cfg.inputs)
    lms = load_models(cfg, device, near=[Path(s) for s in cfg.inputs])
    out = Path(cfg.out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    with_sheet = len(lms) > 1 or len(cfg.methods) > 1
    record: dict[str, Any] = {"models": {lm.name: str(p) for lm, p in zip(lms, cfg.checkpoints)},
                              "methods": list(cfg.methods), "images": [], "skipped": []}
    for i, path in enumerate(paths):
        try:
            image = load_image(path)
        except BadImage as exc:
            warn(path, exc.reason)
            record["skipped"].append({"image": str(path), "cause": exc.reason})
            continue
        stem = f"{i:03d}_{_safe(path.stem)}"
        entry: dict[str, Any] = {"image": str(path), "size": [image.height, image.width], "models": {}}
        sheet_class = None
        rows = []
        for lm in lms:
            res = explain_one(image, lm, cfg, device, sheet_class)
            if sheet_class is None:
                sheet_class = res["targets"][0]
            overlays = _write_overlays(out, stem, lm, res, cfg)
            entry["models"][lm.name] = {"top": res["topk"][:cfg.topk], "overlays": overlays}
            rows.append(_sheet_row(lm, res, sheet_class, cfg))
        if with_sheet and sheet_class is not None:
            (out / "sheets").mkdir(exist_ok=True)
            title = f"{path.name}: explanations of '{lms[0].names[sheet_class]}'"
            img = sheet(rows, row_labels=[lm.name for lm in lms], col_labels=["image: top-3", *(METHOD_NAMES.get(m, m) for m in cfg.methods)],
                        title=title)
            img.save(out / "sheets" / f"{stem}.png")
            entry["sheet"] = f"sheets/{stem}.png"
            entry["sheet_class"] = {"index": sheet_class, "name": lms[0].names[sheet_class]}
        record["images"].append(entry)
    if not record["images"]:
        raise GridcamError("no readable image among the inputs: " + ", ".join(map(str, cfg.inputs)))
    (out / "predictions.json").write_text(json.dumps(record, indent=1))
    write_index(out / "index.html", record)
    return record


def _write_overlays(out: Path, stem: str, lm: LoadedModel, res: dict[str, Any],
                    cfg: ExplainConfig) -> list[str]:
    written = []
    n = 1 if cfg.target is not None else min(cfg.topk, len(res["targets"]))
    for method, heat in res["heats"].items():
        for j, k in enumerate(res["targets"][:n]):
            name = f"overlays/{stem}__{_safe(lm.name)}__{method}__{k}.png"
            lines = [f"{lm.name} | {method}", f"{lm.names[k]}  p={float(res['probs'][k]):.2f}"]
            _panel(res["display"], heat[j], cfg, lines).save(out / name)
            written.append(name)
    return written


def _sheet_row(lm: LoadedModel, res: dict[str, Any], k: int, cfg: ExplainConfig) -> list[Image.Image]:
    disp = fit(res["display"], 200, max_width=400)
    lines = [f"{t['name']}  {t['prob']:.2f}" for t in res["topk"][:3]]
    row = [captioned(disp, lines, size=12, width=max(disp.width, 150))]
    j = res["targets"].index(k)
    for method in cfg.methods:
        heat = res["heats"][method][j]
        panel = with_colorbar(overlay(res["display"], heat, alpha=cfg.alpha, cmap=cfg.cmap), cfg.cmap)
        row.append(captioned(fit(panel, 200, max_width=460),
                             [f"p({lm.names[k]}) = {float(res['probs'][k]):.2f}"], size=12))
    return row


def _top_text(top: list[dict[str, Any]]) -> str:
    return "; ".join(f"{t['name']} {t['prob']:.2f}" for t in top)


def write_index(path: Path, record: dict[str, Any]) -> Path:
    """``index.html``: every image's sheet (or overlays) and predictions, linked relatively."""
    e = html.escape
    parts = ["<!doctype html><meta charset='utf-8'><title>gridcam explain</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "img{max-width:100%;border:1px solid #ddd}td,th{padding:2px 10px;text-align:left}"
             "h2{font-size:1.1em;margin-top:2em}</style>",
             "<h1>gridcam explain</h1>",
             f"<p>Models: {e(', '.join(f'{k} ({v})' for k, v in record['models'].items()))}. "
             f"Methods: {e(', '.join(record['methods']))}.</p>"]
    for entry in record["images"]:
        parts.append(f"<h2>{e(Path(entry['image']).name)} <small>({entry['size'][1]}×{entry['size'][0]})</small></h2>")
        rows = "".join(
            f"<tr><th>{e(m)}</th><td>{e(_top_text(v['top']))}</td></tr>" for m, v in entry["models"].items())
        parts.append(f"<table>{rows}</table>")
        pics = [entry["sheet"]] if "sheet" in entry else [o for v in entry["models"].values() for o in v["overlays"]]
        parts += [f"<img src='{e(p)}' alt='{e(p)}'>" for p in pics]
    if record["skipped"]:
        parts.append("<h2>Skipped</h2><ul>" + "".join(
            f"<li>{e(s['image'])}: {e(s['cause'])}</li>" for s in record["skipped"]) + "</ul>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
