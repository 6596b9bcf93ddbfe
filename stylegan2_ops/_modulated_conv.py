"""modulated_conv2d: StyleGAN2's style-modulated, optionally demodulated, resampling convolution.

For every sample n of the batch, with s = styles[n]:

    w[o, i, :, :] = weight[o, i, :, :] * s[i]                        (modulation)
    w[o, :, :, :] *= 1 / sqrt(sum_{i,ky,kx} w[o, i, ky, kx]^2 + 1e-8)  (demodulation, optional)
    y[n] = conv2d_resample(x[n], w, resample_filter, up, down, padding, flip_weight) + noise[n]

Two equivalent routes compute it, as in NVlabs' stylegan2-ada-pytorch:
- fused: build the per-sample weights and run one grouped convolution (groups = batch size);
- not fused: scale x by the styles, convolve with the shared weight, scale by the demodulation
  coefficients. Cheaper in memory for large batches; the training default in NVlabs.

conv2d_resample (the convolution with up/down sampling) means, along each axis:

    upfirdn2d(x, f if up > 1 else identity, up=up, padding=P, gain=up**2)
    -> conv2d(., w)  (correlation when flip_weight, true convolution otherwise; no padding)
    -> upfirdn2d(., f, down=down)  when down > 1

where `padding` is given with respect to the upsampled image and P widens it so that the filter
stays centred: P0 = padding0 + (fw + up - 1) // 2 and P1 = padding1 + (fw - up) // 2 for up > 1,
plus (fw - down + 1) // 2 and (fw - down) // 2 for down > 1 (fw: the filter's taps on that
axis). So a k x k convolution with padding k // 2 keeps the size at up = down = 1, doubles it at
up = 2 and halves an even size at down = 2. The code takes faster routes that give the same
result: a transposed convolution with stride `up`, or a strided convolution after filtering.

The optional keyword-only extras (bias, act, alpha, gain, clamp) apply bias_act to the result;
the CUDA path (_modulated_conv_cuda.py) fuses them, with demodulation and noise, into one
epilogue kernel after cuDNN's convolution.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import torch

from . import _checks, _dispatch, _selfcheck
from . import _modulated_conv_cuda as _cuda
from ._bias_act import ACTIVATIONS, bias_act
from ._conv2d_resample import adjusted_padding, conv2d_resample, conv_output_length, prenormalise_fp16
from ._upfirdn2d import setup_filter

OP = "modulated_conv2d"
KERNEL = _dispatch.KERNEL_NAMES[OP]  # the compiled function auto dispatches on and self-checks

Padding = Union[int, Sequence[int]]


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: Optional[torch.Tensor] = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    resample_filter: Optional[torch.Tensor] = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
    impl: str = "auto",
    *,
    bias: Optional[torch.Tensor] = None,
    act: str = "linear",
    alpha: Optional[float] = None,
    gain: Optional[float] = None,
    clamp: Optional[float] = None,
) -> torch.Tensor:
    """Modulated (and demodulated) 2D convolution with optional up/downsampling.

    Args:
        x: activations [batch_size, in_channels, in_height, in_width]; float64, float32, float16
            or bfloat16; contiguous or channels_last.
        weight: [out_channels, in_channels, kernel_height, kernel_width].
        styles: modulation coefficients [batch_size, in_channels], of weight's dtype.
        noise: added to the result; broadcastable to [batch_size, out_channels, out_height,
            out_width] (typically [batch_size, 1, out_height, out_width]), or None.
        up: integer upsampling factor.
        down: integer downsampling factor.
        padding: with respect to the upsampled image: an int, [x, y] or
            [x_before, x_after, y_before, y_after]; negative values crop.
        resample_filter: low-pass filter for up/downsampling, float32 [taps] (separable) or
            [filter_height, filter_width], as setup_filter() makes it. None = the 1x1 identity
            (as in NVlabs: zero-insertion upsampling scaled by up**2, plain decimation); the
            model passes setup_filter([1, 3, 3, 1]). Ignored when up = down = 1.
        demodulate: normalize each output channel's modulated weights to unit L2 norm.
        flip_weight: True = correlation (as torch.nn.functional.conv2d), False = convolution.
        fused_modconv: compute with per-sample weights in one grouped convolution (True) or by
            scaling the activations before and after a shared convolution (False). Both give
            the same result up to rounding.
        impl: 'auto', 'ref' or 'cuda' (see the package docs). The CUDA path's resampling
            filters go through upfirdn2d with impl='auto'.
        bias: [out_channels] or None; with act, alpha, gain and clamp (keyword-only), the
            result goes through bias_act(y, bias, act=act, alpha=alpha, gain=gain, clamp=clamp).
            Left at their defaults, the function is exactly NVlabs' modulated_conv2d.

    Dtypes: x sets the dtype of the result. weight and styles (the parameters) share one float
    dtype, which may differ from x's: float32 parameters with float16 or bfloat16 activations is
    the mixed-precision case. Modulation and demodulation are computed in the parameters' dtype,
    then cast to x's dtype where they meet the activations; noise and bias are cast to x's dtype
    too. As in NVlabs, when x is float16 and demodulate is on, weight and styles are first
    rescaled by their largest magnitudes (which demodulation cancels) so float16 cannot
    overflow.

    Returns:
        [batch_size, out_channels, out_height, out_width] in x's dtype.
    """
    _checks.check_tensor(OP, "x", x, ndim=4)
    _checks.check_tensor(OP, "weight", weight, ndim=4)
    _checks.check_tensor(OP, "styles", styles, ndim=2)
    batch_size, in_channels, in_h, in_w = x.shape
    out_channels, w_in_channels, kh, kw = weight.shape
    if w_in_channels != in_channels:
        raise ValueError(
            f"{OP}: weight has {w_in_channels} input channels (shape {list(weight.shape)}) but x "
            f"has {in_channels} (shape {list(x.shape)})"
        )
    if list(styles.shape) != [batch_size, in_channels]:
        raise ValueError(
            f"{OP}: styles must have shape [batch_size, in_channels] = "
            f"{[batch_size, in_channels]}, got {list(styles.shape)}"
        )
    _checks.check_same_dtype(OP, weight=weight, styles=styles)
    if noise is not None:
        _checks.check_tensor(OP, "noise", noise)
    if bias is not None:
        _checks.check_tensor(OP, "bias", bias, ndim=1)
        if bias.shape[0] != out_channels:
            raise ValueError(
                f"{OP}: bias has {bias.shape[0]} elements but weight has {out_channels} "
                "output channels"
            )
    _checks.check_filter(OP, resample_filter, x, name="resample_filter")
    _checks.check_same_device(
        OP, x=x, weight=weight, styles=styles, noise=noise, bias=bias,
        resample_filter=resample_filter,
    )
    up = _check_factor("up", up)
    down = _check_factor("down", down)
    pads = _checks.parse_padding(OP, padding)
    for name, flag in (("demodulate", demodulate), ("flip_weight", flip_weight),
                       ("fused_modconv", fused_modconv)):
        if not isinstance(flag, bool):
            raise ValueError(f"{OP}: {name} must be True or False, got {flag!r}")
    extras = _check_extras(act, alpha, gain, clamp, bias)

    fw, fh = _checks.filter_size(resample_filter)
    pads = adjusted_padding(pads, fw, fh, up, down)
    out_w = conv_output_length(OP, "width", in_w, kw, fw, up, down, pads[0], pads[1])
    out_h = conv_output_length(OP, "height", in_h, kh, fh, up, down, pads[2], pads[3])
    out_shape = [batch_size, out_channels, out_h, out_w]
    if noise is not None:
        try:
            fits = list(torch.broadcast_shapes(noise.shape, out_shape)) == out_shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"{OP}: noise of shape {list(noise.shape)} does not broadcast to the output "
                f"shape {out_shape}"
            )

    chosen = _dispatch.choose(
        OP, impl, KERNEL, {"x": x, "weight": weight, "styles": styles, "noise": noise, "bias": bias},
        unsupported=_cuda.unsupported_reason(x, weight, out_shape),
    )
    if chosen == "cuda":
        return _cuda.modulated_conv2d_cuda(
            x, weight, styles, noise, up, down, pads, resample_filter, demodulate, flip_weight,
            fused_modconv, bias, act, alpha, gain, clamp,
        )
    # The reference's resampling filters go through upfirdn2d with the same impl request, so
    # 'ref' stays pure PyTorch throughout and 'auto' may use upfirdn2d's kernel.
    y = modulated_conv2d_ref(
        x, weight, styles, noise, up, down, pads, resample_filter, demodulate, flip_weight,
        fused_modconv, impl,
    )
    if extras:
        b = bias.to(y.dtype) if bias is not None else None
        y = bias_act(y, b, dim=1, act=act, alpha=alpha, gain=gain, clamp=clamp, impl=impl)
    return y


def modulated_conv2d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: Optional[torch.Tensor],
    up: int,
    down: int,
    pads: tuple[int, int, int, int],
    f: Optional[torch.Tensor],
    demodulate: bool,
    flip_weight: bool,
    fused_modconv: bool,
    impl: str = "ref",
) -> torch.Tensor:
    """The reference, in differentiable public PyTorch ops; arguments already checked.

    pads: the adjusted padding (x0, x1, y0, y1) of adjusted_padding(), not the user's.
    impl: passed on to upfirdn2d. Shapes as in modulated_conv2d().
    """
    batch_size, in_channels = x.shape[:2]
    out_channels, _, kh, kw = weight.shape

    weight, styles = prenormalise_fp16(x, weight, styles, demodulate)

    w = dcoefs = None
    if demodulate or fused_modconv:
        w = weight.unsqueeze(0) * styles.reshape(batch_size, 1, in_channels, 1, 1)  # [N,O,I,kh,kw]
    if demodulate:
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch_size, in_channels, 1, 1)
        y = conv2d_resample(x, weight.to(x.dtype), f, up, down, pads, 1, flip_weight, impl)
        if demodulate:
            y = y * dcoefs.to(y.dtype).reshape(batch_size, out_channels, 1, 1)
    else:
        if demodulate:
            w = w * dcoefs.reshape(batch_size, out_channels, 1, 1, 1)
        # One grouped convolution: the batch becomes the groups of a single image.
        xg = x.reshape(1, batch_size * in_channels, *x.shape[2:])
        wg = w.reshape(batch_size * out_channels, in_channels, kh, kw).to(x.dtype)
        y = conv2d_resample(xg, wg, f, up, down, pads, batch_size, flip_weight, impl)
        y = y.reshape(batch_size, out_channels, *y.shape[2:])
    if noise is not None:
        y = y + noise.to(y.dtype)
    return y


# ---------------------------------------------------------------------------------------------
# Argument checks.


def _check_factor(name: str, value: object) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{OP}: {name} must be an int >= 1, got {value!r}")
    return int(value)


def _check_extras(
    act: object, alpha: object, gain: object, clamp: object, bias: Optional[torch.Tensor]
) -> bool:
    """Validates the bias_act extras up front; returns whether any is in use."""
    if act not in ACTIVATIONS:
        raise ValueError(f"{OP}: unknown act {act!r}; choose one of {', '.join(ACTIVATIONS)}")
    for name, value in (("alpha", alpha), ("gain", gain), ("clamp", clamp)):
        if value is None:
            continue
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise ValueError(f"{OP}: {name} must be a finite number or None, got {value!r}")
    return bias is not None or act != "linear" or any(v is not None for v in (alpha, gain, clamp))


def _selfcheck_kernel(device: torch.device, dtype: torch.dtype) -> None:
    """Kernel vs reference on a small layer as the generator runs it (up 1 and 2, training and
    generation routes, noise, bias, lrelu, clamp): output and the gradients for x, weight and
    styles; see _selfcheck.py."""
    gen = torch.Generator().manual_seed(20261123)
    f = setup_filter([1, 3, 3, 1], device=device)
    for up, fused, channels_last in ((1, False, False), (2, False, True), (1, True, True), (2, True, False)):
        x = torch.randn(2, 8, 6, 6, generator=gen).to(device, dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        weight = torch.randn(6, 8, 3, 3, generator=gen).to(device)
        styles = torch.randn(2, 8, generator=gen).to(device) + 1
        noise = torch.randn(2, 1, 6 * up, 6 * up, generator=gen).to(device, dtype)
        bias = torch.randn(6, generator=gen).to(device, dtype)
        dy = torch.randn(2, 6, 6 * up, 6 * up, generator=gen).to(device)
        outs = {}
        for impl in ("cuda", "ref"):
            xi = (x if impl == "cuda" else x.float()).detach().requires_grad_(True)
            wi, si = weight.clone().requires_grad_(True), styles.clone().requires_grad_(True)
            y = modulated_conv2d(
                xi, wi, si, noise=noise.to(xi.dtype), up=up, padding=1, resample_filter=f,
                flip_weight=(up == 1), fused_modconv=fused, impl=impl,
                bias=bias.to(xi.dtype), act="lrelu", clamp=64.0,
            )
            outs[impl] = (y, *torch.autograd.grad(y, (xi, wi, si), dy.to(y.dtype)))
        label = f"up={up} fused={fused}"
        for what, got, want in zip(("y", "dx", "dweight", "dstyles"), outs["cuda"], outs["ref"]):
            _selfcheck.assert_close(OP, f"{what} ({label})", got, want, dtype)


_selfcheck.register(KERNEL, _selfcheck_kernel)
