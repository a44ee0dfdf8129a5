"""ImageNet-style training folders: ``root/<class>/<image>``, class index = sorted folder name.

Same rules as ``torchvision.datasets.ImageFolder``: classes are the sorted names of the immediate
sub-folders; images are files (searched recursively inside each class folder, in sorted order)
whose extension is one of :data:`IMG_EXTENSIONS` (case-insensitive).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from gridcam.errors import GridcamError
from gridcam.problems import Problem, report

from .io import BadImage, load_transformed

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def find_classes(root: str | os.PathLike) -> list[str]:
    """Sorted names of the sub-folders of ``root`` (raises GridcamError if there are none)."""
    root = Path(root)
    if not root.is_dir():
        raise GridcamError(f"{root}: not a directory (expected one sub-folder per class)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise GridcamError(f"{root}: no class sub-folders found")
    return classes


class LabelledFiles:
    """Mixin for datasets holding ``self.samples = [(path, label)]``, ``self.transform`` and
    ``self.root``: ``ds[i] -> (image, label)``, or ``None`` when unreadable (the problem is
    reported, see :func:`gridcam.problems.report`); ``ds.load(i)`` returns the Problem instead."""

    samples: list[tuple[str, int]]
    transform: Callable | None
    root: Path

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        out = self.load(index)
        if isinstance(out, Problem):
            report(out)
            return None
        return out

    def load(self, index: int) -> tuple | Problem:
        """``(image, label)`` or the :class:`~gridcam.problems.Problem` of an unreadable file."""
        path, target = self.samples[index]
        try:
            image, _ = load_transformed(path, self.transform)
        except BadImage as exc:
            return exc.problem
        return image, target

    def image_path(self, index: int) -> str:
        """The image file of item ``index``."""
        return self.samples[index][0]

    def image_key(self, index: int) -> str:
        """The image's identity for seeding: its path relative to the dataset root."""
        return os.path.relpath(self.samples[index][0], self.root).replace(os.sep, "/")


class ImageFolder(LabelledFiles, torch.utils.data.Dataset):
    """Single-label images in class folders.

    Attributes: ``classes`` (sorted folder names), ``class_to_idx``, ``samples`` (list of
    ``(path, class_index)``), ``targets`` (list[int]).
    ``ds[i] -> (image, label int)`` where image is ``transform(PIL RGB image)`` (a (3,h,w) tensor
    with the presets), or ``None`` for an unreadable file (its problem is reported; the collate
    function counts it).
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None):
        self.root = Path(root)
        self.transform = transform
        self.classes = find_classes(self.root)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        samples: list[tuple[str, int]] = []
        for idx, cls in enumerate(self.classes):
            for dirpath, dirnames, filenames in sorted(os.walk(self.root / cls, followlinks=True)):
                dirnames.sort()
                for name in sorted(filenames):
                    if is_image_file(name):
                        samples.append((os.path.join(dirpath, name), idx))
        if not samples:
            raise GridcamError(f"{self.root}: no images ({', '.join(IMG_EXTENSIONS)}) in the class folders")
        self.samples = samples
        self.targets = [t for _, t in samples]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)



__all__ = ["IMG_EXTENSIONS", "ImageFolder", "find_classes", "is_image_file"]
