"""Score explanations in ONE pass over the validation images: :func:`evaluate`, :class:`EvalConfig`.

The paper runs three scripts (pointing game, stochastic pointing game, content heatmap), each a full
pass at batch size 1 that recomputes Grad-CAM. Here one pass computes, for every requested
explanation method, every requested metric, plus the classification scores (top-1/top-5 for
ImageNet, per-class and overall P/R/F1 for COCO) from the same forward. Besides localisation the
metrics include deletion, insertion, Focus and the randomisation test
(:mod:`gridcam.evaluation.beyond`, docs/metrics.md). One call flows through:

- :mod:`gridcam.evaluation.pipeline`: the batch plan (images of equal transformed size together),
  loader threads or processes, and on small CPU hosts the model one batch ahead in a thread;
- :mod:`gridcam.evaluation.forward`: the model stage, explaining a group of equal-size images (fast
  Grad-CAM route, micro-batches, oneDNN max-pool; bit-identical heatmaps);
- :mod:`gridcam.evaluation.beyond`: deletion/insertion curves, Focus mosaics, the re-initialised
  copy (in the model stage, after the explanations);
- :mod:`gridcam.evaluation.scoring`: heatmaps -> PG / SPG / CH per (image, class) pair, classification;
- :mod:`gridcam.evaluation.totals`: integer counts, merged exactly across ranks and resumed runs;
- :mod:`gridcam.evaluation.records`: the per-image JSON-lines file (header, resume, ranks' parts).

Distributed (``torchrun``): the batch plan is the same on every rank and batches are dealt
round-robin; the SPG random numbers depend only on (seed, image key), the image's identity (file
name, COCO image id), not its position. Hence the numbers are exactly those of one process, and an
image's SPG does not depend on the other files of the folder or on ``--limit``.

Data problems (:mod:`gridcam.problems`): the loader hands them on with the items and they are
reported here, in the main process (one line each, counted by reason code), and tallied in the
totals: ``results.json`` counts skipped images and pairs by reason code and lists every problem
met under ``"problems"`` (count, meaning, examples with the cause in words).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from gridcam import problems as P
from gridcam.runtime import distributed as D
from gridcam.evaluation import beyond
from gridcam.evaluation import forward as F
from gridcam.evaluation import pipeline
from gridcam.evaluation import records
from gridcam.evaluation import scoring
from gridcam.evaluation.pipeline import plan_batches
from gridcam.runtime.files import atomic_write_json
from gridcam.evaluation.scoring import spg_uniforms
from gridcam.evaluation.tables import format_table
from gridcam.evaluation.totals import ALL_METRICS, METRICS, Evaluation, new_totals
from gridcam.errors import GridcamError

__all__ = [
    "METRICS", "EvalConfig", "Evaluation", "atomic_write_json", "evaluate", "format_table",
    "model_classes", "plan_batches", "spg_uniforms",
]


@dataclass
class EvalConfig:
    """Settings of one evaluation (the ``gridcam evaluate`` flags, as Python values).

    methods: names in ``gridcam.cam.METHODS`` (a list or a comma-separated string), or "all".
    metrics: subset of ``ALL_METRICS`` keys {"pg", "spg", "ch", "deletion", "insertion", "focus",
        "randomisation"} (list or comma-separated string).
    gradcam_variant: "elementwise" or "classic" (None: the method's default, elementwise).
    method_options: more keyword arguments of the methods (each method gets the ones it declares,
        see ``gridcam methods``; an option no method declares is an error), e.g.
        ``{"method_batch": 32, "samples": 20}``.
    tolerance: pointing-game tolerance in px (strict). spg_samples: SPG draws per pair.
    seed: SPG seed (the draws of an image depend only on (seed, its key), see
        :func:`gridcam.data.image_key`); also seeds the Focus mosaics and the re-initialised copy.
    faithfulness_steps: steps of the deletion/insertion curves (n; n+1 points).
    deletion_baseline / insertion_baseline: what removed pixels become / inserted pixels start
        from: "zero", "mean" or "blur" (RISE's: zero and blur).
    faithfulness_batch: perturbed images per forward (None: 64 on GPUs, the cache-sized
        micro-batch on CPU).
    batch_size: images per forward. workers: DataLoader worker processes (0: loader threads).
    limit: evaluate only images ``0..limit-1``.
    input_resize: shorter side the dataset's transform resizes to (for size bucketing).
    multilabel: COCO-style P/R/F1 instead of top-1/top-5 (None: guessed from the dataset).
    num_classes: C (None: ``out_features`` of the model's last ``nn.Linear``, else
        ``dataset.num_classes``).
    per_image: JSON-lines file of per-image records; resumed when it exists.
    output: results JSON file written (atomically, by rank 0) at the end; None: not written.
    device: where the model runs (None: the model's device).
    progress: a tqdm bar on stderr (rank 0).
    record: more settings recorded in the per-image header and the results' ``"config"`` (a
        changed setting makes a resume refuse the old file), e.g. the dataset and checkpoint.
    """

    methods: Sequence[str] | str = ("gradcam",)
    metrics: Sequence[str] | str = ("pg", "spg", "ch")
    gradcam_variant: str | None = None
    method_options: Mapping[str, Any] | None = None
    tolerance: float = 15.0
    spg_samples: int = 100
    seed: int = 0
    faithfulness_steps: int = 32
    deletion_baseline: str = "zero"
    insertion_baseline: str = "blur"
    faithfulness_batch: int | None = None
    batch_size: int = 16
    workers: int = 0
    limit: int | None = None
    input_resize: int | None = None
    multilabel: bool | None = None
    num_classes: int | None = None
    per_image: str | os.PathLike | None = None
    output: str | os.PathLike | None = None
    device: str | torch.device | None = None
    progress: bool = False
    record: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class _Run:
    """One evaluation's resolved settings and state, shared by the steps of :func:`evaluate`."""

    model: nn.Module
    layer: nn.Module
    device: torch.device
    methods: list[str]
    metrics: list[str]
    opts: dict[str, Any]
    num_classes: int
    multilabel: bool
    scoring: scoring.Scoring
    totals: Evaluation
    header: dict[str, Any]
    rank: int
    world: int
    beyond: beyond.Settings | None = None
    source: Any = None  # what the loader reads: the dataset, or its MosaicSource (Focus)
    zero_checked: bool = False


def evaluate(model: nn.Module, dataset: Any, config: EvalConfig | None = None, *,
             layer: nn.Module | None = None, **options: Any) -> dict[str, Any]:
    """Score explanations of ``model`` on a localisation dataset in one pass.

    Args:
        model: classifier (put in ``eval()`` mode here).
        dataset: a localisation dataset (``data.ImageNetValLoc`` / ``data.CocoLoc`` item layout:
            ``ds.load(i) -> dict(image (3,h,w), size (H,W), path, index, key, classes (T,),
            masks (T,H,W) bool, label, skipped [(class, Problem)], problems [Problem])`` or the
            Problem of an unusable image; a dataset without ``load`` may return None from
            ``ds[i]``, see :func:`gridcam.data.load_item`). ``.sizes`` (original (H,W) per image)
            enables size bucketing; without it, batches are consecutive indices split by actual
            shape. ``.split`` (COCO) is recorded in the results' config.
        config: the settings (default ``EvalConfig()``).
        layer: the model's CAM layer (default ``models.cam_layer(model)``).
        options: :class:`EvalConfig` fields overriding ``config`` (``evaluate(model, ds,
            batch_size=8)``); a mapping given as ``config`` (the former keyword) is ``record``.
    Returns:
        ``{"metrics": {method: {...}}, "classification": {...}, "images": {...},
        "skipped_pairs": {code: n}, "problems": {code: {count, meaning, examples}},
        "config": {...}}`` (the results.json layout; skip counts keyed by the reason codes of
        :data:`gridcam.problems.REASONS`), identical on every rank; also written to
        ``config.output`` when set.
    """
    t0 = time.perf_counter()
    cfg = _resolve(config, options)
    run = _setup(model, dataset, cfg, layer)
    n = len(dataset) if cfg.limit is None else min(int(cfg.limit), len(dataset))
    batches = plan_batches(pipeline.transformed_keys(dataset, cfg.input_resize), range(n),
                           cfg.batch_size)
    # Resumption: rank 0 folds finished batches into the totals, every rank learns what is done.
    path = Path(cfg.per_image) if cfg.per_image is not None else None
    done = (records.start_or_resume(path, run.header, batches, run.totals, run.rank)
            if path is not None else set())
    pending = [b for b in batches if not all(i in done for i in b)]
    col = P.active()
    told = len(col.problems) if col is not None else 0
    _score_batches(run, pending[run.rank::run.world], cfg, path, resumed=len(done))
    if run.world > 1:  # the CLI's collectors of the other ranks are quiet: rank 0 tells theirs
        gathered = D.all_gather_object(col.problems[told:] if col is not None else [])
        if run.rank == 0:
            for p in (q for rank_found in gathered[1:] for q in rank_found):  # type: ignore[union-attr]
                P.report(p)

    # Merge every rank's counts exactly (integers), then the per-image parts.
    total = new_totals(run.methods, run.num_classes, cfg.spg_samples, run.multilabel, run.metrics)
    for s in D.all_gather_object(run.totals.state()):
        total.merge_state(s)  # type: ignore[arg-type]
    if path is not None:
        records.merge_parts(path, run.rank, run.world)
    results = _results(total, run, cfg, dataset, n, len(done), path, t0)
    if cfg.output is not None and run.rank == 0:
        atomic_write_json(cfg.output, results)
    return results


def _resolve(config: EvalConfig | Mapping[str, Any] | None, options: dict[str, Any]) -> EvalConfig:
    """``config`` with the keyword ``options`` applied (they are :class:`EvalConfig` fields)."""
    if isinstance(config, Mapping):  # the former ``config=`` keyword: settings to record
        options.setdefault("record", config)
        config = None
    names = {f.name for f in fields(EvalConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"evaluate() got unexpected keyword arguments: {', '.join(unknown)}")
    return replace(config if config is not None else EvalConfig(), **options)


def _setup(model: nn.Module, dataset: Any, cfg: EvalConfig, layer: nn.Module | None) -> _Run:
    """Check the settings, put the model on its device in eval mode, make the empty totals and
    the per-image header (the settings that a resumed file must have been written with)."""
    from gridcam import cam

    distributed = D.dist.is_available() and D.dist.is_initialized()
    rank = D.dist.get_rank() if distributed else 0
    world = D.dist.get_world_size() if distributed else 1
    metrics = _parse_list(cfg.metrics, ALL_METRICS, "metric")
    methods = _parse_methods(cfg.methods)
    if cfg.spg_samples < 1:
        raise GridcamError(f"--spg-samples must be >= 1, got {cfg.spg_samples}")
    if not (math.isfinite(cfg.tolerance) and cfg.tolerance > 0):
        raise GridcamError(f"--tolerance must be a finite number > 0, got {cfg.tolerance}")
    if layer is None:
        from gridcam import models

        layer = models.cam_layer(model)
    device = torch.device(cfg.device if cfg.device is not None
                          else next(model.parameters()).device)
    model = model.to(device).eval()
    multilabel = _is_multilabel(dataset) if cfg.multilabel is None else cfg.multilabel
    num_classes = cfg.num_classes
    if num_classes is None:
        num_classes = model_classes(model) or int(getattr(dataset, "num_classes", 0)) or None
    if not num_classes:
        raise GridcamError("cannot tell the number of classes; pass num_classes")
    opts = {} if cfg.gradcam_variant is None else {"variant": cfg.gradcam_variant}
    opts.update(cfg.method_options or {})
    for method in methods:  # a misspelt option fails before the pass, naming the valid ones
        cam.select_options(method, opts)
    more = beyond.settings(metrics, steps=cfg.faithfulness_steps,
                           deletion_baseline=cfg.deletion_baseline,
                           insertion_baseline=cfg.insertion_baseline, batch=cfg.faithfulness_batch,
                           model=model, layer=layer, methods=methods, opts=opts, device=device,
                           seed=cfg.seed)
    recorded = dict(cfg.record or {})
    split = getattr(_unwrap(dataset), "split", None)
    if split is not None:  # the split actually read (the CLI's --split may be None)
        recorded["split"] = str(split)
    recorded.update(methods=list(methods), metrics=list(metrics), tolerance=cfg.tolerance,
                    spg_samples=cfg.spg_samples, seed=cfg.seed, method_options=_jsonable(opts),
                    **beyond.recorded(more))
    return _Run(
        model=model, layer=layer, device=device, methods=methods, metrics=metrics, opts=opts,
        num_classes=num_classes, multilabel=bool(multilabel),
        scoring=scoring.Scoring(tuple(metrics), float(cfg.tolerance), int(cfg.spg_samples),
                                int(cfg.seed)),
        totals=new_totals(methods, num_classes, cfg.spg_samples, bool(multilabel), metrics),
        header=records.make_header(recorded), rank=rank, world=world, beyond=more,
        # Focus: the loader also loads each pair's mosaic images (a dataset that cannot tell the
        # images' classes without decoding them is refused here, before the pass)
        source=(beyond.MosaicSource(dataset, cfg.seed) if more is not None and "focus" in more.metrics
                else dataset))


def _score_batches(run: _Run, batches: list[list[int]], cfg: EvalConfig, path: Path | None,
                   resumed: int) -> None:
    """The pass over this rank's ``batches``: load, explain, score into ``run.totals``, and append
    the per-image records (to ``path``, or this rank's part of it)."""
    writer = records.PerImageWriter(
        None if path is None else records.part_path(path, run.rank, run.world))
    bar = _progress(sum(len(b) for b in batches), enabled=cfg.progress and run.rank == 0,
                    initial=resumed if run.world == 1 else 0)

    def forward(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        items = F.precompute(items, run.model, run.layer, run.methods, run.opts, run.device,
                             run.scoring.seed)
        return items if run.beyond is None else beyond.precompute(run.beyond, items)

    try:
        loaded = pipeline.load_batches(run.source, batches, cfg.workers)
        with pipeline.model_ahead(loaded, run.model, run.device, forward) as batches_in:
            for items in batches_in:
                writer.write(_score_batch(run, items))
                if bar is not None:
                    bar.update(len(items))
    finally:
        writer.close()
        if bar is not None:
            bar.close()


def _score_batch(run: _Run, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Score one loaded batch into ``run.totals``; return its per-image records (unreadable
    images first, then each shape group's pairs and images)."""
    out = [scoring.unreadable(it, run.totals) for it in items if it.get("unreadable")]
    for group in F.group_by_shape(items):
        targets, counts, explained = F.explained_group(
            group, run.model, run.layer, run.methods, run.opts, run.device, run.scoring.seed)
        if not run.zero_checked:
            run.zero_checked = True
            _warn_zero_maps(run, counts, explained)
        extras = (None if run.beyond is None else
                  beyond.group_extras(run.beyond, group, targets, counts, explained))
        out += scoring.score_group(group, targets, counts, explained, run.totals, run.device,
                                   run.scoring, extras)
    return out


def _warn_zero_maps(run: _Run, counts: list[int],
                    explained: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """After the first group of images: one warning line per method that reads the CAM layer
    and gave all-zero heatmaps for every (image, class) pair of it (each pair would be skipped as
    ``zero_heatmap``: a layer the class scores send no gradient, such as a ViT's last block)."""
    from gridcam import cam
    from gridcam.models import unwrap
    from gridcam.models.layers import zero_heatmap_message

    real = [(b, t) for b, n in enumerate(counts) for t in range(n)]
    if run.rank != 0 or not real:
        return
    for method, (heat, _logits) in explained.items():
        info = cam.METHOD_INFO.get(method)
        if info is None or not info.uses_layer:
            continue
        if bool(cam.zero_maps(heat[[b for b, _ in real], [t for _, t in real]]).all()):
            name = "Grad-CAM" if method == "gradcam" else method
            warnings.warn(zero_heatmap_message(
                unwrap(run.model), "every image of the first batch (each pair is skipped as "
                "zero_heatmap)", name), stacklevel=2)


def _results(total: Evaluation, run: _Run, cfg: EvalConfig, dataset: Any, requested: int,
             resumed: int, path: Path | None, t0: float) -> dict[str, Any]:
    """The results.json layout from the merged totals."""
    skipped_images = dict(total.skipped_images)
    _dataset_problems(total, dataset, whole=cfg.limit is None)
    no_ann = int(getattr(dataset, "skipped_no_annotations", 0) or 0)
    if no_ann and cfg.limit is None:  # COCO images without annotations never enter the dataset
        skipped_images["no_annotations"] = skipped_images.get("no_annotations", 0) + no_ann
    cfg_out = dict(run.header["config"])
    if run.beyond is not None and ({"deletion", "insertion"} & set(run.metrics)):
        cfg_out["faithfulness_batch"] = cfg.faithfulness_batch
    cfg_out.update(batch_size=cfg.batch_size, workers=cfg.workers, limit=cfg.limit,
                   world_size=run.world, per_image=None if path is None else str(path))
    return {
        "metrics": total.results(run.metrics),
        "classification": total.cls.result(),
        "images": {"evaluated": total.images, "skipped": sum(skipped_images.values()),
                   "skipped_reasons": dict(sorted(skipped_images.items())),
                   "resumed": resumed, "requested": requested,
                   "seconds": round(time.perf_counter() - t0, 3)},
        "skipped_pairs": dict(sorted(total.data_skipped.items())),
        "problems": total.problem_table(),
        "config": cfg_out,
    }


def _dataset_problems(total: Evaluation, dataset: Any, whole: bool) -> None:
    """Tally the problems the dataset found when it was built (COCO: annotations skipped one by
    one, images without annotations; ``whole``: the images without annotations are counted only
    when the whole dataset was evaluated), which no item carries."""
    for p in getattr(dataset, "problems", None) or []:
        if isinstance(p, P.Problem):
            total.note_problem(p)
    no_ann = int(getattr(dataset, "skipped_no_annotations", 0) or 0)
    ann_file = getattr(dataset, "annotation_file", None)
    if no_ann and whole and ann_file is not None:
        total.note_problem(P.Problem("no_annotations", str(ann_file),
                                   f"{no_ann} images have no annotations and are skipped"), no_ann)


def _unwrap(dataset: Any) -> Any:
    """The dataset under any ``torch.utils.data.Subset`` wrappers."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    return dataset


# ------------------------------------------------------------------------------------ helpers
def model_classes(model: nn.Module) -> int | None:
    """Number of classes of a classifier: ``out_features`` of its last ``nn.Linear`` (None if it
    has none)."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return int(last.out_features) if last is not None else None


def _parse_list(text: str | Sequence[str], allowed: Iterable[str], what: str) -> list[str]:
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    items = [s for s in items if s]
    allowed = list(allowed)
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise GridcamError(f"unknown {what} {', '.join(bad) or '(none given)'}; "
                           f"choose from: {', '.join(allowed)}")
    return list(OrderedDict.fromkeys(items))


def _parse_methods(text: str | Sequence[str]) -> list[str]:
    """The explanation methods of ``text`` (names or "all": every registered method, cheapest
    first, as ``gridcam methods`` lists them)."""
    from gridcam import cam

    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    if items == ["all"]:
        return [r["name"] for r in cam.describe_methods()]
    return _parse_list(items, cam.list_methods(), "explanation method")


def _is_multilabel(dataset: Any) -> bool:
    name = type(dataset).__name__.lower()
    return "coco" in name or bool(getattr(dataset, "multilabel", False))


def _jsonable(obj: Any) -> Any:
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        return {k: repr(v) for k, v in obj.items()} if isinstance(obj, Mapping) else repr(obj)


def _progress(total: int, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total + initial, initial=initial, unit="img", dynamic_ncols=True,
                file=sys.stderr)
