"""``gridcam models``, ``gridcam methods``, ``gridcam selfcheck``, ``gridcam synth`` and ``gridcam coco-negatives``: small commands."""

from __future__ import annotations

import argparse

from gridcam.cli.common import lazy as _lazy


# --------------------------------------------------------------------------------------- models
def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the built-in architectures")
    p.set_defaults(func=_lazy("gridcam.models:cli_list"))


# --------------------------------------------------------------------------------------- methods
def add_methods(sub: argparse._SubParsersAction) -> None:
    # Registered in cli/__init__.py together with the README's command-table row (test_readme
    # checks that every subcommand is documented).
    p = sub.add_parser("methods", help="list the explanation methods with their options and cost")
    p.set_defaults(func=_lazy("gridcam.cam:cli_list"))


# ------------------------------------------------------------------------------------ selfcheck
def add_selfcheck(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("selfcheck", help="a few-second check that models, Grad-CAM and gridding work")
    p.add_argument("--arch", default="tiny_resnet")
    p.set_defaults(func=_lazy("gridcam.selfcheck:main"))


# ---------------------------------------------------------------------------------------- synth
def add_synth(sub: argparse._SubParsersAction) -> None:
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
def add_coco_negatives(sub: argparse._SubParsersAction) -> None:
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
