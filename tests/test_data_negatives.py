"""Negatives index (vs pycocotools), its JSON form and CLI, and the paper's gridding loader."""

from __future__ import annotations

import contextlib
import io
import json
import time

import numpy as np
import pytest
import torch

from gridcam import data
from gridcam.errors import GridcamError
from gridcam.data import synthetic
from gridcam.data import transforms as T


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return synthetic.make_coco(tmp_path_factory.mktemp("coco") / "d", images_train=60, images_val=10,
                               categories=6, image_size=40, seed=3)


def _pycoco(path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_negatives_match_pycocotools(coco):
    path = coco / "annotations" / "instances_train2014.json"
    c = _pycoco(path)
    index = data.build_coco_negatives(path)
    annotated = {i for i in c.imgs if c.imgToAnns[i]}
    assert sorted(index) == sorted(c.getCatIds())
    for cat in c.getCatIds():
        expect = sorted(annotated - set(c.getImgIds(catIds=[cat])))
        assert index[cat] == expect
    assert data.build_coco_negatives(c) == index  # a COCO object works too


def test_negatives_hand_made_and_json_roundtrip(tmp_path):
    js = {"images": [{"id": i} for i in (10, 11, 12, 13)],
          "categories": [{"id": 7}, {"id": 2}, {"id": 40}],
          "annotations": [{"image_id": 10, "category_id": 2}, {"image_id": 10, "category_id": 2},
                          {"image_id": 11, "category_id": 7}, {"image_id": 12, "category_id": 2},
                          {"image_id": 12, "category_id": 7}, {"image_id": 99, "category_id": 7}]}
    index = data.build_coco_negatives(js)
    assert index == {2: [11], 7: [10], 40: [10, 11, 12]}  # 13 has no annotation: in no list
    out = data.save_negatives(index, tmp_path / "n.json")
    raw = json.loads(out.read_text())
    assert set(raw) == {"2", "7", "40"}
    assert data.load_negatives(out) == index
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(GridcamError, match="bad.json"):
        data.load_negatives(tmp_path / "bad.json")


def test_negatives_index_is_fast_for_many_images():
    rng = np.random.default_rng(0)
    n_img, cats = 20000, [int(c) for c in range(1, 91) if c % 9]  # 80 gapped ids
    ann_img = rng.integers(0, n_img, 60000)
    ann_cat = rng.choice(cats, 60000)
    js = {"images": [{"id": int(i)} for i in range(n_img)], "categories": [{"id": c} for c in cats],
          "annotations": [{"image_id": int(i), "category_id": int(c)} for i, c in zip(ann_img, ann_cat)]}
    t0 = time.perf_counter()
    index = data.build_coco_negatives(js)
    took = time.perf_counter() - t0
    assert took < 5.0, took  # about 0.1 s; the paper's per-image loop takes minutes on COCO
    c0 = cats[0]
    have = set(ann_img[ann_cat == c0].tolist())
    assert index[c0] == sorted(set(ann_img.tolist()) - have)


def test_cli_coco_negatives(coco, capsys):
    from gridcam.cli import main

    assert main(["coco-negatives", str(coco), "--split", "val"]) == 0
    out = coco / "annotations" / "negatives_val2014.json"
    assert "wrote" in capsys.readouterr().out and out.is_file()
    assert data.load_negatives(out) == data.build_coco_negatives(coco / "annotations" / "instances_val2014.json")
    assert main(["coco-negatives", str(coco / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------ GridDataset
class _Single(torch.utils.data.Dataset):
    """Image i is a constant tensor of value i; labels as given."""

    def __init__(self, labels):
        self.targets = list(labels)
        self.classes = [str(c) for c in range(max(labels) + 1)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.full((3, 2, 2), float(i)), self.targets[i]


def test_grid_dataset_single_label_layout_and_negatives():
    labels = [0, 0, 1, 1, 2, 2, 2, 4]  # class 3 is empty
    ds = data.GridDataset(_Single(labels))
    torch.manual_seed(0)
    seen_classes, quads = set(), set()
    for _ in range(60):
        for i in range(len(labels)):
            imgs, target, cam_class, quadrant = ds[i]
            assert imgs.shape == (4, 3, 2, 2) and imgs[0].eq(i).all()
            assert target == cam_class == labels[i]
            neg_ids = [int(imgs[k, 0, 0, 0]) for k in (1, 2, 3)]
            assert all(labels[j] != labels[i] for j in neg_ids)
            seen_classes |= {labels[j] for j in neg_ids}
            quads.add(quadrant)
    assert seen_classes == {0, 1, 2, 4} and quads == {0, 1, 2, 3}
    torch.manual_seed(9)
    a = [ds[i] for i in range(8)]
    torch.manual_seed(9)
    b = [ds[i] for i in range(8)]
    assert all(torch.equal(x[0], y[0]) and x[2:] == y[2:] for x, y in zip(a, b))
    batch = data.collate_grid([a[0], None, a[5]])
    imgs, targets, cams, quadrants, skipped = batch
    assert imgs.shape == (2, 4, 3, 2, 2) and targets.tolist() == [0, 2] and cams.tolist() == [0, 2]
    assert quadrants.tolist() == [a[0][3], a[5][3]] and skipped == 1
    empty = data.collate_grid([None])
    assert empty[0].shape == (0, 4, 3, 0, 0) and empty[4] == 1
    with pytest.raises(GridcamError, match="at least 2 classes"):
        data.GridDataset(_Single([0, 0]))


class _Spy:
    """Delegates to a dataset and records which indices were read."""

    def __init__(self, base):
        self.base, self.drawn = base, []

    def __getattr__(self, name):
        return getattr(self.base, name)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, j):
        self.drawn.append(j)
        return self.base[j]

    def load(self, j):  # GridDataset reads through load (item or Problem, nothing reported)
        self.drawn.append(j)
        return self.base.load(j)


def test_grid_dataset_coco_negatives_never_contain_the_cam_class(coco):
    base = data.CocoDataset(coco, "train2014", T.train_transform(16))
    path = data.save_negatives(data.build_coco_negatives(coco / "annotations" / "instances_train2014.json"),
                               coco / "annotations" / "neg.json")
    presence = base.presence_matrix()
    spy = _Spy(base)
    for index in (None, path):
        ds = data.GridDataset(spy, negatives_index=index)
        torch.manual_seed(1)
        cams = set()
        for i in range(len(base)):
            spy.drawn = []
            imgs, target, cam_class, quadrant = ds[i]
            assert imgs.shape == (4, 3, 16, 16) and 0 <= quadrant < 4
            assert presence[i, cam_class] and torch.equal(target, base.multi_hot(i))
            negs = spy.drawn[1:]
            assert spy.drawn[0] == i and len(negs) == 3 and len(set(negs)) == 3
            assert not presence[negs, cam_class].any()
            cams.add(cam_class)
        assert len(cams) == base.num_classes


def test_grid_dataset_rejects_variable_sizes():
    class _Var(_Single):
        def __getitem__(self, i):
            return torch.zeros(3, 2 + i, 2), self.targets[i]

    with pytest.raises(GridcamError, match="fixed output size"):
        data.GridDataset(_Var([0, 1, 1, 0]))[0]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=50, deadline=None)
@given(n_img=st.integers(0, 12), cats=st.sets(st.integers(1, 90), min_size=1, max_size=6),
       pairs=st.lists(st.tuples(st.integers(0, 14), st.integers(0, 95)), max_size=30))
def test_negatives_property_brute_force(n_img, cats, pairs):
    js = {"images": [{"id": 100 + i} for i in range(n_img)], "categories": [{"id": c} for c in cats],
          "annotations": [{"image_id": 100 + i, "category_id": c} for i, c in pairs]}
    index = data.build_coco_negatives(js)
    valid = [(100 + i, c) for i, c in pairs if i < n_img and c in cats]
    annotated = {i for i, _ in valid}
    assert index == {c: sorted(annotated - {i for i, k in valid if k == c}) for c in cats}
