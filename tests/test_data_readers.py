"""Readers: synthetic output read back (COCO by pycocotools itself); masks vs boxes and polygons."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

from gridcam import data
from gridcam.errors import GridcamError
from gridcam.data import synthetic
from gridcam.data import transforms as T
from gridcam.data.imagenet import boxes_mask, parse_loc_csv, parse_voc_xml


@pytest.fixture(scope="module")
def imnet(tmp_path_factory):
    return synthetic.make_imagenet(tmp_path_factory.mktemp("imnet") / "d", classes=4,
                                   train_per_class=3, val_per_class=4, image_size=48, seed=1)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return synthetic.make_coco(tmp_path_factory.mktemp("coco") / "d", images_train=40, images_val=24,
                               categories=5, image_size=48, seed=2)


def _pycoco(path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


# ------------------------------------------------------------------------------------ masks
def test_boxes_mask_voc_one_based_inclusive():
    m = boxes_mask([(3, 2, 5, 4)], 8, 8)
    expect = torch.zeros(8, 8, dtype=torch.bool)
    expect[1:4, 2:5] = True  # rows 1..3, cols 2..4
    assert torch.equal(m, expect)
    # union, clipping at every border, a box entirely outside contributes nothing
    m = boxes_mask([(1, 1, 1, 1), (7, 6, 20, 30), (-3, -3, 0, 0), (9, 9, 12, 12)], 8, 8)
    expect = torch.zeros(8, 8, dtype=torch.bool)
    expect[0, 0] = True
    expect[5:, 6:] = True
    assert torch.equal(m, expect)


# ---------------------------------------------------------------------------- ImageNet side
def test_imagenet_layout_and_xml_format(imnet):
    wnids = [synthetic.wnid(k) for k in range(4)]
    assert wnids == sorted(wnids) and all(len(w) == 9 and w.startswith("n0") for w in wnids)
    train = data.ImageFolder(imnet / "train", T.train_transform(32))
    assert train.classes == wnids and len(train) == 12 and train.targets == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    x, y = train[4]
    assert x.shape == (3, 32, 32) and y == 1
    xml = imnet / "val" / "ILSVRC2012_val_00000001.xml"
    root = ET.parse(xml).getroot()
    tags = [c.tag for c in root]  # ILSVRC2012 val XML: 5 header elements, then one <object> per box
    assert tags[:5] == ["folder", "filename", "source", "size", "segmented"]
    assert len(tags) >= 6 and set(tags[5:]) == {"object"}
    assert root.findtext("folder") == "val" and root.findtext("filename") == "ILSVRC2012_val_00000001"
    assert root.findtext("size/depth") == "3"
    obj = root.find("object")
    assert [c.tag for c in obj] == ["name", "pose", "truncated", "difficult", "bndbox"]
    assert [c.tag for c in obj.find("bndbox")] == ["xmin", "ymin", "xmax", "ymax"]
    assert obj.findtext("name") in wnids and obj.findtext("difficult") == "0"
    size, objs = parse_voc_xml(xml)
    with Image.open(imnet / "val" / "ILSVRC2012_val_00000001.JPEG") as im:
        assert size == (im.height, im.width)
    assert (imnet / "LOC_synset_mapping.txt").read_text().splitlines()[0].startswith(wnids[0] + " ")


def test_val_loc_reads_back_sizes_masks_labels(imnet):
    ds = data.ImageNetValLoc(imnet, None, T.eval_transform(40))
    assert len(ds) == 16 and ds.num_classes == 4 and ds.class_names == [synthetic.wnid(k) for k in range(4)]
    labels = []
    for i in range(len(ds)):
        it = ds[i]
        size, objs = parse_voc_xml(it["path"][:-5] + ".xml")
        with Image.open(it["path"]) as im:
            assert ds.sizes[i] == (im.height, im.width) == size == it["size"]
        assert it["index"] == i and it["skipped"] == []
        assert it["classes"].tolist() == [it["label"]] and ds.classes[it["label"]] == objs[0].name
        boxes = [(o.xmin, o.ymin, o.xmax, o.ymax) for o in objs if o.name == objs[0].name]
        assert it["masks"].shape == (1, *size) and it["masks"].dtype == torch.bool
        assert torch.equal(it["masks"][0], boxes_mask(boxes, *size))
        assert it["image"].shape[0] == 3 and min(it["image"].shape[1:]) == 40
        labels.append(it["label"])
    assert sorted(labels) == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4  # val_per_class each


def test_val_loc_csv_and_annotation_folder_layouts_agree(imnet, tmp_path):
    ref = data.ImageNetValLoc(imnet, None, T.eval_transform(32))
    # Kaggle CSV only (no XML anywhere): same masks
    csv_root = tmp_path / "csvroot"
    (csv_root / "val").mkdir(parents=True)
    for p in (imnet / "val").glob("*.JPEG"):
        shutil.copy(p, csv_root / "val" / p.name)
    shutil.copy(imnet / "LOC_val_solution.csv", csv_root / "LOC_val_solution.csv")
    shutil.copytree(imnet / "train", csv_root / "train")
    via_csv = data.ImageNetValLoc(csv_root, None, T.eval_transform(32))
    # XML in a sibling annotation/ folder, root given as the val folder itself, classes from a file
    ann_root = tmp_path / "annroot"
    (ann_root / "val").mkdir(parents=True)
    (ann_root / "annotation").mkdir()
    for p in (imnet / "val").glob("*.JPEG"):
        shutil.copy(p, ann_root / "val" / p.name)
        shutil.copy(p.with_suffix(".xml"), ann_root / "annotation" / (p.stem + ".xml"))
    via_ann = data.ImageNetValLoc(ann_root / "val", imnet / "LOC_synset_mapping.txt", T.eval_transform(32))
    assert ref.sizes == via_csv.sizes == via_ann.sizes
    for i in (0, 5, 15):
        a, b, c = ref[i], via_csv[i], via_ann[i]
        assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["masks"], c["masks"])
        assert a["label"] == b["label"] == c["label"]
    csv_boxes = parse_loc_csv(imnet / "LOC_val_solution.csv")
    _, objs = parse_voc_xml(imnet / "val" / "ILSVRC2012_val_00000003.xml")
    assert [(o.name, o.xmin, o.ymin, o.xmax, o.ymax) for o in csv_boxes["ILSVRC2012_val_00000003"]] == \
        [(o.name, o.xmin, o.ymin, o.xmax, o.ymax) for o in objs]


def _write_xml(path, w, h, objects):
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, d, b in objects)
    path.write_text(f"<annotation><folder>val</folder><filename>{path.stem}</filename><size><width>{w}"
                    f"</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>")


def test_val_loc_hand_made_cases(tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    for i in range(1, 6):
        Image.new("RGB", (10, 8), (i * 20, 0, 0)).save(val / f"ILSVRC2012_val_{i:08d}.JPEG")
    stem = [f"ILSVRC2012_val_{i:08d}" for i in range(1, 6)]
    # 1: two boxes of the first class (one difficult) + one of another class -> union of the two
    _write_xml(val / f"{stem[0]}.xml", 10, 8, [("nB", 0, (3, 2, 5, 4)), ("nA", 0, (1, 1, 2, 2)),
                                                ("nB", 1, (8, 7, 12, 9))])
    _write_xml(val / f"{stem[1]}.xml", 10, 8, [("nA", 1, (1, 1, 3, 3))])            # all difficult
    _write_xml(val / f"{stem[2]}.xml", 10, 8, [("nZ", 0, (1, 1, 3, 3))])            # unknown wnid
    _write_xml(val / f"{stem[3]}.xml", 10, 8, [("nA", 0, (20, 20, 30, 30))])        # outside
    (val / f"{stem[4]}.xml").write_text("<annotation><size>")                       # malformed
    ds = data.ImageNetValLoc(tmp_path, ["nA", "nB"], T.eval_transform(8))
    it = ds[0]
    expect = torch.zeros(8, 10, dtype=torch.bool)
    expect[1:4, 2:5] = True
    expect[6:8, 7:10] = True  # the difficult box, clipped at the border
    assert it["label"] == 1 and it["classes"].tolist() == [1] and torch.equal(it["masks"][0], expect)
    it = ds[1]
    assert it["classes"].numel() == 0 and it["masks"].shape == (0, 8, 10)
    assert [(c, p.code) for c, p in it["skipped"]] == [(0, "all_difficult")] and it["label"] == 0
    it = ds[2]
    assert it["label"] == -1 and it["skipped"][0][0] == "nZ" and it["skipped"][0][1].code == "unknown_class"
    assert "unknown wnid nZ" in str(it["skipped"][0][1]) and it["skipped"][0][1].where == "<object>[1]/<name>"
    it = ds[3]
    assert it["classes"].numel() == 0 and it["skipped"][0][1].code == "box_outside"
    with pytest.warns(data.DataWarning, match=stem[4]):
        assert ds[4] is None
    assert len(ds.missing_annotations) == 1 and ds.sizes[4] == (8, 10)
    batch = data.collate_loc([ds[i] for i in range(4)] + [None])
    assert len(batch) == 4 and batch.n_skipped == 1
    cls = data.ImageNetVal(tmp_path, ["nA", "nB"], T.val_transform(8, 8))
    assert [t for _, t in cls.samples] == [1, 0, 0] and len(cls.excluded) == 2


# -------------------------------------------------------------------------------- COCO side
def test_coco_json_is_real_coco(coco):
    c = _pycoco(coco / "annotations" / "instances_val2014.json")
    raw = json.loads((coco / "annotations" / "instances_val2014.json").read_text())
    assert set(raw) >= {"info", "licenses", "images", "annotations", "categories"}
    ids = [cat["id"] for cat in raw["categories"]]
    assert sorted(ids) == [1, 2, 3, 5, 6] and ids != sorted(ids)  # gapped, listed out of order
    for im in raw["images"]:
        assert im["file_name"] == f"COCO_val2014_{im['id']:012d}.jpg"
        with Image.open(coco / "val2014" / im["file_name"]) as pil:
            assert (pil.width, pil.height) == (im["width"], im["height"])
    assert any(not c.imgToAnns[i] for i in c.imgs)                       # images without annotations
    assert any(len({a["category_id"] for a in c.imgToAnns[i]}) > 1 for i in c.imgs)
    kinds = {(a["iscrowd"], type(a["segmentation"]).__name__) for a in c.anns.values()}
    assert (0, "list") in kinds
    tc = _pycoco(coco / "annotations" / "instances_train2014.json")
    assert any(a["iscrowd"] == 1 and isinstance(a["segmentation"], dict) for a in tc.anns.values())
    assert not set(tc.imgs) & set(c.imgs)
    for a in list(c.anns.values())[:20]:
        m = c.annToMask(a)
        assert abs(m.sum() - a["area"]) <= 0.02 * a["area"] + 2
        x, y, w, h = a["bbox"]
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        assert abs(cols[0] - x) <= 1.5 and abs(rows[0] - y) <= 1.5 and abs(cols[-1] + 1 - (x + w)) <= 1.5


def test_coco_dataset_vs_pycocotools(coco):
    c = _pycoco(coco / "annotations" / "instances_train2014.json")
    ds = data.CocoDataset(coco, "train2014", T.train_transform(32))
    cats = sorted(c.getCatIds())
    assert ds.categories == cats and ds.num_classes == 5
    assert ds.class_names == [c.cats[k]["name"] for k in cats]
    with_anns = sorted(i for i in c.imgs if c.imgToAnns[i])
    assert ds.ids == with_anns and ds.skipped_no_annotations == len(c.imgs) - len(with_anns) > 0
    for i in range(len(ds)):
        present = sorted({cats.index(a["category_id"]) for a in c.imgToAnns[ds.ids[i]]})
        assert ds.present(i).tolist() == present
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and y.dtype == torch.float32
    assert torch.nonzero(y).flatten().tolist() == ds.present(3).tolist()
    images, targets, skipped = data.collate_skip([ds[0], None, ds[1]])
    assert images.shape == (2, 3, 32, 32) and targets.shape == (2, 5) and skipped == 1


def test_coco_loc_masks_are_union_of_ann_to_mask(coco):
    c = _pycoco(coco / "annotations" / "instances_val2014.json")
    ds = data.CocoLoc(coco, "val2014", T.eval_transform(32))
    cats = sorted(c.getCatIds())
    for i in range(len(ds)):
        it = ds[i]
        info = c.imgs[ds.ids[i]]
        assert ds.sizes[i] == (info["height"], info["width"]) == it["size"]
        expect_cls = sorted({cats.index(a["category_id"]) for a in c.imgToAnns[ds.ids[i]]})
        assert it["classes"].tolist() == expect_cls and it["skipped"] == []
        for t, k in enumerate(expect_cls):
            union = np.zeros((info["height"], info["width"]), bool)
            for a in c.imgToAnns[ds.ids[i]]:
                if a["category_id"] == cats[k]:
                    union |= c.annToMask(a).astype(bool)
            assert torch.equal(it["masks"][t], torch.from_numpy(union))
        assert torch.nonzero(it["label"]).flatten().tolist() == expect_cls


def test_coco_hand_made_rle_and_polygon(tmp_path):
    (tmp_path / "val2014").mkdir()
    (tmp_path / "annotations").mkdir()
    Image.new("RGB", (6, 4)).save(tmp_path / "val2014" / "a.jpg")
    Image.new("RGB", (6, 4)).save(tmp_path / "val2014" / "b.jpg")
    # column-major RLE on a 4x6 image: 5 zeros, 3 ones (col 1 rows 1..3), 16 zeros = 24 pixels
    rle = {"counts": [5, 3, 16], "size": [4, 6]}
    poly = [[3.0, 0.0, 6.0, 0.0, 6.0, 2.0, 3.0, 2.0]]
    js = {"images": [{"id": 7, "file_name": "a.jpg", "height": 4, "width": 6},
                     {"id": 9, "file_name": "b.jpg", "height": 4, "width": 6}],
          "categories": [{"id": 90, "name": "z"}, {"id": 4, "name": "d"}],
          "annotations": [{"id": 1, "image_id": 7, "category_id": 90, "iscrowd": 1, "segmentation": rle,
                           "area": 3, "bbox": [1, 1, 1, 3]},
                          {"id": 2, "image_id": 7, "category_id": 4, "iscrowd": 0, "segmentation": poly,
                           "area": 6, "bbox": [3, 0, 3, 2]}]}
    (tmp_path / "annotations" / "instances_val2014.json").write_text(json.dumps(js))
    with pytest.warns(data.DataWarning, match="1 of 2 images have no annotations"):
        ds = data.CocoLoc(tmp_path, "val2014", T.eval_transform(4))
    assert ds.categories == [4, 90] and ds.skipped_no_annotations == 1 and len(ds) == 1
    it = ds[0]
    assert it["classes"].tolist() == [0, 1]
    expect_rle = torch.zeros(4, 6, dtype=torch.bool)
    expect_rle[1:4, 1] = True
    assert torch.equal(it["masks"][1], expect_rle)
    poly_mask = _pycoco(tmp_path / "annotations" / "instances_val2014.json").annToMask(js["annotations"][1])
    assert torch.equal(it["masks"][0], torch.from_numpy(poly_mask.astype(bool)))
    assert it["masks"][0][0:2, 3:6].all() and not it["masks"][0][:, :3].any()


# ------------------------------------------------------------------------------- generator
def test_generator_deterministic_and_seed_dependent(tmp_path):
    a = synthetic.make_imagenet(tmp_path / "a", classes=2, train_per_class=2, val_per_class=2,
                                image_size=32, seed=5, workers=0)
    b = synthetic.make_imagenet(tmp_path / "b", classes=2, train_per_class=2, val_per_class=2,
                                image_size=32, seed=5, workers=2)
    c = synthetic.make_imagenet(tmp_path / "c", classes=2, train_per_class=2, val_per_class=2,
                                image_size=32, seed=6, workers=0)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != synthetic.MARKER)
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != synthetic.MARKER)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if f.suffix == ".JPEG")
    # same arguments again on the same folder: nothing regenerated; a different dataset: refused
    mtime = (a / synthetic.MARKER).stat().st_mtime_ns
    synthetic.make_imagenet(tmp_path / "a", classes=2, train_per_class=2, val_per_class=2, image_size=32, seed=5)
    assert (a / synthetic.MARKER).stat().st_mtime_ns == mtime
    with pytest.raises(GridcamError, match="not empty"):
        synthetic.make_imagenet(tmp_path / "a", classes=3, image_size=32)


def test_classes_are_distinct_and_spurious_cue_is_drawn():
    looks = {synthetic.appearance(k) for k in range(synthetic.MAX_CLASSES)}
    assert len(looks) == synthetic.MAX_CLASSES
    first = [synthetic.appearance(k)[:2] for k in range(10)]
    assert len({s for s, _ in first}) == 10 and len({t for _, t in first}) == 10
    for k in (0, 3):
        img, boxes = synthetic.render_imagenet_image(0, "val", 11, k, 64, spurious=1.0)
        arr = np.asarray(img).astype(int)
        color = np.array(synthetic.cue_color(k))
        hits = (np.abs(arr - color).sum(-1) == 0)
        corners = [hits[:16, :16], hits[:16, -16:], hits[-16:, :16], hits[-16:, -16:]]
        assert max(c.sum() for c in corners) >= 49  # a solid 10x10 (16% of 64) square in a corner
        x0, y0, x1, y1 = boxes[0]
        assert 1 <= x0 <= x1 <= img.width and 1 <= y0 <= y1 <= img.height
        assert 0.2 * 64 <= max(x1 - x0 + 1, y1 - y0 + 1) <= 0.6 * 64 + 2
        plain, _ = synthetic.render_imagenet_image(0, "val", 11, k, 64, spurious=0.0)
        arr0 = np.asarray(plain).astype(int)
        hits0 = np.abs(arr0 - color).sum(-1) == 0
        assert max(c.sum() for c in [hits0[:16, :16], hits0[:16, -16:], hits0[-16:, :16], hits0[-16:, -16:]]) < 49


def test_cli_synth_and_defaults_are_quick(tmp_path, capsys):
    from gridcam.cli import main

    assert main(["synth", "coco", str(tmp_path / "c"), "--images-train", "4", "--images-val", "3",
                 "--categories", "3", "--image-size", "32", "--spurious", "0.5"]) == 0
    assert "wrote 7 images" in capsys.readouterr().out
    assert (tmp_path / "c" / "annotations" / "instances_val2014.json").is_file()
    assert main(["synth", "imagenet", str(tmp_path / "i"), "--classes", "2", "--train-per-class", "1",
                 "--val-per-class", "1", "--image-size", "32"]) == 0
    assert len(list((tmp_path / "i" / "val").glob("*.xml"))) == 2
    assert main(["synth", "imagenet", str(tmp_path / "bad"), "--spurious", "2"]) == 2
    assert "spurious" in capsys.readouterr().err


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12),
       boxes=st.lists(st.tuples(*[st.integers(-4, 16)] * 4), max_size=4))
def test_boxes_mask_property_matches_per_pixel_rule(h, w, boxes):
    rows, cols = np.mgrid[0:h, 0:w]
    expect = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:  # pixel (r, c) is inside iff y0-1 <= r <= y1-1 and x0-1 <= c <= x1-1
        expect |= (rows >= y0 - 1) & (rows <= y1 - 1) & (cols >= x0 - 1) & (cols <= x1 - 1)
    assert np.array_equal(boxes_mask(boxes, h, w).numpy(), expect)
