"""Start-up stays fast: the listing commands never import what they do not need.

``benchmarks/startup.py`` times the commands; here the cause is pinned, independent of the
machine's speed: ``gridcam --help`` imports no torch, and ``gridcam methods`` / ``gridcam models``
import neither torchvision nor torch._dynamo (together seconds of start-up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

_PROBE = """
import contextlib, io, json, sys
from gridcam.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
heavy = ("torch", "torchvision", "torch._dynamo", "matplotlib", "PIL")
print(json.dumps({"code": code, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def _loaded(*argv: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["code"] == 0
    return out["loaded"]


def test_help_imports_no_torch():
    assert _loaded("--help") == []


@pytest.mark.parametrize("command", ["methods", "models"])
def test_listings_import_neither_torchvision_nor_dynamo(command):
    loaded = _loaded(command)
    assert "torch" in loaded  # the registries hold torch functions: the floor
    assert "torchvision" not in loaded and "torch._dynamo" not in loaded
