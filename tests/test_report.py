import numpy as np
import torch
from PIL import Image

from gridcam import report


def test_colorize_scales_by_peak_and_handles_zero():
    h = torch.zeros(4, 4)
    h[1, 2] = 3.0
    rgb = report.colorize(h)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    # jet: the peak is dark red, zeros are dark blue
    assert rgb[1, 2, 0] > 100 and rgb[1, 2, 2] < 50
    assert rgb[0, 0, 2] > 100 and rgb[0, 0, 0] < 50
    assert report.colorize(torch.zeros(3, 3)).shape == (3, 3, 3)  # no division by zero


def test_overlay_resizes_heatmap_and_draws(tmp_path):
    img = Image.new("RGB", (40, 30), (0, 0, 0))
    out = report.overlay(img, torch.ones(5, 5), alpha=0.5, boxes=[(2, 2, 10, 10)], point=(20, 30))
    assert out.size == (40, 30)
    assert out.getpixel((2, 6)) == (255, 255, 255)  # box edge
    path = report.save_overlay_grid([[out, img]], tmp_path / "g.png", labels=["a", "b"], cell=32)
    assert Image.open(path).size == (64, 18 + 32)


def test_write_report(tmp_path):
    p = report.write_report(tmp_path / "r" / "index.html", "T",
                            {"ImageNet": (["Model", "PG"], [["GC", 80.0], ["<b>", 1]])},
                            images={"maps": tmp_path / "r" / "m.png"})
    text = p.read_text()
    assert "<td>80.00</td>" in text and "&lt;b&gt;" in text and "src='m.png'" in text


def test_a_run_started_from_a_pretraining_continues_its_curve(tmp_path):
    """A run trained from --pretrained X shows X's epochs first (numbered <= 0), so a 2-epoch row
    of the study is a curve, not two points."""
    import json

    import torch

    from gridcam.report.plots import curves
    from gridcam.report.runs import load_run

    pre, row = tmp_path / "pre", tmp_path / "row"
    pre.mkdir(), row.mkdir()
    (pre / "train_log.jsonl").write_text("".join(
        json.dumps({"epoch": e, "train": {"loss": 3.0 - e / 4}}) + "\n" for e in range(1, 5)))
    (pre / "checkpoint_004.pth.tar").write_bytes(b"")
    (row / "train_log.jsonl").write_text("".join(
        json.dumps({"epoch": e, "train": {"loss": 1.5 - e / 10}}) + "\n" for e in (1, 2)))
    torch.save({"args": {"pretrained": str(pre / "checkpoint_004.pth.tar")}, "state_dict": {}, "epoch": 2},
               row / "checkpoint_002.pth.tar")
    run = load_run(row)
    xs, ys = curves({"row": run.log})["training loss (total)"]["row"]
    assert xs == [-3, -2, -1, 0, 1, 2]
    assert ys == [2.75, 2.5, 2.25, 2.0, 1.4, 1.3]
    torch.save({"args": {}, "state_dict": {}, "epoch": 2}, row / "checkpoint_002.pth.tar")
    assert [r["epoch"] for r in load_run(row).log] == [1, 2]  # no start recorded: its own epochs only


def test_models_are_compared_on_the_pairs_every_model_scored(tmp_path):
    """A pair one model skipped (all-zero heatmap) is left out of BOTH models' means: the headline
    and the table then cover the same pairs (and say how many)."""
    import json

    from gridcam.report.runs import Run, on_common_pairs, rows_from_runs
    from gridcam.report.summary import results_table, sentence

    def run(name, recs):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"method": "gradcam", **r}) + "\n" for r in recs))
        res = {"metrics": {"gradcam": {"pointing_game": 0.0, "stochastic_pointing_game": 0.0,
                                       "content_heatmap": 0.0}}, "classification": {"top1": 50.0}}
        return Run(name, tmp_path, results=res, per_image=path)

    base = run("Base", [
        {"index": 0, "class": 1, "pg_hit": True, "spg": 0.9, "ch": 0.8},
        {"index": 1, "class": 1, "pg_hit": False, "spg": 0.1, "ch": 0.2},
        {"index": 2, "class": 2, "pg_hit": True, "spg": 0.5, "ch": 0.4},
        {"index": 3, "class": 2, "skipped": "zero_heatmap"}])
    ours = run("Ours", [
        {"index": 0, "class": 1, "skipped": "zero_heatmap"},
        {"index": 1, "class": 1, "pg_hit": True, "spg": 0.3, "ch": 0.4},
        {"index": 2, "class": 2, "pg_hit": True, "spg": 0.7, "ch": 0.6},
        {"index": 3, "class": 2, "pg_hit": False, "spg": 0.2, "ch": 0.1}])
    rows = on_common_pairs(rows_from_runs([base, ours]), [base, ours])
    b, o = rows
    # common pairs: (1, 1) and (2, 2); PG = mean over classes of the hit rate
    assert b.pairs == o.pairs == 2
    assert b.metrics["pointing_game"] == 50.0 and o.metrics["pointing_game"] == 100.0
    assert abs(b.metrics["stochastic_pointing_game"] - 30.0) < 1e-9
    assert abs(o.metrics["stochastic_pointing_game"] - 50.0) < 1e-9
    assert abs(o.metrics["content_heatmap"] - 50.0) < 1e-9 and b.metrics["top1"] == 50.0
    table = results_table(rows)
    assert "| Pairs |" in table and "| 2 |" in table
    text = sentence(rows)
    assert "over the 2 (image, class) pairs every model scored" in text and "+20.00" not in text
    assert "SPG is 20.00 points above" in text
    # without per-image files nothing is recomputed
    assert on_common_pairs(rows_from_runs([base, Run("x", tmp_path, results=base.results)]),
                           [base, Run("x", tmp_path, results=base.results)])[0].pairs is None
