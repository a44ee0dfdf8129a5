"""Fidelity: gridcam's GC training step == the paper's training-script loss, on identical tensors.

The reference below is written from the description of the paper's ``train_gcam_grid_consistency.py``
(UMBCvision/Explainable-Models-with-Consistent-Interpretations), not from gridcam's code:

- one forward of the batch; the layer4 output ``feats`` is kept;
- Grad-CAM: ``dy/dfeats`` of ``sum(one_hot * output)`` by ``autograd.grad(create_graph=True)``,
  element-wise product with ``feats``, sum over channels, ReLU, divide by the spatial sum + 1e-8,
  then + 1e-8;
- the 2x2 grid of the image (at its quadrant) and three negatives, one forward, the same Grad-CAM
  for the same class -> a 14x14 map (224 px crops, stride 32);
- the target: a 14x14 zero map holding the original's 7x7 map at the image's quadrant;
- ``loss = CrossEntropy + lambda * nn.L1Loss()(grid_map, target)`` (mean), nothing detached.

Both sides run on the same weights, images, negatives and quadrants; the loss and every parameter
gradient must agree to 1e-6.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gridcam import models
from gridcam.training.steps import gc_step

EPS = 1e-8


def _paper_gradcam(output: torch.Tensor, feats: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    one_hot = torch.zeros_like(output)
    one_hot[torch.arange(output.shape[0]), target] = 1.0
    score = torch.sum(one_hot * output)
    (dy_dz,) = torch.autograd.grad(score, feats, grad_outputs=torch.ones_like(score),
                                   retain_graph=True, create_graph=True)
    cam = torch.relu((dy_dz * feats).sum(dim=1))
    spatial_sum = cam.sum(dim=[1, 2]).unsqueeze(-1).unsqueeze(-1)
    return cam / (spatial_sum + EPS) + EPS


def _forward_with_feats(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kept = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: kept.__setitem__("f", o))
    try:
        out = model(x)
    finally:
        handle.remove()
    return out, kept["f"]


def _paper_loss(model: nn.Module, images: torch.Tensor, negatives: torch.Tensor,
                quadrants: list[int], target: torch.Tensor, lam: float) -> torch.Tensor:
    B, _, H, W = images.shape
    output, feats = _forward_with_feats(model, images)
    xe = nn.CrossEntropyLoss()(output, target)
    gcam = _paper_gradcam(output, feats, target)  # (B,7,7)
    h, w = gcam.shape[-2:]

    grid = images.new_zeros(B, 3, 2 * H, 2 * W)
    gt = gcam.new_zeros(B, 2 * h, 2 * w)
    for b in range(B):
        q = quadrants[b]
        others = iter(negatives[b])
        for cell in range(4):
            r, c = divmod(cell, 2)
            grid[b, :, r * H:(r + 1) * H, c * W:(c + 1) * W] = images[b] if cell == q else next(others)
        r, c = divmod(q, 2)
        gt[b, r * h:(r + 1) * h, c * w:(c + 1) * w] = gcam[b]
    out_grid, feats_grid = _forward_with_feats(model, grid)
    gcam_grid = _paper_gradcam(out_grid, feats_grid, target)  # (B,14,14)
    return xe + lam * nn.L1Loss()(gcam_grid, gt)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_gc_step_equals_paper_loss_and_gradients(pooling: str) -> None:
    torch.manual_seed(0)
    model = models.create("tiny_resnet", num_classes=5, pooling=pooling).train()
    ref = copy.deepcopy(model)
    B, size, lam = 4, 224, 25.0
    images = torch.randn(B, 3, size, size)
    negatives = torch.randn(B, 3, 3, size, size)
    target = torch.tensor([0, 3, 1, 4])
    quadrants = [0, 1, 2, 3]

    res = gc_step(model, models.cam_layer(model), images, target, lam=lam, negatives=negatives,
                  quadrants=torch.tensor(quadrants))
    res.loss.backward()
    paper = _paper_loss(ref, images, negatives, quadrants, target, lam)
    paper.backward()

    assert res.gc_loss > 0
    torch.testing.assert_close(res.loss.detach(), paper.detach(), atol=1e-6, rtol=0)
    grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None and grads[name].grad is not None, name
        torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-6, rtol=0, msg=name)


def test_reference_target_is_the_map_at_its_quadrant() -> None:
    """The reference itself: the target's mass is the original map's, all inside its quadrant."""
    torch.manual_seed(1)
    model = models.create("tiny_resnet", num_classes=3).train()
    x = torch.randn(2, 3, 64, 64)
    out, feats = _forward_with_feats(model, x)
    cam = _paper_gradcam(out, feats, torch.tensor([0, 2]))
    assert cam.shape == (2, 2, 2)
    torch.testing.assert_close(cam.sum(dim=(1, 2)), torch.full((2,), 1.0 + 4 * EPS), atol=1e-6, rtol=0)
