"""The ``torchvision:``, ``timm:`` and ``hf:`` adapters on the real packages, end to end.

For each model, through the CLI (``gridcam.cli.main``): ``gridcam layers``, one epoch of Grad-CAM
consistency training (the GC loss must be > 0), ``gridcam evaluate`` on non-square images whose
sides are not multiples of a ViT's patch size (every pair scored) and ``gridcam explain`` on one
of them. The models are the packages' own classes, small:

- ``timm:vit_tiny_patch16_224`` and ``timm:deit_tiny_distilled_patch16_224`` (class +
  distillation token) at 32 px, 8 px patches, 2 blocks of width 32: the ``timm:`` adapter calls
  ``timm.create_model`` as always; a fixture adds these keyword arguments and timm's
  ``pretrained_cfg_overlay`` (the native size, 32 px);
- ``timm:convnext_atto``, ``torchvision:mobilenet_v3_small``: as they are;
- ``torchvision:swin_t`` as it is (28 M parameters: marked slow);
- torchvision's ``VisionTransformer`` (fixed input size) through ``anymodel_nets:torchvision_vit``;
- a Hugging Face ``ViTForImageClassification`` made from a ``ViTConfig`` and saved to a folder,
  loaded by ``hf:FOLDER``.

Seconds per test on the development machine (2 shared cores): docs/any-model.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from gridcam import cam, models
from gridcam.cli import main as cli_main
from gridcam.data import synthetic
from gridcam.models.adapters import patch_multiple

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")

#: timm ViTs at a test size (keyword arguments of timm's VisionTransformer)
TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
            "pretrained_cfg_overlay": {"input_size": (3, 32, 32)}}
#: evaluation and explain input: shorter side 76 px (76 x 101 for a 4:3 image): no side is a
#: multiple of 8, so every ViT's input is resized to whole patches (80 x 104)
RESIZE = "76"


@dataclass(frozen=True)
class Case:
    arch: str           # "{hf}" stands for the Hugging Face folder
    layer: str          # the default CAM layer
    reshape: str        # as `gridcam layers` prints it: vit:P, nhwc or "" (a grid)
    size: int           # training crop
    fixed: bool = False  # inputs resized to the native size


CASES = [
    Case("timm:vit_tiny_patch16_224", "blocks.1.norm1", "vit:1", 32),
    Case("timm:deit_tiny_distilled_patch16_224", "blocks.1.norm1", "vit:2", 32),
    Case("timm:convnext_atto", "stages.3", "", 64),
    pytest.param(Case("torchvision:swin_t", "features", "nhwc", 64), marks=pytest.mark.slow),
    Case("anymodel_nets:torchvision_vit", "encoder.layers.encoder_layer_1.ln_1", "vit:1", 32, fixed=True),
    Case("torchvision:mobilenet_v3_small", "features", "", 64),
    Case("hf:{hf}", "model.vit.layers.1.layernorm_before", "vit:1", 32),
]


@pytest.fixture
def tiny_timm(monkeypatch) -> None:
    """timm's ViTs at the test size: the real ``timm.create_model`` with TINY_VIT added."""
    real = timm.create_model

    def create_model(name: str, **kw: Any) -> torch.nn.Module:
        extra = TINY_VIT if name.startswith(("vit_", "deit_")) else {}
        return real(name, **{**extra, **kw})

    monkeypatch.setattr(timm, "create_model", create_model)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A Hugging Face ViT classifier saved to a folder, as a downloaded one would be."""
    d = tmp_path_factory.mktemp("hf_vit")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=3)
    transformers.ViTForImageClassification(config).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """3 classes, 12 training images of 64 px (batches of 6 always mix classes: every image has
    negatives), 6 val images, 1:1, 4:3 or 3:4 (64 x 85)."""
    return synthetic.make_imagenet(tmp_path_factory.mktemp("real") / "im", classes=3, train_per_class=4,
                                   val_per_class=2, image_size=64, seed=0)


def _non_square(data: Path) -> Path:
    from PIL import Image

    return next(p for p in sorted((data / "val").glob("*.JPEG")) if len(set(Image.open(p).size)) == 2)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.arch.split(":")[-1].strip("{}"))
def test_real_model_end_to_end(case: Case, data: Path, hf_dir: Path, tiny_timm: None, tmp_path: Path,
                               capsys) -> None:
    arch = case.arch.format(hf=hf_dir)
    # gridcam layers: the default CAM layer and its reshape
    assert cli_main(["layers", "-a", arch, "--num-classes", "3"]) == 0
    out = capsys.readouterr().out
    assert f"default CAM layer: {case.layer}" + (f" (reshape {case.reshape})" if case.reshape else ";") in out
    assert re.search(rf"^\* {re.escape(case.layer)} ", out, re.M)
    assert ("inputs resized to" in out.splitlines()[0]) == case.fixed

    # one epoch of Grad-CAM consistency training: the GC loss is > 0
    run = tmp_path / "run"
    rc = cli_main(["train", "imagenet", str(data), "-a", arch, "--epochs", "1", "--lambda", "25", "-b", "6",
                   "-j", "0", "--image-size", str(case.size), "--lr", "0.01", "--seed", "0",
                   "--save-dir", str(run), "--device", "cpu"])
    io = capsys.readouterr()
    assert rc == 0, io.err
    printed = float(re.search(r"^epoch 1: .* gc (\S+)", io.out, re.M).group(1))  # the epoch line (stdout)
    logged = json.loads((run / "train_log.jsonl").read_text().splitlines()[0])["train"]["gc_loss"]
    assert printed > 1e-6 and logged > 1e-6, io.err
    assert "all-zero" not in io.err and "Traceback" not in io.err
    ckpt = run / "model_best.pth.tar"
    assert torch.load(ckpt, weights_only=True)["cam_layer"] == case.layer

    # evaluation on images of 76 x 101 / 101 x 76 / 76 x 76 (no side a multiple of 8): every pair scored
    result = tmp_path / "r.json"
    rc = cli_main(["evaluate", "imagenet", str(data), "--checkpoint", str(ckpt), "--input-resize", RESIZE,
                   "-j", "0", "-b", "2", "--quiet", "--output", str(result)])
    io = capsys.readouterr()
    assert rc == 0, io.err
    gradcam = json.loads(result.read_text())["metrics"]["gradcam"]
    # every pair is scored, or skipped because its map is zero (mobilenet_v3_small: a 3 x 4 map
    # of a model trained for 2 steps can be negative everywhere)
    assert gradcam["evaluated"] + gradcam["skipped"] == 6 and gradcam["evaluated"] >= 4, gradcam
    assert set(gradcam["skipped_reasons"]) <= {"zero_heatmap"} and "Traceback" not in io.err

    # explain one non-square image
    rc = cli_main(["explain", str(_non_square(data)), "--checkpoint", str(ckpt), "--input-resize", RESIZE,
                   "--out", str(tmp_path / "ex"), "--device", "cpu"])
    io = capsys.readouterr()
    assert rc == 0 and "warning" not in io.err, io.err
    assert len(list((tmp_path / "ex" / "overlays").glob("*.png"))) == 1


# ------------------------------------------------------------------ ViTs take images of any size
def test_patch_multiple_rounds_each_side_to_whole_patches() -> None:
    assert patch_multiple(85, 64, 16) == (80, 64)
    assert patch_multiple(44, 59, 8) == (48, 56)
    assert patch_multiple(76, 101, 8) == (80, 104)
    assert patch_multiple(3, 200, 16) == (16, 208)  # at least one patch
    assert patch_multiple(224, 224, 16) == (224, 224)


@pytest.mark.parametrize("arch, prefix", [("timm:vit_tiny_patch16_224", 1),
                                          ("timm:deit_tiny_distilled_patch16_224", 2)])
def test_timm_vit_explains_any_size_as_the_resized_image(arch: str, prefix: int, tiny_timm: None) -> None:
    """85 x 64 (not a multiple of 8 px) used to fail in timm's patch embedding; the map is now the
    map of the image resized to 88 x 64, an 11 x 8 grid covering the whole image."""
    torch.manual_seed(0)
    b = models.build(arch, num_classes=3)
    assert b.info.patch == 8 and not b.info.fixed_input and str(b.reshape) == f"vit:{prefix}"
    assert b.model.dynamic_img_size  # position embeddings interpolated by timm
    model = b.model.eval()
    x, t = torch.randn(1, 3, 85, 64), torch.tensor([[1]])
    heat, logits = cam.explain("gradcam", model, b.cam_layer, x, t)
    assert heat.shape == (1, 1, 11, 8)
    snapped = F.interpolate(x, size=(88, 64), mode="bilinear", align_corners=False, antialias=True)
    heat2, logits2 = cam.explain("gradcam", model, b.cam_layer, snapped, t)
    torch.testing.assert_close(heat, heat2)
    torch.testing.assert_close(logits, logits2)
    # a size of whole patches is not touched
    y = torch.randn(1, 3, 48, 40)
    with cam.capture(b.cam_layer) as f:
        model(y)
    assert f.output.shape[-2:] == (6, 5)


def test_hf_vit_no_longer_drops_the_last_pixels(hf_dir: Path) -> None:
    """A Hugging Face ViT's convolution would drop the last 85 % 8 = 5 rows; the map covers them."""
    b = models.build(f"hf:{hf_dir}", num_classes=2)
    assert b.info.patch == 8 and b.input_size == 32  # config.image_size: no preprocessor file
    x = torch.randn(1, 3, 85, 64)
    heat, _ = cam.explain("gradcam", b.model.eval(), b.cam_layer, x, torch.tensor([[0]]))
    assert heat.shape == (1, 1, 11, 8)


def test_fixed_size_vit_maps_back_over_the_whole_image() -> None:
    """torchvision's ViT (fixed 32 px): any input is resized to 32 x 32, the 4 x 4 map covers it all."""
    b = models.build("anymodel_nets:torchvision_vit", num_classes=2)
    assert b.info.fixed_input  # the resize to 32 x 32 comes first: whole patches already
    x = torch.randn(1, 3, 85, 64)
    torch.nn.init.normal_(b.model.heads.head.weight)  # its head starts at zero: no gradient at all
    heat, _ = cam.explain("gradcam", b.model.eval(), b.cam_layer, x, torch.tensor([[0]]))
    assert heat.shape == (1, 1, 4, 4) and heat.sum() > 0
