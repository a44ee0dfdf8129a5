"""An image's identity, so that per-image randomness (the SPG draws) never depends on its neighbours.

Seeding by an image's *position* makes its SPG value change when the folder holds other files or
``--limit`` changes. :func:`image_key` names the image instead (the file name for ImageNet val,
the image id for COCO, the path under the root for class folders) and :func:`key_seed` turns
``(seed, key)`` into a 63-bit seed with BLAKE2b — stable across processes, machines and Python
versions (Python's ``hash()`` of a string is salted per process, so it is not used).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch


def image_key(dataset: Any, index: int) -> str:
    """The identity of item ``index`` of ``dataset``: ``dataset.image_key(index)`` when the dataset
    has one (every gridcam reader does), through ``torch.utils.data.Subset``; else ``"#index"``
    (a dataset that cannot name its items is seeded by position)."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset, index = dataset.dataset, int(dataset.indices[index])
    fn = getattr(dataset, "image_key", None)
    if callable(fn):
        return str(fn(index))
    return f"#{int(index)}"


def image_path(dataset: Any, index: int) -> str | None:
    """The image file of item ``index`` (``dataset.image_path(index)``, through ``Subset``), or
    None for a dataset that cannot say. A Problem names the file at fault, which may be the
    annotation; per-image records name the image with this."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset, index = dataset.dataset, int(dataset.indices[index])
    fn = getattr(dataset, "image_path", None)
    return str(fn(index)) if callable(fn) else None


def key_seed(seed: int, key: str) -> int:
    """A seed in [0, 2**63) from ``(seed, key)``: the first 8 bytes of BLAKE2b over both,
    little-endian. ``key_seed(0, "ILSVRC2012_val_00000001.JPEG")`` is the same everywhere."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


__all__ = ["image_key", "image_path", "key_seed"]
