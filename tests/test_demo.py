"""The demo runs end to end on tiny settings, writes its report, and a rerun reuses everything."""

import json

from gridcam.engine import demo


def test_demo_end_to_end_and_resumable(tmp_path):
    kw = dict(epochs=1, finetune_epochs=1, classes=3, train_per_class=8, val_per_class=2,
              batch_size=8, workers=0, progress=False)
    results = demo.run(tmp_path, **kw)
    assert set(results) == {"Baseline", "Ours: GC"}
    for res in results.values():
        for method in demo.METHODS:
            m = res["metrics"][method]
            assert m["evaluated"] + m["skipped"] == 6
            assert 0 <= m["pointing_game"] <= 100 and 0 <= m["content_heatmap"] <= 100
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Stochastic Pointing Game" in page and "heatmaps.png" in page
    assert (tmp_path / "report" / "heatmaps.png").stat().st_size > 0
    # the GC model really trained with the consistency loss, the baseline without
    logs = {d: [json.loads(x) for x in (tmp_path / d / "train_log.jsonl").read_text().splitlines()]
            for d in ("baseline", "gc")}
    assert logs["gc"][-1]["train"]["gc_samples"] > 0
    assert not logs["baseline"][-1]["train"].get("gc_samples")
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.suffix in (".jsonl", ".json", ".tar")}
    again = demo.run(tmp_path, **kw)  # everything reused: no training, no evaluation
    assert again == results
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
