"""Samples as pictures: images as one PNG grid, videos as one animated GIF of the grid.

Pixels: a value x in [-1, 1] (the data range of ``training.data``) is written as the uint8
round((clamp(x, -1, 1) + 1) * 127.5).  A grid has ceil(sqrt(N)) columns by default, one pixel of
grey (128) between cells, and is scaled up by a whole factor (nearest neighbour) to be at least
256 pixels wide; with labels, a caption strip above each row names the class each cell was asked
for.  Every file is written atomically (``files.atomic_write_bytes``).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write_bytes

__all__ = ["to_uint8", "save_grid", "save_gif", "save_samples", "sample_path", "IMAGE_FORMATS",
           "VIDEO_FORMATS"]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] floats to uint8 pixels."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def _tile(x: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) uint8 -> one (H', W', C) grid with ``pad`` pixels of grey between cells."""
    n, c, h, w = x.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 128, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top:top + h, left:left + w] = x[i].transpose(1, 2, 0)
    return grid


#: Height in pixels of the caption strip above each row of a labelled grid.
CAPTION_PX = 12
#: The formats each kind of sample can be written as, by file suffix; the first is the default.
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF"}
VIDEO_FORMATS = {".gif": "GIF"}


def _image(grid: np.ndarray, min_width: int = 256, cell: tuple[int, int, int] | None = None,
           labels=None):
    """The grid as a PIL image scaled up to ``min_width``; with ``labels`` (one per cell, cells
    ``cell`` = (height, width, pad) pixels before scaling) a caption strip above each row names
    every cell's class."""
    from PIL import Image, ImageDraw

    scale = max(1, math.ceil(min_width / grid.shape[1]))
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    img = img.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)
    if labels is None or cell is None:
        return img
    h, w, pad = cell
    cols = max(1, (grid.shape[1] - pad) // (w + pad))
    rows = math.ceil(len(labels) / cols)
    row_px = (h + pad) * scale
    out = Image.new(img.mode, (img.width, img.height + rows * CAPTION_PX), 0)
    draw = ImageDraw.Draw(out)
    white = 255 if img.mode == "L" else (255, 255, 255)
    for r in range(rows):
        top = r * (row_px + CAPTION_PX)
        out.paste(img.crop((0, r * row_px, img.width, (r + 1) * row_px + pad * scale)),
                  (0, top + CAPTION_PX))
        for q in range(cols):
            i = r * cols + q
            if i < len(labels):
                draw.text(((pad + q * (w + pad)) * scale + 1, top), str(int(labels[i])),
                          fill=white)
    return out


def _encode(images: list, fmt: str, frame_ms: int = 150) -> bytes:
    buf = io.BytesIO()
    if fmt == "GIF" and len(images) > 1:
        images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                       duration=frame_ms, loop=0)
    else:
        images[0].save(buf, format=fmt)
    return buf.getvalue()


def save_grid(x: torch.Tensor, path: str | Path, columns: int | None = None,
              labels=None, fmt: str = "PNG") -> None:
    """Images (N, C, H, W) in [-1, 1] as one grid image (PNG by default), written atomically;
    ``labels`` (N,) caption each cell with its class."""
    n, c, h, w = x.shape
    img = _image(_tile(to_uint8(x), columns), cell=(h, w, 1), labels=labels)
    atomic_write_bytes(path, _encode([img], fmt))


def save_gif(x: torch.Tensor, path: str | Path, columns: int | None = None,
             frame_ms: int = 150, labels=None) -> None:
    """Videos (N, T, C, H, W) in [-1, 1] as one animated GIF of the grid, written atomically."""
    pix = to_uint8(x)
    h, w = pix.shape[-2:]
    frames = [_image(_tile(pix[:, k], columns), cell=(h, w, 1), labels=labels)
              for k in range(pix.shape[1])]
    atomic_write_bytes(path, _encode(frames, "GIF", frame_ms))


def sample_path(path: str | Path, video: bool) -> Path:
    """The file samples are written to: ``path`` if its suffix is a format this kind can be
    written as (IMAGE_FORMATS, VIDEO_FORMATS), the default suffix appended if it has none of the
    format suffix ("guidance-1.5" becomes "guidance-1.5.png"); ValueError for any other format
    (a video asked for as PNG, an image as BMP)."""
    path = Path(path)
    formats = VIDEO_FORMATS if video else IMAGE_FORMATS
    suffix = path.suffix.lower()
    if suffix in formats:
        return path
    if any(c.isalpha() for c in suffix):  # a format asked for (.png, .bmp), not a number (.5)
        kind = "videos" if video else "images"
        raise ValueError(f"{kind} are written as {', '.join(sorted(set(formats.values())))} "
                         f"({', '.join(formats)}), not {suffix}")
    return path.with_name(path.name + next(iter(formats)))


def save_samples(x: torch.Tensor, path: str | Path, labels=None) -> Path:
    """Images as a grid (PNG, JPEG or GIF by the suffix), videos as an animated GIF; returns the
    path (:func:`sample_path`).  ``labels`` caption each cell with the class it was asked for."""
    video = x.ndim == 5
    path = sample_path(path, video)
    if video:
        save_gif(x, path, labels=labels)
    else:
        save_grid(x, path, labels=labels, fmt=IMAGE_FORMATS[path.suffix.lower()])
    return path
