"""Time one training step: plain (cross-entropy only) vs Grad-CAM consistency (GC).

Prints ONE JSON line: {"benchmark": "train_step", "device", "arch", "batch", "size", "plain_s",
"gc_s", "ratio", ...}. Each figure is the minimum (and the median) over ``--steps`` timed steps (after ``--warmup``
untimed ones) of a full step: forwards, the single backward, and the SGD update, exactly as
``gridcam train`` runs it (``gridcam.training.steps.gc_step``). Plain and GC steps are timed
alternately so that clock/thermal drift affects both alike.

    python benchmarks/train_step.py                        # CPU: resnet18, batch 8, 224 px
    python benchmarks/train_step.py --device cuda --amp    # GPU: batch 64, bf16 autocast
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gridcam import models  # noqa: E402
from gridcam.training.steps import amp_setup, gc_step  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("-a", "--arch", default="resnet18")
    p.add_argument("-b", "--batch-size", type=int, default=None, help="default: 8 on CPU, 64 on CUDA")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--lam", type=float, default=25.0)
    p.add_argument("--steps", type=int, default=None, help="timed steps per mode (default 10 CPU, 20 CUDA)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--negatives", choices=["batch", "dataset"], default="batch",
                   help="dataset: pass 3 extra images per sample as the loader would")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch_size or (64 if cuda else 8)
    steps = args.steps or (20 if cuda else 10)
    torch.manual_seed(0)
    if cuda:
        torch.backends.cudnn.benchmark = True
    model = models.create(args.arch, num_classes=args.classes).to(device).train()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    layer = models.cam_layer(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    ac, scaler = amp_setup(device, args.amp)

    x = torch.randn(batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, args.classes, (batch,), device=device)
    negs = None
    if args.negatives == "dataset":
        negs = torch.randn(batch, 3, 3, args.size, args.size, device=device)
        y = torch.arange(batch, device=device) % args.classes  # distinct: every sample has negatives
    gen = torch.Generator(device=device)
    gen.manual_seed(0)

    def step(lam: float) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = gc_step(model, layer, x, y, lam=lam, negatives=negs if lam else None,
                      generator=gen, autocast=ac, channels_last=args.channels_last)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(out.loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            out.loss.backward()
            opt.step()
        if cuda:
            torch.cuda.synchronize()
        else:
            out.loss.item()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        step(0.0)
        step(args.lam)
    plain, gc = [], []
    for _ in range(steps):
        plain.append(step(0.0))
        gc.append(step(args.lam))
    # The minimum is the estimator of a step's own cost least disturbed by other load on the
    # machine (shared CPUs are noisy); the medians are reported beside it.
    p_s, g_s = min(plain), min(gc)
    result = {
        "benchmark": "train_step",
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "arch": args.arch,
        "batch": batch,
        "size": args.size,
        "amp": bool(args.amp),
        "channels_last": bool(args.channels_last),
        "negatives": args.negatives,
        "steps": steps,
        "plain_s": round(p_s, 4),
        "gc_s": round(g_s, 4),
        "ratio": round(g_s / p_s, 3),
        "plain_median_s": round(statistics.median(plain), 4),
        "gc_median_s": round(statistics.median(gc), 4),
        "plain_img_s": round(batch / p_s, 1),
        "gc_img_s": round(batch / g_s, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
