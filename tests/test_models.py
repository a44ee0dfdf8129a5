"""Architectures match torchvision's state dicts; checkpoints load safely; mismatches are explained."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
import torchvision

from gridcam import models
from gridcam.errors import GridcamError


# ------------------------------------------------------------------ expected torchvision layouts
# Written from torchvision's documented architectures (models/resnet.py, alexnet.py, vgg.py), not
# from our code: conv/bn/linear names and shapes.
def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def torchvision_resnet(layers: list[int], bottleneck: bool, classes: int = 1000) -> dict:
    exp = 4 if bottleneck else 1
    want = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    cin = 64
    for li, (width, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for b in range(n):
            p = f"layer{li}.{b}"
            if bottleneck:
                want[f"{p}.conv1.weight"] = (width, cin, 1, 1)
                want.update(_bn(f"{p}.bn1", width))
                want[f"{p}.conv2.weight"] = (width, width, 3, 3)
                want.update(_bn(f"{p}.bn2", width))
                want[f"{p}.conv3.weight"] = (width * 4, width, 1, 1)
                want.update(_bn(f"{p}.bn3", width * 4))
            else:
                want[f"{p}.conv1.weight"] = (width, cin, 3, 3)
                want.update(_bn(f"{p}.bn1", width))
                want[f"{p}.conv2.weight"] = (width, width, 3, 3)
                want.update(_bn(f"{p}.bn2", width))
            if b == 0 and (li > 1 or cin != width * exp):
                want[f"{p}.downsample.0.weight"] = (width * exp, cin, 1, 1)
                want.update(_bn(f"{p}.downsample.1", width * exp))
            cin = width * exp
    want["fc.weight"] = (classes, 512 * exp)
    want["fc.bias"] = (classes,)
    return want


def torchvision_alexnet(classes: int = 1000) -> dict:
    convs = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3),
             10: (256, 256, 3, 3)}
    want = {}
    for i, s in convs.items():
        want[f"features.{i}.weight"] = s
        want[f"features.{i}.bias"] = (s[0],)
    for i, (o, n) in {1: (4096, 9216), 4: (4096, 4096), 6: (classes, 4096)}.items():
        want[f"classifier.{i}.weight"] = (o, n)
        want[f"classifier.{i}.bias"] = (o,)
    return want


def torchvision_vgg16(classes: int = 1000) -> dict:
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    want, idx, cin = {}, 0, 3
    for v in cfg:
        if v == "M":
            idx += 1
            continue
        want[f"features.{idx}.weight"] = (v, cin, 3, 3)
        want[f"features.{idx}.bias"] = (v,)
        idx += 2  # conv, relu
        cin = v
    for i, (o, n) in {0: (4096, 25088), 3: (4096, 4096), 6: (classes, 4096)}.items():
        want[f"classifier.{i}.weight"] = (o, n)
        want[f"classifier.{i}.bias"] = (o,)
    return want


def _shapes(name: str, classes: int = 1000) -> dict:
    with torch.device("meta"):
        m = models.create(name, num_classes=classes)
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("name,want", [
    ("resnet18", torchvision_resnet([2, 2, 2, 2], False)),
    ("resnet50", torchvision_resnet([3, 4, 6, 3], True)),
    ("alexnet", torchvision_alexnet()),
    ("vgg16", torchvision_vgg16()),
])
def test_state_dict_matches_torchvision(name, want):
    got = _shapes(name)
    assert list(got) == list(want)  # same keys, same order
    assert got == want


def test_known_sizes():
    # Published parameter counts of torchvision's models.
    counts = {"resnet18": 11_689_512, "resnet50": 25_557_032, "alexnet": 61_100_840,
              "vgg16": 138_357_544}
    for name, n in counts.items():
        with torch.device("meta"):
            m = models.create(name)
        assert sum(p.numel() for p in m.parameters()) == n
    assert len(_shapes("resnet18")) == 122 and len(_shapes("resnet50")) == 320


def test_tiny_resnet_layout_and_forward():
    m = models.create("tiny_resnet", num_classes=7)
    names = {k.split(".")[0] for k in m.state_dict()}
    assert names == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"}
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert m.fc.weight.shape == (7, 128)


def test_cam_layer():
    r = models.create("tiny_resnet", num_classes=3)
    assert models.cam_layer(r) is r.layer4
    a = models.create("alexnet", num_classes=3)
    assert models.cam_layer(a) is a.features
    # AlexNet CAM maps: 6x6 at 224 px, 13x13 at 448 px (the DESIGN's "not exactly 2x" case).
    with torch.no_grad():
        assert a.features(torch.zeros(1, 3, 224, 224)).shape[-2:] == (6, 6)
        assert a.features(torch.zeros(1, 3, 448, 448)).shape[-2:] == (13, 13)
    with pytest.raises(GridcamError, match="CAM layer"):
        models.cam_layer(torch.nn.Linear(2, 2))


def test_pooling_max_is_gmp():
    m = models.create("tiny_resnet", num_classes=4, pooling="max").eval()
    x = torch.randn(2, 3, 64, 64)
    feats = m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))
    want = m.fc(feats.amax(dim=(2, 3)))
    torch.testing.assert_close(m(x), want)
    with pytest.raises(GridcamError, match="ResNets"):
        models.create("vgg11", pooling="max")
    with pytest.raises(GridcamError, match="unknown architecture"):
        models.create("resnet19")


# ------------------------------------------------------------------------------------- loading
def test_load_torchvision_style_dict(tmp_path):
    src = models.create("tiny_resnet", num_classes=5)
    torch.save(src.state_dict(), tmp_path / "tv.pth")
    dst = models.create("tiny_resnet", num_classes=5)
    models.load_checkpoint(dst, tmp_path / "tv.pth")
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])


def test_load_pre_0_4_1_file_without_bn_counters(tmp_path):
    # torchvision's resnet50-19c8e357.pth predates BatchNorm's num_batches_tracked buffers.
    src = models.create("resnet18", num_classes=5)
    old = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(old) < len(src.state_dict())
    torch.save(old, tmp_path / "old.pth")
    dst = models.create("resnet18", num_classes=5)
    models.load_checkpoint(dst, tmp_path / "old.pth")
    assert torch.equal(dst.layer1[0].bn1.running_var, src.layer1[0].bn1.running_var)
    assert models.guess_arch(old) == "resnet18"


def test_load_paper_style_module_prefixes(tmp_path):
    src = models.create("alexnet", num_classes=3)
    # The paper's AlexNet checkpoints wrap only `features` in DataParallel: features.module.0.weight
    sd = {k.replace("features.", "features.module."): v for k, v in src.state_dict().items()}
    torch.save({"epoch": 90, "arch": "alexnet", "state_dict": sd, "best_acc1": 56.1}, tmp_path / "p.pth")
    dst = models.create("alexnet", num_classes=3)
    meta = models.load_checkpoint(dst, tmp_path / "p.pth")
    assert meta["epoch"] == 90 and meta["arch"] == "alexnet"
    assert torch.equal(dst.features[0].weight, src.features[0].weight)
    # ResNet trained under DataParallel: module. at the front.
    r = models.create("tiny_resnet", num_classes=3)
    torch.save({"state_dict": {"module." + k: v for k, v in r.state_dict().items()}}, tmp_path / "r.pth")
    r2 = models.create("tiny_resnet", num_classes=3)
    models.load_checkpoint(r2, tmp_path / "r.pth")
    assert torch.equal(r2.fc.weight, r.fc.weight)


def test_mismatched_architecture_is_explained(tmp_path):
    torch.save(models.create("resnet18", num_classes=10).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(GridcamError) as err:
        models.load_checkpoint(models.create("tiny_resnet", num_classes=10), tmp_path / "r18.pth")
    msg = str(err.value)
    assert "looks like resnet18" in msg and "r18.pth" in msg
    assert "conv1.weight: file (64, 3, 7, 7) vs model (16, 3, 7, 7)" in msg


def test_class_count_mismatch_and_drop_classifier(tmp_path):
    src = models.create("tiny_resnet", num_classes=10)
    torch.save({"state_dict": src.state_dict()}, tmp_path / "in.pth")
    dst = models.create("tiny_resnet", num_classes=4)
    with pytest.raises(GridcamError, match="10 classes but the model has 4"):
        models.load_checkpoint(dst, tmp_path / "in.pth")
    fresh_fc = dst.fc.weight.clone()
    models.load_checkpoint(dst, tmp_path / "in.pth", drop_classifier=True)
    assert torch.equal(dst.conv1.weight, src.conv1.weight)
    assert torch.equal(dst.fc.weight, fresh_fc)  # the new classifier is kept


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_pickled_object_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"state_dict": {}, "payload": _Evil()}, f, pickle_module=pickle)
    with pytest.raises(GridcamError, match="refused.*GLOBAL posix.system"):
        models.load_checkpoint(models.create("tiny_resnet", num_classes=2), path)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_create_from_checkpoint_reads_classes_and_guesses_arch(tmp_path):
    src = models.create("tiny_resnet", num_classes=6, pooling="max")
    torch.save({"state_dict": src.state_dict(), "arch": "tiny_resnet", "pooling": "max"},
               tmp_path / "ours.pth")
    m, meta = models.create_from_checkpoint(tmp_path / "ours.pth")
    assert m.fc.out_features == 6 and meta["pooling"] == "max"
    assert isinstance(m.avgpool, torch.nn.AdaptiveMaxPool2d)
    torch.save(src.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(GridcamError, match=r"several architectures \(tiny_resnet, tiny_resnet_s16\)"):
        models.create_from_checkpoint(tmp_path / "bare.pth")  # same weights, other strides
    m2, _ = models.create_from_checkpoint(tmp_path / "bare.pth", arch="tiny_resnet")
    assert isinstance(m2, torchvision.models.ResNet) and m2.fc.out_features == 6
    assert [c.out_channels for c in (m2.conv1, m2.layer4[0].conv1)] == [16, 128]
    with pytest.raises(GridcamError, match="does not exist"):
        models.read_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(GridcamError, match="cannot read checkpoint"):
        models.read_checkpoint(tmp_path / "junk.pth")


@pytest.mark.parametrize("name,cls", [("resnet18", "ResNet"), ("resnet50", "ResNet"), ("alexnet", "AlexNet"),
                                      ("vgg11_bn", "VGG"), ("tiny_resnet", "ResNet")])
def test_builtins_are_torchvisions_models(name, cls):
    """The built-in names build torchvision's own classes (tiny_resnet: its ResNet at other widths)."""
    assert isinstance(models.create(name, num_classes=3), getattr(torchvision.models, cls))
