"""``--cam-layer`` end to end: negative indices (``blocks.-1.norm1``) recorded under the canonical
name, and the one warning line for a CAM layer whose heatmaps are zero everywhere (a ViT's last
block output ``blocks.-1``) in ``gridcam train``, ``evaluate``, ``explain``; ``gridcam layers
--cam-layer``. The model is the test suite's tiny ViT (``anymodel_nets:tiny_vit``, 2 blocks)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gridcam import models
from gridcam.cli import main as cli_main
from gridcam.data import synthetic
from gridcam.errors import GridcamError
from gridcam.models.layers import resolve_layer
from gridcam.training import epoch as training_epoch
from gridcam.training.steps import StepResult

VIT = "anymodel_nets:tiny_vit"
ZERO = "gives all-zero Grad-CAM heatmaps"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """3 classes x 2 training images (one batch of 6 that mixes classes), 6 val images, some 4:3."""
    return synthetic.make_imagenet(tmp_path_factory.mktemp("layer") / "im", classes=3, train_per_class=2,
                                   val_per_class=2, image_size=40, seed=2)


def _train(data: Path, run: Path, layer: str, capsys) -> tuple[str, dict]:
    rc = cli_main(["train", "imagenet", str(data), "-a", VIT, "--cam-layer", layer, "--epochs", "1",
                   "--lambda", "25", "-b", "6", "-j", "0", "--image-size", "32", "--lr", "0.01",
                   "--seed", "0", "--save-dir", str(run), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    return err, json.loads((run / "train_log.jsonl").read_text().splitlines()[0])["train"]


def _evaluate(data: Path, ckpt: Path, out: Path, capsys, *flags: str) -> tuple[str, dict]:
    rc = cli_main(["evaluate", "imagenet", str(data), "--checkpoint", str(ckpt), "--input-resize", "44",
                   "-j", "0", "-b", "3", "--quiet", "--output", str(out), *flags])
    err = capsys.readouterr().err
    assert rc == 0, err
    return err, json.loads(out.read_text())


def _explain(data: Path, ckpt: Path, out: Path, capsys) -> str:
    rc = cli_main(["explain", str(data / "val"), "--checkpoint", str(ckpt), "--input-resize", "44",
                   "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    return err


# --------------------------------------------------------------------------- negative indices
def test_negative_indices_resolve_to_the_canonical_name() -> None:
    model = models.build(VIT, num_classes=3).model
    assert resolve_layer(model, "blocks.-1.norm1") == ("blocks.1.norm1", model.blocks[1].norm1)
    assert resolve_layer(model, "blocks.-2")[0] == "blocks.0"
    assert resolve_layer(model, "head")[0] == "head"
    with pytest.raises(GridcamError, match=r"no layer 'blocks.-3' .* blocks has no '-3' \(it has: 0, 1\)"):
        resolve_layer(model, "blocks.-3")
    b = models.build(VIT, num_classes=3, cam_layer="blocks.-1.norm1")
    assert b.cam_layer_name == "blocks.1.norm1" and b.cam_layer.source == "blocks.1.norm1"
    assert b.info.as_dict()["cam_layer"] == "blocks.1.norm1"
    assert models.build(VIT, num_classes=3, cam_layer="blocks.-2.norm2").cam_layer_name == "blocks.0.norm2"
    assert models.build("tiny_resnet", num_classes=3, cam_layer="layer4").cam_layer_name == "layer4"


def test_negative_cam_layer_through_train_evaluate_explain_layers(data: Path, tmp_path: Path, capsys) -> None:
    err, train = _train(data, tmp_path / "run", "blocks.-1.norm1", capsys)
    assert train["gc_loss"] > 1e-6 and ZERO not in err
    ckpt = tmp_path / "run" / "model_best.pth.tar"
    assert torch.load(ckpt, weights_only=True)["cam_layer"] == "blocks.1.norm1"
    err, res = _evaluate(data, ckpt, tmp_path / "r.json", capsys, "--cam-layer", "blocks.-1.norm1")
    assert res["config"]["cam_layer"] == "blocks.1.norm1" and res["config"]["reshape"] == "vit:1"
    assert res["metrics"]["gradcam"]["evaluated"] == 6 and ZERO not in err
    assert ZERO not in _explain(data, ckpt, tmp_path / "ex", capsys)
    assert cli_main(["layers", "-a", VIT, "--cam-layer", "blocks.-1.norm1"]) == 0
    out = capsys.readouterr().out
    assert "* blocks.1.norm1 " in out
    assert "CAM layer: blocks.1.norm1 (reshape vit:1, given as blocks.-1.norm1)" in out
    assert cli_main(["layers", "-a", VIT, "--cam-layer", "blocks.-5"]) == 2
    assert "no layer 'blocks.-5'" in capsys.readouterr().err


# ------------------------------------------------------------------ all-zero heatmaps: one line
def test_last_block_output_warns_once_in_train_evaluate_explain(data: Path, tmp_path: Path, capsys) -> None:
    """After a ViT's last block only the class token reaches the head: its patch tokens get no
    gradient, every Grad-CAM map there is zero."""
    err, train = _train(data, tmp_path / "run", "blocks.-1", capsys)
    lines = [line for line in err.splitlines() if ZERO in line]
    assert len(lines) == 1 and train["gc_loss"] < 1e-7
    assert lines[0].startswith("gridcam: warning: CAM layer 'blocks.1' gives all-zero Grad-CAM heatmaps "
                               "for every image of the first training batch")
    assert "only the class token reaches the classifier" in lines[0]
    assert lines[0].endswith(f"`gridcam layers -a {VIT}` lists the layers")
    ckpt = tmp_path / "run" / "model_best.pth.tar"

    err, res = _evaluate(data, ckpt, tmp_path / "r.json", capsys)
    lines = [line for line in err.splitlines() if ZERO in line]
    assert len(lines) == 1 and "for every image of the first batch (each pair is skipped as zero_heatmap)" in lines[0]
    assert res["metrics"]["gradcam"]["skipped_reasons"] == {"zero_heatmap": 6}

    err = _explain(data, ckpt, tmp_path / "ex", capsys)  # 6 images, one line
    lines = [line for line in err.splitlines() if ZERO in line]
    assert len(lines) == 1 and "for ILSVRC2012_val_00000001.JPEG (model run)" in lines[0]


def test_the_training_check_skips_a_batch_whose_logits_ignore_the_image(recwarn) -> None:
    """torchvision's ViT starts with a zero head: its first maps are zero whatever the layer, so
    the check waits for a batch whose logits differ between images."""
    model = models.build(VIT, num_classes=3, cam_layer="blocks.-1").model
    run = SimpleNamespace(model=model, info=SimpleNamespace(is_main=True))

    def step(logits: torch.Tensor, zero: bool) -> StepResult:
        z = torch.zeros(())
        return StepResult(z, z, z, logits, z.long(), zero_maps=torch.tensor(zero))

    training_epoch._warn_zero_maps(run, step(torch.zeros(2, 3), True))
    assert not recwarn.list and model not in training_epoch._ZERO_CHECKED
    training_epoch._warn_zero_maps(run, step(torch.randn(2, 3), True))
    training_epoch._warn_zero_maps(run, step(torch.randn(2, 3), True))  # checked once only
    assert [str(w.message).split(" gives")[0] for w in recwarn.list] == ["CAM layer 'blocks.1'"]
    other = models.build(VIT, num_classes=3).model  # maps not zero: nothing to say
    training_epoch._warn_zero_maps(SimpleNamespace(model=other, info=run.info), step(torch.randn(2, 3), False))
    assert len(recwarn.list) == 1 and other in training_epoch._ZERO_CHECKED
