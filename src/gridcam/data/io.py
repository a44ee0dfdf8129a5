"""Decoding images robustly: RGB always, a named :class:`BadImage` for anything unreadable.

Datasets call :func:`load_transformed` inside ``__getitem__``; it turns every decoding problem
(missing file, not an image, truncated or corrupt JPEG, decompression bomb) into ``BadImage`` so the
dataset can warn with the file name and return ``None`` instead of letting a worker process die with
a traceback. Problems in the transforms themselves are bugs and are not caught.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

from PIL import Image

from gridcam.errors import GridcamError

from . import transforms as T


class BadImage(GridcamError):
    """An image file that cannot be decoded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self):  # picklable across DataLoader workers
        return (BadImage, (self.path, self.reason))


class DataWarning(UserWarning):
    """A data item was skipped or repaired; the message names the file."""


def warn(message: str) -> None:
    """Emit a :class:`DataWarning` (printed once per distinct message, also from worker processes)."""
    warnings.warn(message, DataWarning, stacklevel=3)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale, CMYK, palette, RGBA, 16-bit -> RGB (CMYK JPEGs are inverted Adobe CMYK; PIL handles it)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's palette-transparency warning
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping.
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray((arr / top * 255.0).clip(0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def _open(path: str | os.PathLike) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise BadImage(path, "file not found") from None
    except Exception as exc:  # UnidentifiedImageError, OSError, DecompressionBombError, ...
        raise BadImage(path, f"{type(exc).__name__}: {exc}") from None


def _decode(img: Image.Image, path: str | os.PathLike) -> Image.Image:
    """Load the pixels of the lazily opened ``img`` and return an RGB image independent of the file.

    Closes ``img`` on failure. On success the file is already closed by ``load()`` (single-frame
    images) or released here (multi-frame files keep it open, so the frame is copied).
    """
    try:
        img.load()
        out = _to_rgb(img)
        if out is img and getattr(img, "n_frames", 1) > 1:
            out = img.copy()
        if out is not img:
            img.close()
        return out
    except Exception as exc:  # truncated / corrupt data surfaces here, as OSError, SyntaxError, ...
        img.close()
        raise BadImage(path, f"{type(exc).__name__}: {exc}") from None


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully to an RGB PIL image (grayscale/CMYK/palette converted).

    Raises :class:`BadImage` (naming the file) for a missing, truncated or corrupt file.
    """
    return _decode(_open(path), path)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(H, W)`` from the file header only (no pixel decoding); raises :class:`BadImage`."""
    img = _open(path)
    try:
        return img.height, img.width
    finally:
        img.close()


def load_transformed(path: str | os.PathLike, transform: Callable | None):
    """Decode ``path`` and apply ``transform``; returns ``(output, (H, W) original size)``.

    If ``transform`` starts with ``Resize`` or ``RandomResizedCrop`` and the file is a JPEG, the
    crop box and output size are chosen from the original size first and libjpeg decodes at a
    reduced scale when the output is at most half the kept region (see
    :mod:`gridcam.data.transforms`); the random numbers drawn and the output shape are the same
    either way. Raises :class:`BadImage`.
    """
    img = _open(path)
    size = (img.height, img.width)
    geo, rest = (T.first_geometric(transform) if (T.USE_DRAFT and transform is not None)
                 else (None, None))
    if geo is None or img.format != "JPEG":
        pil = _decode(img, path)
        return (transform(pil) if transform is not None else pil), size
    box, out = geo.plan(img.width, img.height)  # draws the RNG exactly as geo(pil) would
    s = T.draft_scale(box, out)
    scale = 1.0
    if s > 1:
        try:
            res = img.draft(img.mode, (img.width // s, img.height // s))
        except Exception:  # an odd JPEG the draft path cannot handle: decode in full
            res = None
        if res is not None:
            scale = size[1] / res[1][2]
    pil = _decode(img, path)
    x = T.apply_scaled(pil, box, out, scale) if scale != 1.0 else geo.apply(pil, box, out)
    return (rest(x) if rest is not None else x), size


__all__ = ["BadImage", "DataWarning", "load_image", "image_size", "load_transformed", "warn"]
