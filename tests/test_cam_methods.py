"""Every registered explanation method: leaves the model exactly as it was, batches T targets,
honours the registry's option declarations; closed forms for excitation backprop."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from gridcam import cam, models
from gridcam.cam.backprop import RULES
from gridcam.errors import GridcamError
from test_cam import _model  # tiny_resnet with random BN statistics, in eval mode

# Cheap values for options a method may declare (part B's methods included when they register).
CHEAP = {"samples": 2, "steps": 2, "num_masks": 4, "chunk": 2, "batch": 2, "iterations": 2,
         "method_batch": 8}


def _opts(method: str, seed: int = 0) -> dict:
    declared = cam.METHOD_INFO[method].options
    opts = {k: v for k, v in CHEAP.items() if k in declared}
    if "generator" in declared:
        opts["generator"] = torch.Generator().manual_seed(seed)
    return opts


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                   len(getattr(m, "_backward_pre_hooks", {}))) for m in model.modules()],
        "forward": [type(m).__dict__.get("forward") is not None and "forward" in m.__dict__
                    for m in model.modules()],
        "modules": [type(m) for m in model.modules()],
    }


@pytest.mark.parametrize("method", sorted(cam.METHODS))
def test_method_leaves_model_unchanged_and_batches_targets(method):
    model = _model()
    layer = models.cam_layer(model)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        before_out = model(x)
    before = _snapshot(model)
    grad_mode = torch.is_grad_enabled()

    targets = torch.tensor([[1, 3, 0], [4, 4, 2]])
    heat, logits = cam.explain(method, model, layer, x, targets, **_opts(method))

    after = _snapshot(model)
    for key in ("requires_grad", "training", "hooks", "forward", "modules"):
        assert after[key] == before[key], key
    assert all(g is None for g in after["grads"])
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k
        assert after["state"][k].dtype == v.dtype
    with torch.no_grad():
        assert torch.equal(model(x), before_out)
    assert torch.is_grad_enabled() == grad_mode
    assert torch.overrides._get_current_function_mode_stack() == []

    assert heat.dim() == 4 and heat.shape[:2] == (2, 3) and heat.dtype == torch.float32
    assert not heat.requires_grad and not logits.requires_grad
    assert bool((heat >= 0).all()) and heat.sum() > 0
    torch.testing.assert_close(logits, before_out)
    # T targets at once = each target alone (same noise for the seeded methods).
    for t in range(3):
        single, _ = cam.explain(method, model, layer, x, targets[:, t], **_opts(method))
        assert single.shape == (2, *heat.shape[2:])  # (B,) targets: (B,h,w)
        torch.testing.assert_close(single, heat[:, t], rtol=1e-4, atol=1e-6 * float(heat.max()))


def test_backward_rules_end_on_exception_and_leave_plain_gradients():
    model = _model()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    (plain,) = torch.autograd.grad(model(x)[0, 2], x)

    class Boom(Exception):
        pass

    for rule in RULES:
        with pytest.raises(Boom):
            with cam.backward_rules(rule):
                model(x)
                raise Boom
        assert torch.overrides._get_current_function_mode_stack() == []
        (again,) = torch.autograd.grad(model(x)[0, 2], x)
        assert torch.equal(again, plain), rule
    guided, _ = cam.explain("guided_backprop", model, None, x.detach(), torch.tensor([2]))
    assert not torch.allclose(guided, plain.abs().amax(1))  # the rule did change the backward


# ------------------------------------------------------------------------------- explain API
def test_unknown_option_raises_naming_the_valid_ones():
    model = _model()
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([[1]])
    with pytest.raises(GridcamError, match=r"'varient'.*'gradcam'.*variant"):
        cam.explain("gradcam", model, models.cam_layer(model), x, t, varient="classic")
    with pytest.raises(GridcamError, match=r"'smaples'.*samples.*sigma"):
        cam.explain("smoothgrad", model, None, x, t, smaples=3)
    with pytest.raises(GridcamError, match="its options are: none"):
        cam.explain("gradient", model, None, x, t, colour=True)
    with pytest.raises(GridcamError, match="unknown explanation method 'gradcma'"):
        cam.explain("gradcma", model, None, x, t)
    # an option of another method is not an error: one option set serves several methods
    cam.explain("gradient", model, None, x, t, variant="classic", samples=2)


def test_layer_is_optional():
    model = _model()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
    ref, _ = cam.explain("gradient", model, None, x, t)
    for heat, _ in (cam.explain("gradient", model, images=x, targets=t),
                    cam.explain("gradient", model, x, t)):
        assert torch.equal(heat, ref)
    # a layer method finds the CAM layer of a built-in architecture
    auto, _ = cam.explain("gradcam", model, x, t)
    torch.testing.assert_close(auto, cam.explain("gradcam", model, models.cam_layer(model), x, t)[0])
    assert auto.shape == (2, 1, 1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    net(x)
    with pytest.raises(GridcamError, match="'gradcam' reads a layer: pass layer="):
        cam.explain("gradcam", net.eval(), x, t[:, None] % 2)


def test_train_mode_warns():
    model = _model().train()
    with pytest.warns(UserWarning, match="train mode"):
        cam.explain("gradient", model, None, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cam.explain("gradient", model.eval(), None, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))


def test_describe_methods_lists_every_method_with_cost(capsys):
    rows = cam.describe_methods()
    assert {r["name"] for r in rows} == set(cam.METHODS)
    assert all(r["description"] and r["cost"] for r in rows)
    assert [r["relative"] for r in rows] == sorted(r["relative"] for r in rows)
    from gridcam.cli import main as cli_main

    assert cli_main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "integrated_gradients" in out and "samples" in out
    table, legend = out.split("\n\n")
    # every registered method has a line, the CAM family and the perturbation methods included
    listed = {line.split()[0] for line in table.splitlines()[1:] if line and not line.startswith(" ")}
    assert listed == set(cam.METHODS) and {"rise", "scorecam", "gradcampp"} <= listed
    # one cost notation (F/B), the relative column explained, lines a terminal shows whole
    assert table.splitlines()[0].split()[:3] == ["method", "xGCAM", "cost/image"]
    assert "xGCAM: rough time relative to Grad-CAM" in legend and "F = one forward" in legend
    assert all(len(line) <= 110 for line in out.splitlines())
    assert "forward" not in " ".join(r["cost"] for r in rows)


# ------------------------------------------------------------------- excitation backprop by hand
def _two_layer(w1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> nn.Module:
    """x (B,2,2,2) -> [probe] -> conv1x1 w1 (3x2) -> ReLU(inplace) -> GAP -> linear w2 (2x3) + b2."""
    net = nn.Sequential(nn.Identity(), nn.Conv2d(2, 3, 1, bias=False), nn.ReLU(inplace=True),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():
        net[1].weight.copy_(w1.view(3, 2, 1, 1))
        net[5].weight.copy_(w2)
        net[5].bias.copy_(b2)
    return net.eval()


def _mwp_by_hand(x: torch.Tensor, w1: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Marginal winning probability at x (B,2,2,2), given the probability ``top`` (B,3) of each
    pooled unit: split over the 4 pixels in proportion to a_k(s), then over the 2 inputs of
    a_k(s) in proportion to w1+[k,j] x_j(s)."""
    a = torch.einsum("kj,bjs->bks", w1, x.flatten(2)).clamp(min=0)  # (B,3,4)
    p_a = a / a.sum(2, keepdim=True) * top[..., None]  # (B,3,4)
    contrib = w1.clamp(min=0)[None, :, :, None] * x.flatten(2)[:, None]  # (B,k,j,s)
    share = contrib / contrib.sum(2, keepdim=True).clamp(min=1e-30)  # 0/0 where a_k(s) = 0
    p_x = (share * p_a[:, :, None]).sum(1)  # (B,2,4)
    return p_x.sum(1).view(-1, 2, 2)


def test_excitation_backprop_two_layer_closed_form():
    w1 = torch.tensor([[1.0, 2.0], [0.5, 0.0], [3.0, 1.0]])
    w2 = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.5, 0.0]])
    x = torch.tensor([[[[1.0, 0.0], [2.0, 1.0]], [[0.0, 3.0], [1.0, 1.0]]]])  # (1,2,2,2) >= 0
    net = _two_layer(w1, w2, torch.tensor([0.3, -0.2]))
    heat, _ = cam.explain("excitation_backprop", net, net[0], x, torch.tensor([[0, 1]]))
    for c in range(2):
        abar = torch.einsum("kj,bjs->bks", w1, x.flatten(2)).clamp(min=0).mean(2)  # (1,3)
        top = abar * w2[c] / (abar * w2[c]).sum()  # the bias takes no share
        torch.testing.assert_close(heat[:, c], _mwp_by_hand(x, w1, top), rtol=1e-6, atol=1e-7)
        assert abs(float(heat[:, c].sum()) - 1.0) < 1e-6  # a probability distribution
    # Class 0 with pencil and paper: a_k(s) = w1[k].x(s) over the 4 pixels is (1,6,4,3),
    # (.5,0,1,.5), (3,3,7,4); the pooled units get a_bar*w2[0] / sum = (7/24, 0, 17/24); split over
    # the pixels in proportion to a_k(s): (1,6,4,3)/48 + (6,6,14,8)/48 = (7,12,18,11)/48.
    torch.testing.assert_close(heat[0, 0], torch.tensor([[7.0, 12.0], [18.0, 11.0]]) / 48)


class _KeywordTwoLayer(nn.Module):
    """``_two_layer`` written with functional calls whose tensors come by keyword
    (``F.conv2d(input=, weight=)``, ``F.linear(x, weight=, bias=)``), as some model code does."""

    def __init__(self, w1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> None:
        super().__init__()
        self.probe = nn.Identity()
        self.w1, self.w2, self.b2 = (nn.Parameter(w1.view(3, 2, 1, 1)), nn.Parameter(w2),
                                     nn.Parameter(b2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(F.conv2d(input=self.probe(x), weight=self.w1))
        return F.linear(F.adaptive_avg_pool2d(a, 1).flatten(1), weight=self.w2, bias=self.b2)


@pytest.mark.parametrize("method", ["excitation_backprop", "contrastive_excitation_backprop"])
def test_excitation_rules_accept_tensors_given_by_keyword(method):
    w1 = torch.tensor([[1.0, 2.0], [0.5, 0.0], [3.0, 1.0]])
    w2 = torch.tensor([[1.0, -1.0, 2.0], [-0.5, 1.5, -2.0]])
    x = torch.tensor([[[[1.0, 0.0], [2.0, 1.0]], [[0.0, 3.0], [1.0, 1.0]]]])
    modules, keywords = _two_layer(w1, w2, torch.tensor([0.3, -0.2])), _KeywordTwoLayer(
        w1, w2, torch.tensor([0.3, -0.2])).eval()
    t = torch.tensor([[0, 1]])
    want, _ = cam.explain(method, modules, modules[0], x, t)
    got, _ = cam.explain(method, keywords, keywords.probe, x, t)
    assert want.abs().sum() > 0
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_contrastive_excitation_backprop_closed_form():
    w1 = torch.tensor([[1.0, 2.0], [0.5, 0.0], [3.0, 1.0]])
    w2 = torch.tensor([[1.0, -1.0, 2.0], [-0.5, 1.5, -2.0]])  # mixed signs: a real dual
    x = torch.tensor([[[[1.0, 0.0], [2.0, 1.0]], [[0.0, 3.0], [1.0, 1.0]]]])
    net = _two_layer(w1, w2, torch.zeros(2))
    heat, _ = cam.explain("contrastive_excitation_backprop", net, net[0], x, torch.tensor([[0, 1]]))
    abar = torch.einsum("kj,bjs->bks", w1, x.flatten(2)).clamp(min=0).mean(2)
    for c in range(2):
        pos = abar * w2[c].clamp(min=0) / (abar * w2[c].clamp(min=0)).sum()
        neg = abar * (-w2[c]).clamp(min=0) / (abar * (-w2[c]).clamp(min=0)).sum()
        # every rule below the classifier is linear in the probabilities: map(pos) - map(neg)
        expected = (_mwp_by_hand(x, w1, pos) - _mwp_by_hand(x, w1, neg)).clamp(min=0)
        assert expected.sum() > 0 and (expected == 0).any()
        torch.testing.assert_close(heat[:, c], expected, rtol=1e-6, atol=1e-7)


def test_excitation_backprop_conserves_probability_on_resnet():
    """At the CAM layer (followed by GAP and the classifier) the map of each target sums to 1."""
    model = _model(num_classes=6)
    x = torch.randn(3, 3, 64, 64)
    heat, _ = cam.explain("excitation_backprop", model, models.cam_layer(model), x,
                          torch.tensor([[0, 5], [2, 3], [1, 1]]))
    torch.testing.assert_close(heat.sum((2, 3)), torch.ones(3, 2), rtol=1e-5, atol=1e-5)


def test_excitation_residual_sum_splits_in_proportion_and_passes_nothing_where_it_is_zero():
    """``p_a = a/(a+b) p``, ``p_b = b/(a+b) p``, and 0 for both where ``a + b = 0`` (in place and
    out of place); it once passed ``a p`` and ``b p`` there."""
    a = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    b = torch.tensor([1.0, 2.0, -1.0], requires_grad=True)
    for in_place in (False, True):
        with cam.backward_rules("excitation"):
            if in_place:
                total = a.clone()
                total += b
            else:
                total = a + b
        grads = torch.autograd.grad(total, (a, b), torch.ones(3))
        torch.testing.assert_close(grads[0], torch.tensor([0.5, 0.0, 1.5]))
        torch.testing.assert_close(grads[1], torch.tensor([0.5, 0.0, -0.5]))


def test_integrated_gradients_completeness():
    """Sum of the attributions = f(x) - f(baseline) (Sundararajan et al.'s completeness axiom).
    A monotone network (positive weights, softplus, positive inputs) makes every attribution >= 0,
    so the map's sum over pixels is that signed total; softplus is smooth, so 32 Gauss-Legendre
    points are exact to float precision."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softplus(), nn.Flatten(), nn.Linear(4 * 36, 3)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
        net[0].bias.fill_(-2.0)  # into softplus's curved part (the bias does not affect monotony)
    x = torch.rand(2, 3, 8, 8) + 0.1
    targets = torch.tensor([[0, 2], [1, 1]])
    heat, _ = cam.explain("integrated_gradients", net, None, x, targets, steps=32, baseline=0.0)
    with torch.no_grad():
        gap = (net(x) - net(torch.zeros_like(x))).gather(1, targets)
    torch.testing.assert_close(heat.sum((2, 3)), gap, rtol=1e-5, atol=1e-6)
    one, _ = cam.explain("integrated_gradients", net, None, x, targets, steps=1)
    assert not torch.allclose(one.sum((2, 3)), gap, rtol=1e-2)  # the path integral matters


def test_methods_command(capsys):
    import argparse

    from gridcam.cli import misc

    parser = argparse.ArgumentParser()
    misc.add_methods(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["methods"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cam.METHODS)


@pytest.mark.parametrize("method", ["gradcam", "guided_backprop", "excitation_backprop"])
def test_vmapped_and_looped_target_backwards_agree(method, monkeypatch):
    """T targets: T backwards (CPU) or one vmapped backward (other devices) give the same maps."""
    from gridcam.cam import gradcam

    model = _model()
    x, targets = torch.randn(2, 3, 48, 48), torch.tensor([[1, 3, 0], [4, 4, 2]])
    looped, _ = cam.explain(method, model, models.cam_layer(model), x, targets)
    monkeypatch.setattr(gradcam, "_LOOP_TARGETS_ON", ())
    vmapped, _ = cam.explain(method, model, models.cam_layer(model), x, targets)
    torch.testing.assert_close(looped, vmapped, rtol=1e-5, atol=1e-7)
