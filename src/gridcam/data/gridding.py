"""The paper's loader-side gridding input (``--negatives dataset``): each item carries its 3 negatives.

For a sample of class ``c`` the loader decodes three more images that do not contain ``c``:

- single-label (ImageFolder), as the paper's ``folder_composite.py``: three negative *classes*
  drawn uniformly, with replacement, among the other classes, then one image of each uniformly;
- multi-label (CocoDataset), as the paper's ``coco_dataset_gcam.py``: ``cam_class`` is a category
  drawn uniformly among those present (only ones that have negatives), then three distinct images
  from that category's negatives list (with replacement only if fewer than three exist).

All four images go through the base dataset's transform independently (each its own random crop).
Random choices use torch's RNG (DataLoader worker seeding makes them reproducible). This costs four
decodes per sample; in-batch negatives (``--negatives batch``, ``gridcam.grid.sample_negatives``)
cost none — ``benchmarks/data.py`` measures the difference.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from gridcam.errors import GridcamError
from gridcam.problems import Problem, report

from .collate import _stack_targets, load_item
from .io import warn
from .negatives import load_negatives


def _randint(high: int) -> int:
    return int(torch.randint(high, (1,)).item())


class GridDataset(torch.utils.data.Dataset):
    """Wrap an ``ImageFolder`` or ``CocoDataset``: ``ds[i] -> (imgs (4,3,h,w), target, cam_class,
    quadrant) | None``.

    ``imgs[0]`` is the sample, ``imgs[1:]`` its negatives (in the order ``grid.compose`` fills the
    other cells); ``target`` is the base target (int, or multi-hot (C,) float); ``cam_class`` the
    class index the heatmaps are for; ``quadrant`` in {0,1,2,3} where the sample goes.
    ``None`` if the sample is unreadable, no negative could be read after ``retries`` redraws, or
    (multi-label) no present category has negatives.

    ``negatives_index`` (multi-label only): ``None`` (built in memory from the annotations, one
    pass), a dict ``{category id: [image id]}`` or the path of a JSON index written by
    ``gridcam coco-negatives``. Image ids not in the dataset (e.g. unannotated ones) are ignored.
    """

    def __init__(self, base, negatives_index: dict | str | os.PathLike | None = None, retries: int = 3):
        self.base = base
        self.retries = retries
        self.multi_label = hasattr(base, "present")
        if self.multi_label:
            self._neg = self._coco_negatives(base, negatives_index)
        else:
            if negatives_index is not None:
                raise GridcamError("negatives_index applies to multi-label (COCO) data only")
            targets = np.asarray(base.targets, dtype=np.int64)
            order = np.argsort(targets, kind="stable")
            ncls = int(max(targets.max() + 1, len(getattr(base, "classes", []))))
            bounds = np.searchsorted(targets[order], np.arange(ncls + 1))
            self._by_class = [order[bounds[c]:bounds[c + 1]] for c in range(ncls)]
            self._nonempty = np.array([c for c in range(ncls) if bounds[c + 1] > bounds[c]], dtype=np.int64)
            if len(self._nonempty) < 2:
                raise GridcamError("dataset negatives need images of at least 2 classes")

    @staticmethod
    def _coco_negatives(base, index) -> list[np.ndarray]:
        if index is None:
            present = base.presence_matrix()
            return [np.flatnonzero(~present[:, k]).astype(np.int32) for k in range(present.shape[1])]
        if not isinstance(index, dict):
            index = load_negatives(index)
        ids = np.asarray(base.ids, dtype=np.int64)
        out, missing = [], []
        for cat in base.categories:
            img = np.asarray(index.get(cat, index.get(str(cat), [])), dtype=np.int64)
            if cat not in index and str(cat) not in index:
                missing.append(cat)
            pos = np.searchsorted(ids, img).clip(0, max(len(ids) - 1, 0))
            ok = ids[pos] == img if len(ids) else np.zeros(len(img), bool)
            out.append(np.unique(pos[ok]).astype(np.int32))
        if missing:
            warn(f"negatives index has no entry for categories {missing[:10]}; they get no negatives")
        return out

    def __len__(self) -> int:
        return len(self.base)

    @property
    def num_classes(self) -> int:
        return self.base.num_classes if hasattr(self.base, "num_classes") else len(self.base.classes)

    def _draw_single(self, label: int) -> int:
        """A random image index of a random class other than ``label``."""
        ne = self._nonempty
        pos = int(np.searchsorted(ne, label))
        has = pos < len(ne) and ne[pos] == label
        r = _randint(len(ne) - int(has))
        c = int(ne[r + 1 if has and r >= pos else r])
        imgs = self._by_class[c]
        return int(imgs[_randint(len(imgs))])

    def _draw_multi(self, cam_class: int, k: int) -> list[int]:
        """``k`` image indices without ``cam_class``: distinct when at least ``k`` exist."""
        neg = self._neg[cam_class]
        picks = [_randint(len(neg)) for _ in range(k)]
        if len(neg) >= k:
            while len(set(picks)) < k:  # rare for large lists; redraw the duplicates
                seen: set[int] = set()
                for j, p in enumerate(picks):
                    if p in seen:
                        picks[j] = _randint(len(neg))
                    seen.add(picks[j])
        return [int(neg[p]) for p in picks]

    def __getitem__(self, index: int):
        out = self.load(index)
        if isinstance(out, Problem):
            report(out)
            return None
        return out

    def load(self, index: int):
        """The item, ``None`` (no negatives), or the sample's :class:`~gridcam.problems.Problem`
        (never reports). An unreadable negative is redrawn silently: the file is told when it is
        met as a sample, once per epoch like every other file."""
        item = load_item(self.base, index)
        if isinstance(item, Problem):
            return item
        image, target = item
        if self.multi_label:
            cands = [int(c) for c in self.base.present(index) if len(self._neg[int(c)])]
            if not cands:
                warn(f"{self.base.path(index)}: every category in it is in every other image; "
                     f"no negatives, skipped")
                return None
            cam_class = cands[_randint(len(cands))]
            draw = [lambda: self._draw_multi(cam_class, 1)[0]]
            negs_idx = self._draw_multi(cam_class, 3)
        else:
            cam_class = int(target)
            draw = [lambda: self._draw_single(cam_class)]
            negs_idx = [self._draw_single(cam_class) for _ in range(3)]
        negs = []
        for j in negs_idx:
            got = load_item(self.base, j)
            tries = 0
            while isinstance(got, Problem) and tries < self.retries:
                got = load_item(self.base, draw[0]())
                tries += 1
            if isinstance(got, Problem):
                return None
            negs.append(got[0])
        quadrant = _randint(4)
        shapes = {tuple(t.shape) for t in [image] + negs}
        if len(shapes) != 1:
            raise GridcamError(f"dataset negatives need a transform with a fixed output size "
                               f"(e.g. RandomResizedCrop); got image shapes {sorted(shapes)}")
        return torch.stack([image] + negs), target, cam_class, quadrant


def collate_grid(batch: list):
    """``[GridDataset item | None] -> (imgs (B,4,3,h,w), targets, cam_classes (B,) long,
    quadrants (B,) long, n_skipped)``; targets (B,) long or (B,C) float. All-None: B = 0."""
    kept = [b for b in batch if b is not None and not isinstance(b, Problem)]
    n_skipped = len(batch) - len(kept)
    if not kept:
        return (torch.zeros(0, 4, 3, 0, 0), torch.zeros(0, dtype=torch.long),
                torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), n_skipped)
    imgs = torch.stack([b[0] for b in kept])
    targets = _stack_targets([b[1] for b in kept])
    cam_classes = torch.tensor([int(b[2]) for b in kept], dtype=torch.long)
    quadrants = torch.tensor([int(b[3]) for b in kept], dtype=torch.long)
    return imgs, targets, cam_classes, quadrants, n_skipped


__all__ = ["GridDataset", "collate_grid"]
