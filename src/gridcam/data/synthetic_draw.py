"""The synthetic classes' look and how one object or background is drawn (see
:mod:`gridcam.data.synthetic` for the datasets made from them).

Class ``k`` is a textured shape: one of :data:`SHAPES` filled with one of :data:`TEXTURES` at a
frequency and angle of :data:`VARIANTS`; its two colours are random per image. Backgrounds are
cluttered and carry no class information; the spurious cue is a patch in the class's own hue.
Every function draws from the ``numpy`` generator it is given, so images are deterministic.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw

from gridcam.errors import GridcamError

SHAPES = ["circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross",
          "ring", "crescent"]
TEXTURES = ["striped", "checkered", "dotted", "ringed", "gridded", "chevron", "wavy", "spoked",
            "crosshatched", "sawtooth"]
# (cycles per object radius, pattern angle in degrees); the frequency changes first so that classes
# up to 300 never differ only by the angle of a rotation-symmetric pattern.
VARIANTS = [(f, a) for a in (0, 45, 90, 135) for f in (2.0, 1.25, 3.25)]
MAX_CLASSES = len(SHAPES) * len(TEXTURES) * len(VARIANTS)
# per-image seeds are (seed, split code, index)
_SPLIT_CODES = {"train": 1, "val": 2, "train2014": 1, "val2014": 2}


# ----------------------------------------------------------------------------- class identity
def wnid(k: int) -> str:
    """Deterministic ImageNet-like wnid of class ``k``; sorted order == class order."""
    return f"n{1000000 + 9973 * k:08d}"


def appearance(k: int) -> tuple[int, int, float, float]:
    """``(shape index, texture index, frequency, angle)`` that defines class ``k``."""
    if not 0 <= k < MAX_CLASSES:
        raise GridcamError(f"synthetic data supports 1..{MAX_CLASSES} classes, got class {k}")
    block, r = divmod(k, len(SHAPES) * len(TEXTURES))
    d, s = divmod(r, len(SHAPES))
    f, a = VARIANTS[block]
    return s, (s + d) % len(TEXTURES), f, a


def class_name(k: int) -> str:
    s, t, f, a = appearance(k)
    name = f"{TEXTURES[t]} {SHAPES[s]}"
    return name if k < len(SHAPES) * len(TEXTURES) else f"{name} (f{f:g} a{a:g})"


def cue_color(k: int) -> tuple[int, int, int]:
    """The class's spurious-cue colour: hues spread by the golden ratio, full saturation."""
    r, g, b = colorsys.hsv_to_rgb((k * 0.6180339887) % 1.0, 1.0, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def coco_category_id(k: int) -> int:
    """Category id of synthetic category ``k``: 1, 2, 3, 5, 6, 7, 9, ... (gaps as in COCO)."""
    return 1 + k + k // 3


# ------------------------------------------------------------------------------------ drawing
def _unit_polygon(shape: int) -> np.ndarray:
    """Outline of ``shape`` as (N,2) vertices in a unit frame (radius ~1, y down)."""
    def ngon(n, r=1.0, start=-90.0):
        t = np.deg2rad(start + 360.0 * np.arange(n) / n)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)

    name = SHAPES[shape]
    if name == "circle":
        return ngon(40)
    if name == "square":
        return np.array([[-.85, -.85], [.85, -.85], [.85, .85], [-.85, .85]])
    if name == "triangle":
        return ngon(3)
    if name == "diamond":
        return np.array([[0, -1.0], [.62, 0], [0, 1.0], [-.62, 0]])
    if name == "pentagon":
        return ngon(5)
    if name == "hexagon":
        return ngon(6, start=0.0)
    if name == "star":
        outer, inner = ngon(5), ngon(5, 0.42, -54.0)
        return np.stack([outer, inner], 1).reshape(-1, 2)
    if name == "cross":
        a, b = 0.32, 1.0
        return np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b],
                         [-a, a], [-b, a], [-b, -a], [-a, -a]])
    if name == "ring":  # an annulus with a gap (a "C"), so one polygon describes it exactly
        t = np.deg2rad(np.linspace(30, 330, 34))
        outer = np.stack([np.cos(t), np.sin(t)], 1)
        inner = 0.55 * outer[::-1]
        return np.concatenate([outer, inner])
    # crescent: the right part of the unit circle minus a circle centred at (-0.6, 0)
    t = np.deg2rad(np.linspace(-120, 120, 30))
    outer = np.stack([np.cos(t), np.sin(t)], 1)
    rb = math.hypot(0.1, math.sin(math.radians(120)))
    tb = np.linspace(math.atan2(0.866, 0.1), math.atan2(-0.866, 0.1), 24)
    inner = np.stack([-0.6 + rb * np.cos(tb), rb * np.sin(tb)], 1)
    return np.concatenate([outer, inner])


_POLYS = [_unit_polygon(s) for s in range(len(SHAPES))]


def _pattern(texture: int, u: np.ndarray, v: np.ndarray, f: float) -> np.ndarray:
    """Binary pattern (bool, same shape as ``u``) in object units (radius 1), ``f`` cycles/unit."""
    fu, fv = f * u, f * v
    frac = np.mod
    name = TEXTURES[texture]
    if name == "striped":
        return frac(fu, 1.0) < 0.5
    if name == "checkered":
        return (np.floor(fu) + np.floor(fv)) % 2 == 0
    if name == "dotted":
        return (frac(fu, 1.0) - .5) ** 2 + (frac(fv, 1.0) - .5) ** 2 < 0.1
    if name == "ringed":
        return frac(f * np.hypot(u, v), 1.0) < 0.5
    if name == "gridded":
        return (frac(fu, 1.0) < 0.28) | (frac(fv, 1.0) < 0.28)
    if name == "chevron":
        return frac(fv + np.abs(fu) * 0.8, 1.0) < 0.5
    if name == "wavy":
        return frac(fv + 0.35 * np.sin(np.pi * fu), 1.0) < 0.5
    if name == "spoked":
        return frac(np.arctan2(v, u) * (6 / (2 * np.pi)), 1.0) < 0.5
    if name == "crosshatched":
        s = f / math.sqrt(2)
        return (frac(s * (u + v), 1.0) < 0.25) | (frac(s * (u - v), 1.0) < 0.25)
    return frac(fu, 1.0) < frac(fv, 1.0)  # sawtooth


def _two_colors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours with enough contrast that the pattern is visible."""
    c1 = rng.integers(0, 256, 3)
    c2 = 255 - c1 + rng.integers(-40, 41, 3)
    c2 = np.clip(c2, 0, 255)
    if np.abs(c1 - c2).mean() < 90:
        c2 = np.where(c1 > 127, 0, 255) + rng.integers(-30, 31, 3) * np.where(c1 > 127, 1, -1)
        c2 = np.clip(c2, 0, 255)
    return c1.astype(np.uint8), c2.astype(np.uint8)


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A cluttered, class-free background: colour field + blobs/bars/lines/noise patches + noise."""
    field = Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8), "RGB")
    img = field.resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    side = min(width, height)
    for _ in range(int(rng.integers(6, 14))):
        kind = int(rng.integers(0, 4))
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w = int(rng.integers(side // 12 + 1, side // 3 + 2))
        h = int(rng.integers(side // 12 + 1, side // 3 + 2))
        if kind == 0:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=col)
        elif kind == 1:
            draw.rectangle([x0, y0, x0 + w, y0 + h // 3 + 1], fill=col)
        elif kind == 2:
            x1, y1 = int(rng.integers(0, width)), int(rng.integers(0, height))
            draw.line([x0, y0, x1, y1], fill=col, width=int(rng.integers(1, max(2, side // 40) + 1)))
        else:  # a patch of random noise: "textured" does not by itself mean "object"
            x1, y1 = min(x0 + w // 2 + 1, width), min(y0 + h // 2 + 1, height)
            if x1 > x0 and y1 > y0:
                noise = rng.integers(0, 256, (y1 - y0, x1 - x0, 3), dtype=np.uint8)
                img.paste(Image.fromarray(noise, "RGB"), (x0, y0))
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-10, 11, (height, width, 3), dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _cue_box(rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
    """A corner square (x0, y0, x1, y1) exclusive for the spurious cue."""
    s = max(4, round(0.16 * min(width, height)))
    m = max(1, round(0.03 * min(width, height)))
    corner = int(rng.integers(0, 4))
    x0 = m if corner in (0, 2) else width - m - s
    y0 = m if corner in (0, 1) else height - m - s
    return x0, y0, x0 + s, y0 + s


def _overlaps(a, b, margin: int = 1) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1]
                or b[3] + margin <= a[1])


def _place(rng, width, height, radius, occupied, tries: int = 30):
    """Centre for an object of ``radius`` px fully inside the image, away from ``occupied`` boxes."""
    ext = radius * 1.2  # rotation + aspect jitter stay within this
    lo_x, hi_x, lo_y, hi_y = ext, width - ext, ext, height - ext
    if hi_x < lo_x or hi_y < lo_y:
        return None
    for _ in range(tries):
        cx, cy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
        box = (cx - ext, cy - ext, cx + ext, cy + ext)
        if not any(_overlaps(box, o) for o in occupied):
            return cx, cy, box
    return None


def _draw_object(arr: np.ndarray, rng: np.random.Generator, k: int, cx: float, cy: float,
                 radius: float) -> tuple[np.ndarray, tuple[int, int, int, int], np.ndarray]:
    """Paint class ``k``'s textured shape into ``arr`` (H,W,3 uint8) in place.

    Returns the outline (N,2) in image coordinates, the tight pixel box ``(x0, y0, x1, y1)``
    (0-based inclusive) of the painted pixels, and their (y1-y0+1, x1-x0+1) bool mask.
    """
    height, width = arr.shape[:2]
    shape, texture, freq, angle = appearance(k)
    rot = math.radians(rng.uniform(-15, 15))
    asp = rng.uniform(0.85, 1.15)
    poly = _POLYS[shape] * np.array([asp, 1.0 / asp])
    c, s = math.cos(rot), math.sin(rot)
    poly = poly @ np.array([[c, s], [-s, c]]) * radius + np.array([cx, cy])
    poly[:, 0] = poly[:, 0].clip(0, width)
    poly[:, 1] = poly[:, 1].clip(0, height)
    x0, y0 = int(math.floor(poly[:, 0].min())), int(math.floor(poly[:, 1].min()))
    x1, y1 = min(int(math.ceil(poly[:, 0].max())), width), min(int(math.ceil(poly[:, 1].max())), height)
    region = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(region).polygon([(float(x) - x0, float(y) - y0) for x, y in poly], fill=1)
    mask = np.asarray(region, dtype=bool)
    # pattern coordinates: pixel centres in the object's own (rotated) frame, radius 1
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dx, dy = (xs + 0.5 - cx) / radius, (ys + 0.5 - cy) / radius
    t = rot + math.radians(angle)
    ct, st = math.cos(t), math.sin(t)
    u, v = ct * dx + st * dy, -st * dx + ct * dy
    pat = _pattern(texture, u, v, freq)
    c1, c2 = _two_colors(rng)
    sub = arr[y0:y1, x0:x1]
    sub[mask & pat] = c1
    sub[mask & ~pat] = c2
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return poly, (x0, y0, x0, y0), mask[:0, :0]
    bx0, bx1, by0, by1 = x0 + cols[0], x0 + cols[-1], y0 + rows[0], y0 + rows[-1]
    return poly, (int(bx0), int(by0), int(bx1), int(by1)), mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])
