"""Localisation metrics for explanations: pointing game, stochastic pointing game, content heatmap.

Semantics (DESIGN.md "Evaluation", the paper's TorchRay-based scripts):

* A heatmap is a non-negative map over the ORIGINAL image's pixels (H,W). It is treated as a
  distribution after normalising it to sum 1; callers may pass it unnormalised. A map whose sum is
  not > 0 (all zero, or NaN) has no distribution: the single-pair functions raise
  :class:`EmptyHeatmapError`; the batched :func:`score_pairs` marks such pairs ``valid=False`` so the
  evaluator skips and counts them (the paper's scripts ``continue`` on them).
* Hit rule (TorchRay's pointing game, :mod:`gridcam.metrics.hits`): a pixel ``p`` hits when some mask pixel ``q`` lies at
  Euclidean distance ``|p - q| < tolerance`` (strict; 15 px in the paper). Instead of building a
  mesh of the whole image per point, :func:`hit_points` counts mask pixels in the tolerance disc
  around each point from per-row running counts of the mask (one cumulative sum per pair, then
  two lookups per disc row); :func:`hit_region` gives the whole map of hitting pixels (a
  truncated distance transform) for display and checks.
* Pointing game (PG): the point is the argmax of the heatmap (first maximum in row-major order).
  Score = mean over classes with at least one scored pair of hits / (hits + misses).
* Stochastic pointing game (SPG): ``samples`` pixels drawn i.i.d. from the normalised heatmap by
  inverse CDF (the algorithm ``numpy.random.choice(p=...)`` uses); per pair the fraction of draws
  that hit; score = mean over pairs.
* Content heatmap (CH): the fraction of the heatmap's mass inside the mask; mean over pairs.

Everything here is pure tensor code (numpy on CPU arrays in places); no file I/O.
:class:`LocalizationCounts` keeps the running totals with integer
arithmetic so that partial totals from several ranks, or from a resumed run, merge to exactly the
numbers of one uninterrupted pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

from gridcam.metrics.hits import _check_tensor, hit_points, hit_region

__all__ = [
    "EmptyHeatmapError",
    "LocalizationCounts",
    "PairScores",
    "content_heatmap",
    "hit_points",
    "hit_region",
    "inverse_cdf_sample",
    "pointing_game_hit",
    "score_pairs",
    "stochastic_pointing_game",
]

#: Content-heatmap fractions are accumulated as integers ``int(ch * 2**64)`` (Python ints never
#: overflow): integer sums do not depend on the order of addition, so sharded and resumed runs
#: merge to bit-identical totals. Resolution 5e-20 per pair, far below anything reported.
_CH_SCALE = 2**64


class EmptyHeatmapError(ValueError):
    """The heatmap has no mass (sum <= 0 or NaN), so it has no argmax/distribution to score.

    The paper skips such images; the evaluator counts them as ``skipped``.
    """


# ------------------------------------------------------------------------------------- sampling
def inverse_cdf_sample(heat: Tensor, uniforms: Tensor, total: Tensor | None = None) -> Tensor:
    """Draw pixels from heatmaps used as distributions, given uniform numbers.

    Args:
        heat: (P,N) non-negative weights per pair (flattened pixels), each row with sum > 0.
        uniforms: (P,S) float64 in [0,1) (``torch.rand(..., dtype=torch.float64)``).
        total: (P,) float64 row sums of ``heat`` if already known.
    Returns:
        (P,S) long flat pixel indices. A pixel of zero weight is never drawn.

    The CDF is built in float64 as ``numpy.random.choice`` does (``cdf = cumsum(p); cdf /= cdf[-1]``
    then ``searchsorted(cdf, u, side="right")``), vectorised over pairs: 100 draws cost one cumsum
    and one binary search per pair.
    """
    p = heat.double()
    p = p / (p.sum(dim=1, keepdim=True) if total is None else total[:, None])
    cdf = torch.cumsum(p, dim=1)
    cdf /= cdf[:, -1:].clone()
    idx = torch.searchsorted(cdf, uniforms.to(cdf.device, torch.float64), right=True)
    return idx.clamp_(max=heat.shape[1] - 1)


# ------------------------------------------------------------------------------ batched scoring
@dataclass
class PairScores:
    """Per-pair results of :func:`score_pairs` (P pairs). Fields for metrics not asked are None.

    valid: (P,) bool, heatmap sum > 0 (invalid pairs must be skipped; their other fields are
        meaningless). point: (P,2) long [y, x] argmax. pg_hit: (P,) bool. spg_hits: (P,) long,
        number of the S draws that hit. ch: (P,) float64 fraction of mass inside the mask.
    """

    valid: Tensor
    point: Tensor | None = None
    pg_hit: Tensor | None = None
    spg_hits: Tensor | None = None
    ch: Tensor | None = None


def score_pairs(
    heat: Tensor,
    masks: Tensor,
    *,
    uniforms: Tensor | None = None,
    metrics: Iterable[str] = ("pg", "spg", "ch"),
    tolerance: float = 15.0,
) -> PairScores:
    """Score P (heatmap, mask) pairs of equal size at once.

    Args:
        heat: (P,H,W) non-negative heatmaps at the original image size, unnormalised.
        masks: (P,H,W) bool ground-truth masks.
        uniforms: (P,S) float64 in [0,1): the SPG draws' random numbers (required for "spg").
        metrics: subset of {"pg", "spg", "ch"}.
        tolerance: the hit rule's distance in pixels (strict), for "pg" and "spg".
    Returns:
        :class:`PairScores`.
    """
    metrics = set(metrics)
    _check_tensor("heat", heat)
    _check_tensor("masks", masks)
    if heat.dim() != 3 or masks.shape != heat.shape:
        raise ValueError(f"heat and masks must both be (P,H,W); got {tuple(heat.shape)} "
                         f"and {tuple(masks.shape)}")
    P, H, W = heat.shape
    N = H * W
    heat = heat.detach()
    if not heat.is_floating_point():
        heat = heat.float()
    flat = heat.reshape(P, N)
    # Sums in float64 (float32 sums over ~10^5 pixels would lose digits; float64 is also what the
    # paper's numpy code uses), accumulated straight from the float32 maps: no float64 copy of the
    # full-size maps is made. With SPG the running sums are the unnormalised CDF, whose last entry
    # is the total.
    if "spg" in metrics:
        # in place on the one float64 copy: a second full-size allocation costs its page faults
        cdf = flat.to(torch.float64, copy=True).cumsum_(dim=1)
        total = cdf[:, -1].clone()
    else:
        cdf = None
        total = flat.sum(dim=1, dtype=torch.float64)
    valid = total > 0  # False for all-zero and NaN maps
    if not bool(valid.all()):
        # Invalid rows get a uniform dummy map so the vectorised ops below stay finite; the caller
        # discards their results.
        bad = ~valid
        flat = flat.clone()
        flat[bad] = 1.0
        heat = flat.view(P, H, W)
        if cdf is not None:
            cdf[bad] = torch.arange(1, N + 1, dtype=torch.float64, device=cdf.device)
        total = torch.where(valid, total, torch.full_like(total, N))
    out = PairScores(valid=valid)
    if "spg" in metrics and uniforms is None:
        raise ValueError("the stochastic pointing game needs uniforms (P,S)")
    points = []  # flat pixel indices whose hits are tested, (P,1) for PG then (P,S) for SPG
    if "pg" in metrics:
        # Normalising by a positive scalar does not move the maximum, so argmax the raw map.
        # numpy's SIMD argmax is several times faster than torch's on CPU; both return the first
        # maximum in row-major order (and the map has no NaN here: NaN rows were replaced above).
        if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
            idx = torch.from_numpy(flat.numpy().argmax(axis=1))
        else:
            idx = flat.argmax(dim=1)
        out.point = torch.stack([idx // W, idx % W], dim=1)
        points.append(idx[:, None].to(heat.device))
    if "spg" in metrics:
        points.append(_draw_from_cdf(cdf, total, uniforms))
    if points:
        hit = hit_points(masks.to(heat.device), torch.cat(points, dim=1), tolerance, flat=True)
        if "pg" in metrics:
            out.pg_hit = hit[:, 0]
        if "spg" in metrics:
            out.spg_hits = hit[:, 1 if "pg" in metrics else 0:].sum(dim=1)
    if "ch" in metrics:
        out.ch = _mass_inside(heat, masks.to(heat.device)) / total
    return out


def _draw_from_cdf(cdf: Tensor, total: Tensor, uniforms: Tensor) -> Tensor:
    """(P,S) flat pixel indices drawn by inverse CDF from unnormalised running sums.

    ``cdf`` (P,N) float64 running sums of the maps, ``total`` (P,) their last entries (> 0),
    ``uniforms`` (P,S) float64 in [0,1). Pixel ``k`` is drawn when ``cdf[k-1] <= u * total <
    cdf[k]``: :func:`inverse_cdf_sample`'s rule (``numpy.random.choice``'s) with the threshold scaled
    instead of the CDF divided, which saves two full-size passes (normalising the map and the CDF).
    The two agree up to float64 rounding (~1e-16 relative at a bin edge). A zero-weight pixel is
    never drawn (its running sum equals its predecessor's).
    """
    v = uniforms.to(cdf.device, torch.float64) * total[:, None]
    idx = torch.searchsorted(cdf, v, right=True)
    over = idx >= cdf.shape[1]
    if bool(over.any()):
        # u * total rounded up to total (u within 1 ulp of 1): the last pixel of positive weight,
        # i.e. the first whose running sum reaches the total.
        last = torch.searchsorted(cdf, total[:, None].contiguous(), right=False)
        idx = torch.where(over, last.expand_as(idx), idx)
    return idx.clamp_(max=cdf.shape[1] - 1)


def _mass_inside(heat: Tensor, masks: Tensor) -> Tensor:
    """(P,) float64 sums of ``heat`` (P,H,W) float over ``masks`` (P,H,W) bool.

    Summed over each mask's bounding box only (a mask covers a fraction of a photo; this saves
    most of a masked pass over the full-size float64 maps). The result is a deterministic function
    of the pair alone, whatever the other pairs in the call.
    """
    P = heat.shape[0]
    if heat.device.type != "cpu":
        return torch.where(masks, heat, 0.0).sum(dim=(1, 2), dtype=torch.float64)
    # numpy has no bfloat16; float32 holds every bfloat16 value exactly
    h, m = (heat.float() if heat.dtype == torch.bfloat16 else heat).numpy(), masks.numpy()
    rows = m.any(axis=2)  # (P,H); numpy's bool reductions are ~5x faster than torch's here
    cols = m.any(axis=1)  # (P,W)
    out = np.zeros(P, dtype=np.float64)
    for p in range(P):
        r = np.flatnonzero(rows[p])
        if r.size == 0:
            continue  # empty mask: no mass inside
        c = np.flatnonzero(cols[p])
        win = (slice(r[0], r[-1] + 1), slice(c[0], c[-1] + 1))
        out[p] = np.where(m[p][win], h[p][win], 0.0).sum(dtype=np.float64)
    return torch.from_numpy(out)


# --------------------------------------------------------------------------- single-pair API
def _check_pair(heatmap: Tensor, mask: Tensor, *, non_negative: bool = False) -> None:
    _check_tensor("heatmap", heatmap)
    _check_tensor("mask", mask)
    if heatmap.dim() != 2 or mask.shape != heatmap.shape:
        raise ValueError(f"heatmap and mask must both be (H,W); got {tuple(heatmap.shape)} "
                         f"and {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool, got {mask.dtype}")
    if not bool(heatmap.double().sum() > 0):
        raise EmptyHeatmapError("heatmap sums to 0 (or contains NaN): nothing to point at; "
                                "the paper skips such images")
    if non_negative and bool((heatmap < 0).any()):
        raise ValueError(f"heatmap has negative values (min {float(heatmap.min()):.3g}): it is "
                         "used as a distribution of mass, so it must be >= 0 (clamp(min=0) it, or "
                         "take the absolute value of signed attributions)")


def pointing_game_hit(heatmap: Tensor, mask: Tensor, tolerance: float = 15.0) -> bool:
    """Pointing game for one pair: is the heatmap's maximum within ``tolerance`` px of the mask?

    Args:
        heatmap: (H,W) non-negative (normalised or not) at the mask's resolution.
        mask: (H,W) bool.
        tolerance: strict distance limit in pixels.
    Returns:
        True for a hit. Raises :class:`EmptyHeatmapError` when the heatmap sums to 0.
    """
    _check_pair(heatmap, mask)
    s = score_pairs(heatmap[None], mask[None], metrics=("pg",), tolerance=tolerance)
    return bool(s.pg_hit[0])


def stochastic_pointing_game(
    heatmap: Tensor,
    mask: Tensor,
    samples: int = 100,
    tolerance: float = 15.0,
    generator: torch.Generator | None = None,
) -> float:
    """Stochastic pointing game for one pair: fraction of ``samples`` draws that hit.

    Args:
        heatmap: (H,W) non-negative, used as a distribution after normalising to sum 1.
        mask: (H,W) bool.
        samples: number of i.i.d. draws (paper: 100).
        tolerance: strict distance limit in pixels.
        generator: CPU ``torch.Generator`` for the draws; the evaluator seeds one per image from
            (seed, image index) and draws ``torch.rand((T, samples), dtype=float64)`` from it, so
            this function with the same generator state reproduces its per-pair number.
    Returns:
        a fraction in [0, 1]. Raises :class:`EmptyHeatmapError` when the heatmap sums to 0.
    """
    _check_pair(heatmap, mask, non_negative=True)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    u = torch.rand((1, samples), generator=generator, dtype=torch.float64)
    s = score_pairs(heatmap[None], mask[None], uniforms=u, metrics=("spg",), tolerance=tolerance)
    return int(s.spg_hits[0]) / samples


def content_heatmap(heatmap: Tensor, mask: Tensor) -> float:
    """Content heatmap for one pair: fraction of the heatmap's mass inside the mask (no tolerance).

    Args:
        heatmap: (H,W) non-negative. mask: (H,W) bool.
    Returns:
        a fraction in [0, 1]. Raises :class:`EmptyHeatmapError` when the heatmap sums to 0,
        ValueError when it has negative values (the fraction would be meaningless), TypeError for
        numpy arrays.
    """
    _check_pair(heatmap, mask, non_negative=True)
    s = score_pairs(heatmap[None], mask[None], metrics=("ch",))
    return float(s.ch[0])


# ------------------------------------------------------------------------------- accumulation
@dataclass
class LocalizationCounts:
    """Running totals of one explanation method, mergeable exactly across ranks and runs.

    Attributes:
        num_classes: C, for the per-class pointing-game counts.
        samples: S, SPG draws per pair.
        pg_hits / pg_misses: (C,) int64 per-class pointing-game counts.
        spg_hits: total draws that hit, over all pairs; spg_pairs: pairs with an SPG score.
        ch_fixed: sum over pairs of ``int(ch * 2**64)`` (exact, order-independent); ch_pairs.
        evaluated: pairs scored; skipped: {reason: pairs not scored}.
    """

    num_classes: int
    samples: int = 100
    pg_hits: Tensor = field(default=None)  # type: ignore[assignment]
    pg_misses: Tensor = field(default=None)  # type: ignore[assignment]
    spg_hits: int = 0
    spg_pairs: int = 0
    ch_fixed: int = 0
    ch_pairs: int = 0
    evaluated: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pg_hits is None:
            self.pg_hits = torch.zeros(self.num_classes, dtype=torch.int64)
        if self.pg_misses is None:
            self.pg_misses = torch.zeros(self.num_classes, dtype=torch.int64)

    def update(self, classes: Tensor, pg_hit: Tensor | None = None, spg_hits: Tensor | None = None,
               ch: Tensor | None = None) -> None:
        """Add P scored pairs (only the valid ones; skipped pairs go to :meth:`skip`).

        classes: (P,) long class of each pair; pg_hit (P,) bool; spg_hits (P,) long draws that hit
        out of ``samples``; ch (P,) float fraction. A None argument = metric not computed.
        """
        classes = classes.detach().cpu().long()
        self.evaluated += int(classes.numel())
        if pg_hit is not None:
            h = pg_hit.detach().cpu().to(torch.int64)
            self.pg_hits.index_add_(0, classes, h)
            self.pg_misses.index_add_(0, classes, 1 - h)
        if spg_hits is not None:
            self.spg_hits += int(spg_hits.detach().cpu().sum())
            self.spg_pairs += int(spg_hits.numel())
        if ch is not None:
            self.ch_fixed += sum(int(v * _CH_SCALE) for v in ch.detach().cpu().double().tolist())
            self.ch_pairs += int(ch.numel())

    def add_record(self, cls: int, pg_hit: bool | None, spg: float | None, ch: float | None) -> None:
        """Add one pair read back from a per-image record (spg as a fraction, ch as a fraction).

        Gives exactly the same totals as :meth:`update` with the original tensors: spg*S is an
        integer count and ch round-trips through JSON exactly.
        """
        self.update(
            torch.tensor([cls]),
            None if pg_hit is None else torch.tensor([bool(pg_hit)]),
            None if spg is None else torch.tensor([round(spg * self.samples)]),
            None if ch is None else torch.tensor([ch], dtype=torch.float64),
        )

    def skip(self, reason: str, n: int = 1) -> None:
        """Count ``n`` pairs not scored, by reason (reason codes, e.g. "zero_heatmap", "all_difficult")."""
        self.skipped[reason] = self.skipped.get(reason, 0) + int(n)

    def merge(self, other: "LocalizationCounts") -> "LocalizationCounts":
        """Add ``other``'s totals into this one (in place, also returned)."""
        if other.num_classes != self.num_classes or other.samples != self.samples:
            raise ValueError("cannot merge counts of different class counts / SPG samples")
        self.pg_hits += other.pg_hits
        self.pg_misses += other.pg_misses
        self.spg_hits += other.spg_hits
        self.spg_pairs += other.spg_pairs
        self.ch_fixed += other.ch_fixed
        self.ch_pairs += other.ch_pairs
        self.evaluated += other.evaluated
        for k, v in other.skipped.items():
            self.skip(k, v)
        return self

    def state(self) -> dict[str, Any]:
        """Plain picklable state (for ``all_gather_object``)."""
        return {"num_classes": self.num_classes, "samples": self.samples,
                "pg_hits": self.pg_hits.tolist(), "pg_misses": self.pg_misses.tolist(),
                "spg_hits": self.spg_hits, "spg_pairs": self.spg_pairs, "ch_fixed": self.ch_fixed,
                "ch_pairs": self.ch_pairs, "evaluated": self.evaluated, "skipped": dict(self.skipped)}

    @classmethod
    def from_state(cls, s: Mapping[str, Any]) -> "LocalizationCounts":
        return cls(num_classes=s["num_classes"], samples=s["samples"],
                   pg_hits=torch.tensor(s["pg_hits"], dtype=torch.int64),
                   pg_misses=torch.tensor(s["pg_misses"], dtype=torch.int64),
                   spg_hits=s["spg_hits"], spg_pairs=s["spg_pairs"], ch_fixed=s["ch_fixed"],
                   ch_pairs=s["ch_pairs"], evaluated=s["evaluated"], skipped=dict(s["skipped"]))

    # ------------------------------------------------------------------------------ results
    def pointing_game(self) -> float | None:
        """PG in %: mean over classes with >= 1 scored pair of hits/(hits+misses); None if none."""
        n = self.pg_hits + self.pg_misses
        seen = n > 0
        if not bool(seen.any()):
            return None
        acc = self.pg_hits[seen].double() / n[seen].double()
        return float(acc.mean()) * 100.0

    def stochastic_pointing_game(self) -> float | None:
        """SPG in %: mean over pairs of the fraction of draws that hit; None if no pair."""
        if self.spg_pairs == 0:
            return None
        return self.spg_hits / (self.spg_pairs * self.samples) * 100.0

    def content_heatmap(self) -> float | None:
        """CH in %: mean over pairs of the mass fraction inside the mask; None if no pair."""
        if self.ch_pairs == 0:
            return None
        return self.ch_fixed * 100 / (self.ch_pairs * _CH_SCALE)

    def result(self) -> dict[str, Any]:
        """``{"pointing_game", "stochastic_pointing_game", "content_heatmap"`` (%, or None when not
        computed), ``"evaluated"``, ``"skipped"`` (total), ``"skipped_reasons"``}``."""
        return {
            "pointing_game": self.pointing_game(),
            "stochastic_pointing_game": self.stochastic_pointing_game(),
            "content_heatmap": self.content_heatmap(),
            "evaluated": self.evaluated,
            "skipped": sum(self.skipped.values()),
            "skipped_reasons": dict(sorted(self.skipped.items())),
        }
