"""The Python examples of the README and of docs/*.md, as written (docs that drift are a bug).

Every fenced ``python`` block of ``README.md`` and ``docs/*.md`` is an example that runs as written.
A block that must not run (it needs ImageNet, a GPU, or is a signature) is preceded, on the line
just above its opening fence, by ``<!-- not-run: REASON -->``; the reason is required.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

#: a fenced python block, and the optional not-run marker on the line just above it
BLOCK = re.compile(r"(?:^<!--\s*not-run:(?P<reason>[^\n]*?)-->\n)?^```python\n(?P<code>.*?)^```[ \t]*$", re.S | re.M)
#: any not-run marker at the start of a line (each must sit just above a python block)
MARKER = re.compile(r"^<!--\s*not-run\b(?P<rest>[^\n]*)$", re.M)


@dataclass(frozen=True)
class Example:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    not_run: str | None  # the reason, when marked

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_files() -> list[Path]:
    """README.md and every docs/*.md, in a fixed order."""
    return [README, *sorted(DOCS.glob("*.md"))]


def python_examples(path: Path) -> list[Example]:
    """Every fenced python block of one Markdown file."""
    text = path.read_text()
    out = []
    for m in BLOCK.finditer(text):
        fence = m.start("code") - len("```python\n")
        line = text.count("\n", 0, fence) + 1
        reason = m.group("reason")
        out.append(Example(path, line, m.group("code"), None if reason is None else reason.strip()))
    return out


def all_examples() -> list[Example]:
    return [e for p in doc_files() for e in python_examples(p)]


def run_code(code: str, filename: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Execute ``code`` in a fresh scope, from the repository root (as a reader would), with
    ``tempfile.mkdtemp`` landing in ``tmp_path``; return the globals it left."""
    import torch

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.chdir(ROOT)
    torch.manual_seed(0)
    scope: dict = {"__name__": "__docs_example__"}
    exec(compile(code, filename, "exec"), scope)  # noqa: S102 - our own docs
    return scope


def run_python_example(heading: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       path: Path = README) -> dict:
    """Execute the first python block after the heading ``heading`` of ``path`` (README.md by
    default) and return the globals it left."""
    text = path.read_text()
    start = text.index(heading)
    line = text.count("\n", 0, start) + 1
    example = next(e for e in python_examples(path) if e.line > line)
    return run_code(example.code, example.name, tmp_path, monkeypatch)
