"""Input-pipeline throughput of ONE data-loader worker (single process, no DataLoader).

Training pipeline = decode JPEG + RandomResizedCrop(224) + horizontal flip + to-tensor/normalize:
- ``batch_negatives``: 1 decode per sample (``--negatives batch``: negatives come from the batch);
- ``dataset_negatives``: 4 decodes per sample (the paper's loader, ``GridDataset``).
Also: the split of one sample's time between decoding and the transforms, and the evaluation resize
of 640x480 photos to a 224 shorter side with and without JPEG draft decoding.

Images are synthetic JPEGs (quality 90) with ImageNet-like sizes (shorter side 300-336 px,
1:1/4:3/3:4), generated into a temporary folder first. Prints one JSON line. About 40 s.

    python benchmarks/data.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gridcam import data  # noqa: E402
from gridcam.data import synthetic  # noqa: E402
from gridcam.data import transforms as T  # noqa: E402


def _rate(fn, n_items: int, seconds: float) -> float:
    """Items per second of ``fn(i)`` cycling over ``n_items``, run for about ``seconds``."""
    fn(0)  # warm-up (file cache, lazy imports)
    done, t0 = 0, time.perf_counter()
    while True:
        fn(done % n_items)
        done += 1
        el = time.perf_counter() - t0
        if el >= seconds:
            return done / el


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a DataLoader worker runs with one thread
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = synthetic.make_imagenet(Path(tmp) / "imnet", classes=8, train_per_class=8, val_per_class=0,
                                       image_size=300, seed=0)
        coco = synthetic.make_coco(Path(tmp) / "coco", images_train=0, images_val=24, categories=4,
                                   image_size=480, seed=0)
        gen_s = time.perf_counter() - t0
        tf = T.train_transform(224)
        single = data.ImageFolder(root / "train", tf)
        grid = data.GridDataset(single)
        sizes = [data.image_size(p) for p, _ in single.samples]
        mean_px = sum(h * w for h, w in sizes) / len(sizes)
        torch.manual_seed(0)
        r1 = _rate(lambda i: single[i], len(single), args.seconds)
        r4 = _rate(lambda i: grid[i], len(grid), args.seconds)
        dec = _rate(lambda i: data.load_image(single.samples[i][0]), len(single), args.seconds / 2)
        pils = [data.load_image(p) for p, _ in single.samples[:16]]
        trf = _rate(lambda i: tf(pils[i]), len(pils), args.seconds / 2)

        coco_files = sorted((coco / "val2014").glob("*.jpg"))
        ev = T.eval_transform(224)
        T.USE_DRAFT = True
        ev_draft = _rate(lambda i: data.load_transformed(coco_files[i], ev), len(coco_files), args.seconds / 2)
        T.USE_DRAFT = False
        ev_full = _rate(lambda i: data.load_transformed(coco_files[i], ev), len(coco_files), args.seconds / 2)
        T.USE_DRAFT = True
    print(json.dumps({
        "benchmark": "data",
        "unit": "samples/s per worker (1 process, 1 thread)",
        "train_pipeline": "decode + RandomResizedCrop(224) + flip + normalize",
        "batch_negatives_1_decode": round(r1, 1),
        "dataset_negatives_4_decodes": round(r4, 1),
        "ratio": round(r1 / r4, 2),
        "decode_only_img_s": round(dec, 1),
        "transform_only_img_s": round(trf, 1),
        "mean_image_px": round(mean_px),
        "eval_resize224_640x480_draft_img_s": round(ev_draft, 1),
        "eval_resize224_640x480_full_decode_img_s": round(ev_full, 1),
        "generate_s": round(gen_s, 2),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
