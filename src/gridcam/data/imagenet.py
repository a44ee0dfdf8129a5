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

import numpy as np
import torch

from gridcam.errors import GridcamError
from gridcam.problems import Problem, report

from .folders import LabelledFiles, find_classes, is_image_file
from .io import BadImage, image_size, load_annotated

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
    problem: Problem | None = None  # why it cannot be used (missing/malformed XML, unreadable image)

    @property
    def error(self) -> str | None:
        """The cause in words (None when usable); an image problem reads "unreadable image ..."."""
        if self.problem is None:
            return None
        if self.problem.code.startswith("xml_"):
            return self.problem.cause
        return f"unreadable image {self.problem.file}: {self.problem.cause}"


class XmlError(ValueError):
    """A malformed VOC XML: ``where`` is the element (``<object>[2]/<bndbox>/<xmin>``) or the
    parser's line and column."""

    def __init__(self, where: str, cause: str):
        self.where, self.cause = where, cause
        super().__init__(f"{where}: {cause}")


# ----------------------------------------------------------------------------------- parsing
def _int(parent: ET.Element, tag: str, where: str) -> int:
    text = parent.findtext(tag)
    if text is None:
        raise XmlError(f"{where}/<{tag}>", "missing element")
    try:
        return int(round(float(text.strip())))
    except (ValueError, OverflowError):
        raise XmlError(f"{where}/<{tag}>", f"not a number: {text.strip()[:40]!r}") from None


def parse_voc_xml(path: str | os.PathLike) -> tuple[tuple[int, int] | None, list[BoxObject]]:
    """Parse one PASCAL-VOC/ImageNet annotation: ``((H, W) or None, objects)``.

    Raises :class:`XmlError` (a ``ValueError`` naming the element or line/column) for a malformed
    file; objects are numbered from 1 in ``<object>[k]``.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        line, col = getattr(exc, "position", (0, 0))
        msg = str(exc).split(":")[0]
        raise XmlError(f"line {line}, column {col + 1}", f"not well-formed XML ({msg})") from None
    size = None
    s = root.find("size")
    if s is not None and s.find("width") is not None and s.find("height") is not None:
        w, h = _int(s, "width", "<size>"), _int(s, "height", "<size>")
        if w > 0 and h > 0:
            size = (h, w)
    objects = []
    for k, obj in enumerate(root.iter("object"), start=1):
        where = f"<object>[{k}]"
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if bb is None:
            raise XmlError(where, f"object {name!r} has no <bndbox>")
        diff = (obj.findtext("difficult") or "0").strip()
        objects.append(BoxObject(
            name, diff not in ("0", "", "false", "False"),
            *(_int(bb, t, f"{where}/<bndbox>") for t in ("xmin", "ymin", "xmax", "ymax"))))
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
            except XmlError as exc:
                records.append(ValRecord(path, None, None, str(xml), Problem(
                    "xml_malformed", str(xml), f"malformed annotation: {exc.cause}", exc.where)))
            except OSError as exc:  # unreadable (permissions, a directory named X.xml)
                records.append(ValRecord(path, None, None, str(xml), Problem(
                    "xml_malformed", str(xml), f"malformed annotation: cannot read it ({exc.strerror})")))
        elif stem in csv_boxes:
            records.append(ValRecord(path, None, csv_boxes[stem], str(csv_path)))
        else:
            where = ", ".join(str(d) for d in xml_dirs) + (f" or {csv_path}" if csv_path else "")
            records.append(ValRecord(path, None, None, None, Problem(
                "xml_missing", path, f"no annotation (looked for {stem}.xml in {where})")))
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
    """Shared set-up: records and class list. Unusable images are told once, where they are met
    (``__getitem__`` for localisation, construction for classification), not in a summary too."""

    def __init__(self, root, classes, transform, annotations):
        self.root = Path(root)
        self.transform = transform
        self.val_dir, self.records = build_val_index(root, annotations)
        _, base = resolve_val_dir(root)
        self.classes = load_class_list(classes, base)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        #: images that will be skipped because their annotation is missing/malformed (path, reason)
        self.missing_annotations = [(r.path, r.error) for r in self.records if r.problem is not None]

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.records)

    def image_key(self, index: int) -> str:
        """The image's identity for seeding (its file name), see :func:`gridcam.data.image_key`."""
        return os.path.basename(self.records[index].path)

    def image_path(self, index: int) -> str:
        """The image file of item ``index`` (also when its annotation is the problem)."""
        return self.records[index].path


def _label_problem(rec: ValRecord, wnid: str | None, label: int) -> Problem | None:
    """The problem of an image whose first object gives no class index (None when it does)."""
    if wnid is None:
        return Problem("no_objects", str(rec.source), "no objects in the annotation")
    if label < 0:
        return Problem("unknown_class", str(rec.source),
                       f"unknown wnid {wnid} (not in the class list)", "<object>[1]/<name>")
    return None


class ImageNetValLoc(_ValBase):
    """ImageNet val for localisation metrics: ``ds[i] -> LocItem | None``.

    ``LocItem`` (a dict): ``image`` transformed tensor (3,h,w); ``size`` (H,W) of the original;
    ``path``; ``index``; ``key`` (the file name, for seeding); ``classes`` (T,) long — the class of
    the first object, T=1 (T=0 if it is unusable); ``masks`` (T,H,W) bool at the original
    resolution — the union of that class's boxes (all of them, difficult ones included), VOC
    1-based inclusive, clipped to the image; ``label`` int (the first object's class, -1 if
    unknown) for classification metrics; ``skipped`` list of ``(class or wnid, Problem)`` pairs
    left out (``unknown_class``, ``no_objects``, ``all_difficult``, ``box_outside``; ``str()`` of a
    Problem is its cause); ``problems`` the image's other problems (``exif_rotated``,
    ``size_mismatch``), the pair still scored.
    :meth:`load` returns the item or, for a missing/malformed annotation or an unreadable image,
    the :class:`~gridcam.problems.Problem`; ``ds[i]`` reports problems (see
    :func:`gridcam.problems.report`) and gives ``None`` instead. ``.sizes`` lists every original
    ``(H, W)`` from the XML ``<size>`` (the JPEG header when the XML lacks it or the boxes come
    from the CSV), without decoding pixels. ``masks=False`` leaves ``item["masks"]`` as ``None``.
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
                    if r.problem is None:
                        r.problem = exc.problem
            self.sizes.append(r.size)

    def presence_matrix(self) -> np.ndarray:
        """(N, C) bool from the annotations (no decoding): image ``i`` is of class ``c`` (its first
        object's class). An image with a known problem, or whose class is unknown, has no class."""
        m = np.zeros((len(self.records), len(self.classes)), dtype=bool)
        for i, r in enumerate(self.records):
            if r.problem is None:
                _, label = _class_of_first(r.objects or [], self.class_to_idx)
                if label >= 0:
                    m[i, label] = True
        return m

    def __getitem__(self, index: int):
        out = self.load(index)
        if isinstance(out, Problem):
            report(out)
            return None
        for p in [*out["problems"], *(p for _, p in out["skipped"] if p.code != "all_difficult")]:
            report(p)
        return out

    def load(self, index: int) -> dict | Problem:
        """The LocItem of image ``index``, or the Problem that makes it unusable (never reports)."""
        rec = self.records[index]
        if rec.problem is not None:
            return rec.problem
        try:
            image, size, note = load_annotated(rec.path, self.transform, rec.size)
        except BadImage as exc:
            return exc.problem
        height, width = size
        wnid, label = _class_of_first(rec.objects, self.class_to_idx)
        classes: list[int] = []
        masks: list[torch.Tensor] = []
        skipped: list[tuple] = []
        bad_label = _label_problem(rec, wnid, label)
        if bad_label is not None:
            skipped.append((wnid, bad_label))
        else:
            objs = [o for o in rec.objects if o.name == wnid]
            boxes = [(o.xmin, o.ymin, o.xmax, o.ymax) for o in objs]
            if all(o.difficult for o in objs):
                skipped.append((label, Problem("all_difficult", str(rec.source), "all boxes difficult")))
            elif all(clip_box(b, height, width) is None for b in boxes):
                skipped.append((label, Problem(
                    "box_outside", str(rec.source), f"boxes outside the image: every {wnid} box "
                    f"lies outside the {width}x{height} image")))
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
            "key": self.image_key(index), "classes": torch.tensor(classes, dtype=torch.long),
            "masks": mask_t, "label": label, "skipped": skipped,
            "problems": [note] if note is not None else [],
        }


class ImageNetVal(LabelledFiles, _ValBase):
    """Flat ImageNet val for classification (top-1/top-5): ``ds[i] -> (image, label) | None``.

    Label = class of the first object in the image's XML/CSV entry. Images whose annotation is
    missing or malformed, or whose first wnid is not a class, are left out at construction: listed
    in ``.excluded`` as ``(path, reason)`` and ``.problems`` (each reported once).
    ``.samples``/``.targets`` as ImageFolder.
    """

    def __init__(self, root: str | os.PathLike, classes: Sequence[str] | str | os.PathLike | None = None,
                 transform: Callable | None = None, annotations: str | os.PathLike | None = None):
        super().__init__(root, classes, transform, annotations)
        self.samples: list[tuple[str, int]] = []
        self.excluded: list[tuple[str, str]] = []
        self.problems: list[Problem] = []
        for r in self.records:
            wnid, label = (None, -1) if r.problem else _class_of_first(r.objects, self.class_to_idx)
            problem = r.problem or _label_problem(r, wnid, label)
            if problem is None:
                self.samples.append((r.path, label))
            else:
                self.excluded.append((r.path, problem.cause))
                self.problems.append(problem)
                report(problem)
        if not self.samples:
            raise GridcamError(f"{self.val_dir}: no val image has a usable label")
        self.targets = [t for _, t in self.samples]

    def image_key(self, index: int) -> str:
        return os.path.basename(self.samples[index][0])

    def image_path(self, index: int) -> str:
        return self.samples[index][0]


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
           "parse_loc_csv", "load_class_list", "build_val_index", "resolve_val_dir", "BoxObject",
           "XmlError"]
