"""``gridcam explain`` on odd images: grayscale, CMYK, PNG named .JPEG, truncated, a 1x40 aspect
ratio, not an image at all; several checkpoints and methods give one sheet per image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gridcam import models
from gridcam.cli import main as cli_main
from gridcam.errors import GridcamError
from gridcam.report.explain import ExplainConfig, model_input, run
from gridcam.report.names import class_names, read_synset_mapping, resolve_class

WNIDS = ["n00000001", "n00000002", "n00000003"]


def _checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = models.create("tiny_resnet", num_classes=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "arch": "tiny_resnet", "classes": WNIDS}, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("ck")
    return [_checkpoint(base / "baseline" / "model_best.pth.tar", 0),
            _checkpoint(base / "gc" / "model_best.pth.tar", 1)]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70), dtype=np.uint8), "L").save(d / "gray.jpg")
    Image.fromarray(rng.integers(0, 255, (60, 80, 4), dtype=np.uint8), "CMYK").save(d / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(d / "png.JPEG", format="PNG")
    Image.fromarray(rng.integers(0, 255, (8, 320, 3), dtype=np.uint8)).save(d / "strip.png")
    good = (d / "gray.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (d / "text.jpg").write_text("not an image")
    (d / "LOC_synset_mapping.txt").write_text("n00000001 tench, Tinca tinca\nn00000002 goldfish\n"
                                             "n00000003 great white shark\n")
    return d


def test_odd_images_with_two_models_and_two_methods(ckpts, images, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli_main(["explain", str(images), "--checkpoint", str(ckpts[0]), "--checkpoint", str(ckpts[1]),
                   "--method", "gradcam,gradient", "--topk", "2", "--input-resize", "32", "--out", str(out),
                   "--device", "cpu"])
    assert rc == 0
    err = capsys.readouterr().err.splitlines()
    warned = [line for line in err if line.startswith("gridcam: warning: ")]
    assert len(warned) == 2, err
    assert any("truncated.jpg: " in w for w in warned) and any("text.jpg: " in w for w in warned)
    rec = json.loads((out / "predictions.json").read_text())
    assert sorted(Path(e["image"]).name for e in rec["images"]) == ["cmyk.jpg", "gray.jpg", "png.JPEG", "strip.png"]
    assert sorted(Path(s["image"]).name for s in rec["skipped"]) == ["text.jpg", "truncated.jpg"]
    names = {"tench", "goldfish", "great white shark"}   # readable names from the mapping beside the images
    index = (out / "index.html").read_text()
    for entry in rec["images"]:
        assert set(entry["models"]) == {"baseline", "gc"}
        for m in entry["models"].values():
            assert len(m["top"]) == 2 and {t["name"] for t in m["top"]} <= names
            assert m["top"][0]["prob"] >= m["top"][1]["prob"]
            assert len(m["overlays"]) == 2 * 2           # 2 methods x 2 classes
            for o in m["overlays"]:
                assert Image.open(out / o).width > 0
        sheet = Image.open(out / entry["sheet"])
        assert sheet.width > 3 * 150                          # image + 2 methods
        if not entry["image"].endswith("strip.png"):
            assert sheet.height > 2 * 200                     # 2 models
        assert f"src='{entry['sheet']}'" in index
    strip = next(e for e in rec["images"] if e["image"].endswith("strip.png"))
    assert strip["size"] == [8, 320]


def test_one_model_one_class_writes_overlays_without_sheets(ckpts, images, tmp_path):
    rec = run(ExplainConfig(inputs=[str(images / "gray.jpg")], checkpoints=[str(ckpts[0])], target="goldfish",
                            input_resize=32, out=str(tmp_path), device="cpu"))
    (entry,) = rec["images"]
    assert "sheet" not in entry and entry["models"]["baseline"]["overlays"] == [
        "overlays/000_gray__baseline__gradcam__1.png"]
    assert (tmp_path / "index.html").read_text().count("<img") == 1


def test_bad_requests_are_one_clear_error(ckpts, images, tmp_path):
    with pytest.raises(GridcamError, match="--method nope: unknown"):
        run(ExplainConfig([str(images)], [str(ckpts[0])], methods=["nope"], out=str(tmp_path)))
    with pytest.raises(GridcamError, match="--class 7: out of range"):
        run(ExplainConfig([str(images / "gray.jpg")], [str(ckpts[0])], target="7", out=str(tmp_path)))
    with pytest.raises(GridcamError, match="no readable image"):
        run(ExplainConfig([str(images / "text.jpg")], [str(ckpts[0])], out=str(tmp_path)))


def test_model_input_uses_the_model_normalisation():
    """A ViT built with mean = std = 0.5 (timm's, Hugging Face's) is fed what it was trained on."""
    vit = models.build("anymodel_nets:tiny_vit", num_classes=3).model
    white = Image.new("RGB", (8, 8), (255, 255, 255))
    torch.testing.assert_close(model_input(white, 8, vit), torch.ones(1, 3, 8, 8))
    imagenet = model_input(white, 8)  # a model without a record: ImageNet's constants
    torch.testing.assert_close(imagenet[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224,
                                                                   (1 - 0.406) / 0.225]))


def test_model_input_keeps_the_shorter_side_and_caps_extreme_aspect():
    assert tuple(model_input(Image.new("RGB", (100, 50)), 32).shape) == (1, 3, 32, 64)
    assert tuple(model_input(Image.new("RGB", (5000, 10)), 32).shape) == (1, 3, 1, 192)  # 6 x 32 long


def test_names(tmp_path):
    f = tmp_path / "LOC_synset_mapping.txt"
    f.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    assert read_synset_mapping(f) == {"n01440764": "tench", "n01443537": "goldfish"}
    assert class_names(2, {}, classes_file=str(f)) == ["tench", "goldfish"]
    assert class_names(2, {"classes": ["n01443537", "n09999999"], "args": {"data": str(tmp_path)}}) == [
        "goldfish", "n09999999"]
    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps({"categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}]}))
    assert class_names(2, {}, annotations=str(coco)) == ["person", "dog"]
    with pytest.raises(GridcamError, match="2 categories but the model has 3"):
        class_names(3, {}, annotations=str(coco))
    assert resolve_class("gold", ["tench", "goldfish"]) == 1
    assert resolve_class("n01440764", ["tench", "goldfish"], ["n01440764", "n01443537"]) == 0
