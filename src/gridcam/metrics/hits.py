"""Hit tests of the pointing games: which pixels lie within the tolerance of a ground-truth mask.

A pixel ``p`` hits when some mask pixel ``q`` lies at Euclidean distance ``|p - q| < tolerance``
(strict; 15 px in the paper, TorchRay's rule). :func:`hit_points` answers it for given points from
per-row running counts of the mask (one cumulative sum per pair, then two lookups per row of the
tolerance disc) instead of a distance mesh per point; :func:`hit_region` gives the whole map of
hitting pixels (a truncated distance transform) for display and checks. Pure tensor code.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["hit_points", "hit_region"]


def _check_tensor(name: str, value: object) -> None:
    if not isinstance(value, Tensor):
        hint = " (convert it with torch.from_numpy)" if type(value).__module__ == "numpy" else ""
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__module__}."
                        f"{type(value).__name__}{hint}")


# ------------------------------------------------------------------------------------- hit region
def _max_sq_distance(tolerance: float) -> int:
    """Largest squared pixel distance that hits (-1 if none), by TorchRay's exact rule.

    TorchRay tests ``dy**2 + dx**2 < tolerance**2`` on a float32 mesh, so ``tolerance**2`` is
    rounded to float32 first (e.g. a tolerance of ``1 + 2**-52`` does not reach distance 1).
    Squared distances are integers (exact in float32 below 2**24), hence the hit test is
    ``d2 <= k`` with ``k = ceil(float32(tolerance**2)) - 1``.
    """
    if not tolerance > 0:
        return -1
    t2 = float(np.float32(tolerance * tolerance))
    return int(math.ceil(t2)) - 1


def _hit_window(window: np.ndarray, k: int) -> np.ndarray:
    """Exact truncated squared-Euclidean distance transform of a (h,w) bool mask window, thresholded:
    True where some mask pixel lies at squared distance ``<= k``.

    Separable (as any Euclidean distance transform): first each pixel's distance to the nearest
    mask pixel in its row, capped at ``R + 1`` (``R = isqrt(k)``; farther never hits), by doubling
    shifts (1, 2, 4, ...: ``log2 R`` vectorised steps, exact because a 1-D distance is a sum of unit
    steps); then ``d2[r] = min_{|dy| <= R} (dy**2 + row_d[r + dy]**2)``, ``2R`` vectorised steps.
    About 5x faster than ``scipy.ndimage.distance_transform_edt`` at the 15 px tolerance, which
    computes the whole (untruncated) feature transform.
    """
    R = math.isqrt(k)
    cap = R + 1
    # int16 holds every value below when (R+1)^2 + R^2 fits (R <= 125); halves the memory traffic
    dt = (np.int16 if cap * cap + R * R < 32000 else
          np.int32 if cap * cap + R * R < 2**31 - 1 else np.int64)
    row = np.where(window, dt(0), dt(cap))
    s = 1
    while s <= R:  # afterwards row distances up to 2s - 1 are exact
        from_left = row[:, :-s] + dt(s)
        from_right = row[:, s:] + dt(s)
        np.minimum(row[:, s:], from_left, out=row[:, s:])
        np.minimum(row[:, :-s], from_right, out=row[:, :-s])
        s *= 2
    np.minimum(row, dt(cap), out=row)
    row2 = row * row
    d2 = row2.copy()
    for dy in range(1, min(R, d2.shape[0] - 1) + 1):  # farther rows are outside the window
        dd = dt(dy * dy)
        np.minimum(d2[dy:], row2[:-dy] + dd, out=d2[dy:])
        np.minimum(d2[:-dy], row2[dy:] + dd, out=d2[:-dy])
    return d2 <= k


def hit_region(mask: Tensor, tolerance: float = 15.0) -> Tensor:
    """Pixels that score a hit: within Euclidean distance ``< tolerance`` of some mask pixel.

    Args:
        mask: (H,W) or (T,H,W) bool ground-truth mask(s) at the original image resolution.
        tolerance: the pointing game's tolerance in pixels (strict ``<``).
    Returns:
        bool tensor of ``mask``'s shape (on ``mask``'s device). An empty mask gives all False
        (nothing can be hit).

    Why a distance transform: the distance from ``p`` to the nearest mask pixel, computed once per
    pair in O(H*W), answers every hit test for that pair (1 point for PG, 100 for SPG) by lookup,
    instead of a full-image distance mesh per point. The transform is exact and truncated at the
    tolerance (:func:`_hit_window`); the threshold follows TorchRay's float32 rule
    (:func:`_max_sq_distance`), which equals ``scipy.ndimage.distance_transform_edt(~mask) <
    tolerance`` except where ``tolerance**2`` is within float32 rounding of an integer.
    """
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool, got {mask.dtype}")
    if mask.dim() not in (2, 3):
        raise ValueError(f"mask must be (H,W) or (T,H,W), got shape {tuple(mask.shape)}")
    m = mask.detach().cpu().numpy()
    flat = m.reshape(-1, *m.shape[-2:])
    H, W = flat.shape[-2:]
    out = np.zeros(flat.shape, dtype=bool)
    k = _max_sq_distance(float(tolerance))
    margin = math.isqrt(k) if k >= 0 else 0
    for t in range(flat.shape[0] if k >= 0 else 0):  # one vectorised transform per pair; T is small
        rows = np.flatnonzero(flat[t].any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(flat[t].any(axis=0))
        # Only pixels within ``tolerance`` of the mask's bounding box can hit: transform that
        # window (exact: every mask pixel lies inside it), not the whole image.
        r0, r1 = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, H)
        c0, c1 = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, W)
        out[t, r0:r1, c0:c1] = _hit_window(flat[t, r0:r1, c0:c1], k)
    return torch.from_numpy(out.reshape(m.shape)).to(mask.device)


def hit_points(masks: Tensor, points: Tensor, tolerance: float = 15.0, *,
               flat: bool | None = None) -> Tensor:
    """Hit tests for many points per mask: is some mask pixel within ``< tolerance`` px?

    Args:
        masks: (P,H,W) bool ground-truth masks (original image resolution).
        points: (P,S) integer flat pixel indices ``y * W + x`` into each pair's mask, or (P,S,2)
            integer ``(y, x)`` coordinates. A (P,2) tensor whose rows all fit as (y, x) (y < H,
            x < W) is ambiguous (one (y,x) point, or two flat indices, per mask: the classic
            mistake) and raises unless ``flat=True`` says it holds flat indices; pass one (y,x)
            point per mask as (P,1,2).
        flat: ``True`` when ``points`` are flat indices (skips the (P,2) ambiguity check).
        tolerance: the pointing game's tolerance in pixels (strict ``<``, TorchRay's float32 rule,
            see :func:`_max_sq_distance`).
    Returns:
        (P,S) bool, on ``masks``' device; equal to looking the points up in :func:`hit_region`.

    The disc of squared radius ``k`` around ``(y, x)`` is ``2R+1`` row segments
    ``[x - w_dy, x + w_dy]`` (``w_dy = isqrt(k - dy**2)``, ``R = isqrt(k)``; both capped at the
    image's size, which changes nothing and bounds memory for huge tolerances). With the per-row
    running counts of the mask (one ``cumsum`` over the pair; int16 on CPU), the number of mask
    pixels on each segment is a difference of two lookups, so a test costs ``2(2R+1)`` gathers
    instead of an (H,W) distance mesh, and nothing of size (H,W) is built per pair beyond the
    counts. Raises ValueError for a point outside ``[0, H*W)``.
    """
    _check_tensor("masks", masks)
    _check_tensor("points", points)
    if points.is_floating_point() or points.dtype == torch.bool:
        raise ValueError(f"points must be integer pixel indices or (y, x) coordinates, got {points.dtype}")
    if masks.dim() == 3 and points.dim() == 3 and points.shape[2] == 2 and flat is not True:
        points = points.long()  # uint8/int16 (y, x) would wrap around in y*W+x
        points = points[..., 0] * masks.shape[2] + points[..., 1]  # (y, x) -> flat
    elif (points.dim() == 2 and points.shape[1] == 2 and flat is None and masks.dim() == 3
          and points.numel() and bool(((points[:, 0] < masks.shape[1]) & (points[:, 1] < masks.shape[2])).all())):
        raise ValueError("points of shape (P,2) that all look like (y, x) coordinates: pass one "
                         "(y, x) point per mask as (P,1,2), or flat=True if they are two flat "
                         "indices y*W+x per mask")
    if masks.dim() != 3 or points.dim() != 2 or points.shape[0] != masks.shape[0]:
        raise ValueError(f"masks must be (P,H,W) and points (P,S) flat indices or (P,S,2) (y, x); "
                         f"got {tuple(masks.shape)} and {tuple(points.shape)}")
    if masks.dtype != torch.bool:
        raise ValueError(f"masks must be bool, got {masks.dtype}")
    P, H, W = masks.shape
    S = points.shape[1]
    k = _max_sq_distance(float(tolerance))
    dev = masks.device
    if k < 0 or P == 0 or S == 0:
        return torch.zeros((P, S), dtype=torch.bool, device=dev)
    pts = points.to(dev, torch.long)
    if bool(((pts < 0) | (pts >= H * W)).any()):
        raise ValueError(f"points must be flat pixel indices in [0, {H * W}) for masks of "
                         f"{H}x{W}")
    R = min(math.isqrt(k), H - 1)  # rows farther than H-1 are outside the image anyway
    dy = torch.arange(-R, R + 1, device=dev)
    half = torch.tensor([min(math.isqrt(k - d * d), W - 1) for d in range(-R, R + 1)], device=dev)
    # running count of mask pixels along each row (a row holds at most W < 2**15 in int16, which
    # halves the memory traffic on CPU; int32 elsewhere)
    small = dev.type == "cpu" and W < 2**15
    counts = torch.cumsum(masks, dim=2, dtype=torch.int16 if small else torch.int32)
    counts = counts.view(P, H * W)
    y, x = (pts // W)[..., None], (pts % W)[..., None]  # (P,S,1)
    rows = y + dy  # (P,S,2R+1)
    inside = (rows >= 0) & (rows < H)
    base = rows.clamp_(0, H - 1).mul_(W)
    right = counts.gather(1, (base + (x + half).clamp_(max=W - 1)).view(P, -1))
    left_col = x - half - 1  # the column before the segment; < 0 when it starts at column 0
    left = counts.gather(1, (base + left_col.clamp(min=0)).view(P, -1))
    left = torch.where((left_col >= 0).view(P, -1), left, torch.zeros_like(left))
    found = (right > left).view(P, S, -1) & inside
    return found.any(dim=2)
