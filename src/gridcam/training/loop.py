"""Training with the Grad-CAM consistency loss: :func:`train` (``gridcam train imagenet|coco``).

One readable loop in the style of torchvision's ``references/classification/train.py``, runnable
as a single process or under ``torchrun`` (DistributedDataParallel):

* data: ``DATA/train/<class>/*`` (+ ``DATA/val``) for ImageNet-style runs, ``DATA/train2014`` +
  ``DATA/annotations/instances_train2014.json`` (+ val2014) for COCO-style runs;
* loss per batch: :func:`gridcam.training.steps.gc_step` (CE or ``80 * BCE``, plus ``lambda * L_gc``);
* SGD with the paper's step schedule (or cosine), validation every epoch, checkpoints as DESIGN.md
  says (atomic writes), exact ``--resume``, SIGTERM/SIGINT -> resumable ``last.pth.tar``, a
  non-finite loss stops the run and leaves the last good checkpoint untouched;
* rank 0 writes checkpoints, ``train_log.jsonl``, TensorBoard events and the progress bar.

The parts, each in its own module: the configuration (:mod:`~gridcam.training.config`), the
data plumbing (:mod:`~gridcam.training.data`), set-up (:mod:`~gridcam.training.setup`),
one epoch (:mod:`~gridcam.training.epoch`), validation (:mod:`~gridcam.training.validation`),
checkpoints and resume (:mod:`~gridcam.runtime.checkpoint`), seeds and RNG state
(:mod:`~gridcam.runtime.rng`), stopping early (:mod:`~gridcam.runtime.stopping`) and what is printed
and logged (:mod:`~gridcam.training.log`).

Reproducibility: every random choice derives from one run seed (``seed``, else drawn once and
stored in the checkpoints): the sampler's permutation (seed + epoch, as DistributedSampler), each
sample's augmentation and loader-side negatives (seeded by (seed, epoch, sample index), so they do
not depend on the number of workers or ranks), the in-batch negatives/quadrants of each step
(seeded by (seed, epoch, step, rank)) and the global RNGs at the start of each epoch. Hence
``--resume`` continues bit-exactly on CPU, from an end-of-epoch checkpoint or from a
``last.pth.tar`` written in the middle of an epoch (its saved generator states are put back once
the loader's iterator exists, so models with dropout continue exactly too).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from gridcam.runtime import checkpoint as ckpt
from gridcam.training.resume import save_run
from gridcam.runtime import distributed as du
from gridcam.training.log import EpochLog, format_opening, format_val, print_epoch, say
from gridcam.runtime.rng import seed_globals
from gridcam.runtime.stopping import NonFiniteLoss, StopFlag, TrainingInterrupted
from gridcam.training.config import StepInfo, TrainConfig, check_config
from gridcam.training.epoch import run_epoch
from gridcam.training.run import Run
from gridcam.training.setup import set_up
from gridcam.training.validation import score, validate
from gridcam.errors import GridcamError

__all__ = ["NonFiniteLoss", "StepInfo", "TrainConfig", "TrainingInterrupted", "train"]


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
    check_config(config)
    # Leave a process group that the caller created alone; destroy only our own.
    ours = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = du.setup(config.device)
    try:
        r = set_up(config, info)
        if info.is_main:
            say(_opening(r))
        log = EpochLog(r.save_dir, enabled=info.is_main, tensorboard=config.tensorboard)
        try:
            summary = _summary(r, log)
            if config.evaluate:
                return _evaluate_only(r, log, summary)
            return _fit(r, log, summary)
        finally:
            log.close()
    finally:
        if ours:
            du.cleanup()


def _opening(r: Run) -> str:
    """The opening line of the run (before its first epoch), as torchvision's script gives one."""
    c = r.c
    return format_opening(
        arch=c.arch, dataset=c.dataset, data=c.data, classes=r.ds.num_classes,
        train_images=len(r.ds.train) if r.ds.train is not None else None,
        val_images=len(r.ds.val) if r.ds.val is not None else None, device=str(r.info.device),
        world=r.info.world_size, epochs=(r.start_epoch + 1, c.epochs), batch=c.batch_size, lr=c.lr,
        lam=c.lam, save_dir=str(r.save_dir), evaluate=c.evaluate)


def _summary(r: Run, log: EpochLog) -> dict[str, Any]:
    """The summary :func:`train` returns, before any epoch has run."""
    return {
        "best_acc1": None if r.best == -math.inf else r.best, "epochs_run": 0,
        "last_epoch": r.start_epoch, "train": None, "val": None, "save_dir": str(r.save_dir),
        "checkpoint": None, "best_checkpoint": None, "log": str(log.path),
        "num_classes": r.ds.num_classes, "classes": r.ds.classes, "seed": r.seed,
    }


def _validate(r: Run) -> dict[str, Any]:
    assert r.loaders.val is not None
    return validate(r.model, r.loaders.val, r.multi_label, r.ds.num_classes, r.info.device, r.autocast,
                    r.c.channels_last)


def _evaluate_only(r: Run, log: EpochLog, summary: dict[str, Any]) -> dict[str, Any]:
    """``-e/--evaluate``: one validation pass of the loaded weights, logged and printed."""
    if r.loaders.val is None:
        raise GridcamError(f"{r.c.data}: -e/--evaluate needs a validation set")
    metrics = _validate(r)
    summary["val"] = metrics
    log.write({"evaluate": True, "epoch": int(r.state["epoch"]) if r.state else None, "val": metrics,
               "weights": r.resume or r.c.pretrained or r.c.init})
    if r.info.is_main:
        say(format_val(metrics, r.multi_label))
    return summary


def _fit(r: Run, log: EpochLog, summary: dict[str, Any]) -> dict[str, Any]:
    """The epochs: position the data and RNGs, train one epoch, validate, save, log."""
    loader, sampler, items = r.loaders.train, r.loaders.sampler, r.loaders.items
    assert loader is not None and sampler is not None and items is not None
    stop = StopFlag().install()
    gen = torch.Generator(device=r.info.device)
    try:
        for epoch in range(r.start_epoch, r.c.epochs):
            step0 = r.start_step if epoch == r.start_epoch else 0
            # An epoch starts from seeded generators; a resumed one from the saved states, which
            # run_epoch puts back once the loader's iterator exists (creating it draws a number).
            seed_globals(r.seed, epoch, r.info.rank)
            saved_rng = (r.state.get("rng") if r.state else None) if step0 else None
            sampler.set_epoch(epoch)
            sampler.start = step0 * r.per_rank
            items.epoch = epoch
            lr = r.optimizer.param_groups[0]["lr"]
            stats = run_epoch(r, loader, epoch, step0, stop, gen, saved_rng)
            r.scheduler.step()
            metrics = _validate(r) if r.loaders.val is not None else None
            record = _end_epoch(r, epoch, lr, stats, metrics, step0, summary)
            log.write(record)
            if r.info.is_main:
                print_epoch(record, r.multi_label)
            if stop.signum is not None:  # signal arrived during validation/saving
                if r.info.is_main:
                    ckpt.copy_atomic(r.save_dir / record["checkpoint"], r.save_dir / ckpt.LAST_NAME)
                du.barrier()
                raise TrainingInterrupted(stop.signum, r.save_dir / ckpt.LAST_NAME, epoch + 1, 0)
    finally:
        stop.restore()
    return summary


def _end_epoch(r: Run, epoch: int, lr: float, stats: dict[str, Any], metrics: dict[str, Any] | None,
               step0: int, summary: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint the finished ``epoch`` (and ``model_best`` when it is the best so far), update
    ``summary``, and return the epoch's log record."""
    value = score(metrics, r.multi_label) if metrics else None
    # Without validation (or a score) model_best follows the last epoch.
    is_best = value is None or value > r.best
    if value is not None and value > r.best:
        r.best = value
    path = r.save_dir / ckpt.checkpoint_name(epoch + 1)
    save_run(r, path, epoch + 1, 0, metrics)
    if r.info.is_main and is_best:
        ckpt.copy_atomic(path, r.save_dir / ckpt.BEST_NAME)
    du.barrier()
    r.last_saved = path
    best = None if r.best == -math.inf else r.best
    summary.update(best_acc1=best, last_epoch=epoch + 1, train=stats, val=metrics, checkpoint=str(path),
                   epochs_run=summary["epochs_run"] + 1)
    if is_best:
        summary["best_checkpoint"] = str(r.save_dir / ckpt.BEST_NAME)
    record = {"epoch": epoch + 1, "lr": lr, "train": stats, "val": metrics, "best_acc1": best,
              "is_best": is_best, "checkpoint": path.name, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if step0:
        record["resumed_at_step"] = step0
    return record
