"""``gridcam explain``: a model's predictions and explanation heatmaps on a person's own images.

For every image: the top-k classes of every model (with readable names), one overlay PNG per
(model, method, requested class) with a colour bar, and — with several checkpoints or methods —
one side-by-side sheet (rows = models, columns = methods) for one class shared by all rows (the
``--class`` given, else the first model's top-1), so "Baseline vs GC" is one picture. Writes
``OUT/predictions.json`` and ``OUT/index.html`` listing every sheet.

Every heatmap picture is a :func:`gridcam.report.overlay.heat_panel`: the image at display size
(small images enlarged by a whole factor, nearest-neighbour), the map on the "times its mean"
colour scale with its colour bar, and above it the explained class with its probability and, when
that is not the model's top-1, the predicted class with its probability. Methods are named by their
display names (``gridcam methods``). A progress bar over images x models x methods goes to stderr
when it is a terminal (``ExplainConfig.progress``).

Images of any size, grayscale, CMYK, palette or 16-bit are decoded to RGB by :mod:`gridcam.data.io`;
an unreadable file is reported in one line (``gridcam: warning: FILE: cause``) and skipped.
"""

from __future__ import annotations

import html
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from gridcam.errors import GridcamError
from gridcam.report.names import class_names, resolve_class
from gridcam.report.overlay import (SCALE_NOTE, captioned, check_picture_options, for_display,
                                    heat_panel, sheet)
from gridcam.report.summary import method_name

#: Overlay files: the image fits DISPLAY x DISPLAY px (a small one is enlarged by a whole factor,
#: nearest-neighbour; the heatmap is computed on the model input, then resized bilinearly).
DISPLAY = 320
#: Sheets: every picture is CELL px tall (at most 2 x CELL wide), drawn at that size.
CELL = 224
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
    #: a tqdm bar on stderr over images x models x methods; None: when stderr is a terminal
    progress: bool | None = None


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    layer: torch.nn.Module
    names: list[str]
    wnids: list[str] = field(default_factory=list)
    multilabel: bool = False   # COCO-style: independent sigmoid probabilities
    zero_warned: bool = False  # the all-zero-heatmap warning was given for this model


def warn(path: object, cause: str) -> None:
    """The one-line warning for a skipped input (above the progress bar, if one is shown)."""
    from tqdm import tqdm

    tqdm.write(f"gridcam: warning: {path}: {cause}", file=sys.stderr)


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
    """Short distinct labels: the run folder's name, else the part of the paths that differs
    (``runs/baseline/seed0/x.pth.tar`` vs ``runs/gc/seed0/x.pth.tar``: ``baseline``, ``gc``), else
    folder/file, else the whole path."""
    ps = [Path(p) for p in paths]

    def differing(p: Path) -> str:
        parts = [q.parts for q in ps]
        lead = next((i for i in range(min(map(len, parts))) if len({x[i] for x in parts}) > 1), 0)
        tail = next((i for i in range(1, min(map(len, parts)) - lead + 1)
                     if len({x[-i] for x in parts}) > 1), 1)
        return "/".join(p.parts[lead:len(p.parts) - tail + 1]) or str(p)

    for label in (lambda p: p.parent.name or p.stem, differing, lambda p: f"{p.parent.name}/{p.name}", str):
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


def model_input(image: Image.Image, input_resize: int, model: torch.nn.Module | None = None) -> torch.Tensor:
    """(1,3,h,w) normalised: shorter side ``input_resize``, the longer capped at MAX_ASPECT times it.
    Normalised with the mean/std ``model`` was built with (``models.info``: a timm or Hugging Face
    ViT's 0.5), else ImageNet's."""
    from gridcam import models
    from gridcam.data import transforms as T

    w, h = image.size
    s = input_resize / min(w, h)
    s = min(s, MAX_ASPECT * input_resize / max(w, h))
    size = (max(1, round(h * s)), max(1, round(w * s)))
    record = models.info(model) if model is not None else None
    norm = T.to_tensor_normalize(record.mean, record.std) if record is not None else T.to_tensor_normalize()
    return T.Compose([T.Resize(size), norm], allow_draft=False)(image)[None]


def display_image(image: Image.Image) -> Image.Image:
    """``image`` fitted into DISPLAY x DISPLAY px (:func:`~gridcam.report.overlay.for_display`)."""
    return for_display(image, DISPLAY, DISPLAY)


def _targets(lm: LoadedModel, probs: torch.Tensor, cfg: ExplainConfig, sheet_class: int | None) -> list[int]:
    if cfg.target is not None:
        return [resolve_class(cfg.target, lm.names, lm.wnids)]
    top = probs.topk(min(cfg.topk, probs.numel())).indices.tolist()
    return top + ([sheet_class] if sheet_class is not None and sheet_class not in top else [])


def explain_one(image: Image.Image, lm: LoadedModel, cfg: ExplainConfig, device: torch.device,
                sheet_class: int | None, tick: Any = None, name: str = "the image") -> dict[str, Any]:
    """Predictions and heatmaps ``{method: (T,h,w)}`` (at the model input's resolution or the
    layer's; pictures resize them) of one model on one image; ``tick()`` after each method; ``name``: the image's, for the one warning
    per model of an all-zero map of a method that reads the CAM layer."""
    from gridcam import cam

    x = model_input(image, cfg.input_resize, lm.model).to(device)
    with torch.no_grad():
        logits = lm.model(x).float()
        probs = (torch.sigmoid(logits) if lm.multilabel else torch.softmax(logits, dim=1))[0].cpu()
    targets = _targets(lm, probs, cfg, sheet_class)
    heats = {}
    t = torch.tensor([targets], dtype=torch.long, device=device)
    for method in cfg.methods:
        heat, _ = cam.explain(method, lm.model, lm.layer, x, t)
        heat = torch.nan_to_num(heat.detach().float().cpu()).clamp_min(0)
        heats[method] = heat[0]
        _warn_zero_map(lm, method, heat, name)
        if tick is not None:
            tick()
    k = min(max(cfg.topk, 5), probs.numel())
    top = probs.topk(k)
    return {"probs": probs, "targets": targets, "heats": heats, "image": image,
            "topk": [{"index": int(i), "name": lm.names[int(i)], "prob": round(float(p), 4),
                      **({"wnid": lm.wnids[int(i)]} if len(lm.wnids) == len(lm.names) else {})}
                     for p, i in zip(top.values, top.indices)]}


def class_lines(names: Sequence[str], probs: torch.Tensor, k: int) -> list[str]:
    """Caption of a heatmap of class ``k``: its probability, and the predicted class with its
    probability when that is another class."""
    best = int(probs.argmax())
    line = f"{names[k]}: p = {float(probs[k]):.2f}"
    if best == k:
        return [line + " (predicted)"]
    return [line, f"predicted: {names[best]} {float(probs[best]):.2f}"]


def _warn_zero_map(lm: LoadedModel, method: str, heat: torch.Tensor, name: str) -> None:
    """One warning line per model when a method reading its CAM layer gives all-zero maps for
    every class explained on an image (one class alone can have no positive evidence)."""
    from gridcam import cam
    from gridcam.models.layers import zero_heatmap_message

    info = cam.METHOD_INFO.get(method)
    if lm.zero_warned or info is None or not info.uses_layer or not bool(cam.zero_maps(heat).all()):
        return
    lm.zero_warned = True
    warnings.warn(zero_heatmap_message(lm.model, f"{name} (model {lm.name})", method_name(method)),
                  stacklevel=3)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:60]


def check_config(cfg: ExplainConfig) -> None:
    """Refuse bad settings in one GridcamError line before any work (methods, checkpoints,
    ``topk``, ``alpha``, ``cmap``, ``input_resize``)."""
    from gridcam import cam

    unknown = [m for m in cfg.methods if m not in cam.list_methods()]
    if unknown:
        raise GridcamError(f"--method {','.join(unknown)}: unknown (choose from {', '.join(cam.list_methods())})")
    if not cfg.checkpoints:
        raise GridcamError("--checkpoint PATH is required")
    if cfg.topk < 1:
        raise GridcamError(f"--topk {cfg.topk}: must be at least 1")
    check_picture_options(alpha=cfg.alpha, cmap=cfg.cmap, input_resize=cfg.input_resize)


def _progress(cfg: ExplainConfig, total: int):
    from tqdm import tqdm

    enabled = cfg.progress if cfg.progress is not None else bool(
        getattr(sys.stderr, "isatty", lambda: False)())
    return tqdm(total=total, desc="explain", unit="map", dynamic_ncols=True, file=sys.stderr,
                disable=not enabled)


def run(cfg: ExplainConfig) -> dict[str, Any]:
    """Explain every input image with every model and method; return the predictions record."""
    from gridcam.data.io import BadImage, load_image

    check_config(cfg)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    paths = collect_images(cfg.inputs)
    lms = load_models(cfg, device, near=[Path(s) for s in cfg.inputs])
    out = Path(cfg.out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    with_sheet = len(lms) > 1 or len(cfg.methods) > 1
    record: dict[str, Any] = {"models": {lm.name: str(p) for lm, p in zip(lms, cfg.checkpoints)},
                              "methods": list(cfg.methods), "images": [], "skipped": []}
    per_image = len(lms) * len(cfg.methods)
    with _progress(cfg, len(paths) * per_image) as bar:
        for i, path in enumerate(paths):
            try:
                image = load_image(path)
            except BadImage as exc:
                warn(path, exc.reason)
                record["skipped"].append({"image": str(path), "cause": exc.reason})
                bar.update(per_image)
                continue
            bar.set_postfix_str(path.name[-30:], refresh=False)
            stem = f"{i:03d}_{_safe(path.stem)}"
            entry: dict[str, Any] = {"image": str(path), "size": [image.height, image.width], "models": {}}
            sheet_class = None
            rows = []
            for lm in lms:
                res = explain_one(image, lm, cfg, device, sheet_class, tick=lambda: bar.update(1),
                                  name=path.name)
                if sheet_class is None:
                    sheet_class = res["targets"][0]
                overlays = _write_overlays(out, stem, lm, res, cfg)
                entry["models"][lm.name] = {"top": res["topk"][:cfg.topk], "overlays": overlays}
                rows.append(_sheet_row(lm, res, sheet_class, cfg))
            if with_sheet and sheet_class is not None:
                (out / "sheets").mkdir(exist_ok=True)
                title = f"{path.name}: explanations of '{lms[0].names[sheet_class]}'"
                img = sheet(rows, row_labels=[lm.name for lm in lms],
                            col_labels=["image: top-3", *(method_name(m) for m in cfg.methods)],
                            title=title, note=SCALE_NOTE)
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
            lines = [f"{lm.name} | {method_name(method)}", *class_lines(lm.names, res["probs"], k)]
            heat_panel(res["image"], heat[j], lines, height=DISPLAY, max_width=DISPLAY,
                       alpha=cfg.alpha, cmap=cfg.cmap, size=13).save(out / name)
            written.append(name)
    return written


def _sheet_row(lm: LoadedModel, res: dict[str, Any], k: int, cfg: ExplainConfig) -> list[Image.Image]:
    disp = for_display(res["image"], CELL, 2 * CELL)
    lines = [f"{t['name']}  {t['prob']:.2f}" for t in res["topk"][:3]]
    j = res["targets"].index(k)
    caption = class_lines(lm.names, res["probs"], k)
    n = max(len(lines), len(caption))   # blank lines first: the pictures of a row line up
    lines, caption = [""] * (n - len(lines)) + lines, [""] * (n - len(caption)) + caption
    row = [captioned(disp, lines, size=12, width=max(disp.width, 150))]
    for method in cfg.methods:
        row.append(heat_panel(res["image"], res["heats"][method][j], caption, height=CELL,
                              max_width=2 * CELL, alpha=cfg.alpha, cmap=cfg.cmap, size=12))
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
             f"Methods: {e(', '.join(method_name(m) for m in record['methods']))}.</p>"]
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
