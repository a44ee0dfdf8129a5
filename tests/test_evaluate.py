"""``gridcam evaluate``: one pass == the paper's separate batch-1 passes, batching, torchrun, resume,
ImageNet XML layouts, COCO with several categories per image, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gridcam import models
from gridcam.cli import main as cli_main
from gridcam.data import synthetic
from gridcam.data.coco import CocoLoc
from gridcam.data.imagenet import ImageNetValLoc
from gridcam.data.transforms import eval_transform
from gridcam.engine import evaluate as E
from gridcam.evaluation import forward
from gridcam.evaluation import pipeline
from gridcam.evaluation.records import HEADER_KEY

RESIZE = 96
NUM_CLASSES = 4


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> Path:
    return synthetic.make_imagenet(tmp_path_factory.mktemp("im") / "imagenet", classes=NUM_CLASSES,
                                   train_per_class=1, val_per_class=4, image_size=64, seed=1)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    return synthetic.make_coco(tmp_path_factory.mktemp("coco") / "coco", images_train=0,
                               images_val=14, categories=NUM_CLASSES, image_size=64, seed=2)


def _model(seed: int = 0, double: bool = False) -> torch.nn.Module:
    """A random tiny ResNet. ``double``: float64 weights, so that its forward does not depend on the
    batch size at float32 resolution (the heatmaps are float32), making batch-1 == batched exact."""
    torch.manual_seed(seed)
    model = models.create("tiny_resnet", num_classes=NUM_CLASSES).eval()
    return model.double() if double else model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth.tar"
    torch.save({"state_dict": _model().state_dict(), "arch": "tiny_resnet", "epoch": 1,
                "num_classes": NUM_CLASSES}, path)
    return path


def _imagenet_ds(root: Path) -> ImageNetValLoc:
    return ImageNetValLoc(str(root), None, eval_transform(RESIZE))


def _run(model, ds, **kw):
    kw.setdefault("input_resize", RESIZE)
    return E.evaluate(model, ds, **kw)


def _scores(results: dict) -> dict:
    """The numbers that must not depend on how the pass was organised."""
    return {"metrics": results["metrics"], "classification": results["classification"],
            "skipped_pairs": results["skipped_pairs"],
            "images": {k: v for k, v in results["images"].items() if k in ("evaluated", "skipped",
                                                                         "skipped_reasons")}}


def _records(path: Path) -> list[dict]:
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    assert HEADER_KEY in lines[0]
    return lines[1:]


def _canon(records: list[dict]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in records)


# --------------------------------------------------------------- the paper's way, written out
def _mesh_hit(mask: torch.Tensor, y: int, x: int, tol: float) -> bool:
    v, u = torch.meshgrid((torch.arange(mask.shape[0], dtype=torch.float32) - y) ** 2,
                          (torch.arange(mask.shape[1], dtype=torch.float32) - x) ** 2, indexing="ij")
    return bool((mask & ((v + u) < tol ** 2)).view(-1).any())


def _grad_cam_by_hand(model, image: torch.Tensor, c: int) -> torch.Tensor:
    """The paper's evaluation Grad-CAM written out: A = the CAM layer's output (hook), g = d logit_c
    / dA, ReLU(sum_k g_k A_k) (element-wise, not normalised), (h,w)."""
    acts = []
    handle = models.cam_layer(model).register_forward_hook(lambda _m, _i, out: acts.append(out))
    try:
        with torch.enable_grad():
            logits = model(image[None].to(next(model.parameters()).dtype).requires_grad_(True))
            (g,) = torch.autograd.grad(logits[0, c], acts[0])
    finally:
        handle.remove()
    return torch.relu((g * acts[0]).sum(1))[0].detach()


def _uniforms_by_hand(seed: int, key: str, rows: int, samples: int) -> np.ndarray:
    """The documented SPG seeding: BLAKE2b-64 of "seed\\0key", little-endian, top bit cleared,
    seeds torch's generator; (rows, samples) float64 uniforms."""
    import hashlib

    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return torch.rand((rows, samples), generator=g, dtype=torch.float64).numpy()


def _xml_mask(xml: Path, wnid: str, H: int, W: int) -> torch.Tensor:
    """Union of the VOC boxes of ``wnid`` (1-based, inclusive), read with ElementTree."""
    import xml.etree.ElementTree as ET

    mask = torch.zeros(H, W, dtype=torch.bool)
    for obj in ET.parse(xml).getroot().iter("object"):
        if obj.findtext("name") == wnid and obj.findtext("difficult", "0") == "0":
            b = [int(float(obj.findtext(f"bndbox/{k}"))) for k in ("xmin", "ymin", "xmax", "ymax")]
            mask[max(b[1] - 1, 0):b[3], max(b[0] - 1, 0):b[2]] = True
    return mask


def _coco_masks(ann_file: Path, image_id: int, H: int, W: int) -> dict[int, torch.Tensor]:
    """Per class index (categories sorted by id, as in the paper's loader): the union of the image's
    instance masks, read from the JSON with ``json``; uncompressed RLE decoded by hand (column-major
    runs, zeros first), polygons rasterised by pycocotools (the definition of a COCO polygon's
    pixels), one instance at a time."""
    from pycocotools import mask as mask_utils

    d = json.loads(Path(ann_file).read_text())
    index = {c: k for k, c in enumerate(sorted(int(c["id"]) for c in d["categories"]))}
    out: dict[int, np.ndarray] = {}
    for a in d["annotations"]:
        if a["image_id"] != image_id:
            continue
        seg = a["segmentation"]
        if isinstance(seg, dict):
            assert list(seg["size"]) == [H, W]
            flat = np.repeat(np.arange(len(seg["counts"])) % 2, seg["counts"]).astype(bool)
            m = flat.reshape(W, H).T
        else:
            m = np.zeros((H, W), dtype=bool)
            for poly in seg:
                rle = mask_utils.frPyObjects([poly], H, W)[0]
                m |= mask_utils.decode(rle).astype(bool)
        k = index[a["category_id"]]
        out[k] = out.get(k, np.zeros((H, W), dtype=bool)) | m
    return {k: torch.from_numpy(m) for k, m in out.items()}


def _reference(model, ds, seed=0, samples=100, tol=15.0):
    """Batch size 1, one forward per (image, class), Grad-CAM by hand resized (torch's bilinear,
    align_corners=False) to the original size, PG/SPG by a full distance mesh per point, CH by
    masking; per-class PG averaging. Independent of gridcam's cam, metrics and scoring code; the
    classes and masks come from the annotation files themselves (ImageNet: the XML beside the
    image, read with ElementTree; COCO: the JSON, see ``_coco_masks``), not from the dataset."""
    hits, misses = np.zeros(NUM_CLASSES), np.zeros(NUM_CLASSES)
    spg, ch, skipped = [], [], 0
    imagenet = isinstance(ds, ImageNetValLoc)
    wnids = sorted(p.name for p in (Path(ds.root) / "train").iterdir()) if imagenet else None
    for i in range(len(ds)):
        it = ds[i]
        if it is None:
            continue
        H, W = it["size"]
        classes = it["classes"].tolist()
        if imagenet:
            import xml.etree.ElementTree as ET

            xml = Path(it["path"]).with_suffix(".xml")
            first = ET.parse(xml).getroot().find("object").findtext("name")
            assert classes == [wnids.index(first)]
        else:
            coco_masks = _coco_masks(ds.annotation_file, int(it["key"]), H, W)
            assert classes == sorted(coco_masks)
        u_all = _uniforms_by_hand(seed, Path(it["path"]).name if imagenet else str(it["key"]),
                                  len(classes), samples)
        for t, c in enumerate(classes):
            heat = _grad_cam_by_hand(model, it["image"], c)
            big = torch.nn.functional.interpolate(heat[None, None], size=(H, W), mode="bilinear",
                                                  align_corners=False)[0, 0].numpy().astype(np.float64)
            if not big.sum() > 0:
                skipped += 1
                continue
            p = big / big.sum()
            mask = _xml_mask(xml, wnids[c], H, W) if imagenet else coco_masks[c]
            y, x = np.unravel_index(p.argmax(), p.shape)
            if _mesh_hit(mask, int(y), int(x), tol):
                hits[c] += 1
            else:
                misses[c] += 1
            cdf = np.cumsum(p.ravel())
            cdf /= cdf[-1]
            draws = cdf.searchsorted(u_all[t], side="right")
            spg.append(np.mean([_mesh_hit(mask, *np.unravel_index(k, (H, W)), tol) for k in draws]))
            ch.append(float((p * mask.numpy()).sum()))
    seen = (hits + misses) > 0
    return {"pointing_game": float(np.mean(hits[seen] / (hits + misses)[seen]) * 100),
            "stochastic_pointing_game": float(np.mean(spg) * 100),
            "content_heatmap": float(np.mean(ch) * 100), "evaluated": len(ch), "skipped": skipped}


def _assert_close_to_reference(got: dict, ref: dict) -> None:
    assert got["evaluated"] == ref["evaluated"] and got["skipped"] == ref["skipped"]
    assert got["pointing_game"] == pytest.approx(ref["pointing_game"], abs=1e-9)
    assert got["stochastic_pointing_game"] == pytest.approx(ref["stochastic_pointing_game"], abs=1e-9)
    assert got["content_heatmap"] == pytest.approx(ref["content_heatmap"], rel=1e-5)


# -------------------------------------------------------------------------------- tests
def test_imagenet_one_pass_matches_paper_reference_and_separate_passes(imagenet_root) -> None:
    model, ds = _model(), _imagenet_ds(imagenet_root)
    both = _run(model, ds, batch_size=1)
    ref = _reference(model, ds)
    _assert_close_to_reference(both["metrics"]["gradcam"], ref)
    assert ref["evaluated"] >= 8  # the data exercise the metrics (not everything skipped)
    # one pass == three passes, one metric each (same batches -> bit-identical numbers)
    for short, key in E.METRICS.items():
        alone = _run(model, ds, batch_size=1, metrics=[short])["metrics"]["gradcam"]
        assert alone[key] == both["metrics"]["gradcam"][key]
        assert set(alone) & set(E.METRICS.values()) == {key}
    # classification from the same forward
    labels = torch.tensor([ds[i]["label"] for i in range(len(ds))])
    logits = torch.cat([model(ds[i]["image"][None]) for i in range(len(ds))]).detach()
    top1 = (logits.argmax(1) == labels).double().mean().item() * 100
    assert both["classification"]["top1"] == pytest.approx(top1)
    assert both["classification"]["images"] == len(ds) == 16


def test_batched_equals_batch_size_one(imagenet_root, tmp_path) -> None:
    # float64 weights: a float32 forward of 5 images differs from 5 batch-1 forwards by rounding
    # (~1e-7), which can move the argmax along a flat ridge of an upsampled 3x3 map.
    model, ds = _model(double=True), _imagenet_ds(imagenet_root)
    kw = dict(methods=["gradcam", "input_x_gradient"])
    one = _run(model, ds, batch_size=1, per_image=tmp_path / "b1.jsonl", **kw)
    many = _run(model, ds, batch_size=5, per_image=tmp_path / "b5.jsonl", **kw)
    for m in kw["methods"]:  # CH: float64 rounding of a different batch may reach the last bits
        a, b = one["metrics"][m].pop("content_heatmap"), many["metrics"][m].pop("content_heatmap")
        assert a == pytest.approx(b, rel=1e-9)
    assert _scores(one) == _scores(many)
    strip = lambda rs: _canon([{k: v for k, v in r.items() if k != "ch"} for r in rs])  # noqa: E731
    assert strip(_records(tmp_path / "b1.jsonl")) == strip(_records(tmp_path / "b5.jsonl"))
    # size bucketing: every batch has one transformed size
    keys = pipeline.transformed_keys(ds, RESIZE)
    for batch in pipeline.plan_batches(keys, range(len(ds)), 5):
        assert len({keys[i] for i in batch}) == 1 and len(batch) <= 5
        assert {tuple(ds[i]["image"].shape[1:]) for i in batch} == {keys[batch[0]]}


def test_cpu_micro_batches_give_the_same_numbers(imagenet_root, monkeypatch) -> None:
    assert forward.micro_batch_size(4.0, 224, 298) == 16  # tiny_resnet at 224 px: the whole batch
    assert forward.micro_batch_size(4.0, 448, 597) == 4
    assert forward.micro_batch_size(16.0, 448, 597) == 1  # resnet18 at 448 px: one image at a time
    assert forward.micro_batch_size(16.0, 10, 10, budget=3200) == 2
    model, ds = _model(double=True), _imagenet_ds(imagenet_root)
    # tiny_resnet's largest activation: the stem's 16 channels at half resolution
    prof = forward.profile_model(model, (40, 60))
    assert prof.activations == 16 * 20 * 30 / (40 * 60) == 4.0
    assert prof.macs < forward.MODEL_BOUND_MACS_PER_PIXEL  # a light model: one-thread model stage
    r18 = forward.profile_model(models.create("resnet18", num_classes=1000).eval())
    assert r18.activations == 16.0 and r18.macs > forward.MODEL_BOUND_MACS_PER_PIXEL
    assert r18.macs * 224 * 224 == pytest.approx(1.814e9, rel=0.01)  # torchvision: 1.81 GFLOPS
    kw = dict(batch_size=5, methods=["gradcam", "smoothgrad"], method_options={"samples": 2})
    whole = _run(model, ds, **kw)
    sizes: list[int] = []
    explain = forward.explain

    def spy(method, model_, layer, images, targets, opts):
        sizes.append(images.shape[0])
        return explain(method, model_, layer, images, targets, opts)

    monkeypatch.setattr(forward, "explain", spy)
    monkeypatch.setattr(forward, "CPU_ACTIVATION_BUDGET", 1)  # one image per forward
    single = _run(model, ds, **kw)
    # Grad-CAM one image per forward; SmoothGrad keeps its batches (its noise is drawn per batch)
    assert sizes.count(1) >= len(ds) and max(sizes) > 1
    for m in kw["methods"]:
        a = single["metrics"][m].pop("content_heatmap")
        assert a == pytest.approx(whole["metrics"][m].pop("content_heatmap"), rel=1e-9)
    assert _scores(single) == _scores(whole)


def test_per_image_records_and_limit(imagenet_root, tmp_path) -> None:
    model, ds = _model(), _imagenet_ds(imagenet_root)
    res = _run(model, ds, batch_size=4, limit=6, per_image=tmp_path / "p.jsonl")
    recs = _records(tmp_path / "p.jsonl")
    done = [r for r in recs if r.get("done")]
    assert sorted(r["index"] for r in done) == list(range(6)) and res["images"]["evaluated"] == 6
    pairs = [r for r in recs if r.get("method") == "gradcam"]
    assert len(pairs) == 6  # ImageNet: one pair (first object's class) per image
    for r in pairs:
        assert r["image"].endswith(".JPEG") and r["class"] == ds[r["index"]]["label"]
        if "skipped" not in r:
            assert set(r) >= {"image", "class", "method", "pg_hit", "point", "spg", "ch"}
            y, x = r["point"]
            H, W = ds.sizes[r["index"]]
            assert 0 <= y < H and 0 <= x < W
            assert 0 <= r["spg"] <= 1 and 0 <= r["ch"] <= 1 and abs(r["spg"] * 100 - round(r["spg"] * 100)) < 1e-9


def test_resume_from_truncated_file_gives_same_results(imagenet_root, tmp_path) -> None:
    model, ds = _model(), _imagenet_ds(imagenet_root)
    full_path = tmp_path / "full.jsonl"
    full = _run(model, ds, batch_size=3, per_image=full_path, methods=["gradcam", "gradient"])
    lines = full_path.read_text().splitlines(keepends=True)
    # Interrupt inside a batch: after the 2nd image of a 3-image batch was written, mid-line.
    batches = pipeline.plan_batches(pipeline.transformed_keys(ds, RESIZE), range(len(ds)), 3)
    victim = [b for b in batches if len(b) == 3][1]
    cut = next(k for k, x in enumerate(lines) if json.loads(x).get("done")
               and json.loads(x)["index"] == victim[1]) + 1
    part = tmp_path / "part.jsonl"
    part.write_text("".join(lines[:cut]) + lines[cut][: len(lines[cut]) // 2])  # torn last line
    resumed = _run(model, ds, batch_size=3, per_image=part, methods=["gradcam", "gradient"])
    # the partial batch is redone as a whole (same batch -> bit-identical heatmaps)
    assert resumed["images"]["resumed"] == sum(len(b) for b in batches if b[0] < victim[0])
    assert _scores(resumed) == _scores(full)  # exactly, CH included
    assert _canon(_records(part)) == _canon(_records(full_path))  # no duplicates, nothing lost
    again = _run(model, ds, batch_size=3, per_image=part, methods=["gradcam", "gradient"])
    assert again["images"]["resumed"] == len(ds) and _scores(again) == _scores(full)
    with pytest.raises(E.GridcamError, match="other settings"):
        _run(model, ds, batch_size=3, per_image=part, methods=["gradcam"], tolerance=10)


def test_all_zero_heatmap_is_skipped_and_counted(imagenet_root, tmp_path) -> None:
    model, ds = _model(), _imagenet_ds(imagenet_root)
    with torch.no_grad():
        model.fc.weight[0] = 0.0  # logit 0 ignores the features: its Grad-CAM is exactly zero
    res = _run(model, ds, batch_size=4, per_image=tmp_path / "z.jsonl")
    n0 = sum(1 for i in range(len(ds)) if ds[i]["classes"].tolist() == [0])
    assert n0 > 0
    recs = [r for r in _records(tmp_path / "z.jsonl") if r.get("skipped") == "zero_heatmap"]
    assert {r["class"] for r in recs} >= {0}
    assert sum(r["class"] == 0 for r in recs) == n0
    g = res["metrics"]["gradcam"]
    assert g["skipped_reasons"]["zero_heatmap"] == len(recs)
    assert "zero_heatmap" not in res["problems"]  # not a problem in the data
    assert g["evaluated"] + g["skipped"] == len(ds)


def test_coco_several_categories_per_image(coco_root, tmp_path) -> None:
    model = _model(double=True)  # T classes from one batched backward == T separate backwards
    ds = CocoLoc(str(coco_root), "val2014", eval_transform(RESIZE))
    counts = [len(ds.present(i)) for i in range(len(ds))]
    assert max(counts) >= 2
    res = _run(model, ds, batch_size=4, per_image=tmp_path / "c.jsonl")
    _assert_close_to_reference(res["metrics"]["gradcam"], _reference(model, ds))
    recs = [r for r in _records(tmp_path / "c.jsonl") if r.get("method") == "gradcam"]
    by_image: dict[int, set] = {}
    for r in recs:
        by_image.setdefault(r["index"], set()).add(r["class"])
    for i in range(len(ds)):
        assert by_image.get(i, set()) == set(ds.present(i).tolist())
    # P/R/F1 from the same forward, against a direct computation
    logits = torch.cat([model(ds[i]["image"][None].double()) for i in range(len(ds))]).detach()
    truth = torch.stack([ds.multi_hot(i) for i in range(len(ds))]) > 0.5
    pred = logits > 0
    tp = (pred & truth).sum(0).double()
    overall_p = tp.sum() / pred.sum() * 100
    assert res["classification"]["precision_overall"] == pytest.approx(float(overall_p))
    assert res["images"]["skipped_reasons"].get("no_annotations", 0) == ds.skipped_no_annotations
    if ds.skipped_no_annotations:
        assert res["problems"]["no_annotations"]["count"] == ds.skipped_no_annotations
    assert res["config"]["split"] == "val2014"


def test_cli_xml_beside_and_in_annotation_folder(imagenet_root, checkpoint, tmp_path, capsys) -> None:
    beside = tmp_path / "beside"
    shutil.copytree(imagenet_root, beside)
    (beside / "LOC_val_solution.csv").unlink()  # only the XML files can give the boxes
    folder = tmp_path / "folder"
    shutil.copytree(beside, folder)
    (folder / "annotation").mkdir()
    for xml in (folder / "val").glob("*.xml"):
        xml.rename(folder / "annotation" / xml.name)
    out = {}
    for name, root in (("beside", beside), ("folder", folder)):
        rc = cli_main(["evaluate", "imagenet", str(root), "--checkpoint", str(checkpoint),
                       "--input-resize", str(RESIZE), "-j", "0", "-b", "4", "--quiet",
                       "--output", str(tmp_path / f"{name}.json")])
        assert rc == 0
        out[name] = json.loads((tmp_path / f"{name}.json").read_text())
    printed = capsys.readouterr().out
    assert "**gradcam**" in printed and "Pointing Game" in printed and "| Top-1 Acc (%)" in printed
    assert _scores(out["beside"]) == _scores(out["folder"])
    res = out["beside"]
    assert set(res) >= {"metrics", "classification", "config"}
    assert set(res["metrics"]["gradcam"]) >= {"pointing_game", "stochastic_pointing_game",
                                              "content_heatmap", "evaluated", "skipped"}
    assert res["config"]["input_resize"] == RESIZE and res["config"]["num_classes"] == NUM_CLASSES
    assert res["images"]["evaluated"] == 16


def test_cli_bad_input_is_counted_with_clear_messages(imagenet_root, checkpoint, tmp_path, capsys) -> None:
    root = tmp_path / "bad"
    shutil.copytree(imagenet_root, root)
    (root / "LOC_val_solution.csv").unlink()
    val = root / "val"
    xmls = sorted(val.glob("*.xml"))
    xmls[0].unlink()  # no annotation
    text = xmls[1].read_text()
    wnid = text.split("<name>")[1].split("</name>")[0]
    xmls[1].write_text(text.replace(wnid, "n99999999"))  # unknown wnid
    text = xmls[2].read_text()
    for tag, v in (("xmin", 900), ("xmax", 950), ("ymin", 900), ("ymax", 950)):
        start = text.index(f"<{tag}>") + len(tag) + 2
        text = text[:start] + str(v) + text[text.index(f"</{tag}>"):]
    xmls[2].write_text(text)  # box outside the image
    (val / "ILSVRC2012_val_00000004.JPEG").write_bytes(b"not a jpeg")  # unreadable image
    rc = cli_main(["evaluate", "imagenet", str(root), "--checkpoint", str(checkpoint),
                   "--input-resize", str(RESIZE), "-j", "0", "--quiet",
                   "--output", str(tmp_path / "r.json"), "--per-image", str(tmp_path / "r.jsonl")])
    assert rc == 0
    captured = capsys.readouterr()
    err = captured.err  # one line per problem (issue 13), then the counts
    assert f"gridcam: warning: {val / 'ILSVRC2012_val_00000004.JPEG'}: not an image" in err
    assert err.rstrip().splitlines()[-1] == ("gridcam: 4 data problem(s) worked around: "
                                             "1 box_outside, 1 not_an_image, 1 unknown_class, 1 xml_missing")
    assert len([x for x in err.splitlines() if x.startswith("gridcam: warning: ")]) == 4  # once each
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["images"]["skipped_reasons"] == {"not_an_image": 1, "xml_missing": 1}
    assert res["skipped_pairs"] == {"box_outside": 1, "unknown_class": 1}
    g = res["metrics"]["gradcam"]
    assert g["skipped_reasons"]["unknown_class"] == 1 and g["evaluated"] + g["skipped"] == 14
    assert res["classification"]["images"] == 13  # the unknown-wnid image has no label
    # results.json: every problem by code, with its meaning and examples naming file and cause
    assert {k: v["count"] for k, v in res["problems"].items()} == {
        "box_outside": 1, "not_an_image": 1, "unknown_class": 1, "xml_missing": 1}
    (ex,) = res["problems"]["unknown_class"]["examples"]
    assert ex == {"reason": "unknown_class", "file": str(xmls[1]), "where": "<object>[1]/<name>",
                  "cause": "unknown wnid n99999999 (not in the class list)"}
    assert res["problems"]["not_an_image"]["meaning"].startswith("not an image format")
    printed = captured.out
    assert "xml_missing" in printed and "unknown_class" in printed
    # per-image records: the code in "skipped", the cause in "reason", the file at fault
    skips = {r["skipped"]: r for r in _records(tmp_path / "r.jsonl")
             if "skipped" in r and "method" not in r}
    assert skips["unknown_class"] == {
        "image": str(val / xmls[1].name.replace(".xml", ".JPEG")), "index": 1, "class": "n99999999",
        "skipped": "unknown_class", "reason": "unknown wnid n99999999 (not in the class list)",
        "file": str(xmls[1]), "where": "<object>[1]/<name>"}
    assert skips["box_outside"]["file"] == str(xmls[2]) and skips["box_outside"]["class"] >= 0
    assert skips["xml_missing"]["done"] and skips["xml_missing"]["image"].endswith("00000001.JPEG")
    assert skips["not_an_image"] == {
        "image": str(val / "ILSVRC2012_val_00000004.JPEG"), "index": 3, "done": True,
        "skipped": "not_an_image", "reason": "not an image (PIL cannot identify the format)",
        "file": str(val / "ILSVRC2012_val_00000004.JPEG")}


def test_problems_in_records_results_and_resume(coco_root, tmp_path) -> None:
    """A segmentation that cannot be decoded falls back to its bbox: the pair is scored, the
    image's done record lists the problem and results.json counts it; an unreadable image is a
    skipped done record. A resumed run reads both back from the records: the same results."""
    root = tmp_path / "c"
    shutil.copytree(coco_root, root)
    ann_file = root / "annotations" / "instances_val2014.json"
    d = json.loads(ann_file.read_text())
    bad = d["annotations"][0]
    bad["segmentation"] = []
    ann_file.write_text(json.dumps(d))
    ds = CocoLoc(str(root), None, eval_transform(RESIZE))  # split None: val2014
    victim = next(i for i in range(len(ds)) if ds.ids[i] != bad["image_id"])
    Path(ds.path(victim)).write_bytes(b"")
    path = tmp_path / "p.jsonl"
    full = _run(_model(), ds, batch_size=4, per_image=path)
    assert full["config"]["split"] == "val2014"
    recs = _records(path)
    (done,) = [r for r in recs if r.get("done") and r["index"] == ds.ids.index(bad["image_id"])]
    assert [(p["reason"], p["file"], p["where"]) for p in done["problems"]] == [
        ("bad_segmentation", str(ann_file), f"annotation {bad['id']}")]
    assert "bbox" in done["problems"][0]["cause"]
    (gone,) = [r for r in recs if r.get("done") and r["index"] == victim]
    assert gone["skipped"] == "empty_file" and gone["file"] == ds.path(victim)
    assert full["images"]["skipped_reasons"]["empty_file"] == 1
    assert full["problems"]["bad_segmentation"]["count"] == 1
    assert full["problems"]["empty_file"]["examples"] == [
        {"reason": "empty_file", "file": ds.path(victim), "cause": "empty file (0 bytes)"}]
    again = _run(_model(), ds, batch_size=4, per_image=path)
    assert again["images"]["resumed"] == len(ds)
    assert _scores(again) == _scores(full) and again["problems"] == full["problems"]


def test_cli_coco_without_split_uses_the_only_annotation_file(coco_root, checkpoint, tmp_path,
                                                              capsys) -> None:
    """A COCO 2017 layout without --split: the only instances_*.json is used, a note says so,
    and the results record the split used."""
    root = tmp_path / "c17"
    shutil.copytree(coco_root, root)
    (root / "val2014").rename(root / "val2017")
    (root / "annotations" / "instances_val2014.json").rename(root / "annotations" / "instances_val2017.json")
    for extra in (root / "annotations").glob("instances_train*.json"):
        extra.unlink()
    rc = cli_main(["evaluate", "coco", str(root), "--checkpoint", str(checkpoint), "--input-resize",
                   str(RESIZE), "-j", "0", "--quiet", "--limit", "3", "--output", str(tmp_path / "r.json")])
    assert rc == 0
    assert "gridcam: note: instances_val2014.json not found; using the only annotation file" in (
        capsys.readouterr().err)
    assert json.loads((tmp_path / "r.json").read_text())["config"]["split"] == "val2017"


def test_per_image_file_of_another_format_is_refused(imagenet_root, tmp_path) -> None:
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps({HEADER_KEY: 1, "config": {}}) + "\n")
    with pytest.raises(E.GridcamError, match="format 1"):
        _run(_model(), _imagenet_ds(imagenet_root), per_image=path, limit=2)


def test_cli_wrong_architecture_and_missing_checkpoint(imagenet_root, checkpoint, capsys) -> None:
    rc = cli_main(["evaluate", "imagenet", str(imagenet_root), "--checkpoint", str(checkpoint),
                   "-a", "resnet18", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not fit" in err and "tiny_resnet" in err and "Traceback" not in err
    rc = cli_main(["evaluate", "imagenet", str(imagenet_root), "--quiet"])
    assert rc == 2 and "--checkpoint" in capsys.readouterr().err
    rc = cli_main(["evaluate", "imagenet", str(imagenet_root), "--checkpoint", str(checkpoint),
                   "--metrics", "pg,iou", "--quiet"])
    assert rc == 2 and "iou" in capsys.readouterr().err


def test_prefetch_thread_passes_errors_and_stops_early() -> None:
    def source():
        yield from range(3)
        raise ValueError("worker failed")

    got = []
    with pytest.raises(ValueError, match="worker failed"):
        for x in pipeline.prefetch(source(), lambda v: v * 10):
            got.append(x)
    assert got == [0, 10, 20]
    it = pipeline.prefetch(iter(range(1000)), lambda v: v)
    assert next(it) == 0
    it.close()  # returns promptly, the producer thread is told to stop
    assert list(pipeline.prefetch(iter([]), lambda v: v)) == []


def test_torchrun_two_processes_equal_one_process(imagenet_root, checkpoint, tmp_path) -> None:
    common = ["evaluate", "imagenet", str(imagenet_root), "--checkpoint", str(checkpoint),
              "--input-resize", str(RESIZE), "-b", "2", "--quiet", "--device", "cpu",
              "--methods", "gradcam,gradient"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    one = subprocess.run([sys.executable, "-m", "gridcam", *common, "-j", "1",
                          "--output", str(tmp_path / "one.json"),
                          "--per-image", str(tmp_path / "one.jsonl")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "gridcam", *common, "-j", "0",
                          "--output", str(tmp_path / "two.json"),
                          "--per-image", str(tmp_path / "two.jsonl")],
                         env=env, capture_output=True, text=True, timeout=180)
    assert two.returncode == 0, two.stderr
    r1 = json.loads((tmp_path / "one.json").read_text())
    r2 = json.loads((tmp_path / "two.json").read_text())
    assert r2["config"]["world_size"] == 2
    assert _scores(r1) == _scores(r2)
    assert _canon(_records(tmp_path / "one.jsonl")) == _canon(_records(tmp_path / "two.jsonl"))
    assert not list(tmp_path.glob("two.jsonl.part*"))  # parts merged by rank 0
    assert two.stdout.count("results written to") == 1  # only rank 0 prints
