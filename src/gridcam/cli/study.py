"""``gridcam study``: the paper's four rows trained and scored alike, mean ± 95% CI over seeds."""

from __future__ import annotations

import argparse

from gridcam.cli.common import (
    check_output_dir,
    check_output_file,
    non_negative,
    positive,
)


def add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="train + score Baseline, Ours: GC, GMP, Ours: GMP + GC over seeds; paper-layout table",
        description="Trains the paper's four ImageNet rows with the same data, schedule and seeds, scores "
                    "every model with PG/SPG/CH for several explanation methods, and writes OUT/study.json "
                    "and OUT/study.md (mean ± 95% t-interval, paired differences). Resumable.")
    p.add_argument("--preset", choices=("quick", "cpu", "gpu"), default="quick",
                   help="quick: 1 seed, minutes on 2 CPU cores (the demo); cpu: 5 seeds; gpu: the paper's "
                        "recipe on a real ImageNet root (with --data)")
    p.add_argument("--data", default=None, help="an ImageNet-style root (default: synthetic data in OUT/data)")
    p.add_argument("--seeds", type=positive, default=None, help="number of seeds 0..N-1 (default: the preset's)")
    p.add_argument("-a", "--arch", default=None, help="architecture (default: the preset's)")
    p.add_argument("--epochs", type=non_negative, default=None,
                   help="epochs of each row (after the shared pre-training of the cpu presets; "
                        "default: the preset's)")
    p.add_argument("--lr", type=float, default=None, help="learning rate of each row (default: the preset's)")
    p.add_argument("--lambda", dest="lam", type=float, default=None,
                   help="GC weight of the GC rows (default: the preset's)")
    p.add_argument("--rows", default=None,
                   help="comma-separated subset of baseline,gc,gmp,gmp_gc (default: all four)")
    p.add_argument("--methods", default=None,
                   help="comma-separated explanation methods to score (default: gradcam,gradient,"
                        "input_x_gradient; gradcam is always scored)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated metrics beside pg,spg,ch (always scored): deletion, insertion, "
                        "focus, randomisation (docs/metrics.md; default: none)")
    p.add_argument("--workers", type=non_negative, default=None,
                   help="data-loading processes per training (default: 0)")
    p.add_argument("--jobs", type=positive, default=None,
                   help="trainings run side by side, one process each (default: one per CPU core, one thread "
                        "each; 1 on a GPU); the numbers do not depend on it")
    p.add_argument("--out", default="runs/study", help="output folder (checked before anything runs)")
    p.add_argument("--markdown", "--table", dest="markdown", metavar="DIR", default=None,
                   help="only print the table of DIR/study.json (nothing is trained; default: train and score)")
    p.add_argument("--render-readme", metavar="FILE", nargs="*", default=None,
                   help="only rewrite the <!-- results:NAME --> blocks of each FILE (default: README.md and "
                        "docs/study.md) from docs/results/NAME.json (nothing is trained)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from gridcam.study import runner as study

    if args.markdown:
        print(study.table(study.load(args.markdown)), end="")
        return 0
    if args.render_readme is not None:
        from gridcam.study.readme import render_file

        for path in args.render_readme or ["README.md", "docs/study.md"]:
            check_output_file("--render-readme", path)
            print(f"{path}: {'rewritten' if render_file(path) else 'already up to date'}")
        return 0
    check_output_dir("--out", args.out)
    rows = tuple(r.strip() for r in args.rows.split(",")) if args.rows else None
    config = study.config_for(args.preset, out=args.out, data=args.data, seeds=args.seeds,
                              arch=args.arch, epochs=args.epochs, lr=args.lr, lam=args.lam,
                              rows=rows, workers=args.workers, jobs=args.jobs, progress=None,
                              methods=args.methods, metrics=args.metrics)
    known = {r.slug for r in study.ROWS}
    if not set(config.rows) <= known:
        from gridcam.errors import GridcamError

        raise GridcamError(f"--rows {args.rows}: choose among {', '.join(sorted(known))}")
    print(f"[study] {study.describe(config)}", flush=True)
    result = study.run_study(config)
    print(study.table(result), end="")
    print(f"[study] {result['wall_seconds']:.0f}s; {config.out}/study.json, {config.out}/study.md")
    return 0
