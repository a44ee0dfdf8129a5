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
