"""Transforms: torchvision semantics on small hand-made images with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gridcam.data import load_transformed
from gridcam.data import transforms as T


def _img(w: int, h: int) -> Image.Image:
    """An RGB image whose red channel is the column, green the row, blue a constant."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = np.arange(w)[None, :]
    arr[..., 1] = np.arange(h)[:, None]
    arr[..., 2] = 7
    return Image.fromarray(arr, "RGB")


@pytest.mark.parametrize("w,h,size,expected", [
    (100, 50, 32, (64, 32)),
    (50, 100, 32, (32, 64)),
    (333, 500, 256, (256, 384)),   # 256*500/333 = 384.38
    (3, 5, 4, (4, 6)),             # 6.67 is truncated to 6, not rounded to 7
    (5, 3, 4, (6, 4)),
    (64, 64, 64, (64, 64)),
])
def test_resize_shorter_side_truncates_like_torchvision(w, h, size, expected):
    assert T.resized_output_size(w, h, size) == expected
    assert T.Resize(size)(_img(w, h)).size == expected


def test_resize_exact_hw_and_identity():
    assert T.Resize((10, 30))(_img(7, 9)).size == (30, 10)  # (h, w) -> PIL (w, h)
    im = _img(20, 12)
    assert np.array_equal(np.asarray(T.Resize(12)(im)), np.asarray(im))  # same size: unchanged
    const = Image.new("RGB", (40, 30), (10, 200, 90))
    out = np.asarray(T.Resize(15)(const))
    assert out.shape == (15, 20, 3) and (out == [10, 200, 90]).all()


@pytest.mark.parametrize("w,h,th,tw,top,left", [
    (7, 5, 2, 3, 2, 2),    # (5-2)/2 = 1.5 -> round half to even = 2
    (7, 8, 3, 3, 2, 2),    # (8-3)/2 = 2.5 -> 2 (banker's rounding, as torchvision's round())
    (10, 10, 4, 6, 3, 2),
])
def test_center_crop_offsets(w, h, th, tw, top, left):
    out = np.asarray(T.CenterCrop((th, tw))(_img(w, h)))
    assert out.shape == (th, tw, 3)
    assert out[0, 0, 0] == left and out[0, 0, 1] == top


def test_center_crop_pads_like_torchvision():
    im = Image.new("RGB", (5, 4), (9, 9, 9))
    out = np.asarray(T.CenterCrop((7, 8))(im))  # pad w: 1 left, 2 right; h: 1 top, 2 bottom
    assert out.shape == (7, 8, 3)
    inside = np.zeros((7, 8), bool)
    inside[1:5, 1:6] = True
    assert (out[inside] == 9).all() and (out[~inside] == 0).all()


def test_flip_probability_and_determinism():
    im = _img(6, 2)
    flipped = np.asarray(T.RandomHorizontalFlip(p=1.0)(im))
    assert (flipped[0, :, 0] == [5, 4, 3, 2, 1, 0]).all()
    assert np.array_equal(np.asarray(T.RandomHorizontalFlip(p=0.0)(im)), np.asarray(im))
    f = T.RandomHorizontalFlip()
    torch.manual_seed(3)
    a = [np.asarray(f(im))[0, 0, 0] for _ in range(200)]
    torch.manual_seed(3)
    b = [np.asarray(f(im))[0, 0, 0] for _ in range(200)]
    assert a == b and 70 < sum(v == 5 for v in a) < 130


def test_to_tensor_normalize_values():
    im = Image.fromarray(np.array([[[255, 0, 128], [0, 255, 0]]], np.uint8), "RGB")  # 1x2
    x = T.to_tensor_normalize()(im)
    assert x.shape == (3, 1, 2) and x.dtype == torch.float32 and x.is_contiguous()
    expect = [(1 - .485) / .229, (0 - .456) / .224, (128 / 255 - .406) / .225]
    assert torch.allclose(x[:, 0, 0], torch.tensor(expect), atol=1e-6)
    assert torch.allclose(x[:, 0, 1], torch.tensor([(0 - .485) / .229, (1 - .456) / .224, (0 - .406) / .225]),
                          atol=1e-6)
    assert torch.allclose(T.denormalize(x)[:, 0, 0], torch.tensor([1.0, 0.0, 128 / 255]), atol=1e-6)
    gray = T.to_tensor_normalize()(Image.new("L", (3, 2), 255))
    assert gray.shape == (3, 2, 3)


def test_random_resized_crop_size_bounds_and_seed():
    rrc = T.RandomResizedCrop(24)
    im = _img(90, 60)
    torch.manual_seed(0)
    outs = [np.asarray(rrc(im)) for _ in range(5)]
    torch.manual_seed(0)
    again = [np.asarray(rrc(im)) for _ in range(5)]
    assert all(o.shape == (24, 24, 3) for o in outs)
    assert all(np.array_equal(a, b) for a, b in zip(outs, again))
    torch.manual_seed(1)
    for _ in range(200):
        i, j, h, w = T.RandomResizedCrop.get_params(_img(90, 60), (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 < w <= 90 and 0 < h <= 60 and 0 <= i <= 60 - h and 0 <= j <= 90 - w
        assert 0.08 * 5400 * 0.8 <= w * h <= 5400 * 1.0 + 200  # rounding slack
    assert T.RandomResizedCrop((20, 30))(im).size == (30, 20)


@pytest.mark.parametrize("cls,args", [(T.RandomResizedCrop, (24,)), (T.RandomResizedCrop, ((20, 30),)),
                                      (T.Resize, (17,)), (T.Resize, ((10, 30),))])
def test_plan_then_apply_is_torchvisions_forward(cls, args):
    """plan() draws the RNG exactly as torchvision's forward() does, from the size alone, and
    apply() on that plan gives forward()'s pixels: the draft path can choose before decoding."""
    import torchvision.transforms as tvt

    t = cls(*args)
    assert isinstance(t, getattr(tvt, cls.__name__))
    im = _img(90, 60)
    for seed in range(20):
        torch.manual_seed(seed)
        planned = t.apply(im, *t.plan(*im.size))
        after_plan = torch.rand(1)
        torch.manual_seed(seed)
        plain = t(im)
        assert torch.rand(1) == after_plan  # the same number of draws
        assert np.array_equal(np.asarray(planned), np.asarray(plain))


def test_random_resized_crop_fallback_central_crop():
    # scale > 1 makes all 10 attempts fail: central crop with the aspect ratio clamped to 4/3
    assert T.RandomResizedCrop.get_params(_img(100, 20), (1.5, 1.5), (3 / 4, 4 / 3)) == (0, 36, 20, 27)
    assert T.RandomResizedCrop.get_params(_img(20, 100), (1.5, 1.5), (3 / 4, 4 / 3)) == (36, 0, 27, 20)
    assert T.RandomResizedCrop.get_params(_img(50, 40), (1.5, 1.5), (3 / 4, 4 / 3)) == (0, 0, 40, 50)


def test_presets():
    im = _img(200, 150)
    assert T.train_transform(32)(im).shape == (3, 32, 32)
    assert T.val_transform(40, 32)(im).shape == (3, 32, 32)
    assert T.coco_val_transform(30)(im).shape == (3, 30, 30)
    assert T.eval_transform(60)(im).shape == (3, 60, 80)


def _photo(w, h, seed=0):
    """A smooth image with some detail, like a photo (for decode-scaling comparisons)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB")
    arr = np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    arr = arr + rng.integers(-12, 13, arr.shape)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def test_jpeg_draft_same_shapes_rng_and_nearly_same_pixels(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    _photo(512, 384).save(path, "JPEG", quality=92)
    eval_tf = T.eval_transform(96)
    for tf in (eval_tf, T.coco_val_transform(64), T.train_transform(48)):
        monkeypatch.setattr(T, "USE_DRAFT", True)
        torch.manual_seed(5)
        fast, size = load_transformed(path, tf)
        after_fast = torch.rand(1)
        monkeypatch.setattr(T, "USE_DRAFT", False)
        torch.manual_seed(5)
        exact, _ = load_transformed(path, tf)
        after_exact = torch.rand(1)
        assert size == (384, 512)
        assert fast.shape == exact.shape and torch.equal(after_fast, after_exact)
        diff = (T.denormalize(fast) - T.denormalize(exact)).abs()
        assert diff.mean() < 2.5 / 255 and diff.max() < 40 / 255
        # the localisation eval transform never drafts (exact pixels for the metrics); the training
        # crop and COCO's training-time val resize do, so their pixels differ slightly: the two
        # paths really are different code
        drafts = T.first_geometric(tf)[0] is not None
        assert drafts == (tf is not eval_tf)
        assert torch.equal(fast, exact) != drafts
    # the draft path really runs for the eval resize: 384 -> 96 is decoded at 1/4 scale
    assert T.draft_scale((0, 0, 512, 384), (128, 96)) == 4
    assert T.draft_scale((0, 0, 640, 480), (298, 224)) == 2
    assert T.draft_scale((0, 0, 640, 480), (298, 224), margin=2.0) == 1
    assert T.draft_scale((0, 0, 300, 300), (224, 224)) == 1


def test_non_draft_path_equals_plain_transform(tmp_path, monkeypatch):
    path = tmp_path / "small.jpg"
    _photo(120, 90).save(path, "JPEG", quality=92)
    monkeypatch.setattr(T, "USE_DRAFT", True)
    torch.manual_seed(2)
    a, _ = load_transformed(path, T.train_transform(64))  # kept region < 2x output: no draft
    torch.manual_seed(2)
    b = T.train_transform(64)(Image.open(path).convert("RGB"))
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- properties
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(w=st.integers(1, 2000), h=st.integers(1, 2000), size=st.integers(1, 600))
def test_resize_property_shorter_side_and_truncated_long_side(w, h, size):
    ow, oh = T.resized_output_size(w, h, size)
    short, long = (ow, oh) if w <= h else (oh, ow)
    assert short == size
    exact = size * max(w, h) / min(w, h)
    assert long <= exact + 1e-9 and long > exact - 1 - 1e-9


@settings(max_examples=60, deadline=None)
@given(w=st.integers(1, 12), h=st.integers(1, 12), tw=st.integers(1, 14), th=st.integers(1, 14))
def test_center_crop_property_matches_pad_then_crop(w, h, tw, th):
    arr = (np.arange(w * h, dtype=np.uint8).reshape(h, w) + 1)[..., None].repeat(3, -1)
    out = np.asarray(T.CenterCrop((th, tw))(Image.fromarray(arr, "RGB")))
    assert out.shape == (th, tw, 3)
    pl, pt = max(tw - w, 0) // 2, max(th - h, 0) // 2
    padded = np.zeros((h + max(th - h, 0), w + max(tw - w, 0), 3), np.uint8)
    padded[pt:pt + h, pl:pl + w] = arr
    top = int(round((padded.shape[0] - th) / 2.0))
    left = int(round((padded.shape[1] - tw) / 2.0))
    assert np.array_equal(out, padded[top:top + th, left:left + tw])


@settings(max_examples=40, deadline=None)
@given(w=st.integers(1, 500), h=st.integers(1, 500), seed=st.integers(0, 2**31 - 1))
def test_random_resized_crop_property_inside_image(w, h, seed):
    """The box plan() draws from the size alone lies inside the image and is not empty."""
    torch.manual_seed(seed)
    (left, top, right, bottom), out = T.RandomResizedCrop(8).plan(w, h)
    assert 0 <= left < right <= w and 0 <= top < bottom <= h and out == (8, 8)


def test_eval_transform_never_drafts_but_training_may():
    from gridcam.data.transforms import eval_transform, first_geometric, train_transform

    assert first_geometric(eval_transform(224)) == (None, None)  # exact pixels for metrics
    tf = train_transform(224)
    geo, rest = first_geometric(tf)
    # the crop is split off as the draft-capable step; the rest is flip, tensor, normalise
    assert geo is tf.transforms[0] and type(geo).__name__ == "RandomResizedCrop"
    assert rest is not None and rest.transforms == tf.transforms[1:] and len(rest.transforms) >= 2
