"""End-to-end tests of ``gridcam train``: real JPEG folders / COCO JSON made in tmp dirs, tiny_resnet
at 64 px (a 2x2 CAM map, 4x4 on the composite), a few steps per run."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from gridcam import cli, data, models
from gridcam.training import steps
from gridcam.training.loop import NonFiniteLoss, TrainConfig, TrainingInterrupted, train

REPO = Path(__file__).resolve().parents[1]
COLORS = [(230, 30, 30), (30, 200, 30), (30, 30, 230), (230, 230, 30)]


def make_easy(root: Path, train_per_class: int, val_per_class: int = 0, size: int = 64, seed: int = 0,
              classes: int = 4) -> Path:
    """ImageFolder data a tiny model learns in a few steps: class k = a disc of colour k at a
    random place on a noisy grey background (so the class evidence is local, as Grad-CAM wants).
    ``val/<wnid>/`` folders when ``val_per_class`` > 0."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for k in range(classes if n else 0):
            d = root / split / f"n{k:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = Image.fromarray(rng.integers(100, 156, (size, size, 3), dtype=np.uint8))
                r = size // 5
                cx, cy = rng.integers(r, size - r, 2)
                ImageDraw.Draw(img).ellipse([cx - r, cy - r, cx + r, cy + r], fill=COLORS[k])
                img.save(d / f"{k}_{i}.JPEG", quality=90)
    return root


def cfg(data_dir: Path, save_dir: Path, **kw) -> TrainConfig:
    base = dict(dataset="imagenet", data=str(data_dir), arch="tiny_resnet", batch_size=8, workers=0,
                epochs=2, lr=0.05, lam=25.0, image_size=64, seed=0, save_dir=str(save_dir),
                progress_bar=False, print_freq=1000, tensorboard=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def log_lines(save_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (save_dir / "train_log.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _val_reference(root: Path, checkpoint: Path) -> tuple[float, float, float]:
    """Top-1 %, top-5 % and mean cross-entropy of ``checkpoint`` on ``root/val/<wnid>/*``,
    computed here: PIL resize (shorter side 73 = round(64 * 256 / 224)) + centre 64 crop,
    ImageNet normalisation, one image at a time, counted by hand."""
    model = models.create("tiny_resnet", num_classes=4)
    model.load_state_dict(weights(checkpoint))
    model.eval()
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    hits1 = hits5 = n = 0
    losses = []
    for label, folder in enumerate(sorted((root / "val").iterdir())):
        for f in sorted(folder.iterdir()):
            img = Image.open(f).convert("RGB")
            w, h = img.size
            s = 73 / min(w, h)
            img = img.resize((round(w * s), round(h * s)), Image.BILINEAR)
            left, top = (img.width - 64) // 2, (img.height - 64) // 2
            img = img.crop((left, top, left + 64, top + 64))
            x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
            x = (x - mean[:, None, None]) / std[:, None, None]
            with torch.no_grad():
                logits = model(x[None])[0].double()
            order = sorted(range(4), key=lambda k: -float(logits[k]))
            hits1 += order[0] == label
            hits5 += label in order[:5]
            losses.append(float(torch.logsumexp(logits, 0) - logits[label]))
            n += 1
    return 100.0 * hits1 / n, 100.0 * hits5 / n, sum(losses) / n


@pytest.fixture(scope="module")
def easy(tmp_path_factory) -> Path:
    return make_easy(tmp_path_factory.mktemp("easy"), train_per_class=16, val_per_class=2)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """The project's synthetic ImageNet layout: train/<wnid>/, flat val/ with VOC XML."""
    return data.synthetic.make_imagenet(tmp_path_factory.mktemp("synth") / "im", classes=4,
                                        train_per_class=8, val_per_class=2, image_size=64, seed=0)


@pytest.fixture(scope="module")
def straight(synth, tmp_path_factory) -> Path:
    """A 2-epoch run on ``synth`` that the resume / interrupt / NaN tests compare against."""
    out = tmp_path_factory.mktemp("straight")
    train(cfg(synth, out, lr=0.02))
    return out


# --------------------------------------------------------------------------------- the runs
def test_two_epoch_gc_run_writes_checkpoints_and_log_and_gc_loss_falls(easy, tmp_path):
    summary = train(cfg(easy, tmp_path))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint_001.pth.tar", "checkpoint_002.pth.tar", "model_best.pth.tar",
                     "train_log.jsonl"]
    lines = log_lines(tmp_path)
    assert [r["epoch"] for r in lines] == [1, 2]
    for r in lines:
        t = r["train"]
        assert all(math.isfinite(t[k]) for k in ("loss", "cls_loss", "gc_loss"))
        assert t["samples"] == 64 and t["steps"] == 8 and t["gc_samples"] == 64
        assert t["loss"] == pytest.approx(t["cls_loss"] + 25.0 * t["gc_loss"], rel=1e-5)
        assert r["val"]["images"] == 8
        # the validation numbers, recomputed here from each epoch's checkpoint
        top1, top5, loss = _val_reference(easy, tmp_path / r["checkpoint"])
        assert r["val"]["top1"] == pytest.approx(top1) and r["val"]["top5"] == pytest.approx(top5)
        assert r["val"]["loss"] == pytest.approx(loss, rel=1e-4)
    assert lines[1]["train"]["gc_loss"] < lines[0]["train"]["gc_loss"]  # the consistency loss falls

    state = torch.load(tmp_path / "checkpoint_002.pth.tar", weights_only=True)
    for key in ("epoch", "arch", "state_dict", "best_acc1", "optimizer", "scheduler", "num_classes",
                "pooling", "rng", "args", "seed", "classes"):
        assert key in state, key
    assert (state["epoch"], state["step"], state["arch"], state["num_classes"], state["pooling"]) == (
        2, 0, "tiny_resnet", 4, "avg")
    assert state["classes"] == [f"n{k:08d}" for k in range(4)]
    assert state["args"]["lam"] == 25.0 and state["seed"] == 0
    best_epoch = max(lines, key=lambda r: (r["val"]["top1"], -r["epoch"]))["epoch"]
    assert same(weights(tmp_path / "model_best.pth.tar"),
                weights(tmp_path / f"checkpoint_{best_epoch:03d}.pth.tar"))
    assert summary["best_acc1"] == max(r["val"]["top1"] for r in lines)
    # the file is a plain weights file for the models API too
    model = models.create("tiny_resnet", num_classes=4)
    models.load_checkpoint(model, tmp_path / "model_best.pth.tar")


def test_baseline_builds_no_composite(easy, tmp_path, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("lambda = 0 must not build composites, heatmaps or loader negatives")

    monkeypatch.setattr(steps.grid, "compose", forbidden)
    monkeypatch.setattr(steps.cam, "grad_cam", forbidden)
    monkeypatch.setattr(data, "GridDataset", forbidden)
    train(cfg(easy, tmp_path, lam=0.0, epochs=1, negatives="dataset"))
    (line,) = log_lines(tmp_path)
    assert line["train"]["gc_loss"] is None and line["train"]["gc_samples"] == 0
    assert line["train"]["loss"] == line["train"]["cls_loss"]


def test_resume_continues_exactly(synth, straight, tmp_path):
    train(cfg(synth, tmp_path, lr=0.02, epochs=1))
    assert not (tmp_path / "checkpoint_002.pth.tar").exists()
    train(cfg(synth, tmp_path, lr=0.02, epochs=2, resume=str(tmp_path / "checkpoint_001.pth.tar"),
              seed=None))  # the run's seed comes from the checkpoint
    a = torch.load(straight / "checkpoint_002.pth.tar", weights_only=True)
    b = torch.load(tmp_path / "checkpoint_002.pth.tar", weights_only=True)
    assert same(a["state_dict"], b["state_dict"])
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    assert a["best_acc1"] == b["best_acc1"] and a["scheduler"] == b["scheduler"]
    timing = ("seconds", "img_per_s")
    resumed, ref = log_lines(tmp_path)[1]["train"], log_lines(straight)[1]["train"]
    assert {k: v for k, v in resumed.items() if k not in timing} == {
        k: v for k, v in ref.items() if k not in timing}


def test_sigterm_saves_a_resumable_checkpoint_that_continues_exactly(synth, straight, tmp_path):
    def kill_at_epoch2_step1(info):
        if (info.epoch, info.step) == (1, 0):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match="SIGTERM") as exc:
        train(cfg(synth, tmp_path, lr=0.02, step_callback=kill_at_epoch2_step1))
    assert exc.value.checkpoint == tmp_path / "last.pth.tar"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    last = torch.load(tmp_path / "last.pth.tar", weights_only=True)
    # the signal came after epoch 2's first step (in the callback): the step in progress after
    # it, the second, is finished, then the run stops
    assert (last["epoch"], last["step"]) == (1, 2)
    assert not (tmp_path / "checkpoint_002.pth.tar").exists()
    train(cfg(synth, tmp_path, lr=0.02, resume=str(tmp_path / "last.pth.tar")))
    assert same(weights(tmp_path / "checkpoint_002.pth.tar"), weights(straight / "checkpoint_002.pth.tar"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(synth, straight, tmp_path):
    def poison(info):
        if (info.epoch, info.step) == (1, 0):
            with torch.no_grad():
                models.unwrap(info.model).fc.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLoss, match=r"epoch 2, step 2: loss=nan") as exc:
        train(cfg(synth, tmp_path, lr=0.02, step_callback=poison))
    assert "checkpoint_001.pth.tar is untouched" in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_001.pth.tar", "model_best.pth.tar",
                                                          "train_log.jsonl"]
    assert same(weights(tmp_path / "checkpoint_001.pth.tar"), weights(straight / "checkpoint_001.pth.tar"))
    assert len(log_lines(tmp_path)) == 1


def test_cli_reports_non_finite_loss_with_exit_code_3(easy, tmp_path, capsys):
    rc = cli.main(["train", "imagenet", str(easy), "-a", "tiny_resnet", "-b", "8", "-j", "0",
                   "--epochs", "1", "--lr", "1e30", "--image-size", "64", "--seed", "0",
                   "--save-dir", str(tmp_path), "--device", "cpu"])
    assert rc == 3
    err = capsys.readouterr().err
    assert "non-finite loss at epoch 1, step" in err and "Lower --lr" in err
    assert not list(tmp_path.glob("*.pth.tar"))


def test_corrupt_training_image_is_skipped_and_named(tmp_path, capsys):
    root = make_easy(tmp_path / "d", train_per_class=8, classes=2)
    broken = root / "train" / "n00000000" / "0_0.JPEG"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")  # 16 images, 1 unreadable
    out = tmp_path / "run"
    train(cfg(root, out, epochs=1, batch_size=4, lam=1.0))
    (line,) = log_lines(out)
    assert line["train"]["skipped_images"] == 1 and line["train"]["samples"] == 15
    assert len(line["train"]["skipped"]) == 1 and "0_0.JPEG" in line["train"]["skipped"][0]
    assert "1 unreadable training image(s) skipped" in capsys.readouterr().err


def test_coco_finetune_from_an_imagenet_checkpoint(straight, tmp_path, capsys):
    coco = data.synthetic.make_coco(tmp_path / "coco", images_train=16, images_val=6, categories=3,
                                    image_size=64, seed=0)
    src = straight / "checkpoint_002.pth.tar"
    out = tmp_path / "run"
    args = ["train", "coco", str(coco), "-a", "tiny_resnet", "-b", "4", "-j", "0", "--epochs", "1",
            "--image-size", "64", "--seed", "0", "--save-dir", str(out), "--device", "cpu"]
    assert cli.main(args + ["--pretrained", str(src)]) == 2  # 4 ImageNet classes vs 3 categories
    assert "--init" in capsys.readouterr().err
    assert cli.main(args + ["--init", str(src), "--lr", "1e-12"]) == 0
    state = torch.load(out / "checkpoint_001.pth.tar", weights_only=True)
    assert state["num_classes"] == 3 and state["dataset"] == "coco"
    assert state["state_dict"]["fc.weight"].shape == (3, 128)
    imagenet = weights(src)
    for key in ("conv1.weight", "layer4.0.conv2.weight"):  # backbone came from ImageNet (lr ~ 0)
        torch.testing.assert_close(state["state_dict"][key], imagenet[key], rtol=0, atol=1e-9)
    (line,) = log_lines(out)
    assert line["train"]["gc_samples"] > 0 and math.isfinite(line["train"]["gc_loss"])
    assert "acc1" not in line["train"]
    assert {"f1_overall", "f1_per_class", "precision_overall", "recall_per_class"} <= set(line["val"])
    assert line["best_acc1"] == line["val"]["f1_overall"]
    capsys.readouterr()
    assert cli.main(["train", "coco", str(coco), "-a", "tiny_resnet", "-b", "4", "-j", "0", "-e",
                     "--resume", str(out / "model_best.pth.tar"), "--save-dir", str(out),
                     "--image-size", "64", "--device", "cpu"]) == 0
    assert f"F1 overall {line['val']['f1_overall']:.2f}" in capsys.readouterr().out


def test_user_errors_are_reported_without_traceback(tmp_path, capsys):
    assert cli.main(["train", "imagenet", str(tmp_path / "nope"), "--device", "cpu"]) == 2
    assert "nope" in capsys.readouterr().err
    assert cli.main(["train", "imagenet", str(tmp_path), "--pretrained", "a", "--init", "b"]) == 2
    assert "either --pretrained" in capsys.readouterr().err


def test_two_process_ddp_equals_one_process_over_the_same_global_batch(synth, tmp_path):
    """2 ranks x 4 images (gloo) == 1 process x 8 images: dataset negatives and augmentation are
    seeded per sample, BatchNorm uses running statistics (--freeze-bn), so both runs compute the
    same per-sample losses; DDP averages the two half-batch gradients = the full-batch gradient.
    This also runs the double backward of the consistency loss under DDP."""
    common = ["-a", "tiny_resnet", "-b", "8", "-j", "0", "--epochs", "1", "--lr", "0.02",
              "--image-size", "64", "--seed", "3", "--negatives", "dataset", "--freeze-bn",
              "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "gridcam", "train", "imagenet", str(synth), *common, "--save-dir", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cli.main(["train", "imagenet", str(synth), *common, "--save-dir", str(tmp_path / "one")]) == 0
    a, b = weights(tmp_path / "one" / "checkpoint_001.pth.tar"), weights(tmp_path / "ddp" / "checkpoint_001.pth.tar")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    one, ddp = log_lines(tmp_path / "one")[0], log_lines(tmp_path / "ddp")[0]
    assert ddp["train"]["samples"] == one["train"]["samples"] == 32
    assert ddp["train"]["loss"] == pytest.approx(one["train"]["loss"], rel=1e-4)
    assert ddp["val"]["images"] == one["val"]["images"] == 8 and ddp["val"]["top1"] == one["val"]["top1"]


def test_ddp_default_recipe_runs_the_double_backward(easy, tmp_path):
    """The default configuration under DDP (in-batch negatives drawn per rank, BatchNorm in
    training mode with buffers broadcast at each of the two forwards): it trains and logs
    losses summed over both ranks."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "gridcam", "train", "imagenet", str(easy), "-a", "tiny_resnet", "-b", "16", "-j", "0",
         "--epochs", "1", "--image-size", "64", "--seed", "1", "--lr", "0.05", "--device", "cpu",
         "--save-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = log_lines(tmp_path)
    assert line["train"]["samples"] == 64 and line["train"]["gc_samples"] == 64
    assert math.isfinite(line["train"]["loss"]) and line["train"]["gc_loss"] > 0
    assert line["val"]["images"] == 8
    assert (tmp_path / "checkpoint_001.pth.tar").is_file() and not (tmp_path / "last.pth.tar").exists()


def test_resume_from_a_paper_style_checkpoint_keeps_the_learning_rate_schedule(synth, tmp_path):
    """The paper's checkpoints: DataParallel "module." keys, a tensor best_acc1, the optimizer
    state with the already-decayed lr, no scheduler/seed. Epoch 31 of the ImageNet recipe runs
    at lr 0.1 / 10 = 0.01 (decayed once, at 30), not twice."""
    model = models.create("tiny_resnet", num_classes=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    torch.save({"epoch": 31, "arch": "tiny_resnet", "best_acc1": torch.tensor(50.0),
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict()}, tmp_path / "paper.pth.tar")
    out = tmp_path / "run"
    train(cfg(synth, out, epochs=32, lr=0.1, resume=str(tmp_path / "paper.pth.tar")))
    (line,) = log_lines(out)
    assert line["epoch"] == 32 and line["lr"] == pytest.approx(0.01)
    assert (out / "checkpoint_032.pth.tar").is_file()
    assert line["best_acc1"] == max(50.0, line["val"]["top1"])


def test_batch_left_with_one_image_and_1x1_feature_maps_skips_the_step(tmp_path):
    """tiny_resnet at 32 px ends in 1x1 feature maps: a batch left with one image (its partner
    unreadable) would make BatchNorm raise "Expected more than 1 value per channel"; the step is
    skipped with one warning line, and the run goes on."""
    root = make_easy(tmp_path / "d", train_per_class=2, classes=2, size=32)
    (root / "train" / "n00000000" / "0_0.JPEG").write_bytes(b"")  # 4 images, batches of 2
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="one value per channel") as told:
        train(cfg(root, out, epochs=1, batch_size=2, lam=1.0, image_size=32))
    assert len([w for w in told if "one value per channel" in str(w.message)]) == 1
    (line,) = log_lines(out)
    assert line["train"]["skipped_images"] == 1 and line["train"]["samples"] == 2
    assert line["train"]["skipped"] == [f"{root / 'train' / 'n00000000' / '0_0.JPEG'}: empty file (0 bytes)"]
