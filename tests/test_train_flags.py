"""``gridcam train``'s promises, each through the command or the loop, so a bug in one fails here:
the mid-epoch resume of a model with dropout, --detach-target and --schedule cosine reaching the
loop, --resume auto, SIGINT, -j > 0, --pretrained, COCO with --negatives dataset, --maxpool and
the pooling a checkpoint records, any model's flags (--cam-layer/--reshape/--mean/--std), output
file modes and the paper's flags as spelled. Tiny data (32 px), a few steps per run."""

from __future__ import annotations

import math
import os
import signal
import stat
from pathlib import Path

import pytest
import torch

from gridcam import cli, data, models
from gridcam.cli import train as cli_train
from gridcam.runtime import checkpoint as ckpt
from gridcam.runtime import distributed as du
from gridcam.training import epoch as train_epoch
from gridcam.training.loop import TrainConfig, TrainingInterrupted, train
from gridcam.training.config import make_scheduler
from gridcam.training.setup import pooling_switches, resolve_pooling, set_up
from gridcam.errors import GridcamError
from test_train import cfg as train_cfg
from test_train import log_lines, same, weights


def cfg(data_dir: Path, save_dir: Path, **kw) -> TrainConfig:
    """test_train's configuration at 32 px, one epoch, lambda 1."""
    return train_cfg(data_dir, save_dir, **{"epochs": 1, "lr": 0.02, "lam": 1.0, "image_size": 32, **kw})


def run(*args: str) -> int:
    return cli.main(["train", *args])


def tiny(d: Path, *extra: str) -> list[str]:
    """Flags of a fast command-line run writing to ``d``."""
    return ["-a", "tiny_resnet", "-b", "8", "-j", "0", "--epochs", "1", "--lr", "0.02", "--image-size", "32",
            "--seed", "0", "--device", "cpu", "--save-dir", str(d), *extra]


def signal_at_step(monkeypatch, sig: int, at: tuple[int, int] = (0, 0)) -> None:
    """Make the command's run send itself ``sig`` after step ``at`` (0-based epoch, step)."""
    real = cli_train.config_from_args

    def with_callback(args):
        c = real(args)
        c.step_callback = lambda info: os.kill(os.getpid(), sig) if (info.epoch, info.step) == at else None
        return c

    monkeypatch.setattr(cli_train, "config_from_args", with_callback)


@pytest.fixture(scope="module")
def im(tmp_path_factory) -> Path:
    """4 classes x 8 training images (4 steps of 8), 4 validation images, 32 px."""
    return data.synthetic.make_imagenet(tmp_path_factory.mktemp("im") / "im", classes=4, train_per_class=8,
                                        val_per_class=1, image_size=32, seed=0)


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return data.synthetic.make_coco(tmp_path_factory.mktemp("coco") / "coco", images_train=8, images_val=4,
                                    categories=3, image_size=32, seed=0)


# --------------------------------------------------------------------- the mid-epoch resume
def test_mid_epoch_sigterm_resume_is_exact_for_a_model_with_dropout(im, tmp_path):
    """Dropout draws from the global RNG: the resumed epoch must continue from the saved states
    (put back after the loader's iterator, whose creation draws a number, exists)."""
    c = dict(arch="train_nets:dropout_cnn", epochs=2)
    train(cfg(im, tmp_path / "straight", **c))

    def kill(info):
        if (info.epoch, info.step) == (1, 0):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        train(cfg(im, tmp_path / "stopped", step_callback=kill, **c))
    last = torch.load(tmp_path / "stopped" / "last.pth.tar", weights_only=True)
    assert (last["epoch"], last["step"]) == (1, 2)  # in the middle of epoch 2 (4 steps)
    train(cfg(im, tmp_path / "stopped", resume=str(tmp_path / "stopped" / "last.pth.tar"), **c))
    a = weights(tmp_path / "straight" / "checkpoint_002.pth.tar")
    b = weights(tmp_path / "stopped" / "checkpoint_002.pth.tar")
    assert same(a, b)
    # and dropout does matter: another seed gives other weights
    train(cfg(im, tmp_path / "other", seed=1, **c))
    assert not same(a, weights(tmp_path / "other" / "checkpoint_002.pth.tar"))


# --------------------------------------------------------------- flags reaching the loop
def test_detach_target_reaches_the_step_and_changes_the_weights(im, tmp_path, monkeypatch):
    seen = []
    real = train_epoch.gc_step

    def spy(*a, **k):
        seen.append(k["detach_target"])
        return real(*a, **k)

    monkeypatch.setattr(train_epoch, "gc_step", spy)
    assert run("imagenet", str(im), *tiny(tmp_path / "d", "--detach-target", "--lambda", "25")) == 0
    assert seen == [True] * 4
    train(cfg(im, tmp_path / "n", lam=25.0))
    assert seen[4:] == [False] * 4
    first = "checkpoint_001.pth.tar"
    assert not same(weights(tmp_path / "d" / first), weights(tmp_path / "n" / first))


def test_cosine_schedule_follows_the_cosine_formula():
    model = torch.nn.Linear(2, 2)
    for schedule, expect in (("cosine", [0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]),
                             ("step", [0.1, 0.1, 0.01, 0.01])):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = make_scheduler(TrainConfig(epochs=4, lr=0.1, schedule=schedule, lr_steps=(2,)), opt)
        got = []
        for _ in range(4):
            got.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert got == pytest.approx(expect), schedule


def test_cosine_schedule_through_the_command_and_resume_auto(im, tmp_path, monkeypatch, capsys):
    def args(d: Path) -> list[str]:
        a = tiny(d, "--schedule", "cosine", "--lr", "0.04", "--resume", "auto")
        a[a.index("--epochs") + 1] = "2"
        return a

    assert run("imagenet", str(im), *args(tmp_path / "a")) == 0
    assert "nothing to resume, starting fresh" in capsys.readouterr().err
    # cosine over 2 epochs: 0.04, then 0.04 * (1 + cos(pi / 2)) / 2 (the step schedule: 0.04 twice)
    assert [r["lr"] for r in log_lines(tmp_path / "a")] == pytest.approx([0.04, 0.02])
    # stopped in the middle of epoch 2, the same command continues from last.pth.tar, exactly
    b = tmp_path / "b"
    with monkeypatch.context() as m:
        signal_at_step(m, signal.SIGINT, at=(1, 0))
        assert run("imagenet", str(im), *args(b)) == 130
    capsys.readouterr()
    assert run("imagenet", str(im), *args(b)) == 0
    assert f"continuing from {b / 'last.pth.tar'}" in capsys.readouterr().err
    assert [r["epoch"] for r in log_lines(b)] == [1, 2]
    assert same(weights(tmp_path / "a" / "checkpoint_002.pth.tar"), weights(b / "checkpoint_002.pth.tar"))


def test_sigint_saves_last_and_exits_130(im, tmp_path, monkeypatch, capsys):
    # the handler the run must put back: Python's default_int_handler, or SIG_IGN where the
    # process started with SIGINT ignored (a job sent to the background by a non-interactive shell)
    before = signal.getsignal(signal.SIGINT)
    signal_at_step(monkeypatch, signal.SIGINT)
    assert run("imagenet", str(im), *tiny(tmp_path)) == 130
    err = capsys.readouterr().err
    assert "interrupted by SIGINT at epoch 1, step 2" in err and "--resume" in err
    last = torch.load(tmp_path / "last.pth.tar", weights_only=True)
    assert (last["epoch"], last["step"]) == (0, 2)
    assert signal.getsignal(signal.SIGINT) is before


def test_batch_not_divisible_by_the_world_size_is_an_error(im, tmp_path):
    info = du.DistInfo(rank=0, world_size=3, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(GridcamError, match=r"--batch-size 8 \(global\) is not divisible by the world size 3"):
        set_up(cfg(im, tmp_path), info)


def test_loader_workers_give_the_same_run_as_no_workers(im, tmp_path):
    train(cfg(im, tmp_path / "j0", negatives="dataset"))
    train(cfg(im, tmp_path / "j2", negatives="dataset", workers=2))
    first = "checkpoint_001.pth.tar"
    assert same(weights(tmp_path / "j0" / first), weights(tmp_path / "j2" / first))


# ---------------------------------------------------------------- weights, pooling, COCO
def test_pretrained_weights_are_the_starting_point(im, tmp_path):
    src = tmp_path / "src.pth"
    torch.manual_seed(5)
    start = models.create("tiny_resnet", num_classes=4).state_dict()
    torch.save(start, src)  # a plain state dict, as torchvision's files
    assert run("imagenet", str(im), *tiny(tmp_path / "r", "--pretrained", str(src), "--lr", "1e-12")) == 0
    got = weights(tmp_path / "r" / "checkpoint_001.pth.tar")
    for k, v in start.items():
        if v.is_floating_point() and "running" not in k:
            torch.testing.assert_close(got[k], v, rtol=0, atol=1e-9, msg=k)
    fresh = tmp_path / "f"
    train(cfg(im, fresh, lr=1e-12))
    assert not torch.allclose(weights(fresh / "checkpoint_001.pth.tar")["conv1.weight"], start["conv1.weight"])


def test_maxpool_through_the_command_and_the_recorded_pooling(im, tmp_path, capsys):
    gmp = tmp_path / "gmp"
    assert run("imagenet", str(im), *tiny(gmp, "--maxpool")) == 0
    state = torch.load(gmp / "checkpoint_001.pth.tar", weights_only=True)
    assert state["pooling"] == "max" and state["args"]["maxpool"] is True
    # a GMP model's scores differ from the same weights under average pooling (64 px: a 2x2 map)
    x = torch.randn(2, 3, 64, 64)
    m_max, m_avg = models.create("tiny_resnet", 4, "max"), models.create("tiny_resnet", 4, "avg")
    m_max.load_state_dict(state["state_dict"]), m_avg.load_state_dict(state["state_dict"])
    assert not torch.allclose(m_max.eval()(x), m_avg.eval()(x))
    # -e without --maxpool uses the recorded GMP: the validation equals the run's own
    capsys.readouterr()
    assert run("imagenet", str(im), *tiny(tmp_path / "e", "-e", "--resume", str(gmp / "checkpoint_001.pth.tar"))) == 0
    top1 = log_lines(gmp)[0]["val"]["top1"]
    assert f"top-1 {top1:.2f}" in capsys.readouterr().out
    assert log_lines(tmp_path / "e")[0]["val"] == log_lines(gmp)[0]["val"]
    # --pretrained/--init files record their pooling too; --maxpool starts GMP from average-pooled
    # weights (the paper's COCO GMP recipe) and says so in one line
    avg = tmp_path / "avg"
    assert run("imagenet", str(im), *tiny(avg)) == 0
    capsys.readouterr()
    assert run("imagenet", str(im), *tiny(tmp_path / "x", "--maxpool", "--pretrained",
                                          str(avg / "checkpoint_001.pth.tar"))) == 0
    out = capsys.readouterr().out
    assert "was trained with average pooling; it starts this max-pooling model as asked" in out
    assert torch.load(tmp_path / "x" / "checkpoint_001.pth.tar", weights_only=True)["pooling"] == "max"
    assert run("imagenet", str(im), *tiny(tmp_path / "y", "--init", str(gmp / "checkpoint_001.pth.tar"))) == 0
    assert torch.load(tmp_path / "y" / "checkpoint_001.pth.tar", weights_only=True)["pooling"] == "max"


def test_resolve_pooling():
    assert resolve_pooling(None, []) == "avg" and resolve_pooling(True, []) == "max"
    assert resolve_pooling(None, [("--resume", "a", "max")]) == "max"
    assert resolve_pooling(None, [("--resume", "a", None)]) == "avg"  # the paper's files
    assert resolve_pooling(True, [("--init", "a", None)]) == "max"
    with pytest.raises(GridcamError, match=r"average pooling \(no --maxpool\) contradicts --resume a, which "
                                           "records max"):
        resolve_pooling(False, [("--resume", "a", "max")])
    with pytest.raises(GridcamError, match="--maxpool contradicts --resume r"):
        resolve_pooling(True, [("--pretrained", "p", "avg"), ("--resume", "r", "avg")])
    # weights to start from may have the other pooling: the flag decides, one line says so
    assert resolve_pooling(True, [("--pretrained", "p", "avg")]) == "max"
    assert resolve_pooling(False, [("--init", "i", "max")]) == "avg"
    assert resolve_pooling(None, [("--pretrained", "p", "avg"), ("--resume", "r", "max")]) == "max"
    assert pooling_switches("max", [("--pretrained", "p", "avg"), ("--init", "i", None)]) == [
        "[train] --pretrained p was trained with average pooling; it starts this max-pooling model "
        "as asked (pooling has no weights)"]
    assert pooling_switches("avg", [("--pretrained", "p", "avg")]) == []


def test_coco_training_with_dataset_negatives(coco, tmp_path, monkeypatch):
    grids = []
    real = data.GridDataset

    def spy(*a, **k):
        grids.append(a)
        return real(*a, **k)

    monkeypatch.setattr(data, "GridDataset", spy)
    assert run("coco", str(coco), *tiny(tmp_path, "--negatives", "dataset", "-b", "4")) == 0
    assert len(grids) == 1
    (line,) = log_lines(tmp_path)
    assert line["train"]["gc_samples"] == 8 and line["train"]["samples"] == 8
    assert math.isfinite(line["train"]["gc_loss"]) and line["train"]["gc_loss"] > 0
    assert line["best_acc1"] == line["val"]["f1_overall"]


def test_wrong_architecture_error_is_one_line(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(models.create("tiny_resnet", num_classes=4).state_dict(), path)
    with pytest.raises(GridcamError) as exc:
        models.load_checkpoint(models.create("resnet18", num_classes=4), path)
    msg = str(exc.value)
    assert "\n" not in msg and "does not fit ResNet (it looks like tiny_resnet" in msg
    assert "of another shape (e.g. " in msg


# --------------------------------------------------------------------------- file modes
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_files_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        ckpt.save({"a": torch.zeros(1)}, tmp_path / "c.pth.tar")
        with ckpt.atomic_file(tmp_path / "r.json", "w") as f:
            f.write("{}")
        ckpt.copy_atomic(tmp_path / "c.pth.tar", tmp_path / "best.pth.tar")
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(old)
    want = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert want == 0o666 & ~umask
    for name in ("c.pth.tar", "r.json", "best.pth.tar"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name


# ----------------------------------------------------------------- any model (issue 14)
def test_gc_training_of_a_tiny_vit_through_the_command(im, tmp_path):
    d = tmp_path / "vit"
    assert run("imagenet", str(im), *tiny(d, "-a", "anymodel_nets:tiny_vit", "--lambda", "5",
                                          "--cam-layer", "blocks.1.norm1", "--mean", "0.4,0.4,0.4")) == 0
    (line,) = log_lines(d)
    assert line["train"]["gc_samples"] == 32 and line["train"]["gc_loss"] > 0
    state = torch.load(d / "checkpoint_001.pth.tar", weights_only=True)
    assert state["arch"] == "anymodel_nets:tiny_vit" and state["cam_layer"] == "blocks.1.norm1"
    assert state["reshape"].startswith("vit") and state["mean"] == [0.4, 0.4, 0.4]
    assert state["std"] == [0.5, 0.5, 0.5]  # the model's own pretrained_cfg
    # a resumed run keeps them without the flags
    assert run("imagenet", str(im), *tiny(d, "-a", "anymodel_nets:tiny_vit", "--lambda", "5", "--epochs", "2",
                                          "--resume", "auto")) == 0
    again = torch.load(d / "checkpoint_002.pth.tar", weights_only=True)
    assert {k: again[k] for k in ("cam_layer", "reshape", "mean", "std")} == {
        k: state[k] for k in ("cam_layer", "reshape", "mean", "std")}
    # evaluation reads it back
    model, _ = models.create_from_checkpoint(d / "checkpoint_001.pth.tar")
    rec = models.info(model)
    assert (rec.cam_layer, rec.mean, rec.std) == ("blocks.1.norm1", (0.4, 0.4, 0.4), (0.5, 0.5, 0.5))


def test_training_transforms_use_the_models_normalisation(im, tmp_path, monkeypatch):
    seen = []
    real = data.transforms.train_transform

    def spy(*a, **k):
        seen.append((k.get("mean"), k.get("std")))
        return real(*a, **k)

    monkeypatch.setattr(data.transforms, "train_transform", spy)
    set_up(cfg(im, tmp_path, arch="anymodel_nets:tiny_vit", std="0.25,0.25,0.25"),
           du.DistInfo(0, 1, 0, torch.device("cpu")))
    assert seen == [((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))]


# ------------------------------------------------------------------------ the paper's flags
def test_paper_flags_parse(tmp_path, capsys, monkeypatch):
    parser = cli.build_parser()
    a = parser.parse_args(["train", "imagenet", "D", "-p", "7", "--learning-rate", "0.3", "--gpu", "1",
                           "--save_dir", "S", "--weight-decay", "5e-4"])
    assert (a.print_freq, a.lr, a.save_dir, a.wd) == (7, 0.3, "S", 5e-4)
    cli_train.paper_flags(a)
    assert a.device == "cuda:1"
    a = parser.parse_args(["train", "imagenet", "D", "--gpu", "1", "--device", "cpu"])
    with pytest.raises(GridcamError, match="--gpu 1 contradicts --device cpu"):
        cli_train.paper_flags(a)
    assert run("imagenet", str(tmp_path), "--gpu", "99") == 2
    assert "--device cuda:99: this machine has" in capsys.readouterr().err
    assert run("imagenet", str(tmp_path), "--device", "tpu9") == 2
    assert "'tpu9' is not a device" in capsys.readouterr().err
    assert run("imagenet", str(tmp_path), "--pretrained") == 2
    assert "--pretrained needs a weights FILE here" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "4")
    a = parser.parse_args(["train", "coco", "D", "--num-gpus", "2"])
    with pytest.raises(GridcamError, match="--num-gpus 2 but torchrun started 4 processes"):
        cli_train.paper_flags(a)
    monkeypatch.setenv("WORLD_SIZE", "2")
    cli_train.paper_flags(parser.parse_args(["train", "coco", "D", "--num-gpus", "2"]))  # runs


def _paper_commands(data_im: Path, data_coco: Path, out: Path, imagenet_ckpt: Path) -> list[list[str]]:
    """The training command lines of the paper's README, as spelled there (``python
    train_gcam_grid_consistency.py`` -> ``gridcam train imagenet``, ``python
    train_gcam_multiclass_grid_consistency.py`` -> ``gridcam train coco``), with tiny data: -b 256
    -> 8 and -j 16 -> 0, plus 32 px and the CPU."""
    tiny_ = ["--image-size", "32", "--device", "cpu", "--seed", "0"]
    return [
        ["imagenet", str(data_im), "-a", "resnet18", "-b", "8", "-j", "0", "--lambda", "25",
         "--save_dir", str(out / "1"), *tiny_],
        ["imagenet", str(data_im), "-a", "resnet18", "-b", "8", "-j", "0", "--lambda", "25", "--maxpool",
         "--save_dir", str(out / "2"), *tiny_],
        ["coco", str(data_coco), "-a", "resnet18", "--num-gpus", "2", "--lr", "0.01", "-b", "8", "-j", "0",
         "--lambda", "1", "--resume", str(imagenet_ckpt), "--save_dir", str(out / "3"), *tiny_],
        ["coco", str(data_coco), "-a", "resnet18", "--num-gpus", "2", "--lr", "0.01", "-b", "8", "-j", "0",
         "--lambda", "1", "--maxpool", "--resume", str(imagenet_ckpt), "--save_dir", str(out / "4"), *tiny_],
    ]


@pytest.mark.slow
def test_the_papers_training_commands_parse_and_start(im, coco, tmp_path, monkeypatch, capsys):
    # the paper's ImageNet checkpoint: DataParallel keys, 4 classes here (1000 there), no pooling
    model = models.create("resnet18", num_classes=4)
    paper = tmp_path / "imagenet_resnet18.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet18", "best_acc1": torch.tensor(69.4),
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, paper)
    signal_at_step(monkeypatch, signal.SIGINT)  # stop each run after its first step
    for args in _paper_commands(im, coco, tmp_path, paper):
        capsys.readouterr()
        rc = run(*args)
        err = capsys.readouterr().err
        if "--num-gpus" in args:
            # one line with the torchrun command; that command, on one process, starts
            (line,) = [ln for ln in err.splitlines() if "torchrun" in ln]
            assert rc == 2 and "run: torchrun --standalone --nproc_per_node 2 -m gridcam train coco" in line
            assert "--num-gpus" not in line.split("run: ")[1]
            # on one process; a tiny --learning-rate (the paper's spelling) to see the weights loaded
            args = [a for a in args if a not in ("--num-gpus", "2")] + ["--learning-rate", "1e-12"]
            rc = run(*args)
            err = capsys.readouterr().err
            assert "starting epoch 1 from its weights with the classifier dropped" in err
        assert rc == 130, (args, err[-2000:])
        save = Path(args[args.index("--save_dir") + 1])
        last = torch.load(save / "last.pth.tar", weights_only=True)
        assert last["pooling"] == ("max" if "--maxpool" in args else "avg")
        if "coco" in args:
            assert last["num_classes"] == 3  # a fresh COCO run (its one step ended epoch 1)
            torch.testing.assert_close(last["state_dict"]["conv1.weight"], model.state_dict()["conv1.weight"],
                                       rtol=0, atol=1e-9)


def test_torchrun_command_keeps_every_given_flag():
    a = cli.build_parser().parse_args(["train", "coco", "/d", "-a", "resnet50", "--num-gpus", "2", "--lr",
                                       "0.05", "--maxpool", "--save_dir", "out dir", "-j", "3"])
    cmd = cli_train.torchrun_command(a, 2)
    assert cmd.startswith("torchrun --standalone --nproc_per_node 2 -m gridcam train coco /d ")
    for part in ("--arch resnet50", "--lr 0.05", "--maxpool", "--save-dir 'out dir'", "--workers 3"):
        assert part in cmd, part
    assert "--num-gpus" not in cmd


# ------------------------------------------------------------------------ AlexNet and VGG
@pytest.mark.slow
@pytest.mark.parametrize("arch,size", [("alexnet", 64), ("vgg11", 32)])
def test_alexnet_and_vgg_gc_training_end_to_end(arch, size, tmp_path):
    """The paper's AlexNet row (and VGG): one GC step of the full-size network on 4 tiny images
    (~5 s and ~13 s on one core; VGG-11 holds ~2.6 GB)."""
    root = data.synthetic.make_imagenet(tmp_path / "d", classes=2, train_per_class=2, val_per_class=0,
                                        image_size=64, seed=0)
    out = tmp_path / "run"
    summary = train(cfg(root, out, arch=arch, batch_size=4, lr=1e-3, image_size=size, validate=False))
    t = summary["train"]
    assert t["steps"] == 1 and t["gc_samples"] == 4
    assert math.isfinite(t["loss"]) and t["gc_loss"] > 0
    assert t["loss"] == pytest.approx(t["cls_loss"] + t["gc_loss"], rel=1e-5)
    state = torch.load(out / "checkpoint_001.pth.tar", weights_only=True, mmap=True)
    assert (state["arch"], state["num_classes"], state["cam_layer"]) == (arch, 2, "features")
    assert state["state_dict"]["classifier.6.weight"].shape == (2, 4096)


def test_evaluate_only_accepts_a_plain_state_dict_as_resume(im, tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert run("imagenet", str(im), *tiny(run_dir)) == 0
    plain = tmp_path / "plain.pth"
    torch.save(weights(run_dir / "checkpoint_001.pth.tar"), plain)  # as torchvision ships weights
    capsys.readouterr()
    assert run("imagenet", str(im), *tiny(tmp_path / "e", "-e", "--resume", str(plain))) == 0
    assert log_lines(tmp_path / "e")[0]["val"] == log_lines(run_dir)[0]["val"]


def _doc_commands(path: Path) -> list[str]:
    """Every complete ``gridcam ...`` line (and ``torchrun ... -m gridcam ...`` line) of the shell
    blocks of one Markdown file, continuation lines joined (lines with a ``...`` placeholder are
    left out)."""
    import re

    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), re.S)
    commands = [c.split("#")[0].strip() for b in blocks for c in b.replace("\\\n", " ").splitlines()]
    commands = [c.split(" && ")[0] for c in commands if "..." not in c]
    out = [c for c in commands if c.startswith("gridcam ")]
    out += ["gridcam " + c.split(" -m gridcam ", 1)[1] for c in commands
            if c.startswith("torchrun ") and " -m gridcam " in c]
    return out


def test_the_docs_commands_parse():
    """Every complete ``gridcam ...`` line of the shell blocks of README.md and docs/*.md is a
    valid command line; the README names every sub-command in one."""
    import shlex

    root = Path(__file__).resolve().parents[1]
    parser = cli.build_parser()
    readme = _doc_commands(root / "README.md")
    assert len(readme) >= 15
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {c.split()[1] for c in readme} >= set(sub.choices)
    commands = readme + [c for page in sorted((root / "docs").glob("*.md")) for c in _doc_commands(page)]
    assert len(commands) >= 60
    for command in commands:
        parser.parse_args(shlex.split(command.replace("$r", "run"))[1:])


def test_crop_scale_reaches_the_training_crops_and_bad_values_are_one_line(im, tmp_path, capsys):
    """``--crop-scale MIN MAX`` is RandomResizedCrop's scale in the training transform (a crop of
    the whole image area when MIN = MAX = 1); a scale outside (0, 1] or MIN > MAX is one error line."""
    c = cli_train.config_from_args(cli.build_parser().parse_args(
        ["train", "imagenet", str(im), *tiny(tmp_path / "r", "--crop-scale", "1", "1")]))
    assert c.crop_scale == (1.0, 1.0)
    ds = set_up(c, du.DistInfo(0, 1, 0, torch.device("cpu"))).ds.train
    crop = ds.transform.transforms[0]
    assert isinstance(crop, data.transforms.RandomResizedCrop) and crop.scale == (1.0, 1.0)
    assert data.transforms.train_transform(32).transforms[0].scale == (0.08, 1.0)  # torchvision's default
    for bad in (["0", "1"], ["0.5", "0.2"], ["0.5", "1.5"]):
        assert run("imagenet", str(im), *tiny(tmp_path / "bad", "--crop-scale", *bad)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--crop-scale must be MIN MAX" in err[0], err
    assert not (tmp_path / "bad").exists()
