"""Classification metrics on the validation set during training (top-1/top-5 or multi-label F1).

Not the explanation metrics (pointing game and co.): those are :mod:`gridcam.evaluation.loop`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from gridcam import problems
from gridcam.runtime import distributed as du
from gridcam.training.steps import classification_loss
from gridcam.metrics import MultiLabelCounts, TopKCounts, topk_correct

__all__ = ["score", "validate"]


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, multi_label: bool, num_classes: int,
             device: torch.device, autocast: Callable[[], Any], channels_last: bool = False
             ) -> dict[str, Any]:
    """Classification metrics over the whole (sharded) validation set, summed over ranks.

    Single-label: ``top1``, ``top5`` (%), ``loss`` (CE). Multi-label: per-class and overall
    precision/recall/F1 (%) at logit > 0 (``gridcam.metrics.multilabel_scores``), ``loss``
    (``80 * BCE``). Both: ``images`` and ``skipped_images`` (unreadable, left out; their
    problems, gathered from every rank, are reported by rank 0, :mod:`gridcam.problems`).
    """
    was_training = model.training
    model.eval()
    ks = (1, 5)  # topk_correct clips k to the number of classes
    correct = torch.zeros(2, dtype=torch.float64, device=device)
    tp = torch.zeros(num_classes, dtype=torch.float64, device=device)
    fp = torch.zeros_like(tp)
    fn = torch.zeros_like(tp)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # images, loss sum, skipped
    found = []
    for (images, targets, n_skipped), reasons in loader:
        found.extend(reasons)
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
    gathered = du.all_gather_object(found)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        for p in (q for rank_found in gathered for q in rank_found):  # type: ignore[union-attr]
            problems.report(p)
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


def score(metrics: dict[str, Any], multi_label: bool) -> float | None:
    """The number that picks ``model_best``: top-1 (%), or overall F1 (%) for multi-label data."""
    v = metrics.get("f1_overall" if multi_label else "top1")
    return None if v is None else float(v)
