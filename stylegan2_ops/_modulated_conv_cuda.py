"""The CUDA path of modulated_conv2d: custom kernels around cuDNN's convolutions.

Training route (fused_modconv=False, shared weight):
    xs = x * styles[n, i]                                     epilogue kernel, linear
    c  = conv2d_resample(xs, weight)                          cuDNN (+ upfirdn2d for up/down)
    y  = clamp(act(c * d[n, o] + noise + bias) * gain)        ONE epilogue kernel
where d = rsqrt(styles^2 @ sum_k(weight^2)^T + eps) is a [N, I] x [I, O] product in plain
differentiable PyTorch: sum_{i,k} (weight[o,i,k] * styles[n,i])^2 factors that way, so the
[N, O, I, kh, kw] tensor of modulated weights is never built. The epilogue's backward is one pass
over the big tensors: it reads dy and c, writes dc, and reduces the gradients of d (sum dv * c),
of the bias and of the noise (sum dv) on the way.

Generation route (fused_modconv=True, per-sample weights):
    w = weight * styles * d                                   modulation kernel, one pass
    c = grouped conv2d_resample(x, w)                         cuDNN, groups = batch size
    y = clamp(act(c + noise + bias) * gain)                   epilogue kernel

Derivatives: every kernel sits in an autograd.Function whose backward is another Function
running the backward kernel; that one's backward (second order: R1, path length) recomputes the
first-order gradients with differentiable PyTorch ops on the saved tensors and differentiates
them, so gradients of gradients are exact and third-order calls still see a connected graph.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from . import _dispatch, _layout, _loader
from ._conv2d_resample import conv2d_resample, prenormalise_fp16
from ._function_cache import function_cache
from ._bias_act import ACTIVATIONS

EPS = 1e-8
_DTYPE_IDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # sg2::DType

# ---------------------------------------------------------------------------------------------
# The raw kernels as torch.library ops with fake (shape-only) implementations, so torch.compile
# can trace the first-order path. Eager calls go straight to the module (the dispatcher's
# overhead rivals the small layers' kernels).


@torch.library.custom_op("stylegan2_ops::modulate_weights", mutates_args=())
def _modulate_op(
    weight: torch.Tensor, styles: torch.Tensor, out_dtype: int, demodulate: bool, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _loader.load().modulate_weights(weight, styles, out_dtype, demodulate, eps)


@_modulate_op.register_fake
def _(weight, styles, out_dtype, demodulate, eps):
    dtype = {v: k for k, v in _DTYPE_IDS.items()}[out_dtype]
    n, (o, i, kh, kw) = styles.shape[0], weight.shape
    return weight.new_empty([n, o, i, kh, kw], dtype=dtype), weight.new_empty([n, o], dtype=torch.float32)


@torch.library.custom_op("stylegan2_ops::modulate_weights_grad", mutates_args=())
def _modulate_grad_op(
    grad: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, dcoefs: torch.Tensor, demodulate: bool,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _loader.load().modulate_weights_grad(grad, weight, styles, dcoefs, demodulate, eps)


@_modulate_grad_op.register_fake
def _(grad, weight, styles, dcoefs, demodulate, eps):
    return torch.empty_like(weight), torch.empty_like(styles)


@torch.library.custom_op("stylegan2_ops::modconv_epilogue", mutates_args=())
def _epilogue_op(
    x: torch.Tensor, scale: Optional[torch.Tensor], noise: Optional[torch.Tensor], bias: Optional[torch.Tensor],
    act: int, alpha: float, gain: float, clamp: float,
) -> torch.Tensor:
    return _loader.load().modconv_epilogue(x, scale, noise, bias, act, alpha, gain, clamp)


@_epilogue_op.register_fake
def _(x, scale, noise, bias, act, alpha, gain, clamp):
    return torch.empty_like(x)


@torch.library.custom_op("stylegan2_ops::modconv_epilogue_grad", mutates_args=())
def _epilogue_grad_op(
    dy: torch.Tensor, x: Optional[torch.Tensor], scale: Optional[torch.Tensor], noise: Optional[torch.Tensor],
    bias: Optional[torch.Tensor], act: int, alpha: float, gain: float, clamp: float, want_scale: bool,
    want_bias: bool, want_noise: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _loader.load().modconv_epilogue_grad(
        dy, x, scale, noise, bias, act, alpha, gain, clamp, want_scale, want_bias, want_noise
    )


@_epilogue_grad_op.register_fake
def _(dy, x, scale, noise, bias, act, alpha, gain, clamp, want_scale, want_bias, want_noise):
    n, c, h, w = dy.shape
    f32 = dict(dtype=torch.float32, device=dy.device)
    return (
        torch.empty_like(dy),
        torch.empty([n, c] if want_scale else [0], **f32),
        torch.empty([n, c] if want_bias else [0], **f32),
        torch.empty([n, h * w] if want_noise else [0], **f32),
    )


_modulate_kernel = _loader.kernel_call(_modulate_op, "modulate_weights")
_modulate_grad_kernel = _loader.kernel_call(_modulate_grad_op, "modulate_weights_grad")
_epilogue_kernel = _loader.kernel_call(_epilogue_op, _dispatch.KERNEL_NAMES["modulated_conv2d"])
_epilogue_grad_kernel = _loader.kernel_call(_epilogue_grad_op, "modconv_epilogue_grad")


# ---------------------------------------------------------------------------------------------
# Helpers.


def _second_order(
    first_order: Callable[..., Sequence[Optional[torch.Tensor]]],
    inputs: Sequence[Optional[torch.Tensor]],
    needs: Sequence[bool],
    grad_outputs: Sequence[Optional[torch.Tensor]],
) -> list[Optional[torch.Tensor]]:
    """Backward of a first-order-gradient Function: recompute its outputs with differentiable
    PyTorch ops (first_order(*inputs)) and differentiate them along grad_outputs.

    Under create_graph (a third derivative on the way) the saved tensors themselves are used, so
    the result stays connected to the caller's graph; otherwise detached copies suffice.
    """
    create = torch.is_grad_enabled()
    with torch.enable_grad():
        ins: list[Optional[torch.Tensor]] = []
        for t, need in zip(inputs, needs):
            if t is None or (create and t.requires_grad):
                ins.append(t)
            else:
                ins.append(t.detach().requires_grad_(need))
        outs = first_order(*ins)
        pairs = [(o, g) for o, g in zip(outs, grad_outputs) if o is not None and g is not None and o.requires_grad]
        wrt = [k for k, t in enumerate(ins) if t is not None and needs[k] and t.requires_grad]
        result: list[Optional[torch.Tensor]] = [None] * len(inputs)
        if not pairs or not wrt:
            return result
        grads = torch.autograd.grad(
            [o for o, _ in pairs], [ins[k] for k in wrt], [g.to(o.dtype) for o, g in pairs],
            allow_unused=True, create_graph=create,
        )
    for k, g in zip(wrt, grads):
        result[k] = g
    return result


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for the kernel dtypes (what the kernels compute in); float64 stays float64 (only the
    CPU tests of this module's autograd, with stand-in kernels, pass float64)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _leaf_for_grad(t: Optional[torch.Tensor], want: bool) -> Optional[torch.Tensor]:
    """t itself if it already takes part in autograd; else a detached leaf that does (a constant
    to the caller) when its gradient is wanted."""
    if t is None or not want or t.requires_grad:
        return t
    return t.detach().requires_grad_(True)


# ---------------------------------------------------------------------------------------------
# Weight modulation (generation route).


def modulate_ref(weight: torch.Tensor, styles: torch.Tensor, demodulate: bool) -> torch.Tensor:
    """The modulation in float32 PyTorch ops: weight [O, I, kh, kw], styles [N, I] ->
    [N, O, I, kh, kw] float32. What the kernel computes; used for second derivatives."""
    dtype = _compute_dtype(weight)
    w = weight.to(dtype).unsqueeze(0) * styles.to(dtype).reshape(styles.shape[0], 1, -1, 1, 1)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + EPS).rsqrt()
    return w


@function_cache
def _modulate_function(demodulate: bool, out_dtype: torch.dtype) -> type:
    """Function (weight, styles) -> modulated weights [N, O, I, kh, kw] of out_dtype."""
    out_id = _DTYPE_IDS[out_dtype]

    class ModulateCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, weight, styles):
            w, dcoefs = _modulate_kernel(weight, styles, out_id, demodulate, EPS)
            ctx.save_for_backward(weight, styles, dcoefs)
            return w

        @staticmethod
        def backward(ctx, grad):
            weight, styles, dcoefs = ctx.saved_tensors
            gw, gs = ModulateCudaGrad.apply(grad.contiguous(), weight, styles, dcoefs)
            return gw, gs

    class ModulateCudaGrad(torch.autograd.Function):
        """(grad, weight, styles) -> (grad_weight, grad_styles); differentiable once more."""

        @staticmethod
        def forward(ctx, grad, weight, styles, dcoefs):
            gw, gs = _modulate_grad_kernel(grad, weight, styles, dcoefs, demodulate, EPS)
            ctx.save_for_backward(grad, weight, styles)
            return gw, gs

        @staticmethod
        def backward(ctx, g_gw, g_gs):
            grad, weight, styles = ctx.saved_tensors

            def first_order(grad_, weight_, styles_):
                weight_, styles_ = _leaf_for_grad(weight_, True), _leaf_for_grad(styles_, True)
                w = modulate_ref(weight_, styles_, demodulate)
                return torch.autograd.grad(w, (weight_, styles_), grad_.to(w.dtype), create_graph=True)

            d_grad, d_weight, d_styles = _second_order(
                first_order, (grad, weight, styles), ctx.needs_input_grad[:3], (g_gw, g_gs)
            )
            return d_grad, d_weight, d_styles, None

    return ModulateCuda


def modulate_weights(weight: torch.Tensor, styles: torch.Tensor, demodulate: bool, out_dtype: torch.dtype) -> torch.Tensor:
    """weight [O, I, kh, kw], styles [N, I] (one kernel dtype) -> [N, O, I, kh, kw] of out_dtype:
    weight * styles, times rsqrt(sum of squares + 1e-8) per (n, o) when demodulating."""
    return _modulate_function(demodulate, out_dtype).apply(weight.contiguous(), styles.contiguous())


# ---------------------------------------------------------------------------------------------
# Epilogue: y = clamp(act(x * scale[n, c] + noise[n, 0, h, w] + bias[c]) * gain).


def epilogue_ref(
    x: torch.Tensor, scale: Optional[torch.Tensor], noise: Optional[torch.Tensor], bias: Optional[torch.Tensor],
    act: str, alpha: float, gain: float, clamp: float,
) -> torch.Tensor:
    """What the epilogue kernel computes, in float32 PyTorch ops (used for second derivatives).
    x [N, C, H, W]; scale [N, C] float32; noise [1 or N, 1, H, W]; bias [C]."""
    dtype = _compute_dtype(x)
    v = x.to(dtype)
    if scale is not None:
        v = v * scale.to(dtype).reshape(*scale.shape, 1, 1)
    if noise is not None:
        v = v + noise.to(dtype)
    if bias is not None:
        v = v + bias.to(dtype).reshape(1, -1, 1, 1)
    y = ACTIVATIONS[act].func(v, alpha) * gain
    if clamp >= 0:
        y = y.clamp(-clamp, clamp)
    return y


@function_cache
def _epilogue_function(act: str, alpha: float, gain: float, clamp: float) -> type:
    """Function (x, scale, noise, bias) -> y for one static configuration (cached)."""
    act_id = ACTIVATIONS[act].cuda_id

    class EpilogueCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, scale, noise, bias):
            y = _epilogue_kernel(x, scale, noise, bias, act_id, alpha, gain, clamp)
            ctx.save_for_backward(x, scale, noise, bias)
            return y

        @staticmethod
        def backward(ctx, dy):
            x, scale, noise, bias = ctx.saved_tensors
            _, want_scale, want_noise, want_bias = ctx.needs_input_grad
            wants = (scale is not None and want_scale, noise is not None and want_noise,
                     bias is not None and want_bias)
            outs = _epilogue_grad_function(act, alpha, gain, clamp, *wants).apply(
                _layout.like(_layout.dense(dy), x), x, scale, noise, bias
            )
            grads = iter(outs[1:])
            return (outs[0],) + tuple(next(grads) if w else None for w in wants)

    return EpilogueCuda


@function_cache
def _epilogue_grad_function(
    act: str, alpha: float, gain: float, clamp: float, want_scale: bool, want_noise: bool, want_bias: bool
) -> type:
    """Function (dy, x, scale, noise, bias) -> (dx, then grad_scale, grad_noise, grad_bias where
    wanted); differentiable once more."""
    act_id = ACTIVATIONS[act].cuda_id
    wants = (want_scale, want_noise, want_bias)

    def first_order(dy, x, scale, noise, bias):
        x = _leaf_for_grad(x, True)
        scale, noise, bias = (_leaf_for_grad(t, w) for t, w in zip((scale, noise, bias), wants))
        y = epilogue_ref(x, scale, noise, bias, act, alpha, gain, clamp)
        wrt = [x] + [t for t, w in zip((scale, noise, bias), wants) if w]
        return torch.autograd.grad(y, wrt, dy.to(y.dtype), create_graph=True)

    class EpilogueCudaGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, dy, x, scale, noise, bias):
            dx, gs, gb, gn = _epilogue_grad_kernel(
                dy, x, scale, noise, bias, act_id, alpha, gain, clamp, want_scale, want_bias, want_noise
            )
            ctx.save_for_backward(dy, x, scale, noise, bias)
            outs = [dx]
            if want_scale:
                outs.append(gs)
            if want_noise:
                gn = gn.reshape(dy.shape[0], 1, dy.shape[2], dy.shape[3])
                if noise.shape[0] != dy.shape[0]:
                    gn = gn.sum(dim=0, keepdim=True)
                outs.append(gn.to(noise.dtype))
            if want_bias:
                outs.append(gb.sum(dim=0).to(bias.dtype))
            return tuple(outs)

        @staticmethod
        def backward(ctx, *grad_outs):
            saved = ctx.saved_tensors
            return tuple(_second_order(first_order, saved, ctx.needs_input_grad, grad_outs))

    return EpilogueCudaGrad


def epilogue(
    x: torch.Tensor, scale: Optional[torch.Tensor], noise: Optional[torch.Tensor], bias: Optional[torch.Tensor],
    act: str, alpha: float, gain: float, clamp: float,
) -> torch.Tensor:
    """x [N, C, H, W] (contiguous or channels_last; the result keeps it), scale [N, C] float32,
    noise [1 or N, 1, H, W] and bias [C] of x's dtype (either may be None)."""
    x = _layout.dense(x)
    noise = noise.contiguous() if noise is not None else None
    bias = bias.contiguous() if bias is not None else None
    scale = scale.contiguous() if scale is not None else None
    return _epilogue_function(act, alpha, gain, clamp).apply(x, scale, noise, bias)


# ---------------------------------------------------------------------------------------------
# The whole op.


# The largest weight.numel(), channel count or height * width the kernels index (int32 with
# head room for loops that step past the end): csrc/modulated_conv.h, modconv_fits_int32.
MAX_INT32_SIZE = 2**31 - 1 - 4096


def unsupported_reason(x: torch.Tensor, weight: torch.Tensor, out_shape: Sequence[int]) -> Optional[str]:
    """Why the kernels cannot run this call (None if they can); the arguments are already checked.
    out_shape: the result's [batch_size, out_channels, out_height, out_width]."""
    if weight.dtype not in _DTYPE_IDS:
        return f"weight and styles have dtype {weight.dtype}; the kernels take float32, float16 or bfloat16 parameters"
    if x.shape[0] > 65535:
        return f"batch size {x.shape[0]} exceeds the kernels' 65535"
    if weight.numel() > MAX_INT32_SIZE:
        return f"weight has {weight.numel()} elements, more than the kernels' 32-bit index takes ({MAX_INT32_SIZE})"
    pixels = max(x.shape[2] * x.shape[3], out_shape[2] * out_shape[3])
    if pixels > MAX_INT32_SIZE:
        return f"an image of {pixels} pixels is more than the kernels' 32-bit index takes ({MAX_INT32_SIZE})"
    return None


def _kernel_noise(noise: Optional[torch.Tensor], out_shape: Sequence[int], dtype: torch.dtype):
    """(noise for the epilogue kernel as [1 or N, 1, H, W] or None, noise to add separately or None)."""
    if noise is None:
        return None, None
    noise = noise.to(dtype)
    n, _, h, w = out_shape
    shape = [1] * (4 - noise.ndim) + list(noise.shape)
    if shape[1] == 1 and shape[2] == h and shape[3] == w and shape[0] in (1, n):
        return noise.reshape(shape).contiguous(), None
    return None, noise  # per-channel or partly broadcast noise: a plain add (still correct)


def modulated_conv2d_cuda(
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
    bias: Optional[torch.Tensor],
    act: str,
    alpha: Optional[float],
    gain: Optional[float],
    clamp: Optional[float],
) -> torch.Tensor:
    """modulated_conv2d on the kernels; arguments already checked (shapes as there).

    pads: the adjusted padding. The convolution with resampling is the reference's (cuDNN plus
    upfirdn2d, whose own kernel 'auto' may take).
    """
    batch_size, in_channels = x.shape[:2]
    out_channels, _, kh, kw = weight.shape
    spec = ACTIVATIONS[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp if clamp is not None else -1)

    weight, styles = prenormalise_fp16(x, weight, styles, demodulate)

    if fused_modconv:
        w = modulate_weights(weight, styles, demodulate, x.dtype)
        xg = x.reshape(1, batch_size * in_channels, *x.shape[2:])
        wg = w.reshape(batch_size * out_channels, in_channels, kh, kw)
        y = conv2d_resample(xg, wg, f, up, down, pads, batch_size, flip_weight, "auto")
        y = y.reshape(batch_size, out_channels, *y.shape[2:])
        scale = None
    else:
        s32 = styles.to(_compute_dtype(x))  # the kernels take per-(sample, channel) factors in float32
        xs = epilogue(x, s32, None, None, "linear", 0.0, 1.0, -1.0)
        y = conv2d_resample(xs, weight.to(x.dtype), f, up, down, pads, 1, flip_weight, "auto")
        scale = None
        if demodulate:
            # sum_{i,k} (weight * styles)^2 = styles^2 @ sum_k weight^2: no [N, O, I, kh, kw] tensor.
            wsq = weight.to(s32.dtype).square().sum(dim=[2, 3])
            scale = (s32.square() @ wsq.t() + EPS).rsqrt()
    kernel_noise, extra_noise = _kernel_noise(noise, y.shape, y.dtype)
    if extra_noise is not None:
        # Noise the kernel does not take is added after the demodulation, as the definition has it.
        if scale is not None:
            y = y * scale.to(y.dtype).reshape(batch_size, out_channels, 1, 1)
            scale = None
        y = y + extra_noise
    b = bias.to(y.dtype) if bias is not None else None
    return epilogue(y, scale, kernel_noise, b, act, alpha, gain, clamp)
