"""``gridcam study``: statistics, table, resumability, CLI, synthetic options, and the results blocks
of the README and docs/study.md."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gridcam.cli import main as cli_main
from gridcam.data import synthetic
from gridcam.study import runner as study
from gridcam.study import stats as study_stats

README = Path(__file__).resolve().parents[1] / "README.md"
STUDY_DOC = README.parent / "docs" / "study.md"


# ------------------------------------------------------------------------------ statistics
def test_mean_ci_hand_computed() -> None:
    ci = study_stats.mean_ci([1.0, 2.0, 3.0])  # sd 1, t(2) = 4.303
    assert ci["mean"] == 2.0 and ci["n"] == 3
    assert ci["half"] == pytest.approx(4.303 / math.sqrt(3))
    one = study_stats.mean_ci([5.0])
    assert one["mean"] == 5.0 and one["half"] is None


def test_paired_uses_common_seeds_only() -> None:
    d = study_stats.paired({0: 3.0, 1: 5.0, 2: 9.0}, {0: 1.0, 1: 2.0})
    assert d["seeds"] == [0, 1] and d["values"] == [2.0, 3.0]
    assert d["mean"] == 2.5 and d["half"] == pytest.approx(12.706 * math.sqrt(0.5) / math.sqrt(2))


def test_t_quantile_table_and_tail() -> None:
    assert study_stats.t_quantile(1) == 12.706 and study_stats.t_quantile(30) == 2.042
    assert 1.96 < study_stats.t_quantile(200) < study_stats.t_quantile(31) < 2.042
    with pytest.raises(ValueError):
        study_stats.t_quantile(0)


def test_markdown_layout() -> None:
    values = {"Baseline": {"top1": {0: 50.0, 1: 52.0}}, "Ours: GC": {"top1": {0: 51.0, 1: 55.0}}}
    md = study_stats.markdown(study_stats.summarize(values, [("Ours: GC", "Baseline")]), [("top1", "Top-1")])
    lines = md.splitlines()
    assert lines[0] == "| Model | Top-1 |"
    assert lines[2].startswith("| Baseline | 51.00 ± ")
    assert lines[4].startswith("| *Ours: GC - Baseline* | +2.00 ± ")


# ------------------------------------------------------------------------------- warm-up
def test_warmup_rates() -> None:
    w = study._Warmup(3, 0.4)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=w.start_lr())
    seen = [opt.param_groups[0]["lr"]]
    for step in range(5):
        w(SimpleNamespace(epoch=0, step=step, steps_per_epoch=10, optimizer=opt, loss=2.0))
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])


def test_first_epoch_explosion_warns_once(capsys) -> None:
    w = study._Warmup(0, 0.1)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    # the measured GMP divergence (2.6 -> 5.3 -> 11.6 -> 17.9), from a first loss of 2.0: the
    # running mean 2.00, 2.33, 3.26, 4.72 passes 4.0 at step 4
    for epoch, step, loss in [(0, 0, 2.0), (0, 1, 5.3), (0, 2, 11.6), (0, 3, 17.9), (1, 0, 20.0)]:
        w(SimpleNamespace(epoch=epoch, step=step, steps_per_epoch=8, optimizer=opt, loss=loss))
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "exploded in the first epoch (2.00 -> a running mean of 4.72 at step 4)" in out[0]
    spike = study._Warmup(0, 0.1)  # one noisy batch at twice the first loss: no alarm
    for step, loss in enumerate([1.39, 1.3, 2.85, 1.2, 1.1]):
        spike(SimpleNamespace(epoch=0, step=step, steps_per_epoch=8, optimizer=opt, loss=loss))
    assert capsys.readouterr().out == ""
    quiet = study._Warmup(0, 0.1, watch=False)  # a stage from trained weights: no alarm
    for step, loss in enumerate([0.5, 1.5, 2.0]):
        quiet(SimpleNamespace(epoch=0, step=step, steps_per_epoch=4, optimizer=opt, loss=loss))
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------------ the study engine
def _fake_engine(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Replace training and evaluation by instant fakes whose numbers depend on (row, seed)."""
    calls: list[tuple] = []

    def fake_train(c, stage, seed, root, save_dir):
        calls.append(("train", stage.lam, stage.gmp, seed))
        save_dir.mkdir(parents=True, exist_ok=True)
        path = save_dir / "fake.pth.tar"
        path.write_text(json.dumps([stage.lam, stage.gmp]))
        return path

    def fake_eval(c, ckpt, root, seed, run_dir=None):
        lam, gmp = json.loads(Path(ckpt).read_text())
        calls.append(("eval", lam, gmp, seed))
        bump = (2.0 if lam else 0.0) + seed
        m = {"pointing_game": 80 + bump, "stochastic_pointing_game": 60 + bump,
             "content_heatmap": 40 + bump + (5 if gmp else 0)}
        return {"classification": {"top1": 70.0 - (1 if lam else 0)},
                "metrics": {k: dict(m) for k in c.methods}}

    monkeypatch.setattr(study.schedule, "default_jobs", lambda on_cpu, units: 1)  # fakes live here only
    monkeypatch.setattr(study, "train_row", fake_train)
    monkeypatch.setattr(study, "evaluate_row", fake_eval)
    monkeypatch.setattr(study, "_data_root", lambda c, out: out)
    return calls


def test_study_four_rows_paired_differences_and_resume(tmp_path, monkeypatch) -> None:
    calls = _fake_engine(monkeypatch)
    c = study.config_for("quick", out=str(tmp_path), seeds=2, methods=("gradcam",))
    res = study.run_study(c)
    assert set(res["summary"]["rows"]) == {"Baseline", "Ours: GC", "GMP", "Ours: GMP + GC"}
    rows = res["summary"]["rows"]
    assert rows["Baseline"]["gradcam/spg"]["values"] == [60.0, 61.0]
    assert rows["GMP"]["gradcam/ch"]["mean"] == 45.5
    d = res["summary"]["diffs"]["Ours: GC - Baseline"]
    assert d["gradcam/spg"]["values"] == [2.0, 2.0] and d["gradcam/spg"]["half"] == 0.0
    assert d["top1"]["mean"] == -1.0
    assert "Ours: GMP + GC - GMP" in res["summary"]["diffs"]
    n_evals = sum(1 for x in calls if x[0] == "eval")
    assert n_evals == 8
    md = (tmp_path / "study.md").read_text()
    assert "| Ours: GMP + GC |" in md and "*Ours: GC - Baseline*" in md

    # a rerun reuses every finished evaluation
    again = study.run_study(c)
    assert sum(1 for x in calls if x[0] == "eval") == n_evals
    assert again["summary"] == res["summary"]
    # a torn eval.json is not "finished": that run alone is redone
    (tmp_path / "runs" / "gc" / "seed1" / "eval.json").write_text("{")
    study.run_study(c)
    assert sum(1 for x in calls if x[0] == "eval") == n_evals + 1
    # a changed recipe is not reused
    study.run_study(study.config_for("quick", out=str(tmp_path), seeds=2, methods=("gradcam",), lam=3.0))
    assert sum(1 for x in calls if x[0] == "eval") == n_evals + 9


def test_top1_in_the_papers_protocol_beside_the_evaluation_size(tmp_path, monkeypatch) -> None:
    """A row's training validates (the paper's top-1: val at the training size); the study reads
    its log into ``val_top1``, shows it as "Top-1" beside "Top-1 at eval size", and the verdicts'
    cost is that top-1. A start trains without validating."""
    _fake_engine(monkeypatch)
    fake_train = study.train_row
    validated = []

    def train_with_log(c, stage, seed, root, save_dir):
        path = fake_train(c, stage, seed, root, save_dir)
        validated.append(stage.validate)
        if stage.validate:
            top1 = 90.0 - (3.0 if stage.lam else 0.0) + seed
            (save_dir / "train_log.jsonl").write_text(json.dumps({"epoch": 1, "val": {"top1": 1.0}}) + "\n"
                                                      + json.dumps({"epoch": 2, "val": {"top1": top1}}) + "\n")
        return path

    monkeypatch.setattr(study, "train_row", train_with_log)
    res = study.run_study(study.config_for("quick", out=str(tmp_path), seeds=2, methods=("gradcam",),
                                           pretrain_epochs=1))
    # 4 rows x 2 seeds validate; the starts (trained once per seed, then found by each row) do not
    assert validated.count(True) == 8 and validated.count(False) == 2 + 8
    assert res["summary"]["rows"]["Baseline"]["val_top1"]["values"] == [90.0, 91.0]
    assert res["summary"]["diffs"]["Ours: GC - Baseline"]["val_top1"]["mean"] == -3.0
    assert res["summary"]["diffs"]["Ours: GC - Baseline"]["top1"]["mean"] == -1.0
    md = (tmp_path / "study.md").read_text()
    assert "| Model | Top-1 | Top-1 at eval size | PG | SPG | CH |" in md
    assert "| Baseline | 90.50 ± 6.35 | 70.00 ± 0.00 |" in md
    assert "*Ours: GC - Baseline, per (image, class) pair, n = 0* | – | – |" in md
    assert all("top-1 -3.00 points" in v for v in res["verdicts"])
    # a study written before (no val_top1) keeps its one "Top-1" column: the evaluation pass's
    for r in res["summary"]["rows"].values():
        r.pop("val_top1")
    assert "| Model | Top-1 | PG | SPG | CH |" in study.table(res, "gradcam")
    assert study.val_top1(tmp_path / "runs" / "pretrain" / "seed0") is None


def test_pretrain_stages_are_shared_per_pooling(tmp_path, monkeypatch) -> None:
    calls = _fake_engine(monkeypatch)
    c = study.config_for("quick", out=str(tmp_path), seeds=1, methods=("gradcam",), pretrain_epochs=2)
    res = study.run_study(c)
    assert res["seconds"]["pretrain/seed0"] == {"train": 0.0}  # the fake start has no train log
    trains = [x for x in calls if x[0] == "train"]
    # the seed's start (average pooling) first; then each row: the start (a reused file), then its
    # own stage; the GMP rows start from the same average-pooling start (no max-pooling one)
    assert trains[0] == ("train", 0.0, False, 0) and ("train", c.lam, True, 0) in trains
    assert trains.count(("train", 0.0, True, 0)) == 1  # the GMP row's own stage only
    assert len(trains) == 9


def test_cli_markdown_prints_the_stored_table(tmp_path, monkeypatch, capsys) -> None:
    _fake_engine(monkeypatch)
    study.run_study(study.config_for("quick", out=str(tmp_path), methods=("gradcam",)))
    capsys.readouterr()
    assert cli_main(["study", "--markdown", str(tmp_path)]) == 0
    assert capsys.readouterr().out == (tmp_path / "study.md").read_text()
    assert cli_main(["study", "--markdown", str(tmp_path / "nothing")]) == 2
    assert "not a readable study.json" in capsys.readouterr().err


def test_unknown_preset_and_rows(tmp_path) -> None:
    from gridcam.errors import GridcamError

    with pytest.raises(GridcamError, match="unknown study preset"):
        study.config_for("huge")
    assert cli_main(["study", "--rows", "baseline,nope", "--out", str(tmp_path)]) == 2


# -------------------------------------------------------------------- synthetic task options
def test_distractors_leave_the_labelled_object_and_boxes_unchanged() -> None:
    plain, boxes = synthetic.render_imagenet_image(0, "val", 3, 0, 96, 0.0)
    busy, boxes2 = synthetic.render_imagenet_image(0, "val", 3, 0, 96, 0.0, distractors=2,
                                                   others=synthetic.chimeras([0, 10, 1, 11]))
    assert boxes == boxes2
    a, b = np.asarray(plain), np.asarray(busy)
    assert (a != b).any()  # something was painted ...
    x0, y0, x1, y1 = boxes[0]
    assert (a[y0 - 1:y1, x0 - 1:x1] == b[y0 - 1:y1, x0 - 1:x1]).all()  # ... but not on the object


def test_chimeras_share_parts_but_are_no_class() -> None:
    look = [synthetic.lookalike_appearance(j) for j in range(4)]
    assert look == [0, 10, 1, 11]
    pool = synthetic.chimeras(look)
    shapes = {synthetic.appearance(k)[0] for k in look}
    textures = {synthetic.appearance(k)[1] for k in look}
    assert pool and not set(pool) & set(look)
    assert all(synthetic.appearance(k)[0] in shapes and synthetic.appearance(k)[1] in textures for k in pool)


def test_val_image_size_and_marker(tmp_path) -> None:
    root = synthetic.make_imagenet(tmp_path / "d", classes=2, train_per_class=1, val_per_class=2,
                                   image_size=32, val_image_size=80, distractors=1, lookalikes=True)
    from PIL import Image

    sides = [min(Image.open(p).size) for p in sorted((root / "val").glob("*.JPEG"))]
    assert sides == [80] * 4
    assert min(Image.open(next((root / "train").rglob("*.JPEG"))).size) == 32
    params = json.loads((root / synthetic.MARKER).read_text())["params"]
    assert params["val_image_size"] == 80 and params["distractors"] == 1 and params["lookalikes"]
    names = (root / "LOC_synset_mapping.txt").read_text().split("\n")
    assert names[1].endswith("checkered circle")  # appearance 10: the circle of class 0, new pattern
    # defaults keep the old parameter set (old datasets stay valid)
    plain = synthetic.make_imagenet(tmp_path / "p", classes=1, train_per_class=1, val_per_class=1, image_size=32)
    assert set(json.loads((plain / synthetic.MARKER).read_text())["params"]) == {
        "kind", "classes", "train_per_class", "val_per_class", "image_size", "spurious",
        "val_spurious", "seed"}


# ------------------------------------------------- the study tables of the README and docs/study.md
RESULTS = README.parent / "docs" / "results"


def test_readme_tables_are_the_stored_results() -> None:
    """Every results block of the README and docs/study.md is the rendering of its stored
    study.json (so a table changes only with its results file, written by the command the docs
    name)."""
    from gridcam.study.readme import BLOCK, render

    text = README.read_text()
    assert "demo" in [m["name"] for m in BLOCK.finditer(text)], "the README must carry the demo's results"
    names = [m["name"] for m in BLOCK.finditer(STUDY_DOC.read_text())]
    assert "demo" in names and any(n.startswith("cpu") for n in names), \
        f"docs/study.md must carry the demo's and the cpu preset's results (blocks: {names})"
    for doc in (README, STUDY_DOC):
        text = doc.read_text()
        assert render(text, RESULTS) == text, f"{doc.name}'s tables differ from docs/results: run gridcam study --render-readme"


def test_render_readme_rewrites_blocks(tmp_path) -> None:
    from gridcam.study.readme import render_file

    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "x.json").write_text((RESULTS / "demo.json").read_text())
    doc = tmp_path / "R.md"
    doc.write_text("intro\n<!-- results:x -->\nstale\n<!-- /results -->\nend\n")
    assert render_file(doc) is True and render_file(doc) is False
    body = doc.read_text()
    assert "stale" not in body and "| Baseline |" in body and body.endswith("<!-- /results -->\nend\n")
    doc.write_text("<!-- results:missing -->\n<!-- /results -->\n")
    from gridcam.errors import GridcamError

    with pytest.raises(GridcamError, match="missing.json: no such results file"):
        render_file(doc)
    # the short form: the verdicts and one method's table, with the wall time in the machine line
    doc.write_text("<!-- results:x:gradcam -->\n<!-- /results -->\n")
    assert render_file(doc) is True
    body = doc.read_text()
    assert body.count("**gradcam**") == 1 and "**gradient**" not in body
    assert body.count("- Ours: ") == 2 and "min of wall time._" in body
    doc.write_text("<!-- results:x:rise -->\n<!-- /results -->\n")
    with pytest.raises(GridcamError, match="scores no method 'rise'"):
        render_file(doc)


def test_across_machines_one_line_per_results_file(tmp_path) -> None:
    """``<!-- results:A+B:METHOD -->``: one line per machine with the rows' top-1 range over the
    seeds and each comparison's gains; studies of different recipes are refused, naming the file
    and the field; another number of seeds is the same recipe."""
    from gridcam.errors import GridcamError
    from gridcam.study.readme import render_file
    from gridcam.study.tables import across, check_one_recipe

    (tmp_path / "docs" / "results").mkdir(parents=True)
    a = json.loads((RESULTS / "cpu-xeon-207.json").read_text())
    b = json.loads(json.dumps(a))
    b["machine"].update(kernels="AVX2", caps={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    b["config"].update(seeds=3, preset="quick", data_root="elsewhere")
    b["summary"]["rows"]["Baseline"]["val_top1"]["values"] = [90.0, 91.25, 99.5]
    b["summary"]["diffs"]["Ours: GC - Baseline"]["gradcam/spg"] = {"mean": -1.0, "half": 0.5}
    b["wall_seconds"] = 90
    for name, study_ in (("a", a), ("b", b)):
        (tmp_path / "docs" / "results" / f"{name}.json").write_text(json.dumps(study_))
    doc = tmp_path / "R.md"
    doc.write_text("<!-- results:a+b:gradcam -->\n<!-- /results -->\n")
    assert render_file(doc) is True
    lines = doc.read_text().splitlines()
    assert lines[2] == ("| Ran on | Seeds | Baseline top-1 | GMP top-1 | *Ours: GC - Baseline* SPG | *Ours: GC - Baseline* CH "
                        "| *Ours: GC - Baseline* top-1 | *Ours: GMP + GC - GMP* SPG | *Ours: GMP + GC - GMP* CH "
                        "| *Ours: GMP + GC - GMP* top-1 | Wall time |")
    assert lines[4] == ("| Intel(R) Xeon(R) Processor (family 6 model 207, AVX512 kernels) | 5 | 92.0–94.5 | 87.5–95.0 "
                        "| +3.15 ± 1.34 | +3.08 ± 1.35 | +0.90 ± 0.81 | +7.11 ± 1.16 | +7.70 ± 1.23 | +0.90 ± 2.21 "
                        "| 7.1 min |")
    assert lines[5] == ("| Intel(R) Xeon(R) Processor (family 6 model 207, AVX2 kernels, ONEDNN_MAX_CPU_ISA=AVX2) | 3 "
                        "| 90.0–99.5 | 87.5–95.0 | -1.00 ± 0.50 | +3.08 ± 1.35 | +0.90 ± 0.81 | +7.11 ± 1.16 "
                        "| +7.70 ± 1.23 | +0.90 ± 2.21 | 1.5 min |")
    # one column, one protocol: a study without the paper's top-1 puts every line at the eval size
    c = json.loads(json.dumps(a))
    for row in c["summary"]["rows"].values():
        row.pop("val_top1")
    c["summary"]["diffs"]["not a pair"] = {}
    md = across([("A", a), ("C", c)])
    assert "| Baseline top-1 at eval size | GMP top-1 at eval size |" in md and "not a pair" not in md
    assert "| A | 5 | 89.5–95.0 | 86.0–89.5 | +3.15 ± 1.34 | +3.08 ± 1.35 | +2.70 ± 1.99 |" in md
    with pytest.raises(GridcamError, match="no results files"):
        check_one_recipe([])
    b["config"]["lam"] = 50.0
    (tmp_path / "docs" / "results" / "b.json").write_text(json.dumps(b))
    with pytest.raises(GridcamError, match=r"b.json: not the recipe of .*a.json \(lam differ\)"):
        render_file(doc)
    doc.write_text("<!-- results:a+b:rise -->\n<!-- /results -->\n")
    with pytest.raises(GridcamError, match="a.json: scores no method 'rise'"):
        render_file(doc)


def test_machine_names_the_cpu_model_and_its_kernels(monkeypatch) -> None:
    """Two machines with one model name differ by family and model number and by the kernels torch
    runs (training is not bit-identical between them), so a results file records them, and every
    setting that capped the kernels."""
    import torch

    from gridcam.study import schedule
    from gridcam.study.readme import machine_line

    for var in schedule.KERNEL_CAPS:
        monkeypatch.delenv(var, raising=False)
    assert schedule.kernels() == {"kernels": torch.backends.cpu.get_cpu_capability()}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    m = schedule.machine(on_cpu=True, jobs=2)
    assert m["caps"] == {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    study_ = {"config": {"preset": "cpu", "seeds": 5},
              "machine": {"cpu": "X", "family": 6, "model": 207, "kernels": "AVX2", "cores": 2,
                          "caps": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}}
    assert machine_line(study_) == ("_`--preset cpu`, 5 seed(s); X (family 6 model 207, AVX2 kernels, "
                                    "MKL_ENABLE_INSTRUCTIONS=AVX2, ONEDNN_MAX_CPU_ISA=AVX2), 2 cores._\n")
    # an older results file, which recorded the name only, renders as before
    study_["machine"] = {"cpu": "X", "cores": 2}
    assert machine_line(study_) == "_`--preset cpu`, 5 seed(s); X, 2 cores._\n"
    # a GPU run names the GPU, not the CPU's kernels
    study_["machine"] = {"cpu": "X", "model": 207, "kernels": "AVX512", "device_name": "H100"}
    assert machine_line(study_) == "_`--preset cpu`, 5 seed(s); H100._\n"


CPUINFO_X86 = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
stepping\t: 2

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7763 64-Core Processor
"""


@pytest.mark.parametrize(("text", "expected"), [
    (CPUINFO_X86, {"cpu": "Intel(R) Xeon(R) Processor", "family": 6, "model": 207}),
    # the first processor only, even when the others differ
    (CPUINFO_X86.split("\n\n")[1], {"cpu": "AMD EPYC 7763 64-Core Processor", "family": 25, "model": 1}),
    # aarch64 names no model; its "CPU part" is not a model number
    ("processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n\nprocessor\t: 1\n", {}),
    # ppc64le calls it "cpu"; its machine-wide "model" line comes after every processor
    ("processor\t: 0\ncpu\t\t: POWER9 (raw), altivec supported\n\ntimebase\t: 512000000\nmodel\t\t: 8335-GTH\n",
     {"cpu": "POWER9 (raw), altivec supported"}),
    # a header block before the first processor (LoongArch)
    ("system type\t\t: generic-loongson-machine\n\nprocessor\t\t: 0\nmodel name\t\t: Loongson-3A5000\n",
     {"cpu": "Loongson-3A5000"}),
    ("", {}),
])
def test_cpuinfo_reads_the_first_processor(text, expected) -> None:
    from gridcam.study.schedule import cpuinfo

    assert cpuinfo(text) == expected


def test_a_run_folder_trained_with_other_kernels_is_refused(tmp_path) -> None:
    """Reusing a CPU training made with other kernels would label the study with kernels that did
    not make its numbers; a stamp written before kernels were recorded is accepted."""
    from gridcam.errors import GridcamError

    avx512, avx2 = {"kernels": "AVX512"}, {"kernels": "AVX2", "caps": {"ONEDNN_MAX_CPU_ISA": "AVX2"}}
    study._stamp(tmp_path / "r", {"lam": 10.0, "kernels": avx512})
    study._stamp(tmp_path / "r", {"lam": 10.0, "kernels": avx512})
    with pytest.raises(GridcamError, match=r"r: trained with other CPU kernels \(AVX512\) than this process "
                                           r"runs \(AVX2, ONEDNN_MAX_CPU_ISA=AVX2\)"):
        study._stamp(tmp_path / "r", {"lam": 10.0, "kernels": avx2})
    with pytest.raises(GridcamError, match="different recipe"):  # another recipe is still that
        study._stamp(tmp_path / "r", {"lam": 3.0, "kernels": avx2})
    study._stamp(tmp_path / "old", {"lam": 10.0})
    study._stamp(tmp_path / "old", {"lam": 10.0, "kernels": avx2})


@pytest.mark.slow
def test_quick_preset_keeps_the_readme_claims(tmp_path) -> None:
    """Reruns the quick preset (the demo) and checks what the README claims from its stored
    results, not its digits (CPU training differs between CPU types): the rows trained, the
    baseline and GMP learned their task (well above the 25 % of chance, in both top-1 columns),
    GC's per-image SPG and CH gains over both have intervals above zero, at a bounded top-1 cost."""
    _check_claims(study.run_study(study.config_for("quick", out=str(tmp_path))))


#: per instruction set of torch's CPU kernels, the next older one's settings (ATen, oneDNN, MKL)
OLDER_KERNELS = {"AVX512": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                            "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
                 "AVX2": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                          "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}}


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the unvectorised kernels (on an AVX2 CPU) train about 2.5x slower
def test_quick_preset_keeps_the_claims_with_another_cpus_kernels(tmp_path) -> None:
    """The same claims with the kernels of an older CPU type (AVX2 on an AVX-512 CPU, the
    unvectorised ones on an AVX2 CPU): CPU types train differently because torch picks other
    kernels, so every run of the suite also checks the claims under a second kernel set
    (docs/study.md, "Other CPUs' kernels"). The study runs in a process started with the
    settings, and its results file must record them (else this would test nothing new)."""
    import os
    import subprocess
    import sys

    native = torch.backends.cpu.get_cpu_capability()
    if native not in OLDER_KERNELS:
        pytest.skip(f"torch runs {native} kernels here: no older x86 kernel set to compare with")
    from gridcam.study.schedule import KERNEL_CAPS

    env = {**{k: v for k, v in os.environ.items() if k not in KERNEL_CAPS}, **OLDER_KERNELS[native]}
    proc = subprocess.run([sys.executable, "-m", "gridcam", "study", "--preset", "quick", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = study.load(tmp_path)
    caps = {k: v for k, v in OLDER_KERNELS[native].items() if k != "ATEN_CPU_CAPABILITY"}
    assert res["machine"]["kernels"] == OLDER_KERNELS[native]["ATEN_CPU_CAPABILITY"].upper()
    assert res["machine"]["caps"] == caps
    _check_claims(res)


@pytest.mark.parametrize("name", ["demo", "demo-avx2", "cpu-xeon-207", "cpu-xeon-207-avx2", "cpu-xeon-207-sse41"])
def test_the_stored_results_keep_the_claims(name) -> None:
    """Every stored run of the recipe, whatever its kernels, passes what the slow tests check of a
    rerun; a run whose interval reaches zero, or whose baseline did not learn, does not."""
    res = study.load(RESULTS / f"{name}.json")
    _check_claims(res)
    bad = json.loads(json.dumps(res))
    d = bad["per_image"]["Ours: GC - Baseline"]["gradcam/ch"]
    d["half"] = d["mean"]
    with pytest.raises(AssertionError, match="gradcam/ch.*interval not above 0"):
        _check_claims(bad)
    bad = json.loads(json.dumps(res))
    bad["summary"]["rows"]["Baseline"]["top1"]["mean"] = CLAIMS["baseline_top1_eval"] - 0.5
    with pytest.raises(AssertionError, match="Baseline top1"):
        _check_claims(bad)


def _check_claims(res: dict) -> None:
    """AssertionError unless ``res`` (a study of the quick or cpu preset) keeps the README's
    claims: the rows of the stored demo, Baseline and GMP top-1 at least :data:`CLAIMS`' in both
    columns, both pairs' per-image SPG and CH intervals above zero at a bounded top-1 cost."""
    stored = study.load(RESULTS / "demo.json")
    assert res["summary"]["rows"].keys() == stored["summary"]["rows"].keys()
    for row, key in (("Baseline", "baseline_top1"), ("GMP", "gmp_top1")):
        for col, suffix in (("val_top1", ""), ("top1", "_eval")):
            top1, least = res["summary"]["rows"][row][col]["mean"], CLAIMS[key + suffix]
            assert top1 >= least, f"{row} {col} {top1:.2f} < {least}"
    for pair in ("Ours: GC - Baseline", "Ours: GMP + GC - GMP"):
        d = res["per_image"][pair]
        for key in ("gradcam/spg", "gradcam/ch"):
            assert d[key]["mean"] - d[key]["half"] > 0, f"{pair} {key}: {d[key]} (interval not above 0)"
        top1 = res["summary"]["diffs"][pair]["val_top1"]["mean"]
        assert top1 >= -CLAIMS["gc_top1_cost"], f"{pair} costs {-top1:.2f} points of top-1"


#: what the README says of the demo, on any machine: the stored demo has Baseline top-1 93.0 (95.0
#: at the evaluation size), GMP 94.0 (89.5), GC - Baseline top-1 +1.0 and GMP + GC - GMP -0.5. The
#: 15 draws of this recipe measured (5 seeds x 3 kernel sets, docs/study.md) spread Baseline over
#: 91.5-95.5 (85.0-96.5 at the evaluation size), GMP over 87.5-95.0 (83.5-91.0), the pairs' top-1
#: changes over -0.5..+3.5; the top-1 thresholds below sit at least 5 points under the lowest of
#: each, and the cost bound allows a change of -5 (4.5 points beyond the worst measured)
CLAIMS = {"baseline_top1": 85.0, "baseline_top1_eval": 80.0, "gmp_top1": 80.0, "gmp_top1_eval": 78.0,
          "gc_top1_cost": 5.0}


def test_a_run_folder_of_another_recipe_is_refused(tmp_path) -> None:
    from gridcam.errors import GridcamError

    study._stamp(tmp_path / "r", {"lam": 10.0})
    study._stamp(tmp_path / "r", {"lam": 10.0})  # the same recipe: fine (a resume)
    with pytest.raises(GridcamError, match="different recipe"):
        study._stamp(tmp_path / "r", {"lam": 3.0})


@pytest.mark.slow
def test_units_in_two_processes_give_the_serial_numbers(tmp_path) -> None:
    """Two spawned processes (one thread each) train and score the units with exactly the numbers
    one process gets: the study's numbers do not depend on --jobs."""
    tiny = dict(classes=2, train_per_class=6, val_per_class=2, train_image_size=64, val_image_size=96,
                image_size=64, eval_resize=96, batch_size=4, pretrain_epochs=1, epochs=1, warmup_steps=0,
                methods=("gradcam",), distractors=0)
    study.run_study(study.config_for("quick", out=str(tmp_path / "a"), jobs=1, **tiny))
    two = study.run_study(study.config_for("quick", out=str(tmp_path / "b"), jobs=2, data=None, **tiny))
    one = study.load(tmp_path / "a")
    assert two["summary"]["rows"].keys() == one["summary"]["rows"].keys() and len(one["summary"]["rows"]) == 4
    for row, cols in one["summary"]["rows"].items():
        for col, stat in cols.items():
            assert two["summary"]["rows"][row][col]["values"] == stat["values"], (row, col)
    # every row's top-1 in the paper's protocol is its training log's last validation; a start has none
    for row in study.ROWS:
        log = tmp_path / "a" / "runs" / row.slug / "seed0" / "train_log.jsonl"
        val = json.loads(log.read_text().splitlines()[-1])["val"]
        assert one["summary"]["rows"][row.name]["val_top1"]["values"] == [val["top1"]] and val["images"] == 4
    start_log = (tmp_path / "a" / "runs" / "pretrain" / "seed0" / "train_log.jsonl").read_text()
    assert json.loads(start_log.splitlines()[-1])["val"] is None


def test_rows_are_scored_on_the_pairs_every_row_scored(tmp_path) -> None:
    """A pair skipped by one row (all-zero heatmap) leaves every row's PG/SPG/CH for that seed."""
    from gridcam.study import pairs

    def per_image(row, recs):
        d = tmp_path / row / "seed0"
        d.mkdir(parents=True)
        (d / "per_image.jsonl").write_text("".join(json.dumps({"method": "gradcam", **r}) + "\n" for r in recs))
        return {0: d}

    run_dirs = {
        "Baseline": per_image("b", [{"index": 0, "class": 0, "pg_hit": True, "spg": 0.6, "ch": 0.5},
                                    {"index": 1, "class": 1, "pg_hit": False, "spg": 0.2, "ch": 0.1}]),
        "Ours: GC": per_image("g", [{"index": 0, "class": 0, "skipped": "zero_heatmap"},
                                    {"index": 1, "class": 1, "pg_hit": True, "spg": 0.4, "ch": 0.3}]),
    }
    values = {r: {"gradcam/pg": {0: 1.0}, "gradcam/spg": {0: 1.0}, "gradcam/ch": {0: 1.0}, "top1": {0: 90.0}}
              for r in run_dirs}
    counts = pairs.common_pairs(values, run_dirs, ["gradcam"])
    assert counts == {"gradcam": {0: 1}}
    assert values["Baseline"]["gradcam/pg"][0] == 0.0 and values["Ours: GC"]["gradcam/pg"][0] == 100.0
    assert math.isclose(values["Baseline"]["gradcam/spg"][0], 20.0)
    assert math.isclose(values["Ours: GC"]["gradcam/ch"][0], 30.0) and values["Baseline"]["top1"][0] == 90.0
    diffs = pairs.per_image_diffs(run_dirs, [("Ours: GC", "Baseline")], ["gradcam"])
    assert diffs["Ours: GC - Baseline"]["gradcam/spg"]["n"] == 1
    assert math.isclose(diffs["Ours: GC - Baseline"]["gradcam/spg"]["mean"], 20.0)
    line = pairs.verdict("Ours: GC - Baseline", diffs["Ours: GC - Baseline"], {"mean": -1.0})
    assert line.startswith("no clear difference") and "1 (image, class) pairs" in line and "top-1 -1.00" in line


def test_verdict_wording() -> None:
    from gridcam.study import pairs

    up = {"mean": 3.0, "half": 1.0, "n": 50}
    down = {"mean": -3.0, "half": 1.0, "n": 50}
    flat = {"mean": 0.5, "half": 1.0, "n": 50}
    v = lambda spg, ch: pairs.verdict("Ours: GC - Baseline", {"gradcam/spg": spg, "gradcam/ch": ch}, None)
    assert v(up, up).startswith("Ours: GC localises better than Baseline (gradcam: SPG +3.00 [+2.00, +4.00]")
    assert v(down, flat).startswith("Ours: GC localises worse than Baseline")
    assert v(up, flat).startswith("Ours: GC localises better than Baseline on SPG only")
    assert v(flat, up).startswith("Ours: GC localises better than Baseline on CH only")
    assert v(up, down).startswith("no clear difference")


def test_a_failing_unit_in_a_worker_process_is_one_line(tmp_path, capfd) -> None:
    """A unit that fails in its own process stops the study with one line naming the unit, and
    the worker's own error is one line too (no traceback)."""
    from gridcam.errors import GridcamError

    c = study.config_for("quick", out=str(tmp_path), seeds=1, methods=("gradcam",))
    units = study.schedule.make_units(study.ROWS, 1)
    with pytest.raises(GridcamError, match=r"study unit seed 0 \((Baseline, Ours: GC|GMP, Ours: GMP \+ GC)\) failed"):
        study.schedule.run_units(study.run_unit, units, 2, (c, tmp_path / "no-data", tmp_path))
    err = capfd.readouterr().err
    assert "gridcam: error:" in err and "Traceback" not in err


def test_a_unit_is_handed_to_its_process_as_json_not_pickle(tmp_path) -> None:
    """The worker's job file is JSON naming gridcam objects; it round-trips the study's config,
    units and paths, and refuses to import anything outside gridcam."""
    from gridcam.errors import GridcamError

    sched = study.schedule
    c = study.config_for("quick", out=str(tmp_path), methods=("gradcam",))
    unit = sched.make_units(study.ROWS, 1)[0]
    job = [study.run_unit, unit, [c, tmp_path / "data", tmp_path]]
    text = json.dumps(sched._encode(job))
    back = sched._decode(json.loads(text))
    assert back[0] is study.run_unit and back[1] == unit and back[2][0] == c
    assert back[2][1] == tmp_path / "data" and isinstance(back[2][0].methods, tuple)
    with pytest.raises(GridcamError, match="not part of gridcam"):
        sched._decode({"__call__": "os:system"})


def test_units_with_a_shared_start_wait_for_it() -> None:
    """With a shared start every seed's start comes first, and each rows unit names it in
    ``after``; the scheduler hands out a rows unit only once its start is done."""
    sched = study.schedule
    units = sched.make_units(study.ROWS, 2, shared_start=True)
    assert [(u.seed, [r.slug for r in u.rows], u.after) for u in units] == [
        (0, [], ()), (1, [], ()),
        (0, ["baseline", "gc"], (0,)), (0, ["gmp", "gmp_gc"], (0,)),
        (1, ["baseline", "gc"], (1,)), (1, ["gmp", "gmp_gc"], (1,))]
    pending = list(enumerate(units))[2:]
    assert sched.next_ready(pending, {}) is None
    assert sched.next_ready(pending, {1: []}) == 2  # seed 1's start done: its avg-pooling rows
    assert sched.next_ready(pending, {0: [], 1: []}) == 0
    plain = sched.make_units(study.ROWS, 2)
    assert len(plain) == 4 and all(u.rows and not u.after for u in plain)


def test_the_gmp_rows_start_from_the_average_pooling_start(tmp_path, monkeypatch) -> None:
    """The cpu presets train one start per seed; the GMP rows fine-tune it with max pooling (the
    paper's COCO GMP recipe), unless gmp_from_avg is off (their own max-pooling start)."""
    calls = []
    monkeypatch.setattr(study, "train_row", lambda c, stage, seed, root, d: calls.append((stage, d)) or d / "x")
    c = study.config_for("quick", out=str(tmp_path))
    gmp = next(r for r in study.ROWS if r.slug == "gmp_gc")
    study.row_checkpoint(c, gmp, 3, tmp_path / "data", tmp_path)
    (pre, pre_dir), (row, _) = calls
    assert pre_dir == tmp_path / "runs" / "pretrain" / "seed3" and not pre.gmp and pre.lr == c.pretrain_lr
    assert row.gmp and row.lam == c.lam and row.pretrained == pre_dir / "x"
    calls.clear()
    own = study.config_for("quick", out=str(tmp_path), gmp_from_avg=False, gmp_lr_scale=0.1)
    study.row_checkpoint(own, gmp, 3, tmp_path / "data", tmp_path)
    (pre, pre_dir), _ = calls
    assert pre_dir.parent.name == "pretrain_gmp" and pre.gmp and math.isclose(pre.lr, 0.1 * own.pretrain_lr)


def test_metrics_and_methods_of_a_study(tmp_path, monkeypatch, capsys) -> None:
    """--metrics adds columns beside PG/SPG/CH (always scored), re-scoring without retraining:
    the training recipe, and so each training folder's stamp, ignores what only evaluation reads."""
    from gridcam.errors import GridcamError

    c = study.config_for("quick", out=str(tmp_path), metrics="deletion, focus", methods="gradient")
    assert c.metrics == ("pg", "spg", "ch", "deletion", "focus") and c.methods == ("gradcam", "gradient")
    plain = study.config_for("quick", out=str(tmp_path))
    assert plain.metrics == ("pg", "spg", "ch")
    assert c.training_recipe() == plain.training_recipe() and c.recipe() != plain.recipe()
    with pytest.raises(GridcamError, match="unknown metric nope; choose from: pg, spg, ch, deletion"):
        study.config_for("quick", metrics="nope")
    with pytest.raises(GridcamError, match="unknown explanation method gradcan"):
        study.config_for("quick", methods="gradcan")
    assert cli_main(["study", "--metrics", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown metric nope" in capsys.readouterr().err

    # a training folder stamped when stamps held the whole recipe (methods included) is reused
    what = {"recipe": plain.training_recipe(), "seed": 0, "lam": 0.0}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "study_stage.json").write_text(json.dumps({**what, "recipe": plain.recipe()}))
    study._stamp(tmp_path / "old", what)
    with pytest.raises(GridcamError, match="holds a run of a different recipe"):
        study._stamp(tmp_path / "old", {**what, "lam": 25.0})


def test_study_table_carries_the_metrics_it_scored(tmp_path, monkeypatch) -> None:
    _fake_engine(monkeypatch)
    real = study.evaluate_row

    def with_deletion(c, ckpt, root, seed, run_dir=None):
        res = real(c, ckpt, root, seed, run_dir)
        for m in res["metrics"].values():
            m["deletion_auc"] = 10.0 + seed
        return res

    monkeypatch.setattr(study, "evaluate_row", with_deletion)
    res = study.run_study(study.config_for("quick", out=str(tmp_path), methods="gradcam", metrics="deletion"))
    assert res["summary"]["rows"]["Baseline"]["gradcam/deletion"]["values"] == [10.0]
    head = next(line for line in (tmp_path / "study.md").read_text().splitlines() if line.startswith("| Model"))
    assert head == "| Model | Top-1 | PG | SPG | CH | Deletion |"
    rows = [line for line in (tmp_path / "study.md").read_text().splitlines() if line.startswith("|")]
    assert all(line.count("|") == head.count("|") for line in rows)  # per-image rows padded with –


def test_start_seconds_sums_the_epochs_of_its_train_log(tmp_path) -> None:
    log = tmp_path / "train_log.jsonl"
    log.write_text(json.dumps({"epoch": 1, "train": {"seconds": 20.5}}) + "\n"
                   + json.dumps({"epoch": 2, "train": {"seconds": 19.3}}) + "\n")
    assert study.start_seconds(tmp_path) == 39.8
    assert study.start_seconds(tmp_path / "none") == 0.0
    log.write_text("{torn")
    assert study.start_seconds(tmp_path) == 0.0


def test_a_copied_study_folder_keeps_its_stamps(tmp_path) -> None:
    """A stage's start is stamped by its place inside the study folder, so a copy (or a move) of
    the folder reuses its trainings; stamps that hold the path as given match too."""
    from gridcam.errors import GridcamError

    old = tmp_path / "a" / "runs" / "gc" / "seed0"
    old.mkdir(parents=True)
    given = {"recipe": {"lam": 1.0}, "pretrained": "somewhere/a/runs/pretrain/seed0/checkpoint_008.pth.tar"}
    (old / "study_stage.json").write_text(json.dumps(given))
    now = {"recipe": {"lam": 1.0}, "pretrained": study._in_study(tmp_path / "b" / "runs" / "pretrain" / "seed0"
                                                                  / "checkpoint_008.pth.tar")}
    assert now["pretrained"] == "runs/pretrain/seed0/checkpoint_008.pth.tar"
    study._stamp(old, now)
    with pytest.raises(GridcamError, match="different recipe"):
        study._stamp(old, {**now, "pretrained": "runs/pretrain_gmp/seed0/checkpoint_008.pth.tar"})


def test_per_image_diffs_carry_the_faithfulness_metrics_where_scored(tmp_path) -> None:
    """Deletion, insertion, Focus (in points) and the randomisation rho (as it is) are paired per
    (image, class) like SPG and CH, over the pairs both rows scored; a metric no row scored is left
    out, and a pair one row skipped for the metric only is left out of that metric alone."""
    from gridcam.study import pairs

    def run(row, recs):
        d = tmp_path / row / "seed0"
        d.mkdir(parents=True)
        (d / "per_image.jsonl").write_text("".join(json.dumps({"method": "gradcam", **r}) + "\n" for r in recs))
        return {0: d}

    base = run("b", [{"index": 0, "class": 0, "pg_hit": True, "spg": 0.5, "ch": 0.5, "deletion": 0.20,
                      "randomisation": 0.5},
                     {"index": 1, "class": 1, "pg_hit": True, "spg": 0.5, "ch": 0.5, "deletion": 0.30,
                      "randomisation_skipped": "constant_heatmap"}])
    ours = run("g", [{"index": 0, "class": 0, "pg_hit": True, "spg": 0.6, "ch": 0.5, "deletion": 0.10,
                      "randomisation": 0.25},
                     {"index": 1, "class": 1, "pg_hit": True, "spg": 0.6, "ch": 0.5, "deletion": 0.20,
                      "randomisation": 0.75}])
    d = pairs.per_image_diffs({"Ours": ours, "Base": base}, [("Ours", "Base")], ["gradcam"])["Ours - Base"]
    assert d["gradcam/deletion"]["n"] == 2 and math.isclose(d["gradcam/deletion"]["mean"], -10.0)
    assert d["gradcam/randomisation"]["n"] == 1 and math.isclose(d["gradcam/randomisation"]["mean"], -0.25)
    assert "gradcam/insertion" not in d and "gradcam/focus" not in d
    assert math.isclose(d["gradcam/spg"]["mean"], 10.0) and d["gradcam/spg"]["n"] == 2


def test_a_start_alone_on_its_cores_gets_a_loader_worker(tmp_path, monkeypatch) -> None:
    """With fewer starts than processes (the demo: 1 seed, 2 processes) a core idles while the start
    trains, so the start unit decodes with one loader process (the same run as none, tested in
    tests/test_train_flags.py); rows units keep the study's own setting."""
    sched = study.schedule
    units = sched.make_units(study.ROWS, 1, shared_start=True)
    assert [u.workers for u in units] == [None, None, None]
    units[0] = dataclasses.replace(units[0], workers=1)  # as run_study sets it for a start alone
    seen = []
    monkeypatch.setattr(study, "shared_start", lambda c, seed, root, out, gmp=False: seen.append(c.workers)
                        or tmp_path / "pretrain" / "seed0" / "x.pth.tar")
    c = study.config_for("quick", out=str(tmp_path))
    recs = study.run_unit(units[0], c, tmp_path, tmp_path)
    assert seen == [1] and recs == [{"slug": "pretrain", "seed": 0, "seconds": {"train": 0.0}}]
