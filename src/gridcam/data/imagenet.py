"""ImageNet validation with bounding boxes: flat JPEGs plus PASCAL-VOC XML (or Kaggle's CSV).

Layouts accepted for ``root`` (the first that exists wins):

- ``root/val/*.JPEG`` (the paper's layout) — or ``root`` itself is the folder of JPEGs;
- Kaggle's ``root/ILSVRC/Data/CLS-LOC/val/*.JPEG``.

Boxes for image ``X.JPEG`` are looked up, per image, in ``X.xml`` beside it, then in a sibling
``annotation/`` folder (``.../annotation/X.xml``, as TorchRay's reader), then in Kaggle's
``ILSVRC/Annotations/CLS-LOC/val/X.xml``, then in ``LOC_val_solution.csv`` (in the dataset root or
next to the val folder). ``annotations=`` overrides this with one folder of XMLs or one CSV file.

The CSV (Kaggle "ImageNet Object Localization Challenge") has a header ``ImageId,PredictionString``
and one row per image, ``ILSVRC2012_val_00000001,n01751748 111 108 441 193 [wnid x y x y ...]``:
groups of five tokens, ``wnid xmin ymin xmax ymax``, the same integer pixel coordinates as the XML
files they were exported from, so they are read with the same VOC convention (1-based, inclusive).
It has no ``difficult`` flag (every box counts) and no image size (read from the JPEG header).

Class index = position of the wnid in ``classes``: a list of wnids; a file with one wnid per line
(``LOC_synset_mapping.txt``'s "wnid description" lines work); a folder whose sorted sub-folders are
the classes; or ``None`` = the sorted folders of ``ROOT/train`` (else Kaggle's train folder, else
``LOC_synset_mapping.txt`` in the root).
"""

from __future__ import annotations

import csv
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from gridcam.errors import GridcamError

from .folders import LabelledFiles, find_classes, is_image_file
from .io import BadImage, image_size, load_transformed, warn

KAGGLE_VAL = Path("ILSVRC/Data/CLS-LOC/val")
KAGGLE_TRAIN = Path("ILSVRC/Data/CLS-LOC/train")
KAGGLE_ANN = Path("ILSVRC/Annotations/CLS-LOC/val")
CSV_NAME = "LOC_val_solution.csv"
SYNSET_NAME = "LOC_synset_mapping.txt"


@dataclass
class BoxObject:
    """One annotated object: ``name`` (wnid), ``difficult``, VOC box (1-based, inclusive)."""

    name: str
    difficult: bool
    xmin: int
    ymin: int
    xmax: int
    ymax: int


@dataclass
class ValRecord:
    """What is known about one val image without decoding it."""

    path: str
    size: tuple[int, int] | None  # (H, W): from the XML <size>, else the JPEG header
    objects: list[BoxObject] | None  # None when the annotation is missing or unreadable
    source: str | None  # the XML/CSV it came from
    error: str | None = None  # why it cannot be used (missing / malformed annotation)


# ----------------------------------------------------------------------------------- parsing
def _int(text: str | None, what: str) -> int:
    if text is None:
        raise ValueError(f"missing <{what}>")
    return int(round(float(text.strip())))


def parse_voc_xml(path: str | os.PathLike) -> tuple[tuple[int, int] | None, list[BoxObject]]:
    """Parse one PASCAL-VOC/ImageNet annotation: ``((H, W) or None, objects)``.

    Raises ``ValueError``/``ET.ParseError`` for a malformed file.
    """
    root = ET.parse(path).getroot()
    size = None
    s = root.find("size")
    if s is not None and s.find("width") is not None and s.find("height") is not None:
        w, h = _int(s.findtext("width"), "width"), _int(s.findtext("height"), "height")
        if w > 0 and h > 0:
            size = (h, w)
    objects = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"object {name!r} has no <bndbox>")
        diff = (obj.findtext("difficult") or "0").strip()
        objects.append(BoxObject(
            name, diff not in ("0", "", "false", "False"),
            _int(bb.findtext("xmin"), "xmin"), _int(bb.findtext("ymin"), "ymin"),
            _int(bb.findtext("xmax"), "xmax"), _int(bb.findtext("ymax"), "ymax")))
    return size, objects


def parse_loc_csv(path: str | os.PathLike) -> dict[str, list[BoxObject]]:
    """Kaggle ``LOC_val_solution.csv`` -> ``{ImageId: [objects]}`` (see the module docstring)."""
    out: dict[str, list[BoxObject]] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise GridcamError(f"{path}: expected a header 'ImageId,PredictionString', got {header}")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            tokens = row[1].split() if len(row) > 1 else []
            if len(tokens) % 5:
                raise GridcamError(f"{path}:{lineno}: PredictionString is not groups of "
                                   f"'wnid xmin ymin xmax ymax'")
            objs = []
            for k in range(0, len(tokens), 5):
                x0, y0, x1, y1 = (int(round(float(v))) for v in tokens[k + 1:k + 5])
                objs.append(BoxObject(tokens[k], False, x0, y0, x1, y1))
            out[row[0].strip()] = objs
    return out


def load_class_list(classes: Sequence[str] | str | os.PathLike | None,
                    base: str | os.PathLike | None = None) -> list[str]:
    """Resolve the class wnids (see the module docstring for what ``classes`` may be)."""
    if classes is not None and not isinstance(classes, (str, os.PathLike)):
        out = [str(c) for c in classes]
        if not out:
            raise GridcamError("the class list is empty")
        return out
    if classes is None:
        if base is None:
            raise GridcamError("no class list given")
        base = Path(base)
        for cand in (base / "train", base / KAGGLE_TRAIN, base / SYNSET_NAME):
            if cand.exists():
                return load_class_list(cand)
        raise GridcamError(f"{base}: cannot find the classes: no train/ folder or {SYNSET_NAME}; "
                           f"pass --classes FILE (one wnid per line)")
    p = Path(classes)
    if p.is_dir():
        return find_classes(p)
    if not p.is_file():
        raise GridcamError(f"{p}: class list not found")
    out = []
    with open(p) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(line.split()[0].rstrip(","))
    if not out:
        raise GridcamError(f"{p}: the class list is empty")
    return out


# ------------------------------------------------------------------------------- the index
def resolve_val_dir(root: str | os.PathLike) -> tuple[Path, Path]:
    """``(val_dir, dataset_base)`` for the layouts in the module docstring."""
    root = Path(root)
    if not root.is_dir():
        raise GridcamError(f"{root}: not a directory")
    if (root / "val").is_dir():
        return root / "val", root
    if (root / KAGGLE_VAL).is_dir():
        return root / KAGGLE_VAL, root
    return root, root.parent


def _listing(d: Path) -> set[str]:
    try:
        return {e.name for e in os.scandir(d) if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def build_val_index(root: str | os.PathLike, annotations: str | os.PathLike | None = None
                    ) -> tuple[Path, list[ValRecord]]:
    """Find every val JPEG and its boxes (no pixel decoding). Returns ``(val_dir, records)``."""
    val_dir, base = resolve_val_dir(root)
    names = sorted(n for n in _listing(val_dir) if is_image_file(n))
    if not names:
        raise GridcamError(f"{val_dir}: no images found")
    xml_dirs: list[Path] = []
    csv_path: Path | None = None
    if annotations is not None:
        a = Path(annotations)
        if a.is_dir():
            xml_dirs = [a]
        elif a.is_file():
            csv_path = a
        else:
            raise GridcamError(f"{a}: annotations not found (expected a folder of XML files or {CSV_NAME})")
    else:
        xml_dirs = [val_dir, val_dir.parent / "annotation", base / KAGGLE_ANN]
        for cand in (base / CSV_NAME, val_dir.parent / CSV_NAME):
            if cand.is_file():
                csv_path = cand
                break
    listings = [(d, _listing(d)) for d in xml_dirs]
    csv_boxes = parse_loc_csv(csv_path) if csv_path is not None else {}

    records = []
    for name in names:
        stem = os.path.splitext(name)[0]
        path = str(val_dir / name)
        xml = next((d / (stem + ".xml") for d, lst in listings if stem + ".xml" in lst), None)
        if xml is not None:
            try:
                size, objects = parse_voc_xml(xml)
                records.append(ValRecord(path, size, objects, str(xml)))
            except (ET.ParseError, ValueError) as exc:
                records.append(ValRecord(path, None, None, str(xml), f"malformed annotation {xml}: {exc}"))
        elif stem in csv_boxes:
            records.append(ValRecord(path, None, csv_boxes[stem], str(csv_path)))
        else:
            where = ", ".join(str(d) for d in xml_dirs) + (f" or {csv_path}" if csv_path else "")
            records.append(ValRecord(path, None, None, None,
                                     f"no annotation for {path} (looked for {stem}.xml in {where})"))
    return val_dir, records


def _class_of_first(objects: list[BoxObject], class_to_idx: dict[str, int]) -> tuple[str | None, int]:
    if not objects:
        return None, -1
    wnid = objects[0].name
    return wnid, class_to_idx.get(wnid, -1)


def clip_box(box: tuple[int, int, int, int], height: int, width: int) -> tuple[int, int, int, int] | None:
    """VOC box ``(xmin, ymin, xmax, ymax)`` (1-based, inclusive) -> 0-based half-open
    ``(r0, r1, c0, c1)`` clipped to an (height, width) image, or None when nothing is left."""
    x0, y0, x1, y1 = box
    r0, r1 = max(y0 - 1, 0), min(y1, height)  # rows y0-1 .. y1-1 inclusive
    c0, c1 = max(x0 - 1, 0), min(x1, width)
    return (r0, r1, c0, c1) if r1 > r0 and c1 > c0 else None


def boxes_mask(boxes: Sequence[tuple[int, int, int, int]], height: int, width: int) -> torch.Tensor:
    """Union of VOC boxes ``(xmin, ymin, xmax, ymax)`` (1-based, inclusive) as a (H,W) bool mask.

    Box ``(3, 2, 5, 4)`` covers rows 1..3 and columns 2..4; parts outside the image are clipped.
    """
    mask = torch.zeros(height, width, dtype=torch.bool)
    for box in boxes:
        clipped = clip_box(box, height, width)
        if clipped is not None:
            r0, r1, c0, c1 = clipped
            mask[r0:r1, c0:c1] = True
    return mask


class _ValBase(torch.utils.data.Dataset):
    """Shared set-up: records, class list and the warnings about unusable images."""

    def __init__(self, root, classes, transform, annotations):
        self.root = Path(root)
        self.transform = transform
        self.val_dir, self.records = build_val_index(root, annotations)
        _, base = resolve_val_dir(root)
        self.classes = load_class_list(classes, base)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        bad = [r for r in self.records if r.error is not None]
        #: images that will be skipped because their annotation is missing/malformed (path, reason)
        self.missing_annotations = [(r.path, r.error) for r in bad]
        if bad:
            warn(f"{len(bad)} of {len(self.records)} val images have no usable annotation and are "
                 f"skipped; first: {bad[0].error}")

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)


class ImageNetValLoc(_ValBase):
    """ImageNet val for localisation metrics: ``ds[i] -> LocItem | None``.

    ``LocItem`` (a dict): ``image`` transformed tensor (3,h,w); ``size`` (H,W) of the original;
    ``path``; ``index``; ``classes`` (T,) long — the class of the first object, T=1 (T=0 if it is
    unusable); ``masks`` (T,H,W) bool at the original resolution — the union of that class's boxes
    (all of them, difficult ones included), VOC 1-based inclusive, clipped to the image;
    ``label`` int (the first object's class, -1 if unknown) for classification metrics;
    ``skipped`` list of ``(class or wnid, reason)`` pairs left out: unknown wnid, all boxes of the
    class difficult, boxes entirely outside the image.
    ``None`` (with a warning naming the file) for a missing/malformed annotation or an unreadable
    image. ``.sizes`` lists every original ``(H, W)`` from the XML ``<size>`` (the JPEG header when
    the XML lacks it or the boxes come from the CSV), without decoding pixels.
    ``masks=False`` leaves ``item["masks"]`` as ``None`` (classification-only use).
    """

    def __init__(self, root: str | os.PathLike, classes: Sequence[str] | str | os.PathLike | None = None,
                 transform: Callable | None = None, annotations: str | os.PathLike | None = None,
                 masks: bool = True):
        super().__init__(root, classes, transform, annotations)
        self.with_masks = masks
        self.sizes: list[tuple[int, int]] = []
        for r in self.records:
            if r.size is None:
                try:
                    r.size = image_size(r.path)
                except BadImage as exc:
                    r.size = (0, 0)
                    if r.error is None:
                        r.error = f"unreadable image {exc.path}: {exc.reason}"
            self.sizes.append(r.size)

    def __getitem__(self, index: int):
        rec = self.records[index]
        if rec.error is not None:
            warn(f"skipping {rec.path}: {rec.error}")
            return None
        try:
            image, size = load_transformed(rec.path, self.transform)
        except BadImage as exc:
            warn(f"skipping unreadable image {exc.path}: {exc.reason}")
            return None
        if rec.size is not None and tuple(size) != tuple(rec.size) and rec.size != (0, 0):
            warn(f"{rec.path}: decoded size {size} differs from the annotated {rec.size}; "
                 f"boxes are clipped to the decoded image")
        height, width = size
        wnid, label = _class_of_first(rec.objects, self.class_to_idx)
        classes: list[int] = []
        masks: list[torch.Tensor] = []
        skipped: list[tuple] = []
        if wnid is None:
            skipped.append((None, "no objects in the annotation"))
        elif label < 0:
            skipped.append((wnid, f"unknown wnid {wnid} (not in the class list) in {rec.source}"))
        else:
            objs = [o for o in rec.objects if o.name == wnid]
            if all(o.difficult for o in objs):
                skipped.append((label, "all boxes difficult"))
            else:
                boxes = [(o.xmin, o.ymin, o.xmax, o.ymax) for o in objs]
                if all(clip_box(b, height, width) is None for b in boxes):
                    skipped.append((label, f"boxes outside the image in {rec.source}"))
                else:
                    classes.append(label)
                    masks.append(boxes_mask(boxes, height, width))
        if not self.with_masks:
            mask_t = None
        elif masks:
            mask_t = masks[0][None]  # T == 1 (the first object's class); a view, no copy
        else:
            mask_t = torch.zeros(0, height, width, dtype=torch.bool)
        return {
            "image": image, "size": (height, width), "path": rec.path, "index": index,
            "classes": torch.tensor(classes, dtype=torch.long), "masks": mask_t,
            "label": label, "skipped": skipped,
        }


class ImageNetVal(LabelledFiles, _ValBase):
    """Flat ImageNet val for classification (top-1/top-5): ``ds[i] -> (image, label) | None``.

    Label = class of the first object in the image's XML/CSV entry. Images whose annotation is
    missing or whose first wnid is not a class are left out at construction (listed in
    ``.excluded`` as ``(path, reason)``, with one warning). ``.samples``/``.targets`` as ImageFolder.
    """

    def __init__(self, root: str | os.PathLike, classes: Sequence[str] | str | os.PathLike | None = None,
                 transform: Callable | None = None, annotations: str | os.PathLike | None = None):
        super().__init__(root, classes, transform, annotations)
        self.samples: list[tuple[str, int]] = []
        self.excluded: list[tuple[str, str]] = list(self.missing_annotations)
        unknown = 0
        for r in self.records:
            if r.error is not None:
                continue
            wnid, label = _class_of_first(r.objects, self.class_to_idx)
            if label < 0:
                unknown += 1
                self.excluded.append((r.path, f"unknown wnid {wnid}" if wnid else "no objects"))
            else:
                self.samples.append((r.path, label))
        if unknown:
            warn(f"{unknown} val images name a wnid that is not a class (or no object) and are "
                 f"left out; first: {self.excluded[len(self.missing_annotations)][0]}")
        if not self.samples:
            raise GridcamError(f"{self.val_dir}: no val image has a usable label")
        self.targets = [t for _, t in self.samples]



def imagenet_val(root: str | os.PathLike, classes: Sequence[str] | str | os.PathLike | None = None,
                 transform: Callable | None = None):
    """A classification val set for ``root``: ``root/val`` with class sub-folders -> ImageFolder
    (indices follow ``classes``), else the flat layout with XML/CSV labels -> :class:`ImageNetVal`.
    """
    from .folders import ImageFolder

    val_dir, base = resolve_val_dir(root)
    subdirs = [e for e in os.scandir(val_dir) if e.is_dir() and not e.name.startswith(".")]
    if subdirs and not any(is_image_file(n) for n in os.listdir(val_dir)):
        ds = ImageFolder(val_dir, transform)
        wanted = load_class_list(classes, base)
        if ds.classes != wanted:
            idx = {c: i for i, c in enumerate(wanted)}
            missing = [c for c in ds.classes if c not in idx]
            if missing:
                raise GridcamError(f"{val_dir}: class folders not among the training classes: {missing[:5]}")
            ds.samples = [(p, idx[ds.classes[t]]) for p, t in ds.samples]
            ds.targets = [t for _, t in ds.samples]
            ds.classes = wanted
            ds.class_to_idx = idx
        return ds
    return ImageNetVal(root, classes, transform)


__all__ = ["ImageNetValLoc", "ImageNetVal", "imagenet_val", "boxes_mask", "parse_voc_xml",
           "parse_loc_csv", "load_class_list", "build_val_index", "resolve_val_dir", "BoxObject"]
