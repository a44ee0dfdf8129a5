"""``gridcam evaluate imagenet|coco``: flags -> an evaluation configuration -> the evaluation engine."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Mapping

from gridcam.cli.common import add_model_options


# ------------------------------------------------------------------------------------- evaluate
def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score explanations: pointing game, stochastic PG, content heatmap")
    kinds = p.add_subparsers(dest="dataset", required=True)
    for name in ("imagenet", "coco"):
        k = kinds.add_parser(name, help=f"{name}-style validation data")
        k.add_argument("root")
        k.set_defaults(func=run)
        _evaluate_options(k)


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "--resume", dest="checkpoint", default=None,
                   help="weights to evaluate (ours, the paper's, torchvision's); classes are read from it")
    p.add_argument("-a", "--arch", default=None,
                   help="architecture (default: recorded in the checkpoint, else guessed from its keys): "
                        "a built-in name, torchvision:NAME, timm:NAME, hf:NAME_OR_PATH or MODULE:FACTORY")
    p.add_argument("--maxpool", action="store_true",
                   help="the model uses global max pooling (GMP); default: the pooling the checkpoint "
                        "records (a checkpoint recorded with average pooling refuses --maxpool)")
    p.add_argument("--input-resize", "--input_resize", dest="input_resize", type=_positive, default=224,
                   help="shorter side of the network input, no crop (the paper: 448)")
    add_model_options(p)
    p.add_argument("--methods", default="gradcam",
                   help="comma-separated explanation methods, or 'all' (`gridcam methods` lists them "
                        "with their cost): gradcam, gradient, input_x_gradient, smoothgrad, gradcampp, "
                        "rise, occlusion, ...")
    p.add_argument("--method-batch", type=_positive, default=None,
                   help="perturbed images per forward for the perturbation methods (RISE, occlusion, "
                        "Score-CAM, Ablation-CAM, extremal perturbation) and images per forward for "
                        "SmoothGrad / integrated gradients: a memory budget (default: each method's)")
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the methods that declare it, e.g. samples=20 or num_masks=1000 "
                        "(repeatable; `gridcam methods` lists each method's options)")
    p.add_argument("--gradcam-variant", choices=["elementwise", "classic"], default="elementwise")
    p.add_argument("--metrics", default="pg,spg,ch",
                   help="comma-separated: pg (pointing game), spg (stochastic PG), ch (content heatmap)")
    p.add_argument("--tolerance", type=float, default=15.0, help="pointing-game tolerance in pixels")
    p.add_argument("--spg-samples", type=int, default=100, help="draws per heatmap for the stochastic PG")
    p.add_argument("--seed", type=int, default=0, help="seed of the stochastic PG draws")
    p.add_argument("-j", "--workers", type=int, default=0 if (os.cpu_count() or 1) <= 2 else 4,
                   help="data-loading worker processes; 0 = loader threads in this process "
                        "(default: 0 on <= 2 CPUs, where it measured fastest, else 4)")
    p.add_argument("-b", "--batch-size", type=int, default=16,
                   help="images per forward (images of equal size are batched together)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--classes", default=None,
                   help="ImageNet: file listing the class wnids in model order, one per line "
                        "(default: sorted folders of ROOT/train)")
    p.add_argument("--split", default=None,
                   help="COCO: image folder / annotation split (default val2014, or the only "
                        "instances_*.json there is); the split used is recorded in the results")
    p.add_argument("--output", default="results.json")
    p.add_argument("--per-image", default=None,
                   help="JSON-lines file of per-image results; an existing one is resumed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")


def _positive(text: str) -> int:
    """argparse type: an integer >= 1 (one-line usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--method-batch`` and ``--method-option KEY=VALUE`` as keyword arguments of the methods
    (values parsed as Python literals where they are one: 20, 0.5, True; else kept as text)."""
    import ast

    from gridcam.errors import GridcamError

    opts: dict[str, Any] = {}
    if args.method_batch is not None:
        opts.update(method_batch=args.method_batch, chunk=args.method_batch)
    for item in args.method_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise GridcamError(f"--method-option {item!r}: expected KEY=VALUE, e.g. samples=20")
        try:
            opts[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            opts[key.strip()] = value.strip()
    return opts


def config_from_args(args: argparse.Namespace, meta: Mapping[str, Any],
                     num_classes: int, model: Any = None) -> Any:
    """The :class:`~gridcam.evaluation.loop.EvalConfig` of the flags; ``meta`` is what the
    checkpoint says about the model (arch, pooling), recorded with the results."""
    from gridcam.evaluation.loop import EvalConfig
    from gridcam.models import info as models_info

    record = {
        "dataset": args.dataset, "root": str(Path(args.root).resolve()),
        "checkpoint": str(Path(args.checkpoint).resolve()),
        "arch": args.arch or meta.get("arch"),
        "pooling": "max" if args.maxpool else meta.get("pooling", "avg"),
        "num_classes": num_classes, "input_resize": args.input_resize,
        "gradcam_variant": args.gradcam_variant,
    }
    built = models_info(model) if model is not None else None
    if built is not None:
        record.update({k: v for k, v in built.as_dict().items()
                       if k in ("cam_layer", "reshape", "mean", "std")})
    if args.dataset == "coco":
        record["split"] = args.split
    return EvalConfig(
        method_options=method_options(args),
        methods=args.methods, metrics=args.metrics, gradcam_variant=args.gradcam_variant,
        tolerance=args.tolerance, spg_samples=args.spg_samples, seed=args.seed,
        batch_size=args.batch_size, workers=args.workers, limit=args.limit,
        input_resize=args.input_resize, multilabel=args.dataset == "coco",
        num_classes=num_classes, per_image=args.per_image, output=args.output,
        progress=not getattr(args, "quiet", False), record=record)


def run(args: argparse.Namespace) -> int:
    """Handler of ``gridcam evaluate imagenet|coco ROOT``: model and dataset from the flags, one
    evaluation pass, then (rank 0) the table and the skip counts on stdout."""
    import torch

    from gridcam import models
    from gridcam.runtime import distributed as D
    from gridcam.evaluation.data import build_dataset
    from gridcam.evaluation.loop import evaluate, model_classes
    from gridcam.evaluation.tables import format_table
    from gridcam.errors import GridcamError

    info = D.setup(args.device)
    if info.device.type == "cuda":
        # TF32 (on by default for cuDNN convolutions) perturbs heatmaps by ~1e-3 relative, enough
        # to move pointing-game points; evaluation numbers should not depend on the GPU model.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        if not args.checkpoint:
            raise GridcamError("--checkpoint PATH is required (the weights to evaluate; "
                               "the number of classes is read from it)")
        model, meta = models.create_from_checkpoint(
            args.checkpoint, arch=args.arch, pooling="max" if args.maxpool else None,
            cam_layer=args.cam_layer, reshape=args.reshape, mean=args.mean, std=args.std)
        if args.maxpool and meta.get("pooling") == "avg":
            raise GridcamError(f"--maxpool contradicts {args.checkpoint}, which records average "
                               "pooling; drop --maxpool (the recorded pooling is used by default)")
        num_classes = model_classes(model)
        built = models.info(model)
        norm = {"mean": built.mean, "std": built.std} if built is not None else {}
        dataset = build_dataset(args.dataset, args.root, args.input_resize, num_classes,
                                classes_file=args.classes, split=args.split, **norm)
        config = config_from_args(args, meta, num_classes, model)
        results = evaluate(model, dataset, config, device=info.device)
        if info.is_main:
            print(format_table(results, multilabel=args.dataset == "coco"))
            _print_skips(results)
            print(f"results written to {args.output}")
    finally:
        D.cleanup()
    return 0


def _print_skips(results: Mapping[str, Any]) -> None:
    im = results["images"]
    skipped = "".join(f", {v} skipped ({k})" for k, v in im["skipped_reasons"].items())
    print(f"images: {im['evaluated']} evaluated ({im['resumed']} read back from the per-image "
          f"file){skipped}, in {im['seconds']:.1f} s")
    for m, r in results["metrics"].items():
        if r["skipped_reasons"]:
            reasons = ", ".join(f"{k}: {v}" for k, v in r["skipped_reasons"].items())
            print(f"{m}: {r['skipped']} pairs skipped ({reasons})")
