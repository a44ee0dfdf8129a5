"""Deletion + insertion throughput: the evaluation's perturbed forwards vs a plain batched forward.

Deletion and insertion (RISE; ``gridcam evaluate --metrics deletion,insertion``) cost ``2 (n - 1)``
perturbed forwards per (image, class) pair plus the original and baseline images once per image.
This times the evaluation's own code (:mod:`gridcam.evaluation.beyond`: Grad-CAM maps resized to the
input, pixel ranks, perturbed images built per batch, the forwards) on ``--images`` images for
``--steps`` steps, with RISE's baselines (zero for deletion, blur for insertion), and a plain
``model(x)`` without autograd on batches of the same size, and prints ONE JSON line: pairs/s,
forwards/s of both and their ratio (target >= 0.8: building the perturbed images and ranking the
pixels costs little beside the forwards). The evaluation runs max-pool on oneDNN (exact, see
``gridcam.evaluation.forward.fast_max_pool``), the plain forward does not; ``ratio_same_pool``
compares with a plain forward that does too, i.e. the overhead of everything but the model. Both are warmed up once, then run alternately for
``--repeats`` rounds and the best round of each counts (on a shared machine, alternating keeps
both under the same load).

    python benchmarks/faithfulness.py                        # resnet18, 224 px, 2 images, 16 steps
    python benchmarks/faithfulness.py --device cuda --images 32 --steps 64 --batch 64
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gridcam import models  # noqa: E402
from gridcam.evaluation import beyond  # noqa: E402
from gridcam.evaluation import forward as F  # noqa: E402

TARGET = 0.8


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("-a", "--arch", default="resnet18")
    p.add_argument("--size", type=int, default=224, help="input height and width")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch", type=int, default=None,
                   help="perturbed images per forward (default: the evaluation's: cache-sized on CPU, 64 on GPU)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = models.create(args.arch, num_classes=1000).to(device).eval()
    layer = models.cam_layer(model)
    g = torch.Generator().manual_seed(1)
    items = [{"image": torch.randn(3, args.size, args.size, generator=g), "classes": torch.tensor([k % 1000]),
              "key": f"bench{k}"} for k in range(args.images)]
    s = beyond.settings(["deletion", "insertion"], steps=args.steps, deletion_baseline="zero",
                        insertion_baseline="blur", batch=args.batch, model=model, layer=layer,
                        methods=["gradcam"], opts={}, device=device, seed=0)
    targets, counts, explained = F.forward_group(items, model, layer, ["gradcam"], {}, device, 0)
    images = F._stacked_images(items, model, device)
    batch = beyond._batch(s, images)
    pairs = sum(counts)
    forwards = args.images * 2 + pairs * 2 * (args.steps - 1)  # original + zero + blur; inner points
    forwards += args.images  # the blur baseline differs from the zero one: a third whole image each

    def ours() -> None:
        beyond.group_extras(s, items, targets, counts, explained)

    plain_x = torch.randn(batch, 3, args.size, args.size, generator=g).to(device)
    rounds = max(1, -(-forwards // batch))

    def plain() -> None:
        with torch.no_grad():
            for _ in range(rounds):
                model(plain_x)

    def plain_same_pool() -> None:
        handles = F.fast_max_pool(model)
        try:
            plain()
        finally:
            for h in handles:
                h.remove()

    ours()
    plain()
    plain_same_pool()  # warm-up (kernel choice, allocations)
    t_ours = t_plain = t_same = float("inf")
    for _ in range(args.repeats):  # alternately, best of each
        t_ours = min(t_ours, _seconds(ours))
        t_plain = min(t_plain, _seconds(plain))
        t_same = min(t_same, _seconds(plain_same_pool))
    ours_fps, plain_fps, same_fps = forwards / t_ours, rounds * batch / t_plain, rounds * batch / t_same
    result = {
        "benchmark": "faithfulness",
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(),
        "cpu": _cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "arch": args.arch, "size": args.size, "images": args.images, "pairs": pairs,
        "steps": args.steps, "batch": batch, "forwards": forwards,
        "pairs_per_s": round(pairs / t_ours, 4),
        "forwards_per_s": round(ours_fps, 2),
        "plain_forwards_per_s": round(plain_fps, 2),
        "plain_same_pool_forwards_per_s": round(same_fps, 2),
        "ratio": round(ours_fps / plain_fps, 3),
        "ratio_same_pool": round(ours_fps / same_fps, 3),
        "target": TARGET,
        "ok": ours_fps / plain_fps >= TARGET,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
