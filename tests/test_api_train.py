"""The training Python API example of docs/training.md runs as written, and the
top-level names are the engine's."""

from docs_examples import DOCS, run_python_example

import gridcam


def test_training_api_example_runs(tmp_path, monkeypatch, capsys):
    scope = run_python_example("## Training from Python", tmp_path, monkeypatch, DOCS / "training.md")
    summary, run = scope["summary"], scope["root"] / "run"
    assert summary["last_epoch"] == 2 and summary["epochs_run"] == 2
    assert summary["num_classes"] == 4 and summary["seed"] == 1
    assert summary["train"]["gc_loss"] > 0 and summary["train"]["samples"] == 32
    assert summary["val"]["images"] == 8
    for name in ("checkpoint_001.pth.tar", "checkpoint_002.pth.tar", "model_best.pth.tar", "train_log.jsonl"):
        assert (run / name).is_file(), name
    assert capsys.readouterr().out.startswith("2 ")


def test_top_level_names_are_the_engines():
    from gridcam.training.loop import train
    from gridcam.training.config import TrainConfig

    assert gridcam.train is train and gridcam.TrainConfig is TrainConfig
    assert {"train", "TrainConfig"} <= set(gridcam.__all__) and "train" in dir(gridcam)
