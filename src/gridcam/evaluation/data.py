"""The localisation datasets of ``gridcam evaluate``, from plain typed arguments.

ImageNet: the class list in model order (``classes_file``; else the sorted folders of ROOT/train;
else, with a warning, the sorted wnids of the val annotations). COCO: the categories of the split's
annotation file. Either way the number of classes must match the model's.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

from gridcam.errors import GridcamError

__all__ = ["build_dataset", "imagenet_classes"]


def imagenet_classes(root: str | os.PathLike,
                     classes_file: str | None = None) -> tuple[list[str], str]:
    """(class wnids in model order, where they came from): ``classes_file``; else the sorted
    folders of ROOT/train (the data layer's rule, also Kaggle's layout / LOC_synset_mapping.txt);
    else, with a warning, the sorted wnids found in the val annotations."""
    from gridcam.data import imagenet as dimg

    root = Path(root)
    if classes_file:
        return dimg.load_class_list(classes_file), f"--classes {classes_file}"
    _, base = dimg.resolve_val_dir(root)
    try:
        return dimg.load_class_list(None, base), f"the train folders under {base}"
    except GridcamError:
        pass
    _, records = dimg.build_val_index(root)
    wnids = sorted({o.name for r in records if r.objects for o in r.objects})
    if not wnids:
        raise GridcamError(f"{root}: no class list (--classes FILE), no train/ folder and no "
                           "object names in the val annotations")
    warnings.warn(f"no --classes file and no train/ folder under {base}: class indices are the "
                  f"positions of the {len(wnids)} wnids found in the val annotations (sorted), "
                  "which matches the model only if it was trained on exactly these classes",
                  stacklevel=2)
    return wnids, "the wnids found in the val annotations"


def build_dataset(kind: str, root: str | os.PathLike, input_resize: int, num_classes: int,
                  classes_file: str | None = None, split: str | None = None,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Any:
    """``data.ImageNetValLoc`` (``kind`` "imagenet") or ``data.CocoLoc`` ("coco") of ``root``,
    images resized to shorter side ``input_resize`` and normalised with ``mean``/``std`` (default
    ImageNet's); COCO's ``split`` None reads val2014, or the only ``instances_*.json`` there is;
    GridcamError when its number of classes is not ``num_classes`` (the model's)."""
    from gridcam import data

    norm = {k: tuple(v) for k, v in (("mean", mean), ("std", std)) if v is not None}
    transform = data.transforms.eval_transform(input_resize, **norm)
    root = Path(root)
    if not root.exists():
        raise GridcamError(f"{root}: no such directory")
    if kind == "coco":
        ds = data.CocoLoc(str(root), split=split, transform=transform)
        source = f"the categories of {ds.annotation_file}"
    else:
        classes, source = imagenet_classes(root, classes_file)
        ds = data.ImageNetValLoc(str(root), classes, transform)
    if ds.num_classes != num_classes:
        fix = ("evaluate with the annotation file the model was trained with" if kind == "coco"
               else "pass the model's class list with --classes FILE")
        raise GridcamError(
            f"the model has {num_classes} classes but the class list has {ds.num_classes} "
            f"({source}); {fix}")
    return ds
