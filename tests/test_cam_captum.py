"""gridcam's explanation methods against Captum's (a test-only dependency) on small models, to 1e-5
after the same channel reduction."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gridcam import cam, models
from reference_checks import close as _close

captum_attr = pytest.importorskip("captum.attr")

pytestmark = [
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients"),
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU"),
]


def _small_net(seed: int = 0) -> nn.Module:
    """conv-BN-ReLU-maxpool-conv-ReLU-GAP-linear: ReLUs as modules, not in place (Captum's hooks
    need that); random BN statistics so the network is not positively homogeneous."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5),
    )
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.3, 0.3)
        net[1].running_var.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.2, 0.3)
    return net.eval()


X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
TARGETS = torch.tensor([[1, 4], [3, 0]])


def _per_target(attribute, reduce) -> torch.Tensor:
    """Captum's attribution for each target column, reduced over channels: (B,T,h,w)."""
    return torch.stack([reduce(attribute(X.clone(), target=TARGETS[:, t].tolist()))
                        for t in range(TARGETS.shape[1])], dim=1)


def _abs_max(a: torch.Tensor) -> torch.Tensor:
    return a.detach().abs().amax(dim=1)


def _abs_sum(a: torch.Tensor) -> torch.Tensor:
    return a.detach().abs().sum(dim=1)


def test_input_x_gradient_matches_captum():
    net = _small_net()
    ours, _ = cam.explain("input_x_gradient", net, None, X, TARGETS)
    _close(ours, _per_target(captum_attr.InputXGradient(net).attribute, _abs_sum))


def test_integrated_gradients_matches_captum():
    net = _small_net()
    ours, _ = cam.explain("integrated_gradients", net, None, X, TARGETS, steps=12, chunk=5)
    ig = captum_attr.IntegratedGradients(net)

    def attribute(x, target):
        return ig.attribute(x, target=target, n_steps=12, method="gausslegendre", baselines=0.0)

    _close(ours, _per_target(attribute, _abs_sum))


@pytest.mark.parametrize("method, peer", [("guided_backprop", "GuidedBackprop"),
                                          ("deconvnet", "Deconvolution")])
def test_modified_backprop_matches_captum(method, peer):
    net = _small_net()
    ours, _ = cam.explain(method, net, None, X, TARGETS)
    _close(ours, _per_target(getattr(captum_attr, peer)(net).attribute, _abs_max))


@pytest.mark.parametrize("method, peer", [("guided_backprop", "GuidedBackprop"),
                                          ("deconvnet", "Deconvolution")])
def test_modified_backprop_on_inplace_resnet_matches_captum(method, peer):
    """The built-in ResNet has in-place ReLUs and residual sums; Captum gets a copy whose ReLUs are
    not in place (its hooks need that), gridcam the model as it is."""
    torch.manual_seed(0)
    model = models.create("tiny_resnet", num_classes=5).eval()
    peer_model = copy.deepcopy(model)
    for m in peer_model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    x = torch.randn(2, 3, 32, 32)
    ours, _ = cam.explain(method, model, None, x, TARGETS)
    theirs = torch.stack([_abs_max(getattr(captum_attr, peer)(peer_model).attribute(
        x.clone(), target=TARGETS[:, t].tolist())) for t in range(2)], dim=1)
    _close(ours, theirs)


def test_gradcam_classic_matches_captum_layer_gradcam():
    net = _small_net()
    layer = net[5]  # the last ReLU: (B,12,8,8)
    ours, _ = cam.explain("gradcam", net, layer, X, TARGETS, variant="classic")
    lgc = captum_attr.LayerGradCam(net, layer)

    def attribute(x, target):
        return lgc.attribute(x, target=target, relu_attributions=True)

    _close(ours, _per_target(attribute, lambda a: a.detach()[:, 0]))


def test_smoothgrad_matches_captum_noise_tunnel_with_identical_noise(monkeypatch):
    net = _small_net()
    n, sigma, seed = 5, 0.2, 3
    ours, _ = cam.explain("smoothgrad", net, None, X, TARGETS, samples=n, sigma=sigma,
                          generator=torch.Generator().manual_seed(seed))
    # The noise gridcam drew: randn((n,B,3,H,W)) scaled per image by sigma * (max - min).
    noise = torch.randn((n, *X.shape), generator=torch.Generator().manual_seed(seed))
    flat = X.flatten(1)
    noise = noise * (sigma * (flat.amax(1) - flat.amin(1))).view(1, -1, 1, 1, 1)
    # Captum adds torch.normal(0, std) to the inputs repeated image-major (b*n + i).
    image_major = noise.transpose(0, 1).flatten(0, 1)
    monkeypatch.setattr(torch, "normal", lambda mean, std, *a, **k: image_major.clone())
    tunnel = captum_attr.NoiseTunnel(captum_attr.Saliency(net))

    def attribute(x, target):
        return tunnel.attribute(x, target=target, nt_type="smoothgrad", nt_samples=n, stdevs=1.0)

    _close(ours, _per_target(attribute, lambda a: a.detach().amax(dim=1)))
