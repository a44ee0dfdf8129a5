"""Heatmap overlays: a heatmap coloured with a matplotlib colormap and blended over the image.

The pictures of ``gridcam explain`` and ``gridcam report`` are :func:`heat_panel` s: the image at
display size (:func:`for_display`: small images are enlarged by a whole factor with
nearest-neighbour, so every pixel stays a sharp square; larger ones are resized smoothly), the
heatmap blended over it on one colour scale, a colour bar beside it drawn at that size, and caption
lines above it that wrap rather than being cut.

The colour scale (:func:`relative_to_mean`) is the heatmap's value divided by its mean over the
image, from 0 (bottom of the bar) to the map's peak, but never less than :data:`SCALE_FLOOR` times
the mean: the bar's "mean" tick is the level of a map that spreads evenly. A flat map (RISE on an
image the model is unsure about) is then one even middle colour, not "high everywhere", and a
peaked Grad-CAM reads, e.g., "12x": its hottest pixel carries 12 times the average share of the
map. The scale does not depend on the method's units, so maps of different methods compare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw


#: The top of the colour scale is at least this many times the map's mean (see the module doc).
SCALE_FLOOR = 2.0


def colorize(heatmap: torch.Tensor | np.ndarray, cmap: str = "jet", vmax: float | None = None) -> np.ndarray:
    """(H,W) non-negative heatmap -> (H,W,3) uint8 RGB: ``heatmap / vmax`` clipped to [0, 1]
    through ``cmap`` (``vmax`` None: the map's own maximum)."""
    from matplotlib import colormaps

    h = heatmap.detach().float().cpu().numpy() if isinstance(heatmap, torch.Tensor) else np.asarray(heatmap, np.float32)
    peak = (float(h.max()) if h.size else 0.0) if vmax is None else float(vmax)
    h = np.clip(h / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(h)
    return (colormaps[cmap](h)[..., :3] * 255).astype(np.uint8)


def relative_to_mean(heatmap: torch.Tensor | np.ndarray) -> tuple[np.ndarray, float]:
    """(H,W) heatmap -> (the map divided by its mean (H,W) float32, the top of its colour scale:
    ``max(peak, SCALE_FLOOR)``). An all-zero (or negative-only) map gives zeros and
    ``SCALE_FLOOR``."""
    h = heatmap.detach().float().cpu().numpy() if isinstance(heatmap, torch.Tensor) else np.asarray(heatmap, np.float32)
    h = np.nan_to_num(np.clip(h, 0.0, None).astype(np.float32))
    mean = float(h.mean()) if h.size else 0.0
    if mean <= 0:
        return np.zeros_like(h), SCALE_FLOOR
    rel = h / mean
    return rel, max(float(rel.max()), SCALE_FLOOR)


def overlay(image: Image.Image, heatmap: torch.Tensor | np.ndarray, alpha: float = 0.5,
            boxes: Sequence[Sequence[float]] = (), point: tuple[int, int] | None = None,
            cmap: str = "jet", vmax: float | None = None) -> Image.Image:
    """Blend a heatmap over ``image`` (resized bilinearly to the image size if needed).

    ``boxes``: (xmin, ymin, xmax, ymax) 0-based pixel boxes drawn in white; ``point``: (y, x) of the
    pointing-game point, drawn as a cross; ``vmax``: the value at the top of the colour scale
    (None: the map's maximum).
    """
    image = image.convert("RGB")
    heat = torch.as_tensor(np.asarray(heatmap, dtype=np.float32) if not isinstance(heatmap, torch.Tensor) else heatmap)
    if tuple(heat.shape[-2:]) != (image.height, image.width):
        heat = torch.nn.functional.interpolate(heat.float()[None, None], size=(image.height, image.width),
                                               mode="bilinear", align_corners=False)[0, 0]
    colored = Image.fromarray(colorize(heat, cmap, vmax))
    out = Image.blend(image, colored, alpha)
    draw = ImageDraw.Draw(out)
    for box in boxes:
        draw.rectangle([float(v) for v in box], outline=(255, 255, 255), width=2)
    if point is not None:
        y, x = point
        r = max(3, min(image.size) // 40)
        draw.line([(x - r, y), (x + r, y)], fill=(255, 255, 255), width=2)
        draw.line([(x, y - r), (x, y + r)], fill=(255, 255, 255), width=2)
    return out


def save_overlay_grid(rows: Sequence[Sequence[Image.Image]], path: str | Path,
                      labels: Sequence[str] = (), cell: int = 160) -> Path:
    """Paste ``rows`` of images into one PNG (each cell ``cell`` px square); ``labels`` head columns."""
    n_rows, n_cols = len(rows), max((len(r) for r in rows), default=0)
    top = 18 if labels else 0
    sheet = Image.new("RGB", (n_cols * cell, top + n_rows * cell), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, text in enumerate(labels):
        draw.text((c * cell + 4, 3), str(text), fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            sheet.paste(img.convert("RGB").resize((cell, cell), Image.BILINEAR), (c * cell, top + r * cell))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


# ------------------------------------------------------------------------- captions and sheets
def font(size: int = 14):
    """PIL's built-in scalable font (no font files needed)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def fit(image: Image.Image, height: int, max_width: int | None = None) -> Image.Image:
    """Resize to ``height`` px keeping the aspect ratio (width capped at ``max_width``)."""
    w = max(1, round(image.width * height / max(1, image.height)))
    if max_width is not None and w > max_width:
        return image.resize((max_width, max(1, round(image.height * max_width / image.width))),
                            Image.BILINEAR)
    return image.resize((w, height), Image.BILINEAR)


def for_display(image: Image.Image, height: int, max_width: int) -> Image.Image:
    """``image`` scaled to fit ``height`` x ``max_width`` px, keeping its aspect ratio.

    Enlarged at least twice: by the largest whole factor that fits, nearest-neighbour (a 40x60
    image becomes 200x300 with every pixel a sharp 5x5 square; no invented detail). Otherwise
    resized bilinearly (Lanczos when shrinking).
    """
    image = image.convert("RGB")
    s = min(height / max(1, image.height), max_width / max(1, image.width))
    if s >= 2:
        k = int(s)
        return image.resize((image.width * k, image.height * k), Image.NEAREST)
    size = (max(1, round(image.width * s)), max(1, round(image.height * s)))
    if size == image.size:
        return image.copy()
    return image.resize(size, Image.LANCZOS if s < 1 else Image.BILINEAR)


#: One line under a sheet's title saying how to read the colour bars.
SCALE_NOTE = ("Colour: each map's value as a multiple of its mean over the image (\"mean\" = the "
              "level of an evenly spread map; the top is the map's peak, at least 2x).")


def _scale_label(top: float) -> str:
    return f"{top:.1f}x" if top < 10 else f"{top:.0f}x"


def with_colorbar(image: Image.Image, cmap: str = "jet", width: int = 14,
                  labels: tuple[str, str] = ("high", "low"), top: float | None = None,
                  empty: bool = False) -> Image.Image:
    """``image`` with a vertical colour bar on its right, at least 64 px tall (a thin strip of an
    image still gets a readable bar).

    ``top`` None: the bar is labelled ``labels`` (top, bottom). ``top`` given: the bar is the
    :func:`relative_to_mean` scale, 0 at the bottom and ``top`` times the map's mean at the top,
    with ticks at 0, at the mean ("mean") and at the top ("12x"); ``empty``: the map is all zero.
    """
    height = max(image.height, 64)
    ramp = np.linspace(1.0, 0.0, max(2, height), dtype=np.float32)[:, None].repeat(width, 1)
    bar = Image.fromarray(colorize(ramp, cmap))
    f = font(11)
    if top is None:
        ticks = [(0, labels[0]), (height - 1, labels[1])]
    else:
        mean_y = round((height - 1) * (1 - 1 / top))
        ticks = [(0, "all 0" if empty else _scale_label(top)), (mean_y, "mean"), (height - 1, "0")]
        if height - 1 - mean_y < 13:   # a peaked map: "mean" sits just above 0; its tick says it
            ticks[2] = (height - 1, "")
    text_w = max(int(f.getlength(t)) for _, t in ticks) + 9
    out = Image.new("RGB", (image.width + 4 + width + text_w, height), (255, 255, 255))
    out.paste(image.convert("RGB"), (0, 0))
    x0 = image.width + 4
    out.paste(bar, (x0, 0))
    draw = ImageDraw.Draw(out)
    for y, text in ticks:
        if top is not None:
            draw.line([(x0 + width, y), (x0 + width + 3, y)], fill=(0, 0, 0), width=1)
        ty = min(max(0, y - 7), height - 13)
        draw.text((x0 + width + 6, ty), text, fill=(0, 0, 0), font=f)
    return out


def heat_panel(image: Image.Image, heat: torch.Tensor | np.ndarray, lines: Sequence[str] = (), *,
               height: int, max_width: int, alpha: float = 0.5, cmap: str = "jet",
               mask: torch.Tensor | np.ndarray | None = None, size: int = 12,
               width: int | None = None) -> Image.Image:
    """One readable heatmap picture: ``image`` at display size (:func:`for_display` into
    ``height`` x ``max_width``), the (h,w) ``heat`` resized bilinearly to it and blended on the
    :func:`relative_to_mean` scale, the outline of a (H,W) bool ``mask`` (ground truth) if given,
    the colour bar at that size, and the caption ``lines`` above (wrapped to ``width``)."""
    shown = for_display(image, height, max_width)
    heat = torch.as_tensor(np.asarray(heat, dtype=np.float32) if not isinstance(heat, torch.Tensor) else heat)
    heat = torch.nan_to_num(heat.detach().float().cpu()).clamp_min(0)
    if tuple(heat.shape[-2:]) != (shown.height, shown.width):
        heat = torch.nn.functional.interpolate(heat[None, None], size=(shown.height, shown.width),
                                               mode="bilinear", align_corners=False)[0, 0]
    rel, top = relative_to_mean(heat)
    picture = overlay(shown, rel, alpha=alpha, cmap=cmap, vmax=top)
    if mask is not None:
        picture = mask_outline(picture, mask)
    panel = with_colorbar(picture, cmap, top=top, empty=not rel.any())
    return captioned(panel, lines, size=size, width=width) if lines else panel


def captioned(image: Image.Image, lines: Sequence[str], size: int = 13, width: int | None = None) -> Image.Image:
    """``image`` with text lines above it (``width``: the panel width, default the image's); a line
    longer than the width wraps at spaces (a single over-long word is cut with "…")."""
    f = font(size)
    line_h = size + 4
    w = max(width or image.width, image.width)
    wrapped = [part for text in lines for part in wrap_text(str(text), f, w - 4)]
    out = Image.new("RGB", (w, line_h * len(wrapped) + 2 + image.height), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(wrapped):
        draw.text((2, 1 + i * line_h), text, fill=(0, 0, 0), font=f)
    out.paste(image.convert("RGB"), (0, line_h * len(wrapped) + 2))
    return out


def _clip_text(text: str, f, width: int) -> str:
    if f.getlength(text) <= width:
        return text
    while text and f.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def wrap_text(text: str, f, width: int) -> list[str]:
    """``text`` broken after spaces and slashes (paths wrap too) into lines of at most ``width`` px
    in font ``f`` (a piece longer than a line is cut with "…"); at least one line."""
    import re

    lines: list[str] = []
    for piece in re.findall(r"[^ /]*[ /]?", text):
        if not piece:
            continue
        if lines and f.getlength((lines[-1] + piece).rstrip()) <= width:
            lines[-1] += piece
        else:
            lines.append(piece if f.getlength(piece.rstrip()) <= width else _clip_text(piece, f, width))
    return [line.rstrip() for line in lines] or [""]


def sheet(cells: Sequence[Sequence[Image.Image | None]], row_labels: Sequence[str] = (),
          col_labels: Sequence[str] = (), pad: int = 6, title: str | None = None,
          label_width: int = 170, note: str | None = None) -> Image.Image:
    """Paste ``cells`` (rows x columns, ``None`` = empty) into one white sheet with labels.

    Columns take the width of their widest cell and rows the height of their tallest. The title,
    the ``note`` under it (smaller), the column labels and the row labels (at most ``label_width``
    px wide) wrap onto more lines instead of being cut.
    """
    n_cols = max((len(r) for r in cells), default=0)
    col_w = [max((r[c].width for r in cells if c < len(r) and r[c] is not None), default=0)
             for c in range(n_cols)]
    row_h = [max((c.height for c in r if c is not None), default=0) for r in cells]
    f, fb = font(13), font(15)
    rows_text = [wrap_text(str(t), f, label_width) for t in row_labels]
    left = (max((int(f.getlength(x)) for t in rows_text for x in t), default=0) + 2 * pad
            if row_labels else pad)
    width = left + sum(col_w) + pad * (n_cols + 1)
    titles = wrap_text(title, fb, max(width - 2 * pad, 200)) if title else []
    notes = wrap_text(note, f, max(width - 2 * pad, 200)) if note else []
    cols_text = [wrap_text(str(t), f, max(col_w[c] if c < n_cols else 200, 60))
                 for c, t in enumerate(col_labels)]
    col_h = 17 * max((len(t) for t in cols_text), default=0) + (3 if cols_text else 0)
    width = max(width, max((int(fb.getlength(t)) + 2 * pad for t in titles), default=0))
    top = col_h + 19 * len(titles) + 17 * len(notes) + pad + (pad if titles or notes else 0)
    height = top + sum(row_h) + pad * (len(cells) + 1)
    out = Image.new("RGB", (max(width, 1), max(height, 1)), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(titles):
        draw.text((pad, pad + 19 * i), text, fill=(0, 0, 0), font=fb)
    for i, text in enumerate(notes):
        draw.text((pad, pad + 19 * len(titles) + 17 * i), text, fill=(80, 80, 80), font=f)
    x0 = left + pad
    for c, text in enumerate(cols_text):
        x = x0 + sum(col_w[:c]) + pad * c
        for i, part in enumerate(text):
            draw.text((x, top - col_h + 17 * i), part, fill=(0, 0, 0), font=f)
    y = top + pad
    for r, row in enumerate(cells):
        if r < len(rows_text):
            y_text = y + row_h[r] // 2 - 8 * len(rows_text[r])
            for i, part in enumerate(rows_text[r]):
                draw.text((pad, y_text + 16 * i), part, fill=(0, 0, 0), font=f)
        x = x0
        for c, cell in enumerate(row):
            if cell is not None:
                out.paste(cell.convert("RGB"), (x, y))
            x += col_w[c] + pad
        y += row_h[r] + pad
    return out


def check_picture_options(alpha: float | None = None, cmap: str | None = None,
                          input_resize: int | None = None) -> None:
    """Refuse, in one GridcamError line naming the flag, a heatmap opacity ``alpha`` outside
    [0, 1], a ``cmap`` that is not a matplotlib colormap (naming the closest), or a model input
    size ``input_resize`` that is not a positive whole number of pixels. None: not checked.
    ``gridcam explain`` and ``gridcam report`` call it before any work."""
    import difflib
    import numbers

    from gridcam.errors import GridcamError

    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, numbers.Real)
                              or not 0 <= float(alpha) <= 1):
        raise GridcamError(f"--alpha {alpha}: the heatmap opacity must lie in [0, 1] (0: the image "
                           "only, 1: the heatmap only; default 0.5)")
    if input_resize is not None and (isinstance(input_resize, bool)
                                     or not isinstance(input_resize, numbers.Integral)
                                     or input_resize <= 0):
        raise GridcamError(f"--input-resize {input_resize}: must be a positive number of pixels "
                           "(the model input's shorter side, e.g. 224)")
    if cmap is not None:
        from matplotlib import colormaps

        if cmap not in colormaps:
            near = difflib.get_close_matches(str(cmap), list(colormaps), n=1)
            raise GridcamError(f"--cmap {cmap}: not a matplotlib colormap"
                               + (f" (did you mean {near[0]}?)" if near else " (e.g. jet, viridis, inferno)"))


def mask_outline(image: Image.Image, mask: torch.Tensor | np.ndarray, color: tuple[int, int, int] = (255, 255, 255),
                 width: int = 2) -> Image.Image:
    """``image`` with the border of a (H,W) bool mask (boxes or segments) drawn in ``color``."""
    m = torch.as_tensor(np.asarray(mask, dtype=bool) if not isinstance(mask, torch.Tensor) else mask).bool()
    if tuple(m.shape) != (image.height, image.width):
        m = torch.nn.functional.interpolate(m[None, None].float(), size=(image.height, image.width),
                                            mode="nearest")[0, 0].bool()
    k = 2 * max(1, width) + 1
    # A pixel of the mask next to a pixel outside it (within ``width``) is on the border.
    inside = torch.nn.functional.max_pool2d((~m)[None, None].float(), k, stride=1, padding=k // 2)[0, 0] > 0
    edge = (m & inside).numpy()
    arr = np.array(image.convert("RGB"))
    arr[edge] = color
    return Image.fromarray(arr)
