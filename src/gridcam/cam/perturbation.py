"""Perturbation methods: explain a class by how the model's score changes when the input changes.

RISE (random masks), occlusion (a sliding window) and extremal perturbation (an optimised mask).
All of them push many perturbed copies of each image through the model; ``method_batch`` caps the
number of perturbed images per forward (the memory budget), ``progress=True`` shows a tqdm bar.
The random ones draw everything from ``generator`` (a ``torch.Generator``) or, without one, from a
fresh generator seeded with ``seed``, and draw all their randomness up front, so a result does not
depend on ``method_batch`` nor on the batch the image came in with.

Signature (see :func:`gridcam.cam.explain`)::

    heat, logits = explain_rise(model, None, images (B,3,H,W), targets (B,T) long, **options)

``layer`` is not used. Returns ``heatmaps (B,T,H,W)`` float32 >= 0 at the input's resolution
(not normalised, detached) and the clean images' ``logits (B,C)`` (detached). Call
``model.eval()`` first. The model is never modified and no ``.grad`` is accumulated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import GridcamError
from .cams import DEFAULT_METHOD_BATCH, _bar, _check_method_batch
from .gradcam import _as_2d_targets, _check_targets
from .registry import keyword_defaults

__all__ = ["METHODS", "explain_extremal_perturbation", "explain_occlusion", "explain_rise",
           "rise_masks"]


def _clean_forward(model: nn.Module, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Logits (B,C) of the unperturbed images and the validated targets (B,T)."""
    targets = _as_2d_targets(targets, images)
    with torch.no_grad():
        logits = model(images.detach())
    targets = _check_targets(logits, targets)
    return logits.detach(), targets


def _make_generator(seed: int, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        return generator
    return torch.Generator().manual_seed(int(seed))


def rise_masks(
    num_masks: int, size: tuple[int, int], *, cells: int = 7, p: float = 0.5,
    generator: torch.Generator | None = None, seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """The random draws behind RISE's masks: binary grids and shifts (see :func:`_expand_masks`).

    Returns ``grids`` (N,1,cells,cells) float in {0,1} (1 with probability ``p``) and the shifts
    ``dy`` (N,), ``dx`` (N,) long in [0, ceil(H/cells)) and [0, ceil(W/cells)), on the
    generator's device.
    """
    gen = _make_generator(seed, generator)
    H, W = size
    ch, cw = math.ceil(H / cells), math.ceil(W / cells)
    grids = (torch.rand((num_masks, 1, cells, cells), generator=gen, device=gen.device) < p).float()
    dy = torch.randint(0, ch, (num_masks,), generator=gen, device=gen.device)
    dx = torch.randint(0, cw, (num_masks,), generator=gen, device=gen.device)
    return grids, dy, dx


def _expand_masks(grids: Tensor, dy: Tensor, dx: Tensor, size: tuple[int, int]) -> Tensor:
    """RISE masks (n,H,W) in [0,1]: each grid upsampled (bilinear) to ``(cells+1)*ceil(H/cells)``
    x ``(cells+1)*ceil(W/cells)`` and cropped to H x W at its shift (Petsiuk et al.)."""
    H, W = size
    cells = grids.shape[-1]
    ch, cw = math.ceil(H / cells), math.ceil(W / cells)
    up = F.interpolate(grids, size=((cells + 1) * ch, (cells + 1) * cw), mode="bilinear",
                       align_corners=False)[:, 0]
    n = len(grids)
    rows = dy[:, None] + torch.arange(H, device=up.device)  # (n,H)
    cols = dx[:, None] + torch.arange(W, device=up.device)  # (n,W)
    return up[torch.arange(n, device=up.device)[:, None, None], rows[:, :, None], cols[:, None, :]]


def explain_rise(
    model: nn.Module,
    layer: nn.Module | None,
    images: Tensor,
    targets: Tensor,
    *,
    num_masks: int = 4000,
    cells: int = 7,
    p: float = 0.5,
    masks: Tensor | None = None,
    method_batch: int = DEFAULT_METHOD_BATCH,
    seed: int = 0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """RISE (Petsiuk, Das & Saenko, BMVC 2018, "RISE: Randomized Input Sampling for Explanation
    of Black-box Models").

    ``S_t = 1/(N p) sum_i softmax(f(x * M_i))_t M_i`` over N random smooth masks ``M_i``: a
    ``cells`` x ``cells`` binary grid (1 with probability ``p``), bilinearly upsampled and randomly
    shifted. The same N masks are used for every image. Defaults are the paper's ImageNet
    setting for ResNet-50 (N = 4000, s = 7, p = 0.5).

    Args:
        num_masks, cells, p: N, s and p of the paper.
        masks: (N,H,W) masks to use instead of random ones (then ``p`` is still the normaliser).
        method_batch: masked images per forward (at least one mask for all B images).
        seed / generator: the masks' randomness.
        progress: show a progress bar.
    Returns (B,T,H,W) maps and the clean logits (B,C).
    Cost per image: 1 + N forwards, no backward; the T targets share them.
    """
    _check_method_batch(method_batch)
    if not 0 < p <= 1:
        raise GridcamError(f"rise needs 0 < p <= 1, got {p}")
    logits, targets = _clean_forward(model, images, targets)
    B, T = targets.shape
    H, W = images.shape[-2:]
    x = images.detach()
    if masks is not None:
        if masks.dim() != 3 or tuple(masks.shape[1:]) != (H, W):
            raise GridcamError(f"rise masks must be (N,{H},{W}), got shape {tuple(masks.shape)}")
        num = len(masks)
    else:
        if num_masks < 1 or cells < 1:
            raise GridcamError(
                f"rise needs num_masks >= 1 and cells >= 1, got {num_masks}, {cells}")
        grids, dy, dx = rise_masks(num_masks, (H, W), cells=cells, p=p, generator=generator,
                                   seed=seed)
        num = num_masks
    per_chunk = max(1, method_batch // B)
    sal = x.new_zeros((B, T, H, W), dtype=torch.float32)
    with torch.no_grad(), _bar(progress, num * B, "rise") as bar:
        for start in range(0, num, per_chunk):
            stop = min(num, start + per_chunk)
            if masks is not None:
                m = masks[start:stop].to(x.device, torch.float32)
            else:
                m = _expand_masks(grids[start:stop], dy[start:stop], dx[start:stop], (H, W))
                m = m.to(x.device)
            batch = (x[None] * m[:, None, None].to(x.dtype)).flatten(0, 1)  # (n*B,3,H,W)
            probs = F.softmax(model(batch).float(), dim=1).unflatten(0, (len(m), B))
            score = probs.gather(2, targets[None].expand(len(m), B, T))  # (n,B,T)
            sal += torch.einsum("nbt,nhw->bthw", score, m)
            bar.update(len(m) * B)
    return (sal / (num * p)).clamp_min(0), logits


def _windows(length: int, window: int, stride: int) -> Tensor:
    """Start offsets of a sliding window as Captum's Occlusion places them:
    0, s, 2s, ..., ceil((L - w) / s) * s (the last window may be cut by the border)."""
    return torch.arange(math.ceil((length - window) / stride) + 1) * stride


def explain_occlusion(
    model: nn.Module,
    layer: nn.Module | None,
    images: Tensor,
    targets: Tensor,
    *,
    window: int = 32,
    stride: int = 16,
    baseline: float = 0.0,
    method_batch: int = DEFAULT_METHOD_BATCH,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Occlusion (Zeiler & Fergus, ECCV 2014, "Visualizing and Understanding Convolutional
    Networks"), windows placed and averaged as in Captum's ``Occlusion``.

    ``S_t(p) = ReLU(mean over windows w containing p of (f_t(x) - f_t(x with w set to baseline)))``:
    f_t the target logit; a ``window`` x ``window`` square over all channels, moved by
    ``stride``; ``baseline`` is in normalised-image units (0 = the dataset's mean colour).

    Args:
        window, stride: in pixels (stride <= window). baseline: the occluding value.
        method_batch: occluded images per forward (at least one window for all B images).
        progress: show a progress bar.
    Returns (B,T,H,W) maps and the clean logits (B,C).
    Cost per image: 1 + ceil((H-w)/s + 1) * ceil((W-w)/s + 1) forwards (169 at 224 px with the
    defaults), no backward; the T targets share them.
    """
    _check_method_batch(method_batch)
    H, W = images.shape[-2:]
    if not (1 <= stride <= window <= min(H, W)):
        raise GridcamError(
            f"occlusion needs 1 <= stride <= window <= image side {min(H, W)}, got "
            f"window={window}, stride={stride}"
        )
    logits, targets = _clean_forward(model, images, targets)
    B, T = targets.shape
    x = images.detach()
    ys, xs = _windows(H, window, stride), _windows(W, window, stride)
    tops, lefts = (t.flatten().to(x.device) for t in torch.meshgrid(ys, xs, indexing="ij"))
    rows, cols = torch.arange(H, device=x.device), torch.arange(W, device=x.device)
    # (P,H) / (P,W) indicators of each window's rows and columns; their outer product is the mask.
    in_rows = ((rows >= tops[:, None]) & (rows < tops[:, None] + window)).float()
    in_cols = ((cols >= lefts[:, None]) & (cols < lefts[:, None] + window)).float()
    counts = in_rows.t() @ in_cols  # (H,W): windows covering each pixel (>= 1 everywhere)
    score0 = logits.float().gather(1, targets)  # (B,T)
    total = x.new_zeros((B, T, H, W), dtype=torch.float32)
    fill = torch.full_like(x[:1], baseline)[None]
    per_chunk = max(1, method_batch // B)
    with torch.no_grad(), _bar(progress, len(tops) * B, "occlusion") as bar:
        for start in range(0, len(tops), per_chunk):
            m = in_rows[start:start + per_chunk, :, None] * in_cols[start:start + per_chunk, None]
            occluded = torch.where(m[:, None, None] > 0, fill, x[None])
            out = model(occluded.flatten(0, 1)).float().unflatten(0, (len(m), B))
            drop = score0[None] - out.gather(2, targets[None].expand(len(m), B, T))  # (n,B,T)
            total += torch.einsum("nbt,nhw->bthw", drop, m)
            bar.update(len(m) * B)
    return (total / counts).clamp_min(0), logits


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (N,C,H,W) with reflect padding (kernel radius 2*sigma, capped
    by the image size); sigma <= 0 returns ``x``."""
    if sigma <= 0:
        return x
    H, W = x.shape[-2:]
    radius = max(1, min(int(math.ceil(2 * sigma)), H - 1, W - 1))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    C = x.shape[1]
    rows, cols = k.view(1, 1, -1, 1).repeat(C, 1, 1, 1), k.view(1, 1, 1, -1).repeat(C, 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), cols, groups=C)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), rows, groups=C)


def explain_extremal_perturbation(
    model: nn.Module,
    layer: nn.Module | None,
    images: Tensor,
    targets: Tensor,
    *,
    area: float = 0.1,
    iterations: int = 80,
    step: int = 7,
    blur: float = 20.0,
    lr: float = 0.05,
    method_batch: int = DEFAULT_METHOD_BATCH,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Extremal perturbation, "preserve" variant (Fong, Patrick & Vedaldi, ICCV 2019,
    "Understanding Deep Networks via Extremal Perturbations and Smooth Masks").

    ``m* = argmax_m f_t(m * x + (1 - m) * blur(x)) - lambda ||sort(m) - r_area||^2``: the smooth
    mask of area ``area`` that best preserves the target logit when the rest of the image is
    blurred.
    ``r_area`` is the sorted vector with a fraction ``area`` of ones (the paper's area constraint).
    A faithful but small version of TorchRay's: the mask is a grid of parameters every ``step``
    px in [0,1] (start 1), bilinearly upsampled and Gaussian-smoothed (sigma = step); one blurred
    copy (sigma = ``blur`` px) instead of a blur pyramid; Adam with ``lr`` instead of 800 SGD
    steps; lambda grows geometrically from 300 to 300 * 1.0035^800 (TorchRay's schedule, compressed
    to ``iterations`` steps). Deterministic (no randomness; no flip jitter).

    Args:
        area: the mask's area as a fraction of the image. iterations: optimisation steps.
        step: mask parameter spacing in px. blur: sigma of the perturbation's blur, px.
        lr: Adam learning rate. method_batch: (image, target) pairs optimised per forward.
        progress: show a progress bar.
    Returns (B,T,H,W) masks in [0,1] and the clean logits (B,C).
    Cost per image and target: ``iterations`` forwards + backwards (to the mask only).
    """
    _check_method_batch(method_batch)
    if not 0 < area < 1 or iterations < 1 or step < 1:
        raise GridcamError(
            f"extremal_perturbation needs 0 < area < 1, iterations >= 1, step >= 1, got "
            f"area={area}, iterations={iterations}, step={step}"
        )
    logits, targets = _clean_forward(model, images, targets)
    B, T = targets.shape
    x = images.detach()
    blurred = _gaussian_blur(x, blur)
    flat_targets = targets.flatten()  # pair i = (image i // T, target i % T)
    out = x.new_zeros((B * T, x.shape[-2], x.shape[-1]), dtype=torch.float32)
    with _bar(progress, B * T * iterations, "extremal_perturbation") as bar:
        for start in range(0, B * T, method_batch):
            pairs = torch.arange(start, min(B * T, start + method_batch), device=x.device)
            out[pairs] = _extremal_masks(
                model, x[pairs // T], blurred[pairs // T], flat_targets[pairs],
                area=area, iterations=iterations, step=step, lr=lr, tick=bar.update,
            )
    return out.view(B, T, *out.shape[-2:]), logits


def _smooth_mask(param: Tensor, size: tuple[int, int], step: int) -> Tensor:
    """Mask (n,1,H,W) in [0,1] from its parameter grid (n,1,h,w) in [0,1]."""
    up = F.interpolate(param, size=size, mode="bilinear", align_corners=False)
    return _gaussian_blur(up, float(step))


def _extremal_masks(
    model: nn.Module, x: Tensor, blurred: Tensor, targets: Tensor, *, area: float,
    iterations: int, step: int, lr: float, tick: Callable[[int], Any],
) -> Tensor:
    """Optimise the masks of n (image, target) pairs together; return them (n,H,W) float32."""
    with torch.inference_mode(False), torch.enable_grad():
        # Clones: the inputs may be inference tensors (the caller is under inference_mode),
        # which autograd cannot save for the backward.
        x, blurred, targets = x.clone(), blurred.clone(), targets.clone()
        n, (H, W) = len(x), x.shape[-2:]
        param = x.new_ones((n, 1, math.ceil(H / step) + 1, math.ceil(W / step) + 1),
                           dtype=torch.float32).requires_grad_(True)
        reference = torch.zeros(H * W, device=x.device)
        reference[H * W - int(round(area * H * W)):] = 1
        optimizer = torch.optim.Adam([param], lr=lr)
        growth = 1.0035 ** (800 / max(1, iterations - 1))
        rows = torch.arange(n, device=x.device)
        weight = 300.0
        for _ in range(iterations):
            mask = _smooth_mask(param, (H, W), step)
            perturbed = mask.to(x.dtype) * x + (1 - mask.to(x.dtype)) * blurred
            reward = model(perturbed).float()[rows, targets]
            regul = ((mask.flatten(1).sort(dim=1).values - reference) ** 2).mean(dim=1)
            loss = (weight * regul - reward).sum()
            (grad,) = torch.autograd.grad(loss, param)
            param.grad = grad
            optimizer.step()
            with torch.no_grad():
                param.clamp_(0, 1)
            weight *= growth
            tick(n)
        with torch.no_grad():
            return _smooth_mask(param, (H, W), step)[:, 0].clamp(0, 1)


#: name -> (fn, {option: its default}) of the perturbation methods. The defaults are the functions'
#: own (:func:`~gridcam.cam.registry.keyword_defaults`); what ``gridcam methods`` shows of each
#: method (description, cost, options' help) is its entry in :mod:`gridcam.cam.catalog`.
METHODS: dict[str, tuple[Callable[..., tuple[Tensor, Tensor]], dict[str, Any]]] = {
    name: (fn, keyword_defaults(fn)) for name, fn in {
        "rise": explain_rise,
        "occlusion": explain_occlusion,
        "extremal_perturbation": explain_extremal_perturbation,
    }.items()
}
