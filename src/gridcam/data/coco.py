"""COCO through pycocotools: multi-hot classification and per-category localisation masks.

Layout: ``root/<split>/<file_name>`` and ``root/annotations/instances_<split>.json`` (``split`` as
``train2014``, ``val2014``, ``val2017``, ...). Classes are the file's categories in sorted id
order (80 for COCO, whose ids run 1..90 with gaps). Every annotation counts, crowd (``iscrowd=1``,
RLE) ones included, as in the paper's loader and TorchRay's COCO masks. Images without any
annotation are skipped (as the paper does) and counted in ``.skipped_no_annotations``.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gridcam.errors import GridcamError

from .io import BadImage, load_transformed, warn


def annotation_path(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def load_coco(ann_file: str | os.PathLike):
    """``pycocotools.coco.COCO`` for ``ann_file``, quietly; GridcamError naming the file on failure."""
    from pycocotools.coco import COCO

    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise GridcamError(f"{ann_file}: COCO annotation file not found")
    try:
        with contextlib.redirect_stdout(_io.StringIO()):  # pycocotools prints progress
            return COCO(str(ann_file))
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise GridcamError(f"{ann_file}: not a COCO instances file ({type(exc).__name__}: {exc})") from None


class _CocoBase(torch.utils.data.Dataset):
    """Shared index: sorted categories, kept image ids, per-image present classes (CSR arrays)."""

    def __init__(self, root, split, transform, annotation_file=None, coco=None):
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.annotation_file = Path(annotation_file) if annotation_file else annotation_path(root, split)
        self.image_dir = self.root / split
        self.coco = coco if coco is not None else load_coco(self.annotation_file)
        self.categories: list[int] = sorted(int(c) for c in self.coco.cats)
        if not self.categories:
            raise GridcamError(f"{self.annotation_file}: no categories")
        self.cat_to_idx = {c: i for i, c in enumerate(self.categories)}
        self.class_names = [self.coco.cats[c].get("name", str(c)) for c in self.categories]

        # one pass over the annotations: (image, class) pairs -> CSR of present classes per kept image
        anns = self.coco.dataset.get("annotations", [])
        all_ids = np.array(sorted(int(i) for i in self.coco.imgs), dtype=np.int64)
        a_img = np.fromiter((a["image_id"] for a in anns), dtype=np.int64, count=len(anns))
        a_cat = np.fromiter((self.cat_to_idx.get(a["category_id"], -1) for a in anns),
                            dtype=np.int64, count=len(anns))
        keep = (a_cat >= 0) & np.isin(a_img, all_ids)
        pairs = np.unique(a_img[keep] * len(self.categories) + a_cat[keep])
        p_img, p_cls = pairs // len(self.categories), pairs % len(self.categories)
        self.ids: list[int] = np.unique(p_img).tolist()  # sorted image ids with >= 1 annotation
        ids_arr = np.asarray(self.ids, dtype=np.int64)
        pos = np.searchsorted(ids_arr, p_img)
        self._cls_ptr = np.concatenate([[0], np.cumsum(np.bincount(pos, minlength=len(self.ids)))])
        self._cls_idx = p_cls.astype(np.int64)  # sorted by image, then class (pairs were sorted)
        self.skipped_no_annotations = int(len(all_ids) - len(self.ids))
        if self.skipped_no_annotations:
            warn(f"{self.annotation_file}: {self.skipped_no_annotations} of {len(all_ids)} images "
                 f"have no annotations and are skipped")
        if not self.ids:
            raise GridcamError(f"{self.annotation_file}: no image has an annotation")

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def __len__(self) -> int:
        return len(self.ids)

    def present(self, index: int) -> np.ndarray:
        """Class indices (sorted, int64) present in image ``index``."""
        return self._cls_idx[self._cls_ptr[index]:self._cls_ptr[index + 1]]

    def multi_hot(self, index: int) -> torch.Tensor:
        y = torch.zeros(len(self.categories), dtype=torch.float32)
        y[torch.from_numpy(self.present(index))] = 1.0
        return y

    def path(self, index: int) -> str:
        return str(self.image_dir / self.coco.imgs[self.ids[index]]["file_name"])

    def presence_matrix(self) -> np.ndarray:
        """(N, C) bool: image ``i`` contains class ``c``."""
        m = np.zeros((len(self.ids), len(self.categories)), dtype=bool)
        rows = np.repeat(np.arange(len(self.ids)), np.diff(self._cls_ptr))
        m[rows, self._cls_idx] = True
        return m

    def _load(self, index: int):
        try:
            return load_transformed(self.path(index), self.transform)
        except BadImage as exc:
            warn(f"skipping unreadable image {exc.path}: {exc.reason}")
            return None


class CocoDataset(_CocoBase):
    """COCO multi-label classification: ``ds[i] -> (image, multi_hot float (C,))`` or ``None``.

    ``.categories`` sorted category ids, ``.num_classes``, ``.class_names``, ``.ids`` the kept image
    ids, ``.skipped_no_annotations``; ``present(i)`` the class indices in image ``i``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train2014",
                 transform: Callable | None = None, annotation_file: str | os.PathLike | None = None):
        super().__init__(root, split, transform, annotation_file)

    def __getitem__(self, index: int):
        out = self._load(index)
        if out is None:
            return None
        return out[0], self.multi_hot(index)


class CocoLoc(_CocoBase):
    """COCO val for localisation metrics: ``ds[i] -> LocItem | None`` (see ``ImageNetValLoc``).

    ``classes`` (T,) long: every category present; ``masks`` (T,H,W) bool: per category the union
    of its instances' ``annToMask`` (polygons and RLE) at the original size; ``label`` multi-hot
    (C,) float; ``skipped`` lists ``(class, reason)`` for a category whose mask is empty or whose
    segmentation cannot be decoded. ``.sizes`` (H, W) from the JSON.
    """

    def __init__(self, root: str | os.PathLike, split: str = "val2014",
                 transform: Callable | None = None, annotation_file: str | os.PathLike | None = None,
                 masks: bool = True):
        super().__init__(root, split, transform, annotation_file)
        self.with_masks = masks
        self.sizes: list[tuple[int, int]] = [
            (int(self.coco.imgs[i]["height"]), int(self.coco.imgs[i]["width"])) for i in self.ids]

    def class_masks(self, index: int) -> tuple[list[int], list[torch.Tensor], list[tuple]]:
        """Per present class: the union of its instance masks at the JSON's (H, W)."""
        from pycocotools import mask as mask_utils

        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        h, w = int(info["height"]), int(info["width"])
        by_class: dict[int, list] = {}
        for ann in self.coco.imgToAnns[img_id]:
            k = self.cat_to_idx.get(ann["category_id"])
            if k is not None:
                by_class.setdefault(k, []).append(ann)
        classes, masks, skipped = [], [], []
        for k in sorted(by_class):
            try:
                rles = [self.coco.annToRLE(a) for a in by_class[k]]
                m = mask_utils.decode(mask_utils.merge(rles, intersect=0)).astype(bool)
            except Exception as exc:  # malformed segmentation (e.g. an empty polygon)
                skipped.append((k, f"cannot decode the segmentation of image {img_id}: {exc}"))
                continue
            if m.shape != (h, w):
                skipped.append((k, f"segmentation size {m.shape} != image size {(h, w)}"))
            elif not m.any():
                skipped.append((k, "empty mask"))
            else:
                classes.append(k)
                masks.append(torch.from_numpy(m))
        return classes, masks, skipped

    def __getitem__(self, index: int):
        out = self._load(index)
        if out is None:
            return None
        image, size = out
        h, w = self.sizes[index]
        if tuple(size) != (h, w):
            warn(f"{self.path(index)}: decoded size {tuple(size)} differs from the annotated {(h, w)}; "
                 f"masks are cropped/padded to the decoded image")
        classes, masks, skipped = self.class_masks(index) if self.with_masks else (
            self.present(index).tolist(), [], [])
        if self.with_masks:
            mask_t = (torch.stack(masks) if masks else torch.zeros(0, h, w, dtype=torch.bool))
            if tuple(size) != (h, w):
                fixed = torch.zeros(mask_t.shape[0], size[0], size[1], dtype=torch.bool)
                hh, ww = min(h, size[0]), min(w, size[1])
                fixed[:, :hh, :ww] = mask_t[:, :hh, :ww]
                mask_t = fixed
        else:
            mask_t = None
        return {
            "image": image, "size": tuple(size), "path": self.path(index), "index": index,
            "classes": torch.tensor(classes, dtype=torch.long), "masks": mask_t,
            "label": self.multi_hot(index), "skipped": skipped,
        }


__all__ = ["CocoDataset", "CocoLoc", "load_coco", "annotation_path"]
