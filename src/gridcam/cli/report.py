"""``gridcam report``: one self-contained page comparing finished training/evaluation runs."""

from __future__ import annotations

import argparse


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="one HTML page comparing runs: curves, results table, heatmaps, a composite",
        description="Reads each RUN_DIR's train_log.jsonl, checkpoints, results JSON (results.json or "
                    "any evaluation output inside the folder) and per-image JSONL, and writes "
                    "OUT/index.html with its pictures beside it (move the folder as one).")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training save dirs (first = the reference)")
    p.add_argument("--out", default="report", help="output folder (default ./report)")
    p.add_argument("--name", action="append", default=None, metavar="NAME",
                   help="display name of each run, in order (default: the folder names)")
    p.add_argument("--markdown", action="store_true", help="also print the results table as Markdown")
    p.add_argument("--images", type=int, default=6, help="validation images in the heatmap comparison")
    p.add_argument("--candidates", type=int, default=48,
                   help="without per-image JSONL: validation images scored to choose them")
    p.add_argument("--method", default="gradcam", help="explanation method of the heatmap comparison")
    p.add_argument("--input-resize", type=int, default=None,
                   help="shorter side for the heatmaps (default: the evaluation's, else 224)")
    p.add_argument("--title", default=None, help="page title")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Handler of ``gridcam report RUN_DIR...``: flags -> ReportConfig -> the page."""
    from gridcam.report.run_report import ReportConfig, build

    res = build(ReportConfig(runs=args.runs, out=args.out, names=args.name, images=args.images,
                             candidates=args.candidates, method=args.method, title=args.title,
                             input_resize=args.input_resize))
    if args.markdown:
        print(res["markdown"])
    print("".join(f"- {v}\n" for v in res["verdicts"]), end="")
    print(f"report: {res['page']}")
    return 0
