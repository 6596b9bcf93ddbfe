"""Images on disk, independent of training: tensors to uint8, PNG files written atomically, grids,
and the `--seeds 0-7,12` lists that name generated images. Training, generation and the command
line all use these, so none of them imports another for them."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import fileio


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] float in [-1, 1] (clipped) or uint8 -> uint8 [N, H, W, C] on the host."""
    if images.dtype != torch.uint8:
        images = (images.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) for n images: a full rectangle wider than tall when one is close to square
    (32 -> 4 x 8), else the nearest square (7 -> 3 x 3)."""
    side = math.ceil(math.sqrt(n))
    cols = next((c for c in range(side, 2 * side + 1) if n % c == 0), side)
    return math.ceil(n / cols), cols


def make_grid(images: torch.Tensor, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """[N, C, H, W] images -> one uint8 [rows*(H+pad)-pad, cols*(W+pad)-pad, C] canvas (black gaps)."""
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    rows, cols = grid_shape(n) if cols is None else (math.ceil(n / cols), cols)
    canvas = np.zeros((rows * (h + pad) - pad, cols * (w + pad) - pad, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = arr[i]
    return canvas


def save_image(img: np.ndarray, path: str | os.PathLike) -> Path:
    """uint8 [H, W, C] (C = 1 or 3) -> PNG, written atomically (fileio.WriteError on failure)."""
    pil = Image.fromarray(img[:, :, 0], "L") if img.shape[2] == 1 else Image.fromarray(img, "RGB")
    return fileio.atomic_write(path, lambda f: pil.save(f, format="PNG"))


def save_grid(images: torch.Tensor, path: str | os.PathLike, cols: int | None = None) -> Path:
    """[N, C, H, W] float in [-1, 1] or uint8 -> a grid PNG. Small images are enlarged (nearest)
    to at least 64 px so a 16x16 or 32x32 grid can be inspected by eye."""
    scale = max(1, math.ceil(64 / images.shape[-1]))
    if scale > 1:
        images = images.repeat_interleave(scale, dim=-1).repeat_interleave(scale, dim=-2)
    return save_image(make_grid(images, cols), path)

_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
_SINGLE = re.compile(r"^\s*(\d+)\s*$")


def parse_seeds(text: str) -> list[int]:
    """Turn "0-7,12" into [0, 1, 2, 3, 4, 5, 6, 7, 12].

    Comma-separated items, each a non-negative integer or an inclusive range "a-b" with a <= b.
    Order is kept as written and duplicates are dropped after their first appearance, so the
    output files follow the command line. Raises ValueError with the offending item otherwise.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("seeds: expected a list like '0-7,12', got an empty value")
    seeds: list[int] = []
    seen: set[int] = set()
    for item in text.split(","):
        if m := _RANGE.match(item):
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise ValueError(f"seeds: range '{item.strip()}' runs backwards (write {hi}-{lo})")
            values = range(lo, hi + 1)
        elif m := _SINGLE.match(item):
            values = [int(m.group(1))]
        else:
            raise ValueError(f"seeds: '{item.strip()}' is neither a number nor a range like 3-9")
        for v in values:
            if v >= 2**32:
                raise ValueError(f"seeds: {v} does not fit in 32 bits")
            if v not in seen:
                seen.add(v)
                seeds.append(v)
    return seeds
