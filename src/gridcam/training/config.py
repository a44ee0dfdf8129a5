"""What a training run is asked to do: :class:`TrainConfig`, its checks and the paper's schedules.

The command line (``gridcam.cli.train``) maps its flags one-to-one onto :class:`TrainConfig`; a
Python caller builds one directly (``TrainConfig(...)`` for ImageNet, :meth:`TrainConfig.for_coco`)
and passes it to :func:`gridcam.train`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from gridcam import recipes
from gridcam.errors import GridcamError

__all__ = [
    "COCO_LR_STEPS",
    "IMAGENET_LR_EVERY",
    "StepInfo",
    "TrainConfig",
    "check_config",
    "lr_milestones",
    "make_scheduler",
    "parse_lr_steps",
]

#: The paper's learning-rate milestones (÷10 at each) when ``lr_steps`` is not given.
IMAGENET_LR_EVERY = 30
COCO_LR_STEPS = (24, 30)


@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI flags map one-to-one (see ``gridcam train -h``).

    Defaults are the paper's ImageNet recipe; :meth:`for_coco` gives the COCO one.
    ``batch_size`` is the GLOBAL batch over all ranks (per rank: ``batch_size // world_size``).
    ``workers`` are data-loading processes PER rank. ``lr_steps`` None = the paper's milestones
    (ImageNet: every 30 epochs; COCO: 24 and 30), kept as they are when ``epochs`` changes.
    ``step_callback`` (not a CLI flag, not saved) is called after every optimizer step with a
    :class:`StepInfo`; the demo uses it for progress and tests use it to inject faults.
    ``maxpool`` None: the pooling recorded in ``resume``/``pretrained``/``init``, else average;
    True/False contradicting the pooling of ``resume`` is an error, while ``pretrained``/``init``
    weights of the other pooling start the asked one (GMP fine-tuned from an average-pooled
    model, as the paper's COCO GMP row). ``cam_layer``, ``reshape``, ``mean``,
    ``std``: as :func:`gridcam.models.build` takes them (any architecture, ``MODULE:FACTORY`` too).
    """

    dataset: str = "imagenet"  # "imagenet" | "coco"
    data: str = ""
    arch: str = "resnet18"
    batch_size: int = 256
    workers: int = 4
    epochs: int = int(recipes.IMAGENET["epochs"])
    lr: float = recipes.IMAGENET["lr"]
    momentum: float = 0.9
    wd: float = recipes.IMAGENET["wd"]
    lam: float = recipes.IMAGENET["lam"]
    maxpool: bool | None = None  # None: the pooling a weights file records, else average
    resume: str | None = None
    save_dir: str = "runs/train"
    seed: int | None = None
    evaluate: bool = False
    pretrained: str | None = None
    init: str | None = None
    negatives: str = "batch"  # "batch" | "dataset"
    detach_target: bool = False
    gradcam_variant: str = "elementwise"
    amp: bool = False
    channels_last: bool = False
    schedule: str = "step"  # "step" | "cosine"
    lr_steps: tuple[int, ...] | None = None
    print_freq: int = 10
    image_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop's share of the image area
    device: str | None = None
    freeze_bn: bool = False
    train_split: str = "train2014"
    val_split: str = "val2014"
    coco_negatives: str | None = None
    cam_layer: str | None = None  # dotted path; None: the family's default (models.build)
    reshape: str | None = "auto"  # "auto" | "none" | "vit" | "vit:P" | "nhwc"
    mean: str | tuple[float, ...] | None = None  # None: the model's own config, else ImageNet's
    std: str | tuple[float, ...] | None = None
    validate: bool = True
    progress_bar: bool | None = None  # None: a tqdm bar when stderr is a terminal
    tensorboard: bool = True
    step_callback: Callable[["StepInfo"], None] | None = field(default=None, repr=False)

    @classmethod
    def for_coco(cls, **overrides: Any) -> "TrainConfig":
        """The paper's COCO recipe (:data:`gridcam.recipes.COCO`), with ``overrides``."""
        base: dict[str, Any] = {"dataset": "coco", **recipes.COCO, **overrides}
        return cls(**base)

    def plain(self) -> dict[str, Any]:
        """The configuration as plain types (stored in checkpoints as ``args``)."""
        out = {}
        for f in fields(self):
            if f.name == "step_callback":
                continue
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


@dataclass
class StepInfo:
    """Passed to ``TrainConfig.step_callback`` after each optimizer step (0-based epoch/step)."""

    epoch: int
    step: int
    steps_per_epoch: int
    loss: float
    cls_loss: float
    gc_loss: float
    model: nn.Module
    optimizer: torch.optim.Optimizer


def parse_lr_steps(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"30,60"`` (or a sequence of ints) -> ``(30, 60)``; user errors raise GridcamError."""
    if not isinstance(text, str):
        return tuple(int(v) for v in text)
    try:
        steps = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise GridcamError(f"--lr-steps must be comma-separated epochs like 30,60, got {text!r}") from None
    if any(s <= 0 for s in steps) or list(steps) != sorted(steps):
        raise GridcamError(f"--lr-steps must be increasing positive epochs, got {text!r}")
    return steps


def check_config(c: TrainConfig) -> None:
    """Raise GridcamError naming the first flag whose value cannot work (ONE flag per message;
    the architecture first, before anything reads the data)."""
    if c.dataset not in ("imagenet", "coco"):
        raise GridcamError(f"dataset must be 'imagenet' or 'coco', got {c.dataset!r}")
    _check_arch(c.arch)
    if c.negatives not in ("batch", "dataset"):
        raise GridcamError(f"--negatives must be 'batch' or 'dataset', got {c.negatives!r}")
    if c.schedule not in ("step", "cosine"):
        raise GridcamError(f"--schedule must be 'step' or 'cosine', got {c.schedule!r}")
    for flag, value, low in (("--batch-size", c.batch_size, 1), ("--epochs", c.epochs, 0),
                             ("--workers", c.workers, 0), ("--print-freq", c.print_freq, 1)):
        if value < low:
            raise GridcamError(f"{flag} must be >= {low}, got {value}")
    if not math.isfinite(c.lam) or c.lam < 0:
        raise GridcamError(f"--lambda must be a finite number >= 0, got {c.lam}")
    if c.lr <= 0:
        raise GridcamError(f"--lr must be > 0, got {c.lr}")
    if c.pretrained and c.init:
        raise GridcamError("give either --pretrained (same classes) or --init (classifier dropped), not both")
    if c.image_size < 32:
        raise GridcamError(f"--image-size must be >= 32, got {c.image_size}")
    lo, hi = c.crop_scale
    if not 0 < lo <= hi <= 1:
        raise GridcamError(f"--crop-scale must be MIN MAX with 0 < MIN <= MAX <= 1, got {lo:g} {hi:g}")
    _check_device(c.device)


def _check_arch(arch: str) -> None:
    """``-a/--arch``: a built-in name (an outside one, ``prefix:NAME``, is checked when built)."""
    from gridcam.models import registry

    if ":" not in arch and arch not in registry.list_models():
        raise GridcamError(f"-a/--arch {arch!r}: unknown architecture; choose one of: "
                           f"{', '.join(registry.list_models())} (`gridcam models`), or "
                           "torchvision:NAME, timm:NAME, hf:NAME_OR_PATH, MODULE:FACTORY")


def _check_device(device: str | None) -> None:
    """``--device``/``--gpu``: a device torch knows, and a GPU that exists."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise GridcamError(f"--device {device!r} is not a device (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if dev.index is not None and dev.index >= count or count == 0:
            raise GridcamError(f"--device {device}: this machine has {count} usable CUDA GPU(s); "
                               "use --device cpu" + (f" or cuda:0..{count - 1}" if count else ""))


def lr_milestones(c: TrainConfig) -> list[int]:
    """Epochs where the step schedule divides the learning rate by 10."""
    if c.lr_steps is not None:
        return list(c.lr_steps)
    if c.dataset == "coco":
        return list(COCO_LR_STEPS)
    return list(range(IMAGENET_LR_EVERY, max(c.epochs, IMAGENET_LR_EVERY + 1), IMAGENET_LR_EVERY))


def make_scheduler(c: TrainConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule of ``c`` (step at :func:`lr_milestones`, or cosine)."""
    if c.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(c.epochs, 1))
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=lr_milestones(c), gamma=0.1)
