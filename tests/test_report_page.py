"""``gridcam report`` on finished small runs (two 1-epoch runs on a tiny synthetic set), the table
and the sentence on hand-made rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from gridcam.cli import main as cli_main
from gridcam.data import synthetic
from gridcam.report.runs import choose_images, load_run, paired_ci, rows_from_runs
from gridcam.report.summary import Row, results_table, sentence

RESIZE = 64


def _train_and_evaluate(root: Path, out: Path, lam: float) -> None:
    assert cli_main(["train", "imagenet", str(root), "-a", "tiny_resnet", "-b", "8", "-j", "0",
                     "--epochs", "2", "--lr", "0.02", "--lambda", str(lam), "--image-size", "48",
                     "--seed", "0", "--save-dir", str(out), "--print-freq", "1000",
                     "--device", "cpu"]) == 0
    assert cli_main(["evaluate", "imagenet", str(root), "--checkpoint", str(out / "checkpoint_002.pth.tar"),
                     "--methods", "gradcam,gradient", "--input-resize", str(RESIZE), "-j", "0", "-b", "4",
                     "--quiet", "--output", str(out / "results.json"),
                     "--per-image", str(out / "per_image.jsonl"), "--device", "cpu"]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("runs")
    root = synthetic.make_imagenet(base / "data", classes=4, train_per_class=6, val_per_class=3,
                                   image_size=64, seed=0)
    a, b = base / "baseline", base / "gc"
    _train_and_evaluate(root, a, 0.0)
    _train_and_evaluate(root, b, 10.0)
    return a, b


def test_report_of_two_finished_runs(runs, tmp_path, capsys):
    out = tmp_path / "page"
    rc = cli_main(["report", str(runs[0]), str(runs[1]), "--out", str(out), "--markdown",
                   "--name", "Baseline", "--name", "GC", "--images", "4"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| Model | Method |" in printed and "Δ GC − Baseline" in printed
    page = (out / "index.html").read_text()
    for name in ("curves.png", "heatmaps.png", "composite.png"):
        assert f"src='{name}'" in page
        img = Image.open(out / name)
        assert img.width > 100 and img.height > 100
    assert "Stochastic Pointing Game" in page and "Training curves" in page
    # the sentence compares with the reference and names the interval of the paired difference
    assert "GC's" in page and "Baseline's" in page and "95% interval" in page
    # self-contained: every picture is a file in the page's folder
    assert all((out / p).is_file() for p in ("curves.png", "heatmaps.png", "composite.png"))


def test_runs_are_read_with_rows_and_paired_intervals(runs):
    a, b = load_run(runs[0], "A"), load_run(runs[1], "B")
    assert a.per_image is not None and a.checkpoint.name == "checkpoint_002.pth.tar"
    assert len(a.log) == 2
    rows = rows_from_runs([a, b])
    assert [(r.name, r.method) for r in rows] == [("A", "gradcam"), ("B", "gradcam"),
                                                   ("A", "gradient"), ("B", "gradient")]
    res = json.loads((runs[1] / "results.json").read_text())
    assert rows[1].metrics["stochastic_pointing_game"] == res["metrics"]["gradcam"]["stochastic_pointing_game"]
    assert rows[0].images == 12
    ci = paired_ci([a, b], "gradient")   # no zero heatmaps: the same 12 pairs in both runs
    lo, hi, n = ci[("B", "stochastic_pointing_game")]
    d = rows[3].metrics["stochastic_pointing_game"] - rows[2].metrics["stochastic_pointing_game"]
    assert n == 12 and lo <= d <= hi  # SPG is a mean over pairs, so the paired mean equals the difference
    assert abs((lo + hi) / 2 - d) < 1e-6


def test_not_a_run_folder_is_one_clear_error(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_results_table_layout_and_differences():
    rows = [Row("Baseline", "gradcam", {"top1": 70.0, "pointing_game": 80.0, "stochastic_pointing_game": 59.2}),
            Row("GC", "gradcam", {"top1": 69.0, "pointing_game": 80.0, "stochastic_pointing_game": 62.3},
                ci={"stochastic_pointing_game": 1.5})]
    md = results_table(rows)
    lines = md.splitlines()
    assert lines[0] == "| Model | Method | Top-1 Acc (%) | Pointing Game | Stochastic Pointing Game |"
    assert lines[3] == "| GC | Grad-CAM | 69.00 | 80.00 | 62.30 ± 1.50 |"
    assert lines[4] == "| Δ GC − Baseline | Grad-CAM | -1.00 | +0.00 | +3.10 |"
    html = results_table(rows, "html")
    assert html.count("<tr") == 4 and "class='diff'" in html and "62.30 ± 1.50" in html


def test_sentence_states_only_what_the_numbers_show():
    rows = [Row("Baseline", "gradcam", {"top1": 70.0, "stochastic_pointing_game": 59.2}, images=96),
            Row("GC", "gradcam", {"top1": 69.0, "stochastic_pointing_game": 62.3}, images=96)]
    s = sentence(rows)
    assert "GC's SPG is 3.10 points above Baseline's (62.30 vs 59.20)" in s
    assert "top-1 is 1.00 points lower (69.00 vs 70.00)" in s and "on 96 validation images" in s
    assert "No intervals" in s
    s = sentence(rows, paired_ci={("GC", "stochastic_pointing_game"): (-0.5, 6.7, 96)})
    assert "includes 0, so the difference is within noise" in s
    s = sentence(rows, paired_ci={("GC", "stochastic_pointing_game"): (1.0, 5.2, 96)})
    assert "excludes 0" in s and "within noise" not in s


def test_choose_images_takes_disagreements_then_agreements():
    scores = {(0, 1): [0.9, 0.1], (1, 2): [0.5, 0.5], (2, 0): [0.2, 0.6], (3, 3): [0.9, 0.88],
              (3, 1): [0.0, 1.0]}
    chosen = choose_images(scores, 3)
    assert chosen[0] == ((0, 1), "largest disagreement")   # spread 0.8 (image 3 counted once)
    assert chosen[1] == ((2, 0), "largest disagreement")   # spread 0.4
    assert chosen[2] == ((3, 3), "agreement")              # spread 0.02 and well scored


def test_mask_outline_draws_only_the_border():
    from gridcam.report.overlay import mask_outline, with_colorbar

    img = Image.new("RGB", (10, 8), (0, 0, 0))
    mask = torch.zeros(8, 10, dtype=torch.bool)
    mask[2:6, 3:8] = True
    out = mask_outline(img, mask, width=1)
    import numpy as np

    white = np.asarray(out).sum(-1) == 3 * 255
    expected = mask.clone()
    expected[3:5, 4:7] = False          # the interior stays untouched
    assert (torch.from_numpy(white) == expected).all()
    assert with_colorbar(Image.new("RGB", (300, 5))).height == 64   # a thin strip gets a readable bar
