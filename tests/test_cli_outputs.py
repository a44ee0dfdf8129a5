"""No tracebacks, no lost work: every place a command writes is checked before its work starts
(one line naming the flag, exit 2), bad --cmap / --methods / --method-option values are one line,
and evaluate's results survive a failing write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gridcam import cli, models
from gridcam.data import synthetic

#: (argv before the output flag, the flag, whether the path is a folder); the inputs do not exist:
#: the output is refused before anything reads them.
COMMANDS = [
    (["evaluate", "imagenet", "nodata", "--checkpoint", "no.pth", "--output"], "--output", False),
    (["evaluate", "imagenet", "nodata", "--checkpoint", "no.pth", "--per-image"], "--per-image", False),
    (["train", "imagenet", "nodata", "-a", "tiny_resnet", "--save-dir"], "--save-dir", True),
    (["explain", "no.png", "--checkpoint", "no.pth", "--out"], "--out", True),
    (["report", "norun", "--out"], "--out", True),
    (["synth", "imagenet"], "OUT", True),
    (["synth", "coco"], "OUT", True),
    (["coco-negatives", "nodata", "--output"], "--output", False),
    (["study", "--out"], "--out", True),
    (["demo", "--out"], "--out", True),
]


def _one_error_line(err: str, *words: str) -> str:
    """``err`` is one ``gridcam: error:`` line holding every one of ``words``."""
    assert err.count("\n") == 1 and err.startswith("gridcam: error: "), err
    assert "Traceback" not in err and all(w in err for w in words), err
    return err


@pytest.fixture
def a_file(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "afile"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("argv,flag,folder", COMMANDS, ids=[" ".join(c[0][:2]) + " " + c[1] for c in COMMANDS])
@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_output_is_refused_before_the_work(argv, flag, folder, where, a_file, capsys):
    target = str(a_file / "x" / ("out" if folder else "r.json")) if where == "under_a_file" else \
        "/proc/gridcam-test/" + ("out" if folder else "r.json")
    assert cli.main([*argv, target]) == 2
    _one_error_line(capsys.readouterr().err, flag, target)
    assert a_file.read_text() == "not a folder"  # nothing already there is touched


def test_output_that_is_a_folder_or_a_device_is_refused(tmp_path, capsys):
    base = ["evaluate", "imagenet", "nodata", "--checkpoint", "no.pth", "--output"]
    assert cli.main([*base, str(tmp_path)]) == 2
    _one_error_line(capsys.readouterr().err, "--output", "is a folder")
    assert cli.main([*base, "/dev/null"]) == 2
    _one_error_line(capsys.readouterr().err, "--output", "not a regular file")


def test_writable_places_pass_the_check(tmp_path):
    from gridcam.cli.common import check_output_dir, check_output_file

    assert check_output_dir("--out", tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert check_output_file("--output", tmp_path / "a" / "r.json") == tmp_path / "a" / "r.json"
    assert not (tmp_path / "new").exists() and not (tmp_path / "a").exists()  # nothing created
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the probe file is gone


# ------------------------------------------------------------------ values checked before work
@pytest.mark.parametrize("argv,words", [
    (["explain", "no.png", "--checkpoint", "no.pth", "--cmap", "nosuch"], ("--cmap", "nosuch", "viridis")),
    (["explain", "no.png", "--checkpoint", "no.pth", "--methods", "gradcam,nosuch"], ("--methods", "nosuch")),
    (["report", "norun", "--methods", "gradcam,gradient"], ("--methods", "ONE")),
    (["report", "norun", "--method", "nosuch"], ("--methods", "nosuch")),
    (["evaluate", "imagenet", "d", "--checkpoint", "c", "--methods", "rise", "--method-option",
      "num_masks=abc"], ("--method-option", "num_masks", "an integer", "4000")),
    (["evaluate", "imagenet", "d", "--checkpoint", "c", "--methods", "smoothgrad", "--method-option",
      "sigma=high"], ("--method-option", "sigma", "a number")),
    (["evaluate", "imagenet", "d", "--checkpoint", "c", "--methods", "rise", "--method-option",
      "progress=1"], ("--method-option", "progress", "True or False")),
    (["evaluate", "imagenet", "d", "--checkpoint", "c", "--methods", "rise", "--method-option",
      "generator=1"], ("--method-option", "generator", "Python object")),
    (["evaluate", "imagenet", "d", "--checkpoint", "c", "--method-option", "varient=classic"],
     ("--method-option", "varient", "variant")),
    (["train", "imagenet", "nodata", "-a", "nosuch", "-b", "100000"], ("-a/--arch", "nosuch", "tiny_resnet")),
])
def test_bad_values_are_one_line(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    _one_error_line(capsys.readouterr().err, *words)


def test_good_method_options_pass():
    from gridcam.cli.evaluate import check_method_options

    check_method_options(["rise", "smoothgrad"], {"num_masks": 10, "sigma": 1, "progress": True,
                                                  "samples": 4})
    check_method_options(["all"], {"method_batch": 8, "chunk": 8})


# --------------------------------------------------------------------------- one vocabulary
def test_methods_everywhere_and_method_as_hidden_alias(capsys):
    parse = cli.build_parser().parse_args
    assert parse(["explain", "x.png", "--checkpoint", "c", "--methods", "gradcam,gradient"]).methods \
        == "gradcam,gradient"
    assert parse(["explain", "x.png", "--checkpoint", "c", "--method", "gradient"]).methods == "gradient"
    assert parse(["evaluate", "imagenet", "d", "--method", "gradient"]).methods == "gradient"
    assert parse(["evaluate", "imagenet", "d"]).methods == "gradcam"
    assert parse(["report", "r", "--methods", "gradient"]).methods == "gradient"
    assert parse(["report", "r"]).methods == "gradcam"
    assert parse(["train", "imagenet", "d", "--out", "o"]).save_dir == "o"
    assert parse(["train", "imagenet", "d", "--save_dir", "o"]).save_dir == "o"
    assert parse(["synth", "imagenet", "o", "--num-classes", "3"]).classes == 3
    assert parse(["synth", "imagenet", "o", "--classes", "3"]).classes == 3
    assert parse(["layers", "-a", "tiny_resnet", "--input-size", "32"]).image_size == 32
    assert parse(["study", "-a", "tiny_resnet"]).arch == "tiny_resnet"
    for argv in (["explain", "--help"], ["report", "--help"], ["evaluate", "imagenet", "--help"]):
        assert cli.main(argv) == 0
        text = capsys.readouterr().out
        assert "--methods" in text and "--method " not in text and "--method," not in text


# ----------------------------------------------------------------- evaluate: nothing is lost
@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory) -> tuple[Path, Path]:
    root = synthetic.make_imagenet(tmp_path_factory.mktemp("im") / "im", classes=2, train_per_class=1,
                                   val_per_class=2, image_size=48, seed=0)
    torch.manual_seed(0)
    ckpt = root.parent / "tiny.pth.tar"
    torch.save({"state_dict": models.create("tiny_resnet", num_classes=2).state_dict(),
                "arch": "tiny_resnet", "num_classes": 2}, ckpt)
    return root, ckpt


def test_results_survive_a_failing_write(tiny_eval, tmp_path, monkeypatch, capsys):
    from gridcam.runtime import files

    root, ckpt = tiny_eval
    wanted = tmp_path / "out" / "results.json"
    real = files.atomic_write_json

    def full_disk(path, obj):
        if Path(path) == wanted:
            raise OSError(28, "No space left on device")
        real(path, obj)

    monkeypatch.setattr(files, "atomic_write_json", full_disk)
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["evaluate", "imagenet", str(root), "--checkpoint", str(ckpt), "--input-resize", "48",
                   "-j", "0", "--quiet", "--metrics", "pg", "--output", str(wanted)])
    captured = capsys.readouterr()
    assert rc == 2 and "Pointing Game" in captured.out  # the table came first
    err = _one_error_line(captured.err, "--output", "No space left on device", "instead")
    (spare,) = tmp_path.glob("gridcam-results-*.json")
    assert str(spare) in err and not wanted.exists()
    assert json.loads(spare.read_text())["images"]["evaluated"] == 4
