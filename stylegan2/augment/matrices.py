"""Batches of 2-D homogeneous matrices for the geometric augmentations.

Coordinates are in pixels of the image being augmented, origin at the image centre, x to the
right and y down; pixel (row i, column j) of a W-wide, H-tall image has its centre at
(j + 0.5 - W / 2, i + 0.5 - H / 2). Every helper returns the *sampling* matrix of a transform:
the one that maps an output point to the input point it is read from (the inverse of the
transform that moves the content), because that is what a warp needs, and because composing
them in the order the transforms are applied is then a plain left-to-right product:
``G = T1_inv @ T2_inv`` applies T1 to the image first, then T2.
"""
from __future__ import annotations

import torch


def identity(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[n, 3, 3] identity matrices."""
    return torch.eye(3, device=device, dtype=dtype).expand(n, 3, 3).clone()


def _build(rows: list[list[torch.Tensor | float]], ref: torch.Tensor) -> torch.Tensor:
    """Stacks per-image entries (tensors [n] or constants) into [n, 3, 3]."""
    cols = [
        torch.stack([v if isinstance(v, torch.Tensor) else torch.full_like(ref, float(v)) for v in row], dim=-1)
        for row in rows
    ]
    return torch.stack(cols, dim=-2)


def translate_inv(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Sampling matrix of moving the content by (tx, ty) pixels. tx, ty: [n] -> [n, 3, 3]."""
    return _build([[1, 0, -tx], [0, 1, -ty], [0, 0, 1]], tx)


def scale_inv(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """Sampling matrix of scaling the content by (sx, sy) about the centre. [n] -> [n, 3, 3]."""
    return _build([[1 / sx, 0, 0], [0, 1 / sy, 0], [0, 0, 1]], sx)


def rotate_inv(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Sampling matrix of rotating the content by the angle whose cosine and sine are given
    (positive angles turn x towards y: clockwise on screen, since y points down).

    Taking cos and sin rather than the angle lets quarter turns use exact 0 and +-1 entries, so
    they move pixel centres onto pixel centres with no rounding. cos, sin: [n] -> [n, 3, 3].
    """
    return _build([[cos, sin, 0], [-sin, cos, 0], [0, 0, 1]], cos)


def quarter_turns_inv(k: torch.Tensor) -> torch.Tensor:
    """Sampling matrix of rotating the content by k quarter turns (k in 0..3, any integer
    dtype or float holding integers). k: [n] -> [n, 3, 3]."""
    k = torch.remainder(k.to(torch.float64).round(), 4)
    # Exact table lookups by comparison, built on k's device (no host-to-device copy per call).
    one, zero = torch.ones_like(k), torch.zeros_like(k)
    cos = torch.where(k == 0, one, torch.where(k == 2, -one, zero))
    sin = torch.where(k == 1, one, torch.where(k == 3, -one, zero))
    return rotate_inv(cos, sin)
