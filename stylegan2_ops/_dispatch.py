"""Chooses, per call, between an op's CUDA kernel and its PyTorch reference.

Rules (SPEC.md, "The ops"):
- impl='auto' (the default) means what STYLEGAN2_OPS_IMPL says (auto, ref or cuda; unset = auto).
  An explicit impl='ref' or impl='cuda' argument wins over the variable.
- auto takes the kernel for CUDA tensors of a kernel dtype (float32, float16, bfloat16) when the
  extension loads, the configuration is one the kernel covers and the kernel passed its
  once-per-process self-check (_selfcheck.py); otherwise the reference. CUDA tensors that fall
  back because the extension is missing trigger ONE warning per process.
- cuda raises, saying which: a tensor not on a GPU, an unsupported dtype, a configuration the
  kernel does not cover, or the extension (or that op's kernel) missing.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from . import _loader, _selfcheck

IMPLS = ("auto", "ref", "cuda")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ENV_IMPL = "STYLEGAN2_OPS_IMPL"


class KernelUnavailableError(RuntimeError):
    """impl='cuda' was asked for but the compiled kernels cannot be used in this process."""


def requested_impl(impl: str) -> str:
    """Resolves the impl argument against STYLEGAN2_OPS_IMPL; returns 'auto', 'ref' or 'cuda'."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of 'auto', 'ref', 'cuda'; got {impl!r}")
    if impl != "auto":
        return impl
    env = os.environ.get(ENV_IMPL, "").strip().lower() or "auto"
    if env not in IMPLS:
        raise ValueError(f"{ENV_IMPL}={os.environ[ENV_IMPL]!r}; it must be auto, ref or cuda")
    return env


def choose(
    op: str,
    impl: str,
    kernel_name: str,
    tensors: dict[str, Optional[torch.Tensor]],
    unsupported: Optional[str] = None,
) -> str:
    """Returns 'cuda' or 'ref' for one call of `op`.

    kernel_name: the function in the compiled module that this op needs.
    tensors: the op's tensor arguments by name (None for absent optional ones); the first one
        present decides the dtype.
    unsupported: why the kernel does not cover this configuration, or None if it does.
    """
    mode = requested_impl(impl)
    if mode == "ref":
        return "ref"
    present = {n: t for n, t in tensors.items() if t is not None}
    main_name, main = next(iter(present.items()))
    off_gpu = [(n, t) for n, t in present.items() if not t.is_cuda]
    dtype_ok = main.dtype in KERNEL_DTYPES

    if mode == "auto":
        if off_gpu or not dtype_ok or unsupported is not None:
            return "ref"
        if _loader.load() is None:
            _loader.warn_fallback_once(op)
            return "ref"
        if _loader.kernel(kernel_name) is None:
            return "ref"  # this op has no kernel in the module yet
        if not _selfcheck.kernel_trusted(kernel_name, main.dtype, main.device):
            return "ref"  # the kernel disagreed with the reference here (warned once)
        return "cuda"

    # mode == 'cuda': explain exactly what stands in the way. (Under the test-only emulator switch,
    # _loader.kernel_module_override, CPU tensors are what the emulated kernels take.)
    if _loader.emulated_on_cpu() and all(t.device.type == "cpu" for t in present.values()):
        off_gpu = []
    if off_gpu:
        name, t = off_gpu[0]
        raise ValueError(f"{op}(impl='cuda'): {name} is on {t.device}; the CUDA kernels need CUDA tensors")
    if not dtype_ok:
        raise ValueError(
            f"{op}(impl='cuda'): {main_name} has dtype {main.dtype}; the CUDA kernels support "
            "float32, float16 and bfloat16 (use impl='ref' for float64)"
        )
    if unsupported is not None:
        raise ValueError(f"{op}(impl='cuda'): {unsupported}; impl='auto' uses the reference for this")
    if _loader.load() is None:
        raise KernelUnavailableError(
            f"{op}(impl='cuda'): the CUDA kernels are unavailable: {_loader.state().reason}. "
            "Run `python -m stylegan2_ops doctor` for details."
        )
    if _loader.kernel(kernel_name) is None:
        raise KernelUnavailableError(f"{op}(impl='cuda'): the compiled module has no '{kernel_name}' kernel")
    return "cuda"


# The compiled function each public op needs; doctor reports them.
KERNEL_NAMES = {
    "bias_act": "bias_act_forward",
    "upfirdn2d": "upfirdn2d",
    "modulated_conv2d": "modconv_epilogue",
}
