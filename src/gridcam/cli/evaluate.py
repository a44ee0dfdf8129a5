"""``gridcam evaluate imagenet|coco``: flags -> an evaluation configuration -> the evaluation engine."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Mapping

from gridcam.cli.common import (
    add_alias,
    add_device_option,
    add_methods_option,
    add_model_options,
    check_output_file,
    non_negative,
    parse_methods,
    positive,
    save_results,
)


# ------------------------------------------------------------------------------------- evaluate
def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score explanations: pointing game, stochastic PG, content heatmap",
                       description="Score the explanations of one checkpoint on localisation data "
                                   "in one pass: pointing game, stochastic pointing game, content "
                                   "heatmap, plus top-1/top-5 (ImageNet) or P/R/F1 (COCO).")
    kinds = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name in ("imagenet", "coco"):
        k = kinds.add_parser(name, help=f"{name}-style validation data")
        k.add_argument("root", help="the dataset root (ImageNet: ROOT/val + boxes; COCO: "
                                    "ROOT/val2014 + ROOT/annotations)")
        k.set_defaults(func=run)
        _evaluate_options(k)


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "--resume", dest="checkpoint", default=None,
                   help="REQUIRED: weights to evaluate (ours, the paper's, torchvision's); classes are "
                        "read from it (no default; --resume is the paper's spelling)")
    p.add_argument("-a", "--arch", default=None,
                   help="architecture (default: recorded in the checkpoint, else guessed from its keys): "
                        "a built-in name, torchvision:NAME, timm:NAME, hf:NAME_OR_PATH or MODULE:FACTORY")
    p.add_argument("--maxpool", action="store_true",
                   help="the model uses global max pooling (GMP); default: the pooling the checkpoint "
                        "records (a checkpoint recorded with average pooling refuses --maxpool)")
    p.add_argument("--input-resize", type=positive, default=224,
                   help="shorter side of the network input in px, no crop (the paper: 448)")
    add_alias(p, "--input_resize", dest="input_resize", type=positive)
    add_model_options(p)
    add_methods_option(p, several=True)
    p.add_argument("--method-batch", type=positive, default=None,
                   help="perturbed images per forward for the perturbation methods (RISE, occlusion, "
                        "Score-CAM, Ablation-CAM, extremal perturbation) and images per forward for "
                        "SmoothGrad / integrated gradients: a memory budget (default: each method's)")
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the methods that declare it, e.g. samples=20 or num_masks=1000 "
                        "(repeatable; none by default; `gridcam methods` lists each method's options "
                        "with their defaults)")
    p.add_argument("--gradcam-variant", choices=["elementwise", "classic"], default="elementwise",
                   help="Grad-CAM weighting: elementwise (the paper's: activations x gradients per "
                        "position) or classic (channel weights = mean gradient)")
    p.add_argument("--metrics", default="pg,spg,ch",
                   help="comma-separated: pg (pointing game), spg (stochastic PG), ch (content heatmap), "
                        "deletion, insertion (RISE's AUCs), focus (2x2 mosaics), randomisation "
                        "(Spearman vs a re-initialised top); see docs/metrics.md")
    p.add_argument("--faithfulness-steps", type=positive, default=32,
                   help="deletion/insertion: steps of the curve (n+1 points)")
    p.add_argument("--deletion-baseline", choices=["zero", "mean", "blur"], default="zero",
                   help="what deleted pixels become (RISE: zero)")
    p.add_argument("--insertion-baseline", choices=["zero", "mean", "blur"], default="blur",
                   help="what insertion starts from (RISE: blur)")
    p.add_argument("--faithfulness-batch", type=positive, default=None,
                   help="perturbed images per forward (default: 64 on GPU, cache-sized on CPU)")
    p.add_argument("--tolerance", type=float, default=15.0, help="pointing-game tolerance in pixels")
    p.add_argument("--spg-samples", type=positive, default=100,
                   help="draws per heatmap for the stochastic PG")
    p.add_argument("--seed", type=int, default=0, help="seed of the stochastic PG draws")
    p.add_argument("-j", "--workers", type=non_negative, default=0 if (os.cpu_count() or 1) <= 2 else 4,
                   help="data-loading worker processes; 0 = loader threads in this process "
                        "(0 on <= 2 CPUs, where it measured fastest, else 4)")
    p.add_argument("-b", "--batch-size", type=positive, default=16,
                   help="images per forward (images of equal size are batched together)")
    p.add_argument("--limit", type=positive, default=None,
                   help="only the first N images (default: all)")
    p.add_argument("--classes", default=None,
                   help="ImageNet: file listing the class wnids in model order, one per line "
                        "(default: sorted folders of ROOT/train)")
    p.add_argument("--split", default=None,
                   help="COCO: image folder / annotation split (default val2014, or the only "
                        "instances_*.json there is); the split used is recorded in the results")
    p.add_argument("--output", default="results.json",
                   help="the results JSON file (checked before the pass; if it cannot be written "
                        "at the end, the JSON goes to the current folder and the error says where)")
    p.add_argument("--per-image", default=None,
                   help="JSON-lines file of per-image results; an existing one is resumed "
                        "(default: none written)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_option(p)


def _accepts(default: Any, value: Any) -> str | None:
    """None when ``value`` has the type of the option's ``default``, else what it should be."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "True or False"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a word"
    return None


def check_method_options(methods: list[str], opts: Mapping[str, Any]) -> None:
    """Refuse, before any work, a ``--method-option`` that none of ``methods`` can use: an unknown
    key (:func:`gridcam.cam.select_options`), a value of the wrong type (the type of the option's
    default in the method's signature), or an option that takes a Python object (default None,
    e.g. a torch.Generator). Raises GridcamError naming the option, the method and the default."""
    import inspect

    from gridcam import cam
    from gridcam.errors import GridcamError

    names = cam.list_methods() if methods == ["all"] else methods
    for method in names:
        try:
            chosen = cam.select_options(method, opts)
        except GridcamError as exc:
            raise GridcamError(f"--method-option: {exc}") from None
        params = inspect.signature(cam.METHOD_INFO[method].fn).parameters
        for key, value in chosen.items():
            param = params.get(key)
            if param is None or param.default is inspect.Parameter.empty:
                continue
            if param.default is None:
                raise GridcamError(f"--method-option {key}: {method}'s {key} takes a Python object "
                                   "(see `gridcam methods`), not a value from the command line")
            wanted = _accepts(param.default, value)
            if wanted is not None:
                raise GridcamError(f"--method-option {key}={value!r}: {method}'s {key} is {wanted} "
                                   f"(default {param.default!r})")


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
    checkpoint says about the model (arch, pooling), recorded with the results. Its ``output`` is
    None: :func:`run` writes the results itself, after printing them (:func:`save_results`)."""
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
        methods=parse_methods(args.methods, several=True, allow_all=True), metrics=args.metrics, gradcam_variant=args.gradcam_variant,
        tolerance=args.tolerance, spg_samples=args.spg_samples, seed=args.seed,
        faithfulness_steps=args.faithfulness_steps, deletion_baseline=args.deletion_baseline,
        insertion_baseline=args.insertion_baseline, faithfulness_batch=args.faithfulness_batch,
        batch_size=args.batch_size, workers=args.workers, limit=args.limit,
        input_resize=args.input_resize, multilabel=args.dataset == "coco",
        num_classes=num_classes, per_image=args.per_image, output=None,
        progress=not getattr(args, "quiet", False), record=record)


def _check_flags(args: argparse.Namespace) -> None:
    """Everything the flags alone can tell, before the model is read or an image decoded: the
    checkpoint is given, the methods and their options exist and type-check, and the output files
    can be written. Raises GridcamError naming the flag."""
    from gridcam.errors import GridcamError

    if not args.checkpoint:
        raise GridcamError("--checkpoint PATH is required (the weights to evaluate; "
                           "the number of classes is read from it)")
    methods = parse_methods(args.methods, several=True, allow_all=True)
    check_method_options(methods, method_options(args))
    check_output_file("--output", args.output)
    if args.per_image is not None:
        check_output_file("--per-image", args.per_image)


def run(args: argparse.Namespace) -> int:
    """Handler of ``gridcam evaluate imagenet|coco ROOT``: the flags checked, model and dataset
    from them, one evaluation pass, then (rank 0) the table and the skip counts on stdout, and
    only then the results file (a failing write falls back to another place: nothing is lost)."""
    import torch

    from gridcam import models
    from gridcam.runtime import distributed as D
    from gridcam.evaluation.data import build_dataset
    from gridcam.evaluation.loop import evaluate, model_classes
    from gridcam.evaluation.tables import format_table
    from gridcam.errors import GridcamError

    _check_flags(args)
    info = D.setup(args.device)
    if info.device.type == "cuda":
        # TF32 (on by default for cuDNN convolutions) perturbs heatmaps by ~1e-3 relative, enough
        # to move pointing-game points; evaluation numbers should not depend on the GPU model.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
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
            save_results("--output", args.output, results)
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
