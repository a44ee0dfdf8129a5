"""Readable class names: ImageNet wnids via ``LOC_synset_mapping.txt``, COCO category names.

Plain text and JSON parsing only (no pickles, no pycocotools needed for names).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from gridcam.errors import GridcamError

SYNSET_MAPPING = "LOC_synset_mapping.txt"


def read_synset_mapping(path: str | os.PathLike) -> dict[str, str]:
    """``wnid -> first readable name`` from lines ``n01440764 tench, Tinca tinca``."""
    out: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.strip().split(None, 1)
                if len(parts) == 2 and not parts[0].startswith("#"):
                    out[parts[0].rstrip(",")] = parts[1].split(",")[0].strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise GridcamError(f"{path}: cannot read the class names: {exc}") from None
    return out


def read_coco_categories(path: str | os.PathLike) -> list[tuple[int, str]]:
    """``[(category id, name)]`` in sorted id order (the model's class order) from a COCO JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            cats = json.load(f).get("categories", [])
        out = sorted((int(c["id"]), str(c.get("name", c["id"]))) for c in cats)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise GridcamError(f"{path}: not a COCO annotation file with categories: {exc}") from None
    if not out:
        raise GridcamError(f"{path}: the annotation file lists no categories")
    return out


def find_mapping(places: Iterable[str | os.PathLike | None]) -> Path | None:
    """The first ``LOC_synset_mapping.txt`` in ``places`` (folders, or files themselves) or their parents."""
    for p in places:
        if not p:
            continue
        p = Path(p)
        if p.is_file() and p.name == SYNSET_MAPPING:
            return p
        base = p if p.is_dir() else p.parent
        for d in (base, *list(base.parents)[:2]):
            cand = d / SYNSET_MAPPING
            if cand.is_file():
                return cand
    return None


def class_names(num_classes: int, meta: Mapping[str, Any], classes_file: str | None = None,
                annotations: str | None = None, near: Sequence[str | os.PathLike] = ()) -> list[str]:
    """One readable name per model output, best available source first.

    ``annotations`` (COCO JSON) names categories; ``classes_file`` is a wnid list or a synset mapping
    (``wnid name, ...`` lines); otherwise the checkpoint's recorded ``classes`` are used and mapped to
    names with a ``LOC_synset_mapping.txt`` found beside ``classes_file``, the training data or ``near``.
    Falls back to ``class <k>``.
    """
    if annotations:
        names = [n for _, n in read_coco_categories(annotations)]
        if len(names) != num_classes:
            raise GridcamError(f"{annotations}: {len(names)} categories but the model has {num_classes} classes")
        return names
    wnids: list[str] | None = None
    mapping: dict[str, str] = {}
    if classes_file:
        mapping = read_synset_mapping(classes_file)
        from gridcam.data import load_class_list

        wnids = load_class_list(classes_file)
    elif meta.get("classes"):
        wnids = [str(c) for c in meta["classes"]]
    if wnids is not None and len(wnids) != num_classes:
        raise GridcamError(f"{classes_file or 'the checkpoint'}: {len(wnids)} classes but the model has "
                           f"{num_classes} outputs")
    if wnids is not None and not set(wnids) <= set(mapping):
        args = meta.get("args")
        data_root = args.get("data") if isinstance(args, Mapping) else None
        found = find_mapping([classes_file, data_root, *near])
        if found is not None:
            mapping = {**read_synset_mapping(found), **mapping}
    if wnids is None:
        ids = meta.get("category_ids") or []
        if len(ids) == num_classes:
            return [f"category {i}" for i in ids]
        return [f"class {k}" for k in range(num_classes)]
    return [mapping.get(w) or w for w in wnids]


def resolve_class(spec: str, names: Sequence[str], wnids: Sequence[str] = ()) -> int:
    """``--class`` value -> index: an integer index, a wnid, or a (unique) readable name."""
    if spec.strip().lstrip("-").isdigit():
        k = int(spec)
        if not 0 <= k < len(names):
            raise GridcamError(f"--class {spec}: out of range (the model has {len(names)} classes)")
        return k
    for seq in (wnids, names):
        if spec in seq:
            return list(seq).index(spec)
    hits = [k for k, n in enumerate(names) if n.lower().startswith(spec.lower())]
    if len(hits) == 1:
        return hits[0]
    raise GridcamError(f"--class {spec}: {'ambiguous' if hits else 'no such class'} "
                       f"(give an index 0..{len(names) - 1}, a wnid or a name)")
