"""Image transforms with torchvision's semantics, written on PIL because torchvision cannot be
imported on the machines this project targets.

Every transform takes a PIL image and returns a PIL image, except :class:`ToTensorNormalize`, which
returns a float tensor (3,h,w). Random choices draw from ``torch``'s global RNG with the same calls
in the same order as torchvision 0.15+, so ``torch.manual_seed`` (and the DataLoader's per-worker
seeding) makes them reproducible and, for the same seed, they pick the same crops and flips that
torchvision would.

Semantics reproduced exactly (all on PIL images, bilinear with PIL's antialiasing filter, as
torchvision does for PIL inputs):

- ``Resize(int)``: the shorter side becomes ``size`` and the longer ``int(size * long / short)``
  (truncation, not rounding). ``Resize((h, w))`` resizes to exactly that.
- ``CenterCrop``: offsets ``int(round((H - th) / 2.0))``; a crop larger than the image is zero-padded
  first, ``(th - H) // 2`` before and the rest after, as ``torchvision.transforms.functional.center_crop``.
- ``RandomResizedCrop``: 10 attempts of (area ~ U(scale) * H*W, log-aspect ~ U(log ratio)),
  ``w = int(round(sqrt(area * ar)))``, ``h = int(round(sqrt(area / ar)))``, then top/left from
  ``torch.randint``; if all fail, a central crop clamped to the ratio range.
- ``RandomHorizontalFlip``: flips when ``torch.rand(1) < p``.
- ``ToTensorNormalize``: uint8 HWC -> float CHW ``/ 255``, then ``(x - mean) / std``.

JPEG decode-time downscaling (``Image.draft``): when an image is loaded through
:func:`gridcam.data.io.load_transformed`, a geometric first transform (``Resize`` or
``RandomResizedCrop``) first chooses its crop box and output size from the *original* size, so the
RNG calls, the crop box and the output shape are exactly those of the plain transform. Then, if the
kept region is at least twice the output size on both axes, libjpeg decodes at 1/2, 1/4 or 1/8
scale (its scaled IDCT, a proper low-pass) keeping the region at least :data:`DRAFT_MARGIN` (1x)
the output size, and the remaining bilinear resize works from there. Measured on 640x480 JPEGs
resized to a 224 shorter side: 1.5x faster; pixels differ from the full decode by 1/255 on average
(99th percentile about 12/255, at hard edges). It applies to training crops and classification-validation
resizes of large photos (COCO's 640x480 -> 224), never to upscaling, and never to localisation
evaluation (:func:`eval_transform` turns it off: metrics are computed on exact pixels). Set :data:`USE_DRAFT` to ``False`` (or env ``GRIDCAM_JPEG_DRAFT=0``) for
bit-exact torchvision behaviour.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Use JPEG decode-time downscaling when it saves work (see the module docstring).
USE_DRAFT: bool = os.environ.get("GRIDCAM_JPEG_DRAFT", "1") not in ("0", "false", "no")
#: The kept region must stay at least this many times the output size (both axes) after the draft.
DRAFT_MARGIN: float = 1.0

_BILINEAR = Image.Resampling.BILINEAR

Box = tuple[int, int, int, int]  # (left, top, right, bottom) in pixels of the original image


class Compose:
    """Apply ``transforms`` in order (like ``torchvision.transforms.Compose``).

    ``allow_draft=False`` makes loaders decode JPEGs at full resolution (bit-exact pixels), as
    localisation evaluation wants: a 1/255 difference can move a pointing-game point.
    """

    def __init__(self, transforms: Iterable[Callable], allow_draft: bool = True):
        self.transforms = list(transforms)
        self.allow_draft = allow_draft

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose({inner}\n)"


class _Geometric:
    """A transform that is a crop box followed by a resize, in two phases so a JPEG loader can
    choose the box from the original size and decode at a reduced scale (``Image.draft``).

    ``plan(w, h) -> (box, (out_w, out_h))`` draws any random numbers; ``apply(img, box, out)`` does
    the pixel work on an image of the original size; :func:`apply_scaled` on a drafted one.
    """

    def plan(self, width: int, height: int) -> tuple[Box, tuple[int, int]]:
        raise NotImplementedError

    def apply(self, img: Image.Image, box: Box, out: tuple[int, int]) -> Image.Image:
        left, top, right, bottom = box
        if (left, top, right, bottom) != (0, 0, img.width, img.height):
            img = img.crop(box)
        if img.size == tuple(out):
            return img
        return img.resize(out, _BILINEAR)

    def __call__(self, img: Image.Image) -> Image.Image:
        box, out = self.plan(img.width, img.height)
        return self.apply(img, box, out)


def apply_scaled(img: Image.Image, box: Box, out: tuple[int, int], scale: float) -> Image.Image:
    """Resize the region ``box`` (original-image pixels) of ``img``, decoded at 1/``scale`` of the
    original size, to ``out``. PIL's ``resize(box=...)`` takes the fractional box directly."""
    fbox = tuple(v / scale for v in box)
    return img.resize(out, _BILINEAR, box=fbox)


def draft_scale(box: Box, out: tuple[int, int], margin: float | None = None) -> int:
    """The largest JPEG decode reduction in {1, 2, 4, 8} keeping the kept region ``box`` at least
    ``margin`` (default :data:`DRAFT_MARGIN`) times the output size ``out`` on both axes."""
    margin = DRAFT_MARGIN if margin is None else margin
    bw, bh = box[2] - box[0], box[3] - box[1]
    for s in (8, 4, 2):
        if bw / s >= margin * out[0] and bh / s >= margin * out[1]:
            return s
    return 1


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if len(size) == 1:
        return int(size[0]), int(size[0])
    return int(size[0]), int(size[1])


def resized_output_size(width: int, height: int, size: int | Sequence[int]) -> tuple[int, int]:
    """``(out_w, out_h)`` of :class:`Resize` for an image ``width`` x ``height`` (torchvision's
    ``_compute_resized_output_size``: ``int`` truncation of the long side)."""
    if isinstance(size, int) or len(size) == 1:
        s = size if isinstance(size, int) else int(size[0])
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = s, int(s * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)
    return int(size[1]), int(size[0])


class Resize(_Geometric):
    """Resize so the shorter side is ``size`` (int) or to exactly ``(h, w)``; bilinear."""

    def __init__(self, size: int | Sequence[int]):
        if not isinstance(size, int):
            size = tuple(int(s) for s in size)
            if len(size) not in (1, 2):
                raise ValueError(f"Resize size must be an int or (h, w), got {size}")
        self.size = size

    def plan(self, width: int, height: int) -> tuple[Box, tuple[int, int]]:
        return (0, 0, width, height), resized_output_size(width, height, self.size)

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


class CenterCrop:
    """Crop the centre ``size`` (int or (h, w)); zero-pads first when the crop is larger."""

    def __init__(self, size: int | Sequence[int]):
        self.size = _pair(size)

    def __call__(self, img: Image.Image) -> Image.Image:
        th, tw = self.size
        w, h = img.size
        if tw > w or th > h:
            # torchvision pads (t - s) // 2 before and the rest after, then crops.
            pad_l = (tw - w) // 2 if tw > w else 0
            pad_t = (th - h) // 2 if th > h else 0
            pad_r = (tw - w + 1) // 2 if tw > w else 0
            pad_b = (th - h + 1) // 2 if th > h else 0
            padded = Image.new(img.mode, (w + pad_l + pad_r, h + pad_t + pad_b), 0)
            padded.paste(img, (pad_l, pad_t))
            img = padded
            w, h = img.size
            if (w, h) == (tw, th):
                return img
        top = int(round((h - th) / 2.0))
        left = int(round((w - tw) / 2.0))
        return img.crop((left, top, left + tw, top + th))

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


class RandomResizedCrop(_Geometric):
    """torchvision's RandomResizedCrop: a random area/aspect crop resized to ``size`` (bilinear)."""

    def __init__(self, size: int | Sequence[int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)):
        self.size = _pair(size)  # (h, w)
        if scale[0] > scale[1] or ratio[0] > ratio[1]:
            raise ValueError(f"scale and ratio must be (min, max), got {scale}, {ratio}")
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)

    @staticmethod
    def get_params(width: int, height: int, scale: Sequence[float],
                   ratio: Sequence[float]) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of the crop, drawing from torch's RNG exactly as torchvision."""
        area = height * width
        log_ratio = torch.log(torch.tensor(ratio))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
            aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
            w = int(round(math.sqrt(target_area * aspect_ratio)))
            h = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < w <= width and 0 < h <= height:
                i = int(torch.randint(0, height - h + 1, size=(1,)).item())
                j = int(torch.randint(0, width - w + 1, size=(1,)).item())
                return i, j, h, w
        # Fallback to a central crop with the aspect ratio clamped to the allowed range.
        in_ratio = float(width) / float(height)
        if in_ratio < min(ratio):
            w = width
            h = int(round(w / min(ratio)))
        elif in_ratio > max(ratio):
            h = height
            w = int(round(h * max(ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def plan(self, width: int, height: int) -> tuple[Box, tuple[int, int]]:
        i, j, h, w = self.get_params(width, height, self.scale, self.ratio)
        return (j, i, j + w, i + h), (self.size[1], self.size[0])

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p`` (``torch.rand(1) < p``, as torchvision)."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(1) < self.p:
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ToTensorNormalize:
    """PIL RGB image (H,W) -> float32 tensor (3,H,W): ``/255`` then ``(x - mean) / std``."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "RGB":
            img = img.convert("RGB")
        # np.array copies into a writable buffer (np.asarray on PIL is read-only, which torch warns about).
        arr = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))
        x = arr.permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format)
        return x.div_(255.0).sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return f"ToTensorNormalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def denormalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Inverse of :class:`ToTensorNormalize` for display: (...,3,H,W) -> values in [0,1]."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x * s + m).clamp_(0.0, 1.0)


# ------------------------------------------------------------------------------------ presets
def train_transform(size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> Compose:
    """Training recipe (ImageNet and COCO): RandomResizedCrop(size) + flip + normalize
    (``mean``/``std``: ImageNet's unless the model's own configuration says otherwise)."""
    return Compose([RandomResizedCrop(size), RandomHorizontalFlip(), ToTensorNormalize(mean, std)])


def val_transform(resize: int = 256, crop: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD) -> Compose:
    """ImageNet validation: Resize(shorter side ``resize``) + CenterCrop(``crop``) + normalize."""
    return Compose([Resize(resize), CenterCrop(crop), ToTensorNormalize(mean, std)])


def coco_val_transform(size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD) -> Compose:
    """COCO validation: Resize((size, size)) (aspect not kept, as the paper) + normalize."""
    return Compose([Resize((size, size)), ToTensorNormalize(mean, std)])


def eval_transform(input_resize: int, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> Compose:
    """Localisation evaluation: shorter side ``input_resize`` (paper: 448), no crop, normalize.
    JPEGs are decoded in full (no draft), so pixels equal torchvision's."""
    return Compose([Resize(input_resize), ToTensorNormalize(mean, std)], allow_draft=False)


def first_geometric(transform: Callable) -> tuple[_Geometric | None, Callable | None]:
    """Split ``transform`` into a leading draft-capable geometric step and the rest (or ``None``s)."""
    if isinstance(transform, _Geometric):
        return transform, None
    if isinstance(transform, Compose) and transform.allow_draft and transform.transforms and isinstance(
            transform.transforms[0], _Geometric):
        rest = transform.transforms[1:]
        return transform.transforms[0], (Compose(rest) if rest else None)
    return None, None


__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "Compose", "Resize", "CenterCrop", "RandomResizedCrop",
    "RandomHorizontalFlip", "ToTensorNormalize", "denormalize", "train_transform", "val_transform",
    "coco_val_transform", "eval_transform", "resized_output_size", "draft_scale", "apply_scaled",
    "first_geometric", "USE_DRAFT", "DRAFT_MARGIN",
]
