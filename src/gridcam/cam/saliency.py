"""Gradient-based saliency methods, used to check that consistent Grad-CAM training also helps
explanations it was not trained with.

Every method does one forward for all T targets of a batch and one batched backward
(``is_grads_batched=True``) to the input, and returns ``(heatmaps (B,T,H,W), logits (B,C))``:
heatmaps float32, non-negative, not normalised, detached, at the input's pixel resolution.
Call ``model.eval()`` first: in train mode BatchNorm mixes the samples of a batch, and the
per-sample gradients (and SmoothGrad's noisy copies) would leak into each other.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .gradcam import _as_2d_targets, _prepare_images, target_gradients

__all__ = ["SMOOTHGRAD_SAMPLES", "explain_gradient", "explain_input_x_gradient", "explain_smoothgrad"]


def _input_gradients(model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Forward ``images`` once; return (d logit_t / d x as float32 (B,T,3,H,W), logits (B,C), x)."""
    targets = _as_2d_targets(targets, images)
    with torch.inference_mode(False), torch.enable_grad():
        x = _prepare_images(images)
        logits = model(x)
        grads = target_gradients(logits, x, targets)
    return grads.float(), logits.detach(), x.detach()


def explain_gradient(
    model: nn.Module, layer: nn.Module | None, images: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """Gradient saliency (Simonyan et al., "Deep Inside Convolutional Networks", ICLR-W 2014).

    Formula: ``max_channels |d logit_t / d x|``. Returns (B,T,H,W) float32 >= 0, logits (B,C).
    Cost: 1 forward + 1 backward per image (T targets in one batched backward). ``layer`` unused.
    """
    grads, logits, _ = _input_gradients(model, images, targets)
    return grads.abs().amax(dim=2), logits


def explain_input_x_gradient(
    model: nn.Module, layer: nn.Module | None, images: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor]:
    """Input x gradient (Shrikumar et al., "Not Just a Black Box", 2016).

    Formula: ``sum_channels |x * d logit_t / d x|``. Returns (B,T,H,W) float32 >= 0, logits (B,C).
    Cost: 1 forward + 1 backward per image. ``layer`` unused.
    """
    grads, logits, x = _input_gradients(model, images, targets)
    return (x.float()[:, None] * grads).abs().sum(dim=2), logits


#: SmoothGrad's default number of noisy copies: the paper's (Smilkov et al. 2017 found the map
#: smoother as n grows and little visible change above n = 50). It costs 50 forward+backward
#: passes per image; pass ``samples`` for fewer.
SMOOTHGRAD_SAMPLES = 50


def explain_smoothgrad(
    model: nn.Module,
    layer: nn.Module | None,
    images: Tensor,
    targets: Tensor,
    *,
    samples: int = SMOOTHGRAD_SAMPLES,
    sigma: float = 0.15,
    generator: torch.Generator | None = None,
    chunk: int = 32,
) -> tuple[Tensor, Tensor]:
    """SmoothGrad (Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017).

    Formula: ``max_channels mean_n |d logit_t / d x (x + e_n)|``, ``e_n ~ N(0, (sigma *
    (max(x) - min(x)))^2)`` per image (the paper's "noise level" sigma, 10-20 %). The reduction
    over channels comes after the mean over copies, as Captum's ``NoiseTunnel(Saliency)`` does.
    The clean images are forwarded once for the logits returned.

    Args:
        samples: number of noisy copies n (>= 1); default 50, the paper's (see SMOOTHGRAD_SAMPLES).
        sigma: noise level relative to each image's value range.
        generator: torch.Generator for the noise (seeded evaluation). The noise of each forward
            is drawn as ``randn((k, B, 3, H, W))``, ``k = max(1, chunk // B)`` copies, so a given
            (batch, chunk) plan is reproducible.
        chunk: images per forward (the memory budget): ``max(1, chunk // B)`` copies of the B
            images go through the model at once.
    Returns:
        heatmaps (B,T,H,W) float32 >= 0, logits (B,C) of the clean images.
    Cost: n+1 forwards and n backwards per image (T targets in each batched backward).
    """
    if samples < 1 or chunk < 1:
        raise ValueError(f"smoothgrad needs samples >= 1 and chunk >= 1, got {samples}, {chunk}")
    targets = _as_2d_targets(targets, images)
    x = images.detach()
    B = x.shape[0]
    flat = x.flatten(1)
    scale = ((flat.amax(1) - flat.amin(1)) * sigma).view(1, B, *([1] * (x.dim() - 1)))
    with torch.no_grad():
        logits = model(x)
    total: Tensor | None = None
    per = max(1, chunk // B)
    for start in range(0, samples, per):
        k = min(per, samples - start)
        noise = torch.randn((k, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
        batch = (x[None] + noise * scale).flatten(0, 1)  # (k*B,3,H,W)
        grads, _, _ = _input_gradients(model, batch, targets.repeat(k, 1))
        part = grads.abs().unflatten(0, (k, B)).sum(dim=0)  # (B,T,3,H,W)
        total = part if total is None else total + part
    return (total / samples).amax(dim=2), logits.detach()
