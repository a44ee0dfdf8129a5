"""Excitation backprop and its contrastive variant against TorchRay 1.0.0.2 (the implementation the
paper used; a test-only dependency), at the output of layer1, layer2, layer3 and layer4 of three
ResNet-18s: torchvision's, timm's and gridcam's built-in one (random weights, random BatchNorm).

How TorchRay is run, and why:

* TorchRay applies the excitation rule of a residual sum (split in proportion to the summands) only
  after ``update_resnet(model)``, which rewrites the ``forward`` of torchvision's BasicBlock and
  Bottleneck (it asserts a torchvision ResNet). Without it the sums pass the excitation unchanged
  to both summands (pinned below). timm's and gridcam's ResNet-18 have torchvision's keys, so
  TorchRay runs on a torchvision resnet18 holding the tested model's weights, checked to give the
  same logits; gridcam runs on the tested model itself.
* TorchRay changes the model it is given: ``update_resnet`` rewrites forwards, the contrastive
  variant leaves ``requires_grad`` off on every parameter and flips the classifier's sign in place
  (and back), a ``Probe`` toggles ``inplace``. So every TorchRay call gets a fresh copy, and each
  call is checked to restore the ``torch.nn.functional`` functions it patches.
* Both give the map at the layer's resolution (TorchRay with ``resize=False``, its default);
  TorchRay's ``excitation_backprop`` returns the channel sum unclipped, gridcam ``max(sum, 0)``:
  compared after the same clip. ``contrastive_excitation_backprop`` clips in both.
* gridcam subtracts the dual's excitation right below the classifier; the TorchRay equivalent is
  ``contrast_layer="avgpool"`` (the classifier's input), ``classifier_layer="fc"``. Every rule
  below is linear in the excitation, so any contrast layer between the saliency layer and the
  classifier gives the same map (checked with ``contrast_layer="layer4"``).

Measured on CPU (torch 2.14.1, float32): at most 3.2e-7 of the map's maximum at layer1-3,
bit-identical at layer4 (no residual sum between the logits and layer4's output). TorchRay 1.0.0.2
runs on torch 2.14.1 for both methods.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gridcam import cam, models
from reference_checks import close, randomize_batch_norm

ebp = pytest.importorskip("torchray.attribution.excitation_backprop",
                          reason="TorchRay (pip install -e .[test]) is not installed")
torchvision = pytest.importorskip("torchvision")

LAYERS = ("layer1", "layer2", "layer3", "layer4")
METHODS = ("excitation_backprop", "contrastive_excitation_backprop")
CLASSES = 7
X = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))  # layer4: 3x3
TARGETS = torch.tensor([[3, 0], [5, 6]])  # (B,T): two classes per image
# The functions TorchRay's ExcitationBackpropContext patches (and must restore).
_PATCHED = {name: getattr(F, name) for name in (
    "conv1d", "conv2d", "conv3d", "linear", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "batch_norm")}


def _torchvision() -> nn.Module:
    return torchvision.models.resnet18(num_classes=CLASSES)


def _timm() -> nn.Module:
    timm = pytest.importorskip("timm", reason="timm is not installed")
    return timm.create_model("resnet18", pretrained=False, num_classes=CLASSES)


def _builtin() -> nn.Module:
    return models.create("resnet18", num_classes=CLASSES)


BUILD = {"torchvision": _torchvision, "timm": _timm, "gridcam": _builtin}
# One seed per architecture: with one seed the three would draw the same weights (same init rules
# in the same order) and the three comparisons would be one.
SEEDS = {"torchvision": 0, "timm": 1, "gridcam": 2}


@functools.cache
def _pristine(name: str) -> tuple[nn.Module, nn.Module]:
    """(the model ``name``, a torchvision resnet18 with its weights), seeded; never handed out:
    :func:`_fresh` gives copies."""
    torch.manual_seed(SEEDS[name])
    model = randomize_batch_norm(BUILD[name](), seed=SEEDS[name]).eval()
    carrier = _torchvision().eval()
    carrier.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(carrier(X), model(X)), "the carrier must compute the same function"
    return model, carrier


def _fresh(name: str) -> tuple[nn.Module, nn.Module]:
    return tuple(copy.deepcopy(m) for m in _pristine(name))  # type: ignore[return-value]


def _torchray(method: str, carrier: nn.Module, layer: str, *, contrast_layer: str = "avgpool",
              residual_rule: bool = True) -> torch.Tensor:
    """TorchRay's maps (B,T,h,w) of X for TARGETS at ``layer``'s output, clipped at 0, from a copy
    of ``carrier``. The T targets of an image are stacked along the batch (TorchRay takes one
    class per batch element)."""
    net = copy.deepcopy(carrier)
    if residual_rule:
        net = ebp.update_resnet(net)
    B, T = TARGETS.shape
    x = X.repeat(T, 1, 1, 1)  # row t*B + b: image b, target t
    y = TARGETS.t().reshape(-1).tolist()
    if method == "excitation_backprop":
        maps = ebp.excitation_backprop(net, x, y, saliency_layer=layer)
    else:
        maps = ebp.contrastive_excitation_backprop(
            net, x, y, saliency_layer=layer, contrast_layer=contrast_layer, classifier_layer="fc")
    assert all(getattr(F, n) is f for n, f in _PATCHED.items()), "TorchRay left a patch behind"
    return maps[:, 0].clamp(min=0).view(T, B, *maps.shape[2:]).transpose(0, 1)


def _gridcam(method: str, model: nn.Module, layer: str) -> torch.Tensor:
    return cam.explain(method, model, getattr(model, layer), X, TARGETS)[0]


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", sorted(BUILD))
def test_excitation_backprop_matches_torchray(arch, method, layer):
    """timm's blocks end in ``x += shortcut``, torchvision's in ``out += identity`` (in place),
    gridcam's in ``out + identity``: all three split the excitation as TorchRay does."""
    model, carrier = _fresh(arch)
    ours = _gridcam(method, model, layer)
    theirs = _torchray(method, carrier, layer)
    assert ours.shape == (2, 2, *theirs.shape[2:])
    close(ours, theirs)


def test_torchray_leaves_gridcams_maps_alone():
    """TorchRay patches ``torch.nn.functional`` while it runs and rewrites the model it gets: after
    both methods ran (on copies), gridcam's maps of the model are what they were, bit for bit."""
    model, carrier = _fresh("timm")
    before = [_gridcam(method, model, "layer2") for method in METHODS]
    for method in METHODS:
        _torchray(method, carrier, "layer2")
    assert all(torch.equal(_gridcam(m, model, "layer2"), b) for m, b in zip(METHODS, before))


def test_torchray_needs_update_resnet_for_the_residual_rule():
    """Without ``update_resnet`` TorchRay passes the excitation through a residual sum unchanged:
    its map is gridcam's at layer4 (no sum between the logits and layer4's output) and far from
    it at layer3. This is what gridcam computed for torchvision's and timm's in-place sums
    before they were routed through the split (``cam.backprop._ExciteSumInPlace``)."""
    model, carrier = _fresh("torchvision")
    plain = functools.partial(_torchray, "excitation_backprop", carrier, residual_rule=False)
    close(_gridcam("excitation_backprop", model, "layer4"), plain("layer4"))
    ours, theirs = _gridcam("excitation_backprop", model, "layer3"), plain("layer3")
    assert float((ours - theirs).abs().max()) > 0.5 * float(ours.max())


def test_contrast_layer_between_saliency_layer_and_classifier_does_not_matter():
    _, carrier = _fresh("torchvision")
    method = "contrastive_excitation_backprop"
    close(_torchray(method, carrier, "layer2", contrast_layer="layer4"),
          _torchray(method, carrier, "layer2", contrast_layer="avgpool"))


@pytest.mark.parametrize("method", METHODS)
def test_builtin_and_torchvision_resnet18_agree_below_layer4(method):
    """The same weights in gridcam's ResNet-18 (out-of-place residual sums) and torchvision's
    (``out += identity``, in place) give the same maps at layer2, bit for bit. Before in-place sums were
    routed through the excitation split, torchvision's map at layer2 was off by several times
    the map's maximum (see the test above)."""
    builtin, tv = _fresh("gridcam")  # tv: torchvision's resnet18 holding the built-in's weights
    want = _gridcam(method, builtin, "layer2")
    assert want.max() > 0 and torch.equal(_gridcam(method, tv, "layer2"), want)
