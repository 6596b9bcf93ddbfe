"""The emulated kernels behind the same Python interface as the compiled module.

`EmulatedKernels` has the functions of `stylegan2_ops._kernels` (csrc/bindings.cpp) with the same
arguments and results, for CPU tensors: it does what the bindings do around a launch (argument
checks, output allocation in the input's memory format, parameter structs) and calls the same
sg2::launch_* entry points, compiled by build.py into a library loaded with ctypes.

Differences from the bindings, on purpose:
- outputs are allocated filled with NaN (the reduction outputs the bindings zero stay zeroed), so
  an element a kernel never writes cannot pass a comparison;
- a failed launch raises EmulatorLaunchError with the emulator's message (deadlock, collective
  misuse, invalid configuration).

`routed(kernels)` points stylegan2_ops at them: impl='cuda' then runs the emulated kernels on CPU
tensors through the real autograd Functions (impl='auto' is unaffected and keeps CPU tensors on
the references).
"""
from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path
from typing import Iterator, Optional

import torch

from . import build

DTYPE_IDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # sg2::DType
ORDERS = {"forward": 0, "reverse": 1, "random": 2}
MAX_TAPS, MAX_FACTOR = 12, 8  # csrc/upfirdn2d.h; test_emulator checks the Python layer agrees

_i64, _int, _f32, _p = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p


class EmulatorLaunchError(RuntimeError):
    """An emulated launch failed: the emulator's message says why."""


class BindingCheckError(RuntimeError):
    """An argument the bindings would refuse (TORCH_CHECK raises RuntimeError there too)."""


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _poisoned(*args, **kwargs) -> torch.Tensor:
    return torch.empty(*args, **kwargs).fill_(float("nan"))


def _poisoned_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t).fill_(float("nan"))


def _check_cpu(t: torch.Tensor, name: str) -> None:
    if t.device.type != "cpu":
        raise BindingCheckError(f"{name} must be a CPU tensor for the emulated kernels, got one on {t.device}")


def _kernel_dtype(t: torch.Tensor, name: str) -> int:
    if t.dtype not in DTYPE_IDS:
        raise BindingCheckError(f"{name} has dtype {t.dtype}; the kernels support float32, float16 and bfloat16")
    return DTYPE_IDS[t.dtype]


def _check_like(t: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    _check_cpu(t, name)
    if t.dtype != ref.dtype or t.shape != ref.shape or t.stride() != ref.stride():
        raise BindingCheckError(f"{name}: dtype/shape/strides {t.dtype}/{list(t.shape)}/{t.stride()} differ from "
                         f"{ref.dtype}/{list(ref.shape)}/{ref.stride()}")


def _dense(t: torch.Tensor) -> bool:
    """ATen's is_non_overlapping_and_dense: the strides are a permutation of a contiguous layout."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _output_layout(t: torch.Tensor) -> torch.memory_format:
    """csrc/torch_checks.h output_layout: channels_last when t is laid out so and not also contiguous."""
    if t.ndim == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _epilogue_channels_last(t: torch.Tensor, name: str) -> bool:
    if t.ndim != 4:
        raise BindingCheckError(f"{name} must be [batch_size, channels, height, width], got {list(t.shape)}")
    if t.is_contiguous():
        return False
    if not t.is_contiguous(memory_format=torch.channels_last):
        raise BindingCheckError(f"{name} must be contiguous or channels_last, got strides {t.stride()}")
    return True


class EmulatedKernels:
    """The compiled module's kernel functions, run by the CPU emulator."""

    RUNS_ON_CPU = True  # stylegan2_ops' test switch lets impl='cuda' take CPU tensors for this module
    UPFIRDN2D_MAX_TAPS = MAX_TAPS
    UPFIRDN2D_MAX_FACTOR = MAX_FACTOR

    def __init__(self, library: Path, order: str = "forward", seed: int = 0) -> None:
        self.library = library
        self._lib = ctypes.CDLL(str(library))
        lib = self._lib
        lib.sg2emu_bias_act.argtypes = [_int, _int, _p, _p, _p, _p, _p, _p, _i64, _i64, _i64, _int, _f32, _f32, _f32]
        lib.sg2emu_upfirdn2d.argtypes = [_int, _p, _p, _p, _p, _p, _p, _p, _p, _p, _int, _int, _f32, _int]
        lib.sg2emu_upfirdn2d_tiled_covers.argtypes = [_p, _p, _p, _p, _p]
        lib.sg2emu_modulate.argtypes = [_int, _int, _int, _p, _p, _p, _p, _p, _p, _p, _p, _int, _int, _int, _int,
                                        _int, _f32]
        lib.sg2emu_epilogue.argtypes = [_int, _int, _p, _p, _p, _p, _p, _p, _p, _p, _p, _p, _int, _int, _int, _int,
                                        _int, _int, _f32, _f32, _f32]
        lib.sg2emu_set_order.argtypes = [_int, ctypes.c_ulonglong]
        lib.sg2emu_last_message.restype = ctypes.c_char_p
        self.order = order
        self.set_order(order, seed)

    def set_order(self, order: str, seed: int = 0) -> None:
        """The order in which each block's runnable threads resume: forward, reverse or random."""
        if order not in ORDERS:
            raise ValueError(f"order must be one of {sorted(ORDERS)}, got {order!r}")
        self.order = order
        self._lib.sg2emu_set_order(ORDERS[order], seed)

    def _check(self, err: int, what: str) -> None:
        if err != 0:
            message = self._lib.sg2emu_last_message().decode(errors="replace")
            self._lib.sg2emu_clear_error()
            raise EmulatorLaunchError(f"{what} failed to launch (cudaError {err}): {message}")

    # ---- bias_act (csrc/bind_bias_act.h) ---------------------------------------------------------

    @staticmethod
    def _bias_act_geometry(ref: torch.Tensor, b: Optional[torch.Tensor], dim: int) -> tuple[int, int]:
        if not _dense(ref):
            raise BindingCheckError(f"x must be dense in memory, got strides {ref.stride()}")
        if b is not None:
            _check_cpu(b, "b")
            if b.dtype != ref.dtype or b.ndim != 1 or b.shape[0] != ref.shape[dim] or not b.is_contiguous():
                raise BindingCheckError(f"b must be a contiguous [{ref.shape[dim]}] tensor of {ref.dtype}")
        channels = ref.shape[dim] if b is not None else 1
        stride = ref.stride(dim) if b is not None else 1
        if stride < 1 or channels == 1:
            stride = 1
        return channels, stride

    def bias_act_forward(self, x, b, dim, act, alpha, gain, clamp):
        _check_cpu(x, "x")
        dt = _kernel_dtype(x, "x")
        channels, stride = self._bias_act_geometry(x, b, dim)
        y = _poisoned_like(x)
        self._check(self._lib.sg2emu_bias_act(dt, 0, _ptr(x), _ptr(b), None, None, None, _ptr(y), x.numel(),
                                              channels, stride, act, alpha, gain, clamp), "bias_act forward")
        return y

    def bias_act_grad(self, g, h, x, b, y, dim, act, alpha, gain, clamp, order):
        _check_cpu(g, "dy")
        dt = _kernel_dtype(g, "dy")
        if x is None and y is None:
            raise BindingCheckError("bias_act_grad needs the saved input x or output y")
        if x is None and act == 8:
            raise BindingCheckError("bias_act_grad: swish's derivative needs the saved input x")
        if order == 2 and (x is None or h is None):
            raise BindingCheckError("the second derivative needs x and dy")
        for t, name in ((h, "dy (order 2)"), (x, "x"), (y, "y")):
            if t is not None:
                _check_like(t, g, name)
        channels, stride = self._bias_act_geometry(g, b, dim)
        out = _poisoned_like(g)
        self._check(self._lib.sg2emu_bias_act(dt, order, _ptr(x), _ptr(b), _ptr(y), _ptr(g), _ptr(h), _ptr(out),
                                              g.numel(), channels, stride, act, alpha, gain, clamp), "bias_act grad")
        return out

    # ---- upfirdn2d (csrc/bind_upfirdn2d.h) -------------------------------------------------------

    def upfirdn2d(self, x, f, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1, flip, gain, path):
        _check_cpu(x, "x")
        _check_cpu(f, "f")
        dt = _kernel_dtype(x, "x")
        if x.ndim != 4 or f.dtype != torch.float32 or f.ndim not in (1, 2) or not f.is_contiguous():
            raise BindingCheckError("upfirdn2d: x must be 4-D and f a contiguous float32 1-D or 2-D filter")
        fw, fh = f.shape[-1], f.shape[0]
        out_w = (x.shape[3] * up_x + pad_x0 + pad_x1 - fw) // down_x + 1
        out_h = (x.shape[2] * up_y + pad_y0 + pad_y1 - fh) // down_y + 1
        if out_w < 1 or out_h < 1:
            raise BindingCheckError("upfirdn2d: the output would be empty")
        # The binding's output_layout (csrc/torch_checks.h): x's layout, read from its strides.
        y = _poisoned([x.shape[0], x.shape[1], out_h, out_w], dtype=x.dtype, memory_format=_output_layout(x))
        if y.numel() == 0:
            return y
        arrays = self._upfirdn2d_arrays(x, y, (up_x, up_y, down_x, down_y), (fw, fh))
        if path == 2 and not self._lib.sg2emu_upfirdn2d_tiled_covers(*arrays[:4], arrays[5]):
            raise BindingCheckError("upfirdn2d: the tiled path does not cover this configuration")
        pads = (_int * 2)(pad_x0, pad_y0)
        self._check(self._lib.sg2emu_upfirdn2d(dt, _ptr(x), _ptr(f), _ptr(y), arrays[0], arrays[1], arrays[2],
                                               arrays[3], pads, arrays[5], int(f.ndim == 1), int(flip), gain, path),
                    "upfirdn2d")
        return y

    @staticmethod
    def _upfirdn2d_arrays(x, y, factors, taps):
        return ((_i64 * 4)(*x.stride()), (_i64 * 4)(*y.stride()),
                (_i64 * 6)(x.shape[0], x.shape[1], x.shape[2], x.shape[3], y.shape[2], y.shape[3]),
                (_int * 4)(*factors), None, (_int * 2)(*taps))

    # ---- modulated conv (csrc/bind_modulated_conv.h) ---------------------------------------------

    @staticmethod
    def _modulate_shapes(weight, styles):
        _check_cpu(weight, "weight")
        _check_cpu(styles, "styles")
        if weight.ndim != 4 or not weight.is_contiguous() or styles.dtype != weight.dtype:
            raise BindingCheckError("weight must be a contiguous [O, I, kh, kw] tensor and styles of its dtype")
        if styles.ndim != 2 or styles.shape[1] != weight.shape[1] or not styles.is_contiguous():
            raise BindingCheckError(f"styles must be a contiguous [N, {weight.shape[1]}] tensor")
        return styles.shape[0], weight.shape[0], weight.shape[1], weight.shape[2] * weight.shape[3]

    def modulate_weights(self, weight, styles, out_dtype, demodulate, eps):
        n, o, i, k = self._modulate_shapes(weight, styles)
        pdt = _kernel_dtype(weight, "weight")
        dtype = {v: t for t, v in DTYPE_IDS.items()}[out_dtype]
        out = _poisoned([n, o, i, weight.shape[2], weight.shape[3]], dtype=dtype)
        dcoefs = _poisoned([n, o], dtype=torch.float32)
        self._check(self._lib.sg2emu_modulate(0, pdt, out_dtype, _ptr(weight), _ptr(styles), _ptr(out), _ptr(dcoefs),
                                              None, None, None, None, n, o, i, k, int(demodulate), eps),
                    "modulate_weights")
        return out, dcoefs

    def modulate_weights_grad(self, grad, weight, styles, dcoefs, demodulate, eps):
        n, o, i, k = self._modulate_shapes(weight, styles)
        pdt = _kernel_dtype(weight, "weight")
        odt = _kernel_dtype(grad, "grad")
        if list(grad.shape) != [n, o, i, weight.shape[2], weight.shape[3]] or not grad.is_contiguous():
            raise BindingCheckError(f"grad must be a contiguous [{n}, {o}, {i}, kh, kw] tensor, got {list(grad.shape)}")
        if dcoefs.dtype != torch.float32 or list(dcoefs.shape) != [n, o] or not dcoefs.is_contiguous():
            raise BindingCheckError(f"dcoefs must be a contiguous float32 [{n}, {o}] tensor")
        grad_weight, grad_styles = _poisoned_like(weight), _poisoned_like(styles)
        q = _poisoned([n, o], dtype=torch.float32)
        self._check(self._lib.sg2emu_modulate(1, pdt, odt, _ptr(weight), _ptr(styles), None, _ptr(dcoefs),
                                              _ptr(grad), _ptr(q), _ptr(grad_weight), _ptr(grad_styles), n, o, i,
                                              k, int(demodulate), eps), "modulate_weights_grad")
        return grad_weight, grad_styles

    @staticmethod
    def _epilogue_operands(ref, scale, noise, bias):
        n, c, h, w = ref.shape
        if scale is not None and (scale.dtype != torch.float32 or list(scale.shape) != [n, c]
                                  or not scale.is_contiguous()):
            raise BindingCheckError(f"scale must be a contiguous float32 [{n}, {c}] tensor")
        if noise is not None and (noise.dtype != ref.dtype or noise.ndim != 4 or noise.shape[0] not in (1, n)
                                  or list(noise.shape[1:]) != [1, h, w] or not noise.is_contiguous()):
            raise BindingCheckError(f"noise must be a contiguous [1 or {n}, 1, {h}, {w}] tensor of {ref.dtype}")
        if bias is not None and (bias.dtype != ref.dtype or list(bias.shape) != [c] or not bias.is_contiguous()):
            raise BindingCheckError(f"bias must be a contiguous [{c}] tensor of {ref.dtype}")
        per_sample = noise is not None and noise.shape[0] == n and n > 1
        return n, c, h * w, per_sample

    def modconv_epilogue(self, x, scale, noise, bias, act, alpha, gain, clamp):
        _check_cpu(x, "x")
        dt = _kernel_dtype(x, "x")
        cl = _epilogue_channels_last(x, "x")
        n, c, pix, per_sample = self._epilogue_operands(x, scale, noise, bias)
        y = _poisoned_like(x)
        self._check(self._lib.sg2emu_epilogue(0, dt, _ptr(x), _ptr(y), None, None, _ptr(scale), _ptr(noise),
                                              _ptr(bias), None, None, None, n, c, pix, int(per_sample), int(cl), act,
                                              alpha, gain, clamp), "modconv_epilogue")
        return y

    def modconv_epilogue_grad(self, dy, x, scale, noise, bias, act, alpha, gain, clamp, want_scale, want_bias,
                              want_noise):
        _check_cpu(dy, "dy")
        dt = _kernel_dtype(dy, "dy")
        cl = _epilogue_channels_last(dy, "dy")
        n, c, pix, per_sample = self._epilogue_operands(dy, scale, noise, bias)
        if x is not None:
            _check_like(x, dy, "x")
        elif not (act == 0 and clamp < 0 and not want_scale):
            raise BindingCheckError("modconv_epilogue_grad needs x for a nonlinear activation, a clamp or grad_scale")
        if (want_scale and scale is None) or (want_noise and noise is None):
            raise BindingCheckError("a reduction was asked for without its operand")
        dx = _poisoned_like(dy)
        gs = torch.zeros([n, c] if want_scale else [0])
        gb = torch.zeros([n, c] if want_bias else [0])
        gn = torch.zeros([n, pix] if want_noise else [0])
        self._check(self._lib.sg2emu_epilogue(1, dt, _ptr(x), None, _ptr(dy), _ptr(dx), _ptr(scale), _ptr(noise),
                                              _ptr(bias), _ptr(gs) if want_scale else None,
                                              _ptr(gb) if want_bias else None, _ptr(gn) if want_noise else None, n,
                                              c, pix, int(per_sample), int(cl), act, alpha, gain, clamp),
                    "modconv_epilogue_grad")
        return dx, gs, gb, gn


_instances: dict[tuple[str, Optional[str]], EmulatedKernels] = {}


def emulated_kernels(order: str = "forward", seed: int = 0, sanitize: Optional[str] = None) -> EmulatedKernels:
    """The emulated kernels (built on first use, cached), resuming threads in `order`."""
    key = ("kernels", sanitize)
    if key not in _instances:
        _instances[key] = EmulatedKernels(build.build_kernels(sanitize))
    k = _instances[key]
    k.set_order(order, seed)
    return k


@contextlib.contextmanager
def routed(kernels: EmulatedKernels) -> Iterator[EmulatedKernels]:
    """Within the block, stylegan2_ops' impl='cuda' runs `kernels` on CPU tensors."""
    from stylegan2_ops import _loader

    with _loader.kernel_module_override(kernels):
        yield kernels
