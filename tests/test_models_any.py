"""Any model with its CAM layer: dotted paths, token reshape, ViT training step, GMP swap, CLI.

The outside models are the small ones in ``anymodel_nets.py`` (``-a anymodel_nets:FACTORY``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import anymodel_nets as nets
from gridcam import cam, grid, models
from gridcam.models.reshape import ChannelsLast, GridTap, TokenGrid, parse_reshape
from gridcam.cli import main as cli_main
from gridcam.data import synthetic
from gridcam.training.steps import gc_step
from gridcam.errors import GridcamError

VIT = "anymodel_nets:tiny_vit"
VIT_FIXED = "anymodel_nets:tiny_vit_fixed"
CNN = "anymodel_nets:odd_cnn"


# ------------------------------------------------------------------------------ layer lookup
def test_dotted_path_and_negative_index() -> None:
    model = nets.tiny_vit(3)
    assert models.get_layer(model, "blocks.-1.norm1") is model.blocks[1].norm1
    assert models.get_layer(model, "blocks.0") is model.blocks[0]
    cnn = nets.odd_cnn(3)
    assert models.cam_layer(cnn, "trunk.stage_a.0") is cnn.trunk["stage_a"][0]


def test_wrong_layer_path_is_one_clear_line() -> None:
    with pytest.raises(GridcamError) as exc:
        models.build(CNN, num_classes=3, cam_layer="trunk.stage_c")
    msg = str(exc.value)
    assert "no layer 'trunk.stage_c'" in msg and "stage_a" in msg and "\n" not in msg


def test_defaults_for_cnn_vit_and_builtin() -> None:
    b = models.build(CNN, num_classes=3)
    assert b.cam_layer_name == "trunk.stage_b" and b.reshape is None and not b.info.fixed_input
    assert b.mean == (0.485, 0.456, 0.406) and b.input_size == 224
    v = models.build(VIT, num_classes=3)
    assert v.cam_layer_name == "blocks.1.norm1"
    assert v.reshape == TokenGrid(prefix=1, stride=8) and str(v.reshape) == "vit:1"
    assert v.mean == (0.5, 0.5, 0.5) and v.input_size == 32 and not v.info.fixed_input
    assert models.build(VIT_FIXED, num_classes=3).info.fixed_input
    r = models.build("tiny_resnet", num_classes=3)
    assert r.cam_layer is r.model.layer4 and r.cam_layer_name == "layer4"
    # the public API of DESIGN.md is unchanged for built-ins
    assert models.cam_layer(models.create("resnet18", num_classes=2)).__class__ is nn.Sequential


def test_create_records_the_layer_for_cam_layer() -> None:
    model = models.create(VIT, num_classes=3)
    tap = models.cam_layer(model)
    assert isinstance(tap, GridTap) and tap.source == "blocks.1.norm1" and str(tap.rule) == "vit:1"
    assert models.info(model).reshape == TokenGrid(prefix=1, stride=8)
    assert list(model.state_dict()) == list(nets.tiny_vit(3).state_dict())  # keys unchanged


def test_layer_whose_output_is_not_a_grid() -> None:
    with pytest.raises(GridcamError, match=r"layer 'head' \(Linear\) outputs \(1, 3\), which cannot be made"):
        models.build(VIT, num_classes=3, cam_layer="head")
    with pytest.raises(GridcamError, match="no layer whose output can be a"):
        models.build("anymodel_nets:mlp", num_classes=3)
    with pytest.raises(GridcamError, match="needs a \\(B,N,D\\) token output"):
        models.build(CNN, num_classes=3, reshape="vit")


def test_bad_factories() -> None:
    with pytest.raises(GridcamError, match="not a torch.nn.Module"):
        models.build("anymodel_nets:not_a_model", num_classes=3)
    with pytest.raises(GridcamError, match="has no callable 'nope'"):
        models.build("anymodel_nets:nope", num_classes=3)
    with pytest.raises(GridcamError, match="cannot import no_such_module_xyz"):
        models.build("no_such_module_xyz:f", num_classes=3)


def test_factory_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "mynet.py").write_text(
        "from torch import nn\n"
        "def build(num_classes):\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),"
        " nn.Linear(4, num_classes))\n")
    b = models.build(f"{tmp_path / 'mynet.py'}:build", num_classes=2)
    assert b.cam_layer_name == "1"  # the ReLU after the conv: the last spatial map


# ------------------------------------------------------------------------------ reshape rules
def test_token_grid_exact_fold_and_restore() -> None:
    # 1 class token + a 2x3 patch grid (16x24 input, 8 px patches), 2 channels
    x = torch.arange(14, dtype=torch.float32).view(1, 7, 2)
    rule = TokenGrid(prefix=1, stride=8, input_hw=(16, 24))
    g, restore = rule.to_grid(x)
    assert g.shape == (1, 2, 2, 3)
    assert g[0, 0].tolist() == [[2, 4, 6], [8, 10, 12]]  # channel 0 of tokens 1..6, row-major
    assert g[0, 1].tolist() == [[3, 5, 7], [9, 11, 13]]
    assert torch.equal(restore(g), x)
    assert TokenGrid().grid_size(17) == (1, 4, 4) and TokenGrid().grid_size(198) == (2, 14, 14)
    with pytest.raises(GridcamError, match="cannot fold 7 tokens"):
        TokenGrid(prefix=0).grid_size(7)


def test_parse_reshape() -> None:
    assert parse_reshape("none") is None and parse_reshape(None) is None
    assert parse_reshape("vit") == TokenGrid() and parse_reshape("vit:2") == TokenGrid(prefix=2)
    assert isinstance(parse_reshape("nhwc"), ChannelsLast)
    with pytest.raises(GridcamError, match="unknown reshape rule 'bogus'"):
        parse_reshape("bogus")


def test_channels_last_capture_matches_nchw() -> None:
    torch.manual_seed(0)
    conv, fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 3)

    class NHWC(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return conv(x).permute(0, 2, 3, 1)

    body = NHWC()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    with cam.capture(body, reshape="nhwc") as f:
        logits = fc(body(x).mean(dim=(1, 2)))
    heat = cam.grad_cam(logits, f.output, t)
    with cam.capture(conv) as f2:
        ref_logits = fc(conv(x).mean(dim=(2, 3)))
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(heat, cam.grad_cam(ref_logits, f2.output, t))


def test_token_reshape_grad_cam_equals_manual_and_keeps_the_forward() -> None:
    torch.manual_seed(0)
    b = models.build(VIT, num_classes=3)
    model, layer = b.model.eval(), b.cam_layer
    x, t = torch.randn(2, 3, 32, 48), torch.tensor([1, 2])  # non-square: a 4x6 grid
    plain = model(x)
    with cam.capture(layer) as f:
        logits = model(x)
    assert f.output.shape == (2, 32, 4, 6)
    torch.testing.assert_close(logits, plain)
    heat = cam.grad_cam(logits, f.output, t, normalize=None)
    raw_layer = models.get_layer(model, "blocks.1.norm1")
    with cam.capture(raw_layer) as raw:  # by hand: gradient w.r.t. the raw tokens
        logits2 = model(x)
    g = torch.autograd.grad(logits2.gather(1, t[:, None]).sum(), raw.output)[0]
    fold = lambda z: z[:, 1:].transpose(1, 2).reshape(2, 32, 4, 6)  # noqa: E731
    ref = torch.relu((fold(g) * fold(raw.output)).sum(1))
    torch.testing.assert_close(heat, ref.detach())
    assert heat.sum() > 0
    # a plain (unbuilt) model: the same rule given to capture()
    plain_model = nets.tiny_vit(3).eval()
    plain_model.load_state_dict(model.state_dict())
    with cam.capture(plain_model.blocks[1].norm1, reshape="vit:1") as f3:
        logits3 = plain_model(x[:, :, :, :32])
    assert f3.output.shape == (2, 32, 4, 4)
    torch.testing.assert_close(cam.grad_cam(logits3, f3.output, t), cam.grad_cam(*_tap(b, x[:, :, :, :32]), t))


def _tap(b: models.BuiltModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with cam.capture(b.cam_layer) as f:
        logits = b.model(x)
    return logits, f.output


# ------------------------------------------------------------------------ training on the ViT
@pytest.mark.parametrize("arch, composite_map", [(VIT, (8, 8)), (VIT_FIXED, (4, 4))])
def test_consistency_loss_and_one_training_step_on_vit(arch: str, composite_map: tuple) -> None:
    torch.manual_seed(0)
    b = models.build(arch, num_classes=4)
    model, layer = b.model.train(), b.cam_layer
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    quads = torch.tensor([0, 1, 2, 3])
    composite = grid.compose(x, torch.stack([x.roll(i, 0) for i in (1, 2, 3)], 1), quads)
    with cam.capture(layer) as f:
        u = cam.grad_cam(model(composite), f.output, y, create_graph=True)
    # dynamic position embeddings: the 64 px composite gives the 2h x 2w map; a fixed-size
    # ViT sees the composite resized to 32 px, a 4x4 map compared at pixel resolution
    assert tuple(u.shape[-2:]) == composite_map
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.blocks[0].qkv.weight.detach().clone()
    res = gc_step(model, layer, x, y, lam=5.0, quadrants=quads, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(res.loss) and res.gc_loss > 0
    opt.zero_grad()
    res.loss.backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, model.blocks[0].qkv.weight)


def test_gc_loss_reaches_the_model_through_the_heatmap() -> None:
    """d L_gc / d params is non-zero with the classification loss switched off."""
    torch.manual_seed(1)
    b = models.build(VIT, num_classes=4)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    res = gc_step(b.model.train(), b.cam_layer, x, y, lam=1.0, quadrants=torch.tensor([0, 1, 2, 3]),
                  generator=torch.Generator().manual_seed(0))
    grads = torch.autograd.grad(res.loss - res.cls_loss, b.model.blocks[0].qkv.weight)
    assert grads[0].abs().sum() > 0


def test_training_through_fused_attention_uses_the_math_kernel() -> None:
    """PyTorch's fused attention has no second derivative; built models train with the math one."""
    torch.manual_seed(0)
    x, y, quads = torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), torch.tensor([0, 3])
    plain = nets.tiny_vit_sdpa(2).train()
    with pytest.raises(RuntimeError, match="derivative for .* is not implemented"):
        _sdpa_double_backward(plain, x, y)
    b = models.build("anymodel_nets:tiny_vit_sdpa", num_classes=2)
    res = gc_step(b.model.train(), b.cam_layer, x, y, lam=1.0, quadrants=quads,
                  generator=torch.Generator().manual_seed(0))
    res.loss.backward()
    assert torch.isfinite(res.loss) and b.model.blocks[0].qkv.weight.grad.abs().sum() > 0
    b.model.eval()  # evaluation keeps the fused kernel: one backward works, and the mode is restored
    logits, grid_ = _tap(b, x)
    assert cam.grad_cam(logits, grid_, y).shape == (2, 4, 4)
    # the plain step (lambda = 0, no hook on the CAM layer) keeps the fused kernel too
    kernels = []
    orig = torch.nn.functional.scaled_dot_product_attention

    def spy(*a, **k):
        kernels.append(torch.backends.cuda.flash_sdp_enabled())
        return orig(*a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
        gc_step(b.model.train(), b.cam_layer, x, y, lam=0.0)
        gc_step(b.model, b.cam_layer, x, y, lam=1.0, quadrants=quads)
    assert kernels == [True, True] + [False] * 4  # 2 blocks: plain step, then 2 forwards of the GC step
    assert torch.backends.cuda.flash_sdp_enabled()  # restored


def _sdpa_double_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    with cam.capture(model.blocks[1].norm1, reshape="vit:1") as f:
        logits = model(x)
    cam.grad_cam(logits, f.output, y, create_graph=True).sum().backward()


# --------------------------------------------------------------------------------------- GMP
def test_gmp_swap_and_refusal() -> None:
    b = models.build(CNN, num_classes=3, pooling="max")
    assert isinstance(b.model.head[0], nn.AdaptiveMaxPool2d)
    x = torch.randn(1, 3, 16, 16)
    feats = x
    for stage in b.model.trunk.values():
        feats = stage(feats)
    torch.testing.assert_close(b.model(x), b.model.head[2](feats.amax(dim=(2, 3))))
    with pytest.raises(GridcamError, match=r"--maxpool \(GMP\) needs a head of global average pooling"):
        models.build(VIT, num_classes=3, pooling="max")


# ------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_for_an_outside_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nets.tiny_vit(5)
    path = tmp_path / "vit.pth"
    torch.save({"state_dict": model.state_dict(), "arch": VIT}, path)
    loaded, meta = models.create_from_checkpoint(path)
    assert meta["arch"] == VIT and loaded.head.out_features == 5
    assert models.cam_layer(loaded).source == "blocks.1.norm1"
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))
    built = models.build(VIT, num_classes=5, checkpoint=path, cam_layer="blocks.0.norm2")
    assert built.cam_layer.source == "blocks.0.norm2" and built.cam_layer_name == "blocks.0.norm2"


# ------------------------------------------------------------------------------------ the CLI
def test_cli_layers_lists_shapes_and_marks_the_default(capsys) -> None:
    assert cli_main(["layers", "-a", VIT]) == 0
    out = capsys.readouterr().out
    assert "* blocks.1.norm1  LayerNorm   (1, 17, 32)    vit:1 -> (32, 4, 4)" in out
    assert "patch_embed" in out and "head" not in out.split("default")[0]
    assert cli_main(["layers", "-a", CNN, "--input-size", "64", "--all"]) == 0
    out = capsys.readouterr().out
    assert "* trunk.stage_b" in out and "(1, 24, 8, 8)" in out and "head.2" in out
    assert cli_main(["layers", "-a", "anymodel_nets:nope"]) == 2
    assert "has no callable 'nope'" in capsys.readouterr().err


def test_cli_evaluate_a_vit_end_to_end(tmp_path: Path, capsys) -> None:
    root = synthetic.make_imagenet(tmp_path / "im", classes=3, train_per_class=1, val_per_class=2,
                                   image_size=64, seed=1)
    torch.manual_seed(0)
    ckpt = tmp_path / "vit.pth.tar"
    torch.save({"state_dict": nets.tiny_vit(3).state_dict(), "arch": VIT, "epoch": 1}, ckpt)
    rc = cli_main(["evaluate", "imagenet", str(root), "--checkpoint", str(ckpt), "--input-resize", "48",
                   "-j", "0", "-b", "2", "--quiet", "--output", str(tmp_path / "r.json")])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["images"]["evaluated"] == 6 and res["config"]["arch"] == VIT
    assert res["metrics"]["gradcam"]["evaluated"] == 6
    assert 0 <= res["metrics"]["gradcam"]["content_heatmap"] <= 100


def test_checkpoint_records_the_cam_layer_and_reshape(tmp_path: Path) -> None:
    b = models.build(VIT, num_classes=3, cam_layer="blocks.0.norm2", reshape="vit:1")
    record = b.info.as_dict()
    assert record == {"arch": VIT, "cam_layer": "blocks.0.norm2", "reshape": "vit:1", "mean": [0.5] * 3,
                      "std": [0.5] * 3, "input_size": 32, "fixed_input": False}
    path = tmp_path / "ck.pth"
    torch.save({"state_dict": b.model.state_dict(), **record}, path)
    loaded, _ = models.create_from_checkpoint(path)
    assert models.info(loaded).as_dict() == record
    loaded, _ = models.create_from_checkpoint(path, cam_layer="blocks.1.norm1", mean="0,0,0")  # flags win
    assert models.info(loaded).cam_layer == "blocks.1.norm1" and models.info(loaded).mean == (0, 0, 0)


def test_normalisation_constants_and_overrides() -> None:
    assert models.input_config(VIT) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 32)
    assert models.input_config(CNN, mean="0.1,0.2,0.3", input_size=64) == (
        (0.1, 0.2, 0.3), (0.229, 0.224, 0.225), 64)
    assert models.input_config("resnet18") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224)
    assert models.build(VIT, num_classes=2, std=[1, 2, 3]).std == (1.0, 2.0, 3.0)
    with pytest.raises(GridcamError, match="--std must be three numbers > 0, got '1,0,1'"):
        models.build(VIT, num_classes=2, std="1,0,1")
    with pytest.raises(GridcamError, match="--mean must be three numbers like"):
        models.input_config(VIT, mean="a,b,c")
