"""Data: transforms, dataset readers (ImageNet folders/val XML/CSV, COCO), negatives, synthetic data.

>>> from gridcam import data
>>> train = data.ImageFolder("ROOT/train", data.transforms.train_transform(224))
>>> val = data.ImageNetValLoc("ROOT", classes=None, transform=data.transforms.eval_transform(448))
>>> loader = torch.utils.data.DataLoader(train, batch_size=256, collate_fn=data.collate_skip)

Unreadable inputs never raise inside a worker: ``ds.load(i)`` returns the
:class:`gridcam.problems.Problem` (reason code, file, cause), ``ds[i]`` reports it and gives
``None``, and the collate functions drop it and return how many they dropped. ``image_key(ds, i)``
names an image (file name, COCO id) so per-image randomness can be seeded by identity.
"""

from __future__ import annotations

from . import synthetic, transforms
from .coco import CocoDataset, CocoLoc, load_coco
from .collate import LocBatch, collate_loc, collate_skip, load_item
from .folders import IMG_EXTENSIONS, ImageFolder
from .gridding import GridDataset, collate_grid
from .identity import image_key, image_path, key_seed
from .imagenet import ImageNetVal, ImageNetValLoc, boxes_mask, imagenet_val, load_class_list
from .io import BadImage, DataWarning, image_size, load_annotated, load_image, load_transformed
from .negatives import build_coco_negatives, load_negatives, save_negatives
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "transforms", "synthetic", "IMAGENET_MEAN", "IMAGENET_STD",
    "load_image", "load_transformed", "load_annotated", "image_size", "BadImage", "DataWarning",
    "image_key", "image_path", "key_seed",
    "ImageFolder", "IMG_EXTENSIONS", "CocoDataset", "CocoLoc", "load_coco",
    "ImageNetValLoc", "ImageNetVal", "imagenet_val", "load_class_list", "boxes_mask",
    "collate_skip", "collate_loc", "LocBatch", "load_item", "GridDataset", "collate_grid",
    "build_coco_negatives", "save_negatives", "load_negatives",
]
