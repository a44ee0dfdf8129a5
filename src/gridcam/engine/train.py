"""Training with the Grad-CAM consistency loss: ``gridcam train imagenet|coco`` and :func:`train`.

One readable loop in the style of torchvision's ``references/classification/train.py``, runnable
as a single process or under ``torchrun`` (DistributedDataParallel):

* data: ``DATA/train/<class>/*`` (+ ``DATA/val``) for ImageNet-style runs, ``DATA/train2014`` +
  ``DATA/annotations/instances_train2014.json`` (+ val2014) for COCO-style runs;
* loss per batch: :func:`gridcam.engine.steps.gc_step` (CE or ``80 * BCE``, plus ``lambda * L_gc``);
* SGD with the paper's step schedule (or cosine), validation every epoch, checkpoints as DESIGN.md
  says (atomic writes), exact ``--resume``, SIGTERM/SIGINT -> resumable ``last.pth.tar``, a
  non-finite loss stops the run and leaves the last good checkpoint untouched;
* rank 0 writes checkpoints, ``train_log.jsonl``, TensorBoard events and the progress bar.

Reproducibility: every random choice derives from one run seed (``--seed``, else drawn once and
stored in the checkpoints): the sampler's permutation (seed + epoch, as DistributedSampler), each
sample's augmentation and loader-side negatives (seeded by (seed, epoch, sample index), so they do
not depend on the number of workers or ranks), the in-batch negatives/quadrants of each step
(seeded by (seed, epoch, step, rank)) and the global RNGs at the start of each epoch. Hence
``--resume`` from an end-of-epoch checkpoint continues bit-exactly on CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from gridcam import __version__, data, models, recipes
from gridcam.engine import checkpoint as ckpt
from gridcam.engine import distributed as du
from gridcam.engine.logging import EpochLog, Progress
from gridcam.engine.steps import amp_setup, gc_step
from gridcam.errors import GridcamError
from gridcam.metrics import MultiLabelCounts, TopKCounts, topk_correct

__all__ = [
    "NonFiniteLoss",
    "StepInfo",
    "TrainConfig",
    "TrainingInterrupted",
    "config_from_args",
    "main",
    "train",
]

#: The paper's learning-rate milestones (÷10 at each) when ``lr_steps`` is not given.
IMAGENET_LR_EVERY = 30
COCO_LR_STEPS = (24, 30)


# ------------------------------------------------------------------------------ configuration
@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI flags map one-to-one (see ``gridcam train -h``).

    Defaults are the paper's ImageNet recipe; :meth:`for_coco` gives the COCO one.
    ``batch_size`` is the GLOBAL batch over all ranks (per rank: ``batch_size // world_size``).
    ``workers`` are data-loading processes PER rank. ``lr_steps`` None = the paper's milestones
    (ImageNet: every 30 epochs; COCO: 24 and 30), kept as they are when ``epochs`` changes.
    ``step_callback`` (not a CLI flag, not saved) is called after every optimizer step with a
    :class:`StepInfo`; the demo uses it for progress and tests use it to inject faults.
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
    maxpool: bool = False
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
    device: str | None = None
    freeze_bn: bool = False
    train_split: str = "train2014"
    val_split: str = "val2014"
    coco_negatives: str | None = None
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


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT arrived: the step finished and a resumable checkpoint was written."""

    def __init__(self, signum: int, checkpoint: Path | None, epoch: int, step: int):
        self.signum = signum
        self.checkpoint = checkpoint
        name = signal.Signals(signum).name
        where = f"epoch {epoch + 1}, step {step}"
        saved = (f"; resumable checkpoint {checkpoint} (continue with --resume {checkpoint})"
                 if checkpoint else "")
        super().__init__(f"interrupted by {name} at {where}{saved}")


class NonFiniteLoss(Exception):
    """The loss became NaN/inf: the run stopped before the optimizer used it; no checkpoint of the
    broken state was written."""

    def __init__(self, epoch: int, step: int, values: dict[str, float], last_good: Path | None):
        self.epoch, self.step, self.values, self.last_good = epoch, step, values, last_good
        vals = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
        keep = (f"the last good checkpoint {last_good} is untouched" if last_good
                else "no checkpoint had been written yet")
        super().__init__(
            f"non-finite loss at epoch {epoch + 1}, step {step + 1}: {vals}; training stopped and "
            f"{keep}. Lower --lr or --lambda, or try without --amp.")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Map the parsed ``gridcam train imagenet|coco`` flags onto a :class:`TrainConfig`."""
    names = {f.name for f in fields(TrainConfig)} - {"step_callback"}
    kw = {k: v for k, v in vars(args).items() if k in names}
    kw["dataset"] = args.dataset
    if kw.get("lr_steps") is not None and not isinstance(kw["lr_steps"], tuple):
        kw["lr_steps"] = _parse_steps(kw["lr_steps"])
    return TrainConfig(**kw)


def _parse_steps(text: str | Sequence[int]) -> tuple[int, ...]:
    if not isinstance(text, str):
        return tuple(int(v) for v in text)
    try:
        steps = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise GridcamError(f"--lr-steps must be comma-separated epochs like 30,60, got {text!r}") from None
    if any(s <= 0 for s in steps) or list(steps) != sorted(steps):
        raise GridcamError(f"--lr-steps must be increasing positive epochs, got {text!r}")
    return steps


def _check_config(c: TrainConfig) -> None:
    if c.dataset not in ("imagenet", "coco"):
        raise GridcamError(f"dataset must be 'imagenet' or 'coco', got {c.dataset!r}")
    if c.negatives not in ("batch", "dataset"):
        raise GridcamError(f"--negatives must be 'batch' or 'dataset', got {c.negatives!r}")
    if c.schedule not in ("step", "cosine"):
        raise GridcamError(f"--schedule must be 'step' or 'cosine', got {c.schedule!r}")
    if c.batch_size < 1 or c.epochs < 0 or c.workers < 0 or c.print_freq < 1:
        raise GridcamError("--batch-size, --print-freq must be >= 1 and --epochs, --workers >= 0")
    if not math.isfinite(c.lam) or c.lam < 0:
        raise GridcamError(f"--lambda must be a finite number >= 0, got {c.lam}")
    if c.lr <= 0:
        raise GridcamError(f"--lr must be > 0, got {c.lr}")
    if c.pretrained and c.init:
        raise GridcamError("give either --pretrained (same classes) or --init (classifier dropped), not both")
    if c.image_size < 32:
        raise GridcamError(f"--image-size must be >= 32, got {c.image_size}")


# ---------------------------------------------------------------------------- seeds and data
def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the run seed and a purpose/epoch/index tuple (stable across runs and
    platforms, unlike ``hash()``)."""
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class _Skipped:
    """Marker for an item the dataset could not produce; ``reason`` names the file."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


class SeededItems(Dataset):
    """Wrap a dataset so item ``i`` of epoch ``e`` draws its randomness (crop, flip, loader-side
    negatives and quadrant) from torch's RNG seeded with ``(seed, e, i)``.

    That makes a sample's augmentation independent of the worker that loads it, of the number of
    workers and of the number of ranks, so resumed and distributed runs see the same data. It
    also records the warnings of an item that comes back ``None`` (unreadable image) so the loop
    can report the file names; other warnings are passed on.
    """

    def __init__(self, base: Dataset, seed: int):
        self.base = base
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        state = torch.get_rng_state()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.default_generator.manual_seed(derive_seed(self.seed, "item", self.epoch, index))
            try:
                item = self.base[index]
            finally:
                torch.set_rng_state(state)
        if item is None:
            reasons = [str(w.message) for w in caught] or [f"item {index} could not be read"]
            return _Skipped("; ".join(dict.fromkeys(reasons)))
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return item


class NamedCollate:
    """Collate that separates :class:`_Skipped` markers (their reasons travel with the batch)
    and hands the rest, with ``None`` in their place, to ``data.collate_skip``/``collate_grid``."""

    def __init__(self, inner: Callable[[list], Any]):
        self.inner = inner

    def __call__(self, batch: list) -> tuple[Any, list[str]]:
        reasons = [b.reason for b in batch if isinstance(b, _Skipped)]
        return self.inner([None if isinstance(b, _Skipped) else b for b in batch]), reasons


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (same permutation: ``randperm`` seeded with seed + epoch, padded,
    every ``world``-th index) that can skip its first ``start`` indices, so an epoch resumed
    mid-way continues with exactly the batches that were left."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=False)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(Sampler[int]):
    """Validation: rank ``r`` takes indices ``r, r + world, ...`` in order, without padding, so
    counts summed over ranks cover every image exactly once."""

    def __init__(self, n: int, rank: int, world: int):
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def _worker_init(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: the workers must not die before the main process
    # has saved its checkpoint; they exit when the loader shuts them down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@dataclass
class Datasets:
    train: Dataset | None
    val: Dataset | None
    num_classes: int
    classes: list[str]
    multi_label: bool
    category_ids: list[int] | None = None


def _find_dir(root: Path, *candidates: str) -> Path | None:
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    return None


def build_datasets(c: TrainConfig, rank0: bool) -> Datasets:
    """The training set (None with ``evaluate``) and the validation set (None when absent)."""
    root = Path(c.data)
    if not root.is_dir():
        raise GridcamError(f"{root}: data directory not found")
    use_grid = c.negatives == "dataset" and c.lam > 0 and not c.evaluate
    if c.dataset == "imagenet":
        train_dir = _find_dir(root, "train", "ILSVRC/Data/CLS-LOC/train")
        if train_dir is None:
            raise GridcamError(f"{root}: no train/ folder (ImageNet layout: DATA/train/<class>/*.JPEG); "
                               "it also defines the class order")
        train = data.ImageFolder(train_dir, data.transforms.train_transform(c.image_size))
        classes = list(train.classes)
        val = None
        if c.validate and _find_dir(root, "val", "ILSVRC/Data/CLS-LOC/val") is not None:
            resize = int(round(c.image_size * 256 / 224))
            val = data.imagenet_val(root, classes, data.transforms.val_transform(resize, c.image_size))
        elif c.validate and rank0:
            warnings.warn(f"{root}: no val/ folder; validation is skipped and model_best.pth.tar "
                          "follows the last epoch", stacklevel=2)
        base: Dataset = data.GridDataset(train) if use_grid else train
        return Datasets(None if c.evaluate else base, val, len(classes), classes, False)

    ann = root / "annotations" / f"instances_{c.train_split}.json"
    train = data.CocoDataset(root, c.train_split, data.transforms.train_transform(c.image_size))
    val = None
    val_ann = root / "annotations" / f"instances_{c.val_split}.json"
    if c.validate and val_ann.is_file():
        val = data.CocoDataset(root, c.val_split, data.transforms.coco_val_transform(c.image_size))
        if list(val.categories) != list(train.categories):
            raise GridcamError(f"{val_ann}: categories differ from {ann}; train and val must share them")
    elif c.validate and rank0:
        warnings.warn(f"{val_ann} not found; validation is skipped and model_best.pth.tar follows "
                      "the last epoch", stacklevel=2)
    base = train
    if use_grid:
        index: Any = c.coco_negatives
        default_index = root / "annotations" / f"negatives_{c.train_split}.json"
        if index is None and default_index.is_file():
            index = default_index
        base = data.GridDataset(train, negatives_index=index)
    return Datasets(None if c.evaluate else base, val, train.num_classes, list(train.class_names), True,
                    [int(v) for v in train.categories])


def _collate_val(batch: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    return data.collate_skip(batch)


# ------------------------------------------------------------------------------------ signals
class StopFlag:
    """SIGTERM/SIGINT handler that asks the loop to stop after the current step.

    A second SIGINT (Ctrl-C twice) raises KeyboardInterrupt at once. Handlers are installed only
    in the main thread (Python's rule) and restored by :meth:`restore`.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"gridcam: received {signal.Signals(signum).name}; finishing the current step and "
              "saving a resumable checkpoint (Ctrl-C again to abort at once)", file=sys.stderr, flush=True)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


# ---------------------------------------------------------------------------------- the model
def _set_bn_eval(model: nn.Module) -> None:
    """Keep BatchNorm on its running statistics (``--freeze-bn``): no batch statistics, no
    running-stat updates; the affine weights still train."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _lr_milestones(c: TrainConfig) -> list[int]:
    if c.lr_steps is not None:
        return list(c.lr_steps)
    if c.dataset == "coco":
        return list(COCO_LR_STEPS)
    return list(range(IMAGENET_LR_EVERY, max(c.epochs, IMAGENET_LR_EVERY + 1), IMAGENET_LR_EVERY))


def _make_scheduler(c: TrainConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    if c.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(c.epochs, 1))
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=_lr_milestones(c), gamma=0.1)


# ------------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, multi_label: bool, num_classes: int,
             device: torch.device, autocast: Callable[[], Any], channels_last: bool = False
             ) -> dict[str, Any]:
    """Classification metrics over the whole (sharded) validation set, summed over ranks.

    Single-label: ``top1``, ``top5`` (%), ``loss`` (CE). Multi-label: per-class and overall
    precision/recall/F1 (%) at logit > 0 (``gridcam.metrics.multilabel_scores``), ``loss``
    (``80 * BCE``). Both: ``images`` and ``skipped_images`` (unreadable, left out).
    """
    from gridcam.engine.steps import classification_loss

    was_training = model.training
    model.eval()
    ks = (1, 5)  # topk_correct clips k to the number of classes
    correct = torch.zeros(2, dtype=torch.float64, device=device)
    tp = torch.zeros(num_classes, dtype=torch.float64, device=device)
    fp = torch.zeros_like(tp)
    fn = torch.zeros_like(tp)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # images, loss sum, skipped
    for (images, targets, n_skipped), _reasons in loader:
        totals[2] += n_skipped
        if images.shape[0] == 0:
            continue
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        with autocast():
            logits = model(images)
        logits = logits.float()
        totals[0] += images.shape[0]
        totals[1] += classification_loss(logits, targets, multi_label).double() * images.shape[0]
        if multi_label:
            pred, truth = logits > 0, targets > 0.5
            tp += (pred & truth).sum(0)
            fp += (pred & ~truth).sum(0)
            fn += (~pred & truth).sum(0)
        else:
            correct += topk_correct(logits, targets, ks).sum(0)
    packed = du.all_reduce_sum(torch.cat([totals, correct, tp, fp, fn]))
    totals, correct = packed[:3], packed[3:5]
    tp, fp, fn = packed[5:].view(3, num_classes).long().cpu()
    n = int(totals[0])
    out: dict[str, Any]
    if multi_label:
        out = MultiLabelCounts(num_classes, tp=tp, fp=fp, fn=fn, images=n).result()
    else:
        out = TopKCounts(ks=(1, 5), correct=[int(v) for v in correct.tolist()], total=n).result()
    out["loss"] = float(totals[1] / n) if n else None
    out["skipped_images"] = int(totals[2])
    model.train(was_training)
    return out


def _score(metrics: dict[str, Any], multi_label: bool) -> float | None:
    v = metrics.get("f1_overall" if multi_label else "top1")
    return None if v is None else float(v)


# ------------------------------------------------------------------------------ the training
def _loader(ds: Dataset, batch: int, sampler: Sampler, workers: int, collate: Callable, device: torch.device,
            drop_last: bool) -> DataLoader:
    return DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=collate,
                      pin_memory=device.type == "cuda", drop_last=drop_last,
                      worker_init_fn=_worker_init if workers > 0 else None)


def _seed_globals(seed: int, epoch: int, rank: int) -> None:
    s = derive_seed(seed, "global", epoch, rank)
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % (2**32))


def _gather_rng() -> dict[str, Any]:
    states = du.all_gather_object(ckpt.rng_state())
    return {"world_size": len(states), "ranks": states}


def _restore_rng(saved: dict[str, Any] | None, info: du.DistInfo) -> None:
    if not saved or int(saved.get("world_size", 0)) != info.world_size:
        return
    ckpt.set_rng_state(saved["ranks"][info.rank])


def train(config: TrainConfig) -> dict[str, Any]:
    """Run training (or, with ``config.evaluate``, one validation pass) and return a summary.

    Returns a dict: ``best_acc1``, ``epochs_run``, ``last_epoch`` (epochs completed), ``train``
    (last epoch's training stats), ``val`` (last validation metrics, None without a val set),
    ``save_dir``, ``checkpoint`` (last written), ``best_checkpoint``, ``log``, ``num_classes``,
    ``classes``, ``seed``.
    Raises:
        GridcamError: bad flags, data or checkpoints (the message says which).
        TrainingInterrupted: SIGTERM/SIGINT; ``last.pth.tar`` was written (rank 0).
        NonFiniteLoss: the loss became NaN/inf; no checkpoint of that state was written.
    """
    c = config
    _check_config(c)
    # Leave a process group that the caller created alone; destroy only our own.
    ours = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = du.setup(c.device)
    try:
        return _run(c, info)
    finally:
        if ours:
            du.cleanup()


def _run(c: TrainConfig, info: du.DistInfo) -> dict[str, Any]:  # noqa: C901 (one readable loop)
    device = info.device
    rank0 = info.is_main
    if c.batch_size % info.world_size:
        raise GridcamError(f"--batch-size {c.batch_size} (global) is not divisible by the world size "
                           f"{info.world_size}")
    per_rank = c.batch_size // info.world_size
    save_dir = Path(c.save_dir)
    if rank0:
        save_dir.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # ---- resume: read the checkpoint first, it fixes the seed
    state: dict[str, Any] | None = None
    resume = c.resume
    if resume == "auto":
        found = ckpt.find_latest(save_dir) if rank0 else None
        resume = du.broadcast_object(str(found) if found else None)  # type: ignore[assignment]
        if rank0:
            print(f"gridcam: --resume auto: {'continuing from ' + resume if resume else 'nothing to resume, starting fresh'}",
                  file=sys.stderr)
    if resume:
        state = ckpt.load(resume)
        for key in ("state_dict", "epoch"):
            if key not in state:
                raise GridcamError(f"{resume}: not a gridcam/paper training checkpoint (no {key!r})")
        if state.get("arch") not in (None, c.arch):
            raise GridcamError(f"{resume} was trained with -a {state['arch']}, not -a {c.arch}")
    seed = c.seed
    if state is not None and state.get("seed") is not None and not c.evaluate:
        if seed is not None and seed != state["seed"] and rank0:
            warnings.warn(f"--seed {seed} ignored: resuming the run's own seed {state['seed']}", stacklevel=2)
        seed = int(state["seed"])
    if seed is None:
        seed = int(du.broadcast_object(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1)))

    # ---- data
    ds = build_datasets(c, rank0)
    multi_label = ds.multi_label
    train_items = SeededItems(ds.train, seed) if ds.train is not None else None
    grid_batches = c.negatives == "dataset" and c.lam > 0
    sampler = None
    loader = None
    if train_items is not None:
        sampler = ResumableSampler(train_items, info.world_size, info.rank, seed=derive_seed(seed, "sampler") % (2**62))
        collate = NamedCollate(data.collate_grid if grid_batches else data.collate_skip)
        loader = _loader(train_items, per_rank, sampler, c.workers, collate, device, drop_last=True)
        if len(loader) == 0:
            raise GridcamError(f"{c.data}: {len(train_items)} training images are fewer than one batch "
                               f"({per_rank} per rank); lower --batch-size")
    val_loader = None
    if ds.val is not None:
        val_items = SeededItems(ds.val, seed)
        val_loader = _loader(val_items, per_rank, ShardSampler(len(val_items), info.rank, info.world_size),
                             c.workers, NamedCollate(_collate_val), device, drop_last=False)

    # ---- model, optimizer, schedule (the random init too comes from the run seed)
    torch.manual_seed(derive_seed(seed, "init"))
    model = models.create(c.arch, num_classes=ds.num_classes, pooling="max" if c.maxpool else "avg")
    if c.pretrained:
        models.load_checkpoint(model, c.pretrained)
    if c.init:
        models.load_checkpoint(model, c.init, drop_classifier=True)
    if state is not None:
        # DataParallel/DDP checkpoints (the paper's) prefix keys with "module."
        clean = {".".join(p for p in k.split(".") if p != "module"): v
                 for k, v in state["state_dict"].items() if isinstance(v, torch.Tensor)}
        models.load_state_dict(model, clean, source=str(resume))
    model.to(device)
    if c.channels_last:
        model.to(memory_format=torch.channels_last)
    layer = models.cam_layer(model)
    net: nn.Module = model
    if info.distributed:
        # A GC step runs two forwards before one backward. DDP re-broadcasts buffers in place at
        # every forward; with --freeze-bn the BatchNorm running statistics are saved for the
        # first forward's backward, so that broadcast would invalidate them. Frozen statistics
        # never change (and start equal on every rank), so there is nothing to broadcast then.
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=False, broadcast_buffers=not c.freeze_bn)
    optimizer = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.wd)
    scheduler = _make_scheduler(c, optimizer)
    autocast, scaler = amp_setup(device, c.amp)
    if c.amp and device.type != "cuda" and rank0:
        warnings.warn("--amp applies to CUDA only; training in float32", stacklevel=2)

    start_epoch, start_step, best = 0, 0, -math.inf
    if state is not None and not c.evaluate:
        start_epoch = int(state["epoch"])
        start_step = int(state.get("step", 0))
        saved_batch = (state.get("args") or {}).get("batch_size")
        if start_step and saved_batch is not None and int(saved_batch) != c.batch_size:
            # the steps already done are counted in global batches of the interrupted run
            raise GridcamError(f"{resume} was written in the middle of an epoch with --batch-size "
                               f"{saved_batch}; resume it with the same global batch size")
        best = -math.inf if state.get("best_acc1") is None else float(state["best_acc1"])
        if state.get("scheduler"):
            if state.get("optimizer"):
                optimizer.load_state_dict(state["optimizer"])
            ckpt.load_scheduler_state(scheduler, state["scheduler"])
        else:
            # The paper's checkpoints have no scheduler: replay it to the saved epoch on the fresh
            # optimizer, then keep the replayed learning rate over the one stored with the
            # optimizer state (replaying on top of that would decay it twice).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()"
                for _ in range(start_epoch):
                    scheduler.step()
            lrs = [g["lr"] for g in optimizer.param_groups]
            if state.get("optimizer"):
                optimizer.load_state_dict(state["optimizer"])
            for group, lr in zip(optimizer.param_groups, lrs):
                group["lr"] = lr
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])

    log = EpochLog(save_dir, enabled=rank0, tensorboard=c.tensorboard)
    summary: dict[str, Any] = {
        "best_acc1": None if best == -math.inf else best, "epochs_run": 0, "last_epoch": start_epoch,
        "train": None, "val": None, "save_dir": str(save_dir), "checkpoint": None,
        "best_checkpoint": None, "log": str(log.path), "num_classes": ds.num_classes,
        "classes": ds.classes, "seed": seed,
    }
    meta = {
        "arch": c.arch, "num_classes": ds.num_classes, "pooling": "max" if c.maxpool else "avg",
        "dataset": c.dataset, "classes": ds.classes, "category_ids": ds.category_ids,
        "seed": seed, "gridcam_version": __version__,
    }

    try:
        if c.evaluate:
            if val_loader is None:
                raise GridcamError(f"{c.data}: -e/--evaluate needs a validation set")
            metrics = validate(model, val_loader, multi_label, ds.num_classes, device, autocast, c.channels_last)
            summary["val"] = metrics
            log.write({"evaluate": True, "epoch": int(state["epoch"]) if state else None, "val": metrics,
                       "weights": resume or c.pretrained or c.init})
            if rank0:
                print(_format_val(metrics, multi_label), file=sys.stderr)
            return summary

        assert loader is not None and sampler is not None and train_items is not None
        stop = StopFlag().install()
        gen = torch.Generator(device=device)
        last_saved: Path | None = Path(resume) if resume else None
        try:
            for epoch in range(start_epoch, c.epochs):
                step0 = start_step if epoch == start_epoch else 0
                if step0 == 0:
                    _seed_globals(seed, epoch, info.rank)
                else:
                    _restore_rng(state.get("rng") if state else None, info)
                sampler.set_epoch(epoch)
                sampler.start = step0 * per_rank
                train_items.epoch = epoch
                lr = optimizer.param_groups[0]["lr"]
                ctx = _EpochContext(c, info, net, model, layer, optimizer, scheduler, scaler, autocast,
                                    gen, seed, multi_label, grid_batches, stop, save_dir, meta, best,
                                    last_saved)
                stats = ctx.run(loader, epoch, step0)
                scheduler.step()
                metrics = None
                if val_loader is not None:
                    metrics = validate(model, val_loader, multi_label, ds.num_classes, device, autocast,
                                       c.channels_last)
                score = _score(metrics, multi_label) if metrics else None
                # Without validation (or a score) model_best follows the last epoch.
                is_best = score is None or score > best
                if score is not None and score > best:
                    best = score
                rng = _gather_rng()
                path = save_dir / ckpt.checkpoint_name(epoch + 1)
                if rank0:
                    ckpt.save(_state(meta, model, optimizer, scheduler, scaler, epoch + 1, 0, best, rng, c, metrics), path)
                    if is_best:
                        ckpt.copy_atomic(path, save_dir / ckpt.BEST_NAME)
                du.barrier()
                last_saved = path
                summary.update(best_acc1=None if best == -math.inf else best, last_epoch=epoch + 1,
                               train=stats, val=metrics, checkpoint=str(path),
                               epochs_run=summary["epochs_run"] + 1)
                if is_best:
                    summary["best_checkpoint"] = str(save_dir / ckpt.BEST_NAME)
                record = {"epoch": epoch + 1, "lr": lr, "train": stats, "val": metrics,
                          "best_acc1": None if best == -math.inf else best, "is_best": is_best,
                          "checkpoint": path.name, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
                if step0:
                    record["resumed_at_step"] = step0
                log.write(record)
                if rank0:
                    _print_epoch(record, multi_label)
                if stop.signum is not None:  # signal arrived during validation/saving
                    if rank0:
                        ckpt.copy_atomic(path, save_dir / ckpt.LAST_NAME)
                    du.barrier()
                    raise TrainingInterrupted(stop.signum, save_dir / ckpt.LAST_NAME, epoch + 1, 0)
        finally:
            stop.restore()
    finally:
        log.close()
    return summary


def _state(meta: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
           scheduler: Any, scaler: Any, epoch: int, step: int, best: float, rng: dict[str, Any],
           c: TrainConfig, metrics: dict[str, Any] | None) -> dict[str, Any]:
    return {
        **meta,
        "epoch": epoch,
        "step": step,
        "state_dict": models.unwrap(model).state_dict(),
        "best_acc1": best if best != -math.inf else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": ckpt.scheduler_state(scheduler),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng,
        "args": c.plain(),
        "metrics": metrics,
    }


class _EpochContext:
    """One training epoch; a class only to keep :func:`_run` readable."""

    def __init__(self, c: TrainConfig, info: du.DistInfo, net: nn.Module, model: nn.Module,
                 layer: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any,
                 autocast: Callable[[], Any], gen: torch.Generator, seed: int, multi_label: bool,
                 grid_batches: bool, stop: StopFlag, save_dir: Path, meta: dict[str, Any],
                 best: float, last_saved: Path | None):
        self.__dict__.update(locals())
        del self.__dict__["self"]

    def run(self, loader: DataLoader, epoch: int, step0: int) -> dict[str, Any]:
        c, info, device = self.c, self.info, self.info.device
        model, net = self.model, self.net
        model.train()
        if c.freeze_bn:
            _set_bn_eval(model)
        steps = len(loader) + step0
        progress = Progress(loader, total=steps, desc=f"epoch {epoch + 1}/{c.epochs}",
                            enabled=info.is_main, print_freq=c.print_freq, bar=c.progress_bar,
                            initial=step0)
        # device-side running sums: loss*B, cls*B, gc*n_gc, n_gc, samples, top-1 correct
        meter = torch.zeros(6, dtype=torch.float64, device=device)
        skipped, reasons_all = 0, []
        last_batch: tuple | None = None
        t0 = time.perf_counter()
        step = step0 - 1
        try:
            for step, (batch, reasons) in enumerate(progress, start=step0):
                skipped += int(batch[-1])
                reasons_all.extend(reasons)
                if self.grid_batches:
                    imgs, targets, cam_classes, quadrants, _ = batch
                    images, negatives = imgs[:, 0], imgs[:, 1:]
                else:
                    images, targets, _ = batch
                    cam_classes = quadrants = negatives = None
                dummy = images.shape[0] == 0
                if dummy:
                    # every image of this rank's batch was unreadable. Alone: skip the step. Under
                    # DDP every rank must run the backward (gradient all-reduce): repeat the last
                    # batch with zero weight.
                    if not info.distributed:
                        continue
                    if last_batch is None:
                        raise GridcamError("the first batch of a rank had no readable image")
                    images, targets, cam_classes, quadrants, negatives = last_batch
                images = images.to(device, non_blocking=True)
                if c.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                targets = targets.to(device, non_blocking=True)
                if negatives is not None:
                    negatives = negatives.to(device, non_blocking=True)
                    cam_classes = cam_classes.to(device, non_blocking=True)
                    quadrants = quadrants.to(device, non_blocking=True)
                last_batch = (images, targets, cam_classes, quadrants, negatives)
                self.gen.manual_seed(derive_seed(self.seed, "step", epoch, step, info.rank))
                out = gc_step(net, self.layer, images, targets, cam_classes, c.lam, self.multi_label,
                              negatives=negatives, quadrants=quadrants, generator=self.gen,
                              detach_target=c.detach_target, variant=c.gradcam_variant,
                              autocast=self.autocast, channels_last=c.channels_last)
                loss = out.loss * 0.0 if dummy else out.loss
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
                # One host sync per step: every rank agrees on "some loss is not finite" and
                # "a stop signal arrived" before anyone updates the weights.
                vals = torch.stack([out.loss.detach().float(), out.cls_loss, out.gc_loss])
                flags = torch.stack([(~torch.isfinite(vals)).any().float(),
                                     torch.full((), float(self.stop.signum is not None), device=device)])
                bad, stopping = du.all_reduce_sum(flags).tolist()
                if bad:
                    values = dict(zip(("loss", "cls_loss", "gc_loss"), vals.tolist()))
                    raise NonFiniteLoss(epoch, step, values, self.last_saved)
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                if not dummy:
                    B = images.shape[0]
                    correct = (out.logits.argmax(1) == targets).sum() if not self.multi_label else 0
                    meter += torch.stack([
                        vals[0].double() * B, vals[1].double() * B,
                        vals[2].double() * out.gc_samples, out.gc_samples.double(),
                        torch.tensor(float(B), dtype=torch.float64, device=device),
                        torch.as_tensor(correct, dtype=torch.float64, device=device)])
                if progress.due(step):
                    m = meter.tolist()
                    n = max(m[4], 1.0)
                    shown = {"loss": m[0] / n, "cls": m[1] / n}
                    if c.lam:
                        shown["gc"] = m[2] / max(m[3], 1.0)
                    shown["img/s"] = f"{m[4] * info.world_size / (time.perf_counter() - t0):.1f}"
                    progress.show(step, shown)
                if c.step_callback is not None:
                    c.step_callback(StepInfo(epoch, step, steps, *vals.tolist(), model, self.optimizer))
                if stopping:
                    raise _Stop(step + 1)
        except _Stop as s:
            progress.close()
            path = self._save_last(epoch, s.steps_done)
            raise TrainingInterrupted(self.stop.signum or signal.SIGTERM, path, epoch, s.steps_done) from None
        finally:
            progress.close()
        seconds = time.perf_counter() - t0
        sums = du.all_reduce_sum(torch.cat([meter, torch.tensor([float(skipped)], dtype=torch.float64, device=device)]))
        m = sums.tolist()
        names = [r for rank_reasons in du.all_gather_object(reasons_all) for r in rank_reasons]  # type: ignore[union-attr]
        n = m[4]
        stats: dict[str, Any] = {
            "loss": m[0] / n if n else None,
            "cls_loss": m[1] / n if n else None,
            "gc_loss": (m[2] / m[3] if m[3] else 0.0) if c.lam else None,
            "gc_samples": int(m[3]),
            "samples": int(n),
            "steps": step + 1 - step0,
            "seconds": round(seconds, 3),
            "img_per_s": round(n / seconds, 2) if seconds > 0 else None,
            "skipped_images": int(m[6]),
            "skipped": names,
        }
        if not self.multi_label:
            stats["acc1"] = 100.0 * m[5] / n if n else None
        if info.is_main and names:
            shown = "\n  ".join(names[:20]) + (f"\n  ... and {len(names) - 20} more" if len(names) > 20 else "")
            print(f"gridcam: epoch {epoch + 1}: {int(m[6])} unreadable training image(s) skipped:\n  {shown}",
                  file=sys.stderr)
        return stats

    def _save_last(self, epoch: int, steps_done: int) -> Path:
        rng = _gather_rng()
        path = self.save_dir / ckpt.LAST_NAME
        if self.info.is_main:
            ckpt.save(_state(self.meta, self.model, self.optimizer, self.scheduler, self.scaler, epoch,
                             steps_done, self.best, rng, self.c, None), path)
        du.barrier()
        return path


class _Stop(Exception):
    def __init__(self, steps_done: int):
        self.steps_done = steps_done


# ---------------------------------------------------------------------------------- reporting
def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))


def _format_val(m: dict[str, Any], multi_label: bool) -> str:
    if multi_label:
        return (f"val: F1 overall {_fmt(m.get('f1_overall'))}  per-class {_fmt(m.get('f1_per_class'))}  "
                f"P/R overall {_fmt(m.get('precision_overall'))}/{_fmt(m.get('recall_overall'))}  "
                f"per-class {_fmt(m.get('precision_per_class'))}/{_fmt(m.get('recall_per_class'))}  "
                f"loss {_fmt(m.get('loss'))}  ({m.get('images')} images)")
    return (f"val: top-1 {_fmt(m.get('top1'))}  top-5 {_fmt(m.get('top5'))}  loss {_fmt(m.get('loss'))}  "
            f"({m.get('images')} images)")


def _print_epoch(record: dict[str, Any], multi_label: bool) -> None:
    t = record["train"]
    parts = [f"epoch {record['epoch']}: lr {record['lr']:.4g}", f"train loss {_fmt(t['loss'])}",
             f"cls {_fmt(t['cls_loss'])}"]
    if t.get("gc_loss") is not None:
        parts.append(f"gc {t['gc_loss']:.4g}")
    parts.append(f"{_fmt(t['img_per_s'])} img/s")
    line = "  ".join(parts)
    if record["val"] is not None:
        line += "  |  " + _format_val(record["val"], multi_label)
    print(line + ("  *best*" if record["is_best"] and record["val"] is not None else ""), file=sys.stderr)


# ------------------------------------------------------------------------------------- CLI
def main(args: argparse.Namespace) -> int:
    """``gridcam train imagenet|coco DATA ...``: exit 0 when done, 128+signal when interrupted
    (a resumable ``last.pth.tar`` was written), 3 when the loss became non-finite."""
    config = config_from_args(args)
    try:
        summary = train(config)
    except TrainingInterrupted as exc:
        print(f"gridcam: {exc}", file=sys.stderr)
        return 128 + int(exc.signum)
    except NonFiniteLoss as exc:
        print(f"gridcam: error: {exc}", file=sys.stderr)
        return 3
    if int(os.environ.get("RANK", "0")) == 0:
        best = summary.get("best_acc1")
        if not config.evaluate:
            print(f"gridcam: done: {summary['last_epoch']} epoch(s); best "
                  f"{'F1 overall' if config.dataset == 'coco' else 'top-1'} {_fmt(best)}; "
                  f"checkpoints in {summary['save_dir']}", file=sys.stderr)
    return 0
