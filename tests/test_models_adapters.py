"""The ``torchvision:``, ``timm:`` and ``hf:`` adapters, with stand-in packages in ``sys.modules``.

The last tests build real torchvision/timm models at their full size where those packages import
(skipped where they do not); tests/test_models_real.py runs small ones through the whole CLI.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
import torch
from torch import nn

import anymodel_nets as nets
from gridcam import cam, models
from gridcam.models.reshape import TokenGrid
from gridcam.training.steps import gc_step
from gridcam.errors import GridcamError


def _module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


# ---------------------------------------------------------------------------------------- timm
@pytest.fixture
def fake_timm(monkeypatch) -> list[dict]:
    calls: list[dict] = []

    def create_model(name: str, pretrained: bool = False, num_classes: int = 1000, **kw: Any) -> nn.Module:
        calls.append({"name": name, "pretrained": pretrained, "num_classes": num_classes, **kw})
        if name.startswith("vit"):
            model = nets.tiny_vit(num_classes)
            model.feature_info = [{"module": "blocks.0"}, {"module": "blocks.1"}]
            model.num_prefix_tokens = 1
            return model
        if "dynamic_img_size" in kw:
            raise TypeError("__init__() got an unexpected keyword argument 'dynamic_img_size'")
        if kw.get("global_pool") == "max":
            raise AssertionError("max pooling not supported")
        model = nets.odd_cnn(num_classes)
        model.feature_info = [{"module": "trunk.stem"}, {"module": "trunk.stage_a"}]
        model.pretrained_cfg = {"mean": (0.1, 0.2, 0.3), "std": (1.0, 1.0, 1.0), "input_size": (3, 40, 40)}
        return model

    monkeypatch.setitem(sys.modules, "timm", _module("timm", create_model=create_model))
    return calls


def test_timm_vit_is_built_dynamic_with_its_config(fake_timm) -> None:
    b = models.build("timm:vit_tiny", num_classes=4)
    assert fake_timm[0] == {"name": "vit_tiny", "pretrained": False, "num_classes": 4, "dynamic_img_size": True}
    # feature_info names the last block; its pre-attention norm is the CAM layer
    assert b.cam_layer_name == "blocks.1.norm1" and b.reshape == TokenGrid(prefix=1, stride=8)
    assert b.mean == (0.5, 0.5, 0.5) and b.input_size == 32 and not b.info.fixed_input


def test_timm_cnn_uses_feature_info_and_pretrained_cfg(fake_timm) -> None:
    b = models.build("timm:odd", num_classes=3)
    assert [c.get("dynamic_img_size") for c in fake_timm] == [True, None]  # retried without it
    assert b.cam_layer_name == "trunk.stage_a" and b.reshape is None
    assert b.mean == (0.1, 0.2, 0.3) and b.input_size == 40
    b2 = models.build("timm:odd", num_classes=3, mean=(0.0, 0.0, 0.0), input_size=48)
    assert b2.mean == (0.0, 0.0, 0.0) and b2.std == (1.0, 1.0, 1.0) and b2.input_size == 48


def test_timm_max_pooling_is_asked_of_timm(fake_timm) -> None:
    with pytest.raises(GridcamError, match=r"timm:odd cannot use global max pooling \(--maxpool\)"):
        models.build("timm:odd", num_classes=3, pooling="max")
    models.build("timm:vit_x", num_classes=3, pooling="max")
    assert fake_timm[-1]["global_pool"] == "max"


def test_missing_package_is_one_line(monkeypatch) -> None:
    for pkg, prefix in (("timm", "timm"), ("torchvision", "torchvision"), ("transformers", "hf")):
        monkeypatch.setitem(sys.modules, pkg, None)  # import raises ImportError
        with pytest.raises(GridcamError) as exc:
            models.build(f"{prefix}:x", num_classes=2)
        msg = str(exc.value)
        assert f"needs the {pkg} package" in msg and f"pip install {pkg}" in msg and "\n" not in msg


# --------------------------------------------------------------------------------- torchvision
def test_torchvision_get_model(monkeypatch) -> None:
    seen: dict = {}

    def get_model(name: str, weights: Any = None, num_classes: int = 1000) -> nn.Module:
        seen.update(name=name, weights=weights, num_classes=num_classes)
        if name != "odd":
            raise ValueError(f"Unknown model {name}")
        return nets.odd_cnn(num_classes)

    tv = _module("torchvision", models=types.SimpleNamespace(get_model=get_model))
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    b = models.build("torchvision:odd", num_classes=6, pooling="max")
    assert seen == {"name": "odd", "weights": None, "num_classes": 6}
    assert isinstance(b.model.head[0], nn.AdaptiveMaxPool2d) and b.cam_layer_name == "trunk.stage_b"
    assert b.mean == (0.485, 0.456, 0.406)
    with pytest.raises(GridcamError, match="torchvision has no model 'nope'"):
        models.build("torchvision:nope", num_classes=2)


# ---------------------------------------------------------------------------------- Hugging Face
class _HFViT(nn.Module):
    """Stands in for a transformers image classifier: keyword input, an output with ``.logits``."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.vit = nets.TinyViT(config.num_labels, dynamic=False)
        self.seen: list[bool] = []

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> Any:
        self.seen.append(interpolate_pos_encoding)
        self.vit.dynamic = interpolate_pos_encoding
        return types.SimpleNamespace(logits=self.vit(pixel_values))


@pytest.fixture
def fake_transformers(monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")

    class AutoConfig:
        @staticmethod
        def from_pretrained(name: str, local_files_only: bool = False) -> Any:
            assert local_files_only
            if name != str(tmp_path):
                raise OSError(f"{name} is not a local folder")
            return types.SimpleNamespace(num_labels=2)

    class AutoModelForImageClassification:
        @staticmethod
        def from_pretrained(name: str, **kw: Any) -> nn.Module:
            assert kw["local_files_only"]
            raise OSError("no weights file")

        @staticmethod
        def from_config(config: Any) -> nn.Module:
            return _HFViT(config)

    class AutoImageProcessor:
        @staticmethod
        def from_pretrained(name: str, local_files_only: bool = False) -> Any:
            return types.SimpleNamespace(image_mean=[0.5] * 3, image_std=[0.5] * 3, size={"height": 32})

    tf = _module("transformers", AutoConfig=AutoConfig, AutoImageProcessor=AutoImageProcessor,
                 AutoModelForImageClassification=AutoModelForImageClassification)
    monkeypatch.setitem(sys.modules, "transformers", tf)
    return tmp_path


def test_hf_local_model_is_wrapped(fake_transformers) -> None:
    b = models.build(f"hf:{fake_transformers}", num_classes=5)
    assert b.cam_layer_name == "model.vit.blocks.1.norm1" and str(b.reshape) == "vit:1"
    assert b.mean == (0.5, 0.5, 0.5) and b.input_size == 32
    assert not b.info.fixed_input  # called with interpolate_pos_encoding=True
    assert set(b.model.model.seen) == {True}
    assert next(iter(b.model.state_dict())).startswith("model.vit.")
    x = torch.randn(2, 3, 64, 64)
    with cam.capture(b.cam_layer) as f:
        logits = b.model(x)
    assert logits.shape == (2, 5) and f.output.shape == (2, 32, 8, 8)


def test_hf_never_downloads(fake_transformers) -> None:
    with pytest.raises(GridcamError, match="gridcam does not download"):
        models.build("hf:google/vit-base-patch16-224", num_classes=5)


# ------------------------------------------------------------------ real packages, full size
def _real(package: str) -> Any:
    try:
        return __import__(package)
    except Exception as exc:  # ImportError, or OSError from CUDA-linked wheels on CPU machines
        pytest.skip(f"{package} cannot be imported here: {type(exc).__name__}")


@pytest.mark.parametrize("arch, layer, reshape", [
    ("torchvision:resnet18", "layer4", None),
    ("torchvision:vit_b_16", "encoder.layers.encoder_layer_11.ln_1", "vit:1"),
    ("torchvision:swin_t", "features", "nhwc"),
    ("timm:resnet18", "layer4", None),
    ("timm:convnext_tiny", "stages.3", None),
    ("timm:vit_tiny_patch16_224", "blocks.11.norm1", "vit:1"),
    ("timm:deit_tiny_distilled_patch16_224", "blocks.11.norm1", "vit:2"),
])
def test_real_packages(arch: str, layer: str, reshape: str | None) -> None:
    _real(arch.split(":")[0])
    torch.manual_seed(0)
    b = models.build(arch, num_classes=3)
    assert b.cam_layer_name == layer and (str(b.reshape) if b.reshape else None) == reshape
    if arch == "torchvision:vit_b_16":  # its head starts at zero: every heatmap would be zero
        torch.nn.init.normal_(b.model.heads.head.weight, std=0.02)
    x, y = torch.randn(2, 3, 224, 224), torch.tensor([0, 2])
    res = gc_step(b.model.train(), b.cam_layer, x, y, lam=1.0, quadrants=torch.tensor([0, 3]),
                  generator=torch.Generator().manual_seed(0))
    res.loss.backward()
    # a zero map gives gc ~7.5e-9 (the paper normalisation's epsilon): "> 0" is not enough
    assert torch.isfinite(res.loss) and res.gc_loss > 1e-6 and not res.zero_maps
