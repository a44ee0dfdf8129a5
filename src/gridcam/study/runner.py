"""``gridcam study``: the paper's four ImageNet rows, trained and scored alike, with their uncertainty.

Rows (the paper's Table 1 layout): Baseline (λ = 0), Ours: GC (λ > 0), GMP (global max pooling,
λ = 0), Ours: GMP + GC. Every row trains with the same data, schedule and seeds through the same
engine as ``gridcam train`` (:func:`train_row`), and every model is scored once with every metric
and explanation method through the engine of ``gridcam evaluate`` (:func:`evaluate_row`). The
summary is the mean over seeds with a 95 % t-interval per row, and the paired difference of each
"Ours" row to its baseline over the same seeds (``study_stats``).

Layout of ``OUT`` (everything is reused when complete, so a rerun resumes):
``data/`` (synthetic, unless ``--data``), ``runs/<row>/seed<k>/`` (checkpoints, ``eval.json``),
``study.json`` and ``study.md``.

Presets (see :data:`PRESETS`): ``quick`` (the demo: one seed), ``cpu`` (the same recipe, 5 seeds),
``gpu`` (the paper's recipe: ResNet18 from scratch, 224 px
crops, 7x7 maps, evaluation at 448 px; meant for ``--data`` on ImageNet). The synthetic presets
train tiny_resnet_s16 on 64 px crops (4x4 Grad-CAM maps) and evaluate at 128 px, twice the
training size as the paper's 224 -> 448: 224 px crops cost far more and do not fit 2 CPU cores.
They pre-train one start per seed with plain cross-entropy (average pooling), then train every
row from it for the same epochs, the GMP rows switched to max pooling. Each row's training ends
with the paper's top-1 (val at the training size, ``val_top1``); the localisation pass gives the
top-1 at the evaluation size (``top1``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from gridcam.errors import GridcamError
from gridcam.study import pairs, schedule
from gridcam.study import stats as study_stats
from gridcam.study.config import (  # the names outside code reads from runner, kept
    _METRIC_KEYS, DEFAULT_METRICS, METHODS, METRICS, PAIRS, PRESETS, ROWS, Row, StudyConfig, _training_only,
    config_for, describe)
from gridcam.study.tables import load, table, verdicts

__all__ = ["ROWS", "PRESETS", "StudyConfig", "Row", "Stage", "config_for", "run_study", "train_row",
           "row_checkpoint", "evaluate_row", "table", "load", "describe", "METRICS"]

# ------------------------------------------------------------------------------------ adapters
class _Warmup:
    """``step_callback`` of the training engine: linear warm-up over the first ``n`` steps.

    The run starts at ``lr / (n + 1)`` (:func:`train_row` passes that as the engine's lr); after
    optimizer step ``s`` the callback sets the next step's rate to ``lr * (s + 2) / (n + 1)``, and
    the full ``lr`` from step ``n`` on. Keep ``n`` within the first epoch: the cosine schedule,
    stepped at epoch ends, then decays from the full rate.
    """

    def __init__(self, n: int, lr: float, watch: bool = True):
        # watch: warn about a first-epoch explosion; only from scratch, since a stage that starts
        # from trained weights has a small, noisy first loss that doubles by chance
        self.n, self.lr, self.watch = n, lr, watch

    def start_lr(self) -> float:
        return self.lr / (self.n + 1)

    first_loss: float | None = None
    running: float = 0.0
    warned = False

    def __call__(self, info: Any) -> None:
        s = info.epoch * info.steps_per_epoch + info.step
        if self.watch:
            self._watch(info)
        if s + 1 > self.n:
            return
        lr = self.lr * min(1.0, (s + 2) / (self.n + 1))
        for group in info.optimizer.param_groups:
            group["lr"] = lr

    def _watch(self, info: Any) -> None:
        """One warning line when the loss explodes in the first epoch: its running mean (an
        exponential one over ~10 steps) passes twice the first step's loss. Such a run ends near
        chance with dead heatmaps, and says nothing otherwise; one noisy batch (a 4-class task
        measured 1.39 -> 2.85 at one step of a run that reached 95 % top-1) is no alarm."""
        if self.first_loss is None:
            self.first_loss = self.running = float(info.loss)
            return
        self.running = 0.9 * self.running + 0.1 * float(info.loss)
        if info.epoch == 0 and not self.warned and self.running > 2.0 * self.first_loss:
            self.warned = True
            print(f"[study] warning: the loss exploded in the first epoch ({self.first_loss:.2f} -> a "
                  f"running mean of {self.running:.2f} at step {info.step + 1}): lower the learning rate "
                  "or add warm-up", flush=True)


@dataclass(frozen=True)
class Stage:
    """One training run: its weight ``lam``, pooling, length, rate, warm-up and starting weights."""

    lam: float
    gmp: bool
    epochs: int
    lr: float
    warmup_steps: int = 0
    pretrained: Path | None = None
    validate: bool = False


def _stamp(save_dir: Path, what: dict[str, Any]) -> None:
    """Record what ``save_dir`` trains; refuse a folder that holds a run of another recipe (its
    checkpoints would otherwise be reused as if they were this one's)."""
    path = save_dir / "study_stage.json"
    what = json.loads(json.dumps(what))
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if isinstance(old, dict) and isinstance(old.get("recipe"), dict):
            old["recipe"] = _training_only(old["recipe"])  # stamps once held the whole recipe
        if isinstance(old, dict) and old.get("pretrained"):
            old["pretrained"] = _in_study(old["pretrained"])  # stamps once held the path as given
        if isinstance(old, dict) and "kernels" in what:
            old.setdefault("kernels", what["kernels"])  # stamps once held no kernels: unknown, accepted
            if {**old, "kernels": what["kernels"]} == what and old["kernels"] != what["kernels"]:
                raise GridcamError(f"{save_dir}: trained with other CPU kernels ({_kernels(old['kernels'])}) than "
                                   f"this process runs ({_kernels(what['kernels'])}), which change a training's "
                                   "digits; use a new --out, or the settings it was trained with")
        if old is not None and old != what:
            raise GridcamError(f"{save_dir}: holds a run of a different recipe (see {path.name}); "
                               "use a new --out or delete that folder")
        if old == what:
            return
    save_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(what, indent=1))


def _kernels(k: Any) -> str:
    """``AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2``: a stamp's kernels in words."""
    if not isinstance(k, dict):
        return str(k)
    return ", ".join([str(k.get("kernels"))] + [f"{v}={x}" for v, x in sorted((k.get("caps") or {}).items())])


def _in_study(path: str | Path | None) -> str | None:
    """A start's checkpoint as ``runs/<stage>/seed<k>/<file>``, its place inside the study folder,
    so a study folder moved or copied elsewhere is still the same recipe."""
    return None if path is None else "/".join(Path(path).parts[-4:])


def train_row(c: StudyConfig, stage: Stage, seed: int, data_root: Path, save_dir: Path) -> Path:
    """Train (or resume, or reuse) one stage for one seed; return its last checkpoint.

    The ONE call into ``gridcam.training.loop`` (adjust here if its API changes).
    """
    from gridcam.training import loop as train_engine
    from gridcam.runtime.checkpoint import checkpoint_name

    last = save_dir / checkpoint_name(stage.epochs)
    _stamp(save_dir, {"recipe": c.training_recipe(), "seed": seed, "lam": stage.lam, "gmp": stage.gmp,
                      "epochs": stage.epochs, "lr": stage.lr, "warmup_steps": stage.warmup_steps,
                      "pretrained": _in_study(stage.pretrained),
                      **({"kernels": schedule.kernels()} if _on_cpu(c) else {})})
    if last.is_file():
        return last
    resume = "auto" if any(save_dir.glob("*.pth.tar")) else None
    callback = _Warmup(stage.warmup_steps, stage.lr, watch=stage.pretrained is None)
    train_engine.train(train_engine.TrainConfig(
        dataset="imagenet", data=str(data_root), arch=c.arch, batch_size=c.batch_size,
        workers=c.workers, epochs=stage.epochs, lr=callback.start_lr(), wd=c.wd, lam=stage.lam,
        maxpool=stage.gmp, save_dir=str(save_dir), seed=seed, image_size=c.image_size,
        crop_scale=tuple(c.crop_scale), channels_last=c.channels_last,
        pretrained=str(stage.pretrained) if stage.pretrained else None,
        schedule="cosine", resume=resume, print_freq=10**9, progress_bar=c.progress,
        validate=stage.validate, tensorboard=False, device=c.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        step_callback=callback))
    if not last.is_file():
        raise GridcamError(f"training in {save_dir} (seed {seed}) finished without {last}")
    return last


def row_checkpoint(c: StudyConfig, row: Row, seed: int, data_root: Path, out: Path) -> Path:
    """Train one row for one seed (after its shared pre-training, if the recipe has one)."""
    run_dir = out / "runs" / row.slug / f"seed{seed}"
    lam = c.lam if row.gc else 0.0
    scale = c.gmp_lr_scale if row.gmp else 1.0
    if not c.pretrain_epochs:
        stage = Stage(lam, row.gmp, c.epochs, c.lr * scale, c.warmup_steps, validate=True)
    else:
        stage = Stage(lam, row.gmp, c.epochs, c.lr * scale, 0, shared_start(c, seed, data_root, out, gmp=row.gmp),
                      validate=True)
    return train_row(c, stage, seed, data_root, run_dir)


def val_top1(run_dir: Path) -> float | None:
    """Top-1 (%) of a row's last epoch in the paper's protocol (its training log's validation:
    val images resized and centre-cropped to the training size), None without one."""
    from gridcam.runtime.files import read_jsonl

    try:
        return float(list(read_jsonl(run_dir / "train_log.jsonl"))[-1]["val"]["top1"])
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return None


def shared_start(c: StudyConfig, seed: int, data_root: Path, out: Path, gmp: bool = False) -> Path:
    """Train (or reuse) the plain pre-training the rows of ``seed`` start from; its last checkpoint.

    One average-pooling start per seed; with ``gmp_from_avg`` False the GMP rows get their own
    max-pooling one (its rate times ``gmp_lr_scale``)."""
    own = gmp and not c.gmp_from_avg
    pre_dir = out / "runs" / ("pretrain_gmp" if own else "pretrain") / f"seed{seed}"
    lr = c.pretrain_lr * (c.gmp_lr_scale if own else 1.0)
    return train_row(c, Stage(0.0, own, c.pretrain_epochs, lr, c.warmup_steps), seed, data_root, pre_dir)


def evaluate_row(c: StudyConfig, checkpoint: Path, data_root: Path, seed: int,
                 run_dir: Path | None = None) -> dict[str, Any]:
    """Score one checkpoint with every metric and method in one pass.

    The ONE call into ``gridcam.evaluation.loop``. With ``run_dir``, the full ``results.json`` and
    the per-image records (``per_image.jsonl``) are written there too, so ``gridcam report`` can
    compare the rows image by image.
    """
    from gridcam import data, models
    from gridcam.data.transforms import eval_transform
    from gridcam.evaluation.loop import EvalConfig, evaluate

    model, _ = models.create_from_checkpoint(checkpoint)
    info = models.info(model)
    norm = {"mean": info.mean, "std": info.std} if info is not None else {}
    ds = data.ImageNetValLoc(data_root, transform=eval_transform(c.eval_resize, **norm))
    files = {}
    if run_dir is not None:
        per_image = run_dir / "per_image.jsonl"
        per_image.unlink(missing_ok=True)  # a fresh pass: an earlier partial one is of another model
        files = {"output": str(run_dir / "results.json"), "per_image": str(per_image)}
    config = EvalConfig(methods=list(c.methods), metrics=list(c.metrics), seed=seed, workers=c.workers,
                        input_resize=c.eval_resize, progress=bool(c.progress), **files,
                        record={"dataset": "imagenet", "root": str(Path(data_root).resolve()),
                                "checkpoint": str(Path(checkpoint).resolve()),
                                "input_resize": c.eval_resize})
    return evaluate(model.eval(), ds, config, device=c.device)


# ---------------------------------------------------------------------------------- the study
def _data_root(c: StudyConfig, out: Path) -> Path:
    """The real root (``--data``) or the synthetic dataset under ``OUT/data`` (made once)."""
    if c.data:
        root = Path(c.data)
        if not (root / "val").is_dir():
            raise GridcamError(f"--data {root}: no val/ folder (expected an ImageNet-style root)")
        return root
    from gridcam.data import synthetic

    return synthetic.make_imagenet(
        out / "data", classes=c.classes, train_per_class=c.train_per_class,
        val_per_class=c.val_per_class, image_size=c.train_image_size,
        val_image_size=c.val_image_size, distractors=c.distractors, lookalikes=c.lookalikes,
        seed=c.data_seed)


def _numbers(res: dict[str, Any], methods: tuple[str, ...]) -> dict[str, float]:
    """One evaluation's results -> flat ``{"top1": .., "gradcam/pg": .., ...}`` in percent (the
    randomisation test's rho as it is), for the metrics the evaluation computed."""
    flat = {"top1": float(res["classification"]["top1"])}
    for m in methods:
        for short, key in _METRIC_KEYS.items():
            if res["metrics"][m].get(key) is not None:
                flat[f"{m}/{short}"] = float(res["metrics"][m][key])
    return flat


def _complete(path: Path, recipe: dict[str, Any]) -> dict[str, Any] | None:
    """The stored evaluation at ``path`` if it exists, parses and was made with ``recipe``."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    stored = rec.get("recipe")
    if isinstance(stored, dict):
        stored.setdefault("metrics", list(DEFAULT_METRICS))  # written before studies had --metrics
    if stored != recipe or "numbers" not in rec:
        return None
    return rec


def run_unit(unit: schedule.Unit, c: StudyConfig, root: Path, out: Path) -> list[dict[str, Any]]:
    """Train and score the rows of one unit (one seed, one pooling), in order: their records. A
    unit without rows trains its seed's shared start (no records)."""
    if not unit.rows:
        print(f"[study] shared start, seed {unit.seed}", flush=True)
        ckpt = shared_start(c if unit.workers is None else replace(c, workers=unit.workers), unit.seed, root, out)
        return [{"slug": "pretrain", "seed": unit.seed, "seconds": {"train": start_seconds(ckpt.parent)}}]
    recs = []
    for row in unit.rows:
        print(f"[study] {row.name}, seed {unit.seed}", flush=True)
        recs.append({**run_one(c, row, unit.seed, root, out), "slug": row.slug})
    return recs


def start_seconds(save_dir: Path) -> float:
    """Seconds the epochs of a shared start took (its ``train_log.jsonl``; 0 where unreadable), so
    a study's time counts its pre-trainings, reused or not."""
    from gridcam.runtime.files import read_jsonl

    try:
        return round(sum(float((r.get("train") or {}).get("seconds") or 0.0)
                         for r in read_jsonl(save_dir / "train_log.jsonl")), 1)
    except (OSError, ValueError, AttributeError, TypeError):
        return 0.0


def run_one(c: StudyConfig, row: Row, seed: int, root: Path, out: Path) -> dict[str, Any]:
    """Train and score one (row, seed), or reuse its finished ``eval.json``."""
    run_dir = out / "runs" / row.slug / f"seed{seed}"
    done = _complete(run_dir / "eval.json", c.recipe())
    if done is not None:
        return done
    t0 = time.perf_counter()
    ckpt = row_checkpoint(c, row, seed, root, out)
    t1 = time.perf_counter()
    res = evaluate_row(c, ckpt, root, seed, run_dir)
    numbers = _numbers(res, c.methods)
    if (top1 := val_top1(run_dir)) is not None:
        numbers["val_top1"] = top1
    rec = {"row": row.name, "seed": seed, "recipe": c.recipe(), "numbers": numbers,
           "seconds": {"train": round(t1 - t0, 1), "evaluate": round(time.perf_counter() - t1, 1)}}
    from gridcam.runtime.files import atomic_write_json

    atomic_write_json(run_dir / "eval.json", rec)
    return rec


def run_study(c: StudyConfig) -> dict[str, Any]:
    """Train and score every row for every seed (reusing finished ones); write and return study.json.

    On CPU the study runs with ONE intra-op thread whatever the host: a CPU's float reductions
    depend on the thread count, and these small, noisy trainings amplify that (the quick preset's
    baseline PG measured 45.0 with 2 threads and 38.3 with 1), so pinning it makes the numbers
    independent of the core count (the published tables and the README test rely on it).
    """
    if c.seeds < 1:
        raise GridcamError(f"--seeds must be >= 1, got {c.seeds}")
    threads = torch.get_num_threads()
    if _on_cpu(c):
        torch.set_num_threads(1)
    try:
        return _run_study(c)
    finally:
        torch.set_num_threads(threads)


def _on_cpu(c: StudyConfig) -> bool:
    return c.device in (None, "cpu") and not (c.device is None and torch.cuda.is_available())


def _run_study(c: StudyConfig) -> dict[str, Any]:
    out = Path(c.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    root = _data_root(c, out)
    rows = [r for r in ROWS if r.slug in c.rows]
    shared = bool(c.pretrain_epochs) and c.gmp_from_avg
    units = schedule.make_units(rows, c.seeds, shared_start=shared)
    jobs = c.jobs or schedule.default_jobs(_on_cpu(c), len(units))
    if shared and _on_cpu(c) and not c.workers and c.seeds < jobs:
        # fewer starts than processes: a core is idle while they train, so it decodes their JPEGs
        # (loader workers give the same run as none: tests/test_train_flags.py)
        units = [u if u.rows else replace(u, workers=1) for u in units]
    if jobs > 1:
        what = "shared starts, then seed x pooling" if shared else "seed x pooling"
        print(f"[study] {len(units)} units ({what}) on {jobs} processes, one thread each", flush=True)
    values: dict[str, dict[str, dict[int, float]]] = {}
    seconds = {}
    for recs in schedule.run_units(run_unit, units, jobs, (c, root, out)):
        for rec in recs:
            seconds[f"{rec['slug']}/seed{rec['seed']}"] = rec["seconds"]
            if "row" not in rec:  # a shared start: time only
                continue
            for k, v in rec["numbers"].items():
                values.setdefault(rec["row"], {}).setdefault(k, {})[rec["seed"]] = v
    run_dirs = {r.name: {s: out / "runs" / r.slug / f"seed{s}" for s in range(c.seeds)} for r in rows}
    common = pairs.common_pairs(values, run_dirs, c.methods)
    summary = study_stats.summarize(values, PAIRS)
    per_image = pairs.per_image_diffs(run_dirs, PAIRS, c.methods)
    study = {
        "config": {**c.recipe(), "preset": c.preset, "seeds": c.seeds, "data_root": str(root)},
        "summary": summary,
        "per_image": per_image,
        "verdicts": verdicts(summary, per_image),
        "summary_note": f"mean ± 95% t-interval over {c.seeds} seed(s); italic rows: paired differences",
        "common_pairs": common,
        "seconds": seconds, "wall_seconds": round(time.perf_counter() - t0, 1),
        "machine": schedule.machine(_on_cpu(c), jobs),
    }
    from gridcam.runtime.files import atomic_write_json

    atomic_write_json(out / "study.json", study)
    (out / "study.md").write_text(table(study))
    return study
