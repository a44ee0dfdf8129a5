"""The report page as a person sees it: rendered by headless Chromium, every picture must load and
the screenshot must not be blank. Skipped without Chromium (``apt-get install -y chromium``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gridcam import models
from gridcam.cli import main as cli_main
from gridcam.data import synthetic

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not found: install it with "
                             "`apt-get update && apt-get install -y chromium` (Debian/Ubuntu)")

#: Appended to a copy of the page: after load, writes what every <img> did into the DOM.
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src'));
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = 'PROBE ' + JSON.stringify({images: imgs.length, broken: bad});
  document.body.appendChild(out);
});
</script>"""


def _fake_run(base: Path, name: str, root: Path, seed: int, spg: float) -> Path:
    """A finished run without training: random weights, a two-epoch log, a results file."""
    run = base / name
    run.mkdir()
    torch.manual_seed(seed)
    model = models.create("tiny_resnet", num_classes=3)
    classes = sorted(p.name for p in (root / "train").iterdir())
    torch.save({"state_dict": model.state_dict(), "arch": "tiny_resnet", "epoch": 2, "classes": classes,
                "args": {"data": str(root), "image_size": 48}}, run / "checkpoint_002.pth.tar")
    with open(run / "train_log.jsonl", "w") as f:
        for e in (1, 2):
            f.write(json.dumps({"epoch": e, "train": {"loss": 2.0 / e, "gc_loss": 0.1 / e if spg > 50 else None},
                                "val": {"top1": 30.0 + 10 * e + seed}}) + "\n")
    (run / "results.json").write_text(json.dumps({
        "metrics": {"gradcam": {"pointing_game": 70.0, "stochastic_pointing_game": spg,
                                "content_heatmap": 30.0, "evaluated": 6, "skipped": 0}},
        "classification": {"top1": 50.0 + seed, "top5": 100.0},
        "images": {"evaluated": 6}, "config": {"input_resize": 64, "dataset": "imagenet", "root": str(root)}}))
    return run


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("browser")
    root = synthetic.make_imagenet(base / "data", classes=3, train_per_class=1, val_per_class=2,
                                   image_size=64, seed=0)
    a = _fake_run(base, "baseline", root, 0, 48.0)
    b = _fake_run(base, "gc", root, 1, 55.0)
    out = base / "report"
    assert cli_main(["report", str(a), str(b), "--out", str(out), "--images", "2", "--candidates", "6"]) == 0
    return out / "index.html"


def _chromium(*args: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", "--allow-file-access-from-files", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


def test_page_loads_with_every_image(page, tmp_path):
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</html>", PROBE + "</html>"))
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    m = re.search(r"PROBE (\{.*?\})", dom)
    assert m, f"the page did not finish loading in Chromium:\n{dom[:500]}"
    result = json.loads(m.group(1))
    assert result["images"] == 3, result      # curves, heatmaps, composite
    assert result["broken"] == [], result


def test_screenshot_is_not_blank(page, tmp_path):
    shot = tmp_path / "page.png"
    _chromium("--window-size=1200,1600", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), "Chromium wrote no screenshot"
    arr = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert arr.shape == (1600, 1200)
    ink = (arr < 200).mean()       # text, table rules, plots
    assert ink > 0.02 and arr.std() > 20, f"blank-looking screenshot: ink {ink:.3f}, std {arr.std():.1f}"
