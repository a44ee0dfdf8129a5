"""Property (issue 13): corrupt a synthetic dataset at random, and every run still ends well.

Each example copies a small synthetic ImageNet, corrupts a few of its files at random (a JPEG cut
at a random byte, its first byte flipped, emptied; an XML cut at a random byte and followed by
random garbage, or deleted), runs ``gridcam evaluate imagenet`` (and ``gridcam train imagenet``
for one epoch) through ``gridcam.cli.main`` and checks: exit status 0, every corrupted file named
on exactly one ``gridcam: warning:`` line of stderr, no Python source path, the summary's counts
by reason equal to the corruptions made, and every untouched (image, class) pair scored exactly
as on the clean dataset. Seeded loops (few examples), not hypothesis: each example runs the CLI.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from gridcam import models
from gridcam.cli import main as cli_main
from gridcam.data import synthetic

CLASSES = 2
RESIZE = 48
#: corruption -> the reason code it must be reported with
EXPECTED = {"jpeg_cut": "truncated", "jpeg_flip": "not_an_image", "jpeg_empty": "empty_file",
            "xml_garbage": "xml_malformed", "xml_delete": "xml_missing"}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict:
    """A synthetic ImageNet (no CSV, so XML problems are not hidden by it), a checkpoint, and the
    clean per-image records."""
    base = tmp_path_factory.mktemp("prop")
    root = synthetic.make_imagenet(base / "clean", classes=CLASSES, train_per_class=4,
                                   val_per_class=4, image_size=40, seed=3)
    (root / "LOC_val_solution.csv").unlink()
    torch.manual_seed(0)
    ckpt = base / "tiny.pth.tar"
    torch.save({"state_dict": models.create("tiny_resnet", num_classes=CLASSES).state_dict(),
                "arch": "tiny_resnet", "epoch": 1, "num_classes": CLASSES}, ckpt)
    rc, _, records = _evaluate(root, ckpt, base / "clean_out")
    assert rc == 0
    return {"root": root, "ckpt": ckpt, "records": records}


def _evaluate(root: Path, ckpt: Path, out: Path, capsys=None, extra=()) -> tuple[int, str, dict]:
    """Batch size 1: a float32 forward rounds differently in batches of other sizes (~1e-9 in CH),
    and a pair must score exactly the same whatever its neighbours."""
    out.mkdir(parents=True, exist_ok=True)
    rc = cli_main(["evaluate", "imagenet", str(root), "--checkpoint", str(ckpt), "--input-resize",
                   str(RESIZE), "-j", "0", "-b", "1", "--quiet", "--output", str(out / "r.json"),
                   "--per-image", str(out / "r.jsonl"), *extra])
    err = capsys.readouterr().err if capsys is not None else ""
    return rc, err, _pairs(out / "r.jsonl")


def _pairs(path: Path) -> dict:
    """(file name, class, method) -> the pair's scores, from the per-image records."""
    out = {}
    for line in path.read_text().splitlines()[1:]:
        r = json.loads(line)
        if "method" in r:
            out[(Path(r["image"]).name, r["class"], r["method"])] = {
                k: r.get(k) for k in ("pg_hit", "point", "spg", "ch", "skipped")}
    return out


def corrupt(folder: Path, rng: np.random.Generator, n: int, kinds=tuple(EXPECTED),
            pattern: str = "*.JPEG") -> list[tuple[Path, str, str]]:
    """Corrupt ``n`` distinct images of ``folder`` (one corruption each, drawn from ``kinds``);
    returns ``(file named in the report, expected code, image file name)``."""
    images = sorted(folder.glob(pattern))
    chosen = rng.choice(len(images), size=n, replace=False)
    order = [str(k) for k in rng.permutation(list(kinds))]  # n >= len(kinds): every kind made
    done = []
    for i, k in enumerate(chosen):
        jpeg = images[int(k)]
        kind = order[i % len(order)]
        xml = jpeg.with_suffix(".xml")
        raw = jpeg.read_bytes()
        if kind == "jpeg_cut":      # anywhere but the last two bytes (a JPEG without EOI decodes)
            jpeg.write_bytes(raw[:int(rng.integers(8, len(raw) - 2))])
        elif kind == "jpeg_flip":   # the SOI marker's first byte: no longer a JPEG, nor anything else
            jpeg.write_bytes(bytes([raw[0] ^ int(rng.integers(1, 256))]) + raw[1:])
        elif kind == "jpeg_empty":
            jpeg.write_bytes(b"")
        elif kind == "xml_garbage":  # cut before the root closes, then random bytes
            text = xml.read_bytes()
            cut = int(rng.integers(0, len(text) - len(b"</annotation>")))
            xml.write_bytes(text[:cut] + rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8).tobytes())
        else:
            xml.unlink()
        named = xml if kind == "xml_garbage" else jpeg
        done.append((named, EXPECTED[kind], jpeg.name))
    return done


def _summary_counts(err: str) -> dict[str, int]:
    lines = [x for x in err.splitlines() if x.startswith("gridcam: ") and "data problem(s)" in x]
    assert len(lines) <= 1, err
    if not lines:
        return {}
    return {code: int(n) for n, code in re.findall(r"(\d+) (\w+)", lines[0].split(": ", 2)[2])}


def _check_told_once(err: str, corrupted: list[tuple[Path, str, str]]) -> None:
    assert "Traceback" not in err and not re.search(r"\.py:\d+", err), err
    warning_lines = [x for x in err.splitlines() if x.startswith("gridcam: warning: ")]
    for named, code, _ in corrupted:
        hits = [x for x in warning_lines if x.startswith(f"gridcam: warning: {named}:")]
        assert len(hits) == 1, (named, code, err)
    assert _summary_counts(err) == dict(Counter(code for _, code, _ in corrupted))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluation_with_random_corruption(clean, seed, tmp_path, capsys):
    root = tmp_path / "d"
    shutil.copytree(clean["root"], root)
    corrupted = corrupt(root / "val", np.random.default_rng(seed), n=5)
    assert {c for _, c, _ in corrupted} == set(EXPECTED.values())
    rc, err, pairs = _evaluate(root, clean["ckpt"], tmp_path / "out", capsys)
    assert rc == 0, err
    _check_told_once(err, corrupted)
    touched = {name for _, _, name in corrupted}
    untouched = {k: v for k, v in clean["records"].items() if k[0] not in touched}
    assert untouched and {k: pairs[k] for k in untouched} == untouched
    assert not any(k[0] in touched for k in pairs)


def test_records_carry_reason_codes(clean, tmp_path, capsys):
    """The per-image records and results.json count skipped images by the stable reason code."""
    root = tmp_path / "d"
    shutil.copytree(clean["root"], root)
    corrupted = corrupt(root / "val", np.random.default_rng(5), n=4)
    rc, err, _ = _evaluate(root, clean["ckpt"], tmp_path / "out", capsys)
    assert rc == 0
    res = json.loads((tmp_path / "out" / "r.json").read_text())
    assert res["images"]["skipped_reasons"] == dict(sorted(Counter(c for _, c, _ in corrupted).items()))
    recs = [json.loads(x) for x in (tmp_path / "out" / "r.jsonl").read_text().splitlines()[1:]]
    by_image = {Path(r["image"]).name: r for r in recs if "skipped" in r and "method" not in r}
    for named, code, name in corrupted:
        assert by_image[name]["skipped"] == code and by_image[name]["file"] == str(named)


def test_spg_does_not_depend_on_neighbours(clean, tmp_path, capsys):
    """SPG draws are seeded by the image's identity: deleting other images (or --limit) changes
    no remaining image's SPG."""
    root = tmp_path / "d"
    shutil.copytree(clean["root"], root)
    gone = sorted((root / "val").glob("*.JPEG"))[:2]
    for p in gone:
        p.unlink()
        p.with_suffix(".xml").unlink()
    rc, _, pairs = _evaluate(root, clean["ckpt"], tmp_path / "out", capsys)
    assert rc == 0
    kept = {k: v for k, v in clean["records"].items() if k[0] not in {p.name for p in gone}}
    assert {k: pairs[k]["spg"] for k in kept} == {k: v["spg"] for k, v in kept.items()}


def test_loader_workers_report_through_the_main_process(clean, tmp_path, capsys):
    """With loader worker processes, the problems still reach the main process's summary."""
    root = tmp_path / "d"
    shutil.copytree(clean["root"], root)
    corrupted = corrupt(root / "val", np.random.default_rng(7), n=3, kinds=("jpeg_cut", "jpeg_empty"))
    (tmp_path / "out").mkdir()
    rc = cli_main(["evaluate", "imagenet", str(root), "--checkpoint", str(clean["ckpt"]),
                   "--input-resize", str(RESIZE), "-j", "2", "--quiet",
                   "--output", str(tmp_path / "out" / "r.json")])
    assert rc == 0
    _check_told_once(capsys.readouterr().err, corrupted)


@pytest.mark.parametrize("seed", [0])
def test_one_epoch_of_training_with_random_corruption(clean, seed, tmp_path, capsys):
    root = tmp_path / "d"
    shutil.copytree(clean["root"], root)
    shutil.rmtree(root / "val")  # training only (validation is covered above)
    corrupted = corrupt(root / "train", np.random.default_rng(seed), n=3,
                        kinds=("jpeg_cut", "jpeg_flip", "jpeg_empty"), pattern="*/*.JPEG")
    rc = cli_main(["train", "imagenet", str(root), "-a", "tiny_resnet", "--epochs", "1", "-b", "4",
                   "-j", "0", "--image-size", "64", "--lambda", "1", "--seed", "0",
                   "--save-dir", str(tmp_path / "run"), "--device", "cpu", "--print-freq", "1000"])
    err = capsys.readouterr().err
    assert rc == 0, err
    _check_told_once(err, corrupted)
    (line,) = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert line["train"]["skipped_images"] == 3 and line["train"]["samples"] == 4 * CLASSES - 3


# ------------------------------------------------------------------------------------- COCO
COCO_CLASSES = 3


@pytest.fixture(scope="module")
def coco_clean(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("propcoco")
    root = synthetic.make_coco(base / "clean", images_train=0, images_val=10,
                               categories=COCO_CLASSES, image_size=40, seed=4)
    torch.manual_seed(1)
    ckpt = base / "tiny.pth.tar"
    torch.save({"state_dict": models.create("tiny_resnet", num_classes=COCO_CLASSES).state_dict(),
                "arch": "tiny_resnet", "epoch": 1, "num_classes": COCO_CLASSES}, ckpt)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc, pairs = _evaluate_coco(root, ckpt, base / "clean_out")
    assert rc == 0
    return {"root": root, "ckpt": ckpt, "pairs": pairs, "counts": _summary_counts(err.getvalue())}


def _evaluate_coco(root: Path, ckpt: Path, out: Path) -> tuple[int, dict]:
    out.mkdir(parents=True, exist_ok=True)
    rc = cli_main(["evaluate", "coco", str(root), "--split", "val2014", "--checkpoint", str(ckpt),
                   "--input-resize", str(RESIZE), "-j", "0", "-b", "1", "--quiet",
                   "--output", str(out / "r.json"), "--per-image", str(out / "r.jsonl")])
    return rc, _pairs(out / "r.jsonl")


def corrupt_coco(root: Path, rng: np.random.Generator) -> tuple[list[tuple[str, str | None, str]], set[str]]:
    """One of each: an empty segmentation list (bbox used), JSON garbage as a segmentation (bbox
    used), an unknown category_id, a missing image file, a truncated image file. Returns
    ``([(file named, where, code)], touched image file names)``."""
    ann_file = root / "annotations" / "instances_val2014.json"
    d = json.loads(ann_file.read_text())
    names = {img["id"]: img["file_name"] for img in d["images"]}
    anns = d["annotations"]
    per_image = Counter(a["image_id"] for a in anns)
    annotated = sorted(per_image)
    picked = rng.choice(annotated, size=5, replace=False).tolist()
    made, touched = [], set()
    for kind, iid in zip(("empty_seg", "garbage_seg", "unknown_cat", "gone", "cut"), picked):
        touched.add(names[iid])
        if kind in ("gone", "cut"):
            img = root / "val2014" / names[iid]
            if kind == "gone":
                img.unlink()
                made.append((str(img), None, "not_found"))
            else:
                raw = img.read_bytes()
                img.write_bytes(raw[:int(rng.integers(8, len(raw) - 2))])
                made.append((str(img), None, "truncated"))
            continue
        a = next(a for a in anns if a["image_id"] == iid)
        if kind == "empty_seg":
            a["segmentation"] = []
        elif kind == "garbage_seg":
            a["segmentation"] = {"counts": rng.integers(0, 9, 5).tolist(), "size": "x"}
        else:
            a["category_id"] = 999
        code = "unknown_category" if kind == "unknown_cat" else "bad_segmentation"
        made.append((str(ann_file), f"annotation {a['id']}", code))
    # an image whose only annotation got an unknown category has none left: that is counted too
    ann_file.write_text(json.dumps(d))
    return made, touched


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_evaluation_with_random_corruption(coco_clean, seed, tmp_path, capsys):
    clean_pairs, clean_counts = coco_clean["pairs"], coco_clean["counts"]  # its own: no_annotations
    root = tmp_path / "d"
    shutil.copytree(coco_clean["root"], root)
    made, touched = corrupt_coco(root, np.random.default_rng(seed))
    rc, pairs = _evaluate_coco(root, coco_clean["ckpt"], tmp_path / "out")
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "Traceback" not in err and not re.search(r"\.py:\d+", err), err
    lines = [x for x in err.splitlines() if x.startswith("gridcam: warning: ")]
    for file, where, code in made:
        prefix = f"gridcam: warning: {file}: {where}: " if where else f"gridcam: warning: {file}: "
        assert len([x for x in lines if x.startswith(prefix)]) == 1, (file, where, code, err)
    expect = Counter(clean_counts) + Counter(code for _, _, code in made)
    got = _summary_counts(err)
    extra_no_ann = got.get("no_annotations", 0) - clean_counts.get("no_annotations", 0)
    assert extra_no_ann in (0, 1)  # the unknown category may have been its image's only annotation
    expect["no_annotations"] = got.get("no_annotations", 0)
    assert got == {k: v for k, v in expect.items() if v}
    untouched = {k: v for k, v in clean_pairs.items() if k[0] not in touched}
    assert untouched and {k: pairs.get(k) for k in untouched} == untouched
