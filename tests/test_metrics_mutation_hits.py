"""Hit tests (metrics/hits.py) and classification counts (metrics/classification.py): exact cases
that pin down what the mutation run found unchecked (defaults, edge tolerances, integer-width
choices, the (P,2) ambiguity rule, error messages, count accumulation and state round trips)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gridcam import metrics as M
from gridcam.metrics import hits as H


def _disc_reference(h: int, w: int, pixels: list[tuple[int, int]], tol: float) -> torch.Tensor:
    """Hit map written out: some listed mask pixel at squared distance < tol**2 (float64)."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((h, w), dtype=bool)
    for y, x in pixels:
        out |= (yy - y) ** 2 + (xx - x) ** 2 < tol * tol
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------- hit_region
def test_hit_region_default_tolerance_is_15_strict() -> None:
    mask = torch.zeros(3, 40, dtype=torch.bool)
    mask[1, 0] = True
    region = M.hit_region(mask)
    assert region.dtype == torch.bool and region.shape == (3, 40)
    assert region[1, 14] and not region[1, 15]  # 14 px hits, exactly 15 px does not
    assert torch.equal(region, _disc_reference(3, 40, [(1, 0)], 15.0))


@pytest.mark.parametrize("tol", [0.0, -3.0])
def test_hit_region_and_points_with_non_positive_tolerance_hit_nothing(tol: float) -> None:
    mask = torch.zeros(2, 6, 7, dtype=torch.bool)
    mask[0, 2:4, 3] = True
    mask[1] = True
    region = M.hit_region(mask, tol)
    assert region.dtype == torch.bool and region.shape == (2, 6, 7) and not region.any()
    pts = torch.tensor([[2 * 7 + 3, 0, 41], [0, 5, 6]])
    got = M.hit_points(mask, pts, tol)
    assert got.dtype == torch.bool and got.shape == (2, 3) and not got.any()


def test_hit_region_int16_window_edge() -> None:
    """Tolerance 128.5 (R = 128) is past the int16 range of the transform: one pixel at the corner,
    everything outside the quarter disc (e.g. (128, 128) at 181 px) must stay a miss."""
    mask = torch.zeros(200, 160, dtype=torch.bool)
    mask[0, 0] = True
    region = M.hit_region(mask, 128.5)
    assert region[0, 128] and region[128, 0] and not region[128, 128] and not region[0, 129]
    assert torch.equal(region, _disc_reference(200, 160, [(0, 0)], 128.5))


def test_hit_region_errors_name_the_cause() -> None:
    with pytest.raises(ValueError, match=r"mask must be bool, got torch\.float32"):
        M.hit_region(torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"mask must be \(H,W\) or \(T,H,W\), got shape \(1, 2, 3, 4\)"):
        M.hit_region(torch.zeros(1, 2, 3, 4, dtype=torch.bool))


def test_hit_window_int32_and_int64_widths_at_huge_tolerances() -> None:
    """The truncated transform on one column (a mask pixel at row 0) where the squared distances
    leave int32: the pixels past the tolerance must not hit through an integer overflow."""
    # R = 32767: the largest radius kept in int32 ((R+1)^2 + R^2 < 2^31 - 1)
    k = 32767 ** 2 + 100
    col = np.zeros((32767 + 3, 1), dtype=bool)
    col[0, 0] = True
    assert H._hit_window(col, k)[-4:, 0].tolist() == [True, True, False, False]
    # R = 32768: int64 (tolerance 32768.002 -> float32(t^2) = 2^30 + 128 -> k = 2^30 + 127)
    k = H._max_sq_distance(32768.002)
    assert k == 2 ** 30 + 127
    col = np.zeros((32768 + 2, 1), dtype=bool)
    col[0, 0] = True
    assert H._hit_window(col, k)[-3:, 0].tolist() == [True, True, False]


# ------------------------------------------------------------------------------- hit_points
def test_hit_points_default_tolerance_and_coordinates() -> None:
    masks = torch.zeros(1, 4, 30, dtype=torch.bool)
    masks[0, 3, 0] = True
    assert M.hit_points(masks, torch.tensor([[3 * 30 + 14, 3 * 30 + 15]])).tolist() == [[True, False]]
    yx = torch.tensor([[[3, 0], [0, 3], [3, 15]]])  # y != x: the row is the first coordinate
    assert M.hit_points(masks, yx, 1.0).tolist() == [[True, False, False]]
    assert M.hit_points(masks, yx, 1.0, flat=False).tolist() == [[True, False, False]]


@pytest.mark.parametrize("points", [[[10, 2]], [[4, 2]], [[1, 5]]])
def test_hit_points_two_values_that_cannot_be_yx_are_flat(points: list[list[int]]) -> None:
    """On 4x5 masks, (10, 2) has y >= H, (4, 2) has y == H, (1, 5) has x == W: not (y, x)
    coordinates, so they are read as two flat indices without complaint."""
    masks = torch.zeros(1, 4, 5, dtype=torch.bool)
    masks[0, 2, 0] = True  # flat index 10
    pts = torch.tensor(points)
    expected = M.hit_region(masks[0], 1.0).flatten()[pts[0]]
    assert M.hit_points(masks, pts, 1.0).tolist() == [expected.tolist()]


def test_hit_points_ambiguous_shape_message() -> None:
    masks = torch.zeros(2, 4, 5, dtype=torch.bool)
    with pytest.raises(ValueError) as err:
        M.hit_points(masks, torch.tensor([[1, 2], [3, 4]]))
    msg = str(err.value)
    assert msg.startswith("points of shape (P,2) that all look like (y, x)")
    assert "pass one (y, x) point per mask as (P,1,2)" in msg
    assert msg.endswith("flat=True if they are two flat indices y*W+x per mask")


def test_hit_points_type_and_shape_errors() -> None:
    masks = torch.zeros(2, 4, 5, dtype=torch.bool)
    with pytest.raises(TypeError, match=r"^masks must be a torch\.Tensor, got numpy\.ndarray "
                                        r"\(convert it with torch\.from_numpy\)$"):
        M.hit_points(masks.numpy(), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(TypeError) as err:
        M.hit_points([[0]], torch.zeros(2, 1, dtype=torch.long))
    assert str(err.value) == "masks must be a torch.Tensor, got builtins.list"  # no numpy hint
    shape = r"^masks must be \(P,H,W\) and points \(P,S\) flat indices or \(P,S,2\) \(y, x\); got "
    with pytest.raises(ValueError, match=shape + r"\(2, 4, 5\) and \(3, 1\)$"):
        M.hit_points(masks, torch.zeros(3, 1, dtype=torch.long))  # pair counts differ
    with pytest.raises(ValueError, match=shape + r"\(3, 5\) and \(3, 1\)$"):
        M.hit_points(torch.zeros(3, 5, dtype=torch.bool), torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"flat pixel indices in \[0, 20\) for masks of 4x5"):
        M.hit_points(masks, torch.tensor([[0], [20]]))


def test_hit_points_empty_batches() -> None:
    got = M.hit_points(torch.zeros(0, 4, 5, dtype=torch.bool), torch.zeros(0, 3, dtype=torch.long))
    assert got.shape == (0, 3) and got.dtype == torch.bool
    got = M.hit_points(torch.ones(2, 4, 5, dtype=torch.bool), torch.zeros(2, 0, dtype=torch.long))
    assert got.shape == (2, 0) and got.dtype == torch.bool


@pytest.mark.parametrize("w", [2 ** 15, 40000])
def test_hit_points_rows_wider_than_int16(w: int) -> None:
    """A full row of 2^15 or more mask pixels: the running counts must not wrap around (int16
    holds at most 32767), or the segment ending at column 32767 looks empty."""
    masks = torch.ones(1, 1, w, dtype=torch.bool)
    pts = torch.tensor([[32766, 32767, w - 1]])
    assert M.hit_points(masks, pts, 1.0).tolist() == [[True, True, True]]


# --------------------------------------------------------------------------- classification
def test_topk_counts_use_their_own_ks_and_accumulate() -> None:
    logits = torch.tensor([[0.9, 0.8, 0.7, 0.1, 0.0],    # label 2 ranks 3rd: top-3, not top-2
                           [0.9, 0.8, 0.1, 0.2, 0.0],    # label 1 ranks 2nd: top-2 and top-3
                           [0.9, 0.8, 0.7, 0.6, 0.0]])   # label 3 ranks 4th: neither
    labels = torch.tensor([2, 1, 3])
    c = M.TopKCounts((2, 3))
    assert c.update(logits, labels).tolist() == [[False, True], [True, True], [False, False]]
    c.add_flags(torch.tensor([[True, False]]))
    assert c.correct == [2, 2] and c.total == 4
    r = c.result()
    assert r == {"top2": pytest.approx(50.0), "top3": pytest.approx(50.0), "images": 4}
    back = M.TopKCounts.from_state(c.state())
    assert back.ks == (2, 3) and back.correct == [2, 2] and back.total == 4


def test_topk_counts_empty_and_merge_errors() -> None:
    assert M.TopKCounts((1, 5)).result() == {"top1": None, "top5": None, "images": 0}
    with pytest.raises(ValueError, match="^cannot merge top-k counts with different k$"):
        M.TopKCounts((1, 5)).merge(M.TopKCounts((1,)))


def test_multilabel_scores_edges_by_hand() -> None:
    t = torch.tensor
    # a class with TP = FP = FN = 0 scores 0 (no NaN), the other P = R = F1 = 100
    s = M.multilabel_scores(t([1, 0]), t([0, 0]), t([0, 0]))
    assert s["precision_per_class"] == 50 and s["recall_per_class"] == 50 and s["f1_per_class"] == 50
    # one TP only: overall P = R = F1 = 100 (denominators of exactly 1)
    s = M.multilabel_scores(t([1]), t([0]), t([0]))
    assert s["precision_overall"] == 100 and s["recall_overall"] == 100 and s["f1_overall"] == 100
    # tiny scores: P = R = 0.1 % -> F1 = 0.1 % (per class and overall)
    s = M.multilabel_scores(t([1]), t([999]), t([999]))
    assert s["f1_per_class"] == pytest.approx(0.1) and s["f1_overall"] == pytest.approx(0.1)
    # nothing predicted and nothing present: every score 0
    s = M.multilabel_scores(t([0, 0]), t([0, 0]), t([0, 0]))
    assert s == {k: 0.0 for k in s}


def test_multilabel_counts_accumulate_over_batches() -> None:
    c = M.MultiLabelCounts(3)
    truth = torch.tensor([[1.0, 0.5, 0.0]])  # 0.5 is NOT present (> 0.5 is)
    assert c.update(torch.tensor([[1.0, 1.0, -1.0]]), truth).tolist() == [[True, True, False]]
    assert c.tp.tolist() == [1, 0, 0] and c.fp.tolist() == [0, 1, 0] and c.fn.tolist() == [0, 0, 0]
    pred = torch.tensor([[True, False, False], [False, False, True]])
    c.add_predictions(pred, torch.tensor([[True, True, True], [False, True, False]]))
    assert c.tp.tolist() == [2, 0, 0] and c.fp.tolist() == [0, 1, 1] and c.fn.tolist() == [0, 2, 1]
    assert c.images == 3 and c.result()["images"] == 3


def test_multilabel_counts_state_and_merge() -> None:
    c = M.MultiLabelCounts(2, threshold=0.5)
    c.add_predictions(torch.tensor([[True, False]]), torch.tensor([[True, True]]))
    back = M.MultiLabelCounts.from_state(c.state())
    assert back.threshold == 0.5 and back.images == 1 and back.num_classes == 2
    assert back.update(torch.tensor([[0.4, 0.6]]), torch.zeros(1, 2)).tolist() == [[False, True]]
    merged = back.merge(c)
    assert merged.images == 3 and merged.tp.tolist() == [2, 0] and merged.fp.tolist() == [0, 1]
    assert merged.fn.tolist() == [0, 2]
    with pytest.raises(ValueError, match="^cannot merge multi-label counts with different class counts$"):
        c.merge(M.MultiLabelCounts(3))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_hit_points_small_integer_coordinates_do_not_wrap(dtype):
    """(y, x) = (20, 10) on a 30x100 mask: flat index 2010, past uint8's and near int16's range;
    the point is on the mask's only pixel, so it hits whatever the coordinates' dtype."""
    mask = torch.zeros(1, 30, 100, dtype=torch.bool)
    mask[0, 20, 10] = True
    pts = torch.tensor([[[20, 10]]], dtype=dtype)
    assert H.hit_points(mask, pts, tolerance=0.5).tolist() == [[True]]
