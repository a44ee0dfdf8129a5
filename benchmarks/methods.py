"""Benchmark: images/s of every explanation method in ``gridcam.cam.METHODS``, with Captum's
implementation of the same method timed side by side in the same run where Captum has it.

For each method: gridcam with one target per image (T=1), gridcam with ``--targets`` T targets per
image in one call, and Captum with one target (one ``attribute`` call; T targets cost Captum T
calls, reported as ``captum_T_s`` = T x its one-target time, measured once per target). Same model,
same images, same number of samples/steps (``--samples`` for SmoothGrad, ``--steps`` for integrated
gradients; both default to 10 here to keep the run short, the methods' own defaults are 50), same
memory budget (``--chunk`` images per forward in both: Captum's ``nt_samples_batch_size`` =
chunk // B copies, ``internal_batch_size`` = chunk). Each timing is the best of
``--repeats`` rounds in which gridcam and Captum alternate, after one warm-up call each. Methods registered later (part B's CAM
family and perturbation methods) are timed automatically; add their Captum peer to ``PEERS``.

Prints ONE JSON line: ``{"benchmark": "methods", ..., "methods": {name: {...}}}`` with, per method,
``images_per_s`` (T=1), ``images_per_s_T`` (T targets, counted per image), ``T_cost_ratio``
(time for T targets / time for 1: below T means the T targets share work),
``captum_images_per_s`` and ``speedup_vs_captum`` (gridcam / Captum, one target). Example::

    python benchmarks/methods.py                                  # resnet18, 224 px, 2 images, CPU
    python benchmarks/methods.py --images 4 --targets 5 --methods gradcam,guided_backprop
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gridcam import cam, models


def _captum_peer(name: str, model: nn.Module, layer: nn.Module, args: argparse.Namespace
                 ) -> Callable[[torch.Tensor, list[int]], torch.Tensor] | None:
    """Captum's implementation of ``name`` as ``f(images, targets) -> attribution``, or None."""
    try:
        import captum.attr as ca
    except ImportError:
        return None
    plain = copy.deepcopy(model)  # Captum's ReLU hooks need ReLUs that are not in place
    for m in plain.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    plain_layer = models.cam_layer(plain)
    chunk = args.chunk
    peers: dict[str, Callable[[], Callable[..., torch.Tensor]]] = {
        "gradient": lambda: ca.Saliency(model).attribute,
        "input_x_gradient": lambda: ca.InputXGradient(model).attribute,
        "guided_backprop": lambda: ca.GuidedBackprop(plain).attribute,
        "deconvnet": lambda: ca.Deconvolution(plain).attribute,
        "gradcam": lambda: ca.LayerGradCam(model, layer).attribute,
        "hirescam": lambda: ca.LayerGradCam(model, layer).attribute,
        "linear_approx": lambda: ca.LayerGradCam(model, layer).attribute,
        "smoothgrad": lambda: (lambda x, target: ca.NoiseTunnel(ca.Saliency(model)).attribute(
            x, target=target, nt_type="smoothgrad", nt_samples=args.samples,
            nt_samples_batch_size=max(1, chunk // x.shape[0]), stdevs=0.15)),
        "integrated_gradients": lambda: (lambda x, target: ca.IntegratedGradients(model).attribute(
            x, target=target, n_steps=args.steps, method="gausslegendre",
            internal_batch_size=chunk)),
        "occlusion": lambda: (lambda x, target: ca.Occlusion(model).attribute(
            x, target=target, sliding_window_shapes=(3, 32, 32), strides=(3, 16, 16))),
    }
    del plain_layer
    make = peers.get(name)
    return None if make is None else make()


def _best(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best time of each function over ``repeats`` rounds, after one warm-up call each (kernels
    are chosen per shape once per process). The functions alternate within each round, so a
    change in the machine's load (shared CPUs) hits gridcam and Captum alike."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def _options(name: str, args: argparse.Namespace) -> dict[str, Any]:
    declared = cam.METHOD_INFO[name].options
    wanted = {"samples": args.samples, "steps": args.steps, "chunk": args.chunk}
    opts = {k: v for k, v in wanted.items() if k in declared}
    if "generator" in declared:
        opts["generator"] = torch.Generator().manual_seed(0)
    return opts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--images", type=int, default=2, help="images per call (B)")
    p.add_argument("--targets", type=int, default=3, help="T for the multi-target timing")
    p.add_argument("--samples", type=int, default=10, help="SmoothGrad copies (method default: 50)")
    p.add_argument("--steps", type=int, default=10, help="integrated-gradients steps (default: 50)")
    p.add_argument("--chunk", type=int, default=32, help="images per forward (SmoothGrad, IG)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--methods", default="fast",
                   help="comma-separated names; 'fast' (default): every method costing at most the "
                        "SmoothGrad/IG class (the perturbation methods have benchmarks/cam_family.py); "
                        "'all': every registered method (slow: RISE alone is minutes per image)")
    p.add_argument("--no-captum", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", module="captum")  # "did not already require gradients" etc.
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = models.create(args.arch, num_classes=1000).to(device).eval()
    layer = models.cam_layer(model)
    x = torch.randn(args.images, 3, args.size, args.size, device=device)
    classes = torch.randint(0, 1000, (args.images, args.targets), device=device)
    if args.methods == "all":
        names = sorted(cam.METHODS)
    elif args.methods == "fast":
        names = sorted(r["name"] for r in cam.describe_methods() if r["relative"] <= 100)
    else:
        names = args.methods.split(",")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    results: dict[str, Any] = {}
    for name in names:
        opts = _options(name, args)

        def ours(t: torch.Tensor) -> Callable[[], None]:
            def run() -> None:
                cam.explain(name, model, layer, x, t, **opts)
                sync()
            return run

        fns = {"ours_1": ours(classes[:, :1]), "ours_T": ours(classes)}
        peer = None if args.no_captum else _captum_peer(name, model, layer, args)
        if peer is not None:
            target = classes[:, 0].tolist()

            def theirs() -> None:
                peer(x.clone(), target=target)
                sync()

            fns["captum_1"] = theirs
        t = _best(fns, args.repeats)
        row: dict[str, Any] = {
            "images_per_s": round(args.images / t["ours_1"], 3),
            "images_per_s_T": round(args.images / t["ours_T"], 3),
            "T_cost_ratio": round(t["ours_T"] / t["ours_1"], 3),
        }
        if peer is not None:
            row.update(captum_images_per_s=round(args.images / t["captum_1"], 3),
                       captum_T_s=round(t["captum_1"] * args.targets, 3),
                       speedup_vs_captum=round(t["captum_1"] / t["ours_1"], 3))
        print(f"[methods] {name}: {row}", file=sys.stderr, flush=True)
        results[name] = row
    out = {
        "benchmark": "methods", "arch": args.arch, "size": args.size, "images": args.images,
        "targets": args.targets, "samples": args.samples, "steps": args.steps,
        "repeats": args.repeats, "device": str(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": platform.machine(), "methods": results,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
