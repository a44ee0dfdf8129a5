"""The README's Python API example runs as written (docs that drift are a bug)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs():
    text = README.read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["heat"].shape == (8, 1, 2, 2)
    assert scope["composite"].shape == (8, 3, 128, 128)


def test_readme_documents_every_subcommand():
    from gridcam.cli import build_parser

    text = README.read_text()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        assert f"gridcam {name}" in text, name
