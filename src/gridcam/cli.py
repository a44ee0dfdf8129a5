"""The ``gridcam`` command: a thin argparse front, one sub-command per job.

Each sub-command's options are declared in its own ``_add_<name>`` function below and the parsed
namespace is handed to the engine (or data) function named in ``set_defaults(func=...)``. Nothing
here computes anything; heavy imports happen lazily inside the handlers so ``gridcam --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable, Sequence

from gridcam.recipes import recipe


#: More loader processes than cores only adds contention (and a DataLoader warning).
_DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


def _lazy(target: str) -> Callable[[argparse.Namespace], int | None]:
    """Return a handler that imports ``module:function`` only when the sub-command runs."""
    module_name, func_name = target.split(":")

    def handler(args: argparse.Namespace) -> int | None:
        return getattr(importlib.import_module(module_name), func_name)(args)

    handler.__name__ = func_name
    return handler


# --------------------------------------------------------------------------------------- models
def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the built-in architectures")
    p.set_defaults(func=_lazy("gridcam.models:cli_list"))


# ------------------------------------------------------------------------------------ selfcheck
def _add_selfcheck(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("selfcheck", help="a few-second check that models, Grad-CAM and gridding work")
    p.add_argument("--arch", default="tiny_resnet")
    p.set_defaults(func=_lazy("gridcam.selfcheck:main"))


# ---------------------------------------------------------------------------------------- synth
def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic dataset in the real ImageNet or COCO formats")
    kinds = p.add_subparsers(dest="kind", required=True)
    im = kinds.add_parser("imagenet", help="ImageNet layout: train/<wnid>/*.JPEG, val/*.JPEG + VOC XML")
    im.add_argument("out")
    im.add_argument("--classes", type=int, default=10)
    im.add_argument("--train-per-class", type=int, default=40)
    im.add_argument("--val-per-class", type=int, default=10)
    im.add_argument("--image-size", type=int, default=128)
    im.add_argument("--spurious", type=float, default=0.0,
                    help="probability that the background carries a cue correlated with the class")
    im.add_argument("--val-spurious", type=float, default=None,
                    help="the same for val images (default: --spurious; 0 = a val set without the cue)")
    im.add_argument("--seed", type=int, default=0)
    im.add_argument("--workers", type=int, default=None,
                    help="generator processes (default: 1 below 2000 images, else up to 8)")
    im.set_defaults(func=_lazy("gridcam.data.synthetic:cli_imagenet"))
    co = kinds.add_parser("coco", help="COCO layout: train2014/, val2014/, annotations/instances_*.json")
    co.add_argument("out")
    co.add_argument("--images-train", type=int, default=200)
    co.add_argument("--images-val", type=int, default=50)
    co.add_argument("--categories", type=int, default=8)
    co.add_argument("--image-size", type=int, default=128)
    co.add_argument("--spurious", type=float, default=0.0,
                    help="probability that the background carries a cue correlated with a category present")
    co.add_argument("--val-spurious", type=float, default=None,
                    help="the same for val images (default: --spurious)")
    co.add_argument("--seed", type=int, default=0)
    co.add_argument("--workers", type=int, default=None,
                    help="generator processes (default: 1 below 2000 images, else up to 8)")
    co.set_defaults(func=_lazy("gridcam.data.synthetic:cli_coco"))


# ------------------------------------------------------------------------------- coco-negatives
def _add_coco_negatives(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("coco-negatives",
                       help="write, per category, the images that do not contain it (JSON)")
    p.add_argument("data", help="COCO root (with annotations/instances_<split>2014.json)")
    p.add_argument("--split", choices=["train", "val"], default="train")
    p.add_argument("--year", default="2014", help="annotation year: instances_<split><year>.json")
    p.add_argument("--annotations", default=None,
                   help="the instances JSON to read (default: DATA/annotations/instances_<split><year>.json)")
    p.add_argument("--output", default=None,
                   help="default: negatives_<split><year>.json beside the annotation file")
    p.set_defaults(func=_lazy("gridcam.data.negatives:cli"))


# ---------------------------------------------------------------------------------------- train
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train with the Grad-CAM consistency loss (or the baseline, --lambda 0)")
    kinds = p.add_subparsers(dest="dataset", required=True)
    for name in ("imagenet", "coco"):
        k = kinds.add_parser(name, help=f"{name}-style data")
        k.add_argument("data")
        k.set_defaults(func=_lazy("gridcam.engine.train:main"))
        _train_options(k, coco=(name == "coco"))


def _train_options(p: argparse.ArgumentParser, coco: bool) -> None:
    p.add_argument("-a", "--arch", default="resnet18", help="architecture (see `gridcam models`)")
    p.add_argument("-b", "--batch-size", type=int, default=256,
                   help="GLOBAL batch over all ranks (per rank: batch / world size)")
    p.add_argument("-j", "--workers", type=int, default=_DEFAULT_WORKERS,
                   help="data-loading processes per rank (default: min(4, CPU count))")
    r = recipe("coco" if coco else "imagenet")
    p.add_argument("--epochs", type=int, default=int(r["epochs"]))
    p.add_argument("--lr", type=float, default=r["lr"])
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--wd", "--weight-decay", dest="wd", type=float, default=r["wd"],
                   help="weight decay (paper: 1e-4 ImageNet, 5e-4 COCO)")
    p.add_argument("--lambda", dest="lam", type=float, default=r["lam"],
                   help="weight of the Grad-CAM consistency loss; 0 = baseline (no composites)")
    p.add_argument("--maxpool", action="store_true", help="global max pooling (GMP) instead of average")
    p.add_argument("--resume", default=None,
                   help="checkpoint to continue from exactly (model, optimizer, schedule, RNG); "
                        "'auto' = the furthest one in --save-dir, if any")
    p.add_argument("--save-dir", "--save_dir", dest="save_dir", default="runs/train")
    p.add_argument("--seed", type=int, default=None,
                   help="run seed (default: drawn once and stored in the checkpoints)")
    p.add_argument("-e", "--evaluate", action="store_true",
                   help="only validate the model (weights from --resume, --pretrained or --init)")
    p.add_argument("--pretrained", default=None, help="weights file to start from (same classes)")
    p.add_argument("--init", default=None,
                   help="start from a checkpoint with its classifier dropped (ImageNet -> COCO)")
    p.add_argument("--negatives", choices=["batch", "dataset"], default="batch",
                   help="batch: composites from the current batch (no extra decoding); "
                        "dataset: the paper's loader-side sampling (3 extra images per sample)")
    p.add_argument("--detach-target", action="store_true",
                   help="stop gradients through the target heatmap of the original image")
    p.add_argument("--gradcam-variant", choices=["elementwise", "classic"], default="elementwise")
    p.add_argument("--amp", action="store_true", help="autocast (bf16 where supported, else fp16) on CUDA")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--schedule", choices=["step", "cosine"], default="step",
                   help="step: lr x0.1 at --lr-steps; cosine: cosine annealing over --epochs")
    p.add_argument("--lr-steps", default=None,
                   help="comma-separated epochs where the step schedule divides lr by 10 "
                        f"(default: {'24,30' if coco else 'every 30 epochs'}, the paper's)")
    p.add_argument("--print-freq", type=int, default=10, help="refresh the progress numbers every N steps")
    p.add_argument("--image-size", type=int, default=224, help="training crop (composites are twice it)")
    p.add_argument("--freeze-bn", action="store_true",
                   help="BatchNorm uses its running statistics and does not update them (fine-tuning "
                        "with small per-GPU batches)")
    if coco:
        p.add_argument("--train-split", default="train2014", help="image folder / annotation split")
        p.add_argument("--val-split", default="val2014", help="image folder / annotation split")
        p.add_argument("--coco-negatives", default=None,
                       help="negatives index for --negatives dataset (default: "
                            "DATA/annotations/negatives_<train-split>.json if present, else built in memory)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")


# ------------------------------------------------------------------------------------- evaluate
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score explanations: pointing game, stochastic PG, content heatmap")
    kinds = p.add_subparsers(dest="dataset", required=True)
    for name in ("imagenet", "coco"):
        k = kinds.add_parser(name, help=f"{name}-style validation data")
        k.add_argument("root")
        k.set_defaults(func=_lazy("gridcam.engine.evaluate:main"))
        _evaluate_options(k)


def _evaluate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "--resume", dest="checkpoint", default=None,
                   help="weights to evaluate (ours, the paper's, torchvision's); classes are read from it")
    p.add_argument("-a", "--arch", default=None,
                   help="architecture (default: recorded in the checkpoint, else guessed from its keys)")
    p.add_argument("--maxpool", action="store_true", help="the model uses global max pooling (GMP)")
    p.add_argument("--input-resize", "--input_resize", dest="input_resize", type=int, default=224,
                   help="shorter side of the network input, no crop (the paper: 448)")
    p.add_argument("--methods", default="gradcam",
                   help="comma-separated explanation methods: gradcam, gradient, input_x_gradient, smoothgrad")
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
    p.add_argument("--split", default="val2014", help="COCO: image folder / annotation split")
    p.add_argument("--output", default="results.json")
    p.add_argument("--per-image", default=None,
                   help="JSON-lines file of per-image results; an existing one is resumed")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")


# ----------------------------------------------------------------------------------------- demo
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end to end on built-in synthetic data: synth, train, evaluate, report")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=12, help="epochs of the shared from-scratch training")
    p.add_argument("--finetune-epochs", type=int, default=6,
                   help="epochs of each fine-tuning: baseline (lambda 0) and GC")
    p.add_argument("--lambda", dest="lam", type=float, default=10.0,
                   help="GC weight for the demo's 3x3 Grad-CAM maps (paper: 25 at 7x7)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_lazy("gridcam.engine.demo:main"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridcam",
        description="Explainable models with consistent interpretations (Grad-CAM consistency).",
    )
    from gridcam import __version__

    parser.add_argument("--version", action="version", version=f"gridcam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_demo, _add_train, _add_evaluate, _add_synth, _add_coco_negatives,
                _add_models, _add_selfcheck):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gridcam.errors import GridcamError

    try:
        result = args.func(args)
    except GridcamError as exc:
        print(f"gridcam: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gridcam: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
