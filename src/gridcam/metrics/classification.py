"""Classification metrics kept as integer counts: top-k accuracy and multi-label P/R/F1.

Counts (not running means) are what is accumulated, so totals from several ranks or from a resumed
run are merged by summing and give exactly the numbers of one pass. Pure tensor code, no I/O.

Multi-label rules (the paper's COCO validation, DESIGN.md): a class is predicted when its logit
is > 0. Per-class precision/recall/F1 of a class with no true positive count as 0, and the
per-class scores are averaged over ALL classes; overall scores use the summed TP/FP/FN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["MultiLabelCounts", "TopKCounts", "multilabel_scores", "topk_correct"]


def topk_correct(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> Tensor:
    """Which samples have their label among the k highest logits.

    Args:
        logits: (B,C). labels: (B,) long. ks: the k values (each clipped to C).
    Returns:
        (B, len(ks)) bool.
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (B,kmax), highest first
    match = top == labels.to(top.device)[:, None]
    return torch.stack([match[:, : min(k, kmax)].any(dim=1) for k in ks], dim=1)


@dataclass
class TopKCounts:
    """Counts of top-k correct predictions (single-label, e.g. ImageNet top-1/top-5)."""

    ks: tuple[int, ...] = (1, 5)
    correct: list[int] = field(default_factory=list)
    total: int = 0

    def __post_init__(self) -> None:
        self.ks = tuple(self.ks)
        if not self.correct:
            self.correct = [0] * len(self.ks)

    def update(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Add a batch; returns its (B, len(ks)) bool correctness (for per-image records)."""
        ok = topk_correct(logits.detach(), labels, self.ks).cpu()
        self.add_flags(ok)
        return ok

    def add_flags(self, ok: Tensor) -> None:
        """Add precomputed (B, len(ks)) bool correctness flags (e.g. read back from records)."""
        ok = torch.as_tensor(ok, dtype=torch.bool).reshape(-1, len(self.ks))
        for j, v in enumerate(ok.sum(dim=0).tolist()):
            self.correct[j] += int(v)
        self.total += int(ok.shape[0])

    def merge(self, other: "TopKCounts") -> "TopKCounts":
        if other.ks != self.ks:
            raise ValueError("cannot merge top-k counts with different k")
        self.correct = [a + b for a, b in zip(self.correct, other.correct)]
        self.total += other.total
        return self

    def state(self) -> dict[str, Any]:
        return {"ks": list(self.ks), "correct": list(self.correct), "total": self.total}

    @classmethod
    def from_state(cls, s: Mapping[str, Any]) -> "TopKCounts":
        return cls(ks=tuple(s["ks"]), correct=list(s["correct"]), total=s["total"])

    def result(self) -> dict[str, Any]:
        """``{"top1": %, "top5": %, "images": n}`` (None when no image)."""
        out: dict[str, Any] = {
            f"top{k}": (c * 100.0 / self.total if self.total else None)
            for k, c in zip(self.ks, self.correct)
        }
        out["images"] = self.total
        return out


def multilabel_scores(tp: Tensor, fp: Tensor, fn: Tensor) -> dict[str, float]:
    """Per-class-mean and overall precision/recall/F1 in % from (C,) count tensors.

    Per class: P = TP/(TP+FP), R = TP/(TP+FN), F1 = 2PR/(P+R), all 0 when TP = 0; then the mean over
    all C classes. Overall: the same formulas on the summed counts (0 when the denominators are 0).
    """
    tp, fp, fn = (t.double() for t in (tp, fp, fn))
    has = tp > 0
    safe = torch.where(has, tp, torch.ones_like(tp))  # avoids 0/0 where the result is forced to 0
    p_c = torch.where(has, tp / (safe + fp), torch.zeros_like(tp)) * 100
    r_c = torch.where(has, tp / (safe + fn), torch.zeros_like(tp)) * 100
    f_c = torch.where(has, 2 * p_c * r_c / (p_c + r_c).clamp_min(1e-300), torch.zeros_like(tp))
    TP, FP, FN = float(tp.sum()), float(fp.sum()), float(fn.sum())
    p_o = TP / (TP + FP) * 100 if TP + FP > 0 else 0.0
    r_o = TP / (TP + FN) * 100 if TP + FN > 0 else 0.0
    f_o = 2 * p_o * r_o / (p_o + r_o) if p_o + r_o > 0 else 0.0
    return {
        "precision_per_class": float(p_c.mean()), "recall_per_class": float(r_c.mean()),
        "f1_per_class": float(f_c.mean()),
        "precision_overall": p_o, "recall_overall": r_o, "f1_overall": f_o,
    }


@dataclass
class MultiLabelCounts:
    """Per-class TP/FP/FN counts at ``logit > threshold`` (multi-label, e.g. COCO)."""

    num_classes: int
    threshold: float = 0.0
    tp: Tensor = field(default=None)  # type: ignore[assignment]
    fp: Tensor = field(default=None)  # type: ignore[assignment]
    fn: Tensor = field(default=None)  # type: ignore[assignment]
    images: int = 0

    def __post_init__(self) -> None:
        for name in ("tp", "fp", "fn"):
            if getattr(self, name) is None:
                setattr(self, name, torch.zeros(self.num_classes, dtype=torch.int64))

    def update(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Add a batch: logits (B,C), targets (B,C) multi-hot (any dtype, > 0.5 = present).

        Returns the (B,C) bool predictions (for per-image records).
        """
        pred = (logits.detach() > self.threshold).cpu()
        self.add_predictions(pred, targets.detach().cpu() > 0.5)
        return pred

    def add_predictions(self, pred: Tensor, truth: Tensor) -> None:
        """Add (B,C) bool predictions against (B,C) bool ground truth."""
        pred, truth = pred.bool().reshape(-1, self.num_classes), truth.bool().reshape(-1, self.num_classes)
        self.tp += (pred & truth).sum(dim=0)
        self.fp += (pred & ~truth).sum(dim=0)
        self.fn += (~pred & truth).sum(dim=0)
        self.images += int(pred.shape[0])

    def merge(self, other: "MultiLabelCounts") -> "MultiLabelCounts":
        if other.num_classes != self.num_classes:
            raise ValueError("cannot merge multi-label counts with different class counts")
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.images += other.images
        return self

    def state(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "threshold": self.threshold,
                "tp": self.tp.tolist(), "fp": self.fp.tolist(), "fn": self.fn.tolist(),
                "images": self.images}

    @classmethod
    def from_state(cls, s: Mapping[str, Any]) -> "MultiLabelCounts":
        return cls(num_classes=s["num_classes"], threshold=s["threshold"],
                   tp=torch.tensor(s["tp"], dtype=torch.int64),
                   fp=torch.tensor(s["fp"], dtype=torch.int64),
                   fn=torch.tensor(s["fn"], dtype=torch.int64), images=s["images"])

    def result(self) -> dict[str, Any]:
        """:func:`multilabel_scores` plus ``"images"``."""
        out: dict[str, Any] = multilabel_scores(self.tp, self.fp, self.fn)
        out["images"] = self.images
        return out
