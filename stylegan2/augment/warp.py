"""An affine warp for augmentation that has gradients of any order with respect to the image.

As in the StyleGAN2-ADA paper (appendix B), the image is upsampled 2x with a low-pass filter,
resampled bilinearly at the transformed positions, then low-pass filtered and downsampled 2x,
so that rotations and fractional shifts neither alias nor blur much. The filter is the 12-tap
least-asymmetric Daubechies wavelet (symlet 6), the one the paper uses: it is orthogonal, so
upsampling and then downsampling with it (the second pass correlating) is the identity, and
scaling by 1 or rotating by 0 returns the image to within float rounding. Both passes go
through `stylegan2_ops.upfirdn2d`, so they run on the CUDA kernels for CUDA tensors.
Transforms that map pixel centres onto pixel centres (flips, quarter turns, integer shifts) have
an exact path, blit(), with no filtering at all. (StyleGAN2's layer filter [1, 3, 3, 1] also
works here, via make_filter(taps), but up-then-down with it is a blur, not the identity, so
every augmented image would come out softer than the reals it stands for.)

Why not `torch.nn.functional.grid_sample`: its backward is not itself differentiable, and R1
is taken through the augmentation. Here the bilinear step is one `gather` of the four
neighbours and a weighted sum; the positions and weights depend only on the matrices (no
gradient flows to them), so the whole warp is linear in the image, and its backward (a
scatter-add) and double backward (a gather again) are ordinary differentiable ops.

Outside the image the content is a reflection about the edge pixels' centres (PyTorch's
'reflect' padding), as in the paper. Instead of padding by an amount read back from the
matrices (a device-to-host sync per batch), the image is reflection-padded by a fixed margin
and any position beyond that margin is folded back into the image by reflecting the
coordinate; so the warp never waits on the device, and reflection continues however far a
transform reaches (the paper clamps its padding to one image width and reads zeros beyond).
Within the padded band the result is the paper's; beyond it, the reflected reads carry the
filter's phase error (about 1% of the range at worst on smooth images).
"""
from __future__ import annotations

import math

import torch

from stylegan2_ops import setup_filter, upfirdn2d, upsample2d

# Symlet 6 low-pass taps (sum sqrt(2), unit norm, orthogonal to their even shifts), computed by
# spectral factorization of the Daubechies polynomial for 6 vanishing moments, keeping the root
# choice whose phase is closest to linear. setup_filter() normalizes them to sum 1.
SYM6 = (
    0.015404109327044805, 0.003490712084222162, -0.11799011114851979, -0.048311742585697474,
    0.49105594192797397, 0.7876411410286505, 0.3379294217281656, -0.07263752278637652,
    -0.021060292512370894, 0.04472490177078131, 0.0017677118642539882, -0.007800708325032378,
)


def make_filter(taps: tuple[float, ...] = SYM6, device: torch.device | str = "cpu") -> torch.Tensor:
    """The separable resampling filter for affine_warp(): float32 [taps], normalized to sum 1."""
    return setup_filter(list(taps), device=device, separable=True)


def filter_delay(taps: tuple[float, ...] = SYM6) -> float:
    """How far (in input pixels) upsampling with f moves the content at low frequencies.

    An orthogonal filter cannot be symmetric, so its taps' centre of mass sits off the middle;
    the downsampling pass moves the content back by as much, which is why the identity comes
    out exact. A flip or rotation between the passes would turn the two shifts into one of
    twice the size, so the warp evaluates its output at positions moved by this delay and reads
    its input at positions moved back by it. What remains is the filter's phase nonlinearity,
    largest near the Nyquist frequency.
    """
    centre = sum(k * v for k, v in enumerate(taps)) / sum(taps)
    # upfirdn2d convolves, so taps past the middle read earlier samples: the content moves by
    # minus the offset of the centre of mass (in upsampled samples, half that in input pixels).
    return -(centre - (len(taps) - 1) / 2) / 2


def reflect_index(i: torch.Tensor, n: int) -> torch.Tensor:
    """Integer positions folded into [0, n) by reflecting about the end samples (no repeat of the
    edge sample, like 'reflect' padding; any distance works, reflecting again as needed)."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i < n, i, period - i)


def reflect_coord(a: torch.Tensor, n: int) -> torch.Tensor:
    """Continuous positions in pixel-index units (pixel k's centre at k) folded into [0, n - 1] by
    reflecting about the centres of the first and last pixels: reflect_index() for reals."""
    if n == 1:
        return torch.zeros_like(a)
    period = 2.0 * (n - 1)
    a = torch.remainder(a, period)
    return torch.where(a <= n - 1, a, period - a)


def reflect_pad(x: torch.Tensor, pad_x: int, pad_y: int) -> torch.Tensor:
    """Reflection padding of any width (F.pad's 'reflect' needs pad < size).

    x: [N, C, H, W] -> [N, C, H + 2 * pad_y, W + 2 * pad_x]. index_select's backward
    (index_add) and its double backward (index_select) are differentiable.
    """
    h, w = x.shape[2], x.shape[3]
    cols = reflect_index(torch.arange(-pad_x, w + pad_x, device=x.device), w)
    rows = reflect_index(torch.arange(-pad_y, h + pad_y, device=x.device), h)
    return x.index_select(3, cols).index_select(2, rows)


def blit(x: torch.Tensor, g_inv: torch.Tensor) -> torch.Tensor:
    """Exact warp for matrices that move pixel centres onto pixel centres (flips, quarter turns,
    integer translations): a gather of reflected indices, no filtering, no interpolation.

    Args:
        x: [N, C, H, W] images, any float dtype, contiguous or channels_last.
        g_inv: [N, 3, 3] sampling matrices whose linear part has entries 0 and +-1 and whose
            translation is whole pixels (positions are rounded to the nearest pixel).
    Returns:
        [N, C, H, W] in x's dtype and memory format; a gather, so differentiable any number of
        times, and bit-exact: identity matrices return x's values unchanged.
    """
    n, c, h, w = x.shape
    g = g_inv.detach().to(torch.float64)
    ox = torch.arange(w, device=x.device, dtype=torch.float64) + (0.5 - w / 2)
    oy = torch.arange(h, device=x.device, dtype=torch.float64) + (0.5 - h / 2)
    gx, gy = ox[None, :].expand(h, -1), oy[:, None].expand(-1, w)
    sx = g[:, 0, 0, None, None] * gx + g[:, 0, 1, None, None] * gy + g[:, 0, 2, None, None]
    sy = g[:, 1, 0, None, None] * gx + g[:, 1, 1, None, None] * gy + g[:, 1, 2, None, None]
    cols = reflect_index(torch.round(sx + (w / 2 - 0.5)).long(), w)
    rows = reflect_index(torch.round(sy + (h / 2 - 0.5)).long(), h)
    index = (rows * w + cols).reshape(n, 1, h * w).expand(n, c, -1)
    out = x.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)
    return out.contiguous(memory_format=_memory_format(x))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _margins(size: int, taps: int) -> tuple[int, int]:
    """(direct, pad) along one axis, in input pixels.

    Sources within `direct` pixels outside the image are read from the reflection-padded,
    upsampled image as it is; farther ones are folded back by reflect_coord(). `direct` covers
    the paper's integer translations (up to 1/8 of the size) plus the reach of the downsampling
    filter, so those come out exact; `pad` adds the reach of the upsampling filter and of the
    bilinear taps, inside which the upsampled padded image equals the upsampled infinite
    reflection.
    """
    reach = taps // 4 + 1
    direct = math.ceil(size / 8) + reach
    return direct, direct + reach


def affine_warp(
    x: torch.Tensor, g_inv: torch.Tensor, f: torch.Tensor, delay: float | None = None, impl: str = "auto"
) -> torch.Tensor:
    """Resamples each image at the positions its matrix maps the output pixels to.

    Args:
        x: [N, C, H, W] images (float64 or float32; contiguous or channels_last).
        g_inv: [N, 3, 3] sampling matrices (output point -> input point, pixel units, origin at
            the image centre; see matrices.py). No gradient flows to them.
        f: the separable filter from make_filter(), on x's device.
        delay: filter_delay() of f's taps; None computes it from f (a device-to-host copy when
            f is on a GPU, so callers that warp every step pass it).
        impl: passed to upfirdn2d ('auto', 'ref' or 'cuda').

    Returns:
        [N, C, H, W] in x's dtype and memory format, differentiable any number of times with
        respect to x.
    """
    n, c, h, w = x.shape
    if g_inv.shape != (n, 3, 3):
        raise ValueError(f"affine_warp: g_inv must have shape [{n}, 3, 3], got {list(g_inv.shape)}")
    taps = int(f.shape[0])
    direct_x, pad_x = _margins(w, taps)
    direct_y, pad_y = _margins(h, taps)

    # 1. Reflect-pad by the fixed margin and upsample 2x with the filter.
    up = upsample2d(reflect_pad(x, pad_x, pad_y), f, up=2, impl=impl)  # [N, C, 2(H+2py), 2(W+2px)]
    uh, uw = up.shape[2], up.shape[3]

    # 2. The output grid at the upsampled rate, wide enough for the downsampling filter to see
    # real samples at the borders (the margins downsample2d would otherwise zero-pad).
    m0, m1 = (taps - 1) // 2, (taps - 2) // 2
    coord_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    kx = torch.arange(-m0, 2 * w + m1, device=x.device, dtype=coord_dtype)
    ky = torch.arange(-m0, 2 * h + m1, device=x.device, dtype=coord_dtype)
    if delay is None:
        delay = filter_delay(tuple(f.detach().double().cpu().tolist()))
    ox, oy = (kx + 0.5) / 2 + delay - w / 2, (ky + 0.5) / 2 + delay - h / 2
    gx, gy = ox[None, :].expand(len(ky), -1), oy[:, None].expand(-1, len(kx))
    g = g_inv.detach().to(coord_dtype)
    sx = g[:, 0, 0, None, None] * gx + g[:, 0, 1, None, None] * gy + g[:, 0, 2, None, None]
    sy = g[:, 1, 0, None, None] * gx + g[:, 1, 1, None, None] * gy + g[:, 1, 2, None, None]

    # 3. Source positions in input-pixel index units, reflected where they leave the band that
    # the padded image holds, then in upsampled index units (input pixel k's centre lies midway
    # between upsampled samples 2k + 2p and 2k + 2p + 1).
    # The reflection acts on true positions; the filter's delay is taken off after it.
    ax, ay = sx + (w / 2 - 0.5), sy + (h / 2 - 0.5)
    ax = torch.where((ax < -direct_x) | (ax > w - 1 + direct_x), reflect_coord(ax, w), ax)
    ay = torch.where((ay < -direct_y) | (ay > h - 1 + direct_y), reflect_coord(ay, h), ay)
    jx, jy = 2 * (ax - delay) + (0.5 + 2 * pad_x), 2 * (ay - delay) + (0.5 + 2 * pad_y)

    # 4. Bilinear interpolation as one gather of the four neighbours. The clamps only guard
    # against rounding at the band's edge; in exact arithmetic every index is inside.
    x0, y0 = jx.floor(), jy.floor()
    wx, wy = (jx - x0).to(x.dtype), (jy - y0).to(x.dtype)
    x0 = x0.long().clamp(0, uw - 2)
    y0 = y0.long().clamp(0, uh - 2)
    base = y0 * uw + x0  # [N, OH, OW]
    corners = torch.stack([base, base + 1, base + uw, base + uw + 1], dim=1)  # [N, 4, OH, OW]
    oh, ow = base.shape[1], base.shape[2]
    index = corners.reshape(n, 1, 4 * oh * ow).expand(n, c, -1)
    vals = up.reshape(n, c, uh * uw).gather(2, index).reshape(n, c, 4, oh, ow)
    wx, wy = wx[:, None], wy[:, None]  # [N, 1, OH, OW]
    warped = (vals[:, :, 0] * (1 - wx) + vals[:, :, 1] * wx) * (1 - wy) \
        + (vals[:, :, 2] * (1 - wx) + vals[:, :, 3] * wx) * wy

    # 5. Filter and downsample 2x; correlating (flip_filter) makes this pass the transpose of the
    # upsampling, which with an orthogonal filter undoes it exactly.
    out = upfirdn2d(warped, f, down=2, flip_filter=True, impl=impl)
    return out.contiguous(memory_format=_memory_format(x))
