"""Tests for gridcam.grid: composite layout, target placement, the consistency loss (incl. the
AlexNet resize path and detach_target), and the negatives / quadrant / class samplers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gridcam import grid

CELLS = {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1)}  # quadrant -> (row, col)


def _cell(img: torch.Tensor, q: int, h: int, w: int) -> torch.Tensor:
    r, c = CELLS[q]
    return img[..., r * h : (r + 1) * h, c * w : (c + 1) * w]


# --------------------------------------------------------------------------- compose / place


@pytest.mark.parametrize("q", [0, 1, 2, 3])
def test_compose_puts_image_in_its_cell_and_negatives_in_order(q):
    H, W = 3, 5
    x = torch.full((1, 3, H, W), 100.0)
    neg = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1, 1).expand(1, 3, 3, H, W)
    out = grid.compose(x, neg, torch.tensor([q]))
    assert out.shape == (1, 3, 2 * H, 2 * W)
    others = [c for c in range(4) if c != q]
    assert torch.equal(_cell(out[0], q, H, W), torch.full((3, H, W), 100.0))
    for n, c in enumerate(others):  # negatives fill the free cells in increasing cell order
        assert torch.equal(_cell(out[0], c, H, W), torch.full((3, H, W), float(n + 1))), (q, c)


def test_compose_batch_of_mixed_quadrants_is_exact():
    gen = torch.Generator().manual_seed(0)
    B, H, W = 8, 4, 6
    x = torch.randn(B, 3, H, W, generator=gen)
    neg = torch.randn(B, 3, 3, H, W, generator=gen)
    q = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    out = grid.compose(x, neg, q)
    for b in range(B):
        others = [c for c in range(4) if c != int(q[b])]
        assert torch.equal(_cell(out[b], int(q[b]), H, W), x[b])
        for n, c in enumerate(others):
            assert torch.equal(_cell(out[b], c, H, W), neg[b, n])


def test_compose_is_differentiable():
    x = torch.randn(2, 3, 2, 2, requires_grad=True)
    neg = torch.randn(2, 3, 3, 2, 2, requires_grad=True)
    out = grid.compose(x, neg, torch.tensor([1, 3]))
    (out * 2).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))
    assert torch.equal(neg.grad, torch.full_like(neg, 2.0))


@pytest.mark.parametrize("q", [0, 1, 2, 3])
def test_place_puts_heatmap_in_its_cell_zeros_elsewhere(q):
    heat = torch.arange(1.0, 7.0).view(1, 2, 3)
    out = grid.place(heat, torch.tensor([q]))
    expected = torch.zeros(1, 4, 6)
    r, c = CELLS[q]
    expected[0, r * 2 : r * 2 + 2, c * 3 : c * 3 + 3] = heat[0]
    assert torch.equal(out, expected)


def test_place_batch_and_gradient():
    heat = torch.rand(4, 2, 2, requires_grad=True)
    q = torch.tensor([3, 0, 2, 1])
    out = grid.place(heat, q)
    for b in range(4):
        for c in range(4):
            want = heat[b] if c == int(q[b]) else torch.zeros(2, 2)
            assert torch.equal(_cell(out[b], c, 2, 2), want)
    out.sum().backward()
    assert torch.equal(heat.grad, torch.ones(4, 2, 2))


def test_place_keeps_other_cells_zero_even_with_nan():
    out = grid.place(torch.full((1, 1, 1), float("nan")), torch.tensor([2]))
    assert torch.equal(torch.isnan(out), torch.tensor([[[False, False], [True, False]]]))
    assert out[0, 0, 0] == 0 and out[0, 0, 1] == 0 and out[0, 1, 1] == 0


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="negatives"):
        grid.compose(torch.zeros(2, 3, 4, 4), torch.zeros(2, 2, 3, 4, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="quadrants"):
        grid.place(torch.zeros(2, 4, 4), torch.tensor([0]))
    with pytest.raises(ValueError, match="same shape"):
        grid.consistency_loss(torch.zeros(1, 4, 4), torch.zeros(1, 2, 2))


# --------------------------------------------------------------------------- losses


def test_consistency_loss_hand_computation():
    u = torch.tensor([[[0.5, 0.0], [0.25, 0.25]], [[0.0, 1.0], [0.0, 0.0]]], requires_grad=True)
    T = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    # sample 0: |.5-1| + .25 + .25 = 1.0 over 4 -> 0.25; sample 1: 1 + 1 over 4 -> 0.5
    loss = grid.consistency_loss(u, T)
    assert loss.item() == pytest.approx(0.375)
    u2 = torch.tensor([[[0.5, 0.5], [0.0, 0.0]], [[0.25, 0.25], [0.25, 0.25]]])
    # sample 0: (0.5 + 0.5) / 4 = 0.25; sample 1: (3 * 0.25 + 0.75) / 4 = 0.375
    assert grid.consistency_loss(u2, T).item() == pytest.approx(0.3125)
    assert grid.consistency_loss(u2, T, valid=torch.tensor([False, True])).item() == pytest.approx(0.375)
    assert grid.consistency_loss(u2, T, valid=torch.tensor([True, False])).item() == pytest.approx(0.25)
    loss.backward()
    # d/du of mean|u-T| = sign(u-T) / (B*4)
    torch.testing.assert_close(u.grad, torch.sign(u.detach() - T) / 8)


def test_consistency_loss_mean_over_several_valid_samples():
    # three samples with per-sample L1 means 0.25, 0.5 and 1.0 (hand-computed below); a mask with
    # two valid samples must average those two (a sum, or a mean over all B, gives another number)
    T = torch.zeros(3, 2, 2)
    u = torch.stack([torch.tensor([[1.0, 0.0], [0.0, 0.0]]),      # 1/4
                     torch.tensor([[1.0, 1.0], [0.0, 0.0]]),      # 2/4
                     torch.ones(2, 2)])                           # 4/4
    assert grid.consistency_loss(u, T).item() == pytest.approx((0.25 + 0.5 + 1.0) / 3)
    assert grid.consistency_loss(u, T, valid=torch.tensor([True, False, True])).item() == \
        pytest.approx((0.25 + 1.0) / 2)
    assert grid.consistency_loss(u, T, valid=torch.tensor([False, True, True])).item() == \
        pytest.approx((0.5 + 1.0) / 2)


def test_consistency_loss_no_valid_sample_is_zero_but_in_graph():
    u = torch.rand(3, 2, 2, requires_grad=True)
    loss = grid.consistency_loss(u, torch.zeros(3, 2, 2), valid=torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(u.grad, torch.zeros(3, 2, 2))


def test_gc_loss_same_resolution_equals_hand_computation():
    t = torch.tensor([[[0.4, 0.6], [0.0, 0.0]]])
    u = torch.full((1, 4, 4), 0.0625)
    # T has t in the top-right cell (q=1): sum |u-T| = |.0625-.4| + |.0625-.6| + 14 * .0625 = 1.75
    loss = grid.gc_loss(t, u, torch.tensor([1]), (64, 64))
    assert loss.item() == pytest.approx(1.75 / 16)
    torch.testing.assert_close(loss, grid.consistency_loss(u, grid.place(t, torch.tensor([1]))))


def test_gc_loss_alexnet_path_resizes_both_maps_to_pixels():
    gen = torch.Generator().manual_seed(3)
    t = torch.rand(2, 3, 3, generator=gen)  # e.g. AlexNet 6x6 at 224 px (here 3x3 at 8 px)
    u = torch.rand(2, 5, 5, generator=gen)  # composite map: 5x5, not 2 * 3
    q = torch.tensor([2, 1])
    valid = torch.tensor([True, True])
    loss = grid.gc_loss(t, u, q, (8, 8), valid=valid)
    t_px = F.interpolate(t[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    u_px = F.interpolate(u[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    target = torch.zeros(2, 16, 16)
    target[0, 8:, :8] = t_px[0]  # q=2: bottom-left
    target[1, :8, 8:] = t_px[1]  # q=1: top-right
    expected = (u_px - target).abs().mean()
    torch.testing.assert_close(loss, expected)
    # Non-square pixels: (H,W)=(6,10) -> composite (12,20).
    loss2 = grid.gc_loss(t[:1], u[:1], q[:1], (6, 10))
    t2 = F.interpolate(t[:1, None], size=(6, 10), mode="bilinear", align_corners=False)[:, 0]
    u2 = F.interpolate(u[:1, None], size=(12, 20), mode="bilinear", align_corners=False)[:, 0]
    target2 = torch.zeros(1, 12, 20)
    target2[0, 6:, :10] = t2[0]
    torch.testing.assert_close(loss2, (u2 - target2).abs().mean())


@pytest.mark.parametrize("shape_t,shape_u", [((2, 2), (4, 4)), ((3, 3), (5, 5))])
def test_gc_loss_detach_target(shape_t, shape_u):
    t = torch.rand(2, *shape_t, requires_grad=True)
    u = torch.rand(2, *shape_u, requires_grad=True)
    q = torch.tensor([0, 3])
    grid.gc_loss(t, u, q, (8, 8)).backward()
    assert t.grad is not None and t.grad.abs().sum() > 0  # paper default: both branches
    t.grad = None
    u.grad = None
    loss = grid.gc_loss(t, u, q, (8, 8), detach_target=True)
    loss.backward()
    assert t.grad is None  # nothing flows into the target branch
    assert u.grad is not None and u.grad.abs().sum() > 0
    torch.testing.assert_close(loss, grid.gc_loss(t.detach(), u, q, (8, 8)))


# --------------------------------------------------------------------------- samplers


def _check_negatives(labels: torch.Tensor, cam_classes: torch.Tensor, idx, valid, num: int) -> None:
    B = labels.shape[0]
    if labels.dim() == 1:
        contains = labels[None, :] == cam_classes[:, None]  # [b, j]
    else:
        contains = labels[:, cam_classes].t() > 0
    eligible = ~contains & ~torch.eye(B, dtype=torch.bool)
    assert idx.shape == (B, num) and idx.dtype == torch.long and valid.shape == (B,)
    assert torch.equal(valid, eligible.any(1))
    for b in range(B):
        chosen = idx[b].tolist()
        if not valid[b]:
            assert chosen == [b] * num
            continue
        assert all(eligible[b, j] for j in chosen)  # never b itself, never contains the class
        n_elig = int(eligible[b].sum())
        if n_elig >= num:
            assert len(set(chosen)) == num  # distinct when enough exist
        else:
            # with replacement: every eligible item is used
            assert set(chosen) == set(torch.nonzero(eligible[b]).flatten().tolist())


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    B=st.integers(1, 10),
    C=st.integers(1, 5),
    num=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_sample_negatives_single_label_property(data, B, C, num, seed):
    labels = torch.tensor(data.draw(st.lists(st.integers(0, C - 1), min_size=B, max_size=B)))
    cam_classes = labels.clone()
    gen = torch.Generator().manual_seed(seed)
    idx, valid = grid.sample_negatives(labels, cam_classes, num, generator=gen)
    _check_negatives(labels, cam_classes, idx, valid, num)


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    B=st.integers(1, 10),
    C=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_sample_negatives_multi_label_property(data, B, C, seed):
    rows = data.draw(st.lists(st.lists(st.booleans(), min_size=C, max_size=C), min_size=B, max_size=B))
    labels = torch.tensor(rows, dtype=torch.float32)
    # cam class: any class (present or not: the sampler must not care)
    cam_classes = torch.tensor(data.draw(st.lists(st.integers(0, C - 1), min_size=B, max_size=B)))
    idx, valid = grid.sample_negatives(labels, cam_classes, 3, generator=torch.Generator().manual_seed(seed))
    _check_negatives(labels, cam_classes, idx, valid, 3)


def test_sample_negatives_known_cases():
    labels = torch.tensor([0, 0, 1, 2])
    idx, valid = grid.sample_negatives(labels, labels, generator=torch.Generator().manual_seed(0))
    assert valid.all()
    assert sorted(idx[0].tolist()) == [2, 3, 3] or sorted(idx[0].tolist()) == [2, 2, 3]
    assert set(idx[0].tolist()) == {2, 3} and set(idx[1].tolist()) == {2, 3}
    assert sorted(idx[2].tolist()) == [0, 1, 3] and sorted(idx[3].tolist()) == [0, 1, 2]
    # all the same class: nothing eligible anywhere
    idx, valid = grid.sample_negatives(torch.tensor([5, 5]), torch.tensor([5, 5]))
    assert not valid.any() and idx.tolist() == [[0, 0, 0], [1, 1, 1]]
    # multi-hot: item 1 has both classes, so it is never a negative for class 0 or 1
    mh = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]])
    idx, valid = grid.sample_negatives(mh, torch.tensor([0, 1, 2, 2]))
    assert valid.tolist() == [True, True, True, True]
    assert set(idx[0].tolist()) == {2, 3} and set(idx[1].tolist()) == {0, 3}
    assert set(idx[2].tolist()) == {0, 1} and set(idx[3].tolist()) == {0, 1}
    # empty batch
    idx, valid = grid.sample_negatives(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert idx.shape == (0, 3) and valid.shape == (0,)


def test_sample_negatives_is_uniform_and_seeded():
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    a = grid.sample_negatives(labels, labels, generator=torch.Generator().manual_seed(11))
    b = grid.sample_negatives(labels, labels, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a[0], b[0])
    # many draws: sample 0's negatives cover items 1..7 about equally (3/7 of draws each)
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(8)
    for _ in range(300):
        idx, _ = grid.sample_negatives(labels, labels, generator=gen)
        counts += torch.bincount(idx[0], minlength=8).float()
    assert counts[0] == 0
    freq = counts[1:] / 300
    assert ((freq - 3 / 7).abs() < 0.12).all(), freq


def test_random_quadrants():
    q = grid.random_quadrants(2000, generator=torch.Generator().manual_seed(0))
    assert q.shape == (2000,) and q.dtype == torch.long
    counts = torch.bincount(q, minlength=4)
    assert counts.numel() == 4 and (counts > 400).all()
    again = grid.random_quadrants(2000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(q, again)


def test_choose_present_class():
    mh = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        classes, valid = grid.choose_present_class(mh, generator=gen)
        assert valid.tolist() == [True, False, True, True]
        assert classes[0].item() in (1, 3) and classes[2].item() == 0 and classes[3].item() == 2
        assert classes[1].item() == 0
        seen.add(classes[0].item())
    assert seen == {1, 3}  # both present categories get picked
    a = grid.choose_present_class(mh, generator=torch.Generator().manual_seed(4))[0]
    b = grid.choose_present_class(mh, generator=torch.Generator().manual_seed(4))[0]
    assert torch.equal(a, b)
