"""Exact small cases for gridcam.cam.gradcam (explain_gradcam's head-only forward and its fallback,
upsample's errors) and gridcam.models.reshape (TokenGrid's grid search and messages, fold of tuple
outputs, GridTap), written against surviving mutants of `make mutation`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gridcam import cam
from gridcam.models.reshape import ChannelsLast, GridTap, TokenGrid, fold, parse_reshape
from gridcam.errors import GridcamError

# A hand-made 2-channel 3x3 activation. With global max pooling, d logit_c / dA_k is w_ck at the
# argmax of channel k and 0 elsewhere: channel 0 peaks at (1,1) (value 5), channel 1 at (0,0) (4).
_A = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 5.0, 1.0], [3.0, 0.0, 0.0]],
                   [[4.0, 0.0, 1.0], [0.0, 0.0, 2.0], [0.0, 1.0, 0.0]]])
_W = torch.tensor([[2.0, -1.0], [0.0, 1.0]])  # class 0: (2, -1); class 1: (0, 1)


class _Spy(nn.Module):
    """Identity that records whether autograd was recording when it ran."""

    def __init__(self) -> None:
        super().__init__()
        self.grad_modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_modes.append(torch.is_grad_enabled())
        return x * 1.0


class _GMPHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(_W)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(a.amax(dim=(-2, -1)))


def _spy_model() -> tuple[nn.Module, _Spy, nn.Module]:
    spy, layer = _Spy(), nn.Identity()
    return nn.Sequential(spy, layer, _GMPHead()), spy, layer


@pytest.mark.parametrize("variant, expected", [
    # elementwise: ReLU(sum_k g_k A_k): 2*5 at (1,1); -1*4 at (0,0) is cut by the ReLU
    ("elementwise", [[0.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 0.0]]),
    # classic: ReLU((2/9) A_0 - (1/9) A_1)
    ("classic", [[0.0, 4 / 9, 0.0], [0.0, 10 / 9, 0.0], [6 / 9, 0.0, 0.0]]),
])
def test_explain_gradcam_hand_map_with_one_unrecorded_trunk_forward(variant, expected):
    model, spy, layer = _spy_model()
    heat, logits = cam.explain_gradcam(model, layer, _A[None], torch.tensor([0]), variant=variant)
    torch.testing.assert_close(heat, torch.tensor(expected)[None, None])
    torch.testing.assert_close(logits, torch.tensor([[2 * 5.0 - 4.0, 4.0]]))
    # one forward only, and the trunk before the CAM layer ran without recording a graph
    assert spy.grad_modes == [False]


class _Twice(nn.Module):
    """The CAM layer (a 1x1 conv) is applied twice: the head-only forward cannot be used."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        self.fc = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0.5], [-0.5, 1.0]]).view(2, 2, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 1.0], [-1.0, 0.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.conv(x)).mean(dim=(-2, -1)))


def test_explain_gradcam_layer_run_twice_uses_its_last_output():
    model = _Twice()
    x = _A[None].clone()
    heat, logits = cam.explain_gradcam(model, model.conv, x, torch.tensor([[0, 1]]))
    # by hand: A2 = M M x per pixel; GAP head: d logit_c / dA2 = W_c / 9 everywhere
    m = torch.tensor([[1.0, 0.5], [-0.5, 1.0]])
    a2 = torch.einsum("ij,jk,khw->ihw", m, m, _A)
    w = model.fc.weight.detach()
    expected = torch.relu(torch.einsum("ck,khw->chw", w[:2], a2)) / 9
    torch.testing.assert_close(heat[0], expected)
    torch.testing.assert_close(logits[0], w @ a2.mean(dim=(-2, -1)))


def test_explain_gradcam_layer_never_called_is_one_clear_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(18, 2))
    unused = nn.Linear(4, 4)
    with pytest.raises(ValueError, match=r"Linear produced no tensor.* \(is it a sub-module"):
        cam.explain_gradcam(model, unused, _A[None], torch.tensor([1]))


def test_upsample_rejects_a_bad_rank_naming_the_shape():
    with pytest.raises(ValueError, match=r"\(B,h,w\) or \(B,T,h,w\), got shape \(5,\)"):
        cam.upsample(torch.zeros(5), 4)


# ------------------------------------------------------------------------------ TokenGrid
@pytest.mark.parametrize("rule, n, expected", [
    (TokenGrid(prefix=5), 9, (5, 2, 2)),        # a given prefix is used as given (auto: 0,3,3)
    (TokenGrid(), 9, (0, 3, 3)),
    (TokenGrid(), 1, (0, 1, 1)),                # a single token is a 1x1 grid
    (TokenGrid(prefix=1), 2, (1, 1, 1)),
    (TokenGrid(prefix=0, stride=2, input_hw=(4, 6)), 6, (0, 2, 3)),  # non-square input: h, w
    (TokenGrid(prefix=1, stride=2, input_hw=(6, 4)), 7, (1, 3, 2)),
    (TokenGrid(stride=2, input_hw=(4, 4)), 9, (0, 3, 3)),  # 2x2 from the input does not fit 9
])
def test_token_grid_size(rule, n, expected):
    assert rule.grid_size(n) == expected


def test_token_grid_size_errors_name_the_count_prefix_and_input():
    # 34 tokens: no prefix in 0..8 leaves a square (34-9 = 25 would, but 9 is out of range)
    with pytest.raises(GridcamError, match=r"cannot fold 34 tokens into a grid \(prefix 0\.\.8 tokens"):
        TokenGrid().grid_size(34)
    with pytest.raises(GridcamError, match=r"4 tokens into a grid \(prefix 4 tokens"):
        TokenGrid(prefix=4).grid_size(4)  # nothing left after the prefix
    with pytest.raises(GridcamError, match=r"10 tokens into a grid for a 4x6 input \(prefix 2 tokens, "
                                           r"stride 2\).*vit:P"):
        TokenGrid(prefix=2, stride=2, input_hw=(4, 6)).grid_size(10)


def test_token_grid_str_round_trips_through_parse_reshape():
    assert str(TokenGrid()) == "vit" and str(TokenGrid(prefix=1)) == "vit:1"
    for rule in (TokenGrid(), TokenGrid(prefix=2)):
        assert parse_reshape(str(rule)) == rule


def test_token_grid_to_grid_places_each_patch_token_and_restores():
    B, p, h, w, D = 2, 1, 2, 3, 2
    x = torch.arange(B * (p + h * w) * D, dtype=torch.float32).view(B, p + h * w, D)
    grid, restore = TokenGrid(prefix=p, stride=1, input_hw=(h, w)).to_grid(x)
    assert grid.shape == (B, D, h, w)
    for i in range(h):
        for j in range(w):
            torch.testing.assert_close(grid[:, :, i, j], x[:, p + i * w + j, :])
    torch.testing.assert_close(restore(grid), x)
    with pytest.raises(GridcamError, match=r"\(B,N,D\) output, got shape \(2, 3\)"):
        TokenGrid().to_grid(torch.zeros(2, 3))


def test_fold_tuple_output_folds_the_first_item_and_keeps_the_rest():
    x = torch.arange(10, dtype=torch.float32).view(1, 5, 2)  # class token + 2x2 patches, D=2
    extra = torch.ones(3)
    out = fold(TokenGrid(prefix=1), (x, extra, "attn"), lambda g: g * 2)
    assert len(out) == 3 and out[1] is extra and out[2] == "attn"
    torch.testing.assert_close(out[0], torch.cat([x[:, :1], 2 * x[:, 1:]], dim=1))
    with pytest.raises(GridcamError, match=r"the vit:1 reshape needs a tensor output, got a list"):
        fold(TokenGrid(prefix=1), [x], lambda g: g)


def test_grid_tap_keeps_its_source_and_rule():
    rule = TokenGrid(prefix=1)
    tap = GridTap("blocks.11", rule)
    assert tap.source == "blocks.11" and tap.rule is rule
    assert "blocks.11, reshape=vit:1" in repr(tap)
    torch.testing.assert_close(tap(_A), _A)


def test_parse_reshape_spellings():
    assert parse_reshape("") is None and parse_reshape("  ") is None and parse_reshape("None") is None
    assert isinstance(parse_reshape("nhwc"), ChannelsLast) and isinstance(parse_reshape(" NHWC "), ChannelsLast)
    for spec in ("vit", "VIT", "tokens", " Tokens "):
        assert parse_reshape(spec) == TokenGrid()
    assert parse_reshape("tokens:2") == TokenGrid(prefix=2)


# ------------------------------------------------------------------------------ normalize_cam
def test_normalize_cam_paper_rule_by_hand_where_the_eps_matters():
    # float64 so that the 1e-8 terms are visible: 3e-8 / (4e-8 + 1e-8) + 1e-8 = 0.6 + 1e-8
    c = torch.tensor([[[3e-8, 1e-8], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    out = cam.normalize_cam(c)  # "paper" is the default
    expected = torch.tensor([[[0.6, 0.2], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]], dtype=torch.float64) + 1e-8
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-15)


def test_normalize_cam_max_rule_scales_small_peaks_up():
    c = torch.tensor([[[0.25, 0.5], [0.0, 0.125]], [[0.0, 0.0], [0.0, 0.0]]])
    out = cam.normalize_cam(c, "max")
    torch.testing.assert_close(out, torch.tensor([[[0.5, 1.0], [0.0, 0.25]], [[0.0, 0.0], [0.0, 0.0]]]))
    with pytest.raises(ValueError, match=r"normalize must be one of .*got 'bogus'"):
        cam.normalize_cam(c, "bogus")


def test_grad_cam_errors_name_the_value():
    logits, feats = torch.zeros(2, 5), torch.zeros(2, 2, 3, 3)
    with pytest.raises(ValueError, match=r"normalize must be one of .*got 'sum'"):
        cam.grad_cam(logits, feats, torch.tensor([0, 1]), normalize="sum")
    with pytest.raises(ValueError, match=r"\(B,K,h,w\) with B=2, got shape \(3, 2, 3, 3\)"):
        cam.grad_cam(logits, torch.zeros(3, 2, 3, 3), torch.tensor([0, 1]))


# ---------------------------------------------------------- target_gradients: graph and messages
def _linear_logits(B: int = 2, C: int = 4):
    """logits = x @ w for x (B,3) requiring grad: d logits[b, c] / d x[b] = w[:, c]."""
    w = torch.arange(12, dtype=torch.float32).view(3, C) / 10
    x = torch.ones(B, 3, requires_grad=True)
    return x, torch.tanh(x @ w), w  # tanh: the gradient depends on the graph's saved tensors


@pytest.mark.parametrize("targets", [torch.tensor([1, 3]), torch.tensor([[1]] * 2),
                                     torch.tensor([[1, 2], [3, 0]])])
def test_target_gradients_graph_lifetime(targets):
    """retain_graph defaults to create_graph: freed after a plain call (a second backward fails),
    kept when asked, and with create_graph the result is differentiable."""
    x, logits, _ = _linear_logits()
    from gridcam.cam.gradcam import target_gradients

    target_gradients(logits, x, targets)
    with pytest.raises(RuntimeError, match="second time"):
        logits.sum().backward()
    x, logits, _ = _linear_logits()
    target_gradients(logits, x, targets, retain_graph=True)
    logits.sum().backward()  # the graph is still there
    x, logits, _ = _linear_logits()
    g = target_gradients(logits, x, targets, create_graph=True)
    assert g.requires_grad
    (gg,) = torch.autograd.grad(g.sum(), x)  # second order through tanh: not all zero
    assert gg.abs().sum() > 0


def test_target_gradients_and_check_targets_messages():
    from gridcam.cam.gradcam import target_gradients

    x, logits, _ = _linear_logits()
    with pytest.raises(ValueError, match=r"^logits must be \(B,C\), got shape \(2, 4, 1\)$"):
        target_gradients(logits[..., None], x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"^targets must be integer class indices, got dtype torch.float32$"):
        target_gradients(logits, x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"^targets must be \(B,\) or \(B,T\) with B=2, got shape \(3,\)$"):
        target_gradients(logits, x, torch.tensor([0, 1, 2]))
    with torch.no_grad():
        frozen = torch.ones(2, 3) @ torch.ones(3, 4)
    with pytest.raises(ValueError, match=r"^the features/inputs are not in the autograd graph of "
                                         r"the logits: run the forward with gradients enabled \(not "
                                         r"under torch.no_grad\(\)/inference_mode\) and with "
                                         r"parameters or inputs that require grad$"):
        target_gradients(frozen, torch.ones(2, 3), torch.tensor([0, 1]))


@pytest.mark.parametrize("spec", ["nhwc:3", "cnn:2", "vit:x", "vit:1:2"])
def test_parse_reshape_refuses_other_spellings_naming_the_choices(spec):
    with pytest.raises(GridcamError, match=rf"^unknown reshape rule {spec!r}; use none, vit, vit:P "
                                           r"\(P class tokens\) or nhwc$"):
        parse_reshape(spec)
