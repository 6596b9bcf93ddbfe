"""Argument checks shared by the public ops.

Every public op validates its arguments here, at entry, before any work is done, and raises a
ValueError that names the offending argument. The C++ bindings check again (a second line of
defence), but a user should never have to read a C++ message to learn that a bias had the wrong
length.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def check_tensor(
    op: str,
    name: str,
    t: object,
    *,
    ndim: Optional[int | Sequence[int]] = None,
    floating: bool = True,
) -> torch.Tensor:
    """Checks that `t` is a tensor of the expected rank and a floating dtype; returns it."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.ndim not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{op}: {name} must have {want} dimensions, got shape {list(t.shape)}")
    if floating and t.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{op}: {name} has dtype {t.dtype}; supported are float64, float32, float16 and bfloat16"
        )
    return t


def check_same_device(op: str, **tensors: Optional[torch.Tensor]) -> None:
    """Raises if the given (non-None) tensors do not all live on one device."""
    present = [(n, t) for n, t in tensors.items() if t is not None]
    if not present:
        return
    first_name, first = present[0]
    for name, t in present[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{op}: {name} is on {t.device} but {first_name} is on {first.device}; "
                "move them to one device"
            )


def check_same_dtype(op: str, **tensors: Optional[torch.Tensor]) -> None:
    """Raises if the given (non-None) tensors do not all share one dtype."""
    present = [(n, t) for n, t in tensors.items() if t is not None]
    if not present:
        return
    first_name, first = present[0]
    for name, t in present[1:]:
        if t.dtype != first.dtype:
            raise ValueError(
                f"{op}: {name} has dtype {t.dtype} but {first_name} has {first.dtype}; "
                f"cast it with {name}.to({first_name}.dtype)"
            )


def check_int_pair(op: str, name: str, value: object, *, minimum: int) -> tuple[int, int]:
    """Parses an int or a pair of ints (x, y) and checks the lower bound."""
    if isinstance(value, (int,)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return pair


# Padding and filters: upfirdn2d, its helpers and modulated_conv2d take them alike.

def parse_padding(op: str, padding: object) -> tuple[int, int, int, int]:
    """int, [x, y] or [x_before, x_after, y_before, y_after] -> (x0, x1, y0, y1)."""
    def is_int(v: object) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    if is_int(padding):
        p = int(padding)
        return p, p, p, p
    if isinstance(padding, (list, tuple)) and all(is_int(v) for v in padding):
        if len(padding) == 2:
            px, py = (int(v) for v in padding)
            return px, px, py, py
        if len(padding) == 4:
            x0, x1, y0, y1 = (int(v) for v in padding)
            return x0, x1, y0, y1
    raise ValueError(
        f"{op}: padding must be an int, [x, y] or [x_before, x_after, y_before, y_after] "
        f"of ints, got {padding!r}"
    )


def check_filter(op: str, f: object, x: torch.Tensor, name: str = "f") -> Optional[torch.Tensor]:
    """Validates filter `f` (called `name` in messages) against x; returns it (None stays None,
    meaning the 1x1 identity). upfirdn2d's helpers and modulated_conv2d's resample_filter."""
    if f is None:
        return None
    check_tensor(op, name, f, ndim=(1, 2))
    if f.dtype != torch.float32:
        raise ValueError(
            f"{op}: {name} has dtype {f.dtype}; filters are float32 (make them with setup_filter); "
            "they are cast to x's dtype inside"
        )
    if f.numel() == 0:
        raise ValueError(f"{op}: {name} must have at least one tap, got shape {list(f.shape)}")
    if f.requires_grad:
        raise ValueError(
            f"{op}: {name} requires grad, but filters are constants (no gradient flows to them); "
            f"register it as a buffer or pass {name}.detach()"
        )
    check_same_device(op, **{"x": x, name: f})
    return f


def filter_size(f: Optional[torch.Tensor]) -> tuple[int, int]:
    """(filter_width, filter_height); a separable 1-D filter has the same taps along both."""
    if f is None:
        return 1, 1
    return int(f.shape[-1]), int(f.shape[0])
