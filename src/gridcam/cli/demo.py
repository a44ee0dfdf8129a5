"""``gridcam demo``: the end-to-end run on built-in synthetic data."""

from __future__ import annotations

import argparse



# ----------------------------------------------------------------------------------------- demo
def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end to end on built-in synthetic data: synth, train, evaluate, report")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=12, help="epochs of the shared from-scratch training")
    p.add_argument("--finetune-epochs", type=int, default=6,
                   help="epochs of each fine-tuning: baseline (lambda 0) and GC")
    p.add_argument("--lambda", dest="lam", type=float, default=10.0,
                   help="GC weight for the demo's 3x3 Grad-CAM maps (paper: 25 at 7x7)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``gridcam demo``."""
    from gridcam.engine import demo

    demo.run(args.out, epochs=args.epochs, finetune_epochs=args.finetune_epochs, lam=args.lam,
             seed=args.seed)
    return 0
