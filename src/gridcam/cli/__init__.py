"""The ``gridcam`` command: the only place with argparse, one module per command.

Each command module declares its options in ``add_<name>(sub)`` and turns the parsed flags into the
engine's typed configuration; nothing here computes anything. Heavy imports happen lazily inside
the handlers so ``gridcam --help`` is fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from gridcam.cli import demo, evaluate, explain, layers, misc, report, study, train
from gridcam.cli.common import Parser


def build_parser() -> argparse.ArgumentParser:
    """The ``gridcam`` parser with every command (a :class:`~gridcam.cli.common.Parser`: one-line
    argument errors, each option's default in its help)."""
    parser = Parser(
        prog="gridcam",
        description="Explainable models with consistent interpretations (Grad-CAM consistency). "
                    "docs/cli.md describes the commands and their common flags.",
    )
    from gridcam import __version__

    parser.add_argument("--version", action="version", version=f"gridcam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (demo.add_demo, study.add_study, train.add_train, evaluate.add_evaluate,
                explain.add_explain, report.add_report, misc.add_synth, misc.add_coco_negatives,
                misc.add_models, misc.add_methods, layers.add_layers, misc.add_selfcheck):
        add(sub)
    _mark_leaves(parser)
    return parser


def _mark_leaves(parser: argparse.ArgumentParser) -> None:
    """Give every command's own parser as the ``_leaf`` default of its namespace, so flags no
    parser knows are reported by the command they were given to (``gridcam explain: error: ...``)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        parser.set_defaults(_leaf=parser)
    for action in subs:
        for child in action.choices.values():
            _mark_leaves(child)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gridcam ARGV`` and return its exit status: 0 when done (``--help`` too), 2 for a user
    error (one line on stderr, no traceback: a bad argument or bad input), 130 when interrupted; a
    command may return another status (``train``: 3, 128+signal)."""
    parser = build_parser()
    try:  # --help, --version and argument errors end here: their status is returned, as any other
        args, extras = parser.parse_known_args(argv)
        if extras:
            getattr(args, "_leaf", parser).error(f"unrecognized arguments: {' '.join(extras)}")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    from gridcam import problems
    from gridcam.errors import GridcamError

    try:
        # Data problems: one line each, told once, counted by reason in a summary at the end.
        # Under torchrun only rank 0 tells them (the engines gather every rank's problems).
        with problems.plain_warnings(), problems.collecting(quiet=os.environ.get("RANK", "0") != "0"):
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
