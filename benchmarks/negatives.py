"""End-to-end training throughput: in-batch negatives vs the paper's loader-side negatives.

When data loading is the bottleneck (small model, real JPEG decoding in DataLoader workers),
``--negatives batch`` decodes one image per sample while ``--negatives dataset`` decodes four
(the sample and its three negatives). This runs ``gridcam.training.loop.train`` for one epoch of
each on a synthetic ImageNet-layout set of real JPEGs (written once to a temporary folder) and
prints ONE JSON line: samples/s of both and their ratio (target >= 2).

    python benchmarks/negatives.py                 # tiny_resnet, 112 px crops, 2 workers, CPU
    python benchmarks/negatives.py --device cuda --amp --channels-last --arch resnet18 \
        --image-size 224 --source-size 448 --workers 4
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gridcam.data import synthetic  # noqa: E402
from gridcam.training.loop import TrainConfig, train  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("-a", "--arch", default="tiny_resnet")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("-b", "--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=112, help="training crop")
    p.add_argument("--source-size", type=int, default=320, help="shorter side of the JPEGs on disk")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--per-class", type=int, default=48)
    p.add_argument("--amp", action="store_true", help="autocast on CUDA (as gridcam train --amp)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--skip", type=int, default=2, help="steps left out of the timing (warm-up)")
    p.add_argument("--data", default=None, help="existing ImageNet-layout folder (default: a temporary one)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else synthetic.make_imagenet(
            Path(tmp) / "data", classes=args.classes, train_per_class=args.per_class, val_per_class=0,
            image_size=args.source_size, seed=0)
        rates = {}
        for mode in ("batch", "dataset"):
            stamps: list[float] = []
            cfg = TrainConfig(dataset="imagenet", data=str(root), arch=args.arch,
                              batch_size=args.batch_size, workers=args.workers, epochs=1, lr=0.01,
                              lam=25.0, negatives=mode, image_size=args.image_size, seed=0,
                              device=args.device, amp=args.amp, channels_last=args.channels_last,
                              save_dir=str(Path(tmp) / f"run_{mode}"),
                              validate=False, progress_bar=False, print_freq=10**9, tensorboard=False,
                              step_callback=lambda info: stamps.append(time.perf_counter()))
            with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                train(cfg)
            # Steady state: from the end of step `skip` to the last step (worker start-up and
            # one-time kernel set-up are left out).
            skip = min(args.skip, len(stamps) - 2)
            rates[mode] = round((len(stamps) - 1 - skip) * args.batch_size / (stamps[-1] - stamps[skip]), 2)
    result = {
        "benchmark": "negatives",
        "device": args.device if args.device != "cuda" else torch.cuda.get_device_name(),
        "arch": args.arch,
        "workers": args.workers,
        "amp": bool(args.amp),
        "batch": args.batch_size,
        "image_size": args.image_size,
        "source_size": args.source_size,
        "images": args.classes * args.per_class,
        "batch_img_s": rates["batch"],
        "dataset_img_s": rates["dataset"],
        "ratio": round(rates["batch"] / rates["dataset"], 3),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
