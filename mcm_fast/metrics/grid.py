"""Sample grids: a batch of images in [-1, 1] tiled into one PNG."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mcm_fast._checks import check_float_tensor, check_int

MAX_COLUMNS = 4096


def tile(images: torch.Tensor, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """images [N, C, H, W] in [-1, 1] -> uint8 [rows (H + p), nrow (W + p), C] with black padding."""
    check_float_tensor("images", images, min_dim=4)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = math.ceil(math.sqrt(n)) if nrow is None else check_int("nrow", nrow, 1, MAX_COLUMNS)
    check_int("padding", padding, 0, max(h, w))
    rows = math.ceil(n / nrow)
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # display range
    canvas = torch.zeros(c, rows * (h + padding) + padding, nrow * (w + padding) + padding, dtype=torch.uint8)
    for i in range(n):
        top, left = (i // nrow) * (h + padding) + padding, (i % nrow) * (w + padding) + padding
        canvas[:, top:top + h, left:left + w] = pixels[i]
    return canvas.permute(1, 2, 0).numpy()


def check_output_path(path: str | Path) -> Path:
    """path as a Path where a file can be written: not a directory, and no file standing where a folder must be.
    Checked before long work, so that it fails at once."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a directory; expected the path of a file to write")
    blocking = next((p for p in path.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ValueError(f"{blocking}: a file; expected a directory to hold {path}")
    return path


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Writes the tiled images as a PNG (upscaled `scale` times, nearest), atomically; returns the path."""
    path = check_output_path(path)
    array = tile(images, nrow)
    picture = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    picture.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
