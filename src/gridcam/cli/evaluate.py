"""``gridcam evaluate imagenet|coco``: flags -> an evaluation configuration -> the evaluation engine."""

from __future__ import annotations

import argparse

from gridcam.cli.common import lazy as _lazy
import os


# ------------------------------------------------------------------------------------- evaluate
def add_evaluate(sub: argparse._SubParsersAction) -> None:
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
