"""One training epoch: batches to the device, one Grad-CAM consistency step each, running numbers.

:func:`run_epoch` is the inner loop of :mod:`gridcam.training.loop`. Per batch: move it to the
device (a rank whose batch had no readable image repeats its last batch with zero weight, so every
DDP rank still runs the backward), seed the step's in-batch negatives/quadrants by (seed, epoch,
step, rank), :func:`gridcam.training.steps.gc_step`, backward, one host sync in which all ranks agree
on "the loss is not finite" and "a stop signal arrived", then the optimizer step. A stop signal
ends the epoch with a resumable ``last.pth.tar``.
"""

from __future__ import annotations

import signal
import time
import warnings
import weakref
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from gridcam import problems
from gridcam.models.layers import zero_heatmap_message
from gridcam.runtime import checkpoint as ckpt
from gridcam.training.resume import save_run
from gridcam.runtime import distributed as du
from gridcam.training.log import Progress, print_skipped
from gridcam.runtime.rng import derive_seed, restore_rng
from gridcam.training.steps import StepResult, gc_step
from gridcam.runtime.stopping import NonFiniteLoss, StopFlag, StopRequested, TrainingInterrupted
from gridcam.training.config import StepInfo
from gridcam.training.run import Run
from gridcam.errors import GridcamError

__all__ = ["run_epoch"]

#: A batch on the device: images, targets, cam classes, quadrants, negatives (the last three None
#: unless batches carry loader-side negatives).
Batch = tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]


def run_epoch(r: Run, loader: DataLoader, epoch: int, step0: int, stop: StopFlag,
              gen: torch.Generator, rng: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train ``r`` for the rest of ``epoch`` (0-based), from step ``step0``; returns the epoch's
    training stats (summed over ranks). Raises TrainingInterrupted (after writing
    ``last.pth.tar``) when ``stop`` was raised, NonFiniteLoss when the loss is not finite.

    ``rng``: the generator states a mid-epoch checkpoint saved (:func:`gridcam.runtime.rng.gather_rng`),
    put back once the loader's iterator exists: creating it draws the workers' base seed from
    the global torch generator, a draw the interrupted run made at the start of the epoch, before
    its states were saved (restoring first would shift every later dropout mask by one draw)."""
    c, info, device = r.c, r.info, r.info.device
    r.model.train()
    if c.freeze_bn:
        _set_bn_eval(r.model)
    steps = len(loader) + step0
    batches = iter(loader)
    if rng is not None:
        restore_rng(rng, info)
    progress = Progress(batches, total=steps, desc=f"epoch {epoch + 1}/{c.epochs}",
                        enabled=info.is_main, print_freq=c.print_freq, bar=c.progress_bar,
                        initial=step0)
    # device-side running sums: loss*B, cls*B, gc*n_gc, n_gc, samples, top-1 correct
    meter = torch.zeros(6, dtype=torch.float64, device=device)
    curve = _Curve(meter, steps)
    skipped, reasons_all = 0, []
    last_batch: Batch | None = None
    t0 = time.perf_counter()
    step = step0 - 1
    try:
        for step, (batch, reasons) in enumerate(progress, start=step0):
            skipped += int(batch[-1])
            reasons_all.extend(reasons)
            if info.is_main:  # told at once here; the other ranks' at the end of the epoch
                for p in reasons:
                    problems.report(p)
            tensors = _unpack(batch, r.grid_batches)
            dummy = tensors[0].shape[0] == 0 or _lone_image_breaks_bn(r.model, tensors[0])
            if dummy:
                # every image of this rank's batch was unreadable, or one is left and BatchNorm
                # cannot take it. Alone: skip the step. Under DDP every rank must run the
                # backward (gradient all-reduce): repeat the last batch with zero weight.
                if not info.distributed:
                    continue
                if last_batch is None:
                    raise GridcamError(f"the first batch of rank {info.rank} had no usable image "
                                       "(unreadable, or one left where BatchNorm needs two)")
                tensors = last_batch
            tensors = last_batch = _to_device(tensors, device, c.channels_last)
            gen.manual_seed(derive_seed(r.seed, "step", epoch, step, info.rank))
            out, vals, stopping = _optimize(r, tensors, dummy, stop, gen, epoch, step)
            if not dummy:
                _warn_zero_maps(r, out)
                meter += _batch_sums(out, vals, tensors[1], r.multi_label, device)
            curve.at(step)
            if progress.due(step):
                progress.show(step, _running(meter, c.lam, info.world_size, t0))
            if c.step_callback is not None:
                c.step_callback(StepInfo(epoch, step, steps, *vals.tolist(), r.model, r.optimizer))
            if stopping:
                raise StopRequested(step + 1)
    except StopRequested as s:
        progress.close()
        path = _save_last(r, epoch, s.steps_done)
        raise TrainingInterrupted(stop.signum or signal.SIGTERM, path, epoch, s.steps_done) from None
    finally:
        progress.close()
    seconds = time.perf_counter() - t0
    stats = _epoch_stats(r, meter, skipped, reasons_all, step + 1 - step0, seconds, epoch)
    stats["curve"] = curve.points
    return stats


class _Curve:
    """The epoch's losses at about :data:`CURVE_POINTS` evenly spaced steps, so a short run still
    draws a curve: ``points`` = ``[[fraction of the epoch done, mean loss, mean GC loss or None],
    ...]``, each the mean over the steps since the previous point, of this process's batches (rank
    0's in the log; the epoch's ``loss`` is over all ranks). One host sync per point; a resumed
    epoch's curve starts at its resume step."""

    def __init__(self, meter: Tensor, steps: int):
        self.meter, self.steps = meter, steps
        self.every = max(1, steps // CURVE_POINTS)
        self.last = meter.clone()
        self.points: list[list[float | None]] = []

    def at(self, step: int) -> None:
        if (step + 1) % self.every and step + 1 != self.steps:
            return
        d = (self.meter - self.last).tolist()
        self.last = self.meter.clone()
        if d[4] > 0:
            self.points.append([round((step + 1) / self.steps, 4), d[0] / d[4], d[2] / d[3] if d[3] else None])


#: points per epoch in a training log's ``curve``
CURVE_POINTS = 25


#: model -> {input shape (3,H,W): one image of it gives a training BatchNorm one value per channel}
_LONE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _lone_image_breaks_bn(model: nn.Module, images: Tensor) -> bool:
    """True when ``images`` (B,3,H,W) holds ONE image and some BatchNorm layer in training mode
    would see one value per channel (a 1x1 feature map at this size), where BatchNorm raises
    "Expected more than 1 value per channel when training" (a batch left with one image after
    unreadable ones were dropped). Found once per model and size by an eval-mode forward of the
    image without gradients (no running statistics change); the first time, a warning says such
    steps are skipped."""
    if images.shape[0] != 1:
        return False
    known = _LONE.setdefault(model, {})
    size = tuple(images.shape[1:])
    if size not in known:
        bns = [m for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        single: list[bool] = []
        hooks = [m.register_forward_pre_hook(lambda _m, x: single.append(x[0][0, 0].numel() == 1))
                 for m in bns]
        modes = [(m, m.training) for m in model.modules()]
        try:
            if bns:
                model.eval()
                with torch.no_grad():
                    model(images.to(next(model.parameters()).device))
        finally:
            for h in hooks:
                h.remove()
            for m, mode in modes:
                m.training = mode
        known[size] = any(single)
        if known[size]:
            warnings.warn(f"a training batch was left with one image, and at {size[-1]}x{size[-2]} "
                          "px the model's last BatchNorm layers see a 1x1 feature map (one value "
                          "per channel, which BatchNorm cannot normalise): such steps are skipped",
                          stacklevel=3)
    return known[size]


#: models whose first Grad-CAM training batch (in this process) was checked for zero heatmaps
_ZERO_CHECKED: weakref.WeakSet = weakref.WeakSet()


def _warn_zero_maps(r: Run, out: StepResult) -> None:
    """After the first Grad-CAM batch of a model: one warning line when every heatmap of that
    batch was zero everywhere (a CAM layer the class scores send no gradient, such as a ViT's
    last block: the consistency loss is then ~0 and trains nothing). A batch whose logits are the
    same for every image says nothing about the layer (the classifier ignores its input:
    torchvision's ViT starts with a zero head), so the next batch is checked instead. One host
    sync per batch checked."""
    if out.zero_maps is None or r.model in _ZERO_CHECKED:
        return
    logits = out.logits
    if logits.shape[0] > 1 and bool((logits == logits[:1]).all()):
        return
    _ZERO_CHECKED.add(r.model)
    if r.info.is_main and bool(out.zero_maps):
        warnings.warn(zero_heatmap_message(r.model, "every image of the first training batch "
                                           "(the consistency loss is ~0 and trains nothing)"),
                      stacklevel=2)


def _set_bn_eval(model: nn.Module) -> None:
    """Keep BatchNorm on its running statistics (``--freeze-bn``): no batch statistics, no
    running-stat updates; the affine weights still train."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _unpack(batch: tuple, grid_batches: bool) -> Batch:
    """A collated batch (``collate_grid`` or ``collate_skip``) as :data:`Batch`, still on the host."""
    if grid_batches:
        imgs, targets, cam_classes, quadrants, _ = batch
        return imgs[:, 0], targets, cam_classes, quadrants, imgs[:, 1:]
    images, targets, _ = batch
    return images, targets, None, None, None


def _to_device(b: Batch, device: torch.device, channels_last: bool) -> Batch:
    images, targets, cam_classes, quadrants, negatives = b
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = targets.to(device, non_blocking=True)
    if negatives is not None:
        assert cam_classes is not None and quadrants is not None
        negatives = negatives.to(device, non_blocking=True)
        cam_classes = cam_classes.to(device, non_blocking=True)
        quadrants = quadrants.to(device, non_blocking=True)
    return images, targets, cam_classes, quadrants, negatives


def _optimize(r: Run, b: Batch, dummy: bool, stop: StopFlag, gen: torch.Generator, epoch: int,
              step: int) -> tuple[StepResult, Tensor, bool]:
    """Loss, backward, the ranks' agreement, optimizer step. Returns the step's result, its
    ``[loss, cls_loss, gc_loss]`` and whether all ranks stop after it."""
    c = r.c
    images, targets, cam_classes, quadrants, negatives = b
    out = gc_step(r.net, r.layer, images, targets, cam_classes, c.lam, r.multi_label,
                  negatives=negatives, quadrants=quadrants, generator=gen,
                  detach_target=c.detach_target, variant=c.gradcam_variant,
                  autocast=r.autocast, channels_last=c.channels_last)
    loss = out.loss * 0.0 if dummy else out.loss
    r.optimizer.zero_grad(set_to_none=True)
    if r.scaler is not None:
        r.scaler.scale(loss).backward()
    else:
        loss.backward()
    # One host sync per step: every rank agrees on "some loss is not finite" and
    # "a stop signal arrived" before anyone updates the weights.
    vals = torch.stack([out.loss.detach().float(), out.cls_loss, out.gc_loss])
    flags = torch.stack([(~torch.isfinite(vals)).any().float(),
                         torch.full((), float(stop.signum is not None), device=r.info.device)])
    bad, stopping = du.all_reduce_sum(flags).tolist()
    if bad:
        values = dict(zip(("loss", "cls_loss", "gc_loss"), vals.tolist()))
        raise NonFiniteLoss(epoch, step, values, r.last_saved)
    if r.scaler is not None:
        r.scaler.step(r.optimizer)
        r.scaler.update()
    else:
        r.optimizer.step()
    return out, vals, bool(stopping)


def _batch_sums(out: StepResult, vals: Tensor, targets: Tensor, multi_label: bool,
                device: torch.device) -> Tensor:
    """This batch's contribution to the epoch meter (see :func:`run_epoch`)."""
    B = targets.shape[0]
    correct = (out.logits.argmax(1) == targets).sum() if not multi_label else 0
    return torch.stack([
        vals[0].double() * B, vals[1].double() * B,
        vals[2].double() * out.gc_samples, out.gc_samples.double(),
        torch.tensor(float(B), dtype=torch.float64, device=device),
        torch.as_tensor(correct, dtype=torch.float64, device=device)])


def _running(meter: Tensor, lam: float, world_size: int, t0: float) -> dict[str, Any]:
    """The progress numbers so far: mean losses and images/s over all ranks."""
    m = meter.tolist()
    n = max(m[4], 1.0)
    shown: dict[str, Any] = {"loss": m[0] / n, "cls": m[1] / n}
    if lam:
        shown["gc"] = m[2] / max(m[3], 1.0)
    shown["img/s"] = f"{m[4] * world_size / (time.perf_counter() - t0):.1f}"
    return shown


def _epoch_stats(r: Run, meter: Tensor, skipped: int, reasons: list[problems.Problem], steps: int,
                 seconds: float, epoch: int) -> dict[str, Any]:
    """The epoch's training stats summed over ranks (a collective). The problems of the images
    skipped on every rank are gathered; rank 0 reports them (each file told once per run, counted
    by reason) and prints the epoch's count; the log names them (``"skipped"``)."""
    device = r.info.device
    sums = du.all_reduce_sum(torch.cat([meter, torch.tensor([float(skipped)], dtype=torch.float64, device=device)]))
    m = sums.tolist()
    per_rank = du.all_gather_object(reasons)
    names = [f"{p.file}: {p.cause}" for rank_found in per_rank for p in rank_found]  # type: ignore[union-attr]
    n = m[4]
    stats: dict[str, Any] = {
        "loss": m[0] / n if n else None,
        "cls_loss": m[1] / n if n else None,
        "gc_loss": (m[2] / m[3] if m[3] else 0.0) if r.c.lam else None,
        "gc_samples": int(m[3]),
        "samples": int(n),
        "steps": steps,
        "seconds": round(seconds, 3),
        "img_per_s": round(n / seconds, 2) if seconds > 0 else None,
        "skipped_images": int(m[6]),
        "skipped": names,
    }
    if not r.multi_label:
        stats["acc1"] = 100.0 * m[5] / n if n else None
    if r.info.is_main and int(m[6]):
        for rank_found in per_rank[1:]:  # rank 0's were told when met
            for p in rank_found:  # type: ignore[union-attr]
                problems.report(p)
        print_skipped(epoch, int(m[6]))
    return stats


def _save_last(r: Run, epoch: int, steps_done: int) -> Path:
    """Write the resumable ``last.pth.tar`` of an epoch stopped after ``steps_done`` steps."""
    path = r.save_dir / ckpt.LAST_NAME
    save_run(r, path, epoch, steps_done, None)
    du.barrier()
    return path
