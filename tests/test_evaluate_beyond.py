"""Deletion, insertion, Focus and the randomisation test in the one evaluation pass: beside PG/SPG/CH
without changing them, exact across re-runs, resumption and torchrun ranks, bad input in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from gridcam import models
from gridcam.cli import main as cli_main
from gridcam.data import synthetic
from gridcam.data.coco import CocoLoc
from gridcam.data.imagenet import ImageNetValLoc
from gridcam.data.transforms import eval_transform
from gridcam.errors import GridcamError
from gridcam.evaluation import beyond
from gridcam.evaluation.loop import evaluate
from gridcam.evaluation.records import HEADER_KEY
from gridcam.evaluation.tables import format_table

RESIZE = 48
CLASSES = 3
ALL = "pg,spg,ch,deletion,insertion,focus,randomisation"
BEYOND_KEYS = ("deletion_auc", "insertion_auc", "focus", "randomisation_rank_correlation")
FAST = dict(faithfulness_steps=8, input_resize=RESIZE, spg_samples=20)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return models.create("tiny_resnet", num_classes=CLASSES).eval()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return synthetic.make_imagenet(tmp_path_factory.mktemp("im") / "im", classes=CLASSES,
                                   train_per_class=1, val_per_class=3, image_size=64, seed=5)


def _ds(root: Path) -> ImageNetValLoc:
    return ImageNetValLoc(root, transform=eval_transform(RESIZE))


@pytest.fixture(scope="module")
def checkpoint(root) -> Path:
    path = root.parent / "tiny.pth.tar"
    torch.save({"state_dict": _model().state_dict(), "arch": "tiny_resnet", "num_classes": CLASSES},
               path)
    return path


def _lines(path: Path) -> list[dict]:
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    assert HEADER_KEY in lines[0]
    return lines[1:]


def _numbers(res: dict) -> dict:
    return {"metrics": res["metrics"], "classification": res["classification"]}


def test_one_pass_scores_everything_and_leaves_localisation_unchanged(root, tmp_path) -> None:
    model, ds = _model(), _ds(root)
    kw = dict(methods="gradcam,gradient", batch_size=4, **FAST)
    loc = evaluate(model, ds, metrics="pg,spg,ch", **kw)
    every = evaluate(model, ds, metrics=ALL, per_image=tmp_path / "p.jsonl", **kw)
    for m in ("gradcam", "gradient"):
        r = every["metrics"][m]
        for key in ("pointing_game", "stochastic_pointing_game", "content_heatmap", "evaluated"):
            assert r[key] == loc["metrics"][m][key]
        assert all(r[k] is not None for k in BEYOND_KEYS)
        assert 0 <= r["deletion_auc"] <= 100 and 0 <= r["insertion_auc"] <= 100
        assert 0 <= r["focus"] <= 100 and -1 <= r["randomisation_rank_correlation"] <= 1
        assert set(r["scored_pairs"]) == {"deletion", "insertion", "focus", "randomisation"}
    assert every["classification"] == loc["classification"]
    # the records: one line per pair with every metric, the curve's n + 1 points
    pairs = [r for r in _lines(tmp_path / "p.jsonl") if "method" in r and "skipped" not in r]
    assert pairs and all(len(r["deletion_curve"]) == 9 and len(r["insertion_curve"]) == 9 for r in pairs)
    assert all(("focus" in r) != ("focus_skipped" in r) for r in pairs)
    assert all(("randomisation" in r) != ("randomisation_skipped" in r) for r in pairs)
    # the mean of the records is the result, exactly (fixed-point sums)
    g = [r["deletion"] for r in pairs if r["method"] == "gradient"]
    assert every["metrics"]["gradient"]["deletion_auc"] == pytest.approx(100 * sum(g) / len(g), abs=1e-12)
    table = format_table(every, multilabel=False)
    assert "Deletion AUC (%)" in table and "Randomisation (Spearman)" in table
    assert "Deletion AUC" not in format_table(loc, multilabel=False)


def test_rerun_and_resume_give_the_same_numbers(root, tmp_path) -> None:
    model, ds = _model(), _ds(root)
    kw = dict(methods="gradcam,gradient", metrics=ALL, batch_size=2, **FAST)
    full = evaluate(model, ds, per_image=tmp_path / "full.jsonl", **kw)
    again = evaluate(model, ds, **kw)
    assert _numbers(full) == _numbers(again)
    lines = (tmp_path / "full.jsonl").read_text().splitlines(keepends=True)
    done = [k for k, x in enumerate(lines) if '"done":true' in x]
    part = tmp_path / "part.jsonl"
    part.write_text("".join(lines[:done[3] + 1]) + lines[done[3] + 1][:40])  # 2 batches + a torn line
    resumed = evaluate(model, ds, per_image=part, **kw)
    assert resumed["images"]["resumed"] == 4
    assert _numbers(resumed) == _numbers(full)
    with pytest.raises(GridcamError, match="faithfulness_steps"):
        evaluate(model, ds, per_image=part, **{**kw, "faithfulness_steps": 4})


def test_focus_without_a_partner_is_skipped_and_counted(tmp_path) -> None:
    root = synthetic.make_imagenet(tmp_path / "one", classes=CLASSES, train_per_class=1,
                                   val_per_class=1, image_size=48, seed=0)
    res = evaluate(_model(), _ds(root), methods="gradcam", metrics="focus", **FAST)
    r = res["metrics"]["gradcam"]
    assert r["focus"] is None and r["scored_pairs"]["focus"] == 0
    assert r["metric_skipped_reasons"]["focus"] == {"no_focus_partner": r["evaluated"]}


def test_mosaic_plans_are_seeded_by_the_image_and_follow_the_classes(root) -> None:
    ds = _ds(root)
    src = beyond.MosaicSource(ds, seed=0)
    presence = ds.presence_matrix()
    assert presence.shape == (len(ds), CLASSES) and (presence.sum(1) == 1).all()
    for i in range(len(ds)):
        key, cls = ds.image_key(i), int(presence[i].argmax())
        q, order, partners, others = src.plan(i, key, cls)
        assert src.plan(i, key, cls) == (q, order, partners, others)  # seeded
        assert i not in partners and all(presence[j, cls] for j in partners)
        assert len(others) == 4 and not any(presence[j, cls] for j in others)
        assert beyond.MosaicSource(ds, seed=1).plan(i, key, cls) != (q, order, partners, others)
    with pytest.raises(GridcamError, match="presence_matrix"):
        beyond.MosaicSource(torch.utils.data.TensorDataset(torch.zeros(2)), seed=0)


def test_coco_mosaics_have_two_images_with_the_class(tmp_path) -> None:
    root = synthetic.make_coco(tmp_path / "coco", images_train=0, images_val=10, categories=CLASSES,
                               image_size=48, seed=2)
    ds = CocoLoc(root, transform=eval_transform(RESIZE))
    src = beyond.MosaicSource(ds, seed=0)
    presence = ds.presence_matrix()
    item = src.load(0)
    for t, plan in zip(item["classes"].tolist(), item["focus"]):
        if "skip" in plan:
            continue
        assert plan["others"].shape == (3, *item["image"].shape)
        assert [bool(presence[j, t]) for j in plan["members"]].count(True) == 2
    res = evaluate(_model(), ds, methods="gradcam", metrics="focus,randomisation", batch_size=4, **FAST)
    assert res["metrics"]["gradcam"]["scored_pairs"]["focus"] > 0


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.mlp = nn.LayerNorm(4), nn.Linear(4, 4)


class _Vit(nn.Module):
    """A ViT-shaped toy: blocks in a ModuleList, the CAM layer (norm1) inside the last one."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_Block() for _ in range(2))
        self.head = nn.Linear(4, 2)


def test_randomised_modules_are_the_classifier_and_the_last_block() -> None:
    r18 = models.create("resnet18", num_classes=5)
    assert beyond.randomised_modules(r18, r18.layer4) == ["layer4.1", "fc"]
    vit = _Vit()
    assert beyond.randomised_modules(vit, vit.blocks[1].norm1) == ["blocks.1", "head"]
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    assert beyond.randomised_modules(seq, seq[2]) == ["2", "4"]
    with pytest.raises(GridcamError, match="no classifier"):
        beyond.randomised_modules(nn.Sequential(nn.Conv2d(3, 4, 3)), None)


def test_randomised_copy_is_seeded_and_leaves_the_model_alone() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin, layer, names = beyond.randomised_copy(model, model.layer4, seed=0)
    assert layer is twin.layer4 and names == ["layer4.0", "fc"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    sd = twin.state_dict()
    changed = {k for k in sd if not torch.equal(sd[k], before[k])}
    assert changed and all(k.startswith(("layer4.0.", "fc.")) for k in changed)
    assert "fc.weight" in changed and "layer4.0.conv1.weight" in changed
    again = beyond.randomised_copy(model, model.layer4, seed=0)[0].state_dict()
    assert all(torch.equal(sd[k], again[k]) for k in sd)
    other = beyond.randomised_copy(model, model.layer4, seed=1)[0].state_dict()
    assert not torch.equal(sd["fc.weight"], other["fc.weight"])


class _NoClasses:
    """A dataset that cannot tell an image's classes without loading it."""

    def __init__(self, ds) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def load(self, i: int):
        return self.ds.load(i)


def test_bad_settings_are_one_line_errors(root, tmp_path) -> None:
    model, ds = _model(), _ds(root)
    with pytest.raises(GridcamError, match="presence_matrix"):
        evaluate(model, _NoClasses(ds), metrics="pg,focus", per_image=tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()  # refused before the pass
    with pytest.raises(GridcamError, match="unknown metric foo"):
        evaluate(model, ds, metrics="pg,foo")
    with pytest.raises(GridcamError, match="--faithfulness-steps must be >= 1"):
        evaluate(model, ds, metrics="deletion", faithfulness_steps=0)
    with pytest.raises(GridcamError, match="--deletion-baseline 'black'"):
        evaluate(model, ds, metrics="deletion", deletion_baseline="black")
    with pytest.raises(GridcamError, match="--faithfulness-batch must be >= 1"):
        evaluate(model, ds, metrics="insertion", faithfulness_batch=0)


def test_cli_prints_every_column(root, checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    rc = cli_main(["evaluate", "imagenet", str(root), "--checkpoint", str(checkpoint),
                   "--input-resize", str(RESIZE), "--methods", "gradcam,gradient", "--metrics", ALL,
                   "--faithfulness-steps", "4", "--deletion-baseline", "mean",
                   "--insertion-baseline", "zero", "--faithfulness-batch", "3", "--quiet",
                   "--device", "cpu", "--output", str(out), "-j", "0"])
    assert rc == 0
    text = capsys.readouterr().out
    for head in ("| Pointing Game |", "Deletion AUC (%)", "Insertion AUC (%)", "Focus (%)",
                 "Randomisation (Spearman)"):
        assert text.count(head) == 2  # one block per method
    cfg = json.loads(out.read_text())["config"]
    assert (cfg["faithfulness_steps"], cfg["deletion_baseline"], cfg["insertion_baseline"],
            cfg["faithfulness_batch"]) == (4, "mean", "zero", 3)
    capsys.readouterr()
    assert cli_main(["evaluate", "imagenet", str(root), "--checkpoint", str(checkpoint),
                     "--metrics", "deletion", "--faithfulness-steps", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--faithfulness-steps" in err


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(root, checkpoint, tmp_path) -> None:
    common = ["evaluate", "imagenet", str(root), "--checkpoint", str(checkpoint),
              "--input-resize", str(RESIZE), "-b", "2", "--quiet", "--device", "cpu",
              "--methods", "gradcam,gradient", "--metrics", ALL, "--faithfulness-steps", "6"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    one = subprocess.run([sys.executable, "-m", "gridcam", *common, "-j", "1",
                          "--output", str(tmp_path / "one.json"), "--per-image", str(tmp_path / "one.jsonl")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "gridcam", *common, "-j", "0",
                          "--output", str(tmp_path / "two.json"), "--per-image", str(tmp_path / "two.jsonl")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    r1, r2 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert r2["config"]["world_size"] == 2 and r1["metrics"] == r2["metrics"]
    canon = [sorted(json.dumps(r, sort_keys=True) for r in _lines(tmp_path / f"{n}.jsonl"))
             for n in ("one", "two")]
    assert canon[0] == canon[1]


def test_report_table_shows_the_new_columns(root, tmp_path) -> None:
    from gridcam.report.runs import load_run, rows_from_runs
    from gridcam.report.summary import results_table

    ds = _ds(root)
    for name, seed in (("a", 0), ("b", 1)):
        (tmp_path / name).mkdir()
        torch.manual_seed(seed)
        model = models.create("tiny_resnet", num_classes=CLASSES).eval()
        evaluate(model, ds, methods="gradcam", metrics="ch,deletion,insertion,focus,randomisation",
                 output=tmp_path / name / "results.json", **FAST)
    rows = rows_from_runs([load_run(tmp_path / "a"), load_run(tmp_path / "b")])
    md = results_table(rows)
    head = md.splitlines()[0]
    for col in ("Content Heatmap", "Deletion AUC (%)", "Insertion AUC (%)", "Focus (%)",
                "Randomisation (Spearman)"):
        assert col in head
    assert "Δ b − a" in md and "<th>Focus (%)</th>" in results_table(rows, "html")
