"""Setting a training run up: everything the loop needs, built in the order that fixes the run.

:func:`set_up` reads the checkpoint to resume first (it fixes the run seed), then builds the data
loaders, the model (its random init too comes from the run seed), the optimizer, the learning-rate
schedule and AMP, and puts a resumed run's optimizer/schedule back. The result is one
:class:`Run`, which the loop (:mod:`gridcam.training.loop`) and one epoch
(:mod:`gridcam.training.epoch`) read.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gridcam import __version__, models
from gridcam.runtime import checkpoint as ckpt
from gridcam.training import resume as rs
from gridcam.training.run import Run
from gridcam.runtime import distributed as du
from gridcam.runtime.rng import derive_seed
from gridcam.training.steps import amp_setup
from gridcam.training.config import TrainConfig, make_scheduler
from gridcam.training.data import Datasets, build_datasets, build_loaders
from gridcam.errors import GridcamError

__all__ = ["Run", "pooling_switches", "resolve_pooling", "set_up"]


def set_up(c: TrainConfig, info: du.DistInfo) -> Run:
    """Build the :class:`Run` of ``c`` on this rank (see the module docstring for the order)."""
    rank0 = info.is_main
    if c.batch_size % info.world_size:
        raise GridcamError(f"--batch-size {c.batch_size} (global) is not divisible by the world size "
                           f"{info.world_size}")
    per_rank = c.batch_size // info.world_size
    save_dir = Path(c.save_dir)
    if rank0:
        save_dir.mkdir(parents=True, exist_ok=True)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    resume, state = rs.open_resume(c, save_dir, rank0)
    if state is not None:
        c = _recorded_model_options(c, state)
    ds = build_datasets(c, rank0)
    if state is not None and rs.is_transfer(c, state, ds.num_classes):
        # The paper's COCO command passes its ImageNet checkpoint as --resume: an initialisation.
        if rank0:
            print(f"gridcam: --resume {resume} has {ckpt.state_classes(state)} classes, this COCO run "
                  f"{ds.num_classes}: starting epoch 1 from its weights with the classifier dropped, as "
                  f"the paper's COCO script does (same as --init {resume})", file=sys.stderr)
        c = replace(c, resume=None, init=resume)
        resume, state = None, None
    seed = rs.run_seed(c, state, rank0)
    loaders = build_loaders(c, ds, seed, info, per_rank)
    model, net, layer, pooling = _build_model(c, ds, info, seed, resume, state)
    optimizer = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.wd)
    scheduler = make_scheduler(c, optimizer)
    autocast, scaler = amp_setup(info.device, c.amp)
    if c.amp and info.device.type != "cuda" and rank0:
        warnings.warn("--amp applies to CUDA only; training in float32", stacklevel=3)
    record = models.info(model)
    meta = {
        **(record.as_dict() if record is not None else {}),  # CAM layer, reshape, mean/std: evaluation reads them
        "arch": c.arch, "num_classes": ds.num_classes, "pooling": pooling,
        "dataset": c.dataset, "classes": ds.classes, "category_ids": ds.category_ids,
        "seed": seed, "gridcam_version": __version__,
    }
    run = Run(c, info, save_dir, per_rank, seed, resume, state, ds, loaders, model, net, layer,
              optimizer, scheduler, scaler, autocast, meta, last_saved=Path(resume) if resume else None)
    if state is not None and not c.evaluate:
        assert resume is not None
        run.start_epoch, run.start_step, run.best = rs.restore_training(
            state, c, resume, optimizer, scheduler, scaler)
    return run


def _build_model(c: TrainConfig, ds: Datasets, info: du.DistInfo, seed: int, resume: str | None,
                 state: dict[str, Any] | None) -> tuple[nn.Module, nn.Module, nn.Module, str]:
    """``(model, net, cam layer, pooling)``: initialised from the run seed, then the weights of
    ``--pretrained``/``--init``/the resumed checkpoint; ``net`` wraps it in DDP under torchrun.
    The pooling is :func:`resolve_pooling`'s."""
    device = info.device
    files = [(flag, path, models.read_checkpoint(path)) for flag, path in
             (("--pretrained", c.pretrained), ("--init", c.init)) if path]
    recorded = [(flag, path, meta.get("pooling")) for flag, path, (_, meta) in files]
    if state is not None:
        recorded.append(("--resume", str(resume), state.get("pooling")))
    pooling = resolve_pooling(c.maxpool, recorded)
    if info.is_main:
        for line in pooling_switches(pooling, recorded):
            print(line, flush=True)
    torch.manual_seed(derive_seed(seed, "init"))
    model = models.build(c.arch, num_classes=ds.num_classes, pooling=pooling, cam_layer=c.cam_layer,
                         reshape=c.reshape, mean=c.mean, std=c.std).model
    for flag, path, (sd, _) in files:
        models.load_state_dict(model, sd, drop_classifier=flag == "--init", source=str(path))
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
    return model, net, layer, pooling


def _recorded_model_options(c: TrainConfig, state: dict[str, Any]) -> TrainConfig:
    """``c`` with the CAM layer, reshape rule and mean/std the resumed checkpoint records where
    the flags leave them to the default, so a resumed run goes on with the same model set-up."""
    reshape = state.get("reshape") if c.reshape == "auto" and c.cam_layer is None else None
    return replace(c, cam_layer=c.cam_layer or state.get("cam_layer"),
                   reshape=reshape if isinstance(reshape, str) else c.reshape,
                   mean=c.mean if c.mean is not None else state.get("mean"),
                   std=c.std if c.std is not None else state.get("std"))


def resolve_pooling(maxpool: bool | None, recorded: list[tuple[str, str, Any]]) -> str:
    """The global pooling to build: what the weights files record (``recorded``: ``(flag, path,
    pooling or None)``) unless ``--maxpool`` says otherwise; average when nothing is recorded or
    asked. ``maxpool`` None: not given.

    Pooling has no weights, so ``--pretrained``/``--init`` weights of either pooling can start a
    model of the other: ``--maxpool`` with average-pooled weights fine-tunes them with GMP, the
    paper's COCO GMP recipe (``--maxpool --resume <ImageNet model>``). A run resumed with
    ``--resume`` must go on as it started: a flag contradicting its pooling is an error naming both.
    """
    asked = None if maxpool is None else ("max" if maxpool else "avg")
    for flag, path, pooling in sorted(recorded, key=lambda r: r[0] != "--resume"):  # the run's first
        if pooling not in ("avg", "max"):
            continue  # not recorded (the paper's and torchvision's files)
        if asked is None:
            asked = pooling
        elif pooling != asked and flag == "--resume":
            have = "--maxpool" if asked == "max" else "average pooling (no --maxpool)"
            raise GridcamError(f"{have} contradicts {flag} {path}, which records "
                               f"{'max' if pooling == 'max' else 'average'} pooling; "
                               f"{'drop --maxpool' if pooling == 'avg' else 'add --maxpool'} to go on with the run's")
    return asked or "avg"


def pooling_switches(pooling: str, recorded: list[tuple[str, str, Any]]) -> list[str]:
    """One line per weights file of another pooling than ``pooling`` (started from as asked)."""
    name = {"avg": "average", "max": "max"}
    return [f"[train] {flag} {path} was trained with {name[p]} pooling; it starts this "
            f"{name[pooling]}-pooling model as asked (pooling has no weights)"
            for flag, path, p in recorded if p in name and p != pooling]

