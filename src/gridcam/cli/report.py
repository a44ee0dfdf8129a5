"""``gridcam report``: one self-contained page comparing finished training/evaluation runs."""

from __future__ import annotations

import argparse

from gridcam.cli.common import (
    add_alias,
    add_methods_option,
    check_output_dir,
    non_negative,
    parse_methods,
    positive,
)


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="one HTML page comparing runs: curves, results table, heatmaps, a composite",
        description="Reads each RUN_DIR's train_log.jsonl, checkpoints, results JSON (results.json or "
                    "any evaluation output inside the folder) and per-image JSONL, and writes "
                    "OUT/index.html with its pictures beside it (move the folder as one).")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training save dirs (first = the reference)")
    p.add_argument("--out", default="report", help="output folder")
    p.add_argument("--name", action="append", default=None, metavar="NAME",
                   help="display name of each run, in order (repeatable; default: the folder names)")
    p.add_argument("--markdown", action="store_true", help="also print the results table as Markdown")
    p.add_argument("--images", type=non_negative, default=6, help="validation images in the heatmap comparison")
    p.add_argument("--candidates", type=positive, default=48,
                   help="without per-image JSONL: validation images scored to choose them")
    add_methods_option(p, several=False)
    p.add_argument("--input-resize", type=positive, default=None,
                   help="shorter side for the heatmaps (default: the evaluation's, else 224)")
    add_alias(p, "--input_resize", dest="input_resize", type=positive)
    p.add_argument("--title", default=None, help="page title (default: one naming the runs)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Handler of ``gridcam report RUN_DIR...``: flags -> ReportConfig -> the page."""
    from gridcam.report.run_report import ReportConfig, build

    (method,) = parse_methods(args.methods, several=False)
    check_output_dir("--out", args.out)
    res = build(ReportConfig(runs=args.runs, out=args.out, names=args.name, images=args.images,
                             candidates=args.candidates, method=method, title=args.title,
                             input_resize=args.input_resize))
    if args.markdown:
        print(res["markdown"])
    print("".join(f"- {v}\n" for v in res["verdicts"]), end="")
    print(f"report: {res['page']}")
    return 0
