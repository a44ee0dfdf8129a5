"""Wall time of ``gridcam study`` presets: the quick preset (the demo) and, with ``--cpu``, the cpu one.

Runs each preset from nothing into a temporary folder (data generation, every training stage and
every evaluation) with the process's intra-op threads set to ``--threads``, and prints one JSON
line: per preset its wall seconds, the per-run train/evaluate seconds stored in study.json, and the
machine. The quick preset should take <= 5 minutes and the cpu preset <= 30 minutes on 2 idle cores.

    python benchmarks/study.py [--cpu] [--threads 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gridcam.study import runner as study  # noqa: E402


def run_preset(preset: str, out: Path) -> dict:
    t0 = time.perf_counter()
    result = study.run_study(study.config_for(preset, out=str(out)))
    return {"wall_s": round(time.perf_counter() - t0, 1), "runs": result["seconds"],
            "recipe": study.describe(study.config_for(preset))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="also time the cpu preset (5 seeds)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--keep", default=None, help="run in this folder (kept) instead of a temporary one")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    presets = ["quick"] + (["cpu"] if args.cpu else [])
    record = {"benchmark": "study", "threads": args.threads, "torch": torch.__version__,
              "machine": platform.machine(), "cpus": os.cpu_count(), "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        for preset in presets:
            record["presets"][preset] = run_preset(preset, base / preset)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
