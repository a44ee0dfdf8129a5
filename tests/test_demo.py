"""The demo (the study's quick preset) runs end to end on tiny settings, writes its page, and a rerun
reuses everything."""

import json

from gridcam.study import demo
from gridcam.study import runner as study

TINY = dict(epochs=1, classes=3, train_per_class=6, val_per_class=2, batch_size=6, image_size=64,
            train_image_size=72, val_image_size=96, eval_resize=128, distractors=1, workers=0)


def test_demo_end_to_end_and_resumable(tmp_path):
    result = demo.run(tmp_path, **TINY)
    rows = result["summary"]["rows"]
    assert set(rows) == {r.name for r in study.ROWS}
    for ms in rows.values():
        for method in demo.METHODS:
            assert 0 <= ms[f"{method}/pg"]["mean"] <= 100 and 0 <= ms[f"{method}/ch"]["mean"] <= 100
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Stochastic Pointing Game" in page and "heatmaps.png" in page and "Ours: GMP + GC" in page
    assert (tmp_path / "report" / "heatmaps.png").stat().st_size > 0
    # the page says which top-1 its table shows and which the verdicts give
    assert all("val_top1" in ms for ms in rows.values())
    assert "the table&#x27;s Top-1 Acc is the localisation pass&#x27;s, at 128 px" in page or \
        "the table's Top-1 Acc is the localisation pass's, at 128 px" in page
    # the GC rows really trained with the consistency loss, the baselines without
    def last_train(slug):
        lines = (tmp_path / "runs" / slug / "seed0" / "train_log.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["train"]
    assert last_train("gc")["gc_samples"] > 0 and last_train("gmp_gc")["gc_samples"] > 0
    assert not last_train("baseline").get("gc_samples") and not last_train("gmp").get("gc_samples")
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.suffix in (".jsonl", ".tar")}
    again = demo.run(tmp_path, **TINY)  # everything reused: no training, no evaluation
    assert again["summary"] == result["summary"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
