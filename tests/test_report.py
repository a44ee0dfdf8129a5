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


def test_a_one_epoch_run_draws_its_losses_within_the_epoch(tmp_path):
    """A record's ``train.curve`` points ([fraction done, loss, GC loss]) become the training-loss
    and GC-loss curves at x = epoch - 1 + fraction; validation stays one point per epoch, and a
    record without a curve keeps its epoch value."""
    from gridcam.report.plots import curves

    log = [{"epoch": 1, "train": {"loss": 1.0, "gc_loss": 0.2, "curve": [[0.5, 1.2, 0.3], [1.0, 0.8, None]]},
            "val": {"top1": 90.0}},
           {"epoch": 2, "train": {"loss": 0.7, "gc_loss": 0.1}, "val": {"top1": 92.0}}]
    got = curves({"r": log})
    assert got["training loss (total)"]["r"] == ([0.5, 1.0, 2.0], [1.2, 0.8, 0.7])
    assert got["GC loss (training)"]["r"] == ([0.5, 2.0], [0.3, 0.1])  # a point without GC steps is left out
    assert got["validation top-1 (%)"]["r"] == ([1.0, 2.0], [90.0, 92.0])


def test_a_panel_of_one_value_per_run_is_bars_from_just_below_the_smallest():
    """Validation after a one-epoch run is one number per run: bars whose ends are the values, on
    an axis from one point below the smallest, titled with the epoch."""
    from matplotlib.figure import Figure

    from gridcam.report.plots import _values

    ax = Figure().subplots()
    _values(ax, "validation top-1 (%)", {"a": ([1.0], [93.0]), "b": ([1.0], [94.0])}, {"a": "C0", "b": "C1"})
    ends = [p.get_x() + p.get_width() for p in ax.patches]
    assert ends == [93.0, 94.0] and ax.get_xlim() == (92.0, 95.0)
    assert ax.get_title() == "validation top-1 (%), epoch 1" and [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]


def test_the_training_log_holds_the_epochs_curve(tmp_path):
    """A real one-epoch training logs about CURVE_POINTS evenly spaced points whose sample-weighted
    mean is the epoch's loss."""
    import json

    from gridcam import data
    from gridcam.training import epoch as train_epoch
    from gridcam.training.loop import TrainConfig, train

    root = data.synthetic.make_imagenet(tmp_path / "d", classes=2, train_per_class=24, val_per_class=1,
                                        image_size=32, seed=0)
    train(TrainConfig(dataset="imagenet", data=str(root), arch="tiny_resnet", batch_size=4, workers=0, epochs=1,
                      lr=0.01, lam=1.0, image_size=32, seed=0, save_dir=str(tmp_path / "r"), device="cpu",
                      validate=False, tensorboard=False, progress_bar=False))
    rec = json.loads((tmp_path / "r" / "train_log.jsonl").read_text().splitlines()[-1])["train"]
    pts = rec["curve"]
    assert rec["steps"] == 12 and train_epoch.CURVE_POINTS >= 12 and len(pts) == 12  # one point per step here
    assert [p[0] for p in pts] == [round(k / 12, 4) for k in range(1, 13)]
    assert abs(sum(p[1] for p in pts) / 12 - rec["loss"]) < 1e-9  # equal batches: the mean of the points
    gc = [p[2] for p in pts if p[2] is not None]  # a batch of one class makes no composite: no GC point
    assert len(gc) >= 6 and all(v >= 0 for v in gc)


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
