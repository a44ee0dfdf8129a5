"""``gridcam layers -a ARCH``: the candidate CAM layers of any model, with their output shapes."""

from __future__ import annotations

import argparse

from gridcam.cli.common import add_alias, positive


def add_layers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("layers", help="list a model's layers with output shapes and the default CAM layer")
    p.add_argument("-a", "--arch", required=True,
                   help="REQUIRED: built-in name, torchvision:NAME, timm:NAME, hf:NAME_OR_PATH or MODULE:FACTORY")
    p.add_argument("--image-size", type=positive, default=None,
                   help="side of the square probe input in px (default: the model's own, else 224)")
    add_alias(p, "--input-size", dest="image_size", type=positive)
    p.add_argument("--num-classes", type=positive, default=1000, help="classes of the probe model's head")
    p.add_argument("--all", action="store_true",
                   help="also list layers whose output cannot be a CAM grid")
    p.add_argument("--cam-layer", default=None,
                   help="mark this layer instead of the default (negative indices count from the "
                        "end: blocks.-1.norm1), to see what it resolves to")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Every layer's output for one probe input, and the default CAM layer (or ``--cam-layer``,
    by its canonical name) marked ``*``."""
    from gridcam import models
    from gridcam.models.layers import format_layers

    built = models.build(args.arch, num_classes=args.num_classes, cam_layer=args.cam_layer,
                         reshape="auto", input_size=args.image_size)
    outputs = models.probe(built.model, built.input_size)
    for line in format_layers(built, outputs, show_all=args.all, given=args.cam_layer):
        print(line)
    return 0
