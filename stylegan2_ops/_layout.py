"""Memory layouts the kernels take: contiguous (NCHW) or channels_last (NHWC), one shared rule.

The kernels walk tensors in their memory order, so every op hands them dense tensors (no gaps,
no broadcast strides) and gives element-wise companions (a gradient beside its input) the same
strides; outputs keep the layout of their input.
"""
from __future__ import annotations

from typing import Optional

import torch


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last if x is laid out that way (and not also plainly contiguous), else contiguous."""
    if not x.is_contiguous() and x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def dense(t: torch.Tensor) -> torch.Tensor:
    """t if it is contiguous or channels_last, else a contiguous copy."""
    if t.is_contiguous() or (t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t
    return t.contiguous()


def like(t: Optional[torch.Tensor], ref: torch.Tensor) -> Optional[torch.Tensor]:
    """t with ref's strides (None stays None), copied only when they differ."""
    if t is None or t.stride() == ref.stride():
        return t
    return torch.empty_like(ref).copy_(t)
