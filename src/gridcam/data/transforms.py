"""Image transforms: torchvision's own, plus the JPEG decode-time downscaling gridcam adds.

The presets are the paper's (DESIGN.md, "Recipes"), built from ``torchvision.transforms`` on PIL
images (bilinear with antialiasing): :func:`train_transform` (RandomResizedCrop + flip), the
ImageNet :func:`val_transform` (Resize(256) + CenterCrop(224)), :func:`coco_val_transform`
(Resize((224, 224))) and the localisation :func:`eval_transform` (shorter side ``input_resize``,
no crop). Each ends with ``ToTensor`` + ``Normalize`` (:func:`to_tensor_normalize`).

What torchvision lacks, and gridcam keeps: **JPEG decode-time downscaling** (``Image.draft``).
:class:`Resize` and :class:`RandomResizedCrop` are torchvision's classes with one more method,
``plan(width, height)``, which chooses the crop box and output size from the *original* size
before anything is decoded, drawing the RNG with exactly the calls torchvision's ``forward``
makes (its own ``get_params``). When an image is loaded through
:func:`gridcam.data.io.load_transformed` and the kept region is at least twice the output size on
both axes, libjpeg then decodes at 1/2, 1/4 or 1/8 scale (its scaled IDCT, a proper low-pass)
keeping the region at least :data:`DRAFT_MARGIN` (1x) the output size, and the remaining bilinear
resize works from there. Measured on 640x480 JPEGs resized to a 224 shorter side: 1.5x faster;
pixels differ from the full decode by 1/255 on average (99th percentile about 12/255, at hard
edges). It applies to training crops and classification-validation resizes of large photos (COCO's
640x480 -> 224), never to upscaling, and never to localisation evaluation
(:func:`eval_transform` turns it off: metrics are computed on exact pixels). Set
:data:`USE_DRAFT` to ``False`` (or env ``GRIDCAM_JPEG_DRAFT=0``) for torchvision's pixels
everywhere. Without a loader (called on a decoded image) every transform here *is* torchvision's.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Sequence

import torch
import torchvision.transforms as tvt
import torchvision.transforms.functional as TF
from PIL import Image

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Use JPEG decode-time downscaling when it saves work (see the module docstring).
USE_DRAFT: bool = os.environ.get("GRIDCAM_JPEG_DRAFT", "1") not in ("0", "false", "no")
#: The kept region must stay at least this many times the output size (both axes) after the draft.
DRAFT_MARGIN: float = 1.0

Box = tuple[int, int, int, int]  # (left, top, right, bottom) in pixels of the original image

# torchvision's own transforms, used as they are
CenterCrop = tvt.CenterCrop
RandomHorizontalFlip = tvt.RandomHorizontalFlip


class Compose(tvt.Compose):
    """torchvision's ``Compose``. ``allow_draft=False`` makes loaders decode JPEGs at full
    resolution (torchvision's exact pixels), as localisation evaluation wants: a 1/255 difference
    can move a pointing-game point."""

    def __init__(self, transforms: Iterable[Callable], allow_draft: bool = True):
        super().__init__(list(transforms))
        self.allow_draft = allow_draft


class _Plannable:
    """A torchvision crop-and-resize transform split in two phases, so a JPEG loader can choose
    the box from the original size and decode at a reduced scale (``Image.draft``).

    ``plan(w, h) -> (box, (out_w, out_h))`` draws any random numbers, as ``forward`` would;
    ``apply(img, box, out)`` does the pixel work on an image of the original size with
    torchvision's functional ops (so ``apply(img, *plan(...))`` equals ``forward(img)``);
    :func:`apply_scaled` does it on a drafted one.
    """

    interpolation: TF.InterpolationMode

    def plan(self, width: int, height: int) -> tuple[Box, tuple[int, int]]:
        raise NotImplementedError

    def apply(self, img: Image.Image, box: Box, out: tuple[int, int]) -> Image.Image:
        left, top, right, bottom = box
        return TF.resized_crop(img, top, left, bottom - top, right - left, [out[1], out[0]],
                               self.interpolation, antialias=True)


class Resize(_Plannable, tvt.Resize):
    """torchvision's ``Resize`` (shorter side ``size``, or exactly ``(h, w)``; bilinear) with
    :meth:`plan`."""

    def __init__(self, size: int | Sequence[int]):
        if not isinstance(size, int) and len(size) not in (1, 2):
            raise ValueError(f"Resize size must be an int or (h, w), got {size}")
        super().__init__(size if isinstance(size, int) else [int(s) for s in size], antialias=True)

    def plan(self, width: int, height: int) -> tuple[Box, tuple[int, int]]:
        return (0, 0, width, height), resized_output_size(width, height, self.size)


class RandomResizedCrop(_Plannable, tvt.RandomResizedCrop):
    """torchvision's ``RandomResizedCrop`` (bilinear) with :meth:`plan`."""

    def __init__(self, size: int | Sequence[int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)):
        if scale[0] > scale[1] or ratio[0] > ratio[1]:
            raise ValueError(f"scale and ratio must be (min, max), got {scale}, {ratio}")
        super().__init__(size, scale=scale, ratio=ratio, antialias=True)

    def plan(self, width: int, height: int) -> tuple[Box, tuple[int, int]]:
        # get_params reads only the size of its image: a zero-stride (1,H,W) view stands in for
        # the image not decoded yet, so the RNG calls are exactly forward()'s.
        i, j, h, w = self.get_params(torch.empty(1).expand(1, height, width), self.scale, self.ratio)
        return (j, i, j + w, i + h), (self.size[1], self.size[0])


def to_tensor_normalize(mean: Sequence[float] = IMAGENET_MEAN,
                        std: Sequence[float] = IMAGENET_STD) -> tvt.Compose:
    """PIL image (H,W) -> float32 tensor (3,H,W): RGB, ``/255``, then ``(x - mean) / std``
    (torchvision's ``ToTensor`` + ``Normalize``; a non-RGB image is converted to RGB first)."""
    return tvt.Compose([tvt.Lambda(_rgb), tvt.ToTensor(), tvt.Normalize(list(mean), list(std))])


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def apply_scaled(img: Image.Image, box: Box, out: tuple[int, int], scale: float) -> Image.Image:
    """Resize the region ``box`` (original-image pixels) of ``img``, decoded at 1/``scale`` of the
    original size, to ``out``. PIL's ``resize(box=...)`` takes the fractional box directly."""
    fbox = tuple(v / scale for v in box)
    return img.resize(out, Image.Resampling.BILINEAR, box=fbox)


def draft_scale(box: Box, out: tuple[int, int], margin: float | None = None) -> int:
    """The largest JPEG decode reduction in {1, 2, 4, 8} keeping the kept region ``box`` at least
    ``margin`` (default :data:`DRAFT_MARGIN`) times the output size ``out`` on both axes."""
    margin = DRAFT_MARGIN if margin is None else margin
    bw, bh = box[2] - box[0], box[3] - box[1]
    for s in (8, 4, 2):
        if bw / s >= margin * out[0] and bh / s >= margin * out[1]:
            return s
    return 1


def resized_output_size(width: int, height: int, size: int | Sequence[int]) -> tuple[int, int]:
    """``(out_w, out_h)`` of :class:`Resize` for an image ``width`` x ``height``, without decoding
    it (torchvision's rule: the shorter side becomes ``size``, the longer is truncated with
    ``int``; ``(h, w)`` is taken as it is)."""
    if isinstance(size, int) or len(size) == 1:
        s = size if isinstance(size, int) else int(size[0])
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = s, int(s * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)
    return int(size[1]), int(size[0])


def denormalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Inverse of the normalisation, for display: (...,3,H,W) -> values in [0,1]."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x * s + m).clamp_(0.0, 1.0)


# ------------------------------------------------------------------------------------ presets
def train_transform(size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD,
                    scale: tuple[float, float] = (0.08, 1.0)) -> Compose:
    """Training recipe (ImageNet and COCO): RandomResizedCrop(size) + flip + normalize
    (``mean``/``std``: ImageNet's unless the model's own configuration says otherwise; ``scale``:
    the crop's share of the image area, torchvision's default (0.08, 1))."""
    return Compose([RandomResizedCrop(size, scale=scale), RandomHorizontalFlip(),
                    to_tensor_normalize(mean, std)])


def val_transform(resize: int = 256, crop: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD) -> Compose:
    """ImageNet validation: Resize(shorter side ``resize``) + CenterCrop(``crop``) + normalize."""
    return Compose([Resize(resize), CenterCrop(crop), to_tensor_normalize(mean, std)])


def coco_val_transform(size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD) -> Compose:
    """COCO validation: Resize((size, size)) (aspect not kept, as the paper) + normalize."""
    return Compose([Resize((size, size)), to_tensor_normalize(mean, std)])


def eval_transform(input_resize: int, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> Compose:
    """Localisation evaluation: shorter side ``input_resize`` (paper: 448), no crop, normalize.
    JPEGs are decoded in full (no draft), so pixels equal torchvision's."""
    return Compose([Resize(input_resize), to_tensor_normalize(mean, std)], allow_draft=False)


def first_geometric(transform: Callable) -> tuple[_Plannable | None, Callable | None]:
    """Split ``transform`` into a leading draft-capable crop/resize and the rest (or ``None``s)."""
    if isinstance(transform, _Plannable):
        return transform, None
    if isinstance(transform, Compose) and transform.allow_draft and transform.transforms and isinstance(
            transform.transforms[0], _Plannable):
        rest = transform.transforms[1:]
        return transform.transforms[0], (Compose(rest) if rest else None)
    return None, None


__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "Compose", "Resize", "CenterCrop", "RandomResizedCrop",
    "RandomHorizontalFlip", "to_tensor_normalize", "denormalize", "train_transform", "val_transform",
    "coco_val_transform", "eval_transform", "resized_output_size", "draft_scale", "apply_scaled",
    "first_geometric", "USE_DRAFT", "DRAFT_MARGIN",
]
