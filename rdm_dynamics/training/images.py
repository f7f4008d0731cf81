"""Samples as pictures: images as one PNG grid, videos as one animated GIF of the grid.

Pixels: a value x in [-1, 1] (the data range of ``training.data``) is written as the uint8
round((clamp(x, -1, 1) + 1) * 127.5).  A grid has ceil(sqrt(N)) columns by default, one pixel of
grey (128) between cells, and is scaled up by a whole factor (nearest neighbour) to be at least
256 pixels wide.  Every file is written atomically (``files.atomic_write_bytes``).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write_bytes

__all__ = ["to_uint8", "save_grid", "save_gif", "save_samples"]


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


def _image(grid: np.ndarray, min_width: int = 256):
    from PIL import Image

    scale = max(1, math.ceil(min_width / grid.shape[1]))
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    return img.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)


def save_grid(x: torch.Tensor, path: str | Path, columns: int | None = None) -> None:
    """Images (N, C, H, W) in [-1, 1] as one PNG grid, written atomically."""
    buf = io.BytesIO()
    _image(_tile(to_uint8(x), columns)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def save_gif(x: torch.Tensor, path: str | Path, columns: int | None = None,
             frame_ms: int = 150) -> None:
    """Videos (N, T, C, H, W) in [-1, 1] as one animated GIF of the grid, written atomically."""
    pix = to_uint8(x)
    frames = [_image(_tile(pix[:, k], columns)) for k in range(pix.shape[1])]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:],
                   duration=frame_ms, loop=0)
    atomic_write_bytes(path, buf.getvalue())


def save_samples(x: torch.Tensor, path: str | Path) -> Path:
    """PNG grid for images, GIF for videos; returns the path.  A .png/.gif suffix is set to the
    right one, any other name gets it appended (so "guidance-1.5" becomes "guidance-1.5.png")."""
    path, ext = Path(path), (".gif" if x.ndim == 5 else ".png")
    path = path.with_suffix(ext) if path.suffix.lower() in (".png", ".gif") else \
        path.with_name(path.name + ext)
    (save_gif if x.ndim == 5 else save_grid)(x, path)
    return path
