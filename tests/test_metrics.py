"""Localisation and classification metrics: hand-made cases with known answers, plus properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gridcam import metrics as M


def _box_mask(h: int, w: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[r0:r1, c0:c1] = True
    return m


def _point(h: int, w: int, y: int, x: int, value: float = 1.0) -> torch.Tensor:
    heat = torch.zeros(h, w)
    heat[y, x] = value
    return heat


def _mesh_hit(mask: torch.Tensor, y: int, x: int, tol: float) -> bool:
    """TorchRay's rule, written out: a mesh of squared distances over the whole image."""
    v, u = torch.meshgrid((torch.arange(mask.shape[0], dtype=torch.float32) - y) ** 2,
                          (torch.arange(mask.shape[1], dtype=torch.float32) - x) ** 2, indexing="ij")
    return bool((mask & ((v + u) < tol ** 2)).any())


# ------------------------------------------------------------------------------ pointing game
MASK = _box_mask(80, 90, 20, 31, 20, 31)  # rows/cols 20..30; corner pixel (30, 30)


@pytest.mark.parametrize("y,x,hit", [
    (25, 30 + 14, True),    # 14 px right of the box: hit
    (25, 30 + 15, False),   # exactly 15 px: miss (strict <)
    (30 + 14, 25, True),    # below
    (30 + 15, 25, False),
    (30 + 9, 30 + 11, True),    # diagonal, sqrt(81+121)=14.2
    (30 + 9, 30 + 12, False),   # diagonal, sqrt(81+144) = 15 exactly
    (25, 25, True),             # inside
    (0, 0, False),
])
def test_pointing_game_tolerance_boundary(y: int, x: int, hit: bool) -> None:
    assert M.pointing_game_hit(_point(80, 90, y, x), MASK, tolerance=15) is hit
    assert _mesh_hit(MASK, y, x, 15) is hit  # the hand-made answers agree with TorchRay's rule


def test_pointing_game_other_tolerance_and_argmax() -> None:
    assert M.pointing_game_hit(_point(80, 90, 25, 45), MASK, tolerance=15.5)
    assert not M.pointing_game_hit(_point(80, 90, 25, 45), MASK, tolerance=15)
    # The maximum decides, not the mass: a wide low plateau inside the box loses to a far peak.
    heat = torch.zeros(80, 90)
    heat[20:31, 20:31] = 0.5
    heat[70, 80] = 1.0
    assert not M.pointing_game_hit(heat, MASK)


def test_hit_region_matches_mesh_everywhere() -> None:
    mask = torch.zeros(40, 50, dtype=torch.bool)
    mask[5:9, 7:12] = True
    mask[30, 45] = True
    region = M.hit_region(mask, 6.0)
    brute = torch.tensor([[_mesh_hit(mask, y, x, 6.0) for x in range(50)] for y in range(40)])
    assert torch.equal(region, brute)
    assert not M.hit_region(torch.zeros(5, 5, dtype=torch.bool)).any()  # empty mask: no hit
    stacked = M.hit_region(torch.stack([mask, ~mask]), 6.0)
    assert torch.equal(stacked[0], region) and stacked[1].all()


@settings(max_examples=25, deadline=None)
@given(st.integers(5, 30), st.integers(5, 30), st.integers(0, 2**31 - 1),
       st.floats(1.0, 9.0))
def test_hit_region_property(h: int, w: int, seed: int, tol: float) -> None:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(h, w, generator=g) > 0.93
    region = M.hit_region(mask, tol)
    brute = torch.tensor([[_mesh_hit(mask, y, x, tol) for x in range(w)] for y in range(h)])
    assert torch.equal(region, brute)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 39), st.integers(1, 8), st.integers(0, 49), st.integers(1, 8),
       st.floats(0.5, 12.0))
def test_hit_region_of_small_boxes_anywhere(r0: int, dh: int, c0: int, dw: int, tol: float) -> None:
    """Boxes near borders or in the middle (the transform is cropped around the mask)."""
    mask = _box_mask(40, 50, r0, r0 + dh, c0, c0 + dw)
    region = M.hit_region(mask, tol)
    brute = torch.tensor([[_mesh_hit(mask, y, x, tol) for x in range(50)] for y in range(40)])
    assert torch.equal(region, brute)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**31 - 1),
       st.floats(0.5, 12.0), st.sampled_from([0.5, 0.93, 0.995]))
def test_hit_points_equals_hit_region(h: int, w: int, seed: int, tol: float, keep: float) -> None:
    """The row-count hit test gives the distance-transform map at every pixel of every pair
    (masks near borders, sparse, dense, empty; tolerances above the image size included)."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(3, h, w, generator=g) > keep
    masks[2] = False  # an empty mask never hits
    every = torch.arange(h * w).expand(3, -1)
    got = M.hit_points(masks, every, tol, flat=True).view(3, h, w)
    assert torch.equal(got, M.hit_region(masks, tol))
    assert not got[2].any()


def test_hit_points_tolerance_boundary() -> None:
    pts = torch.tensor([[25 * 90 + 44, 25 * 90 + 45, 39 * 90 + 41, 39 * 90 + 42, 0]])
    assert M.hit_points(MASK[None], pts, 15.0).tolist() == [[True, False, True, False, False]]
    with pytest.raises(ValueError, match="bool"):
        M.hit_points(MASK[None].float(), pts)
    with pytest.raises(ValueError, match="flat pixel indices"):
        M.hit_points(MASK[None], torch.tensor([[80 * 90]]))


def test_huge_tolerance_hits_everywhere_with_bounded_work() -> None:
    """A tolerance far above the image's diagonal: every pixel hits a non-empty mask (the disc is
    capped at the image, so this costs what a 90-pixel tolerance costs)."""
    masks = torch.stack([MASK, torch.zeros_like(MASK)])
    every = torch.arange(80 * 90).expand(2, -1)
    got = M.hit_points(masks, every, 1e9)
    assert got[0].all() and not got[1].any()
    assert torch.equal(M.hit_region(masks, 1e9), got.view(2, 80, 90))


# -------------------------------------------------------------------- stochastic pointing game
def test_spg_one_pixel_heatmap() -> None:
    g = torch.Generator().manual_seed(0)
    assert M.stochastic_pointing_game(_point(80, 90, 25, 44), MASK, generator=g) == 1.0
    assert M.stochastic_pointing_game(_point(80, 90, 25, 45), MASK, generator=g) == 0.0
    assert M.stochastic_pointing_game(_point(80, 90, 0, 0, 7.0), MASK, samples=3) == 0.0


def test_spg_draws_follow_the_heatmap() -> None:
    # 30% of the mass on a pixel that hits, 70% on one that misses.
    heat = torch.zeros(80, 90)
    heat[25, 25] = 3.0
    heat[79, 89] = 7.0
    g = torch.Generator().manual_seed(1)
    frac = M.stochastic_pointing_game(heat, MASK, samples=20000, generator=g)
    assert abs(frac - 0.3) < 0.015
    # Deterministic for a seeded generator; a different seed gives different draws.
    a = M.stochastic_pointing_game(heat, MASK, samples=50, generator=torch.Generator().manual_seed(5))
    b = M.stochastic_pointing_game(heat, MASK, samples=50, generator=torch.Generator().manual_seed(5))
    assert a == b
    c = M.stochastic_pointing_game(heat, MASK, samples=50, generator=torch.Generator().manual_seed(6))
    assert c != a or M.stochastic_pointing_game(heat, MASK, samples=50,
                                                generator=torch.Generator().manual_seed(7)) != a


def test_inverse_cdf_matches_numpy_choice_and_skips_zero_mass() -> None:
    """Same uniforms -> the same pixels as ``numpy.random.RandomState.choice(p=...)`` (the paper's
    sampler); pixels of zero weight are never drawn."""
    rng = np.random.default_rng(0)
    p = rng.random(300)
    p[rng.random(300) < 0.5] = 0.0
    p64 = p / p.sum()
    u = np.random.RandomState(3).random_sample(1000)
    want = np.random.RandomState(3).choice(300, 1000, p=p64)
    got = M.inverse_cdf_sample(torch.tensor(p64)[None], torch.tensor(u)[None])[0].numpy()
    assert np.array_equal(got, want)
    assert (p[got] > 0).all()


# --------------------------------------------------------------------------- content heatmap
def test_content_heatmap_known_values() -> None:
    heat = torch.zeros(80, 90)
    heat[22:28, 22:29] = torch.rand(6, 7) + 0.1  # all inside the box
    assert M.content_heatmap(heat, MASK) == 1.0
    half = torch.zeros(80, 90)
    half[25, 25] = 2.0
    half[60, 60] = 2.0
    assert M.content_heatmap(half, MASK) == 0.5
    # Unnormalised and normalised maps give the same fraction; no tolerance around the mask.
    assert M.content_heatmap(half * 123.0, MASK) == 0.5
    assert M.content_heatmap(_point(80, 90, 25, 31), MASK) == 0.0


def test_all_zero_heatmap_is_rejected() -> None:
    z = torch.zeros(80, 90)
    for fn in (M.pointing_game_hit, M.stochastic_pointing_game, M.content_heatmap):
        with pytest.raises(M.EmptyHeatmapError):
            fn(z, MASK)
    s = M.score_pairs(torch.stack([z, _point(80, 90, 25, 25)]), torch.stack([MASK, MASK]),
                      uniforms=torch.rand(2, 10, dtype=torch.float64))
    assert s.valid.tolist() == [False, True]
    nan = torch.full((80, 90), float("nan"))
    assert not M.score_pairs(nan[None], MASK[None], metrics=("ch",)).valid[0]


def _reference_pair(heat: np.ndarray, mask: np.ndarray, u: np.ndarray, tol: float):
    """PG, SPG hits and CH of one pair, written from the definitions with numpy only (independent
    of the library): argmax point; numpy's own choice() rule for draws (cumsum / last,
    searchsorted right); a hit when some mask pixel lies at Euclidean distance < tol."""
    H, W = heat.shape
    ys, xs = np.nonzero(mask)

    def hit(flat: int) -> bool:
        y, x = divmod(int(flat), W)
        return bool(((ys - y) ** 2 + (xs - x) ** 2 < tol * tol).any())

    p = heat.astype(np.float64).ravel()
    cdf = np.cumsum(p / p.sum())
    draws = np.searchsorted(cdf / cdf[-1], u, side="right")
    return hit(int(np.argmax(heat))), sum(hit(d) for d in draws), float(p[mask.ravel()].sum() / p.sum())


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_score_pairs_equals_an_independent_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    P, H, W, S = 4, 23, 31, 40
    heat = torch.rand(P, H, W, generator=g) ** 4
    masks = torch.rand(P, H, W, generator=g) > 0.97
    u = torch.rand(P, S, generator=g, dtype=torch.float64)
    s = M.score_pairs(heat, masks, uniforms=u, tolerance=4.0)
    for p in range(P):
        pg, spg, ch = _reference_pair(heat[p].numpy(), masks[p].numpy(), u[p].numpy(), 4.0)
        assert bool(s.pg_hit[p]) == pg
        # float rounding of the CDF may move one draw across a pixel border, never more
        assert abs(int(s.spg_hits[p]) - spg) <= 1
        assert math.isclose(float(s.ch[p]), ch, rel_tol=1e-9)
        # the single-pair functions agree with the batched scorer
        assert M.pointing_game_hit(heat[p], masks[p], tolerance=4.0) == pg
        assert math.isclose(M.content_heatmap(heat[p], masks[p]), ch, rel_tol=1e-9)


# ------------------------------------------------------------------------------ accumulation
def test_pointing_game_is_averaged_over_classes_not_pairs() -> None:
    c = M.LocalizationCounts(num_classes=3)
    c.update(torch.tensor([0, 1, 1, 1]), pg_hit=torch.tensor([True, True, False, False]))
    # class 0: 1/1, class 1: 1/3, class 2: no pair (not in the mean) -> (1 + 1/3) / 2
    assert c.pointing_game() == pytest.approx(200 / 3, abs=1e-12)
    assert c.evaluated == 4


def test_spg_and_ch_are_averaged_over_pairs() -> None:
    c = M.LocalizationCounts(num_classes=2, samples=4)
    c.update(torch.tensor([0, 1, 1]), spg_hits=torch.tensor([4, 1, 0]),
             ch=torch.tensor([1.0, 0.25, 0.5], dtype=torch.float64))
    assert c.stochastic_pointing_game() == pytest.approx((1 + 0.25 + 0) / 3 * 100)
    assert c.content_heatmap() == pytest.approx((1 + 0.25 + 0.5) / 3 * 100)
    r = c.result()
    assert r["pointing_game"] is None and r["evaluated"] == 3 and r["skipped"] == 0
    c.skip("zero_heatmap", 2)
    assert c.result()["skipped"] == 2 and c.result()["skipped_reasons"] == {"zero_heatmap": 2}


def test_counts_merge_exactly_and_records_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    n = 50
    classes = torch.randint(0, 5, (n,), generator=g)
    pg = torch.rand(n, generator=g) > 0.4
    spg = torch.randint(0, 101, (n,), generator=g)
    ch = torch.rand(n, generator=g, dtype=torch.float64)
    whole = M.LocalizationCounts(5)
    whole.update(classes, pg, spg, ch)
    parts = [M.LocalizationCounts(5) for _ in range(3)]
    for k, sl in enumerate([slice(0, 7), slice(7, 31), slice(31, n)]):
        parts[k].update(classes[sl], pg[sl], spg[sl], ch[sl])
    merged = M.LocalizationCounts.from_state(parts[2].state()).merge(parts[0]).merge(parts[1])
    assert merged.result() == whole.result()  # bit-identical, whatever the order
    replay = M.LocalizationCounts(5)
    import json
    for i in range(n):  # per-image records go through JSON and back
        rec = json.loads(json.dumps({"spg": int(spg[i]) / 100, "ch": float(ch[i])}))
        replay.add_record(int(classes[i]), bool(pg[i]), rec["spg"], rec["ch"])
    assert replay.result() == whole.result()


# ---------------------------------------------------------------------------- classification
def test_topk_counts() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.2, 0.3, 0.4],
                           [0.9, 0.1, 0.0, 0.2, 0.3, 0.4],
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]])
    labels = torch.tensor([1, 5, 0])  # top-1 hit; top-5 hit only; miss
    c = M.TopKCounts((1, 5))
    ok = c.update(logits, labels)
    assert ok.tolist() == [[True, True], [False, True], [False, False]]
    r = c.result()
    assert r["top1"] == pytest.approx(100 / 3) and r["top5"] == pytest.approx(200 / 3)
    assert r["images"] == 3
    other = M.TopKCounts.from_state(c.state())
    assert other.merge(c).result()["top1"] == pytest.approx(100 / 3)


def test_multilabel_precision_recall_f1_by_hand() -> None:
    # 3 classes, logit > 0 predicts. Class 2 never predicted correctly -> counts as 0.
    logits = torch.tensor([[2.0, -1.0, 0.5],
                           [1.0, 3.0, -0.5],
                           [-1.0, 0.0, -2.0]])   # logit 0 is NOT > 0
    truth = torch.tensor([[1, 0, 0],
                          [1, 0, 1],
                          [0, 1, 0]], dtype=torch.float32)
    c = M.MultiLabelCounts(3)
    pred = c.update(logits, truth)
    assert pred.tolist() == [[True, False, True], [True, True, False], [False, False, False]]
    assert c.tp.tolist() == [2, 0, 0] and c.fp.tolist() == [0, 1, 1] and c.fn.tolist() == [0, 1, 1]
    r = c.result()
    # per class: class 0 P=R=F1=100; classes 1, 2 have no TP -> 0; mean over all 3 classes.
    assert r["precision_per_class"] == pytest.approx(100 / 3)
    assert r["recall_per_class"] == pytest.approx(100 / 3)
    assert r["f1_per_class"] == pytest.approx(100 / 3)
    # overall: TP=2, FP=2, FN=2 -> P = R = F1 = 50
    assert r["precision_overall"] == pytest.approx(50)
    assert r["recall_overall"] == pytest.approx(50)
    assert r["f1_overall"] == pytest.approx(50)
    merged = M.MultiLabelCounts.from_state(c.state()).merge(c)
    assert merged.tp.tolist() == [4, 0, 0] and merged.result()["f1_overall"] == pytest.approx(50)


def test_multilabel_per_class_f1_uses_per_class_harmonic_mean() -> None:
    s = M.multilabel_scores(torch.tensor([1, 3]), torch.tensor([1, 0]), torch.tensor([0, 1]))
    # class 0: P=50, R=100, F1=66.67; class 1: P=100, R=75, F1=85.71
    assert s["f1_per_class"] == pytest.approx((200 / 3 + 600 / 7) / 2)
    assert s["precision_per_class"] == pytest.approx(75)
    assert M.multilabel_scores(torch.zeros(2), torch.zeros(2), torch.zeros(2))["f1_overall"] == 0.0
