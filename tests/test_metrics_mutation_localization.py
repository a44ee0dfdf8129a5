"""Localisation metrics, the cases the mutation run found unchecked: exact draws at the CDF's edges
(zero-weight pixels, the last pixel, the largest uniform below 1, subnormal and huge weights),
several pairs at once, float64/integer/bfloat16 maps, the placeholders of skipped pairs, the
defaults (tolerance 15, 100 draws), the error messages, and LocalizationCounts' bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gridcam import metrics as M

ONE_BELOW_1 = float(np.nextafter(1.0, 0.0))  # the largest uniform torch.rand can return


def _heat(h: int, w: int, values: dict[tuple[int, int], float], dtype=torch.float32) -> torch.Tensor:
    heat = torch.zeros(h, w, dtype=dtype)
    for (y, x), v in values.items():
        heat[y, x] = v
    return heat


def _mask(h: int, w: int, *pixels: tuple[int, int]) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    for y, x in pixels:
        m[y, x] = True
    return m


def _u(*values: float) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.float64)


# ----------------------------------------------------------------------------- inverse_cdf_sample
def test_inverse_cdf_rows_are_independent_and_exact_at_bin_edges() -> None:
    """Two pairs at once, hand-computed: a uniform equal to a CDF step goes to the next pixel
    (``side="right"``), u = 0 skips leading zero-weight pixels, the last pixel can be drawn."""
    heat = torch.tensor([[0.0, 1.0, 1.0, 0.0, 2.0],     # cdf 0, .25, .5, .5, 1
                         [0.0, 0.0, 0.0, 0.0, 5.0]])    # only the last pixel
    u = torch.tensor([[0.0, 0.25, 0.5, 0.75, ONE_BELOW_1],
                      [0.0, 0.25, 0.5, 0.75, ONE_BELOW_1]], dtype=torch.float64)
    got = M.inverse_cdf_sample(heat, u)
    assert got.tolist() == [[1, 2, 4, 4, 4], [4, 4, 4, 4, 4]]
    # the rows do not see each other: each alone gives its own draws
    assert M.inverse_cdf_sample(heat[1:], u[1:]).tolist() == [[4, 4, 4, 4, 4]]
    # float32 uniforms (exact in float32: not the last one, which rounds to 1) are the same numbers
    assert torch.equal(M.inverse_cdf_sample(heat, u[:, :4].float()), got[:, :4])
    # a known total gives the same draws
    assert torch.equal(M.inverse_cdf_sample(heat, u, total=heat.double().sum(1)), got)


def test_inverse_cdf_is_scale_free_even_for_huge_and_tiny_weights() -> None:
    """Weights are normalised per row: scaling a row by 2**600 or 2**-600 (exact in float64)
    draws the same pixels, also when the rows of one call differ by that much."""
    g = torch.Generator().manual_seed(0)
    heat = torch.rand(3, 50, generator=g, dtype=torch.float64)
    heat[heat < 0.4] = 0.0
    u = torch.rand(3, 200, generator=g, dtype=torch.float64)
    want = M.inverse_cdf_sample(heat, u)
    for scale in (2.0 ** 600, 2.0 ** -600):
        assert torch.equal(M.inverse_cdf_sample(heat * scale, u), want)
    mixed = heat * torch.tensor([[2.0 ** 900], [1.0], [2.0 ** -900]], dtype=torch.float64)
    assert torch.equal(M.inverse_cdf_sample(mixed, u), want)
    assert (heat.gather(1, want) > 0).all()


def test_inverse_cdf_largest_uniform_never_draws_a_trailing_zero_pixel() -> None:
    """The normalised CDF of ten 0.1s sums to 1 - 1e-16 before the final division; the largest
    uniform below 1 must still land on a pixel of positive weight, not the zero one after them."""
    heat = torch.tensor([[0.1] * 10 + [0.0]], dtype=torch.float64)
    assert M.inverse_cdf_sample(heat, _u(ONE_BELOW_1, 0.0)).tolist() == [[9, 0]]


# ------------------------------------------------------------------------ score_pairs: drawing
def test_spg_draws_at_the_edges_through_score_pairs() -> None:
    """Mask = one pixel, tolerance 1 (only that pixel hits), so spg_hits counts draws of it."""
    H = W = 6
    # u = 0 with a zero-weight first pixel draws the first positive pixel, not pixel 0
    heat = _heat(H, W, {(5, 5): 1.0})
    s = M.score_pairs(heat[None], _mask(H, W, (0, 0))[None], uniforms=_u(0.0, 0.3), metrics=("spg",),
                      tolerance=1.0)
    assert s.spg_hits.tolist() == [0]
    s = M.score_pairs(heat[None], _mask(H, W, (5, 5))[None], uniforms=_u(0.0, 0.3, ONE_BELOW_1),
                      metrics=("spg",), tolerance=1.0)
    assert s.spg_hits.tolist() == [3]  # the last pixel is drawn, every time
    # a uniform on a CDF step goes right: cdf = 1, 2 (of 2); u = 0.5 -> the second pixel
    heat = _heat(H, W, {(0, 0): 1.0, (0, 1): 1.0})
    s = M.score_pairs(heat[None], _mask(H, W, (0, 1))[None], uniforms=_u(0.5), metrics=("spg",),
                      tolerance=1.0)
    assert s.spg_hits.tolist() == [1]


def test_spg_subnormal_total_draws_only_the_positive_pixel() -> None:
    """A float64 map whose only mass is the smallest subnormal: u * total rounds to 0 or to the
    total itself, and either way the one positive pixel is drawn (never a zero pixel after it)."""
    H = W = 4
    heat = _heat(H, W, {(1, 1): 5e-324}, dtype=torch.float64)
    u = _u(0.1, 0.6, 0.9, ONE_BELOW_1)
    s = M.score_pairs(heat[None], _mask(H, W, (1, 1))[None], uniforms=u, tolerance=1.0)
    assert s.valid.tolist() == [True]
    assert s.spg_hits.tolist() == [4]
    assert s.point.tolist() == [[1, 1]]
    assert M.stochastic_pointing_game(heat, _mask(H, W, (1, 1)), samples=50, tolerance=1.0) == 1.0


def test_pg_and_spg_together_keep_their_columns_apart() -> None:
    """With both games the PG point is not counted as a draw, and no draw is dropped; a single
    draw next to the PG point (two small flat indices per pair) is not taken for (y, x)."""
    H = W = 8
    heat = _heat(H, W, {(0, 1): 1.0})
    mask = _mask(H, W, (0, 1))
    u = _u(0.1, 0.5, 0.9)
    both = M.score_pairs(heat[None], mask[None], uniforms=u, tolerance=1.0)
    assert both.pg_hit.tolist() == [True] and both.spg_hits.tolist() == [3]
    # the PG point hits but no draw does: spg_hits stays 0
    heat2 = _heat(H, W, {(0, 1): 2.0, (7, 7): 1.0})
    s = M.score_pairs(heat2[None], mask[None], uniforms=_u(0.9, 0.95), tolerance=1.0)
    assert s.pg_hit.tolist() == [True] and s.spg_hits.tolist() == [0]
    one = M.score_pairs(torch.stack([heat, heat]), torch.stack([mask, mask]),
                        uniforms=torch.tensor([[0.2], [0.7]], dtype=torch.float64), tolerance=1.0)
    assert one.pg_hit.tolist() == [True, True] and one.spg_hits.tolist() == [1, 1]


# -------------------------------------------------------------------------- score_pairs: maps
def test_pg_point_is_row_major_y_x_for_each_pair() -> None:
    H, W = 5, 7
    heat = torch.stack([_heat(H, W, {(3, 6): 2.0, (4, 0): 1.0}),
                        _heat(H, W, {(1, 2): 1.0, (2, 1): 1.0})])  # tie: first in row-major order
    masks = torch.zeros(2, H, W, dtype=torch.bool)
    s = M.score_pairs(heat, masks, metrics=("pg",))
    assert s.point.dtype == torch.long
    assert s.point.tolist() == [[3, 6], [1, 2]]
    for dtype in (torch.float16, torch.bfloat16, torch.float64):  # torch's and numpy's argmax agree
        assert M.score_pairs(heat.to(dtype), masks, metrics=("pg",)).point.tolist() == [[3, 6], [1, 2]]


def test_float64_maps_keep_their_precision_and_are_not_modified() -> None:
    """A float64 map is scored as float64 (two values 2**-40 apart are not merged by a float32
    cast) and the caller's tensor is left as it was (the CDF is built on a copy)."""
    H = W = 4
    heat = _heat(H, W, {(0, 0): 1.0, (3, 3): 1.0 + 2.0 ** -40}, dtype=torch.float64)
    before = heat.clone()
    mask = _mask(H, W, (3, 3))
    s = M.score_pairs(heat[None], mask[None], uniforms=_u(0.25, 0.75), tolerance=1.0)
    assert torch.equal(heat, before)
    assert s.point.tolist() == [[3, 3]] and s.pg_hit.tolist() == [True]
    assert s.spg_hits.tolist() == [1]
    assert s.ch.item() == (1.0 + 2.0 ** -40) / (2.0 + 2.0 ** -40)


def test_integer_maps_score_like_float_maps() -> None:
    H = W = 5
    heat = torch.tensor([[0, 0, 0, 0, 0], [0, 3, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 1, 0],
                         [0, 0, 0, 0, 0]], dtype=torch.uint8)
    mask = _mask(H, W, (1, 1))
    u = _u(0.1, 0.5, 0.8)
    got = M.score_pairs(heat[None], mask[None], uniforms=u, tolerance=1.0)
    want = M.score_pairs(heat[None].float(), mask[None], uniforms=u, tolerance=1.0)
    assert got.point.tolist() == want.point.tolist() == [[1, 1]]
    assert got.spg_hits.tolist() == want.spg_hits.tolist() == [2]
    assert got.ch.item() == want.ch.item() == 0.75


def test_skipped_pairs_get_finite_in_range_placeholders_and_leave_the_others_alone() -> None:
    """All-zero and NaN maps are invalid; their fields are placeholders that stay finite and in
    range (no NaN leaks into a vectorised sum); the valid pair between them is scored exactly."""
    H = W = 6
    good = _heat(H, W, {(2, 2): 1.0, (5, 5): 3.0})
    heat = torch.stack([torch.zeros(H, W), good, torch.full((H, W), float("nan"))])
    masks = torch.stack([torch.ones(H, W, dtype=torch.bool), _mask(H, W, (2, 2)),
                         torch.ones(H, W, dtype=torch.bool)])
    u = torch.tensor([[0.1, 0.2, 0.9]] * 3, dtype=torch.float64)
    s = M.score_pairs(heat, masks, uniforms=u, tolerance=1.0)
    assert s.valid.tolist() == [False, True, False]
    assert s.point[1].tolist() == [5, 5] and s.pg_hit[1].item() is False
    assert s.spg_hits[1].item() == 2 and s.ch[1].item() == 0.25  # u 0.1, 0.2 < 1/4
    bad = ~s.valid
    assert torch.isfinite(s.ch).all() and ((s.ch[bad] >= 0) & (s.ch[bad] <= 1)).all()
    assert ((s.spg_hits >= 0) & (s.spg_hits <= 3)).all()
    assert ((s.point >= 0) & (s.point < 6)).all()


def test_content_heatmap_counts_every_mask_shape_per_pair() -> None:
    """Empty masks (0), one-row and one-column masks, and an empty mask before a full one."""
    H, W = 4, 5
    heat = torch.arange(1.0, H * W + 1).view(H, W)  # 1..20, total 210
    row = torch.zeros(H, W, dtype=torch.bool)
    row[2, 1:4] = True  # 12 + 13 + 14
    col = torch.zeros(H, W, dtype=torch.bool)
    col[1:3, 4] = True  # 10 + 15
    masks = torch.stack([torch.zeros(H, W, dtype=torch.bool), row, col,
                         torch.ones(H, W, dtype=torch.bool)])
    s = M.score_pairs(heat.expand(4, H, W), masks, metrics=("ch",))
    assert s.ch.dtype == torch.float64
    assert s.ch.tolist() == [0.0, 39 / 210, 25 / 210, 1.0]
    assert M.content_heatmap(heat, row) == 39 / 210


_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _DEVICES)
def test_content_heatmap_sums_in_float64_per_pair(device: str) -> None:
    """The mass inside the mask is summed in float64 per pair (1 + 2**-30 is not rounded to 1 as
    a float32 sum would), on the CPU (bounding-box numpy sum) and on CUDA (masked torch sum)."""
    H, W = 4, 5
    heat = torch.arange(1.0, H * W + 1).view(H, W)
    fine = torch.zeros(H, W)
    fine[1, 1], fine[2, 3] = 1.0, 2.0 ** -30
    row = torch.zeros(H, W, dtype=torch.bool)
    row[2, 1:4] = True
    both = torch.zeros(H, W, dtype=torch.bool)
    both[1:3, 1:4] = True
    s = M.score_pairs(torch.stack([heat, fine, heat]).to(device),
                      torch.stack([row, both, torch.zeros_like(row)]).to(device), metrics=("ch",))
    assert s.ch.dtype == torch.float64
    assert s.ch.cpu().tolist() == [39 / 210, 1.0, 0.0]


# ----------------------------------------------------------------------------- defaults
def test_default_tolerance_is_15_pixels_strict() -> None:
    mask = _mask(20, 40, (5, 5))
    at15, at14 = _heat(20, 40, {(5, 20): 1.0}), _heat(20, 40, {(5, 19): 1.0})
    assert not M.pointing_game_hit(at15, mask) and M.pointing_game_hit(at14, mask)
    assert M.score_pairs(torch.stack([at15, at14]), torch.stack([mask, mask]),
                         metrics=("pg",)).pg_hit.tolist() == [False, True]
    g = torch.Generator().manual_seed(0)
    assert M.stochastic_pointing_game(at15, mask, generator=g) == 0.0
    assert M.stochastic_pointing_game(at14, mask, samples=3) == 1.0
    assert M.stochastic_pointing_game(at14, mask, samples=3, tolerance=14.0) == 0.0


def test_spg_reproduces_the_evaluators_draws() -> None:
    """Default 100 draws ``torch.rand((1, 100), float64)`` from the generator: with weights 1 and
    3 (an exact CDF: 1/4, 1) the hits are the uniforms below 1/4, counted here independently."""
    heat = _heat(6, 6, {(0, 0): 1.0, (5, 5): 3.0})
    mask = _mask(6, 6, (0, 0))
    u = torch.rand((1, 100), generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    want = int((u < 0.25).sum()) / 100
    got = M.stochastic_pointing_game(heat, mask, tolerance=1.0,
                                     generator=torch.Generator().manual_seed(11))
    assert got == want
    assert M.stochastic_pointing_game(heat, mask, samples=1, tolerance=1.0,
                                      generator=torch.Generator().manual_seed(11)) == float(u[0, 0] < 0.25)
    # a bfloat16 map is scored by SPG alone (no content-heatmap pass over it)
    assert M.stochastic_pointing_game(heat.bfloat16(), mask, tolerance=1.0,
                                      generator=torch.Generator().manual_seed(11)) == want


# ------------------------------------------------------------------------------- errors
def test_score_pairs_errors_name_the_input() -> None:
    heat = torch.ones(2, 3, 4)
    with pytest.raises(TypeError, match="masks must be a torch.Tensor"):
        M.score_pairs(heat, np.ones((2, 3, 4), dtype=bool))
    with pytest.raises(ValueError, match=r"must both be \(P,H,W\); got \(2, 3, 4\) and \(2, 3, 5\)"):
        M.score_pairs(heat, torch.ones(2, 3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"must both be \(P,H,W\); got \(3, 4\) and \(3, 4\)"):
        M.score_pairs(heat[0], torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^the stochastic pointing game needs uniforms \(P,S\)"):
        M.score_pairs(heat, torch.ones(2, 3, 4, dtype=torch.bool), metrics=("spg",))


def test_single_pair_errors_name_the_input_and_the_cause() -> None:
    mask = _mask(3, 4, (1, 1))
    with pytest.raises(ValueError, match=r"heatmap and mask must both be \(H,W\); got \(3, 4\) and \(3, 5\)"):
        M.pointing_game_hit(torch.ones(3, 4), torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"must both be \(H,W\); got \(1, 3, 4\) and \(1, 3, 4\)"):
        M.content_heatmap(torch.ones(1, 3, 4), mask[None])
    with pytest.raises(ValueError, match="mask must be bool, got torch.uint8"):
        M.content_heatmap(torch.ones(3, 4), mask.to(torch.uint8))
    with pytest.raises(M.EmptyHeatmapError,
                       match=r"^heatmap sums to 0 \(or contains NaN\).*the paper skips such images$"):
        M.pointing_game_hit(torch.zeros(3, 4), mask)
    heat = torch.ones(3, 4)
    heat[0, 0] = -2.0
    with pytest.raises(ValueError, match=r"it is used as a distribution of mass.*"
                                         r"or take the absolute value of signed attributions\)$"):
        M.content_heatmap(heat, mask)
    with pytest.raises(ValueError, match="samples must be >= 1, got 0"):
        M.stochastic_pointing_game(torch.ones(3, 4), mask, samples=0)


# ------------------------------------------------------------------------- LocalizationCounts
def test_counts_with_a_single_pair_and_records_without_metrics() -> None:
    c = M.LocalizationCounts(num_classes=2, samples=4)
    c.add_record(1, None, None, None)  # a pair evaluated with no metric asked
    assert c.result() == {"pointing_game": None, "stochastic_pointing_game": None,
                          "content_heatmap": None, "evaluated": 1, "skipped": 0,
                          "skipped_reasons": {}}
    c.add_record(1, True, 0.75, 0.5)
    r = c.result()
    assert (r["pointing_game"], r["stochastic_pointing_game"], r["content_heatmap"]) == (100.0, 75.0, 50.0)
    assert r["evaluated"] == 2


def test_skip_counts_by_reason_and_merge_adds_reasons() -> None:
    a = M.LocalizationCounts(num_classes=2, samples=4)
    a.skip("zero_heatmap")
    a.skip("zero_heatmap")
    a.skip("all_difficult", 3)
    assert a.skipped == {"zero_heatmap": 2, "all_difficult": 3}
    b = M.LocalizationCounts(num_classes=2, samples=4)
    b.skip("zero_heatmap", 5)
    b.merge(a)
    assert b.result()["skipped_reasons"] == {"all_difficult": 3, "zero_heatmap": 7}
    assert b.result()["skipped"] == 10


def test_merge_refuses_other_class_counts_or_samples() -> None:
    a = M.LocalizationCounts(num_classes=2, samples=4)
    for other in (M.LocalizationCounts(num_classes=3, samples=4),
                  M.LocalizationCounts(num_classes=2, samples=5)):
        with pytest.raises(ValueError, match="^cannot merge counts of different class counts / SPG samples"):
            a.merge(other)


def test_state_round_trip_keeps_samples_and_skips() -> None:
    c = M.LocalizationCounts(num_classes=2, samples=4)
    c.update(torch.tensor([0, 1]), torch.tensor([True, False]), torch.tensor([3, 1]),
             torch.tensor([0.5, 0.25], dtype=torch.float64))
    c.skip("zero_heatmap", 2)
    back = M.LocalizationCounts.from_state(c.state())
    assert back.samples == 4 and back.skipped == {"zero_heatmap": 2}
    assert back.pg_hits.dtype == back.pg_misses.dtype == torch.int64
    assert back.result() == c.result()
    assert back.result()["stochastic_pointing_game"] == 50.0


def test_content_heatmap_of_a_bfloat16_map_equals_its_float32_value():
    """numpy has no bfloat16: the CH of a bfloat16 map is that of the same values in float32
    (it used to raise TypeError), alone and through score_pairs with the other metrics."""
    heat = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.5, 0.25], [0.0, 0.0, 1.25]], dtype=torch.bfloat16)
    mask = torch.tensor([[0, 1, 1], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    want = (1.0 + 2.0 + 0.5) / 8.0  # 3.5 of a total of 8
    assert M.content_heatmap(heat, mask) == pytest.approx(want, abs=1e-12)
    s = M.score_pairs(heat[None], mask[None], metrics=("pg", "ch"))
    assert float(s.ch[0]) == pytest.approx(want, abs=1e-12)
