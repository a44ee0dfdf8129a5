"""Bad input, written for real: truncated/corrupt/CMYK/grayscale/EXIF-rotated JPEGs, missing files
and XML, broken COCO annotations. Each is repaired or skipped, told once as a Problem (stable reason
code, the file, where in it, the cause) and counted; nothing raises inside a DataLoader worker."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from gridcam import data
from gridcam import problems as P
from gridcam.data import transforms as T
from gridcam.errors import GridcamError


def _noise(w=40, h=30, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


@pytest.fixture()
def folder(tmp_path):
    """train/a: 2 good images + 1 truncated; train/b: 1 good, 1 corrupt, 1 CMYK, 1 grayscale."""
    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
    _noise(seed=1).save(tmp_path / "train" / "a" / "1.JPEG", quality=90)
    _noise(seed=2).save(tmp_path / "train" / "a" / "2.JPEG", quality=90)
    _noise(seed=3).save(tmp_path / "train" / "a" / "3_truncated.JPEG", quality=90)
    raw = (tmp_path / "train" / "a" / "3_truncated.JPEG").read_bytes()
    (tmp_path / "train" / "a" / "3_truncated.JPEG").write_bytes(raw[: len(raw) // 2])
    _noise(seed=4).save(tmp_path / "train" / "b" / "1.JPEG", quality=90)
    (tmp_path / "train" / "b" / "2_corrupt.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 5)
    _noise(seed=5).convert("CMYK").save(tmp_path / "train" / "b" / "3_cmyk.JPEG", quality=95)
    _noise(seed=6).convert("L").save(tmp_path / "train" / "b" / "4_gray.JPEG", quality=95)
    return tmp_path / "train"


def test_load_image_repairs_modes_and_names_bad_files(folder):
    cmyk = data.load_image(folder / "b" / "3_cmyk.JPEG")
    assert cmyk.mode == "RGB" and cmyk.size == (40, 30)
    with Image.open(folder / "b" / "3_cmyk.JPEG") as raw:
        assert raw.mode == "CMYK"
    ref = np.asarray(_noise(seed=5)).astype(int)
    assert np.abs(np.asarray(cmyk).astype(int) - ref).mean() < 25  # JPEG-lossy, but the same picture
    gray = np.asarray(data.load_image(folder / "b" / "4_gray.JPEG"))
    assert gray.shape == (30, 40, 3) and (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    (folder / "b" / "5_empty.JPEG").write_bytes(b"")
    (folder / "b" / "6_text.JPEG").write_text("hello, I am a text file")
    for name, code in (("a/3_truncated.JPEG", "truncated"), ("b/2_corrupt.JPEG", "truncated"),
                       ("b/missing.JPEG", "not_found"), ("b/5_empty.JPEG", "empty_file"),
                       ("b/6_text.JPEG", "not_an_image")):
        with pytest.raises(data.BadImage) as err:
            data.load_image(folder / name)
        assert err.value.path == str(folder / name) and str(folder / name) in str(err.value)
        assert err.value.code == code and err.value.problem.code == code, name
        assert isinstance(err.value, GridcamError)


def test_image_folder_skips_with_warning_and_collate_counts(folder):
    ds = data.ImageFolder(folder, T.train_transform(16))
    assert ds.classes == ["a", "b"] and len(ds) == 7
    items = []
    out = io.StringIO()
    with P.collecting(out) as col:
        for i in range(len(ds)):
            items.append(ds[i])
    bad = [ds.samples[i][0] for i, it in enumerate(items) if it is None]
    assert sorted(p.rsplit("/", 1)[1] for p in bad) == ["2_corrupt.JPEG", "3_truncated.JPEG"]
    lines = out.getvalue().splitlines()
    assert sorted(lines[:2]) == sorted(f"gridcam: warning: {p}: {ds.load(ds.samples.index((p, t)))}"
                                       for p, t in ((bad[0], 0), (bad[1], 1)))
    assert col.counts == {"truncated": 2} and lines[2].endswith(": 2 truncated")
    assert isinstance(ds.load(2), P.Problem) and ds.image_key(2) == "a/3_truncated.JPEG"
    images, targets, skipped = data.collate_skip(items)
    assert images.shape == (5, 3, 16, 16) and targets.tolist() == [0, 0, 1, 1, 1] and skipped == 2
    empty = data.collate_skip([None, None])
    assert empty[0].shape == (0, 3, 0, 0) and empty[1].shape == (0,) and empty[2] == 2


def test_dataloader_workers_never_raise(folder):
    ds = data.ImageFolder(folder, T.train_transform(16))
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=data.collate_skip)
    total, skipped = 0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for images, targets, n_skip in loader:
            total += images.shape[0]
            skipped += n_skip
    assert (total, skipped) == (5, 2)


def test_grid_dataset_redraws_an_unreadable_negative(folder):
    ds = data.GridDataset(data.ImageFolder(folder, T.train_transform(16)))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = [ds[0] for _ in range(15)]  # class a -> negatives from b, which holds a corrupt file
    assert all(o is not None and o[0].shape == (4, 3, 16, 16) for o in out)
    with pytest.warns(data.DataWarning, match="3_truncated"):
        assert ds[2] is None


def test_val_missing_xml_and_bad_jpeg(tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    for i in (1, 2, 3):
        _noise(20, 16, i).save(val / f"ILSVRC2012_val_{i:08d}.JPEG")
    raw = (val / "ILSVRC2012_val_00000003.JPEG").read_bytes()
    (val / "ILSVRC2012_val_00000003.JPEG").write_bytes(raw[:200])
    xml = ("<annotation><size><width>20</width><height>16</height><depth>3</depth></size><object>"
           "<name>nA</name><difficult>0</difficult><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>25</xmax>"
           "<ymax>9</ymax></bndbox></object></annotation>")
    (val / "ILSVRC2012_val_00000001.xml").write_text(xml)
    (val / "ILSVRC2012_val_00000003.xml").write_text(xml)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is told at construction: once, when met
        ds = data.ImageNetValLoc(tmp_path, ["nA"], T.eval_transform(8))
    assert ds.missing_annotations[0][0].endswith("ILSVRC2012_val_00000002.JPEG")
    assert ds.load(1).code == "xml_missing" and ds.load(2).code == "truncated"
    it = ds[0]
    assert it["masks"][0].sum() == 7 * 19  # rows 2..8, cols 1..19 (xmax 25 clipped to width 20)
    with pytest.warns(data.DataWarning, match="ILSVRC2012_val_00000002"):
        assert ds[1] is None
    with pytest.warns(data.DataWarning, match="ILSVRC2012_val_00000003.JPEG"):
        assert ds[2] is None
    batch = data.collate_loc([ds[i] for i in range(3)])
    assert len(batch) == 1 and batch.n_skipped == 2


def test_coco_missing_image_and_unannotated(tmp_path):
    (tmp_path / "train2014").mkdir()
    (tmp_path / "annotations").mkdir()
    _noise(10, 8).save(tmp_path / "train2014" / "x.jpg")
    js = {"images": [{"id": 1, "file_name": "x.jpg", "height": 8, "width": 10},
                     {"id": 2, "file_name": "gone.jpg", "height": 8, "width": 10},
                     {"id": 3, "file_name": "empty.jpg", "height": 8, "width": 10}],
          "categories": [{"id": 5, "name": "e"}],
          "annotations": [{"id": 1, "image_id": i, "category_id": 5, "iscrowd": 0, "area": 4,
                           "bbox": [0, 0, 2, 2], "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]} for i in (1, 2)]}
    (tmp_path / "annotations" / "instances_train2014.json").write_text(json.dumps(js))
    with pytest.warns(data.DataWarning, match="1 of 3 images have no annotations"):
        ds = data.CocoDataset(tmp_path, "train2014", T.train_transform(8))
    assert len(ds) == 2 and ds.skipped_no_annotations == 1
    assert ds[0][1].tolist() == [1.0]
    with pytest.warns(data.DataWarning, match="gone.jpg: file not found"):
        assert ds[1] is None
    assert ds.load(1).code == "not_found" and ds.image_key(1) == "2"
    with pytest.raises(GridcamError, match="instances_val2014.json.*holds instances_train2014.json; "
                                           "use --split train2014"):
        data.CocoDataset(tmp_path, "val2014")
    (tmp_path / "annotations" / "instances_val2014.json").write_text('{"images": [], \n "categories": [}')
    with pytest.raises(GridcamError, match="instances_val2014.json: line 2, column 17: not valid JSON"):
        data.CocoDataset(tmp_path, "val2014")


def test_empty_or_missing_folders_are_user_errors(tmp_path):
    with pytest.raises(GridcamError, match="not a directory"):
        data.ImageFolder(tmp_path / "nope")
    (tmp_path / "e" / "a").mkdir(parents=True)
    with pytest.raises(GridcamError, match="no images"):
        data.ImageFolder(tmp_path / "e")
    with pytest.raises(GridcamError, match="no images found"):
        data.ImageNetValLoc(tmp_path / "e", ["x"])
    (tmp_path / "v" / "val").mkdir(parents=True)
    _noise(8, 8).save(tmp_path / "v" / "val" / "a.JPEG")
    with pytest.raises(GridcamError, match="classes"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data.ImageNetValLoc(tmp_path / "v", None)


# ----------------------------------------------------------------- issue 13: told plainly, once
def _xml(w, h, objects):
    objs = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin>"
                   f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                   for n, b in objects)
    return (f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
            f"{objs}</annotation>")


def test_bad_xml_named_once_with_its_element(tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    for i in (1, 2, 3, 4):
        _noise(20, 16, i).save(val / f"v{i}.JPEG")
    (val / "v1.xml").write_text(_xml(20, 16, [("nA", (2, 3, 9, 9))]))
    (val / "v2.xml").write_text(_xml(20, 16, [("nA", (2, 3, 9, 9)), ("nA", ("x1", 3, 9, 9))]))
    (val / "v3.xml").write_text("<annotation><size><width>20</wi")  # cut off
    out = io.StringIO()
    with P.collecting(out) as col:
        ds = data.ImageNetValLoc(tmp_path, ["nA"], T.eval_transform(8))
        for _ in range(2):  # an epoch twice: still told once
            got = [ds[i] for i in range(len(ds))]
    assert [g is None for g in got] == [False, True, True, True]
    assert col.counts == {"xml_malformed": 2, "xml_missing": 1}
    lines = out.getvalue().splitlines()
    assert lines[0] == (f"gridcam: warning: {val / 'v2.xml'}: <object>[2]/<bndbox>/<xmin>: "
                        "malformed annotation: not a number: 'x1'")
    assert lines[1].startswith(f"gridcam: warning: {val / 'v3.xml'}: line 1, column ")
    assert "not well-formed XML" in lines[1]
    assert lines[2].startswith(f"gridcam: warning: {val / 'v4.JPEG'}: no annotation (looked for v4.xml in ")
    assert len(lines) == 4 and lines[3] == "gridcam: 3 data problem(s) worked around: 2 xml_malformed, 1 xml_missing"
    # classification use: the same problems, told once at construction
    out2 = io.StringIO()
    with P.collecting(out2) as col2:
        cls = data.ImageNetVal(tmp_path, ["nA"], T.val_transform(8, 8))
    assert len(cls.samples) == 1 and col2.counts == {"xml_malformed": 2, "xml_missing": 1}
    assert [p.code for p in cls.problems] == ["xml_malformed", "xml_malformed", "xml_missing"]


def _coco(tmp_path, anns, categories=({"id": 5, "name": "e"}, {"id": 7, "name": "s"}), split="val2014"):
    (tmp_path / split).mkdir(exist_ok=True)
    (tmp_path / "annotations").mkdir(exist_ok=True)
    _noise(10, 8).save(tmp_path / split / "x.jpg")
    js = {"images": [{"id": 1, "file_name": "x.jpg", "height": 8, "width": 10}],
          "categories": list(categories), "annotations": anns}
    path = tmp_path / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(js))
    return path


def _ann(i, cat, seg, bbox=None):
    a = {"id": i, "image_id": 1, "category_id": cat, "iscrowd": 0, "area": 1, "segmentation": seg}
    if bbox is not None:
        a["bbox"] = bbox
    return a


def test_coco_bad_annotation_skipped_alone_bbox_fallback(tmp_path):
    square = [[0, 0, 4, 0, 4, 4, 0, 4]]  # columns 0..3, rows 0..3
    ann_file = _coco(tmp_path, [
        _ann(11, 5, square),                         # good
        _ann(12, 5, [], bbox=[6, 5, 2, 2]),          # empty list: its bbox (cols 6-7, rows 5-6) is used
        _ann(13, 5, [[1, 2]]),                       # a 2-number "polygon", no bbox: left out alone
        _ann(14, 7, "garbage"),                      # category 7: its only instance is undecodable
        _ann(15, 99, square),                        # unknown category
    ])
    out = io.StringIO()
    with P.collecting(out) as col:
        ds = data.CocoLoc(tmp_path, "val2014", T.eval_transform(8))
        it = ds[0]
    assert ds.categories == [5, 7] and ds.present(0).tolist() == [0, 1]  # 7 is present, 99 is not
    assert it["classes"].tolist() == [0] and it["label"].tolist() == [1.0, 1.0]
    expect = torch.zeros(8, 10, dtype=torch.bool)
    expect[0:4, 0:4] = True
    expect[5:7, 6:8] = True
    assert torch.equal(it["masks"][0], expect)
    assert [(c, p.code) for c, p in it["skipped"]] == [(1, "bad_segmentation")]
    assert [(p.code, p.where) for p in it["problems"]] == [
        ("bad_segmentation", "annotation 12"), ("bad_segmentation", "annotation 13"),
        ("bad_segmentation", "annotation 14")]
    assert col.counts == {"unknown_category": 1, "bad_segmentation": 4}
    lines = out.getvalue().splitlines()
    f = str(ann_file)
    assert lines[0] == (f"gridcam: warning: {f}: annotation 15: category_id 99 is not among the file's "
                        "categories; annotation skipped")
    assert lines[1] == (f"gridcam: warning: {f}: annotation 12: cannot decode the segmentation (empty "
                        "segmentation list): its bbox is used instead")
    assert lines[2].startswith(f"gridcam: warning: {f}: annotation 13: cannot decode the segmentation "
                               "(polygon 0 is not an even number >= 6 of coordinates (2))")
    assert lines[2].endswith("and it has no usable bbox: annotation skipped")
    assert "of any 's' instance of image 1: pair skipped" in lines[4]


def test_coco_annotation_without_ids_is_skipped_alone(tmp_path):
    _coco(tmp_path, [_ann(1, 5, [[0, 0, 4, 0, 4, 4, 0, 4]]), {"id": 2, "image_id": "one", "category_id": 5},
                     {"id": 3, "image_id": 77, "category_id": 5}])
    with P.collecting(io.StringIO()) as col:
        ds = data.CocoLoc(tmp_path, "val2014", T.eval_transform(8))
    assert len(ds) == 1 and col.counts == {"bad_annotation": 1, "unknown_image": 1}
    assert [p.where for p in ds.problems] == ["annotation 2", "annotation 3"]


def test_coco_split_hint_and_only_file_used(tmp_path, capsys):
    _coco(tmp_path, [_ann(1, 5, [[0, 0, 4, 0, 4, 4, 0, 4]])], split="val2017")
    ds = data.CocoLoc(tmp_path, None, T.eval_transform(8))  # no split given: the only file is used
    assert ds.split == "val2017" and ds.annotation_file.name == "instances_val2017.json"
    err = capsys.readouterr().err
    assert err.startswith("gridcam: note: instances_val2014.json not found; using the only annotation file")
    assert err.rstrip().endswith("(--split val2017)")
    with pytest.raises(GridcamError, match=r"instances_val2014.json: COCO annotation file not found; .* holds "
                                           r"instances_val2017.json; use --split val2017"):
        data.CocoLoc(tmp_path, "val2014")
    _coco(tmp_path, [_ann(1, 5, [[0, 0, 4, 0, 4, 4, 0, 4]])], split="train2017")
    with pytest.raises(GridcamError, match="use --split train2017 or --split val2017"):
        data.CocoLoc(tmp_path, None)
    assert data.coco.find_annotation_file(tmp_path, "val2017")[1] == "val2017"


def _exif_jpeg(path, w, h, orientation):
    img = _noise(w, h, 7)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, quality=95, exif=exif)


@pytest.mark.parametrize("orientation,annotated,code,rotated,words", [
    (6, (40, 30), "exif_rotated", True, "matches the rotated (displayed) frame, not the stored 40x30"),
    (6, (30, 40), None, False, None),                       # the stored frame: nothing to tell
    (6, (50, 50), "size_mismatch", False, "carries EXIF orientation 6 (displayed rotated 90 degrees "
                                          "clockwise) but neither frame matches"),
    (3, (30, 40), "exif_rotated", False, "the sizes cannot tell which frame"),
    (1, (50, 50), "size_mismatch", False, "decoded size 40x30 differs from the annotated 50x50"),
])
def test_exif_rule(tmp_path, orientation, annotated, code, rotated, words):
    """Stored 40x30 (WxH); ``annotated`` is (H, W) as in the XML/JSON."""
    path = tmp_path / "e.jpg"
    _exif_jpeg(path, 40, 30, orientation)
    out, size, problem = data.load_annotated(path, None, annotated)
    assert (problem.code if problem else None) == code
    if words:
        assert words in problem.cause and problem.file == str(path)
    assert size == ((40, 30) if rotated else (30, 40)) and (out.height, out.width) == size
    if rotated:  # what a viewer shows: PIL's exif_transpose of the stored pixels
        from PIL import ImageOps

        with Image.open(path) as raw:
            expect = np.asarray(ImageOps.exif_transpose(raw.convert("RGB")))
        assert np.array_equal(np.asarray(out), expect)


def test_exif_rotated_annotation_is_scored_in_the_rotated_frame(tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    _exif_jpeg(val / "r.JPEG", 40, 30, 6)                    # displayed 30 wide, 40 high
    (val / "r.xml").write_text(_xml(30, 40, [("nA", (1, 31, 30, 40))]))  # the bottom 10 rows (displayed)
    with P.collecting(io.StringIO()) as col:
        it = data.ImageNetValLoc(tmp_path, ["nA"], T.eval_transform(16))[0]
    assert col.counts == {"exif_rotated": 1} and it["size"] == (40, 30)
    assert it["masks"].shape == (1, 40, 30) and it["masks"][0, 30:].all() and not it["masks"][0, :30].any()
    assert it["image"].shape == (3, 21, 16)  # shorter side 16 of the displayed 30x40


def test_image_keys_are_identities_not_positions(tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    for name in ("b", "c"):
        _noise(20, 16, 1).save(val / f"{name}.JPEG")
        (val / f"{name}.xml").write_text(_xml(20, 16, [("nA", (2, 3, 9, 9))]))
    ds = data.ImageNetValLoc(tmp_path, ["nA"])
    assert [data.image_key(ds, i) for i in range(2)] == ["b.JPEG", "c.JPEG"]
    _noise(20, 16, 1).save(val / "a.JPEG")  # a neighbour appears before them
    ds2 = data.ImageNetValLoc(tmp_path, ["nA"])
    assert data.image_key(ds2, 1) == "b.JPEG" and ds2.load(1)["key"] == "b.JPEG"
    assert data.image_key(torch.utils.data.Subset(ds2, [2]), 0) == "c.JPEG"
    assert data.image_path(torch.utils.data.Subset(ds2, [2]), 0) == str(val / "c.JPEG")
    assert ds2.load(0).code == "xml_missing" and data.image_path(ds2, 0) == str(val / "a.JPEG")
    assert data.image_path([1], 0) is None
    assert data.image_key([10, 20], 1) == "#1"
    # BLAKE2b, fixed for ever (results.json files of earlier runs stay reproducible)
    assert data.key_seed(0, "ILSVRC2012_val_00000001.JPEG") == 2455325049195864715
    assert data.key_seed(1, "ILSVRC2012_val_00000001.JPEG") == 1651248222500807361
    assert data.key_seed(0, "139") == 4973111135409206090


def test_load_item_gives_the_problem_without_reporting(folder):
    ds = data.ImageFolder(folder, T.train_transform(16))
    bad = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("3_truncated.JPEG"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing reported
        got = data.load_item(torch.utils.data.Subset(ds, [0, bad]), 1)
        assert isinstance(got, P.Problem) and got.code == "truncated" and got.file == ds.samples[bad][0]
        assert data.load_item(ds, 0)[1] == 0
        assert data.load_item([None], 0).code == "unreadable"
    batch = data.collate_loc([got, None])
    assert batch.n_skipped == 2 and batch.problems == [got]
    assert data.collate_skip([got, data.load_item(ds, 0)])[2] == 1
