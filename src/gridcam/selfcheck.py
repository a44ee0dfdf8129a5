"""``gridcam selfcheck``: seconds-long proof that models, Grad-CAM, gridding and the loss work here.

Builds a small model, takes one Grad-CAM consistency step on random data (double backward
included) and prints what it checked. Exit status 0 when everything holds.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from gridcam import cam, grid, models


def run(arch: str = "tiny_resnet", size: int = 64, batch: int = 4, classes: int = 5,
        seed: int = 0) -> dict[str, float]:
    """One GC training step on random data -> {"ce", "gc", "grad_norm", "seconds"}; raises on failure."""
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = models.create(arch, num_classes=classes)
    layer = models.cam_layer(model)
    x = torch.randn(batch, 3, size, size)
    y = torch.arange(batch) % classes
    with cam.capture(layer) as feats:
        logits = model(x)
    t = cam.grad_cam(logits, feats.output, y, create_graph=True)
    neg_idx, valid = grid.sample_negatives(y, y)
    q = grid.random_quadrants(batch)
    composite = grid.compose(x, x[neg_idx], q)
    with cam.capture(layer) as cfeats:
        clogits = model(composite)
    u = cam.grad_cam(clogits, cfeats.output, y, create_graph=True)
    gc = grid.gc_loss(t, u, q, (size, size), valid=valid)
    ce = F.cross_entropy(logits, y)
    (ce + 25 * gc).backward()
    grad_norm = float(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]).norm())
    if not (torch.isfinite(ce.detach()) and torch.isfinite(gc.detach()) and grad_norm > 0):
        raise RuntimeError(f"selfcheck failed: ce={float(ce)} gc={float(gc)} grad_norm={grad_norm}")
    return {"ce": ce.item(), "gc": gc.item(), "grad_norm": grad_norm,
            "seconds": time.perf_counter() - t0}
