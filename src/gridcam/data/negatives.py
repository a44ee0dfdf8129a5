"""Per-category negatives for the paper's COCO loader: the images that do not contain a category.

The paper's ``extract_negative_image_list.py`` loops over images calling pycocotools per image
(minutes for COCO's 118k images) and pickles the result. Here the index is built in one vectorised
pass over the annotation arrays (seconds) and stored as JSON, never pickle:
``{"<category id>": [image id, ...], ...}`` with every category of the file as a key (ids as
strings, the JSON rule; lists sorted). As in the paper, images without any annotation are in no
list (they are skipped for training).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from gridcam.errors import GridcamError


def load_coco_json(source) -> dict:
    """The parsed COCO instances JSON of ``source`` (a path, a parsed dict, or a pycocotools COCO)."""
    if isinstance(source, dict):
        return source
    if hasattr(source, "dataset") and isinstance(source.dataset, dict):  # a pycocotools COCO
        return source.dataset
    path = Path(source)
    if not path.is_file():
        raise GridcamError(f"{path}: COCO annotation file not found")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise GridcamError(f"{path}: not valid JSON ({exc})") from None


def build_coco_negatives(coco_json_path) -> dict[int, list[int]]:
    """``{category id: sorted ids of the annotated images that do not contain it}``.

    ``coco_json_path``: a COCO instances JSON path, its parsed dict, or a ``pycocotools`` COCO.
    One pass: (image, category) pairs -> an images x categories presence matrix -> per category
    the annotated images whose column is False.
    """
    data = load_coco_json(coco_json_path)
    try:
        cats = np.array(sorted(int(c["id"]) for c in data["categories"]), dtype=np.int64)
        img_ids = np.array([int(im["id"]) for im in data["images"]], dtype=np.int64)
        anns = data.get("annotations", [])
        a_img = np.fromiter((a["image_id"] for a in anns), dtype=np.int64, count=len(anns))
        a_cat = np.fromiter((a["category_id"] for a in anns), dtype=np.int64, count=len(anns))
    except (KeyError, TypeError, ValueError) as exc:
        raise GridcamError(f"{coco_json_path if not isinstance(coco_json_path, dict) else 'annotations'}: "
                           f"not a COCO instances file ({type(exc).__name__}: {exc})") from None
    # annotations of unknown images or categories are ignored
    known = np.isin(a_img, img_ids) & np.isin(a_cat, cats)
    a_img, a_cat = a_img[known], a_cat[known]
    annotated = np.unique(a_img)
    present = np.zeros((annotated.size, cats.size), dtype=bool)
    present[np.searchsorted(annotated, a_img), np.searchsorted(cats, a_cat)] = True
    return {int(c): annotated[~present[:, k]].tolist() for k, c in enumerate(cats)}


def save_negatives(index: dict[int, list[int]], path: str | os.PathLike) -> Path:
    """Write the index as JSON (string keys) atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w") as f:
        json.dump({str(int(k)): [int(i) for i in v] for k, v in index.items()}, f, separators=(",", ":"))
    os.replace(tmp, path)
    return path


def load_negatives(path: str | os.PathLike) -> dict[int, list[int]]:
    """Read an index written by :func:`save_negatives` (``{int cat id: [int image id]}``)."""
    path = Path(path)
    if not path.is_file():
        raise GridcamError(f"{path}: negatives index not found (make it with `gridcam coco-negatives`)")
    try:
        with open(path) as f:
            raw = json.load(f)
        if not isinstance(raw, dict):
            raise ValueError("top level is not an object")
        return {int(k): [int(i) for i in v] for k, v in raw.items()}
    except (ValueError, TypeError) as exc:
        raise GridcamError(f"{path}: not a negatives index ({exc})") from None


__all__ = ["build_coco_negatives", "save_negatives", "load_negatives", "load_coco_json"]
