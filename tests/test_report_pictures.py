"""Pictures a person can read: the "times its mean" colour scale (a flat map looks flat), small
images enlarged with sharp pixels, captions that wrap instead of being cut, the predicted class on
every heatmap, one naming of methods, the picture options refused in one line, and the explain
progress bar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gridcam import cam, models
from gridcam.errors import GridcamError
from gridcam.report import explain as ex
from gridcam.report.overlay import (SCALE_FLOOR, check_picture_options, colorize, font, for_display,
                                    heat_panel, relative_to_mean, wrap_text)
from gridcam.report.run_report import ReportConfig, build
from gridcam.report.summary import METHOD_NAMES, Row, method_name, results_table, sentence


# ------------------------------------------------------------------------------ colour scale
def test_scale_is_relative_to_the_mean_with_a_floor():
    rel, top = relative_to_mean(np.full((4, 4), 3e-5))           # flat: 1x everywhere
    assert np.allclose(rel, 1.0) and top == SCALE_FLOOR
    h = np.zeros((2, 5)); h[0, 0] = 1.0                           # all mass on 1 of 10 pixels
    rel, top = relative_to_mean(h)
    assert rel[0, 0] == pytest.approx(10.0) and top == pytest.approx(10.0)
    rel, top = relative_to_mean(torch.zeros(3, 3))
    assert not rel.any() and top == SCALE_FLOOR
    assert np.array_equal(colorize(np.array([[0.5, 4.0]]), vmax=2.0), colorize(np.array([[0.25, 1.0]])))


def _picture(panel: Image.Image, w: int, h: int) -> np.ndarray:
    """The heatmap part of a panel without caption (top-left w x h px)."""
    return np.asarray(panel)[:h, :w].reshape(-1, 3)


def test_a_flat_map_looks_flat_and_not_high():
    grey = Image.new("RGB", (40, 30), (128, 128, 128))
    flat = heat_panel(grey, torch.full((3, 4), 0.7), height=120, max_width=160)
    colours = np.unique(_picture(flat, 160, 120), axis=0)
    assert len(colours) == 1                                     # one even colour
    peaked = torch.zeros(3, 4); peaked[1, 2] = 1.0
    hot = _picture(heat_panel(grey, peaked, height=120, max_width=160), 160, 120)
    top = np.asarray(Image.blend(grey.resize((1, 1)), Image.fromarray(colorize(np.ones((1, 1)))), 0.5))[0, 0]
    assert (hot == top).all(1).any() and not (colours == top).all(1).any()  # only a peak is "top"


# --------------------------------------------------------------------------------- display
def test_small_images_are_enlarged_by_a_whole_factor_with_sharp_pixels():
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    big = for_display(small, 224, 448)
    assert big.size == (300, 200)                                 # x5, the largest whole factor
    assert np.array_equal(np.asarray(big)[::5, ::5], np.asarray(small))
    assert for_display(Image.new("RGB", (2000, 1000)), 224, 448).size == (448, 224)
    assert for_display(Image.new("RGB", (150, 150)), 224, 448).size == (224, 224)   # x1.5: smooth


def test_text_wraps_at_spaces_and_slashes_instead_of_being_cut():
    f = font(12)
    lines = wrap_text("runs/demo/runs/baseline/seed0/checkpoint_002.pth.tar", f, 150)
    assert len(lines) > 1 and "".join(lines) == "runs/demo/runs/baseline/seed0/checkpoint_002.pth.tar"
    assert all(f.getlength(line) <= 150 for line in lines)
    assert wrap_text("supercalifragilistic", f, 40)[0].endswith("…")   # one word too long: cut
    assert wrap_text("a b", f, 500) == ["a b"] and wrap_text("", f, 10) == [""]


def test_class_lines_name_the_prediction_when_it_is_another_class():
    names, probs = ["tench", "goldfish", "shark"], torch.tensor([0.2, 0.5, 0.3])
    assert ex.class_lines(names, probs, 1) == ["goldfish: p = 0.50 (predicted)"]
    assert ex.class_lines(names, probs, 0) == ["tench: p = 0.20", "predicted: goldfish 0.50"]


def test_model_names_keep_the_part_of_the_paths_that_differs():
    assert ex.model_names(["r/baseline/seed0/c.pth", "r/gc/seed0/c.pth"]) == ["baseline", "gc"]
    assert ex.model_names(["r/a/c1.pth", "r/a/c2.pth"]) == ["c1.pth", "c2.pth"]


# ---------------------------------------------------------------------------------- names
def test_one_naming_of_methods_from_the_registry():
    labels = {r["name"]: r["label"] for r in cam.describe_methods()}
    assert set(labels) == set(cam.METHODS) and all(labels.values())
    assert len(set(labels.values())) == len(labels)               # no two methods share a name
    assert labels["gradcampp"] == "Grad-CAM++" and labels["gradcam"] == "Grad-CAM"
    for name, label in labels.items():
        assert cam.method_label(name) == method_name(name) == METHOD_NAMES[name] == label
    assert method_name("handmade") == "handmade" and "handmade" not in METHOD_NAMES
    rows = [Row("A", "gradcampp", {"top1": 1.0}), Row("A", "gradient", {"top1": 2.0})]
    table = results_table(rows)
    assert "| A | Grad-CAM++ |" in table and "| A | Gradient |" in table
    assert sentence(rows, method="gradcampp").startswith("A with Grad-CAM++: ")


# -------------------------------------------------------------------------------- options
@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": 1.5}, "--alpha 1.5: the heatmap opacity must lie in [0, 1]"),
    ({"alpha": -0.1}, "--alpha -0.1: the heatmap opacity must lie in [0, 1]"),
    ({"alpha": float("nan")}, "--alpha nan: the heatmap opacity must lie in [0, 1]"),
    ({"input_resize": 0}, "--input-resize 0: must be a positive number of pixels"),
    ({"input_resize": -32}, "--input-resize -32: must be a positive number of pixels"),
    ({"input_resize": 2.5}, "--input-resize 2.5: must be a positive number of pixels"),
    ({"cmap": "jett"}, "--cmap jett: not a matplotlib colormap (did you mean jet?)"),
])
def test_picture_options_are_refused_in_one_line(kwargs, message):
    with pytest.raises(GridcamError) as e:
        check_picture_options(**kwargs)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_explain_and_report_refuse_bad_picture_options_before_any_work(tmp_path):
    check_picture_options(alpha=0, cmap="viridis", input_resize=1)
    check_picture_options(alpha=1.0)
    with pytest.raises(GridcamError, match=r"^--alpha 2: "):
        ex.run(ex.ExplainConfig(["nothing.png"], ["missing.pth"], alpha=2, out=str(tmp_path)))
    with pytest.raises(GridcamError, match=r"^--input-resize 0: "):
        ex.run(ex.ExplainConfig(["nothing.png"], ["missing.pth"], input_resize=0, out=str(tmp_path)))
    with pytest.raises(GridcamError, match=r"^--alpha -1: "):
        build(ReportConfig(["missing"], alpha=-1, out=str(tmp_path)))
    with pytest.raises(GridcamError, match=r"^--input-resize -5: "):
        build(ReportConfig(["missing"], input_resize=-5, out=str(tmp_path)))
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------- explain, end to end
@pytest.fixture(scope="module")
def small_case(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("small")
    torch.manual_seed(0)
    torch.save({"state_dict": models.create("tiny_resnet", num_classes=3).state_dict(),
                "arch": "tiny_resnet"}, d / "m.pth.tar")
    a = np.zeros((20, 30, 3), np.uint8); a[4:15, 5:18] = (230, 40, 40)
    Image.fromarray(a).save(d / "small.png")
    return d / "m.pth.tar", d / "small.png"


def test_small_image_sheet_is_drawn_at_cell_size_with_a_progress_bar(small_case, tmp_path, capsys):
    ckpt, image = small_case
    rec = ex.run(ex.ExplainConfig([str(image)], [str(ckpt)], methods=["gradcam", "gradient"],
                                  input_resize=32, out=str(tmp_path), device="cpu", progress=True))
    err = capsys.readouterr().err
    assert "explain" in err and "2/2" in err                      # 1 image x 1 model x 2 methods
    sheet = Image.open(tmp_path / rec["images"][0]["sheet"])
    assert sheet.height >= ex.CELL and sheet.width >= 3 * 300     # 20x30 shown x11: 330x220
    (entry,) = rec["images"][0]["models"].values()
    over = Image.open(tmp_path / entry["overlays"][0])
    assert over.width >= 300                                       # 20x30 -> x10 = 300x200 + bar
    assert "Grad-CAM, Gradient" in (tmp_path / "index.html").read_text()
    ex.run(ex.ExplainConfig([str(image)], [str(ckpt)], input_resize=32, out=str(tmp_path / "q"),
                            device="cpu", progress=False))
    assert capsys.readouterr().err == ""
