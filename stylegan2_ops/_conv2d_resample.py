"""What the two modulated-conv routes share: the convolution with up/down sampling (cuDNN plus
upfirdn2d), its padding arithmetic, and the float16 pre-normalisation of weight and styles.

The reference (_modulated_conv.py) and the kernel route (_modulated_conv_cuda.py) both import it
from here, so neither imports the other for it. The definition of conv2d_resample is in
_modulated_conv's docstring.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ._upfirdn2d import upfirdn2d


def prenormalise_fp16(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                      demodulate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, styles) ready for a float16 x: with demodulation, which cancels any per-output
    channel scale of weight and any per-sample scale of styles, both are brought to magnitude
    <= 1 (weight to about 1/sqrt(fan_in)), so x * styles and the convolution's sums stay inside
    float16's range. Unchanged for other dtypes or without demodulation.

    x: [N, I, H, W]; weight: [O, I, kh, kw]; styles: [N, I].
    """
    if x.dtype != torch.float16 or not demodulate:
        return weight, styles
    fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
    weight = weight * (1 / math.sqrt(fan_in) / weight.abs().amax(dim=[1, 2, 3], keepdim=True))
    styles = styles / styles.abs().amax(dim=1, keepdim=True)
    return weight, styles



def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: Optional[torch.Tensor],
    up: int,
    down: int,
    pads: tuple[int, int, int, int],
    groups: int,
    flip_weight: bool,
    impl: str,
) -> torch.Tensor:
    """conv2d_resample as defined in _modulated_conv's docstring, by the cheapest equivalent route.

    x: [batch_size, in_channels, in_height, in_width]; w: [out_channels, in_channels // groups,
    kernel_height, kernel_width] of x's dtype; f: float32 filter or None; pads: adjusted padding
    (x0, x1, y0, y1). Each route below rests on the filter, the convolution and the zero
    insertion all being linear and shift-invariant, so they may be reordered.
    """
    px0, px1, py0, py1 = pads
    out_channels, in_per_group, kh, kw = w.shape
    one_by_one = kh == 1 and kw == 1

    if up == 1 and down == 1:
        if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
            return _correlate(x, w, flip_weight, padding=(py0, px0), groups=groups)
        return _correlate(F.pad(x, [px0, px1, py0, py1]), w, flip_weight, groups=groups)

    if up == 1:
        if one_by_one:  # pointwise: decimate first, then mix channels on fewer pixels
            x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], impl=impl)
            return _correlate(x, w, flip_weight, groups=groups)
        # Filtering before the convolution lets the decimation be the convolution's stride.
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], impl=impl)
        return _correlate(x, w, flip_weight, stride=down, groups=groups)

    if one_by_one and down == 1:  # pointwise: mix channels before the image grows
        x = _correlate(x, w, flip_weight, groups=groups)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up * up, impl=impl)

    # Zero insertion followed by the convolution is a transposed convolution with stride `up`.
    # That one computes sum_i x[i] * w't[o - i*up], a true convolution of the zero-inserted
    # signal, so correlation semantics need the taps flipped; its output at o equals the
    # correlation's output at o - (k - 1) + P0, hence the shifted padding below.
    wt = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
    wt = wt.reshape(groups * in_per_group, out_channels // groups, kh, kw)
    if flip_weight:
        wt = wt.flip([2, 3])
    qx0, qx1 = px0 - (kw - 1), px1 - (kw - up)
    qy0, qy1 = py0 - (kh - 1), py1 - (kh - up)
    # Crop what both sides would crop inside the transposed convolution (saves its work).
    cx = max(min(-qx0, -qx1), 0)
    cy = max(min(-qy0, -qy1), 0)
    x = F.conv_transpose2d(x, wt, stride=up, padding=(cy, cx), groups=groups)
    x = upfirdn2d(x, f, padding=[qx0 + cx, qx1 + cx, qy0 + cy, qy1 + cy], gain=up * up, impl=impl)
    if down > 1:
        x = upfirdn2d(x, f, down=down, impl=impl)
    return x


def _correlate(
    x: torch.Tensor,
    w: torch.Tensor,
    flip_weight: bool,
    stride: int = 1,
    padding: tuple[int, int] = (0, 0),
    groups: int = 1,
) -> torch.Tensor:
    """F.conv2d (a correlation), or a true convolution when flip_weight is False."""
    if not flip_weight:
        w = w.flip([2, 3])
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def adjusted_padding(
    pads: tuple[int, int, int, int], fw: int, fh: int, up: int, down: int
) -> tuple[int, int, int, int]:
    """The user's padding widened so that the resampling filter stays centred."""
    px0, px1, py0, py1 = pads
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    return px0, px1, py0, py1


def conv_output_length(
    op: str, axis: str, size: int, k: int, taps: int, up: int, down: int, pad0: int, pad1: int
) -> int:
    """Length along one axis of conv2d_resample's output (adjusted padding, a k-tap kernel, a
    resampling filter of `taps`); raises naming `op` if it would be empty."""
    n = size * up + pad0 + pad1
    if up > 1:
        n -= taps - 1
    n -= k - 1
    if down > 1 and n >= taps:
        n = (n - taps) // down + 1
    elif down > 1:
        n = 0
    if n < 1:
        raise ValueError(
            f"{op}: the output would be empty along {axis}: input {size}, kernel {k}, "
            f"filter {taps} taps, up {up}, down {down}; give more padding or a larger x"
        )
    return n
