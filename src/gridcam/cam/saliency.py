"""Gradient-based saliency methods, used to check that consistent Grad-CAM training also helps
explanations it was not trained with.

Every method does one forward for all T targets of a batch and one batched backward
(``is_grads_batched=True``) to the input, and returns ``(heatmaps (B,T,H,W), logits (B,C))``:
heatmaps float32, non-negative, not normalised, detached, at the input's pixel resolution.
Call ``model.eval()`` first: in train mode BatchNorm mixes the samples of a batch, and the
per-sample gradients (and SmoothGrad's noisy copies) would leak into each other.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .gradcam import _as_2d_targets, _prepare_images, target_gradients

__all__ = ["explain_gradient", "explain_input_x_gradient", "explain_smoothgrad"]


def _input_gradients(model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Forward ``images`` once; return (d logit_t / d x as float32 (B,T,3,H,W), logits (B,C), x)."""
    targets = _as_2d_targets(targets, images)
    with torch.inference_mode(False), torch.enable_grad():
        x = _prepare_images(images)
        logits = model(x)
        grads = target_gradients(logits, x, targets)
    return grads.float(), logits.detach(), x.detach()


def explain_gradient(
    model: nn.Module, layer: nn.Module | None, images: Tensor, targets: Tensor, **_ignored: Any
) -> tuple[Tensor, Tensor]:
    """Gradient saliency (Simonyan et al.): ``max_channels |d logit_t / d x|``.

    Args:
        model: classifier in eval mode. layer: unused (kept for the common signature).
        images: (B,3,H,W). targets: (B,T) long.
    Returns:
        heatmaps (B,T,H,W) float32 >= 0, logits (B,C).
    """
    grads, logits, _ = _input_gradients(model, images, targets)
    return grads.abs().amax(dim=2), logits


def explain_input_x_gradient(
    model: nn.Module, layer: nn.Module | None, images: Tensor, targets: Tensor, **_ignored: Any
) -> tuple[Tensor, Tensor]:
    """Input x gradient: ``sum_channels |x * d logit_t / d x|``.

    Args and returns as :func:`explain_gradient`.
    """
    grads, logits, x = _input_gradients(model, images, targets)
    return (x.float()[:, None] * grads).abs().sum(dim=2), logits


def explain_smoothgrad(
    model: nn.Module,
    layer: nn.Module | None,
    images: Tensor,
    targets: Tensor,
    *,
    samples: int = 8,
    sigma: float = 0.15,
    generator: torch.Generator | None = None,
    **_ignored: Any,
) -> tuple[Tensor, Tensor]:
    """SmoothGrad (Smilkov et al.): mean over noisy copies of ``max_channels |d logit_t / d x|``.

    Each image gets ``samples`` copies with Gaussian noise of std ``sigma * (max(x) - min(x))``
    (per image, as in the SmoothGrad paper's "noise level"). The clean images and all noisy
    copies go through ONE forward ((samples+1)*B images); the logits returned are those of the
    clean images, the heatmap uses only the noisy copies.

    Args:
        samples: number of noisy copies n (>= 1). Memory grows with (n+1)*B.
        sigma: noise level relative to the image's value range.
        generator: torch.Generator for the noise (seeded evaluation).
    Returns:
        heatmaps (B,T,H,W) float32 >= 0, logits (B,C) of the clean images.
    """
    if samples < 1:
        raise ValueError(f"smoothgrad needs samples >= 1, got {samples}")
    targets = _as_2d_targets(targets, images)
    B = images.shape[0]
    x = images.detach()
    flat = x.flatten(1)
    scale = (flat.amax(1) - flat.amin(1)) * sigma  # (B,)
    noise = torch.randn(
        (samples, *x.shape), generator=generator, device=x.device, dtype=x.dtype
    ) * scale.view(1, B, *([1] * (x.dim() - 1)))
    batch = torch.cat([x, (x[None] + noise).flatten(0, 1)])  # ((n+1)*B,3,H,W)
    grads, logits, _ = _input_gradients(model, batch, targets.repeat(samples + 1, 1))
    noisy = grads[B:].unflatten(0, (samples, B))  # (n,B,T,3,H,W)
    return noisy.abs().amax(dim=3).mean(dim=0), logits[:B]
