"""Start-up stays fast: the listing commands never import what they do not need.

``benchmarks/startup.py`` times the commands; here the cause is pinned, independent of the
machine's speed: ``gridcam --help``, ``gridcam methods`` and ``gridcam models`` import no torch
(about 2 s of start-up on a 2-core machine), nor numpy: the listings read the torch-free
catalogs ``gridcam.cam.catalog`` and ``gridcam.models.catalog``.
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
heavy = ("torch", "torchvision", "torch._dynamo", "numpy", "matplotlib", "PIL")
print(json.dumps({"code": code, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def _run(code: str, *argv: str) -> dict:
    """The JSON object the last line of ``python -c CODE ARGV`` prints (gridcam from src/)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _loaded(*argv: str) -> list[str]:
    out = _run(_PROBE, *argv)
    assert out["code"] == 0
    return out["loaded"]


@pytest.mark.parametrize("command", ["--help", "methods", "models"])
def test_help_and_listings_import_no_torch(command):
    assert _loaded(command) == []


def test_a_catalog_loaded_alone_is_the_one_its_package_uses_later():
    """After ``leaf_module`` loaded the catalogs without their packages, importing the packages
    (torch and all) reuses those very modules, and everything registers as usual."""
    out = _run("""
import json, sys
from gridcam.cli.common import leaf_module
methods, archs = leaf_module("gridcam.cam.catalog"), leaf_module("gridcam.models.catalog")
alone = "torch" not in sys.modules and "gridcam.cam" not in sys.modules
from gridcam import cam, models
from gridcam.cam import catalog
from gridcam.models import catalog as archs_again
print(json.dumps({"alone": alone, "same": catalog is methods and archs_again is archs
                  and cam.catalog is methods and leaf_module("gridcam.cam.catalog") is methods,
                  "registered": list(cam.METHOD_INFO) == list(methods.ENTRIES)
                  and models.list_models() == list(archs.ARCHITECTURES)}))
""")
    assert out == {"alone": True, "same": True, "registered": True}
