"""``gridcam demo``: the study's quick preset on built-in synthetic data, with an HTML page."""

from __future__ import annotations

import argparse

from gridcam.cli.common import check_output_dir, non_negative, positive


# ----------------------------------------------------------------------------------------- demo
def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end to end on built-in synthetic data: the study's quick preset "
                                    "(four rows, one seed) and an HTML report")
    p.add_argument("--out", default="runs/demo", help="output folder (checked before anything runs)")
    p.add_argument("--epochs", type=non_negative, default=None,
                   help="training epochs of each row (default: the preset's)")
    p.add_argument("--lambda", dest="lam", type=float, default=None, help="GC weight (default: the preset's)")
    p.add_argument("--seeds", type=positive, default=None, help="seeds 0..N-1 (default: 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``gridcam demo``: the study's quick preset and its report page."""
    from gridcam.study import demo

    check_output_dir("--out", args.out)
    demo.run(args.out, epochs=args.epochs, lam=args.lam, seeds=args.seeds)
    return 0
