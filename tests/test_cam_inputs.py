"""``cam.explain``'s arguments as a newcomer passes them: each mistake is one GridcamError line
naming the argument and what to pass; what is unambiguous (numpy, one (C,H,W) image, a dotted
layer path, float64 into a float32 model, a half model) just works; a model in train mode is
left exactly as it was."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from gridcam import cam, models
from gridcam.errors import GridcamError


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create("tiny_resnet", num_classes=3).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


Y = torch.tensor([0, 2])


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and isinstance(exc.value, GridcamError)
    return msg


# ------------------------------------------------------------------------------------- layer
def test_layer_as_module_or_dotted_path_by_position_or_keyword(model, x):
    ref, _ = cam.explain("gradcam", model, model.layer3, x, Y)
    for got in (cam.explain("gradcam", model, x, Y, layer=model.layer3),
                cam.explain("gradcam", model, "layer3", x, Y),
                cam.explain("gradcam", model, images=x, targets=Y, layer="layer3"),
                cam.explain("gradcam", model, x, Y, layer="-4")):     # negative index: layer3
        torch.testing.assert_close(got[0], ref)


def test_layer_mistakes_are_one_line(model, x):
    with pytest.raises(GridcamError) as e:
        cam.explain("gradcam", model, "layer9", x, Y)
    assert _one_line(e).startswith("explain('gradcam'): no layer 'layer9' in WidthResNet: WidthResNet has "
                                "no 'layer9' (it has: conv1, bn1, ")
    with pytest.raises(GridcamError) as e:
        cam.explain("gradcam", model, model.layer3, x, Y, layer=model.layer4)
    assert _one_line(e) == "explain('gradcam'): layer given twice, by position and as layer=; pass it once"
    with pytest.raises(GridcamError) as e:
        cam.explain("gradcam", model, x, Y, layer=3)
    assert "layer must be a module of the model or a dotted path such as 'layer4', got a builtins.int" in _one_line(e)
    other = models.create("tiny_resnet", num_classes=3).eval()
    with pytest.raises(GridcamError, match=r"^the CAM layer Sequential produced no tensor"):
        cam.explain("gradcam", model, other.layer3, x, Y)


# ---------------------------------------------------------------------------------- keywords
def test_misspelt_keywords_name_the_closest(model, x):
    with pytest.raises(GridcamError) as e:
        cam.explain("gradcam", model, x, target=Y)
    assert _one_line(e).startswith("explain('gradcam'): unknown keyword target=; did you mean targets=?")
    with pytest.raises(GridcamError) as e:
        cam.explain("smoothgrad", model, x, Y, sampels=4)
    assert _one_line(e).endswith("; did you mean samples= for sampels=?")
    with pytest.raises(GridcamError) as e:
        cam.explain("gradcan", model, x, Y)
    assert _one_line(e).startswith("unknown explanation method 'gradcan' (did you mean 'gradcam'?); choose one of: ")
    with pytest.raises(GridcamError) as e:
        cam.explain("gradcam", model, x, Y, None)
    assert "got 3 positional arguments after model" in _one_line(e)
    with pytest.raises(GridcamError) as e:
        cam.explain("gradcam", x, model, Y)
    assert "model must be a torch.nn.Module (the classifier), got a torch.float32 tensor" in _one_line(e)


# ------------------------------------------------------------------------------------ images
def test_numpy_and_one_chw_image_work(model, x):
    ref, logits = cam.explain("gradcam", model, x, Y)
    heat, _ = cam.explain("gradcam", model, x.numpy(), Y.numpy())
    torch.testing.assert_close(heat, ref)
    heat, lg = cam.explain("gradcam", model, x[1], 2)              # (C,H,W) + an int target
    assert heat.shape == (1, *ref.shape[1:]) and lg.shape == (1, 3)
    torch.testing.assert_close(heat[0], ref[1])
    heat, _ = cam.explain("gradcam", model, x.double(), [0, 2])     # float64 cast to the model's
    torch.testing.assert_close(heat, ref)


@pytest.mark.parametrize("images, message", [
    (lambda x: x.permute(0, 2, 3, 1), "images= has shape (2, 32, 32, 3) but the model's first "
     "convolution takes 3 channels; channels last (B,H,W,C): pass images.permute(0, 3, 1, 2)"),
    (lambda x: x[0].permute(1, 2, 0), "images= has shape (32, 32, 3): one H x W x C image "
     "(channels last); pass images.permute(2, 0, 1)[None], a (1,3,H,W) batch"),
    (lambda x: x[:, :1], "images= has shape (2, 1, 32, 32) but the model's first convolution takes "
     "3 channels; grey images: pass images.expand(-1, 3, -1, -1)"),
    (lambda x: x[0, 0], "images= has shape (32, 32) (2-D); pass a float tensor (B,3,H,W)"),
    (lambda x: (x * 40 + 128).clamp(0, 255).to(torch.uint8), "images= is torch.uint8; 0..255 pixels? "
     "explain takes float images normalised as the model was trained"),
    (lambda x: x.where(torch.arange(32) != 5, torch.nan), "images= contain 192 NaN and 0 infinite "
     "values (the first in image 0); explain needs finite normalised images"),
    (lambda x: x.where(torch.arange(2)[:, None, None, None] != 1, torch.inf),
     "images= contain 0 NaN and 3072 infinite values (the first in image 1)"),
    (lambda x: x[:0], "images= has shape (0, 3, 32, 32): no pixels to explain"),
    (lambda x: [[1.0]], "images= must be a float tensor (B,3,H,W) of normalised images"),
])
def test_image_mistakes_are_one_line(model, x, images, message):
    with pytest.raises(GridcamError) as e:
        cam.explain("gradcam", model, images(x), Y)
    assert message in _one_line(e)


def test_targets_mistakes_are_one_line(model, x):
    for targets, message in [
        (torch.tensor([0.0, 1.0]), "targets= is torch.float32; pass integer class indices (targets.long())"),
        (torch.tensor([0, 1, 2]), "targets= has shape (3,); pass (2,) or (2,T): one row per image"),
        (torch.tensor([0, -1]), "targets= contain -1; class indices start at 0"),
        (torch.tensor([0, 5]), "targets must lie in [0, 3), got values in [0, 5]"),
        ([[0], [1, 2]], "targets= is a ragged list"),
    ]:
        with pytest.raises(GridcamError) as e:
            cam.explain("gradcam", model, x, targets)
        assert message in _one_line(e)


def test_images_on_another_device_than_the_model(x):
    model = models.create("tiny_resnet", num_classes=3).eval().to("meta")
    with pytest.raises(GridcamError) as e:
        cam.explain("gradcam", model, x, Y)
    assert _one_line(e) == "images= are on cpu but the model is on meta; pass images.to('meta')"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_models_get_float_inputs_cast(model, x, dtype):
    half = models.create("tiny_resnet", num_classes=3).eval()
    half.load_state_dict(model.state_dict())
    heat, logits = cam.explain("gradcam", half.to(dtype), x, Y)
    ref, _ = cam.explain("gradcam", model, x, Y)
    assert heat.dtype == torch.float32 and logits.dtype == dtype
    torch.testing.assert_close(heat, ref, atol=0.05 * float(ref.max()), rtol=0.1)


# -------------------------------------------------------------------------------- train mode
@pytest.mark.parametrize("method, opts", [("gradcam", {}), ("gradient", {}),
                                          ("rise", {"num_masks": 8}), ("excitation_backprop", {})])
def test_train_mode_leaves_every_buffer_as_it_was(method, opts, x):
    torch.manual_seed(0)
    model = models.create("tiny_resnet", num_classes=3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    objects = {k: v for k, v in model.named_buffers()}
    with pytest.warns(UserWarning, match="train mode"):
        cam.explain(method, model, x, Y, **opts)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), [
        k for k in before if not torch.equal(before[k], after[k])]
    assert all(v is objects[k] for k, v in model.named_buffers())
    assert model.training and all(m.training for m in model.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.eval()
        cam.explain(method, model, x, Y, **opts)


def test_buffers_are_put_back_after_an_exception(x):
    model = models.create("tiny_resnet", num_classes=3).train()
    before = model.bn1.num_batches_tracked.clone()
    with pytest.raises(RuntimeError, match="boom"), cam.inputs.buffers_kept(model):
        model(x)
        raise RuntimeError("boom")
    assert torch.equal(model.bn1.num_batches_tracked, before)
