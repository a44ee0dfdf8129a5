"""Image gridding and the Grad-CAM consistency loss (DESIGN.md, "Image gridding" and
"Consistency loss").

For each training image ``x`` (H×W) with cam class ``c``: three negatives (images without ``c``)
and a quadrant ``q`` in {0: top-left, 1: top-right, 2: bottom-left, 3: bottom-right} make a
2H×2W composite with ``x`` at ``q``. The normalised Grad-CAM ``t`` of ``x`` placed at ``q`` in a
zero 2h×2w map is the target ``T`` for the normalised Grad-CAM ``u`` of the composite;
``L_gc = mean |u - T|``.

Everything here is vectorised over the batch (gathers on a cell index, no Python loop over
samples) and differentiable where a loss needs it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "compose",
    "place",
    "consistency_loss",
    "gc_loss",
    "sample_negatives",
    "random_quadrants",
    "choose_present_class",
]


def _check_quadrants(quadrants: Tensor, batch: int, device: torch.device) -> Tensor:
    quadrants = torch.as_tensor(quadrants, device=device)
    if quadrants.shape != (batch,):
        raise ValueError(f"quadrants must be ({batch},), got shape {tuple(quadrants.shape)}")
    return quadrants.long()


def _cells_to_grid(cells: Tensor) -> Tensor:
    """(B,4,*C,h,w) cells in order TL,TR,BL,BR -> (B,*C,2h,2w)."""
    B = cells.shape[0]
    h, w = cells.shape[-2:]
    mid = cells.shape[2:-2]
    n = len(mid)
    grid = cells.reshape(B, 2, 2, *mid, h, w)  # (B, row, col, *C, h, w)
    # -> (B, *C, row, h, col, w): rows of cells stacked over h, columns over w.
    perm = (0, *range(3, 3 + n), 1, 3 + n, 2, 4 + n)
    return grid.permute(perm).reshape(B, *mid, 2 * h, 2 * w)


def compose(x: Tensor, negatives: Tensor, quadrants: Tensor) -> Tensor:
    """Build 2×2 composites: ``x`` at its quadrant, the negatives in the other cells.

    Args:
        x: (B,C,H,W) images (C=3 for RGB).
        negatives: (B,3,C,H,W) three negative images per sample, at the same size as ``x``
            (the composite keeps full resolution: no resizing).
        quadrants: (B,) long in {0 TL, 1 TR, 2 BL, 3 BR}.

    Returns:
        (B,C,2H,2W). The negatives fill the three other cells in increasing cell order
        (negative 0 in the first free cell, ...). Differentiable w.r.t. ``x`` and ``negatives``.
    """
    B = x.shape[0]
    if negatives.shape != (B, 3, *x.shape[1:]):
        raise ValueError(
            f"negatives must be (B,3,C,H,W) = {(B, 3, *x.shape[1:])}, got {tuple(negatives.shape)}"
        )
    q = _check_quadrants(quadrants, B, x.device)
    stack = torch.cat([x[:, None], negatives], dim=1)  # (B,4,C,H,W): 0 = x, 1..3 = negatives
    cell = torch.arange(4, device=x.device)[None, :]  # (1,4)
    qq = q[:, None]
    # Cell j shows x when j == q, otherwise negative number j - (j > q) (stack index 1 + that).
    src = torch.where(cell == qq, torch.zeros_like(cell), 1 + cell - (cell > qq).long())  # (B,4)
    cells = stack.gather(1, src.view(B, 4, *([1] * (x.dim() - 1))).expand(B, 4, *x.shape[1:]))
    return _cells_to_grid(cells)


def place(heat: Tensor, quadrants: Tensor) -> Tensor:
    """Put each heatmap in its quadrant of a zero map twice its size (the target ``T``).

    Args:
        heat: (B,h,w) heatmaps of the original images.
        quadrants: (B,) long in {0 TL, 1 TR, 2 BL, 3 BR}.
    Returns:
        (B,2h,2w): ``heat[b]`` at quadrant ``quadrants[b]``, exact zeros elsewhere; differentiable
        w.r.t. ``heat``.
    """
    if heat.dim() != 3:
        raise ValueError(f"heat must be (B,h,w), got shape {tuple(heat.shape)}")
    B = heat.shape[0]
    q = _check_quadrants(quadrants, B, heat.device)
    on = (torch.arange(4, device=heat.device)[None, :] == q[:, None])[:, :, None, None]  # (B,4,1,1)
    # where (not a multiply by a one-hot) so that the other cells are exact zeros even if heat
    # holds inf/NaN.
    cells = torch.where(on, heat[:, None], heat.new_zeros(()))  # (B,4,h,w)
    return _cells_to_grid(cells)


def consistency_loss(composite_heat: Tensor, target: Tensor, *, valid: Tensor | None = None) -> Tensor:
    """``L_gc = mean |u - T|`` over all elements and the valid samples.

    Args:
        composite_heat: (B,...) ``u``, the normalised Grad-CAM of the composites.
        target: (B,...) ``T`` of the same shape (e.g. from :func:`place`).
        valid: optional (B,) bool; samples with False (no negatives available) are left out.
    Returns:
        scalar. With no valid sample it is 0 but still connected to the graph, so a
        ``backward()`` (and DDP's gradient all-reduce) proceeds normally.
    """
    if composite_heat.shape != target.shape:
        raise ValueError(
            f"composite heatmap {tuple(composite_heat.shape)} and target {tuple(target.shape)} "
            "must have the same shape"
        )
    per_sample = (composite_heat - target).abs().flatten(1).mean(dim=1)  # (B,)
    if valid is None:
        return per_sample.mean()
    valid = torch.as_tensor(valid, device=per_sample.device, dtype=torch.bool)
    if valid.shape != per_sample.shape:
        raise ValueError(f"valid must be ({per_sample.shape[0]},), got {tuple(valid.shape)}")
    # Every sample has the same number of elements, so the mean over the valid samples' elements
    # equals the mean of their per-sample means. clamp keeps 0/0 out without a host sync.
    total = torch.where(valid, per_sample, per_sample.new_zeros(())).sum()
    return total / valid.sum().clamp_min(1).to(per_sample.dtype)


def gc_loss(
    orig_heat: Tensor,
    composite_heat: Tensor,
    quadrants: Tensor,
    image_size: Sequence[int],
    *,
    detach_target: bool = False,
    valid: Tensor | None = None,
) -> Tensor:
    """The full consistency-loss rule of DESIGN.md.

    Args:
        orig_heat: (B,h,w) normalised Grad-CAM ``t`` of the original images for the cam class.
        composite_heat: (B,h2,w2) normalised Grad-CAM ``u`` of the composites for the same class.
        quadrants: (B,) long, where each original sits in its composite.
        image_size: (H,W) of the original input images (pixel resolution).
        detach_target: stop the gradient into the target branch ``t`` (the paper does NOT detach:
            by default gradients flow into both branches).
        valid: optional (B,) bool mask of samples to include (see :func:`sample_negatives`).

    Returns:
        scalar ``mean |u - T|``. When (h2,w2) == (2h,2w) the comparison is at CAM resolution.
        Otherwise (AlexNet: a 6×6 map for 224 px but 13×13 for 448 px) both maps are first resized
        bilinearly to pixel resolution, ``t`` to (H,W) and ``u`` to (2H,2W), since the composite's
        map is then not a 2×2 grid of the original's.
    """
    if orig_heat.dim() != 3 or composite_heat.dim() != 3:
        raise ValueError(
            f"orig_heat and composite_heat must be (B,h,w), got {tuple(orig_heat.shape)} and "
            f"{tuple(composite_heat.shape)}"
        )
    if detach_target:
        orig_heat = orig_heat.detach()
    h, w = orig_heat.shape[-2:]
    if tuple(composite_heat.shape[-2:]) != (2 * h, 2 * w):
        H, W = int(image_size[0]), int(image_size[1])
        orig_heat = F.interpolate(orig_heat[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        composite_heat = F.interpolate(
            composite_heat[:, None], size=(2 * H, 2 * W), mode="bilinear", align_corners=False
        )[:, 0]
    return consistency_loss(composite_heat, place(orig_heat, quadrants), valid=valid)


def sample_negatives(
    labels: Tensor,
    cam_classes: Tensor,
    num: int = 3,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw in-batch negatives: for each sample, ``num`` other items without its cam class.

    Args:
        labels: (B,) long class per item (single-label) or (B,C) multi-hot (any dtype; > 0 = present).
        cam_classes: (B,) long, the class whose Grad-CAM sample b is trained on.
        num: negatives per sample (3 for a 2×2 grid).
        generator: torch.Generator on ``labels``' device, for reproducible draws.

    Returns:
        idx (B,num) long batch indices; valid (B,) bool.
        Item j is eligible for sample b iff j != b and j's label set does not contain
        ``cam_classes[b]``. With at least ``num`` eligible items the negatives are distinct
        (uniform without replacement); with fewer, every eligible item is used and repeated
        (with replacement) to fill ``num``. Rows with none get valid=False and idx filled with
        b itself, so indexing stays safe; leave them out of the loss.

    Vectorised: a (B,B) eligibility matrix, random keys, and a top-k per row (no Python loop).
    """
    if labels.dim() not in (1, 2):
        raise ValueError(f"labels must be (B,) or (B,C) multi-hot, got shape {tuple(labels.shape)}")
    B = labels.shape[0]
    device = labels.device
    cam_classes = torch.as_tensor(cam_classes, device=device).long()
    if cam_classes.shape != (B,):
        raise ValueError(f"cam_classes must be ({B},), got shape {tuple(cam_classes.shape)}")
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if labels.dim() == 1:
        has_class = labels.long()[None, :] == cam_classes[:, None]  # [b, j]: item j is class c_b
    else:
        has_class = (labels.index_select(1, cam_classes) > 0).t()  # [b, j] = labels[j, c_b] > 0
    eye = torch.eye(B, dtype=torch.bool, device=device)
    eligible = ~has_class & ~eye  # (B,B)
    count = eligible.sum(dim=1)  # (B,)
    valid = count > 0

    # Uniform random keys in [0,1) for eligible items, -1 otherwise: the top-k of a row is a
    # uniform draw without replacement among its eligible items (ineligible ones sort last).
    keys = torch.rand((B, B), generator=generator, device=device)
    keys = torch.where(eligible, keys, torch.full_like(keys, -1.0))
    k = min(num, B)
    order = keys.topk(k, dim=1).indices  # (B,k)
    # Position p takes the (p mod count)-th eligible item: all distinct if count >= num, else
    # each eligible item is used and repeated ("with replacement").
    pos = torch.arange(num, device=device)[None, :] % count.clamp_min(1)[:, None]  # (B,num)
    idx = order.gather(1, pos.clamp_max(k - 1))
    own = torch.arange(B, device=device)[:, None].expand(B, num)
    idx = torch.where(valid[:, None], idx, own)
    return idx, valid


def random_quadrants(
    batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """(batch,) long, uniform in {0 TL, 1 TR, 2 BL, 3 BR}: where each original goes in its grid."""
    return torch.randint(0, 4, (batch,), generator=generator, device=device)


def choose_present_class(
    multi_hot: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Pick one present category per sample, uniformly (multi-label cam class, as in the paper).

    Args:
        multi_hot: (B,C) labels, > 0 = present.
        generator: torch.Generator on ``multi_hot``'s device.
    Returns:
        classes (B,) long, a random present category; valid (B,) bool, False for rows with no
        category (their class is 0 and must be left out of the loss).
    """
    if multi_hot.dim() != 2:
        raise ValueError(f"multi_hot must be (B,C), got shape {tuple(multi_hot.shape)}")
    present = multi_hot > 0
    valid = present.any(dim=1)
    weights = present.float()
    # A row without any category gets weight on class 0 so multinomial stays defined.
    weights[:, 0] = torch.where(valid, weights[:, 0], torch.ones_like(weights[:, 0]))
    classes = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return classes, valid
