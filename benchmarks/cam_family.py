"""Benchmark: images/s of the CAM family and the perturbation methods (issue 11, part B).

Model: ``gridcam.models.create(--arch, num_classes=1000)``, random weights (seeded), eval mode,
float32, CPU (``--threads`` intra-op threads). Every method runs with its library defaults (the
real cost: RISE 4000 masks, Score-CAM one forward per channel, ...) on ``--images`` random
images of ``--size`` px (``--slow-images`` for the perturbation-heavy methods), for T = each of
``--targets`` target classes per image. All methods are timed in rounds over all of them, the
fastest call of each kept (the machine may be shared; interleaving spreads the other load over
the methods): ``--repeats`` calls of a fast method, after one untimed call on the same shapes
(oneDNN picks kernels per shape); ``--slow-repeats`` of a slow one, after one untimed forward.
Grad-CAM (``cam.explain_gradcam``) and, where installed, Captum's ``Occlusion`` with the same
window, stride and batch are timed as references.

Prints a Markdown table (method, T, seconds per call, images/s) and ends with one JSON line.
Example::

    python benchmarks/cam_family.py                           # resnet18, 224 px, T = 1 and 5
    python benchmarks/cam_family.py --methods gradcampp scorecam --images 4
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import platform
import time
from collections.abc import Callable

import torch

from gridcam import models
from gridcam.cam import cams, perturbation
from gridcam.cam.gradcam import explain_gradcam

METHODS = {**cams.METHODS, **perturbation.METHODS}
SLOW = {"rise", "scorecam", "extremal_perturbation", "occlusion"}


def _captum_occlusion(model, layer, images, targets, **_):
    from captum.attr import Occlusion

    opts = perturbation.METHODS["occlusion"][1]
    occ = Occlusion(model)
    w, s = opts["window"], opts["stride"]
    per_eval = max(1, opts["method_batch"] // images.shape[0])
    maps = [occ.attribute(images, sliding_window_shapes=(3, w, w), strides=(3, s, s),
                          baselines=0.0, target=targets[:, t], perturbations_per_eval=per_eval)
            for t in range(targets.shape[1])]
    return torch.stack(maps, 1).mean(2).clamp_min(0), None


def _call(fn: Callable, model, layer, images, targets) -> float:
    start = time.perf_counter()
    fn(model, layer, images, targets)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=2, help="images per call (fast methods)")
    parser.add_argument("--slow-images", type=int, default=1,
                        help="images per call for " + ", ".join(sorted(SLOW)))
    parser.add_argument("--targets", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed calls, the fastest kept (fast methods)")
    parser.add_argument("--slow-repeats", type=int, default=1,
                        help="timed calls, the fastest kept (slow methods)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rise-masks", type=int, default=500,
                        help="RISE's N (the method's default is 4000; cost is 1 + N forwards, so "
                             "time scales linearly: 500 keeps `make bench` short)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="subset of: gradcam " + " ".join(METHODS) + " captum_occlusion")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = models.create(args.arch, num_classes=1000).eval()
    layer = models.cam_layer(model)
    table = {"gradcam": explain_gradcam, **{k: v[0] for k, v in METHODS.items()}}
    table["rise"] = functools.partial(perturbation.explain_rise, num_masks=args.rise_masks)
    if importlib.util.find_spec("captum") is not None:
        table["captum_occlusion"] = _captum_occlusion
    names = args.methods or list(table)
    cases = []  # (name, T, images, targets)
    for name in names:
        n = args.slow_images if name in SLOW or name == "captum_occlusion" else args.images
        images = torch.randn(n, 3, args.size, args.size)
        cases += [(name, T, images, torch.randint(0, 1000, (n, T))) for T in args.targets]
    best: dict[tuple[str, int], float] = {}
    is_slow = {c[0]: c[0] in SLOW or c[0] == "captum_occlusion" for c in cases}
    for name, T, images, targets in cases:  # untimed warm-up on the same shapes
        if is_slow[name]:  # a slow method amortises its first forwards over hundreds
            with torch.no_grad():
                model(images)
        else:
            table[name](model, layer, images, targets)
    # Rounds over all methods, the fastest call of each kept: the machine may be shared, and
    # interleaving spreads the other load evenly over the methods.
    for r in range(max(args.repeats, args.slow_repeats)):
        for name, T, images, targets in cases:
            if r < (args.slow_repeats if is_slow[name] else args.repeats):
                sec = _call(table[name], model, layer, images, targets)
                best[name, T] = min(best.get((name, T), float("inf")), sec)
    rows = []
    print("| method | T | images/call | s/call | images/s |\n|---|---|---|---|---|")
    for name, T, images, _ in cases:
        n, sec = len(images), best[name, T]
        rows.append({"method": name, "T": T, "images": n, "s_per_call": round(sec, 3),
                     "images_per_s": round(n / sec, 4)})
        print(f"| {name} | {T} | {n} | {sec:.3f} | {n / sec:.4g} |", flush=True)
    print(json.dumps({"arch": args.arch, "size": args.size, "threads": args.threads,
                      "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                      "rows": rows}))


if __name__ == "__main__":
    main()
