"""Heatmap overlays: a heatmap coloured with a matplotlib colormap and blended over the image."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw


def colorize(heatmap: torch.Tensor | np.ndarray, cmap: str = "jet") -> np.ndarray:
    """(H,W) non-negative heatmap -> (H,W,3) uint8 RGB, scaled by its own maximum."""
    from matplotlib import colormaps

    h = heatmap.detach().float().cpu().numpy() if isinstance(heatmap, torch.Tensor) else np.asarray(heatmap, np.float32)
    peak = float(h.max()) if h.size else 0.0
    h = h / peak if peak > 0 else np.zeros_like(h)
    return (colormaps[cmap](h)[..., :3] * 255).astype(np.uint8)


def overlay(image: Image.Image, heatmap: torch.Tensor | np.ndarray, alpha: float = 0.5,
            boxes: Sequence[Sequence[float]] = (), point: tuple[int, int] | None = None,
            cmap: str = "jet") -> Image.Image:
    """Blend a heatmap over ``image`` (resized bilinearly to the image size if needed).

    ``boxes``: (xmin, ymin, xmax, ymax) 0-based pixel boxes drawn in white; ``point``: (y, x) of the
    pointing-game point, drawn as a cross.
    """
    image = image.convert("RGB")
    heat = torch.as_tensor(np.asarray(heatmap, dtype=np.float32) if not isinstance(heatmap, torch.Tensor) else heatmap)
    if tuple(heat.shape[-2:]) != (image.height, image.width):
        heat = torch.nn.functional.interpolate(heat.float()[None, None], size=(image.height, image.width),
                                               mode="bilinear", align_corners=False)[0, 0]
    colored = Image.fromarray(colorize(heat, cmap))
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


def with_colorbar(image: Image.Image, cmap: str = "jet", width: int = 14,
                  labels: tuple[str, str] = ("high", "low")) -> Image.Image:
    """``image`` with a vertical colour bar on its right (top = the heatmap's maximum); at least
    64 px tall, so a thin strip of an image still gets a readable bar."""
    height = max(image.height, 64)
    ramp = np.linspace(1.0, 0.0, max(2, height), dtype=np.float32)[:, None].repeat(width, 1)
    bar = Image.fromarray(colorize(ramp, cmap))
    f = font(11)
    text_w = max(int(f.getlength(t)) for t in labels) + 6
    out = Image.new("RGB", (image.width + 4 + width + text_w, height), (255, 255, 255))
    out.paste(image.convert("RGB"), (0, 0))
    out.paste(bar, (image.width + 4, 0))
    draw = ImageDraw.Draw(out)
    x = image.width + 4 + width + 3
    draw.text((x, 0), labels[0], fill=(0, 0, 0), font=f)
    draw.text((x, max(0, height - 13)), labels[1], fill=(0, 0, 0), font=f)
    return out


def captioned(image: Image.Image, lines: Sequence[str], size: int = 13, width: int | None = None) -> Image.Image:
    """``image`` with text lines above it (``width``: the panel width, default the image's)."""
    f = font(size)
    line_h = size + 4
    w = max(width or image.width, image.width)
    out = Image.new("RGB", (w, line_h * len(lines) + 2 + image.height), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(lines):
        draw.text((2, 1 + i * line_h), _clip_text(text, f, w - 4), fill=(0, 0, 0), font=f)
    out.paste(image.convert("RGB"), (0, line_h * len(lines) + 2))
    return out


def _clip_text(text: str, f, width: int) -> str:
    if f.getlength(text) <= width:
        return text
    while text and f.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def sheet(cells: Sequence[Sequence[Image.Image | None]], row_labels: Sequence[str] = (),
          col_labels: Sequence[str] = (), pad: int = 6, title: str | None = None) -> Image.Image:
    """Paste ``cells`` (rows x columns, ``None`` = empty) into one white sheet with labels.

    Columns take the width of their widest cell and rows the height of their tallest.
    """
    n_cols = max((len(r) for r in cells), default=0)
    col_w = [max((r[c].width for r in cells if c < len(r) and r[c] is not None), default=0)
             for c in range(n_cols)]
    row_h = [max((c.height for c in r if c is not None), default=0) for r in cells]
    f, fb = font(13), font(15)
    left = (max((int(f.getlength(t)) for t in row_labels), default=0) + 2 * pad) if row_labels else pad
    top = (20 if col_labels else 0) + (24 if title else 0) + pad
    width = left + sum(col_w) + pad * (n_cols + 1)
    height = top + sum(row_h) + pad * (len(cells) + 1)
    out = Image.new("RGB", (max(width, 1), max(height, 1)), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    if title:
        draw.text((pad, pad), _clip_text(title, fb, width - 2 * pad), fill=(0, 0, 0), font=fb)
    x0 = left + pad
    for c, text in enumerate(col_labels):
        x = x0 + sum(col_w[:c]) + pad * c
        draw.text((x, top - 20), _clip_text(str(text), f, col_w[c] if c < n_cols else 200),
                  fill=(0, 0, 0), font=f)
    y = top + pad
    for r, row in enumerate(cells):
        if r < len(row_labels):
            draw.text((pad, y + row_h[r] // 2 - 8), str(row_labels[r]), fill=(0, 0, 0), font=f)
        x = x0
        for c, cell in enumerate(row):
            if cell is not None:
                out.paste(cell.convert("RGB"), (x, y))
            x += col_w[c] + pad
        y += row_h[r] + pad
    return out


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
