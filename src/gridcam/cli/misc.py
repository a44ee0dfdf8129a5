"""``gridcam models``, ``gridcam methods``, ``gridcam selfcheck``, ``gridcam synth`` and ``gridcam coco-negatives``: small commands."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gridcam.cli.common import (
    add_alias,
    at_least,
    check_output_dir,
    check_output_file,
    fraction,
    leaf_module,
    non_negative,
    positive,
)


# --------------------------------------------------------------------------------------- models
def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the built-in architectures")
    p.set_defaults(func=list_models)


# --------------------------------------------------------------------------------------- methods
def add_methods(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("methods", help="list the explanation methods with their options and cost")
    p.set_defaults(func=list_methods)


# ------------------------------------------------------------------------------------ selfcheck
def add_selfcheck(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("selfcheck", help="a few-second check that models, Grad-CAM and gridding work")
    p.add_argument("-a", "--arch", default="tiny_resnet", help="architecture to check")
    p.set_defaults(func=selfcheck)


# ---------------------------------------------------------------------------------------- synth
def _synth_common(p: argparse.ArgumentParser, cue: str) -> None:
    """The options both synthetic layouts share (image size, cue, seed, processes)."""
    p.add_argument("--image-size", type=at_least(16), default=128, help="side of the square images in px")
    p.add_argument("--spurious", type=fraction, default=0.0,
                   help=f"probability that the background carries a cue correlated with {cue}")
    p.add_argument("--val-spurious", type=fraction, default=None,
                   help="the same for val images (default: --spurious; 0 = a val set without the cue)")
    p.add_argument("--seed", type=int, default=0, help="seed of everything drawn")
    p.add_argument("-j", "--workers", type=positive, default=None,
                   help="generator processes (default: 1 below 2000 images, else up to 8)")


def add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic dataset in the real ImageNet or COCO formats",
                       description="Write a small dataset of drawn shapes on textured backgrounds, in "
                                   "the real ImageNet or COCO file layout, to try every command without "
                                   "downloading anything.")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="LAYOUT")
    im = kinds.add_parser("imagenet", help="ImageNet layout: train/<wnid>/*.JPEG, val/*.JPEG + VOC XML")
    im.add_argument("out", help="folder to write (created; checked before anything is drawn)")
    im.add_argument("--num-classes", dest="classes", type=positive, default=10, metavar="N",
                    help="number of classes")
    add_alias(im, "--classes", dest="classes", type=positive)  # elsewhere --classes is a FILE
    im.add_argument("--train-per-class", type=positive, default=40, help="training images per class")
    im.add_argument("--val-per-class", type=non_negative, default=10, help="validation images per class")
    _synth_common(im, "the class")
    im.set_defaults(func=synth_imagenet)
    co = kinds.add_parser("coco", help="COCO layout: train2014/, val2014/, annotations/instances_*.json")
    co.add_argument("out", help="folder to write (created; checked before anything is drawn)")
    co.add_argument("--images-train", type=positive, default=200, help="training images")
    co.add_argument("--images-val", type=non_negative, default=50, help="validation images")
    co.add_argument("--categories", type=positive, default=8, help="number of categories")
    _synth_common(co, "a category present")
    co.set_defaults(func=synth_coco)


# ------------------------------------------------------------------------------- coco-negatives
def add_coco_negatives(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("coco-negatives",
                       help="write, per category, the images that do not contain it (JSON)")
    p.add_argument("data", help="COCO root (with annotations/instances_<split>2014.json)")
    p.add_argument("--split", choices=["train", "val"], default="train", help="which split's annotations")
    p.add_argument("--year", default="2014", help="annotation year: instances_<split><year>.json")
    p.add_argument("--annotations", default=None,
                   help="the instances JSON to read (default: DATA/annotations/instances_<split><year>.json)")
    p.add_argument("--output", default=None,
                   help="the index JSON to write (default: negatives_<split><year>.json beside the "
                        "annotation file)")
    p.set_defaults(func=coco_negatives)


# ------------------------------------------------------------------------------------- handlers
def list_models(args: argparse.Namespace) -> int:
    """``gridcam models``: one line per built-in architecture (the torch-free catalog), the names
    in a column as wide as the longest."""
    architectures = leaf_module("gridcam.models.catalog").ARCHITECTURES
    width = max(map(len, architectures))
    for name, description in architectures.items():
        print(f"{name:<{width}} {description}")
    print("outside models: torchvision:NAME, timm:NAME, hf:NAME_OR_PATH, MODULE:FACTORY "
          "(see `gridcam layers -a ARCH`)")
    return 0


def selfcheck(args: argparse.Namespace) -> int:
    """``gridcam selfcheck``: one Grad-CAM consistency step, then one line saying what held."""
    import torch

    from gridcam import selfcheck as check

    out = check.run(arch=args.arch)
    print(f"gridcam selfcheck ({args.arch}, torch {torch.__version__}, "
          f"cuda {'yes' if torch.cuda.is_available() else 'no'}): one Grad-CAM consistency step, "
          f"CE {out['ce']:.4f}, GC {out['gc']:.6f}, grad norm {out['grad_norm']:.4f}, "
          f"{out['seconds']:.2f}s — OK")
    return 0


def synth_imagenet(args: argparse.Namespace) -> int:
    """``gridcam synth imagenet OUT ...``"""
    from gridcam.data.synthetic import make_imagenet

    check_output_dir("OUT", args.out)
    t0 = time.time()
    out = make_imagenet(args.out, classes=args.classes, train_per_class=args.train_per_class,
                        val_per_class=args.val_per_class, image_size=args.image_size,
                        spurious=args.spurious, seed=args.seed, workers=getattr(args, "workers", None),
                        val_spurious=getattr(args, "val_spurious", None))
    n = args.classes * (args.train_per_class + args.val_per_class)
    print(f"wrote {n} images ({args.classes} classes) to {out} in {time.time() - t0:.1f}s: "
          f"train/<wnid>/*.JPEG, val/*.JPEG + *.xml, LOC_val_solution.csv, LOC_synset_mapping.txt")
    return 0


def synth_coco(args: argparse.Namespace) -> int:
    """``gridcam synth coco OUT ...``"""
    from gridcam.data.synthetic import make_coco

    check_output_dir("OUT", args.out)
    t0 = time.time()
    out = make_coco(args.out, images_train=args.images_train, images_val=args.images_val,
                    categories=args.categories, image_size=args.image_size, spurious=args.spurious,
                    seed=args.seed, workers=getattr(args, "workers", None),
                    val_spurious=getattr(args, "val_spurious", None))
    print(f"wrote {args.images_train + args.images_val} images ({args.categories} categories) to "
          f"{out} in {time.time() - t0:.1f}s: train2014/, val2014/, annotations/instances_*2014.json")
    return 0


def coco_negatives(args: argparse.Namespace) -> int:
    """``gridcam coco-negatives DATA [--split train|val] [--year 2014] [--output FILE]``."""
    from gridcam.data.negatives import build_coco_negatives, load_coco_json, save_negatives

    year = getattr(args, "year", "2014")
    split = f"{args.split}{year}"
    ann = Path(args.annotations) if getattr(args, "annotations", None) else \
        Path(args.data) / "annotations" / f"instances_{split}.json"
    out = Path(args.output) if args.output else ann.parent / f"negatives_{split}.json"
    check_output_file("--output", out)
    t0 = time.time()
    data = load_coco_json(ann)
    t1 = time.time()
    index = build_coco_negatives(data)
    t2 = time.time()
    save_negatives(index, out)
    n_img = len(data.get("images", []))
    n_annotated = len({a["image_id"] for a in data.get("annotations", [])})
    print(f"{ann}: {len(index)} categories, {n_annotated} annotated images "
          f"({n_img - n_annotated} without annotations left out); index built in {t2 - t1:.2f}s "
          f"(JSON read {t1 - t0:.1f}s); wrote {out}")
    return 0


def list_methods(args: argparse.Namespace) -> int:
    """``gridcam methods``: name, cost relative to Grad-CAM, cost per image, description and
    options, cheapest first; descriptions and options wrapped to the terminal (at most 110 columns).
    Read from the torch-free catalog (:mod:`gridcam.cam.catalog`): no torch is imported."""
    import shutil
    import textwrap

    rows = leaf_module("gridcam.cam.catalog").describe()
    width = max(len(r["name"]) for r in rows)
    cost_w = min(28, max(len(r["cost"]) for r in rows))
    cols = max(80, min(110, shutil.get_terminal_size((110, 24)).columns))
    indent = width + 2 + 6 + 2 + cost_w + 2
    wrap = textwrap.TextWrapper(width=max(30, cols - indent))
    print(f"{'method':<{width}}  {'xGCAM':>6}  {'cost/image':<{cost_w}}  description")
    for r in rows:
        desc = wrap.wrap(r["description"]) or [""]
        cost = textwrap.wrap(r["cost"], cost_w) or [""]
        for i in range(max(len(desc), len(cost))):
            head = (f"{r['name']:<{width}}  {r['relative']:>6g}" if i == 0 else " " * (width + 8))
            print(f"{head}  {cost[i] if i < len(cost) else '':<{cost_w}}  {desc[i] if i < len(desc) else ''}".rstrip())
        if r["options"]:
            text = "options: " + "; ".join(f"{k}: {v}" for k, v in r["options"].items())
            for line in textwrap.wrap(text, max(30, cols - width - 4)):
                print(" " * (width + 4) + line)
    print("\nxGCAM: rough time relative to Grad-CAM, one target at the default options. cost/image: "
          "F = one forward\nand B = one backward pass of the model, per image (T targets share them "
          "unless 'per target').")
    return 0
