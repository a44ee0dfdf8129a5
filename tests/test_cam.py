"""Tests for gridcam.cam: hooks, Grad-CAM (closed forms on GAP/GMP ResNets), batched targets,
differentiability, normalisation, upsampling and the explain() registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gridcam import cam, models
from gridcam.errors import GridcamError


def _model(pooling: str = "avg", num_classes: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = models.create("tiny_resnet", num_classes=num_classes, pooling=pooling)
    # Random BN statistics/affine so layer4 is not a trivial function of the input.
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.1, 0.3)
    return m.eval()


def _forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with cam.capture(models.cam_layer(model)) as feats:
        logits = model(x)
    return logits, feats.output


# --------------------------------------------------------------------------- capture


def test_capture_holds_layer_output_and_removes_hook():
    model = _model()
    layer = models.cam_layer(model)
    x = torch.randn(2, 3, 64, 64)
    with cam.capture(layer) as feats:
        assert feats.output is None and len(layer._forward_hooks) == 1
        model(x)
    assert len(layer._forward_hooks) == 0
    assert feats.calls == 1
    stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    expected = model.layer4(model.layer3(model.layer2(model.layer1(stem))))
    torch.testing.assert_close(feats.output, expected, rtol=0, atol=0)
    assert feats.output.requires_grad  # still in the graph: grad_cam needs that


def test_capture_removes_hook_when_forward_raises():
    model = _model()
    layer = models.cam_layer(model)
    with pytest.raises(RuntimeError):
        with cam.capture(layer):
            model(torch.randn(2, 4, 64, 64))  # wrong channel count: conv1 raises
    assert len(layer._forward_hooks) == 0

    class Boom(nn.Module):
        def forward(self, x):
            raise ValueError("boom")

    net = nn.Sequential(nn.Identity(), Boom())
    with pytest.raises(ValueError, match="boom"):
        with cam.capture(net[0]) as feats:
            net(torch.ones(1))
    assert feats.calls == 1 and len(net[0]._forward_hooks) == 0  # hook fired, then was removed


def test_capture_works_through_ddp(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = _model()
        ddp = nn.parallel.DistributedDataParallel(model)
        x = torch.randn(2, 3, 64, 64)
        with cam.capture(models.cam_layer(ddp)) as feats:
            logits = ddp(x)
        heat = cam.grad_cam(logits, feats.output, torch.tensor([1, 3]), normalize=None)
        ref_logits, ref_feats = _forward(model, x)
        ref = cam.grad_cam(ref_logits, ref_feats, torch.tensor([1, 3]), normalize=None)
        torch.testing.assert_close(heat, ref)
        assert len(models.cam_layer(model)._forward_hooks) == 0

        # Training through DDP: create_graph + a later backward() reaches the parameters exactly
        # as without the wrapper (world size 1: the all-reduce is the identity).
        import copy

        plain = copy.deepcopy(model).train()
        ddp.train()
        targets = torch.tensor([0, 4])
        for net, layer in ((ddp, models.cam_layer(ddp)), (plain, plain.layer4)):
            with cam.capture(layer) as feats:
                logits = net(x)
            heat = cam.grad_cam(logits, feats.output, targets, create_graph=True)
            (F.cross_entropy(logits, targets) + heat[:, 0, 0].sum()).backward()
        for (name, p), q in zip(model.named_parameters(), plain.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=name)
        assert model.layer1[0].conv1.weight.grad.abs().sum() > 0
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("variant", ["elementwise", "classic"])
def test_gradcam_gap_resnet_equals_cam_from_fc_weights(variant):
    model = _model("avg")
    x = torch.randn(3, 3, 96, 96)
    targets = torch.tensor([0, 4, 2])
    logits, feats = _forward(model, x)
    assert feats.shape == (3, 128, 3, 3)
    heat = cam.grad_cam(logits, feats, targets, variant=variant, normalize=None)
    # GAP: d logit_c / dA_k(i,j) = W[c,k] / (h*w) everywhere, so both variants are the CAM.
    W = model.fc.weight.detach()[targets]  # (B,K)
    expected = torch.relu(torch.einsum("bk,bkij->bij", W / 9.0, feats.detach()))
    assert heat.dtype == torch.float32 and heat.shape == (3, 3, 3)
    assert expected.sum() > 0 and (expected == 0).any()  # non-trivial, and the ReLU matters
    torch.testing.assert_close(heat, expected, rtol=1e-5, atol=1e-7)


def test_gradcam_gmp_resnet_elementwise_closed_form_and_differs_from_classic():
    model = _model("max")
    x = torch.randn(2, 3, 128, 128)
    targets = torch.tensor([3, 1])
    logits, feats = _forward(model, x)
    A = feats.detach()
    B, K, h, w = A.shape
    assert (h, w) == (4, 4)
    W = model.fc.weight.detach()[targets]  # (B,K)
    # GMP: the gradient of channel k is W[c,k] at its argmax location and 0 elsewhere.
    flat = A.flatten(2)
    at_max = F.one_hot(flat.argmax(2), h * w).view(B, K, h, w).float()
    expected_elem = torch.relu(torch.einsum("bk,bkij->bij", W, A * at_max))
    expected_classic = torch.relu(torch.einsum("bk,bkij->bij", W / (h * w), A))

    elem = cam.grad_cam(logits, feats, targets, variant="elementwise", normalize=None, retain_graph=True)
    classic = cam.grad_cam(logits, feats, targets, variant="classic", normalize=None)
    torch.testing.assert_close(elem, expected_elem, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(classic, expected_classic, rtol=1e-5, atol=1e-7)
    assert expected_elem.sum() > 0
    # Different maps, not just a different scale.
    a = cam.normalize_cam(elem, "max")
    b = cam.normalize_cam(classic, "max")
    assert (a - b).abs().max() > 0.1


def test_paper_normalisation_is_applied_by_default():
    model = _model()
    logits, feats = _forward(model, torch.randn(2, 3, 64, 64))
    t = torch.tensor([1, 2])
    raw = cam.grad_cam(logits, feats, t, normalize=None, retain_graph=True)
    paper = cam.grad_cam(logits, feats, t)
    torch.testing.assert_close(paper, raw / (raw.sum((1, 2), keepdim=True) + 1e-8) + 1e-8)


# --------------------------------------------------------------------------- batching over T


@pytest.mark.parametrize("variant", ["elementwise", "classic"])
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_batched_targets_equal_separate_calls(variant, pooling):
    model = _model(pooling, num_classes=7)
    x = torch.randn(3, 3, 64, 64)
    targets = torch.tensor([[0, 6, 2], [5, 5, 1], [3, 4, 0]])  # (B,T), repeats allowed
    logits, feats = _forward(model, x)
    batched = cam.grad_cam(logits, feats, targets, variant=variant, retain_graph=True)
    assert batched.shape == (3, 3, 2, 2)
    for t in range(3):
        single = cam.grad_cam(logits, feats, targets[:, t], variant=variant, retain_graph=True)
        torch.testing.assert_close(batched[:, t], single, rtol=1e-5, atol=1e-8)
    one = cam.grad_cam(logits, feats, targets[:, :1], variant=variant)
    assert one.shape == (3, 1, 2, 2)
    torch.testing.assert_close(one[:, 0], batched[:, 0], rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------- differentiability


def test_create_graph_reaches_conv_weights():
    model = _model().train()  # training mode: BN uses batch statistics, as in training
    x = torch.randn(4, 3, 64, 64)
    logits, feats = _forward(model, x)
    heat = cam.grad_cam(logits, feats, torch.tensor([0, 1, 2, 3]), create_graph=True)
    assert heat.requires_grad
    target = torch.rand_like(heat)
    loss = (heat - target).abs().mean()
    loss.backward()
    for name in ("layer1.0.conv1.weight", "conv1.weight", "fc.weight", "layer4.0.conv2.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_create_graph_batched_targets_gradient_equals_loop():
    """is_grads_batched + create_graph gives the same parameter gradient as T separate calls."""
    model = _model(num_classes=6)
    x = torch.randn(2, 3, 64, 64)
    targets = torch.tensor([[1, 4], [0, 5]])
    weight = torch.rand(2, 2, 2, 2, generator=torch.Generator().manual_seed(1))

    logits, feats = _forward(model, x)
    heat = cam.grad_cam(logits, feats, targets, create_graph=True, normalize="max")
    (heat * weight).sum().backward()
    batched = model.layer1[0].conv1.weight.grad.clone()
    model.zero_grad()

    logits, feats = _forward(model, x)
    loss = sum(
        (cam.grad_cam(logits, feats, targets[:, t], create_graph=True, normalize="max") * weight[:, t]).sum()
        for t in range(2)
    )
    loss.backward()
    looped = model.layer1[0].conv1.weight.grad
    assert batched.abs().sum() > 0
    torch.testing.assert_close(batched, looped, rtol=1e-4, atol=1e-7)


def test_without_create_graph_result_is_constant():
    model = _model()
    logits, feats = _forward(model, torch.randn(1, 3, 64, 64))
    assert not cam.grad_cam(logits, feats, torch.tensor([0])).requires_grad


def test_bf16_features_give_float32_result():
    model = _model()
    x = torch.randn(2, 3, 64, 64)
    t = torch.tensor([2, 0])
    ref = cam.grad_cam(*_forward(model, x), t, normalize="max")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, feats = _forward(model, x)
    assert feats.dtype == torch.bfloat16
    heat = cam.grad_cam(logits, feats, t, normalize="max")
    assert heat.dtype == torch.float32
    # bf16 carries ~3 significant digits: the maps agree to a few % of their max, point at the same
    # cell, and are nearly collinear (a wrong or float16-truncated computation misses all three)
    torch.testing.assert_close(heat, ref, rtol=0, atol=0.05)
    assert torch.equal(heat.flatten(1).argmax(1), ref.flatten(1).argmax(1))
    has = ref.flatten(1).amax(1) > 0  # ReLU may leave a map empty: then both must be
    assert has.any() and not heat[~has].any()
    cos = torch.nn.functional.cosine_similarity(heat.flatten(1), ref.flatten(1), dim=1)
    assert (cos[has] > 0.995).all(), cos


def test_grad_cam_rejects_bad_input():
    model = _model()
    x = torch.randn(2, 3, 64, 64)
    logits, feats = _forward(model, x)
    with pytest.raises(ValueError, match="variant"):
        cam.grad_cam(logits, feats, torch.tensor([0, 1]), variant="nope")
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        cam.grad_cam(logits, feats, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="targets must be"):
        cam.grad_cam(logits, feats, torch.tensor([0, 1, 2]))
    with torch.no_grad():
        logits, feats = _forward(model, x)
    with pytest.raises(ValueError, match="autograd graph"):
        cam.grad_cam(logits, feats, torch.tensor([0, 1]))


# --------------------------------------------------------------------------- normalise / upsample


def test_normalize_cam_modes():
    heat = torch.tensor([[[0.0, 1.0], [2.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    paper = cam.normalize_cam(heat, "paper")
    torch.testing.assert_close(paper[0], torch.tensor([[0.0, 0.25], [0.5, 0.25]]) + 1e-8)
    torch.testing.assert_close(paper[1], torch.full((2, 2), 1e-8))
    mx = cam.normalize_cam(heat, "max")
    torch.testing.assert_close(mx[0], torch.tensor([[0.0, 0.5], [1.0, 0.5]]))
    assert torch.equal(mx[1], torch.zeros(2, 2))  # all-zero stays zero, no NaN
    assert cam.normalize_cam(heat, None) is heat
    with pytest.raises(ValueError):
        cam.normalize_cam(heat, "sum")


def test_zero_maps_raw_and_normalised():
    heat = torch.tensor([[[0.0, 1.0], [2.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    expected = [False, True]
    for norm in (None, "paper", "max"):
        assert cam.zero_maps(cam.normalize_cam(heat, norm)).tolist() == expected
    # paper-normalised, a map summing well above 1e-8 sums to ~1: one faint pixel of 10^4 counts
    one = torch.zeros(2, 100, 100)
    one[0, 3, 4] = 1e-6
    assert cam.zero_maps(cam.normalize_cam(one, "paper")).tolist() == [False, True]
    assert cam.zero_maps(torch.full((2, 3, 4, 4), 3e-8)).shape == (2, 3)
    assert cam.zero_maps(torch.full((1, 4, 4), 2e-8)).tolist() == [True]
    assert cam.zero_maps(torch.full((1, 4, 4), 2.1e-8)).tolist() == [False]


def test_upsample_shapes_and_values():
    heat = torch.rand(2, 3, 4, 5)
    up = cam.upsample(heat, (8, 10))
    assert up.shape == (2, 3, 8, 10)
    ref = F.interpolate(heat.view(6, 1, 4, 5), size=(8, 10), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, ref.view(2, 3, 8, 10), rtol=0, atol=0)
    up3 = cam.upsample(heat[:, 0], 7)
    assert up3.shape == (2, 7, 7)
    torch.testing.assert_close(cam.upsample(torch.full((1, 2, 2), 3.0), (5, 9)), torch.full((1, 5, 9), 3.0))
    with pytest.raises(ValueError):
        cam.upsample(torch.rand(4, 4), 8)


# --------------------------------------------------------------------------- explain


def test_registry_lists_the_methods():
    names = cam.list_methods()
    for name in ("gradcam", "gradient", "input_x_gradient", "smoothgrad", "integrated_gradients",
                 "deconvnet", "guided_backprop", "excitation_backprop",
                 "contrastive_excitation_backprop", "linear_approx", "hirescam"):
        assert name in names
    assert names == sorted(cam.METHODS) and set(cam.METHOD_INFO) == set(cam.METHODS)
    with pytest.raises(GridcamError, match="unknown explanation method 'nope'.*gradcam"):
        cam.explain("nope", _model(), None, torch.zeros(1, 3, 32, 32), torch.zeros(1, 1, dtype=torch.long))


@pytest.mark.parametrize("method", ["gradcam", "gradient", "input_x_gradient", "smoothgrad"])
def test_explain_shapes_and_non_negative(method):
    model = _model(num_classes=6)
    layer = models.cam_layer(model)
    x = torch.randn(2, 3, 64, 48)
    targets = torch.tensor([[1, 5, 0], [2, 2, 3]])
    # One option set for several methods: each takes the options it declares.
    opts = {"samples": 3, "generator": torch.Generator().manual_seed(0), "variant": "classic"}
    heat, logits = cam.explain(method, model, layer, x, targets, **opts)
    expected = (2, 3, 2, 2) if method == "gradcam" else (2, 3, 64, 48)
    assert heat.shape == expected and heat.dtype == torch.float32
    assert (heat >= 0).all() and heat.sum() > 0
    assert not heat.requires_grad and not logits.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x))
    # No hooks left behind, no parameter gradients accumulated.
    assert len(layer._forward_hooks) == 0
    assert all(p.grad is None for p in model.parameters())


def test_explain_gradcam_equals_grad_cam():
    model = _model(num_classes=6)
    layer = models.cam_layer(model)
    x = torch.randn(2, 3, 96, 64)
    targets = torch.tensor([[1, 5], [2, 3]])
    for variant in ("elementwise", "classic"):
        heat, logits = cam.explain("gradcam", model, layer, x, targets, variant=variant)
        ref_logits, feats = _forward(model, x)
        ref = cam.grad_cam(ref_logits, feats, targets, variant=variant, normalize=None)
        torch.testing.assert_close(heat, ref, rtol=0, atol=0)
        torch.testing.assert_close(logits, ref_logits.detach())


def test_explain_works_under_no_grad_with_frozen_model():
    model = _model(num_classes=4)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        heat, _ = cam.explain("gradcam", model, models.cam_layer(model), x, torch.tensor([[2]]))
        grad_heat, _ = cam.explain("gradient", model, None, x, torch.tensor([2]))  # (B,): (B,H,W)
    assert heat.shape == (1, 1, 2, 2) and heat.sum() > 0
    assert grad_heat.shape == (1, 64, 64) and grad_heat.sum() > 0


def _input_grad(model, x, cls):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x)[:, cls].sum(), x)
    return g


def test_gradient_and_input_x_gradient_match_hand_computation():
    model = _model(num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([[0, 3], [4, 1]])
    g_heat, _ = cam.explain("gradient", model, None, x, targets)
    ixg_heat, _ = cam.explain("input_x_gradient", model, None, x, targets)
    for b in range(2):
        for t in range(2):
            g = _input_grad(model, x[b : b + 1], int(targets[b, t]))[0]
            torch.testing.assert_close(g_heat[b, t], g.abs().amax(0), rtol=1e-5, atol=1e-8)
            torch.testing.assert_close(ixg_heat[b, t], (x[b] * g).abs().sum(0), rtol=1e-5, atol=1e-8)


def test_smoothgrad_matches_hand_computation_and_is_seeded():
    model = _model(num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([[0, 3], [4, 1]])
    n = 3
    heat, _ = cam.explain("smoothgrad", model, None, x, targets, samples=n,
                          generator=torch.Generator().manual_seed(7))
    again, _ = cam.explain("smoothgrad", model, None, x, targets, samples=n,
                           generator=torch.Generator().manual_seed(7))
    assert torch.equal(heat, again)
    # Rebuild the same noise: (n,B,3,H,W) standard normal scaled by 0.15 * (max - min) per image.
    noise = torch.randn((n, *x.shape), generator=torch.Generator().manual_seed(7))
    sigma = 0.15 * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    noisy = x[None] + noise * sigma.view(1, 2, 1, 1, 1)
    for b in range(2):
        for t in range(2):
            grads = [_input_grad(model, noisy[i, b : b + 1], int(targets[b, t]))[0].abs()
                     for i in range(n)]
            # mean over the copies, then max over the colour channels (Captum's NoiseTunnel order)
            torch.testing.assert_close(heat[b, t], torch.stack(grads).mean(0).amax(0),
                                       rtol=1e-4, atol=1e-7)
    plain, _ = cam.explain("gradient", model, None, x, targets)
    assert not torch.allclose(heat, plain)  # the noise is really there
