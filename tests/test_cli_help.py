"""Every ``--help`` of every command describes every option and shows its default, and argument
errors are one line."""

from __future__ import annotations

import argparse

import pytest

from gridcam import cli
from gridcam.cli.common import HelpFormatter


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of ``parser`` and every sub-parser below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


PARSERS = list(_parsers(cli.build_parser()))


def _options(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        if action.help is argparse.SUPPRESS:  # an old spelling (docs/cli.md lists them)
            continue
        yield action


def test_every_command_is_walked():
    commands = {" ".join(path) for path, _ in PARSERS}
    assert {"train imagenet", "train coco", "evaluate imagenet", "evaluate coco", "explain", "report",
            "synth imagenet", "synth coco", "coco-negatives", "study", "demo", "layers", "selfcheck",
            "models", "methods"} <= commands


@pytest.mark.parametrize("path,parser", PARSERS, ids=[" ".join(p) or "gridcam" for p, _ in PARSERS])
def test_every_option_has_help_with_its_default(path, parser):
    formatter = HelpFormatter(prog=parser.prog)
    for action in _options(parser):
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"gridcam {' '.join(path)} {name}: no help"
        text = formatter._expand_help(action)
        if isinstance(action.default, bool) or not action.option_strings or action.required:
            continue  # a switch (off unless given), a positional or a required option (no default)
        if action.default is None or action.default == []:
            assert "default" in text, f"gridcam {' '.join(path)} {name}: help does not say what None means"
        else:
            shown = str(action.default)
            assert shown in text, f"gridcam {' '.join(path)} {name}: default {shown!r} not in {text!r}"


def test_train_help_names_the_papers_recipe(capsys):
    for kind, numbers in (("imagenet", ("90 epochs", "lr 0.1", "--lambda 25", "batch 256")),
                          ("coco", ("36 epochs", "lr 0.01", "--lambda 1", "batch 256"))):
        assert cli.main(["train", kind, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "the paper's ResNet18" in text and all(n in text for n in numbers), text


@pytest.mark.parametrize("argv,flag", [
    (["evaluate", "imagenet", "d", "--input-resize", "-5"], "--input-resize"),
    (["train", "imagenet", "d", "-b", "0"], "--batch-size"),
    (["train", "imagenet", "d", "--epochs", "x"], "--epochs"),
    (["explain", "img.png", "--checkpoint", "c", "--alpha", "2"], "--alpha"),
    (["synth", "imagenet", "d", "--image-size", "8"], "--image-size"),
    (["explain", "img.png", "--checkpoint", "c", "--bogus"], "--bogus"),
])
def test_argument_errors_are_one_line(argv, flag, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err, err
    command = " ".join(w for w in argv[:2] if not w.startswith("-") and w not in ("d", "img.png"))
    assert err.startswith(f"gridcam {command}: error: ") and flag in err, err
    assert err.rstrip().endswith(f"(see gridcam {command} --help)"), err
