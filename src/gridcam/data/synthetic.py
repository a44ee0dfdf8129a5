"""Synthetic datasets in the real ImageNet and COCO file formats: the project's embedded data.

No ImageNet or COCO exists on the machines this project is developed on, so tests, the demo and
the benchmarks run on data made here — real JPEGs, real PASCAL-VOC/ImageNet XML, Kaggle's
``LOC_val_solution.csv``, real COCO instances JSON (read back by pycocotools) — designed so that the
task is *about localisation*:

- **Class = the object's own appearance.** Class ``k`` is a textured shape: one of 10 outlines
  (circle, square, triangle, diamond, pentagon, hexagon, star, cross, ring, crescent) filled with
  one of 10 two-colour patterns (stripes, checks, dots, rings, grid, chevrons, waves, spokes,
  cross-hatch, sawtooth); classes 0-9 differ in both, the next 90 in the combination, and beyond
  100 the pattern frequency and angle vary too (up to 1200 classes). The two colours are random per
  image, so colour carries no class information.
- **Random position and scale** (ImageNet: 25-60% of the shorter side; COCO: 18-40%, 1-4 objects)
  with a small rotation and aspect jitter; ImageNet images are 1:1, 4:3 or 3:4.
- **Cluttered background**: a smooth random colour field, random solid blobs, bars, lines and
  noise patches, pixel noise — nothing correlated with the class.
- **Spurious cue** (``spurious`` = probability per image): a square patch in the class's own hue
  (see :func:`cue_color`) in a random corner, away from the object. A model can learn to "cheat"
  from it; its explanations then point at the corner, not the object, which the pointing game sees.

Determinism: every image draws from its own ``numpy`` generator seeded by ``(seed, split, index)``,
so output does not depend on the number of worker processes or the order of generation. Images are
written as they are made and the COCO JSON is streamed, so memory stays constant for any size.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from gridcam.data.synthetic_draw import (
    MAX_CLASSES,
    SHAPES,
    TEXTURES,
    _SPLIT_CODES,
    _background,
    _cue_box,
    _draw_object,
    _image_rng,
    _place,
    appearance,
    class_name,
    coco_category_id,
    cue_color,
    wnid,
)
from gridcam.errors import GridcamError

MARKER = "gridcam_synth.json"


# ------------------------------------------------------------------------- one image, ImageNet
def render_imagenet_image(seed: int, split: str, index: int, k: int, image_size: int,
                          spurious: float, distractors: int = 0, others: tuple[int, ...] = ()):
    """One ImageNet-style image of class ``k``: ``(PIL image, boxes)`` with boxes as VOC
    ``(xmin, ymin, xmax, ymax)`` 1-based inclusive, tight around the painted object pixels.

    ``distractors``: up to that many extra, smaller objects of classes drawn from ``others``
    (appearance ids), painted after the labelled object(s) where they fit and NOT annotated: a
    heatmap on them misses. Without them (the default) the image is exactly as before."""
    rng = _image_rng(seed, split, index)
    aspect = [(1, 1), (4, 3), (3, 4)][int(rng.integers(0, 3))]
    if aspect[0] >= aspect[1]:
        height, width = image_size, round(image_size * aspect[0] / aspect[1])
    else:
        width, height = image_size, round(image_size * aspect[1] / aspect[0])
    img = _background(rng, width, height)
    occupied = []
    if rng.random() < spurious:
        cue = _cue_box(rng, width, height)
        ImageDraw.Draw(img).rectangle([cue[0], cue[1], cue[2] - 1, cue[3] - 1], fill=cue_color(k))
        occupied.append(cue)
    arr = np.array(img)
    side = min(width, height)
    boxes = []
    n_obj = 2 if rng.random() < 0.15 else 1  # sometimes a second, smaller instance (as in ImageNet)
    for j in range(n_obj):
        frac = rng.uniform(0.25, 0.6) if j == 0 else rng.uniform(0.18, 0.3)
        placed = _place(rng, width, height, frac * side / 2, occupied)
        if placed is None:
            if j == 0:  # a cue that leaves no room: draw the object anyway, centred
                placed = (width / 2, height / 2, (0, 0, width, height))
            else:
                break
        cx, cy, box = placed
        _, (x0, y0, x1, y1), _ = _draw_object(arr, rng, k, cx, cy, frac * side / 2)
        occupied.append(box)
        boxes.append((x0 + 1, y0 + 1, x1 + 1, y1 + 1))
    if distractors and others:
        # a separate generator: the labelled part of the image does not change with this option
        drng = np.random.default_rng([seed, _SPLIT_CODES[split], index, 3])
        for _ in range(distractors):
            frac = drng.uniform(0.18, 0.32)
            placed = _place(drng, width, height, frac * side / 2, occupied)
            if placed is None:
                continue
            cx, cy, box = placed
            _draw_object(arr, drng, int(drng.choice(others)), cx, cy, frac * side / 2)
            occupied.append(box)
    return Image.fromarray(arr, "RGB"), boxes


def _imagenet_task(task):
    seed, split, index, k, image_size, spurious, path, distractors, others = task
    img, boxes = render_imagenet_image(seed, split, index, k, image_size, spurious, distractors,
                                       tuple(others))
    img.save(path, "JPEG", quality=90)
    return img.height, img.width, boxes


def voc_xml(filename: str, height: int, width: int, objects: list[tuple[str, tuple[int, int, int, int]]],
            folder: str = "val") -> str:
    """An annotation in ImageNet's val XML format (tab-indented, as the ILSVRC2012 files)."""
    lines = ["<annotation>", f"\t<folder>{folder}</folder>", f"\t<filename>{filename}</filename>",
             "\t<source>", "\t\t<database>ILSVRC_2012</database>", "\t</source>", "\t<size>",
             f"\t\t<width>{width}</width>", f"\t\t<height>{height}</height>", "\t\t<depth>3</depth>",
             "\t</size>", "\t<segmented>0</segmented>"]
    for name, (x0, y0, x1, y1) in objects:
        lines += ["\t<object>", f"\t\t<name>{name}</name>", "\t\t<pose>Unspecified</pose>",
                  "\t\t<truncated>0</truncated>", "\t\t<difficult>0</difficult>", "\t\t<bndbox>",
                  f"\t\t\t<xmin>{x0}</xmin>", f"\t\t\t<ymin>{y0}</ymin>", f"\t\t\t<xmax>{x1}</xmax>",
                  f"\t\t\t<ymax>{y1}</ymax>", "\t\t</bndbox>", "\t</object>"]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- plumbing
def _pool_map(fn, tasks, workers: int | None, total: int):
    """Yield ``fn(task)`` in order; in a process pool when there are many tasks."""
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if total >= 2000 else 0
    if workers <= 1:
        for t in tasks:
            yield fn(t)
        return
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(workers) as pool:
        yield from pool.imap(fn, tasks, chunksize=16)


def _prepare_out(out: Path, params: dict) -> bool:
    """True if ``out`` already holds exactly this dataset (then nothing is generated)."""
    marker = out / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("params") == params:
                return True
        except (OSError, ValueError):
            pass
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GridcamError(f"{out}: exists and is not empty (and is not this synthetic dataset); "
                           f"choose a new folder or delete it")
    out.mkdir(parents=True, exist_ok=True)
    return False


def _check_prob(spurious: float, val_spurious: float | None) -> float:
    for name, p in (("spurious", spurious), ("val_spurious", val_spurious)):
        if p is not None and not 0.0 <= p <= 1.0:
            raise GridcamError(f"{name} must be a probability in [0, 1], got {p}")
    return float(spurious if val_spurious is None else val_spurious)


def _check(name: str, value, minimum: int = 0):
    if not isinstance(value, (int, np.integer)) or value < minimum:
        raise GridcamError(f"{name} must be an integer >= {minimum}, got {value!r}")


# ------------------------------------------------------------------------------------ ImageNet
def make_imagenet(out: str | os.PathLike, classes: int = 10, train_per_class: int = 40,
                  val_per_class: int = 10, image_size: int = 128, spurious: float = 0.0,
                  seed: int = 0, workers: int | None = None, val_spurious: float | None = None,
                  val_image_size: int | None = None, distractors: int = 0,
                  lookalikes: bool = False) -> Path:
    """Write an ImageNet-layout dataset and return ``Path(out)``.

    Layout: ``out/train/<wnid>/<wnid>_<i>.JPEG``; ``out/val/ILSVRC2012_val_%08d.JPEG`` with an
    ImageNet XML beside each; ``out/LOC_val_solution.csv`` (Kaggle format) and
    ``out/LOC_synset_mapping.txt`` ("wnid name" per line, class order); ``out/gridcam_synth.json``.
    Val images are interleaved over classes (a seeded permutation), 1:1, 4:3 or 3:4 with shorter
    side ``image_size``. Calling again with the same arguments on the same folder does nothing.
    ``workers``: processes (default: serial below 2000 images, else up to 8).

    Options that make localisation matter (all off by default; then the output is unchanged):

    - ``val_image_size``: shorter side of the val images (default ``image_size``). ImageNet's val
      images are ~400-500 px while training crops are 224 px: with e.g. 448 here the pointing
      game's 15 px tolerance is as strict as on ImageNet.
    - ``distractors``: up to that many extra, smaller, unannotated objects in every image (train
      and val) that belong to no class but resemble the classes: the outline of one class with the
      pattern of another (:func:`chimeras`). Only the conjunction of outline and pattern tells the
      class, so the model must find the labelled object, and a heatmap on a distractor misses.
    - ``lookalikes``: class ``j`` gets appearance :func:`lookalike_appearance` ``(j)`` instead of
      ``j``: pairs of classes share an outline and neighbours share a pattern (e.g. striped circle,
      checkered circle, checkered square, ...), so classes resemble each other and a distractor
      shares parts with the labelled object.
    """
    _check("classes", classes, 1)
    _check("train_per_class", train_per_class)
    _check("val_per_class", val_per_class)
    _check("image_size", image_size, 16)
    if classes > MAX_CLASSES:
        raise GridcamError(f"synthetic data supports at most {MAX_CLASSES} classes, got {classes}")
    val_spurious = _check_prob(spurious, val_spurious)
    out = Path(out)
    params = dict(kind="imagenet", classes=classes, train_per_class=train_per_class,
                  val_per_class=val_per_class, image_size=image_size, spurious=float(spurious),
                  val_spurious=val_spurious, seed=int(seed))
    _check("distractors", distractors)
    if val_image_size is not None:
        _check("val_image_size", val_image_size, 16)
        params["val_image_size"] = int(val_image_size)
    if distractors:
        params["distractors"] = int(distractors)
    if lookalikes:
        params["lookalikes"] = True
    look = [lookalike_appearance(j) if lookalikes else j for j in range(classes)]
    if max(look) >= MAX_CLASSES:
        raise GridcamError(f"lookalikes supports at most {MAX_CLASSES // 5} classes, got {classes}")
    val_size = image_size if val_image_size is None else int(val_image_size)
    if _prepare_out(out, params):
        return out
    t0 = time.time()
    wnids = [wnid(k) for k in range(classes)]
    for w in wnids:
        (out / "train" / w).mkdir(parents=True, exist_ok=True)
    (out / "val").mkdir(parents=True, exist_ok=True)
    with open(out / "LOC_synset_mapping.txt", "w") as f:
        f.writelines(f"{w} {class_name(look[k])}\n" for k, w in enumerate(wnids))

    n_train = classes * train_per_class
    others = chimeras(look)
    train_tasks = ((seed, "train", i, look[i // train_per_class], image_size, spurious,
                    str(out / "train" / wnids[i // train_per_class]
                        / f"{wnids[i // train_per_class]}_{i % train_per_class}.JPEG"),
                    distractors, others)
                   for i in range(n_train))
    for _ in _pool_map(_imagenet_task, train_tasks, workers, n_train):
        pass

    n_val = classes * val_per_class
    labels = np.random.default_rng([seed, 7]).permutation(np.repeat(np.arange(classes), val_per_class))
    names = [f"ILSVRC2012_val_{i + 1:08d}" for i in range(n_val)]
    val_tasks = ((seed, "val", i, look[int(labels[i])], val_size, val_spurious,
                  str(out / "val" / f"{names[i]}.JPEG"), distractors, others)
                 for i in range(n_val))
    with open(out / "LOC_val_solution.csv", "w", newline="") as csvf:
        csvf.write("ImageId,PredictionString\n")
        for i, (h, w, boxes) in enumerate(_pool_map(_imagenet_task, val_tasks, workers, n_val)):
            name, wn = names[i], wnids[int(labels[i])]
            (out / "val" / f"{name}.xml").write_text(voc_xml(name, h, w, [(wn, b) for b in boxes]))
            csvf.write(f"{name}," + " ".join(f"{wn} {x0} {y0} {x1} {y1}" for x0, y0, x1, y1 in boxes) + "\n")
    _write_marker(out, params, [class_name(look[k]) for k in range(classes)], time.time() - t0)
    return out


def chimeras(look: list[int]) -> tuple[int, ...]:
    """Appearance ids (< 100) that are NOT classes of the dataset but combine one class's outline
    with another class's pattern: the distractors. Falls back to all non-class ids < 100."""
    apps = [appearance(k) for k in look]
    shapes, textures = {a[0] for a in apps}, {a[1] for a in apps}
    pool = [k for k in range(100) if k not in look
            and appearance(k)[0] in shapes and appearance(k)[1] in textures]
    return tuple(pool or [k for k in range(100) if k not in look])


def lookalike_appearance(j: int) -> int:
    """Appearance id of class ``j`` under ``lookalikes``: 0, 10, 1, 11, 2, 12, ...

    Appearance ``b`` (b < 10) is shape b with pattern b; ``b + 10`` is shape b with pattern b + 1.
    So classes 2i and 2i+1 share an outline, and 2i+1 and 2i+2 share a pattern.
    """
    block, r = divmod(j, 20)
    return block * 100 + r // 2 + 10 * (r % 2)


def _write_marker(out: Path, params: dict, names: list[str], seconds: float) -> None:
    from gridcam import __version__

    (out / MARKER).write_text(json.dumps({
        "params": params, "class_names": names, "generator": f"gridcam {__version__}",
        "seconds": round(seconds, 2)}, indent=1) + "\n")


# ---------------------------------------------------------------------------------------- COCO
def _rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major run lengths, starting with a run of zeros)."""
    flat = mask.flatten(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def render_coco_image(seed: int, split: str, index: int, categories: int, image_size: int,
                      spurious: float):
    """One COCO-style image: ``(PIL image, annotations)``; each annotation is a dict with
    ``category`` (index), ``iscrowd``, and ``polygon`` (flat [x1,y1,...]) or ``rle`` + ``bbox``/``area``."""
    rng = _image_rng(seed, split, index)
    landscape = rng.random() < 0.6
    width, height = (round(image_size * 4 / 3), image_size) if landscape else (image_size, image_size)
    img = _background(rng, width, height)
    side = min(width, height)
    r = rng.random()
    n_obj = 0 if r < 0.08 else int(rng.integers(1, 5))  # ~8% images without objects, as in COCO
    cats = rng.integers(0, categories, n_obj)
    occupied = []
    if n_obj and rng.random() < spurious:
        cue = _cue_box(rng, width, height)
        ImageDraw.Draw(img).rectangle([cue[0], cue[1], cue[2] - 1, cue[3] - 1], fill=cue_color(int(cats[0])))
        occupied.append(cue)
    arr = np.array(img)
    anns = []
    for j in range(n_obj):
        radius = rng.uniform(0.18, 0.4) * side / 2
        placed = _place(rng, width, height, radius, occupied)
        if placed is None:
            continue
        cx, cy, box = placed
        poly, _, _ = _draw_object(arr, rng, int(cats[j]), cx, cy, radius)
        occupied.append(box)
        anns.append({"category": int(cats[j]), "iscrowd": 0,
                     "polygon": [round(float(v), 2) for v in poly.reshape(-1)]})
    if n_obj and rng.random() < 0.12:  # a crowd: a cluster of small instances, one RLE annotation
        k = int(rng.integers(0, categories))
        mask = np.zeros((height, width), dtype=bool)
        for _ in range(int(rng.integers(3, 6))):
            radius = rng.uniform(0.05, 0.08) * side
            placed = _place(rng, width, height, radius, occupied, tries=10)
            if placed is None:
                continue
            cx, cy, box = placed
            _, (x0, y0, x1, y1), m = _draw_object(arr, rng, k, cx, cy, radius)
            occupied.append(box)
            mask[y0:y1 + 1, x0:x1 + 1] |= m
        if mask.any():
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            anns.append({"category": k, "iscrowd": 1, "rle": _rle_uncompressed(mask),
                         "bbox": [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1),
                                  float(rows[-1] - rows[0] + 1)],
                         "area": float(mask.sum())})
    return Image.fromarray(arr, "RGB"), anns


def _coco_task(task):
    from pycocotools import mask as mask_utils

    seed, split, index, categories, image_size, spurious, path = task
    img, anns = render_coco_image(seed, split, index, categories, image_size, spurious)
    img.save(path, "JPEG", quality=90)
    h, w = img.height, img.width
    for a in anns:  # COCO's area/bbox conventions for polygons: mask area, polygon extent
        if "polygon" in a:
            p = np.asarray(a["polygon"]).reshape(-1, 2)
            a["bbox"] = [round(float(p[:, 0].min()), 2), round(float(p[:, 1].min()), 2),
                         round(float(np.ptp(p[:, 0])), 2), round(float(np.ptp(p[:, 1])), 2)]
            rle = mask_utils.frPyObjects([a["polygon"]], h, w)
            a["area"] = float(mask_utils.area(mask_utils.merge(rle)))
    return h, w, anns


def image_id(split: str, index: int) -> int:
    """Sparse, increasing COCO image ids (disjoint between train and val), as real COCO ids."""
    return (500000 if _SPLIT_CODES[split] == 1 else 0) + 3 * index + 1 + (index % 2)


def _write_coco_split(out: Path, split: str, n: int, categories: int, image_size: int,
                      spurious: float, seed: int, workers: int | None) -> None:
    year_split = f"{split}2014"
    img_dir = out / year_split
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir = out / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    final = ann_dir / f"instances_{year_split}.json"
    tmp, tmp_anns = final.with_suffix(".json.part"), final.with_suffix(".anns.part")
    names = [f"COCO_{year_split}_{image_id(split, i):012d}.jpg" for i in range(n)]
    tasks = ((seed, split, i, categories, image_size, spurious, str(img_dir / names[i])) for i in range(n))
    # categories listed in a shuffled order: readers must sort ids, as pycocotools users do
    order = np.random.default_rng([seed, 11]).permutation(categories)
    cats = [{"supercategory": SHAPES[appearance(int(k))[0]], "id": coco_category_id(int(k)),
             "name": class_name(int(k))} for k in order]
    ann_id = 1000000 * _SPLIT_CODES[split]
    with open(tmp, "w") as f, open(tmp_anns, "w") as fa:
        f.write('{"info": ' + json.dumps({
            "description": "gridcam synthetic COCO-format dataset", "version": "1.0", "year": 2014,
            "contributor": "gridcam", "date_created": "2014-01-01 00:00:00"}))
        f.write(', "licenses": [{"url": "https://opensource.org/licenses/MIT", "id": 1, "name": "MIT"}]')
        f.write(', "categories": ' + json.dumps(cats) + ', "images": [')
        first_ann = True
        for i, (h, w, anns) in enumerate(_pool_map(_coco_task, tasks, workers, n)):
            iid = image_id(split, i)
            f.write(("" if i == 0 else ", ") + json.dumps({
                "license": 1, "file_name": names[i], "height": h, "width": w,
                "date_captured": "2014-01-01 00:00:00", "id": iid}))
            for a in anns:
                ann_id += 1
                seg = [a["polygon"]] if "polygon" in a else a["rle"]
                fa.write(("" if first_ann else ", ") + json.dumps({
                    "segmentation": seg, "area": a["area"], "iscrowd": a["iscrowd"],
                    "image_id": iid, "bbox": a["bbox"],
                    "category_id": coco_category_id(a["category"]), "id": ann_id}))
                first_ann = False
        f.write('], "annotations": [')
        fa.flush()
        with open(tmp_anns) as src:
            shutil.copyfileobj(src, f)
        f.write("]}\n")
    tmp_anns.unlink()
    os.replace(tmp, final)


def make_coco(out: str | os.PathLike, images_train: int = 200, images_val: int = 50,
              categories: int = 8, image_size: int = 128, spurious: float = 0.0, seed: int = 0,
              workers: int | None = None, val_spurious: float | None = None) -> Path:
    """Write a COCO-layout dataset and return ``Path(out)``.

    Layout: ``out/train2014/COCO_train2014_%012d.jpg``, ``out/val2014/COCO_val2014_%012d.jpg``,
    ``out/annotations/instances_{train,val}2014.json`` (COCO instances format: info, licenses,
    categories with gapped ids 1,2,3,5,6,7,9,... listed out of order, images with width/height,
    annotations with polygon segmentation, or uncompressed RLE for ``iscrowd=1`` groups, area,
    bbox ``[x,y,w,h]``); 1-4 objects per image, ~8% of images with none. Images are 4:3 or 1:1
    with shorter side ``image_size``. Same arguments on the same folder: nothing to do.
    ``spurious``/``val_spurious``: probability of a corner cue in the colour of the image's first
    object's category (``val_spurious`` defaults to ``spurious``).
    """
    _check("images_train", images_train)
    _check("images_val", images_val)
    _check("categories", categories, 1)
    _check("image_size", image_size, 16)
    if categories > 90:
        raise GridcamError(f"synthetic COCO supports at most 90 categories, got {categories}")
    val_spurious = _check_prob(spurious, val_spurious)
    out = Path(out)
    params = dict(kind="coco", images_train=images_train, images_val=images_val,
                  categories=categories, image_size=image_size, spurious=float(spurious),
                  val_spurious=val_spurious, seed=int(seed))
    if _prepare_out(out, params):
        return out
    t0 = time.time()
    _write_coco_split(out, "train", images_train, categories, image_size, spurious, seed, workers)
    _write_coco_split(out, "val", images_val, categories, image_size, val_spurious, seed, workers)
    _write_marker(out, params, [class_name(k) for k in range(categories)], time.time() - t0)
    return out


__all__ = ["make_imagenet", "make_coco", "wnid", "class_name",
           "appearance", "lookalike_appearance", "chimeras", "cue_color", "coco_category_id", "image_id", "render_imagenet_image",
           "render_coco_image", "voc_xml", "SHAPES", "TEXTURES", "MAX_CLASSES"]
