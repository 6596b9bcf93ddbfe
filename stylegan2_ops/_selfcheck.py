"""A once-per-process check that a kernel agrees with its reference before 'auto' trusts it.

Why: a kernel that computes the wrong thing would silently corrupt a whole training run, and
kernels are compiled on machines (and GPUs) their authors never ran them on. So the first time
impl='auto' would send an op to its kernel for a given dtype and device, the op's check runs the
kernel and the reference on a small random input (forward and first derivative) and compares
them. If they disagree, or the kernel raises, 'auto' uses the reference for that op, dtype and
device for the rest of the process, with ONE warning that says so. It costs a few milliseconds
once. impl='cuda' never consults it (tests and benchmarks see the raw kernel), and
STYLEGAN2_OPS_SELFCHECK=0 turns it off.
"""
from __future__ import annotations

import os
import threading
import warnings
from typing import Callable, Optional

import torch

ENV_SELFCHECK = "STYLEGAN2_OPS_SELFCHECK"

# Keyed by the compiled function an op dispatches on (_dispatch.KERNEL_NAMES), so helpers such as
# upsample2d share upfirdn2d's check.
# kernel name -> check(device, dtype); raises AssertionError (or anything) when the kernel is wrong.
_CHECKS: dict[str, Callable[[torch.device, torch.dtype], None]] = {}
# (op, dtype, device) -> None when the kernel passed, else why it failed.
_RESULTS: dict[tuple[str, torch.dtype, torch.device], Optional[str]] = {}
_lock = threading.RLock()  # re-entrant: one check may call an op whose kernel is checked in turn

# Largest |kernel - reference| / max(1, |reference|) accepted: a few units of each dtype's
# epsilon on the forward and first derivative of a small case (float32 convs may run in TF32 on
# both sides). The check is for kernels that are wrong, not for the last bits: indexing or
# synchronisation bugs give errors of order one.
TOLERANCE = {torch.float32: 1e-2, torch.float16: 3e-2, torch.bfloat16: 1e-1}


def register(kernel_name: str, check: Callable[[torch.device, torch.dtype], None]) -> None:
    _CHECKS[kernel_name] = check


def assert_close(op: str, what: str, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    """Raises AssertionError naming the op and the quantity when got and want disagree."""
    got, want = got.detach().double(), want.detach().double()
    if got.shape != want.shape:
        raise AssertionError(f"{op}: {what} has shape {list(got.shape)}, expected {list(want.shape)}")
    scale = want.abs().max().clamp(min=1.0)
    err = ((got - want).abs().max() / scale).item()
    if not err <= TOLERANCE[dtype]:  # also catches NaN
        raise AssertionError(f"{op}: {what} differs from the reference by {err:.3g} (relative, {dtype})")


def kernel_trusted(op: str, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether 'auto' may use the kernel `op` (a kernel name) for this dtype and device; runs its
    check the first time it is asked."""
    if os.environ.get(ENV_SELFCHECK, "1") == "0" or op not in _CHECKS:
        return True
    key = (op, dtype, device)
    if key in _RESULTS:
        return _RESULTS[key] is None
    # Never run real work while torch.compile traces or a CUDA graph is being captured.
    capturing = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    if torch.compiler.is_compiling() or capturing:
        return True
    with _lock:
        if key not in _RESULTS:
            try:
                # inference_mode(False): under a caller's inference_mode, enable_grad alone still
                # makes inference tensors, autograd.grad fails, and a good kernel would be
                # distrusted for the whole process.
                with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
                    _CHECKS[op](device, dtype)
                _RESULTS[key] = None
            except Exception as e:  # any failure means: do not trust this kernel here
                _RESULTS[key] = f"{type(e).__name__}: {e}"
                warnings.warn(
                    f"stylegan2_ops: the {op} CUDA kernel failed its self-check on {device} in {dtype} "
                    f"({_RESULTS[key]}); impl='auto' uses the PyTorch reference for it in this process. "
                    "Please report this with the output of `python -m stylegan2_ops doctor`.",
                    RuntimeWarning,
                    stacklevel=4,
                )
    return _RESULTS[key] is None
