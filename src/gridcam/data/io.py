"""Decoding images robustly: RGB always, a named :class:`BadImage` for anything unreadable.

Datasets call :func:`load_transformed` (or :func:`load_annotated`, which also applies the EXIF
rule) inside ``__getitem__``; it turns every decoding problem into ``BadImage``, whose
``problem`` has a reason code — ``not_found``, ``empty_file``, ``not_an_image``, ``truncated`` (a
JPEG without its end-of-image marker, or PIL's "truncated"), ``corrupt_image``, ``too_large``,
``unreadable`` — so the dataset can hand the problem on instead of letting a worker process die
with a traceback. Problems in the transforms themselves are bugs and are not caught.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

from PIL import Image, UnidentifiedImageError

from gridcam.problems import DataWarning, Problem, ProblemError

from . import transforms as T


class BadImage(ProblemError):
    """An image file that cannot be decoded: ``problem`` (code ``not_found``, ``empty_file``,
    ``not_an_image``, ``truncated``, ``corrupt_image``, ``too_large`` or ``unreadable``), and as
    shortcuts ``path``, ``code`` and ``reason`` (the cause in words)."""

    def __init__(self, path: str | os.PathLike | Problem, reason: str | None = None,
                 code: str = "unreadable"):
        problem = path if isinstance(path, Problem) else Problem(code, str(path), str(reason))
        super().__init__(problem)
        self.path, self.code, self.reason = problem.file, problem.code, problem.cause


def warn(message: str) -> None:
    """Emit a :class:`DataWarning` (printed once per distinct message, also from worker processes)."""
    warnings.warn(message, DataWarning, stacklevel=3)


def _jpeg_without_end(path: str | os.PathLike) -> bool:
    """The file starts as a JPEG (SOI marker) but does not end with the EOI marker."""
    try:
        with open(path, "rb") as f:
            head = f.read(3)
            f.seek(-2, os.SEEK_END)
            return head == b"\xff\xd8\xff" and f.read(2) != b"\xff\xd9"
    except OSError:
        return False


def classify(path: str | os.PathLike, exc: BaseException) -> BadImage:
    """The :class:`BadImage` for an exception PIL raised while opening/decoding ``path``."""
    text = f"{exc}"
    if isinstance(exc, FileNotFoundError):
        return BadImage(path, "file not found", "not_found")
    if isinstance(exc, Image.DecompressionBombError):
        return BadImage(path, f"too large to decode safely ({text})", "too_large")
    try:
        empty = os.path.getsize(path) == 0
    except OSError:
        empty = False
    if empty:
        return BadImage(path, "empty file (0 bytes)", "empty_file")
    if _jpeg_without_end(path):
        return BadImage(path, f"truncated: the JPEG ends before its end-of-image marker "
                              f"({type(exc).__name__}: {text})", "truncated")
    if isinstance(exc, UnidentifiedImageError):
        return BadImage(path, "not an image (PIL cannot identify the format)", "not_an_image")
    if "truncated" in text.lower():
        return BadImage(path, f"truncated image data ({text})", "truncated")
    if isinstance(exc, (IsADirectoryError, PermissionError)):
        return BadImage(path, f"{type(exc).__name__}: {exc.strerror or text}", "unreadable")
    return BadImage(path, f"corrupt image data ({type(exc).__name__}: {text})", "corrupt_image")


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
    except Exception as exc:  # FileNotFoundError, UnidentifiedImageError, OSError, DecompressionBombError
        raise classify(path, exc) from None


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
        raise classify(path, exc) from None


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
    either way. Pixels are used as stored (an EXIF orientation is not applied; see
    :func:`load_annotated`). Raises :class:`BadImage`.
    """
    return _transformed(_open(path), path, transform, rotate=False)


def load_annotated(path: str | os.PathLike, transform: Callable | None,
                   annotated: tuple[int, int] | None) -> tuple[object, tuple[int, int], Problem | None]:
    """:func:`load_transformed` for an image whose annotation says it is ``annotated`` = (H, W).

    Returns ``(output, (H, W) of the frame used, problem or None)``. The EXIF rule: pixels are
    used as stored, unless the JPEG carries an EXIF orientation that swaps width and height
    (5-8) and the annotated size matches the rotated (displayed) frame but not the stored one: then
    the image is rotated as a viewer shows it, so image and annotation agree (``exif_rotated``).
    An EXIF orientation whose frame the sizes cannot tell (a flip or 180 degrees, or a square
    image) is reported and the stored frame used; any other size difference is ``size_mismatch``.
    Raises :class:`BadImage`.
    """
    img = _open(path)
    stored = (img.height, img.width)
    orientation = exif_orientation(img)
    rotate, problem = frame_rule(str(path), stored, orientation, annotated)
    out, size = _transformed(img, path, transform, rotate)
    return out, size, problem


#: EXIF orientation tag value -> how a viewer shows the stored pixels
ORIENTATIONS = {2: "mirrored left-right", 3: "rotated 180 degrees", 4: "mirrored top-bottom",
                5: "transposed", 6: "rotated 90 degrees clockwise", 7: "transversed",
                8: "rotated 90 degrees counter-clockwise"}


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (0x0112) of an opened image, 1 when absent or unreadable."""
    try:
        value = int(img.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block is not a reason to skip the image
        return 1
    return value if value in ORIENTATIONS else 1


def _wxh(hw: tuple[int, int]) -> str:
    return f"{hw[1]}x{hw[0]}"


def frame_rule(path: str, stored: tuple[int, int], orientation: int,
               annotated: tuple[int, int] | None) -> tuple[bool, Problem | None]:
    """``(rotate to the displayed frame?, problem)`` by the rule of :func:`load_annotated`;
    sizes are (H, W)."""
    annotated = tuple(annotated) if annotated is not None and min(annotated) > 0 else None
    exif = (f"carries EXIF orientation {orientation} (displayed {ORIENTATIONS[orientation]})"
            if orientation != 1 else "")
    swaps = orientation >= 5
    displayed = (stored[1], stored[0]) if swaps else stored
    if annotated is None or (annotated == stored and annotated == displayed):
        if not exif or annotated is None:
            return False, None
        return False, Problem("exif_rotated", path, f"{exif}; the sizes cannot tell which frame "
                              f"the annotation was made on: the stored {_wxh(stored)} pixels are used")
    if annotated == stored:
        return False, None  # the annotation matches the stored frame, which is what is used
    if exif and annotated == displayed:
        return True, Problem("exif_rotated", path, f"{exif}; the annotated size {_wxh(annotated)} "
                             f"matches the rotated (displayed) frame, not the stored "
                             f"{_wxh(stored)}: the image is rotated to match")
    also = f"; it {exif} but neither frame matches" if exif else ""
    return False, Problem("size_mismatch", path, f"decoded size {_wxh(stored)} differs from the "
                          f"annotated {_wxh(annotated)} (width x height){also}; the annotation is "
                          f"clipped/padded to the decoded image")


def _transformed(img: Image.Image, path: str | os.PathLike, transform: Callable | None,
                 rotate: bool):
    if rotate:
        from PIL import ImageOps

        pil = ImageOps.exif_transpose(_decode(img, path))
        return (transform(pil) if transform is not None else pil), (pil.height, pil.width)
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


__all__ = ["BadImage", "DataWarning", "load_image", "image_size", "load_transformed",
           "load_annotated", "exif_orientation", "frame_rule", "classify", "warn"]
