"""Run the Python examples of the README as written (docs that drift are a bug)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def run_python_example(heading: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Execute the first ```python block after the README heading ``heading`` (its
    ``tempfile.mkdtemp`` lands in ``tmp_path``) and return the globals it left."""
    text = README.read_text()
    section = text[text.index(heading):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own docs
    return scope
