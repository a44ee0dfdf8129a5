"""The evaluation Python API example of docs/evaluation.md runs as written, the
top-level names are the engine's, and the configuration and keyword forms give the same numbers."""

import json

import pytest
from docs_examples import DOCS, run_python_example

import gridcam


def test_evaluation_api_example_runs(tmp_path, monkeypatch, capsys):
    scope = run_python_example("## Evaluation from Python", tmp_path, monkeypatch, DOCS / "evaluation.md")
    results, root = scope["results"], scope["root"]
    assert results["images"]["evaluated"] == 16 and results["images"]["requested"] == 16
    assert list(results["metrics"]) == ["gradcam", "gradient"]
    assert results["config"]["batch_size"] == 8 and results["config"]["seed"] == 0
    for m in ("gradcam", "gradient"):
        r = results["metrics"][m]
        assert r["evaluated"] + r["skipped"] == 16  # one class per image
        assert 0.0 <= r["content_heatmap"] <= 100.0
    # the output file is the returned dict; the per-image file has a header and one "done" per image
    assert json.loads((root / "results.json").read_text())["metrics"] == results["metrics"]
    lines = [json.loads(x) for x in (root / "per_image.jsonl").read_text().splitlines()]
    assert "gridcam_per_image" in lines[0] and sum(1 for r in lines if r.get("done")) == 16
    out = capsys.readouterr().out
    assert "**gradcam**" in out and "**gradient**" in out and out.count("| Top-1 Acc (%)") == 2
    # a rerun reads every image back from the per-image file: the same numbers, nothing recomputed
    again = gridcam.evaluate(scope["model"], scope["dataset"], scope["config"])
    assert again["images"]["resumed"] == 16 and again["metrics"] == results["metrics"]


def test_keywords_override_the_config_and_unknown_ones_are_refused(tmp_path):
    from gridcam import data, models
    from gridcam.data.synthetic import make_imagenet

    make_imagenet(tmp_path, classes=3, train_per_class=1, val_per_class=2, image_size=48)
    ds = data.ImageNetValLoc(tmp_path, transform=data.transforms.eval_transform(48))
    model = models.create("tiny_resnet", num_classes=3)
    config = gridcam.EvalConfig(metrics="pg,ch", batch_size=2, input_resize=48, limit=5)
    a = gridcam.evaluate(model, ds, config, limit=4, record={"note": "x"})
    b = gridcam.evaluate(model, ds, metrics=["pg", "ch"], batch_size=2, input_resize=48, limit=4,
                         config={"note": "x"})  # the former keyword form: config = the record
    assert a["images"]["requested"] == 4 and config.limit == 5  # the config is not modified
    assert a["metrics"] == b["metrics"] and set(a["metrics"]["gradcam"]) >= {"pointing_game"}
    assert "stochastic_pointing_game" not in a["metrics"]["gradcam"]
    assert a["config"]["note"] == b["config"]["note"] == "x"
    with pytest.raises(TypeError, match="batchsize"):
        gridcam.evaluate(model, ds, batchsize=2)


def test_top_level_names_are_the_engines():
    import subprocess
    import sys

    from gridcam.evaluation.loop import EvalConfig, evaluate

    assert gridcam.evaluate is evaluate and gridcam.EvalConfig is EvalConfig
    assert {"evaluate", "EvalConfig"} <= set(gridcam.__all__) and "evaluate" in dir(gridcam)
    with pytest.raises(AttributeError):
        gridcam.no_such_name  # noqa: B018
    # `import gridcam` stays light: the engine (and torch) load on first use only
    code = "import sys, gridcam; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
