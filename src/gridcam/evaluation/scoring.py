"""Scoring: heatmaps of (image, class) pairs -> pointing-game hits, SPG draws, content heatmap.

Per (image, class): heatmap -> bilinear resize to the ORIGINAL image size -> skipped and counted
(``zero_heatmap``) if its sum is <= 0 -> PG (argmax), SPG (``spg_samples`` inverse-CDF draws,
seeded per image from (seed, the image's identity), see :func:`spg_uniforms`), hit tests by
:func:`gridcam.metrics.hit_points`; CH (mass inside the mask). The SPG random numbers depend only
on (seed, image key: file name / COCO image id), so they depend neither on batching, ranks or
resumption nor on the other files of the folder or ``--limit``. Classification counts (top-1/top-5
or multi-label P/R/F1) come from the same forward. Every scored or skipped pair and every image
yields a per-image record (:mod:`gridcam.evaluation.records`); the data layer's problems (reason codes,
:mod:`gridcam.problems`) are reported here, in the main process, and tallied in the totals.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from gridcam import metrics as M
from gridcam import problems as P
from gridcam.data.identity import key_seed
from gridcam.evaluation.totals import Evaluation

__all__ = ["Scoring", "score_group", "spg_uniforms", "unreadable"]

#: Largest number of heatmap pixels (pairs x H x W) upsampled and scored at once; bounds memory
#: (float32 + float64 copies, ~15 bytes/pixel) independently of the batch size and of T.
_MAX_PIXELS = 8_000_000
#: The same on CPU, where smaller chunks stay in cache: scoring 500x375 pairs took 0.92 ms/image
#: in chunks of ~5 pairs (1 M pixels) vs 1.3 in chunks of 16 and 1.23 one pair at a time.
_CPU_SCORE_PIXELS = 1_000_000


@dataclass(frozen=True)
class Scoring:
    """What the scoring of every batch needs besides the heatmaps."""

    metrics: tuple[str, ...]
    tolerance: float
    samples: int
    seed: int


def spg_uniforms(seed: int, key: str, classes: int, samples: int) -> torch.Tensor:
    """(classes, samples) float64 uniforms of the image named ``key`` (row t for its t-th target
    class), from a generator seeded with :func:`gridcam.data.key_seed` ``(seed, key)``.

    ``key`` is the image's identity (:func:`gridcam.data.image_key`: the file name for ImageNet,
    the image id for COCO), so an image's draws do not depend on its position in the dataset.
    Every method uses the same numbers (common random numbers make method comparisons less noisy).
    """
    g = torch.Generator().manual_seed(key_seed(seed, str(key)))
    return torch.rand((classes, samples), generator=g, dtype=torch.float64)


def _problem_fields(p: P.Problem) -> dict[str, Any]:
    """The fields a skip record gives its problem: ``skipped`` (code), ``reason`` (the cause in
    words), ``file`` (the file at fault: the image or its annotation) and ``where`` if any."""
    rec: dict[str, Any] = {"skipped": p.code, "reason": p.cause, "file": p.file}
    if p.where:
        rec["where"] = p.where
    return rec


def unreadable(item: Mapping[str, Any], ev: Evaluation) -> dict[str, Any]:
    """Report and count an image the dataset could not give (an ``"unreadable"`` item carrying its
    ``"problem"``); return its ``done`` record."""
    p: P.Problem = item["problem"]
    P.report(p)
    ev.skip_image(p)
    return {"image": str(item["path"]), "index": int(item["index"]), "done": True,
            **_problem_fields(p)}


def score_group(items: list[dict[str, Any]], targets: torch.Tensor, counts: list[int],
                explained: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                ev: Evaluation, device: torch.device, sc: Scoring,
                extras: Mapping[str, Mapping[tuple[int, int], Mapping[str, Any]]] | None = None,
                ) -> list[dict[str, Any]]:
    """Score one group of images (one forward) into ``ev``; return its per-image records.

    ``targets`` (B,T) long, ``counts`` each image's real T, ``explained`` ``{method: (heat
    (B,T,h',w'), logits (B,C))}`` (:func:`gridcam.evaluation.forward.forward_group`). Classification
    uses the first method's logits (every method sees the same images). ``extras``: ``{method:
    {(b, t): fields}}`` of the beyond-localisation metrics
    (:func:`gridcam.evaluation.beyond.group_extras`), added to the records of the pairs scored.
    """
    uniforms = ([spg_uniforms(sc.seed, str(it["key"]), c, sc.samples)
                 for it, c in zip(items, counts)] if "spg" in sc.metrics else None)
    # Images of equal ORIGINAL size are upsampled and scored together.
    by_size: dict[tuple[int, int], list[int]] = OrderedDict()
    for b, it in enumerate(items):
        if counts[b]:
            by_size.setdefault((int(it["size"][0]), int(it["size"][1])), []).append(b)
    records: list[dict[str, Any]] = []
    for method, (heat, _logits) in explained.items():
        heat = heat.float()
        for (H, W), members in by_size.items():
            pairs = [(b, t) for b in members for t in range(counts[b])]
            records += _score_pairs(items, pairs, (H, W), heat, targets, uniforms, method, ev,
                                    device, sc, (extras or {}).get(method))
    logits0 = next(iter(explained.values()))[1]
    records += _classify(items, logits0, ev)
    return records


def _score_pairs(items: list[dict[str, Any]], pairs: list[tuple[int, int]], size: tuple[int, int],
                 heat: torch.Tensor, targets: torch.Tensor, uniforms: list[torch.Tensor] | None,
                 method: str, ev: Evaluation, device: torch.device, sc: Scoring,
                 extra: Mapping[tuple[int, int], Mapping[str, Any]] | None = None,
                 ) -> list[dict[str, Any]]:
    """Score the (image b, target t) ``pairs`` of one original ``size`` (H, W), in chunks of
    bounded pixels: upsample heat[b, t] (h',w') -> (H, W), score against ``masks[t]``; the valid
    pairs' ``extra`` fields are folded into ``ev`` and written with their records."""
    from gridcam import cam

    H, W = size
    counts_m = ev.loc[method]
    records: list[dict[str, Any]] = []
    step = max(1, (_CPU_SCORE_PIXELS if heat.device.type == "cpu" else _MAX_PIXELS) // (H * W))
    for k in range(0, len(pairs), step):
        chunk = pairs[k:k + step]
        bi = torch.tensor([b for b, _ in chunk], device=heat.device)
        ti = torch.tensor([t for _, t in chunk], device=heat.device)
        big = cam.upsample(heat[bi, ti], (H, W))  # (P,H,W)
        masks = torch.stack([items[b]["masks"][t] for b, t in chunk]).to(device)
        u = (torch.stack([uniforms[b][t] for b, t in chunk]).to(device)
             if uniforms is not None else None)
        s = M.score_pairs(big, masks, uniforms=u, metrics=sc.metrics, tolerance=sc.tolerance)
        classes = targets[bi, ti]
        valid = s.valid
        counts_m.update(
            classes[valid],
            s.pg_hit[valid] if s.pg_hit is not None else None,
            s.spg_hits[valid] if s.spg_hits is not None else None,
            s.ch[valid] if s.ch is not None else None)
        n_bad = int((~valid).sum())
        if n_bad:
            counts_m.skip("zero_heatmap", n_bad)
        chunk_records = _pair_records(items, chunk, classes, method, s, sc.samples)
        if extra:
            for (b, t), rec in zip(chunk, chunk_records):
                if "skipped" not in rec:
                    rec.update(extra[(b, t)])
                    ev.add_beyond(method, rec)
        records.extend(chunk_records)
    return records


def _classify(items: list[dict[str, Any]], logits: torch.Tensor,
              ev: Evaluation) -> list[dict[str, Any]]:
    """Classification counts of the group's images, the pairs the data layer left out, and each
    image's ``"done"`` record (with what resumption needs to redo the classification counts)."""
    B = len(items)
    if isinstance(ev.cls, M.MultiLabelCounts):
        labels = torch.stack([torch.as_tensor(it["label"], dtype=torch.float32) for it in items])
        pred = ev.cls.update(logits, labels)
        cls_recs = [{"pred": torch.nonzero(pred[b]).flatten().tolist(),
                     "labels": _label_list(items[b]["label"])} for b in range(B)]
    else:
        # An image whose label is unknown (-1: its wnid is not a class) has no top-k score.
        labels = torch.tensor([int(it["label"]) for it in items], dtype=torch.long)
        known = (labels >= 0).nonzero().flatten()
        ok = ev.cls.update(logits[known.to(logits.device)], labels[known])
        cls_recs = [{"label": int(labels[b])} for b in range(B)]
        for j, b in enumerate(known.tolist()):
            cls_recs[b]["topk"] = ok[j].tolist()
    records: list[dict[str, Any]] = []
    for b, it in enumerate(items):
        for cls_, p in it.get("skipped", []) or []:
            if p.code != "all_difficult":  # the paper's rule: counted, not told
                P.report(p)
            ev.skip_pairs(p)
            records.append({"image": str(it["path"]), "index": int(it["index"]),
                            "class": cls_ if cls_ is None or isinstance(cls_, str) else int(cls_),
                            **_problem_fields(p)})
        found = list(it.get("problems", []) or [])
        for p in found:  # repaired or worked around (exif_rotated, bad_segmentation, ...)
            P.report(p)
            ev.note_problem(p)
        ev.images += 1
        done = {"image": str(it["path"]), "index": int(it["index"]), "done": True, **cls_recs[b]}
        if found:
            done["problems"] = [p.record() for p in found]
        records.append(done)
    return records


def _label_list(label: Any) -> list[int]:
    t = torch.as_tensor(label)
    return torch.nonzero(t > 0.5).flatten().tolist()


def _pair_records(items: list[dict[str, Any]], chunk: list[tuple[int, int]], classes: torch.Tensor,
                  method: str, s: M.PairScores, samples: int) -> list[dict[str, Any]]:
    valid = s.valid.tolist()
    cls = classes.tolist()
    point = s.point.tolist() if s.point is not None else None
    pg = s.pg_hit.tolist() if s.pg_hit is not None else None
    spg = s.spg_hits.tolist() if s.spg_hits is not None else None
    ch = s.ch.tolist() if s.ch is not None else None
    out = []
    for j, (b, _t) in enumerate(chunk):
        rec: dict[str, Any] = {"image": str(items[b]["path"]), "index": int(items[b]["index"]),
                               "class": int(cls[j]), "method": method}
        if not valid[j]:
            rec["skipped"] = "zero_heatmap"
        else:
            if pg is not None:
                rec["pg_hit"] = bool(pg[j])
                rec["point"] = point[j]
            if spg is not None:
                rec["spg"] = spg[j] / samples
            if ch is not None:
                rec["ch"] = ch[j]
        out.append(rec)
    return out
