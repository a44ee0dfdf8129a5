"""Deletion and insertion (Petsiuk et al., BMVC 2018, the RISE paper): how fast the class
probability falls as the most relevant pixels are removed, or rises as they are added.

For a pair (image ``x``, class ``c``, heatmap ``h`` at the image's resolution):

* the pixels are ordered by ``h``, most relevant first (a stable sort: ties keep pixel index order,
  row-major);
* step ``k`` of ``n`` (``k = 0..n``) has the first ``m_k = floor(k * N / n)`` pixels of that order
  (all channels of a pixel together; ``N = h * w``) *changed*: deletion replaces them by a
  baseline image, insertion starts from the baseline and puts them back from ``x``;
* the curve is ``p_k = softmax(model(x_k))[c]`` (``n + 1`` points, the unperturbed image and the
  full baseline included), and the score its area over ``[0, 1]`` by the trapezoidal rule,
  ``(sum p - (p_0 + p_n) / 2) / n``. Deletion: lower is better; insertion: higher is better.

Baselines (images of the same shape, in the model's input space, i.e. after normalisation):
``zero`` (RISE's deletion substrate: the dataset's mean colour after normalisation), ``mean`` (each
channel's mean over the image), ``blur`` (RISE's insertion substrate: a Gaussian blur, 11 taps,
sigma 5, replicate padding).

Cost: the perturbed forwards. :func:`perturbation_curves` runs the original and baseline images
once per image (whatever the number of pairs, heatmaps or methods: the curves' end points) and
the ``n - 1`` inner points of each curve in batches of ``batch`` perturbed images, built on the
fly (a ``where`` between two stacked images), so the work is ``2 (n - 1)`` forwards per pair plus
two or three per image. Pure tensor code: no file I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BASELINES", "BLUR_SIGMA", "BLUR_TAPS", "Curves", "baseline_images", "curve_auc",
           "gaussian_blur", "perturbation_curves", "pixel_ranks", "step_pixels"]

#: Baseline names (``--deletion-baseline`` / ``--insertion-baseline``).
BASELINES = ("blur", "zero", "mean")
#: RISE's blur (``gkern(klen=11, nsig=5)``): taps and standard deviation in pixels.
BLUR_TAPS = 11
BLUR_SIGMA = 5.0


@dataclass
class Curves:
    """Result of :func:`perturbation_curves` for P pairs and ``n`` steps.

    deletion / insertion: (P, n+1) float64 class probabilities (None when not asked);
    forwards: images the model ran (the benchmark's count).
    """

    deletion: Tensor | None
    insertion: Tensor | None
    forwards: int


def gaussian_blur(images: Tensor, taps: int = BLUR_TAPS, sigma: float = BLUR_SIGMA) -> Tensor:
    """(B,C,h,w) -> (B,C,h,w): separable Gaussian blur (``taps`` odd, weights summing to 1),
    borders replicated. Same dtype and device."""
    if taps < 1 or taps % 2 == 0:
        raise ValueError(f"taps must be a positive odd number, got {taps}")
    r = taps // 2
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).to(images.dtype).to(images.device)
    B, C, h, w = images.shape
    flat = images.reshape(B * C, 1, h, w)
    flat = F.pad(flat, (r, r, r, r), mode="replicate")
    flat = F.conv2d(flat, k.view(1, 1, 1, taps))
    flat = F.conv2d(flat, k.view(1, 1, taps, 1))
    return flat.reshape(B, C, h, w)


def baseline_images(images: Tensor, kind: str) -> Tensor:
    """The baseline of each image of ``images`` (B,C,h,w): ``zero``, ``mean`` (per channel over
    the image) or ``blur`` (:func:`gaussian_blur`). Returns (B,C,h,w) of the same dtype."""
    if kind == "zero":
        return torch.zeros_like(images)
    if kind == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).contiguous()
    if kind == "blur":
        return gaussian_blur(images)
    raise ValueError(f"unknown baseline {kind!r}; choose from: {', '.join(BASELINES)}")


def pixel_ranks(heat: Tensor) -> Tensor:
    """(P,h,w) heatmaps -> (P,h,w) int64: each pixel's position in the order most relevant first
    (0 = removed/inserted first). Ties keep row-major pixel order (a stable sort)."""
    P, h, w = heat.shape
    order = torch.sort(heat.reshape(P, h * w), dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(h * w, device=heat.device).expand(P, h * w))
    return ranks.view(P, h, w)


def step_pixels(pixels: int, steps: int) -> Tensor:
    """(steps+1,) long: ``m_k = floor(k * pixels / steps)``, the pixels changed at step k."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.arange(steps + 1, dtype=torch.long) * pixels // steps


def curve_auc(curves: Tensor) -> Tensor:
    """(P, n+1) curves -> (P,) float64 areas over [0, 1] (trapezoidal rule, equal spacing 1/n)."""
    c = curves.double()
    n = c.shape[1] - 1
    if n < 1:
        raise ValueError("a curve needs at least two points")
    return (c.sum(dim=1) - 0.5 * (c[:, 0] + c[:, -1])) / n


def perturbation_curves(logits_fn: Callable[[Tensor], Tensor], images: Tensor, heat: Tensor,
                        image_of: Tensor, classes: Tensor, *, steps: int,
                        deletion: str | None = "zero", insertion: str | None = "blur",
                        batch: int = 64) -> Curves:
    """Deletion and/or insertion curves of P pairs.

    Args:
        logits_fn: the model, (n,C,h,w) -> (n,K) logits (probabilities are their softmax).
        images: (B,C,h,w) the model's inputs.
        heat: (P,h,w) the pairs' heatmaps at the input resolution.
        image_of: (P,) long, the image of each pair; classes: (P,) long, its class.
        steps: n, the curves have n+1 points. deletion / insertion: baseline names (None: not
            computed). batch: perturbed images per forward.
    Returns:
        :class:`Curves`.
    """
    if deletion is None and insertion is None:
        raise ValueError("ask for deletion, insertion or both")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    B, _C, h, w = images.shape
    P = heat.shape[0]
    if heat.shape[1:] != (h, w):
        raise ValueError(f"heat must be (P,{h},{w}) like the images, got {tuple(heat.shape)}")
    m = step_pixels(h * w, steps).tolist()
    # The pool of whole images: the inputs, then each distinct baseline; curve k = 0 and k = n
    # are these (per image, shared by every pair and heatmap of the image).
    kinds = list(dict.fromkeys(k for k in (deletion, insertion) if k is not None))
    pool = torch.cat([images, *(baseline_images(images, k) for k in kinds)])
    base = {k: (1 + i) * B for i, k in enumerate(kinds)}  # pool offset of each baseline
    probs = _pool_probs(logits_fn, pool, batch)  # (len(pool), K) float64
    forwards = pool.shape[0]
    image_of = image_of.to(torch.long).cpu()
    classes = classes.to(torch.long).cpu()
    # Inner points: job j = (pair, start image, finish image, pixels changed), pairs in order.
    curves: dict[str, Tensor] = {}
    ends: dict[str, tuple[list[int], list[int]]] = {}
    for name, kind in (("deletion", deletion), ("insertion", insertion)):
        if kind is None:
            continue
        orig, sub = image_of, image_of + base[kind]
        start, finish = (orig, sub) if name == "deletion" else (sub, orig)
        curve = torch.empty((P, steps + 1), dtype=torch.float64)
        curve[:, 0] = probs[start, classes]
        curve[:, steps] = probs[finish, classes]
        curves[name] = curve
        ends[name] = (start.tolist(), finish.tolist())
    names = list(curves)
    jobs = [(p, ends[name][0][p], ends[name][1][p], m[k])
            for p in range(P) for name in names for k in range(1, steps)]
    values = _job_probs(logits_fn, pool, heat, jobs, classes, batch)
    forwards += len(jobs)
    per = steps - 1
    for p in range(P):
        for i, name in enumerate(names):
            j0 = (p * len(names) + i) * per
            curves[name][p, 1:steps] = values[j0:j0 + per]
    return Curves(curves.get("deletion"), curves.get("insertion"), forwards)


def _softmax64(logits: Tensor) -> Tensor:
    return torch.softmax(logits.detach().double(), dim=-1).cpu()


def _pool_probs(logits_fn: Callable[[Tensor], Tensor], pool: Tensor, batch: int) -> Tensor:
    """(n, K) float64 class probabilities of the whole images of ``pool``, ``batch`` at a time."""
    return torch.cat([_softmax64(logits_fn(pool[i:i + batch])) for i in range(0, pool.shape[0], batch)])


def _job_probs(logits_fn: Callable[[Tensor], Tensor], pool: Tensor, heat: Tensor,
               jobs: list[tuple[int, int, int, int]], classes: Tensor, batch: int) -> Tensor:
    """(J,) float64: the class probability of each job's perturbed image. A job ``(p, s, f, m)``
    shows pool image ``f`` on the first ``m`` pixels of pair ``p``'s order and ``s`` elsewhere.
    Ranks are computed for the pairs of one batch at a time (jobs come grouped by pair)."""
    out = torch.empty(len(jobs), dtype=torch.float64)
    cached: dict[int, Tensor] = {}
    for i in range(0, len(jobs), batch):
        chunk = jobs[i:i + batch]
        pairs = sorted({p for p, _, _, _ in chunk})
        missing = [p for p in pairs if p not in cached]
        if missing:
            r = pixel_ranks(heat[torch.tensor(missing, device=heat.device)])
            cached = {p: cached[p] for p in pairs if p in cached}
            cached.update({p: r[k] for k, p in enumerate(missing)})
        pj = torch.stack([cached[p] for p, _, _, _ in chunk])  # (n,h,w)
        dev = pool.device
        s = torch.tensor([c[1] for c in chunk], device=dev)
        f = torch.tensor([c[2] for c in chunk], device=dev)
        mm = torch.tensor([c[3] for c in chunk], device=pj.device)
        changed = (pj < mm[:, None, None]).to(dev)[:, None]  # (n,1,h,w)
        x = torch.where(changed, pool[f], pool[s])
        pr = _softmax64(logits_fn(x))
        cls = classes[torch.tensor([c[0] for c in chunk])]
        out[i:i + len(chunk)] = pr[torch.arange(len(chunk)), cls]
    return out
