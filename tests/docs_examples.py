"""Run the Python examples of the docs as written (docs that drift are a bug)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs" / "readme"


def run_python_example(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Execute the first ```python block of ``doc`` (its ``tempfile.mkdtemp`` lands in ``tmp_path``)
    and return the globals it left."""
    code = re.search(r"```python\n(.*?)```", doc.read_text(), re.S).group(1)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    scope: dict = {}
    exec(compile(code, str(doc), "exec"), scope)  # noqa: S102 - our own docs
    return scope
