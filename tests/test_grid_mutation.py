"""Tests for gridcam.grid written against surviving mutants (issue 15): the error messages name the
bad value, outputs live on the inputs' device, the samplers honour their generator, the
single-category edge case and the precision of the masked mean.

Device: tests run on CPU only, so a ``device=`` argument that is dropped is invisible on CPU
tensors. The ``meta`` device (shapes, no data) has the same "all operands on one device" rule as a
GPU, so running the functions on meta tensors checks that every tensor they create follows the
input's device, which is what a CUDA training step relies on. Where CUDA exists the same tests run
there too.
"""

from __future__ import annotations

import pytest
import torch

from gridcam import grid

DEVICES = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


# --------------------------------------------------------------------------- error messages


def test_compose_error_names_expected_and_given_negatives_shape():
    x = torch.zeros(2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"= \(2, 3, 3, 4, 5\), got \(2, 2, 3, 4, 5\)"):
        grid.compose(x, torch.zeros(2, 2, 3, 4, 5), torch.tensor([0, 1]))


def test_place_error_names_the_shape():
    with pytest.raises(ValueError, match=r"heat must be \(B,h,w\), got shape \(4, 4\)"):
        grid.place(torch.zeros(4, 4), torch.tensor([0, 1, 2, 3]))


def test_consistency_loss_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(1, 4, 4\) and target \(1, 2, 2\) must have the same shape\b"):
        grid.consistency_loss(torch.zeros(1, 4, 4), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match=r"valid must be \(3,\), got \(2,\)"):
        grid.consistency_loss(torch.zeros(3, 2, 2), torch.zeros(3, 2, 2), valid=torch.tensor([True, False]))


@pytest.mark.parametrize(
    "orig_shape,comp_shape",
    [((1, 2, 2), (4, 4)),  # only the composite map is 2-D
     ((2, 2), (1, 4, 4)),  # only the original map is 2-D
     ((1, 1, 2, 2), (1, 1, 4, 4))],
)
def test_gc_loss_rejects_maps_that_are_not_3d(orig_shape, comp_shape):
    want = rf"orig_heat and composite_heat must be \(B,h,w\), got {_re_tuple(orig_shape)} and {_re_tuple(comp_shape)}"
    with pytest.raises(ValueError, match=want):
        grid.gc_loss(torch.zeros(orig_shape), torch.zeros(comp_shape), torch.tensor([0]), (8, 8))


def _re_tuple(shape: tuple[int, ...]) -> str:
    return "\\(" + ", ".join(str(s) for s in shape) + "\\)"


def test_sample_negatives_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"labels must be \(B,\) or \(B,C\) multi-hot, got shape \(2, 2, 2\)"):
        grid.sample_negatives(torch.zeros(2, 2, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"cam_classes must be \(3,\), got shape \(2,\)"):
        grid.sample_negatives(torch.tensor([0, 1, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"num must be >= 1, got 0"):
        grid.sample_negatives(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), num=0)


def test_choose_present_class_error_names_the_shape():
    with pytest.raises(ValueError, match=r"multi_hot must be \(B,C\), got shape \(5,\)"):
        grid.choose_present_class(torch.ones(5))


# --------------------------------------------------------------------------- devices


@pytest.mark.parametrize("device", DEVICES)
def test_compose_and_place_follow_the_input_device(device):
    # quadrants given as a list (accepted: as_tensor) and as a CPU tensor: both must be moved
    x = torch.zeros(2, 3, 4, 4, device=device)
    neg = torch.zeros(2, 3, 3, 4, 4, device=device)
    heat = torch.zeros(2, 2, 2, device=device)
    for q in ([0, 3], torch.tensor([1, 2])):
        out = grid.compose(x, neg, q)
        assert out.device.type == device and out.shape == (2, 3, 8, 8)
        t = grid.place(heat, q)
        assert t.device.type == device and t.shape == (2, 4, 4)


@pytest.mark.parametrize("device", DEVICES)
def test_consistency_loss_masked_follows_the_input_device(device):
    u = torch.zeros(3, 4, 4, device=device)
    for valid in ([True, False, True], torch.tensor([True, False, True])):
        loss = grid.consistency_loss(u, u, valid=valid)
        assert loss.device.type == device and loss.shape == ()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("multi", [False, True])
def test_sample_negatives_follows_the_labels_device(device, multi):
    labels = torch.zeros(4, 3, device=device) if multi else torch.tensor([0, 1, 2, 2], device=device)
    for cam_classes in ([0, 1, 2, 0], torch.tensor([0, 1, 2, 0])):
        idx, valid = grid.sample_negatives(labels, cam_classes)
        assert idx.device.type == device and valid.device.type == device
        assert idx.shape == (4, 3) and valid.shape == (4,)


@pytest.mark.parametrize("device", DEVICES)
def test_random_quadrants_on_the_requested_device(device):
    q = grid.random_quadrants(5, device=device)
    assert q.device.type == device and q.shape == (5,) and q.dtype == torch.long


# --------------------------------------------------------------------------- values


def test_consistency_loss_accepts_a_0_1_mask():
    # per-sample means 0.25, 0.5, 1.0 (hand-computed); a 0/1 integer or float mask is read as bool
    T = torch.zeros(3, 2, 2)
    u = torch.stack([torch.tensor([[1.0, 0.0], [0.0, 0.0]]),
                     torch.tensor([[1.0, 1.0], [0.0, 0.0]]),
                     torch.ones(2, 2)])
    for valid in (torch.tensor([1, 0, 1]), torch.tensor([1.0, 0.0, 1.0]), [1, 0, 1]):
        assert grid.consistency_loss(u, T, valid=valid).item() == pytest.approx((0.25 + 1.0) / 2)


def test_consistency_loss_masked_mean_of_ones_is_one_in_bfloat16():
    # 257 valid samples, each with L1 mean exactly 1: the mean is 1. In bfloat16 257 is not
    # representable (it rounds to 256), so the sum and the count must be rounded alike.
    u = torch.ones(257, 1, 1, dtype=torch.bfloat16)
    T = torch.zeros_like(u)
    loss = grid.consistency_loss(u, T, valid=torch.ones(257, dtype=torch.bool))
    assert loss.dtype == torch.bfloat16 and loss.item() == 1.0


def test_choose_present_class_with_a_single_category():
    classes, valid = grid.choose_present_class(torch.tensor([[1.0], [0.0], [2.0]]))
    assert classes.tolist() == [0, 0, 0] and valid.tolist() == [True, False, True]


def test_choose_present_class_draws_from_the_given_generator():
    # 64 rows with all 10 categories present: the draw depends only on the generator's seed, not
    # on the global RNG (reseeded differently before each call)
    mh = torch.ones(64, 10)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        a, _ = grid.choose_present_class(mh, generator=torch.Generator().manual_seed(7))
        torch.manual_seed(2)
        b, _ = grid.choose_present_class(mh, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert len(set(a.tolist())) > 1  # really random, not a constant
