"""upfirdn2d: upsample, pad, FIR-filter and downsample a batch of 2D images, and its helpers.

For each channel, along each axis:

    1. upsample by inserting up-1 zeros after every sample   (length in*up)
    2. pad with zeros, or crop where the padding is negative (length in*up + pad0 + pad1)
    3. filter with the FIR filter f (a true convolution unless flip_filter), keeping only the
       outputs whose footprint lies inside the padded signal (length above - taps + 1)
    4. keep every down-th sample                             (length (above - 1) // down + 1)

and multiply by gain. Written out, with t = taps, g[k] = f[t-1-k] (or f[k] when flip_filter)
and u the upsampled signal (zero outside [0, in*up)):

    y[i] = gain * sum_k g[k] * u[i*down + k - pad0]

A 2-D filter acts on both axes at once; a 1-D filter is separable and runs along x, then y.

Filters are constants: float32 tensors as setup_filter() makes them, never differentiated. The
reference below uses only differentiable PyTorch ops, so it has gradients of any order. The CUDA
path (csrc/upfirdn2d.cu) gets its gradient from the same kernel run with the transposed
configuration (_transposed_config), so it too has gradients of any order.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from . import _checks, _dispatch, _layout, _loader, _selfcheck
from ._function_cache import function_cache

OP = "upfirdn2d"
KERNEL = _dispatch.KERNEL_NAMES[OP]  # the compiled function auto dispatches on and self-checks

# What the CUDA kernel covers (csrc/upfirdn2d.h: kUpfirdn2dMaxTaps, kUpfirdn2dMaxFactor; a GPU test
# compares); larger configurations go to the reference under 'auto'.
KERNEL_MAX_TAPS = 12
KERNEL_MAX_FACTOR = 8
# |padding| and the upsampled size per axis (csrc/bind_upfirdn2d.h: kUpfirdn2dMaxSpatial; the
# kernels' int positions stay far from overflow below it).
KERNEL_MAX_SPATIAL = 1 << 24

IntOrPair = Union[int, Sequence[int]]
Padding = Union[int, Sequence[int]]


# ---------------------------------------------------------------------------------------------
# Argument parsing, shared by upfirdn2d and the helpers (each passes its own name for messages).


def _check_gain(op: str, gain: object) -> float:
    if not isinstance(gain, numbers.Real) or isinstance(gain, bool) or not math.isfinite(gain):
        raise ValueError(f"{op}: gain must be a finite number, got {gain!r}")
    return float(gain)


def _check_flip(op: str, flip_filter: object) -> bool:
    if not isinstance(flip_filter, bool):
        raise ValueError(f"{op}: flip_filter must be True or False, got {flip_filter!r}")
    return flip_filter


def _resampled_length(
    op: str, axis: str, size: int, up: int, down: int, pad0: int, pad1: int, taps: int
) -> int:
    """Output length along one axis; raises if the filter does not fit the padded signal."""
    padded = size * up + pad0 + pad1
    if padded < taps:
        raise ValueError(
            f"{op}: the output would be empty along {axis}: input {size} * up {up} + padding "
            f"({pad0}, {pad1}) = {padded} samples, fewer than the filter's {taps} taps; "
            "give more padding or a larger input"
        )
    return (padded - taps) // down + 1


def _kernel_unsupported(
    f: Optional[torch.Tensor],
    up: tuple[int, int],
    down: tuple[int, int],
    pad: tuple[int, int, int, int] = (0, 0, 0, 0),
    size: tuple[int, int] = (0, 0),
) -> Optional[str]:
    """Why the CUDA kernel cannot run this configuration, or None if it can.

    pad: (x0, x1, y0, y1); size: the input's (width, height).
    """
    fw, fh = _checks.filter_size(f)
    if max(fw, fh) > KERNEL_MAX_TAPS:
        return f"a {fh}x{fw} filter exceeds the kernel's {KERNEL_MAX_TAPS}x{KERNEL_MAX_TAPS} taps"
    if max(up + down) > KERNEL_MAX_FACTOR:
        return f"up={list(up)} / down={list(down)} exceed the kernel's factor limit {KERNEL_MAX_FACTOR}"
    # The bindings refuse these (int32 positions); 'auto' must not send them there.
    if max(abs(v) for v in pad) > KERNEL_MAX_SPATIAL or max(size[0] * up[0], size[1] * up[1]) > KERNEL_MAX_SPATIAL:
        return f"padding {list(pad)} or upsampled size {[size[0] * up[0], size[1] * up[1]]} exceeds {KERNEL_MAX_SPATIAL}"
    return None


# ---------------------------------------------------------------------------------------------
# Public API


def setup_filter(
    f: object,
    device: Union[torch.device, str] = torch.device("cpu"),
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1,
    separable: Optional[bool] = None,
) -> torch.Tensor:
    """Makes a FIR filter for upfirdn2d() and the helpers.

    Args:
        f: filter taps as a tensor, numpy array or (nested) list: [filter_height, filter_width]
            (2-D), [filter_taps] (1-D), a scalar [] (one tap) or None (the identity, [1]).
        device: the device of the result.
        normalize: divide by the sum of the taps, so a constant signal keeps its magnitude.
        flip_filter: flip the taps along every axis.
        gain: overall signal gain; a 2-D filter is scaled by gain, a separable one by sqrt(gain)
            (it is applied once per axis).
        separable: return a 1-D separable filter (True) or a 2-D one (False, a 1-D input becomes
            its outer product with itself). None chooses as NVlabs does: separable for 1-D
            inputs of 8 taps or more, 2-D otherwise.

    Returns:
        A float32 tensor on `device`: [filter_taps] if separable, else
        [filter_height, filter_width].
    """
    op = "setup_filter"
    if f is None:
        f = 1
    try:
        # float64 first: normalize and gain in full precision, rounded to float32 once.
        t = torch.as_tensor(f, dtype=torch.float64, device="cpu") if not isinstance(f, torch.Tensor) \
            else f.detach().to(device="cpu", dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{op}: f must be a tensor, array, list of numbers or None: {e}") from None
    if t.ndim not in (0, 1, 2) or t.numel() == 0:
        raise ValueError(f"{op}: f must have 0, 1 or 2 dimensions and taps, got shape {list(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{op}: f has non-finite taps")
    if separable is not None and not isinstance(separable, bool):
        raise ValueError(f"{op}: separable must be True, False or None, got {separable!r}")
    gain = _check_gain(op, gain)
    if t.ndim == 0:
        t = t.reshape(1)
    if separable is None:
        separable = t.ndim == 1 and t.numel() >= 8
    if t.ndim == 1 and not separable:
        t = torch.outer(t, t)
    if separable and t.ndim != 1:
        raise ValueError(f"{op}: separable=True needs a 1-D f, got shape {list(t.shape)}")
    if normalize:
        total = float(t.sum())
        if total == 0:
            raise ValueError(f"{op}: f sums to zero and cannot be normalized; pass normalize=False")
        t = t / total
    if flip_filter:
        t = t.flip(list(range(t.ndim)))
    if separable:
        if gain < 0:
            raise ValueError(f"{op}: a separable filter cannot carry a negative gain ({gain}); "
                             "pass the gain to upfirdn2d instead")
        t = t * math.sqrt(gain)
    else:
        t = t * gain
    return t.to(dtype=torch.float32).to(device=device)


def upfirdn2d(
    x: torch.Tensor,
    f: Optional[torch.Tensor],
    up: IntOrPair = 1,
    down: IntOrPair = 1,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "auto",
) -> torch.Tensor:
    """Upsamples, pads, FIR-filters and downsamples a batch of 2D images (see the module docs).

    Args:
        x: [batch_size, num_channels, in_height, in_width]; float64, float32, float16 or
            bfloat16, contiguous or channels_last.
        f: float32 filter on x's device: [filter_height, filter_width] (2-D), [filter_taps]
            (separable, applied along x and then y) or None (identity). Applied in x's dtype.
        up: upsampling factor, an int or [x, y].
        down: downsampling factor, an int or [x, y].
        padding: zero padding of the upsampled image, an int, [x, y] or
            [x_before, x_after, y_before, y_after]; negative values crop.
        flip_filter: False = convolution, True = correlation.
        gain: scale of the result (once, also for a separable filter).
        impl: 'auto', 'ref' or 'cuda' (see the package docs).

    Returns:
        [batch_size, num_channels, out_height, out_width] in x's dtype and memory format, where
        out = (in * up + pad_before + pad_after - taps) // down + 1 along each axis.
    """
    return _upfirdn2d(OP, x, f, up, down, padding, flip_filter, gain, impl)


def filter2d(
    x: torch.Tensor,
    f: Optional[torch.Tensor],
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "auto",
) -> torch.Tensor:
    """Filters a batch of 2D images; by default the output has the input's size.

    Args:
        x: [batch_size, num_channels, in_height, in_width].
        f: float32 filter [filter_height, filter_width], [filter_taps] or None.
        padding: extra padding with respect to the output (int, [x, y] or
            [x_before, x_after, y_before, y_after]); negative values crop.
        flip_filter, gain, impl: as in upfirdn2d().

    Returns:
        [batch_size, num_channels, in_height + pad_y, in_width + pad_x] where pad_* is the sum
        of the given padding along that axis.
    """
    op = "filter2d"
    x0, x1, y0, y1 = _checks.parse_padding(op, padding)
    _checks.check_tensor(op, "x", x, ndim=4)
    fw, fh = _checks.filter_size(_checks.check_filter(op, f, x))
    p = [x0 + fw // 2, x1 + (fw - 1) // 2, y0 + fh // 2, y1 + (fh - 1) // 2]
    return _upfirdn2d(op, x, f, 1, 1, p, flip_filter, gain, impl)


def upsample2d(
    x: torch.Tensor,
    f: Optional[torch.Tensor],
    up: IntOrPair = 2,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "auto",
) -> torch.Tensor:
    """Upsamples a batch of 2D images with a FIR filter; by default out = in * up.

    The gain is multiplied by up_x * up_y, which makes up for the inserted zeros, so a
    normalized filter keeps a constant signal's magnitude.

    Args:
        x: [batch_size, num_channels, in_height, in_width].
        f: float32 filter [filter_height, filter_width], [filter_taps] or None.
        up: upsampling factor, an int or [x, y].
        padding: extra padding with respect to the output (int, [x, y] or
            [x_before, x_after, y_before, y_after]); negative values crop.
        flip_filter, gain, impl: as in upfirdn2d().

    Returns:
        [batch_size, num_channels, in_height * up_y + pad_y, in_width * up_x + pad_x].
    """
    op = "upsample2d"
    ux, uy = _checks.check_int_pair(op, "up", up, minimum=1)
    x0, x1, y0, y1 = _checks.parse_padding(op, padding)
    _checks.check_tensor(op, "x", x, ndim=4)
    fw, fh = _checks.filter_size(_checks.check_filter(op, f, x))
    gain = _check_gain(op, gain)
    p = [x0 + (fw + ux - 1) // 2, x1 + (fw - ux) // 2, y0 + (fh + uy - 1) // 2, y1 + (fh - uy) // 2]
    return _upfirdn2d(op, x, f, (ux, uy), 1, p, flip_filter, gain * ux * uy, impl)


def downsample2d(
    x: torch.Tensor,
    f: Optional[torch.Tensor],
    down: IntOrPair = 2,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
    impl: str = "auto",
) -> torch.Tensor:
    """Downsamples a batch of 2D images with a FIR filter; by default out = in / down.

    Args:
        x: [batch_size, num_channels, in_height, in_width].
        f: float32 filter [filter_height, filter_width], [filter_taps] or None.
        down: downsampling factor, an int or [x, y].
        padding: extra padding with respect to the input (int, [x, y] or
            [x_before, x_after, y_before, y_after]); negative values crop.
        flip_filter, gain, impl: as in upfirdn2d().

    Returns:
        [batch_size, num_channels, out_height, out_width] with
        out = (in + pad - 1) // down + 1 along each axis (in // down for even in and no pad).
    """
    op = "downsample2d"
    dx, dy = _checks.check_int_pair(op, "down", down, minimum=1)
    x0, x1, y0, y1 = _checks.parse_padding(op, padding)
    _checks.check_tensor(op, "x", x, ndim=4)
    fw, fh = _checks.filter_size(_checks.check_filter(op, f, x))
    p = [x0 + (fw - dx + 1) // 2, x1 + (fw - dx) // 2, y0 + (fh - dy + 1) // 2, y1 + (fh - dy) // 2]
    return _upfirdn2d(op, x, f, 1, (dx, dy), p, flip_filter, gain, impl)


def _upfirdn2d(
    op: str,
    x: torch.Tensor,
    f: Optional[torch.Tensor],
    up: IntOrPair,
    down: IntOrPair,
    padding: Padding,
    flip_filter: bool,
    gain: float,
    impl: str,
) -> torch.Tensor:
    """Validates everything (messages name `op`), dispatches, runs."""
    _checks.check_tensor(op, "x", x, ndim=4)
    f = _checks.check_filter(op, f, x)
    upxy = _checks.check_int_pair(op, "up", up, minimum=1)
    downxy = _checks.check_int_pair(op, "down", down, minimum=1)
    pad = _checks.parse_padding(op, padding)
    flip_filter = _check_flip(op, flip_filter)
    gain = _check_gain(op, gain)
    fw, fh = _checks.filter_size(f)
    _resampled_length(op, "width", x.shape[3], upxy[0], downxy[0], pad[0], pad[1], fw)
    _resampled_length(op, "height", x.shape[2], upxy[1], downxy[1], pad[2], pad[3], fh)

    # choose() raises for impl='cuda' (no GPU, a float64 x, a configuration the kernel does not
    # cover, or no compiled 'upfirdn2d' kernel).
    chosen = _dispatch.choose(op, impl, KERNEL, {"x": x}, unsupported=_kernel_unsupported(f, upxy, downxy, pad, (x.shape[3], x.shape[2])))
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if chosen == "cuda":
        return _cuda_function(upxy, downxy, pad, flip_filter, gain).apply(x, f.contiguous())
    return upfirdn2d_ref(x, f, upxy, downxy, pad, flip_filter, gain)


# ---------------------------------------------------------------------------------------------
# Reference


def _placement(size: int, up: int, pad0: int, out_size: int) -> tuple[slice, slice]:
    """Where input samples go along one axis: (slice of the input, slice of the output).

    Input sample j lands at j*up + pad0; those landing outside [0, out_size) are cropped.
    """
    first = max(0, -(pad0 // up))  # ceil(-pad0 / up): the first sample at a position >= 0
    last = min(size, (out_size - 1 - pad0) // up + 1)  # exclusive; floor division, so <= 0 if none
    count = last - first
    if count <= 0:
        return slice(0, 0), slice(0, 0)
    start = first * up + pad0
    return slice(first, last), slice(start, start + (count - 1) * up + 1, up)


def _upsample_pad(
    x: torch.Tensor, up: tuple[int, int], pad: tuple[int, int, int, int]
) -> torch.Tensor:
    """Steps 1 and 2 together: the zero-stuffed, padded (or cropped) image.

    Writing the input samples into a zero tensor of the final size does both steps with one
    copy, keeps x's memory format, and stays differentiable (the copy's backward is a slice).
    """
    (ux, uy), (x0, x1, y0, y1) = up, pad
    if ux == 1 and uy == 1 and not any(pad):
        return x
    n, c, h, w = x.shape
    out_h, out_w = h * uy + y0 + y1, w * ux + x0 + x1
    out = torch.empty(
        [n, c, out_h, out_w], dtype=x.dtype, device=x.device, memory_format=_layout.memory_format(x)
    ).zero_()
    src_r, dst_r = _placement(h, uy, y0, out_h)
    src_c, dst_c = _placement(w, ux, x0, out_w)
    # Also when nothing lands inside (empty slices): the copy keeps the result attached to x.
    out[:, :, dst_r, dst_c] = x[:, :, src_r, src_c]
    return out


def upfirdn2d_ref(
    x: torch.Tensor,
    f: torch.Tensor,
    up: tuple[int, int],
    down: tuple[int, int],
    pad: tuple[int, int, int, int],
    flip_filter: bool,
    gain: float,
) -> torch.Tensor:
    """The definition in plain differentiable PyTorch, for validated arguments.

    x: [batch_size, num_channels, in_height, in_width]; f: float32 [filter_height, filter_width]
    or [filter_taps]; up, down: (x, y); pad: (x_before, x_after, y_before, y_after).
    Returns [batch_size, num_channels, out_height, out_width].
    """
    n, c, _, _ = x.shape
    x = _upsample_pad(x, up, pad)

    # conv2d correlates, so a true convolution flips the taps. The gain multiplies the taps in
    # float64 (float32 for the lower precisions) so each tap rounds to x's dtype only once; a
    # separable filter carries all of it in its first (x) pass.
    taps = f.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    if not flip_filter:
        taps = taps.flip(list(range(taps.ndim)))
    scaled = (taps * gain if gain != 1 else taps).to(x.dtype)

    # Depthwise conv (groups = channels); the stride does step 4 without computing the discarded
    # outputs. conv2d rejects groups=0, so zero channels fold into an (empty) batch instead.
    groups = c
    if c == 0:
        x, groups = x.reshape(0, 1, x.shape[2], x.shape[3]), 1
    dx, dy = down
    if scaled.ndim == 2:
        weight = scaled[None, None].expand(groups, 1, -1, -1).contiguous()
        y = F.conv2d(x, weight, stride=(dy, dx), groups=groups)
    else:
        wx = scaled[None, None, None, :].expand(groups, 1, 1, -1).contiguous()
        wy = taps.to(x.dtype)[None, None, :, None].expand(groups, 1, -1, 1).contiguous()
        y = F.conv2d(x, wx, stride=(1, dx), groups=groups)
        y = F.conv2d(y, wy, stride=(dy, 1), groups=groups)
    if c == 0:
        y = y.reshape(n, 0, y.shape[2], y.shape[3])
    return y


# ---------------------------------------------------------------------------------------------
# CUDA path. The kernel takes any strides (so channels_last needs no copies) and writes its output
# in x's memory format. One autograd Function per static configuration; its backward applies the
# Function of the transposed configuration, whose backward is the original again: any order.


def _transposed_config(
    up: tuple[int, int],
    down: tuple[int, int],
    pad: tuple[int, int, int, int],
    flip_filter: bool,
    taps: tuple[int, int],
    in_size: tuple[int, int],
    out_size: tuple[int, int],
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int], bool]:
    """The upfirdn2d configuration that maps dy to dx: (up, down, pad, flip_filter).

    All pairs are (x, y) and pad is (x0, x1, y0, y1); taps, in_size and out_size are the
    forward's filter size and its input and output (width, height).

    Along one axis, with w the correlation weights (w[k] = f[t-1-k] unless flip_filter) and
    w[k] = 0 outside [0, t), the forward is
        y[o] = gain * sum_k w[k] u[o*down + k - pad0] = gain * sum_j x[j] w[j*up + pad0 - o*down],
    so  dx[j] = gain * sum_o dy[o] w[j*up + pad0 - o*down].
    upfirdn2d of dy with up' = down, down' = up and weights w'[k] = w[t-1-k] (the other
    flip_filter) reads tap k = o*down - j*up + pad0' for sample o, i.e. weight
    w[t-1-pad0' + j*up - o*down]: equal to the above exactly when pad0' = t-1-pad0. pad1' then
    makes the output exactly in long: the padded length out*down + pad0' + pad1' must be
    (in-1)*up + t, so pad1' = in*up - out*down + pad0 - up + 1. (NVlabs' docs describe the same
    transposition.)
    """
    t_pad = []
    for axis in (0, 1):
        t, n_in, n_out, p0 = taps[axis], in_size[axis], out_size[axis], pad[2 * axis]
        t_pad += [t - 1 - p0, n_in * up[axis] - n_out * down[axis] + p0 - up[axis] + 1]
    return down, up, (t_pad[0], t_pad[1], t_pad[2], t_pad[3]), not flip_filter


# The binding's `path` argument: 0 lets it choose between the tiled and the general kernel (the
# tests pass 1 or 2 to compare them); the registered op always means 0.
AUTO_PATH = 0


@torch.library.custom_op("stylegan2_ops::upfirdn2d", mutates_args=())
def _kernel_op(
    x: torch.Tensor,
    f: torch.Tensor,
    up_x: int,
    up_y: int,
    down_x: int,
    down_y: int,
    pad_x0: int,
    pad_x1: int,
    pad_y0: int,
    pad_y1: int,
    flip: bool,
    gain: float,
) -> torch.Tensor:
    return getattr(_loader.load(), KERNEL)(x, f, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1, flip, gain,
                                           AUTO_PATH)


@_kernel_op.register_fake
def _(x, f, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1, flip, gain):
    out_w = (x.shape[3] * up_x + pad_x0 + pad_x1 - f.shape[-1]) // down_x + 1
    out_h = (x.shape[2] * up_y + pad_y0 + pad_y1 - f.shape[0]) // down_y + 1
    return torch.empty([x.shape[0], x.shape[1], out_h, out_w], dtype=x.dtype, device=x.device,
                       memory_format=_layout.memory_format(x))


_kernel = _loader.kernel_call(_kernel_op, KERNEL, module_tail=(AUTO_PATH,))


def _run_kernel(
    x: torch.Tensor,
    f: torch.Tensor,
    up: tuple[int, int],
    down: tuple[int, int],
    pad: tuple[int, int, int, int],
    flip_filter: bool,
    gain: float,
) -> torch.Tensor:
    """One kernel call, with the configuration spelled out as the binding takes it (the output's
    memory format follows x's strides, by _layout.memory_format's rule)."""
    return _kernel(x, f, up[0], up[1], down[0], down[1], pad[0], pad[1], pad[2], pad[3], flip_filter, gain)


@function_cache
def _cuda_function(
    up: tuple[int, int], down: tuple[int, int], pad: tuple[int, int, int, int], flip_filter: bool, gain: float
) -> type:
    """The autograd Function for one static configuration (cached per configuration)."""

    class Upfirdn2dCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
            y = _run_kernel(x, f, up, down, pad, flip_filter, gain)
            ctx.save_for_backward(f)  # the op is linear: the backward needs no x
            ctx.x_shape = x.shape
            return y

        @staticmethod
        def backward(ctx, dy: torch.Tensor):
            (f,) = ctx.saved_tensors
            if not ctx.needs_input_grad[0]:
                return None, None
            n, c, h, w = ctx.x_shape
            if h == 0 or w == 0:  # nothing to differentiate; the transposed output would be empty
                return dy.new_zeros(ctx.x_shape), None
            fw, fh = _checks.filter_size(f)
            t_up, t_down, t_pad, t_flip = _transposed_config(
                up, down, pad, flip_filter, (fw, fh), (w, h), (dy.shape[3], dy.shape[2])
            )
            return _cuda_function(t_up, t_down, t_pad, t_flip, gain).apply(dy, f), None

    return Upfirdn2dCuda


def _selfcheck_kernel(device: torch.device, dtype: torch.dtype) -> None:
    """Kernel vs reference on small random cases (the tiled 4-tap paths and the general kernel),
    forward and input gradient; see _selfcheck.py."""
    gen = torch.Generator().manual_seed(20261123)
    f4 = setup_filter([1, 3, 3, 1], device=device)
    f5 = torch.rand(5, 3, generator=gen).to(device)
    cases = [  # (filter, up, down, padding, channels_last)
        (f4, 2, 1, [2, 1, 2, 1], False),
        (f4, 1, 2, [1, 1, 1, 1], True),
        (f4, 1, 1, [1, 2, 1, 2], False),
        (f5, [3, 1], [1, 2], [2, -1, 0, 3], True),
    ]
    for f, up, down, padding, channels_last in cases:
        x = torch.randn(2, 5, 9, 11, generator=gen).to(device, dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        outs, dy = {}, None
        for impl in ("ref", "cuda"):
            xi = (x if impl == "cuda" else x.float()).detach().requires_grad_(True)
            y = upfirdn2d(xi, f, up=up, down=down, padding=padding, gain=1.5, impl=impl)
            dy = torch.randn(y.shape, generator=gen).to(device) if dy is None else dy
            outs[impl] = (y, torch.autograd.grad(y, xi, dy.to(y.dtype))[0])
        label = f"up={up} down={down} taps={list(f.shape)}"
        _selfcheck.assert_close(OP, f"y ({label})", outs["cuda"][0], outs["ref"][0], dtype)
        _selfcheck.assert_close(OP, f"dx ({label})", outs["cuda"][1], outs["ref"][1], dtype)


_selfcheck.register(KERNEL, _selfcheck_kernel)
