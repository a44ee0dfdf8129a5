"""COCO through pycocotools: multi-hot classification and per-category localisation masks.

Layout: ``root/<split>/<file_name>`` and ``root/annotations/instances_<split>.json`` (``split`` as
``train2014``, ``val2014``, ``val2017``, ...). Classes are the file's categories in sorted id
order (80 for COCO, whose ids run 1..90 with gaps). Every annotation counts, crowd (``iscrowd=1``,
RLE) ones included, as in the paper's loader and TorchRay's COCO masks. Images without any
annotation are skipped (as the paper does) and counted in ``.skipped_no_annotations``.

Bad annotations are skipped one by one, never the whole file or pair (reason codes in
:mod:`gridcam.problems`, each naming the file and ``annotation ID``): no integer
image_id/category_id (``bad_annotation``), a category or image not in the file
(``unknown_category``, ``unknown_image``), a segmentation that cannot be decoded
(``bad_segmentation``: its ``bbox`` is used instead when it has a usable one). The JSON is read
with :mod:`json` and indexed by pycocotools' ``COCO.createIndex`` (identical indexes). Without a
``split``, a missing ``instances_val2014.json`` falls back to the only ``instances_*.json`` there
is; otherwise the error lists those that exist (:func:`find_annotation_file`).
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
from gridcam.problems import Problem, report

from .io import BadImage, load_annotated, load_transformed

#: the split each dataset class reads when none is given
DEFAULT_SPLITS = {"train": "train2014", "val": "val2014"}


def annotation_path(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}.json"


def find_annotation_file(root: str | os.PathLike, split: str | None,
                         default: str = "val2014") -> tuple[Path, str]:
    """``(annotation file, split)`` for ``split`` (None = ``default``, chosen by nobody).

    When ``instances_<split>.json`` is missing: if no split was given and ``annotations/`` holds
    exactly one ``instances_*.json``, that one is used (a note says so); otherwise the
    GridcamError lists the ``instances_*.json`` that exist and the ``--split`` that would use them.
    """
    wanted = split or default
    path = annotation_path(root, wanted)
    if path.is_file():
        return path, wanted
    folder = Path(root) / "annotations"
    present = sorted(folder.glob("instances_*.json")) if folder.is_dir() else []
    splits = [p.name[len("instances_"):-len(".json")] for p in present]
    if split is None and len(splits) == 1:
        from gridcam.problems import note

        note(f"{path.name} not found; using the only annotation file, {present[0]} "
             f"(--split {splits[0]})")
        return present[0], splits[0]
    if not splits:
        hint = f"{folder} holds no instances_*.json (COCO layout: ROOT/annotations/instances_<split>.json)"
    else:
        hint = (f"{folder} holds " + ", ".join(p.name for p in present) + "; use "
                + " or ".join(f"--split {s}" for s in splits))
    raise GridcamError(f"{path}: COCO annotation file not found; {hint}")


def _read_json(ann_file: Path) -> dict:
    try:
        with open(ann_file, "rb") as f:
            d = json.load(f)
    except json.JSONDecodeError as exc:
        raise GridcamError(f"{ann_file}: line {exc.lineno}, column {exc.colno}: not valid JSON "
                           f"({exc.msg}); not a COCO instances file") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise GridcamError(f"{ann_file}: cannot read it as JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(d, dict):
        raise GridcamError(f"{ann_file}: not a COCO instances file (the top level is not an object)")
    for key in ("images", "categories"):
        if not isinstance(d.get(key), list):
            raise GridcamError(f"{ann_file}: {key}: missing or not a list; not a COCO instances file")
    for k, img in enumerate(d["images"]):
        if not (isinstance(img, dict) and all(isinstance(img.get(f), int) for f in ("id", "height", "width"))
                and isinstance(img.get("file_name"), str)):
            raise GridcamError(f"{ann_file}: images[{k}]: needs an integer id, height, width and a "
                               f"file_name")
    for k, cat in enumerate(d["categories"]):
        if not (isinstance(cat, dict) and isinstance(cat.get("id"), int)):
            raise GridcamError(f"{ann_file}: categories[{k}]: needs an integer id")
    return d


def _screen_annotations(d: dict, ann_file: Path) -> list[Problem]:
    """Drop (in place) the annotations that cannot be indexed or used; return their problems:
    ``bad_annotation`` (not an object, no integer image_id/category_id), ``unknown_image``,
    ``unknown_category``."""
    anns = d.get("annotations", [])
    if not isinstance(anns, list):
        raise GridcamError(f"{ann_file}: annotations: not a list")
    images = {img["id"] for img in d["images"]}
    cats = {c["id"] for c in d["categories"]}
    kept, problems = [], []
    for k, a in enumerate(anns):
        where = (f"annotation {a['id']}" if isinstance(a, dict) and isinstance(a.get("id"), int)
                 else f"annotations[{k}]")
        if not isinstance(a, dict) or not all(isinstance(a.get(f), int) for f in ("image_id", "category_id")):
            problems.append(Problem("bad_annotation", str(ann_file), "needs an integer image_id and "
                                    "category_id; annotation skipped", where))
        elif a["category_id"] not in cats:
            problems.append(Problem("unknown_category", str(ann_file), f"category_id "
                                    f"{a['category_id']} is not among the file's categories; "
                                    "annotation skipped", where))
        elif a["image_id"] not in images:
            problems.append(Problem("unknown_image", str(ann_file), f"image_id {a['image_id']} is "
                                    "not among the file's images; annotation skipped", where))
        else:
            if not isinstance(a.get("id"), int):
                a["id"] = -1 - k  # pycocotools indexes by id; keep it unique
            kept.append(a)
    d["annotations"] = kept
    return problems


def load_coco(ann_file: str | os.PathLike, problems: list[Problem] | None = None):
    """``pycocotools.coco.COCO`` for ``ann_file``, quietly; GridcamError naming the file (and the
    JSON key or line) when it is not a COCO instances file. Annotations that cannot be used are
    left out and their problems appended to ``problems`` (see :func:`_screen_annotations`)."""
    from pycocotools.coco import COCO

    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise GridcamError(f"{ann_file}: COCO annotation file not found")
    d = _read_json(ann_file)
    found = _screen_annotations(d, ann_file)
    if problems is not None:
        problems.extend(found)
    coco = COCO()
    coco.dataset = d
    with contextlib.redirect_stdout(_io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def _finite(values, n: int | None = None) -> bool:
    return (isinstance(values, list) and (n is None or len(values) == n)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                    for v in values))


def segmentation_rle(seg, h: int, w: int) -> dict:
    """The RLE of a COCO ``segmentation`` (polygons, uncompressed or compressed RLE) on an
    (h, w) image; ValueError with the cause for one that cannot be decoded."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        if not seg:
            raise ValueError("empty segmentation list")
        for k, poly in enumerate(seg):
            if not _finite(poly) or len(poly) < 6 or len(poly) % 2:
                n = len(poly) if isinstance(poly, list) else type(poly).__name__
                raise ValueError(f"polygon {k} is not an even number >= 6 of coordinates ({n})")
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    if isinstance(seg, dict) and "counts" in seg:
        if list(seg.get("size", [])) != [h, w]:
            raise ValueError(f"RLE size {seg.get('size')} differs from the image's [{h}, {w}]")
        counts = seg["counts"]
        if isinstance(counts, list):
            if not (_finite(counts) and all(c >= 0 for c in counts) and sum(counts) == h * w):
                raise ValueError(f"RLE counts do not add up to {h}x{w} pixels")
            return mask_utils.frPyObjects(seg, h, w)
        if isinstance(counts, (str, bytes)):
            return {"size": [h, w], "counts": counts}
        raise ValueError(f"RLE counts is a {type(counts).__name__}")
    raise ValueError(f"segmentation is a {type(seg).__name__}, neither polygons nor RLE")


def bbox_rle(bbox, h: int, w: int) -> dict:
    """RLE of a COCO ``bbox`` ``[x, y, width, height]``; ValueError when it is unusable."""
    from pycocotools import mask as mask_utils

    if not _finite(bbox, 4) or bbox[2] <= 0 or bbox[3] <= 0:
        raise ValueError("no usable bbox")
    return mask_utils.frPyObjects(np.asarray([bbox], dtype=np.float64), h, w)[0]


class _CocoBase(torch.utils.data.Dataset):
    """Shared index: sorted categories, kept image ids, per-image present classes (CSR arrays)."""

    def __init__(self, root, split, transform, annotation_file=None, coco=None, default="val2014"):
        self.root = Path(root)
        self.transform = transform
        if annotation_file:
            self.annotation_file, self.split = Path(annotation_file), split or default
        else:
            self.annotation_file, self.split = find_annotation_file(root, split, default)
        self.image_dir = self.root / self.split
        #: problems found in the annotation file (reported once, at construction)
        self.problems: list[Problem] = []
        self.coco = coco if coco is not None else load_coco(self.annotation_file, self.problems)
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
        for p in self.problems:
            report(p)
        if self.skipped_no_annotations:
            report(Problem("no_annotations", str(self.annotation_file),
                           f"{self.skipped_no_annotations} of {len(all_ids)} images have no "
                           "annotations and are skipped"), count=self.skipped_no_annotations)
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

    def image_path(self, index: int) -> str:
        """The image file of item ``index`` (same as :meth:`path`)."""
        return self.path(index)

    def image_key(self, index: int) -> str:
        """The image's identity for seeding: its COCO image id (see :func:`gridcam.data.image_key`)."""
        return str(self.ids[index])

    def presence_matrix(self) -> np.ndarray:
        """(N, C) bool: image ``i`` contains class ``c``."""
        m = np.zeros((len(self.ids), len(self.categories)), dtype=bool)
        rows = np.repeat(np.arange(len(self.ids)), np.diff(self._cls_ptr))
        m[rows, self._cls_idx] = True
        return m

    def __getitem__(self, index: int):
        out = self.load(index)
        if isinstance(out, Problem):
            report(out)
            return None
        if isinstance(out, dict):
            for p in [*out["problems"], *(p for _, p in out["skipped"])]:
                report(p)
        return out


class CocoDataset(_CocoBase):
    """COCO multi-label classification: ``ds[i] -> (image, multi_hot float (C,))`` or ``None``
    (the problem reported); ``ds.load(i)`` returns the Problem instead of ``None``.

    ``.categories`` sorted category ids, ``.num_classes``, ``.class_names``, ``.ids`` the kept image
    ids, ``.skipped_no_annotations``; ``present(i)`` the class indices in image ``i``. ``split=None``
    reads ``train2014``, or the only ``instances_*.json`` there is (see :func:`find_annotation_file`).
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None,
                 transform: Callable | None = None, annotation_file: str | os.PathLike | None = None):
        super().__init__(root, split, transform, annotation_file, default=DEFAULT_SPLITS["train"])

    def load(self, index: int) -> tuple | Problem:
        try:
            image, _ = load_transformed(self.path(index), self.transform)
        except BadImage as exc:
            return exc.problem
        return image, self.multi_hot(index)


class CocoLoc(_CocoBase):
    """COCO val for localisation metrics: ``ds[i] -> LocItem | None`` (see ``ImageNetValLoc``).

    ``classes`` (T,) long: every category with a usable mask; ``masks`` (T,H,W) bool: per category
    the union of its instances' masks (polygons and RLE) at the original size; ``key`` the image id;
    ``label`` multi-hot (C,) float (every category present); ``skipped`` lists ``(class,
    Problem)`` for a category with no decodable instance or an empty mask; ``problems`` the
    image's other problems: one ``bad_segmentation`` per annotation whose segmentation cannot be
    decoded (its ``bbox`` is used when it has a usable one, else the annotation alone is left out;
    the category is scored from the rest), ``exif_rotated``, ``size_mismatch``. ``.sizes`` (H, W)
    from the JSON. ``split=None`` reads ``val2014``, or the only ``instances_*.json`` there is.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None,
                 transform: Callable | None = None, annotation_file: str | os.PathLike | None = None,
                 masks: bool = True):
        super().__init__(root, split, transform, annotation_file, default=DEFAULT_SPLITS["val"])
        self.with_masks = masks
        self.sizes: list[tuple[int, int]] = [
            (int(self.coco.imgs[i]["height"]), int(self.coco.imgs[i]["width"])) for i in self.ids]

    def _instance_rle(self, ann: dict, h: int, w: int) -> tuple[dict | None, Problem | None]:
        """One annotation's RLE: its segmentation, else its bbox (with a problem), else None."""
        try:
            return segmentation_rle(ann.get("segmentation"), h, w), None
        except Exception as exc:  # ValueError, TypeError, IndexError; pycocotools raises plain Exception
            cause = f"cannot decode the segmentation ({exc})"
        where = f"annotation {ann['id']}"
        try:
            rle = bbox_rle(ann.get("bbox"), h, w)
        except ValueError:
            return None, Problem("bad_segmentation", str(self.annotation_file),
                                 f"{cause} and it has no usable bbox: annotation skipped", where)
        return rle, Problem("bad_segmentation", str(self.annotation_file),
                            f"{cause}: its bbox is used instead", where)

    def class_masks(self, index: int) -> tuple[list[int], list[torch.Tensor], list[tuple], list[Problem]]:
        """Per present class: the union of its instance masks at the JSON's (H, W); also the
        skipped ``(class, Problem)`` and the per-annotation problems."""
        from pycocotools import mask as mask_utils

        img_id = self.ids[index]
        h, w = self.sizes[index]
        by_class: dict[int, list] = {}
        for ann in self.coco.imgToAnns[img_id]:
            k = self.cat_to_idx.get(ann["category_id"])
            if k is not None:
                by_class.setdefault(k, []).append(ann)
        classes, masks, skipped, problems = [], [], [], []
        for k in sorted(by_class):
            rles = []
            for ann in by_class[k]:
                rle, problem = self._instance_rle(ann, h, w)
                if problem is not None:
                    problems.append(problem)
                if rle is not None:
                    rles.append(rle)
            name = self.class_names[k]
            if not rles:
                skipped.append((k, Problem("bad_segmentation", str(self.annotation_file),
                                           f"cannot decode the segmentation of any {name!r} "
                                           f"instance of image {img_id}: pair skipped")))
                continue
            m = mask_utils.decode(mask_utils.merge(rles, intersect=0)).astype(bool)
            if not m.any():
                skipped.append((k, Problem("empty_mask", str(self.annotation_file),
                                           f"empty mask: the {name!r} instances of image {img_id} "
                                           "cover no pixel")))
            else:
                classes.append(k)
                masks.append(torch.from_numpy(m))
        return classes, masks, skipped, problems

    def load(self, index: int) -> dict | Problem:
        """The LocItem of image ``index`` or the Problem of an unreadable image (never reports)."""
        h, w = self.sizes[index]
        try:
            image, size, note = load_annotated(self.path(index), self.transform, (h, w))
        except BadImage as exc:
            return exc.problem
        problems = [note] if note is not None else []
        if self.with_masks:
            classes, masks, skipped, ann_problems = self.class_masks(index)
            problems = ann_problems + problems
            mask_t = (torch.stack(masks) if masks else torch.zeros(0, h, w, dtype=torch.bool))
            if tuple(size) != (h, w):
                fixed = torch.zeros(mask_t.shape[0], size[0], size[1], dtype=torch.bool)
                hh, ww = min(h, size[0]), min(w, size[1])
                fixed[:, :hh, :ww] = mask_t[:, :hh, :ww]
                mask_t = fixed
        else:
            classes, skipped, mask_t = self.present(index).tolist(), [], None
        return {
            "image": image, "size": tuple(size), "path": self.path(index), "index": index,
            "key": self.image_key(index), "classes": torch.tensor(classes, dtype=torch.long),
            "masks": mask_t, "label": self.multi_hot(index), "skipped": skipped,
            "problems": problems,
        }


__all__ = ["CocoDataset", "CocoLoc", "load_coco", "annotation_path", "find_annotation_file",
           "segmentation_rle", "bbox_rle"]
