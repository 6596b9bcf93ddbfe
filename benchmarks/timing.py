"""Timers and the device's measured ceilings (copy bandwidth, matrix-multiply peak).

Every benchmark number is a median: device work is asynchronous and noisy, and the median of
many runs after a warm-up is what METHOD-style timing asks for. On a GPU each call is bracketed
by CUDA events (device time, no host clock); on a CPU by time.perf_counter. The same code path
serves both: only `_Clock` differs.

Ceilings are measured in the same run, so percentages compare like with like:
    copy_gbps        a large device-to-device copy, counting bytes read + bytes written
    matmul_tflops    a large square matmul per dtype (2 * n^3 FLOPs), random operands
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch


def median(values: Sequence[float]) -> float:
    """The median (mean of the two middle values for an even count). Raises on an empty list."""
    if len(values) == 0:
        raise ValueError("median of no values")
    s = sorted(float(v) for v in values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])


@dataclass
class Timing:
    """Milliseconds per call: the median and the spread of the samples."""

    ms: float
    samples: list[float]

    @property
    def spread(self) -> float:
        """(max - min) / median: how far apart repeated runs landed."""
        return (max(self.samples) - min(self.samples)) / self.ms if self.ms > 0 else math.inf


class _Clock:
    """Start/stop pairs, read all at once at the end (no sync inside the timed loop on a GPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.pairs: list[tuple[Any, Any]] = []

    def start(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def stop(self, started: Any) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.pairs.append((started, ev))
        else:
            self.pairs.append((started, time.perf_counter()))

    def read_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return [a.elapsed_time(b) for a, b in self.pairs]
        return [(b - a) * 1e3 for a, b in self.pairs]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[..., Any], inputs: Sequence[Sequence[Any]], device: torch.device, *,
               warmup: int, repeat: int) -> Timing:
    """Median milliseconds of fn(*inputs[i % len(inputs)]) over `repeat` timed calls.

    The input sets are rotated so that consecutive calls never find their operands already in
    the cache. `warmup` untimed calls first (module loading, autotuning, compilation).
    """
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    if not inputs:
        raise ValueError("need at least one input set")
    for i in range(warmup):
        fn(*inputs[i % len(inputs)])
    synchronize(device)
    clock = _Clock(device)
    for i in range(repeat):
        args = inputs[(warmup + i) % len(inputs)]
        t = clock.start()
        fn(*args)
        clock.stop(t)
    samples = clock.read_ms()
    return Timing(ms=median(samples), samples=samples)


def rotation_count(set_bytes: int, device: torch.device, *, cache_bytes: int | None = None,
                   most: int = 32) -> int:
    """How many input sets to rotate among so that together they overflow the last-level cache
    twice over (at least 2, at most `most`)."""
    if cache_bytes is None:
        cache_bytes = 64 * 2**20  # above the L2 of current data-centre GPUs (H100: 50 MiB)
    need = math.ceil(2 * cache_bytes / max(set_bytes, 1))
    return int(min(max(need, 2), most))


# ---------------------------------------------------------------------------------------------
# Ceilings


@dataclass
class Ceilings:
    """The device's measured limits: GB/s of a copy, TFLOP/s of a matmul per dtype name."""

    copy_gbps: float
    matmul_tflops: dict[str, float]
    notes: dict[str, str]

    def peak_for(self, dtype_name: str) -> tuple[float | None, str]:
        """(TFLOP/s, which ceiling) to compare a row of this dtype with. float32 convolutions run
        through cuDNN with TF32 allowed by default, so their ceiling is the TF32 matmul when one
        was measured and torch allows TF32 in cuDNN."""
        if dtype_name == "float32" and "tf32" in self.matmul_tflops and torch.backends.cudnn.allow_tf32:
            return self.matmul_tflops["tf32"], "tf32"
        if dtype_name in self.matmul_tflops:
            return self.matmul_tflops[dtype_name], dtype_name
        return None, ""

    def to_dict(self) -> dict[str, Any]:
        return {"copy_gbps": self.copy_gbps, "matmul_tflops": dict(self.matmul_tflops),
                "notes": dict(self.notes)}


def measure_copy_gbps(device: torch.device, nbytes: int, *, warmup: int, repeat: int) -> float:
    """Bandwidth of dst.copy_(src) for `nbytes`-byte float32 buffers: (read + write) / time.
    Two source/destination pairs alternate so no call finds its data in a cache."""
    n = max(nbytes // 4, 1024)
    pairs = [(torch.empty(n, device=device), torch.rand(n, device=device)) for _ in range(2)]
    t = time_calls(lambda dst, src: dst.copy_(src), pairs, device, warmup=warmup, repeat=repeat)
    return 2 * n * 4 / (t.ms * 1e-3) / 1e9


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, *, warmup: int,
                          repeat: int, tf32: bool = False) -> float:
    """TFLOP/s of an n x n x n matmul (2 n^3 FLOPs) on random operands. tf32=True times float32
    with TensorFloat-32 allowed (restoring torch's setting afterwards)."""
    sets = [(torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype))
            for _ in range(2)]
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        t = time_calls(torch.matmul, sets, device, warmup=warmup, repeat=repeat)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    return 2 * n**3 / (t.ms * 1e-3) / 1e12


def measure_ceilings(device: torch.device, dtypes: Sequence[str], *, quick: bool) -> Ceilings:
    """Copy bandwidth and matmul peaks for `dtypes` (names such as "float32", "float16"), plus
    "tf32" on a GPU. Sizes fill a GPU (1 GiB copy, 8192^3 matmul) or stay small on a CPU."""
    cuda = device.type == "cuda"
    copy_bytes = 2**30 if cuda else (16 * 2**20 if quick else 256 * 2**20)
    n = 8192 if cuda else (256 if quick else 1024)
    warmup, repeat = (5, 30) if cuda else ((1, 3) if quick else (2, 10))
    notes = {"copy": f"dst.copy_(src), {copy_bytes / 2**20:.0f} MiB each way, read + write bytes",
             "matmul": f"{n}x{n}x{n} matmul, random operands, 2*n^3 FLOPs"}
    copy = measure_copy_gbps(device, copy_bytes, warmup=warmup, repeat=repeat)
    tflops: dict[str, float] = {}
    for name in dict.fromkeys(dtypes):
        tflops[name] = measure_matmul_tflops(device, getattr(torch, name), n, warmup=warmup, repeat=repeat)
    if cuda and "float32" in tflops:
        tflops["tf32"] = measure_matmul_tflops(device, torch.float32, n, warmup=warmup, repeat=repeat, tf32=True)
        notes["float32"] = ("float32 = IEEE matmul; conv rows in float32 compare with tf32 while "
                            f"torch.backends.cudnn.allow_tf32 is {torch.backends.cudnn.allow_tf32}")
    return Ceilings(copy_gbps=copy, matmul_tflops=tflops, notes=notes)
