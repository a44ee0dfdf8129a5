"""``gridcam evaluate`` flags for the model: CAM layer, normalisation, recorded pooling, bad sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import anymodel_nets as nets
from gridcam import models
from gridcam.cli import main as cli_main
from gridcam.data import synthetic
from gridcam.evaluation import data as eval_data

VIT = "anymodel_nets:tiny_vit"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return synthetic.make_imagenet(tmp_path_factory.mktemp("im") / "im", classes=3, train_per_class=1,
                                   val_per_class=2, image_size=64, seed=1)


def _evaluate(root: Path, ckpt: Path, out: Path, *extra: str) -> dict:
    rc = cli_main(["evaluate", "imagenet", str(root), "--checkpoint", str(ckpt), "--input-resize", "48",
                   "-j", "0", "-b", "2", "--quiet", "--output", str(out), *extra])
    assert rc == 0
    return json.loads(out.read_text())


def test_cam_layer_and_normalisation_reach_the_evaluation(root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    ckpt = tmp_path / "vit.pth.tar"
    torch.save({"state_dict": nets.tiny_vit(3).state_dict(), "arch": VIT}, ckpt)
    res = _evaluate(root, ckpt, tmp_path / "a.json")
    # the model's own constants (0.5) and its default layer are recorded with the results
    assert res["config"]["mean"] == [0.5] * 3 and res["config"]["cam_layer"] == "blocks.1.norm1"
    other = _evaluate(root, ckpt, tmp_path / "b.json", "--cam-layer", "blocks.0.norm2",
                      "--mean", "0.1,0.2,0.3")
    assert other["config"]["cam_layer"] == "blocks.0.norm2" and other["config"]["mean"] == [0.1, 0.2, 0.3]
    # another layer and other constants give other heatmaps and logits
    assert other["metrics"]["gradcam"]["content_heatmap"] != res["metrics"]["gradcam"]["content_heatmap"]


def test_eval_dataset_uses_the_given_constants(root: Path) -> None:
    a = eval_data.build_dataset("imagenet", root, 48, 3)
    b = eval_data.build_dataset("imagenet", root, 48, 3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    xa, xb = a[0]["image"], b[0]["image"]
    # same pixels p: (p - .485)/.229 vs (p - .5)/.5 -> recover p from both
    imagenet_mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    imagenet_std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(xa * imagenet_std + imagenet_mean, xb * 0.5 + 0.5, atol=1e-5, rtol=0)
    assert not torch.allclose(xa, xb)


def test_recorded_pooling_is_used_and_a_contradicting_flag_refused(root: Path, tmp_path: Path,
                                                                   capsys) -> None:
    model = models.create("tiny_resnet", num_classes=3)
    ckpt = tmp_path / "avg.pth.tar"
    torch.save({"state_dict": model.state_dict(), "arch": "tiny_resnet", "pooling": "avg"}, ckpt)
    rc = cli_main(["evaluate", "imagenet", str(root), "--checkpoint", str(ckpt), "--maxpool",
                   "--quiet", "--output", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "--maxpool contradicts" in err[0] and "average pooling" in err[0]
    gmp = tmp_path / "max.pth.tar"
    torch.save({"state_dict": model.state_dict(), "arch": "tiny_resnet", "pooling": "max"}, gmp)
    res = _evaluate(root, gmp, tmp_path / "m.json")  # no flag: the recorded GMP is used
    assert res["config"]["pooling"] == "max"


@pytest.mark.parametrize("value", ["0", "-3", "abc"])
def test_bad_input_resize_is_one_line(value: str, capsys) -> None:
    assert cli_main(["evaluate", "imagenet", "/nonexistent", "--checkpoint", "x", "--input-resize", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--input-resize" in err[0] and "Traceback" not in err[0]


def test_every_method_in_one_pass_with_options(root: Path, tmp_path: Path, capsys) -> None:
    from gridcam import cam

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.pth.tar"
    torch.save({"state_dict": models.create("tiny_resnet", num_classes=3).state_dict(),
                "arch": "tiny_resnet"}, ckpt)
    cheap = ["samples=2", "steps=2", "num_masks=8", "iterations=2", "window=16", "stride=16"]
    res = _evaluate(root, ckpt, tmp_path / "all.json", "--methods", "all", "--method-batch", "8",
                    *[a for o in cheap for a in ("--method-option", o)])
    assert set(res["metrics"]) == set(cam.METHODS)
    for name, r in res["metrics"].items():
        assert r["evaluated"] + r["skipped"] == 6, name
    assert res["config"]["method_options"]["method_batch"] == 8
    assert res["config"]["method_options"]["num_masks"] == 8
    out = capsys.readouterr().out
    # one block per method, each in the paper's layout
    assert out.count("| Top-1 Acc (%) | Top-5 Acc (%) | Pointing Game |") == len(cam.METHODS)
    assert "**rise**" in out and "**gradcampp**" in out


def test_a_misspelt_method_option_fails_before_the_pass(root: Path, tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "tiny.pth.tar"
    torch.save({"state_dict": models.create("tiny_resnet", num_classes=3).state_dict(),
                "arch": "tiny_resnet"}, ckpt)
    rc = cli_main(["evaluate", "imagenet", str(root), "--checkpoint", str(ckpt), "--quiet",
                   "--methods", "smoothgrad", "--method-option", "smaples=3",
                   "--output", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "'smaples'" in err[-1] and "samples" in err[-1]
    assert not (tmp_path / "r.json").exists()


def test_seed_variant_samples_tolerance_and_classes_flags_reach_the_scores(root: Path, tmp_path: Path) -> None:
    """Each flag changes what it should and nothing else (each was once ignored without a test
    noticing)."""
    torch.manual_seed(3)
    ckpt = tmp_path / "gmp.pth.tar"  # GMP: classic and elementwise Grad-CAM differ (GAP: equal up to scale)
    torch.save({"state_dict": models.create("tiny_resnet", num_classes=3, pooling="max").state_dict(),
                "arch": "tiny_resnet", "pooling": "max"}, ckpt)

    def run(name: str, *flags: str) -> dict:
        res = _evaluate(root, ckpt, tmp_path / f"{name}.json", *flags)
        return res["metrics"]["gradcam"]

    base = run("base")
    seed = run("seed", "--seed", "1")
    assert seed["stochastic_pointing_game"] != base["stochastic_pointing_game"]
    assert (seed["pointing_game"], seed["content_heatmap"]) == (base["pointing_game"], base["content_heatmap"])
    classic = run("classic", "--gradcam-variant", "classic")
    assert classic["content_heatmap"] != base["content_heatmap"]
    few = run("few", "--spg-samples", "3")
    hits = few["stochastic_pointing_game"] * 3 / 100 * few["evaluated"]  # whole draws, 3 per pair
    assert abs(hits - round(hits)) < 1e-9 and few["stochastic_pointing_game"] != base["stochastic_pointing_game"]
    wide = run("wide", "--tolerance", "1000")
    assert wide["pointing_game"] == 100.0 and wide["stochastic_pointing_game"] == 100.0
    assert wide["content_heatmap"] == base["content_heatmap"]  # CH has no tolerance
    classes = tmp_path / "classes.txt"
    wnids = sorted(p.name for p in (root / "train").iterdir())
    classes.write_text("\n".join(reversed(wnids)) + "\n")  # another class order: other labels
    swapped = _evaluate(root, ckpt, tmp_path / "swapped.json", "--classes", str(classes))
    assert swapped["config"]["num_classes"] == 3
    assert swapped["metrics"]["gradcam"] != base
