"""``gridcam train`` speaks like torchvision's reference script: an opening line before the first
epoch, the epoch lines on stdout (``> log.txt`` keeps them), progress on stderr, and a sign of
life at the first step."""

from __future__ import annotations

import pytest

from gridcam import cli
from gridcam.data import synthetic
from gridcam.training.log import Progress, format_opening


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic.make_imagenet(tmp_path_factory.mktemp("d") / "d", classes=2, train_per_class=4,
                                   val_per_class=1, image_size=32, seed=0)


def test_opening_and_epoch_lines_on_stdout_progress_on_stderr(data, tmp_path, capsys):
    rc = cli.main(["train", "imagenet", str(data), "-a", "tiny_resnet", "-b", "4", "-j", "0",
                   "--epochs", "1", "--image-size", "32", "--device", "cpu", "--seed", "0",
                   "--save-dir", str(tmp_path / "run")])
    assert rc == 0
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0] == (f"gridcam train: tiny_resnet on imagenet {data} (2 classes, 8 training + 2 "
                      f"validation images) on cpu; 1 epoch, batch 4, lr 0.1, lambda 25; checkpoints "
                      f"in {tmp_path / 'run'}")
    assert out[1].startswith("epoch 1: lr 0.1") and "val: top-1" in out[1]
    assert out[-1].startswith("gridcam: done: 1 epoch(s)")
    assert "epoch 1: lr" not in captured.err and "gridcam train:" not in captured.err
    # not a terminal: plain progress lines on stderr, the first one after the first step
    assert "epoch 1/1 [1/2]" in captured.err and "epoch 1/1 [2/2]" in captured.err


def test_first_step_of_an_epoch_is_shown_unless_resumed_mid_epoch():
    fresh = Progress([], total=100, desc="e", print_freq=10, bar=False)
    assert [s for s in range(100) if fresh.due(s)] == [0, 9, 19, 29, 39, 49, 59, 69, 79, 89, 99]
    resumed = Progress([], total=100, desc="e", print_freq=10, bar=False, initial=40)
    assert not resumed.due(40) and resumed.due(49)


def test_opening_line_of_a_resumed_and_an_evaluation_run():
    common = {"arch": "resnet18", "dataset": "coco", "data": "/c", "classes": 80, "train_images": 100,
              "val_images": 10, "device": "cuda:0", "world": 4, "batch": 256, "lr": 0.01, "lam": 1.0,
              "save_dir": "s"}
    assert "epochs 25-36" in format_opening(epochs=(25, 36), **common)
    assert "on cuda:0 x 4 processes" in format_opening(epochs=(25, 36), **common)
    assert "all 36 epochs done" in format_opening(epochs=(37, 36), **common)
    assert format_opening(epochs=(1, 36), evaluate=True, **common) == (
        "gridcam train: validating resnet18 on coco /c (80 classes, 10 validation images) on cuda:0 x 4 processes")


def test_one_flag_per_error(capsys):
    from gridcam.errors import GridcamError
    from gridcam.training.config import TrainConfig, check_config

    for field, flag in (("batch_size", "--batch-size"), ("print_freq", "--print-freq")):
        with pytest.raises(GridcamError) as exc:
            check_config(TrainConfig(**{field: 0}))
        assert str(exc.value) == f"{flag} must be >= 1, got 0"
    for field, flag in (("epochs", "--epochs"), ("workers", "--workers")):
        with pytest.raises(GridcamError, match=f"^{flag} must be >= 0, got -1$"):
            check_config(TrainConfig(**{field: -1}))
