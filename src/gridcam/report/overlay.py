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
            boxes: Sequence[Sequence[float]] = (), point: tuple[int, int] | None = None) -> Image.Image:
    """Blend a heatmap over ``image`` (resized bilinearly to the image size if needed).

    ``boxes``: (xmin, ymin, xmax, ymax) 0-based pixel boxes drawn in white; ``point``: (y, x) of the
    pointing-game point, drawn as a cross.
    """
    image = image.convert("RGB")
    heat = torch.as_tensor(np.asarray(heatmap, dtype=np.float32) if not isinstance(heatmap, torch.Tensor) else heatmap)
    if tuple(heat.shape[-2:]) != (image.height, image.width):
        heat = torch.nn.functional.interpolate(heat.float()[None, None], size=(image.height, image.width),
                                               mode="bilinear", align_corners=False)[0, 0]
    colored = Image.fromarray(colorize(heat))
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
