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
