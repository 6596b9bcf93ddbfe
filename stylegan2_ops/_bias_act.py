"""bias_act: add a bias along one dimension, apply an activation, scale by a gain, clamp.

    y = clamp(act(x + b, alpha) * gain, -clamp, clamp)

One table (ACTIVATIONS) holds each activation's facts and feeds both the reference and the CUDA
path: its default alpha and gain, its integer id in csrc/bias_act.h, whether its first
derivative is cheapest from the input x or the output y, and whether it has a non-zero second
derivative.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import _checks, _dispatch, _layout, _loader, _selfcheck
from ._function_cache import function_cache

OP = "bias_act"
KERNEL = _dispatch.KERNEL_NAMES[OP]  # the compiled function auto dispatches on and self-checks


@dataclass(frozen=True)
class Activation:
    name: str
    func: Callable[[torch.Tensor, float], torch.Tensor]  # the reference formula
    def_alpha: float
    def_gain: float
    cuda_id: int  # must match enum Activation in csrc/bias_act.h
    grad_from: str  # 'x' or 'y': what the first derivative is computed from
    has_2nd_grad: bool  # False where the second derivative is zero almost everywhere


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("linear", lambda x, _: x, 0.0, 1.0, 0, "y", False),
        Activation("relu", lambda x, _: torch.relu(x), 0.0, math.sqrt(2), 1, "y", False),
        Activation("lrelu", lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2), 2, "y", False),
        Activation("tanh", lambda x, _: torch.tanh(x), 0.0, 1.0, 3, "y", True),
        Activation("sigmoid", lambda x, _: torch.sigmoid(x), 0.0, 1.0, 4, "y", True),
        Activation("elu", lambda x, a: F.elu(x, a), 1.0, 1.0, 5, "y", True),
        Activation("selu", lambda x, _: F.selu(x), 0.0, 1.0, 6, "y", True),
        Activation("softplus", lambda x, _: F.softplus(x), 0.0, 1.0, 7, "y", True),
        Activation("swish", lambda x, _: torch.sigmoid(x) * x, 0.0, math.sqrt(2), 8, "x", True),
    ]
}


def bias_act(
    x: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    dim: int = 1,
    act: str = "linear",
    alpha: Optional[float] = None,
    gain: Optional[float] = None,
    clamp: Optional[float] = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Fused bias + activation + gain + clamp.

    Args:
        x: input of any shape, e.g. [batch_size, num_channels, height, width]; float64, float32,
            float16 or bfloat16, contiguous or channels_last.
        b: bias [x.shape[dim]] of x's dtype and device, or None.
        dim: the dimension of x that b runs along.
        act: one of ACTIVATIONS ('linear', 'relu', 'lrelu', 'tanh', 'sigmoid', 'elu', 'selu',
            'softplus', 'swish').
        alpha: the activation's shape parameter (lrelu slope, elu scale); None = its default.
        gain: scale applied after the activation; None = the activation's default
            (sqrt(2) for relu, lrelu and swish, else 1).
        clamp: clamp the result to [-clamp, clamp]; None = no clamping.
        impl: 'auto', 'ref' or 'cuda' (see the package docs).

    Returns:
        A tensor of x's shape, dtype and memory format.
    """
    _checks.check_tensor(OP, "x", x)
    if act not in ACTIVATIONS:
        raise ValueError(f"{OP}: unknown act {act!r}; choose one of {', '.join(ACTIVATIONS)}")
    if not isinstance(dim, int) or not -x.ndim <= dim < max(x.ndim, 1):
        raise ValueError(f"{OP}: dim={dim!r} is out of range for x of shape {list(x.shape)}")
    dim = dim % x.ndim if x.ndim else 0
    if b is not None:
        _checks.check_tensor(OP, "b", b, ndim=1)
        _checks.check_same_device(OP, x=x, b=b)
        _checks.check_same_dtype(OP, x=x, b=b)
        if x.ndim == 0 or b.shape[0] != x.shape[dim]:
            raise ValueError(
                f"{OP}: b has {b.shape[0]} elements but x has {x.shape[dim] if x.ndim else 0} "
                f"along dim={dim} (x shape {list(x.shape)})"
            )
    spec = ACTIVATIONS[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp if clamp is not None else -1)
    if not math.isfinite(alpha) or not math.isfinite(gain):
        raise ValueError(f"{OP}: alpha and gain must be finite, got alpha={alpha}, gain={gain}")
    if math.isnan(clamp):
        raise ValueError(f"{OP}: clamp must be a number or None, got nan")

    unsupported = "x has no dimensions (a 0-d tensor)" if x.ndim == 0 else None
    chosen = _dispatch.choose(OP, impl, KERNEL, {"x": x, "b": b}, unsupported=unsupported)
    if chosen == "cuda":
        # Made dense outside the Function, so the copy (if any) stays on the autograd graph and
        # second derivatives reach the caller's x.
        # The bindings take a contiguous b (a strided view such as w[::2] would be refused).
        return _cuda_function(dim, act, alpha, gain, clamp).apply(_layout.dense(x), b if b is None else b.contiguous())
    return bias_act_ref(x, b, dim, act, alpha, gain, clamp)


def bias_act_ref(
    x: torch.Tensor,
    b: Optional[torch.Tensor],
    dim: int,
    act: str,
    alpha: float,
    gain: float,
    clamp: float,
) -> torch.Tensor:
    """The definition, in plain differentiable PyTorch (clamp < 0 means no clamping)."""
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = ACTIVATIONS[act].func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


# ---------------------------------------------------------------------------------------------
# CUDA path: forward kernel, first-derivative kernel and second-derivative kernel, each wrapped in
# its own autograd Function so gradients of gradients work (R1, path-length regularization).


def _reduce_to_bias(dx: torch.Tensor, dim: int) -> torch.Tensor:
    """The bias gradient: dx summed over every dimension but `dim`."""
    others = [i for i in range(dx.ndim) if i != dim]
    return dx.sum(others) if others else dx


# The raw kernels as torch.library ops with fake (shape-only) implementations, so torch.compile can
# trace the first-order CUDA path (eager calls go straight to the module: _loader.kernel_call).


@torch.library.custom_op("stylegan2_ops::bias_act_forward", mutates_args=())
def _forward_op(
    x: torch.Tensor, b: Optional[torch.Tensor], dim: int, act: int, alpha: float, gain: float, clamp: float
) -> torch.Tensor:
    return _loader.load().bias_act_forward(x, b, dim, act, alpha, gain, clamp)


@_forward_op.register_fake
def _(x, b, dim, act, alpha, gain, clamp):
    return torch.empty_like(x)


@torch.library.custom_op("stylegan2_ops::bias_act_grad", mutates_args=())
def _grad_op(
    g: torch.Tensor,
    h: Optional[torch.Tensor],
    x: Optional[torch.Tensor],
    b: Optional[torch.Tensor],
    y: Optional[torch.Tensor],
    dim: int,
    act: int,
    alpha: float,
    gain: float,
    clamp: float,
    order: int,
) -> torch.Tensor:
    return _loader.load().bias_act_grad(g, h, x, b, y, dim, act, alpha, gain, clamp, order)


@_grad_op.register_fake
def _(g, h, x, b, y, dim, act, alpha, gain, clamp, order):
    return torch.empty_like(g)


_forward_kernel = _loader.kernel_call(_forward_op, KERNEL)
_grad_kernel = _loader.kernel_call(_grad_op, "bias_act_grad")


@function_cache
def _cuda_function(dim: int, act: str, alpha: float, gain: float, clamp: float) -> type:
    """The autograd Function for one static configuration (cached, as NVlabs does)."""
    spec = ACTIVATIONS[act]
    # With alpha < 0, lrelu and elu map negative inputs to positive outputs, so y no longer tells
    # which branch an element took: their derivative must come from x (the kernel uses x whenever
    # it is given no y).
    from_y = spec.grad_from == "y" and not (act in ("lrelu", "elu") and alpha < 0)
    # Order-1 reads y when from_y; x (with b) otherwise and whenever a second derivative exists,
    # because the order-2 kernel reads x.
    save_x = not from_y or spec.has_2nd_grad
    save_y = from_y and (act != "linear" or clamp >= 0)

    def grad_kernel(g, h, x, b, y, order):
        return _grad_kernel(g, h, x, b, y, dim, spec.cuda_id, alpha, gain, clamp, order)

    class BiasActCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, b):
            y = _forward_kernel(x, b, dim, spec.cuda_id, alpha, gain, clamp)
            ctx.has_b = b is not None
            ctx.save_for_backward(x if save_x else None, b if save_x else None, y if save_y else None)
            return y

        @staticmethod
        def backward(ctx, dy):
            x, b, y = ctx.saved_tensors
            dx = db = None
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                ref = y if y is not None else (x if x is not None else _layout.dense(dy))
                dy = _layout.like(_layout.dense(dy), ref)
                dx = BiasActCudaGrad.apply(dy, x, b, y)
            if ctx.has_b and ctx.needs_input_grad[1]:
                db = _reduce_to_bias(dx, dim)
            return dx, db

    class BiasActCudaGrad(torch.autograd.Function):
        """dx = dy * gain * act'(x + b) * [not clamped]; differentiable once more."""

        @staticmethod
        def forward(ctx, dy, x, b, y):
            if act == "linear" and clamp < 0:
                dx = dy * gain if gain != 1 else dy.clone()
            else:
                dx = grad_kernel(dy, None, x, b, y, 1)
            ctx.save_for_backward(dy, x, b, y)
            return dx

        @staticmethod
        def backward(ctx, d_dx):
            dy, x, b, y = ctx.saved_tensors
            d_dy = d_x = d_b = None
            ref = y if y is not None else (x if x is not None else dy)
            d_dx = _layout.like(_layout.dense(d_dx), ref)
            if ctx.needs_input_grad[0]:
                # dx is linear in dy, so its derivative along dy is the same operation.
                d_dy = BiasActCudaGrad.apply(d_dx, x, b, y)
            if spec.has_2nd_grad and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
                d_x = grad_kernel(d_dx, dy, x, b, y, 2)
                if b is not None and ctx.needs_input_grad[2]:
                    d_b = _reduce_to_bias(d_x, dim)
            return d_dy, d_x, d_b, None

    return BiasActCuda


def _selfcheck_kernel(device: torch.device, dtype: torch.dtype) -> None:
    """Kernel vs reference on small random cases: forward, dx and db (see _selfcheck.py)."""
    gen = torch.Generator().manual_seed(20261123)
    for act, clamp, channels_last in (("lrelu", 1.5, False), ("tanh", None, True), ("swish", 2.0, False)):
        x = torch.randn(3, 12, 5, 7, generator=gen).to(device, dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        b = torch.randn(12, generator=gen).to(device, dtype)
        if clamp is not None:  # halve inputs near the clamp edge, where rounding decides the mask
            y0 = bias_act_ref(x.float(), b.float(), 1, act, ACTIVATIONS[act].def_alpha, ACTIVATIONS[act].def_gain, -1)
            x = torch.where(((y0.abs() - clamp).abs() < 0.15 * clamp), x * 0.5, x)
        dy = torch.randn(x.shape, generator=gen).to(device, dtype)
        outs = {}
        for impl in ("cuda", "ref"):
            xi = (x if impl == "cuda" else x.float()).detach().requires_grad_(True)
            bi = (b if impl == "cuda" else b.float()).detach().requires_grad_(True)
            y = bias_act(xi, bi, act=act, clamp=clamp, impl=impl)
            dx, db = torch.autograd.grad(y, (xi, bi), dy.to(y.dtype))
            outs[impl] = (y, dx, db)
        for what, got, want in zip(("y", "dx", "db"), outs["cuda"], outs["ref"]):
            _selfcheck.assert_close(OP, f"{what} ({act})", got, want, dtype)


_selfcheck.register(KERNEL, _selfcheck_kernel)
