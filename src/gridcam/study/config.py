"""A study's configuration: the paper's four rows, the recipe (:class:`StudyConfig`), the presets
and the one-line description of a recipe.

``recipe()`` is what a finished evaluation must match to be reused, ``training_recipe()`` what a
finished training must match (the recipe without what only the evaluation reads). The presets:
see :mod:`gridcam.study.runner`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from gridcam.errors import GridcamError

__all__ = ["DEFAULT_METRICS", "EVAL_ONLY", "METHODS", "METRICS", "NOT_RECIPE", "PAIRS", "PRESETS", "ROWS", "Row",
           "StudyConfig", "config_for", "describe"]

METHODS = ("gradcam", "gradient", "input_x_gradient")
DEFAULT_METRICS = ("pg", "spg", "ch")
METRICS = (("top1", "Top-1"), ("pg", "PG"), ("spg", "SPG"), ("ch", "CH"), ("deletion", "Deletion"),
           ("insertion", "Insertion"), ("focus", "Focus"), ("randomisation", "Randomisation ρ"))
_METRIC_KEYS = {"pg": "pointing_game", "spg": "stochastic_pointing_game", "ch": "content_heatmap",
                "deletion": "deletion_auc", "insertion": "insertion_auc", "focus": "focus",
                "randomisation": "randomisation_rank_correlation"}


@dataclass(frozen=True)
class Row:
    """One row of the paper's table: its name, folder, whether GC is on and whether GMP is."""

    name: str
    slug: str
    gc: bool
    gmp: bool


ROWS = (Row("Baseline", "baseline", False, False), Row("Ours: GC", "gc", True, False),
        Row("GMP", "gmp", False, True), Row("Ours: GMP + GC", "gmp_gc", True, True))
PAIRS = (("Ours: GC", "Baseline"), ("Ours: GMP + GC", "GMP"))


@dataclass
class StudyConfig:
    """Everything a study needs. The presets fill the recipe; the CLI overrides single fields.

    Recipe: with ``pretrain_epochs`` > 0, every seed first trains a shared start with plain
    cross-entropy (``pretrain_epochs``, cosine from ``pretrain_lr`` after ``warmup_steps`` linear
    warm-up steps; one for the average-pooling rows, one for the GMP rows), then each row trains
    ``epochs`` more from it (cosine from ``lr``): the baselines with λ = 0, the GC rows with
    ``lam`` — a like-for-like comparison at CPU cost. With ``pretrain_epochs`` = 0 every row trains
    from scratch for ``epochs`` (the paper's protocol; warm-up then applies to each row).
    ``gmp_lr_scale`` multiplies every learning rate of the GMP rows: global max pooling feeds the
    classifier features several times larger than average pooling (tiny_resnet at init: 2.5 vs
    0.56 on average), so at the same rate its logits move ~20x faster and small models diverge in
    the first epoch (measured: loss 2.6 -> 18 in four steps at lr 0.05, then chance accuracy).
    ``gmp_from_avg`` (with a pre-training): the GMP rows start from the average-pooling start,
    switched to max pooling, as the paper's COCO GMP row fine-tunes an average-pooled ImageNet
    model with ``--maxpool``; False gives them their own max-pooling pre-training (which learns
    far less on CPU: 64-79 % top-1 against 91 % measured). ``image_size`` training crops,
    ``crop_scale`` their share of the image area (RandomResizedCrop's scale), ``channels_last`` the
    memory format of training (faster on CPU; numbers differ in the last bits); ``eval_resize``
    shorter side at evaluation. Synthetic data (when ``data`` is None): ``classes``, ``train_per_class`` images of
    ``train_image_size`` px, ``val_per_class`` of ``val_image_size`` px, ``distractors`` and
    ``lookalikes`` (see :func:`gridcam.data.synthetic.make_imagenet`); ``data_seed`` fixes the
    data for all seeds (seeds vary initialisation and order only). ``methods`` and ``metrics``: what
    every model is scored with (Grad-CAM and PG/SPG/CH always, for the verdicts; ``metrics`` may add
    deletion, insertion, focus and randomisation, docs/metrics.md); changing them re-scores the
    finished trainings and retrains nothing.
    """

    out: str = "runs/study"
    preset: str = "quick"
    data: str | None = None
    seeds: int = 1
    arch: str = "tiny_resnet"
    epochs: int = 12
    lr: float = 0.05
    warmup_steps: int = 0
    pretrain_epochs: int = 0
    pretrain_lr: float = 0.05
    gmp_lr_scale: float = 1.0
    gmp_from_avg: bool = True
    lam: float = 10.0
    batch_size: int = 32
    image_size: int = 128
    crop_scale: tuple[float, float] = (0.08, 1.0)
    channels_last: bool = False
    eval_resize: int = 256
    classes: int = 8
    train_per_class: int = 80
    val_per_class: int = 12
    train_image_size: int = 160
    val_image_size: int = 448
    distractors: int = 2
    lookalikes: bool = True
    data_seed: int = 0
    wd: float = 1e-4
    workers: int = 0
    methods: tuple[str, ...] = METHODS
    metrics: tuple[str, ...] = DEFAULT_METRICS
    rows: tuple[str, ...] = tuple(r.slug for r in ROWS)
    device: str | None = None
    progress: bool = False
    jobs: int | None = None

    def recipe(self) -> dict[str, Any]:
        """The fields a finished evaluation must match to be reused."""
        d = asdict(self)
        for k in ("out", "preset", "seeds", "rows", "device", "progress", "workers", "jobs"):
            d.pop(k)
        d["methods"], d["metrics"] = list(self.methods), list(self.metrics)
        d["crop_scale"] = list(self.crop_scale)
        return d

    def training_recipe(self) -> dict[str, Any]:
        """The fields a finished training must match to be reused: the recipe without what only
        the evaluation reads, so scoring more methods or metrics retrains nothing."""
        return _training_only(self.recipe())


EVAL_ONLY = ("methods", "metrics", "eval_resize")

#: the fields of a results file's config that do not make it another recipe when runs on several
#: machines are compared: how many seeds ran and under which preset name (``recipe()`` leaves them
#: out too), where the data lies or was written, which methods and extra metrics were scored
NOT_RECIPE = ("preset", "seeds", "data", "data_root", "methods", "metrics")


def _training_only(recipe: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in recipe.items() if k not in EVAL_ONLY}


_SYNTH_CPU = dict(arch="tiny_resnet_s16", classes=4, train_per_class=1200, lookalikes=False, distractors=1,
                  train_image_size=160, val_image_size=448, val_per_class=50, image_size=64, eval_resize=128,
                  batch_size=16, channels_last=True, pretrain_epochs=8, pretrain_lr=0.05, warmup_steps=20,
                  epochs=1, lr=0.01, lam=25.0, gmp_lr_scale=1.0, gmp_from_avg=True)
PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(_SYNTH_CPU, seeds=1),
    "cpu": dict(_SYNTH_CPU, seeds=5),
    "gpu": dict(seeds=3, arch="resnet18", epochs=90, lr=0.1, lam=25.0, batch_size=256, image_size=224,
                eval_resize=448, pretrain_epochs=0, warmup_steps=0, gmp_lr_scale=1.0, workers=8,
                train_image_size=256, val_image_size=448, classes=100, train_per_class=260,
                val_per_class=50, distractors=1),
}


def config_for(preset: str, **overrides: Any) -> StudyConfig:
    """The preset's configuration with ``overrides`` (None values are ignored)."""
    if preset not in PRESETS:
        raise GridcamError(f"unknown study preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    kw = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    if "metrics" in kw:
        kw["metrics"] = _study_metrics(kw["metrics"])
    if "methods" in kw:
        kw["methods"] = _study_methods(kw["methods"])
    return StudyConfig(preset=preset, **kw)


def _split(items: str | tuple[str, ...] | list[str]) -> list[str]:
    return [x.strip() for x in (items.split(",") if isinstance(items, str) else items) if x.strip()]


def _study_metrics(items: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """PG, SPG and CH (the verdicts read them) followed by the other metrics asked for."""
    from gridcam.evaluation.totals import ALL_METRICS

    asked = _split(items)
    bad = [m for m in asked if m not in ALL_METRICS]
    if bad:
        raise GridcamError(f"unknown metric {', '.join(bad)}; choose from: {', '.join(ALL_METRICS)}")
    return tuple(dict.fromkeys([*DEFAULT_METRICS, *asked]))


def _study_methods(items: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Grad-CAM (the verdicts read it) followed by the other explanation methods asked for."""
    from gridcam import cam

    asked = _split(items)
    bad = [m for m in asked if m not in cam.METHOD_INFO]
    if bad:
        raise GridcamError(f"unknown explanation method {', '.join(bad)}; `gridcam methods` lists them")
    return tuple(dict.fromkeys(["gradcam", *asked]))


def _cam_stride(arch: str) -> int:
    """Input pixels per Grad-CAM cell of a built-in architecture (32 when it does not say)."""
    from gridcam import models

    if ":" in arch or arch not in models.list_models():
        return 32
    with torch.device("meta"):
        return int(getattr(models.create(arch, num_classes=2), "cam_stride", 32))


def describe(c: StudyConfig) -> str:
    """One line naming the recipe (printed before a study and stored in the report)."""
    data = c.data or (f"synthetic: {c.classes} classes, {c.train_per_class} train images/class at "
                      f"{c.train_image_size} px, {c.val_per_class} val/class at {c.val_image_size} px, "
                      f"{c.distractors} distractor(s){', lookalike classes' if c.lookalikes else ''}")
    maps = math.ceil(c.image_size / _cam_stride(c.arch))
    if c.pretrain_epochs:
        sched = (f"shared plain pre-training {c.pretrain_epochs} epochs (cosine from lr {c.pretrain_lr:g}, "
                 f"{c.warmup_steps} warm-up steps), then {c.epochs} epochs per row from lr {c.lr:g}")
    else:
        sched = f"{c.epochs} epochs per row, cosine from lr {c.lr:g} ({c.warmup_steps} warm-up steps)"
    gmp = f", GMP rows at {c.gmp_lr_scale:g}x the lr" if c.gmp_lr_scale != 1 else ""
    if c.pretrain_epochs and c.gmp_from_avg:
        gmp += ", GMP rows from the average-pooling start"
    lo, hi = c.crop_scale
    area = f" of {lo:g}-{hi:g} of the image area" if (lo, hi) != (0.08, 1.0) else ""
    memory = ", channels-last" if c.channels_last else ""
    return (f"{c.arch}, batch {c.batch_size}{memory}; {sched}{gmp}; lambda {c.lam:g}; {c.image_size} px "
            f"crops{area} ({maps}x{maps} Grad-CAM maps), evaluation at {c.eval_resize} px; {data}; {c.seeds} seed(s)")
