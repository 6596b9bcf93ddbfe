"""Process-wide torch settings, changed only for the length of a block and then put back.

Library functions (training, generation, dataset building) run inside a notebook or another
program whose own settings they must not leave changed: the CPU thread count, cuDNN autotuning and
the default random generators are global to the process, so whoever changes them does so here,
for a `with` block.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch


@contextlib.contextmanager
def torch_settings(*, threads: Optional[int] = None, cudnn_benchmark: Optional[bool] = None) -> Iterator[None]:
    """Within the block: torch.set_num_threads(threads) and cudnn.benchmark = cudnn_benchmark
    (None leaves a setting as it is); both are restored on leaving, also after an error."""
    threads_before = torch.get_num_threads()
    benchmark_before = torch.backends.cudnn.benchmark
    if threads is not None:
        torch.set_num_threads(threads)
    if cudnn_benchmark is not None:
        torch.backends.cudnn.benchmark = cudnn_benchmark
    try:
        yield
    finally:
        if threads is not None:
            torch.set_num_threads(threads_before)
        torch.backends.cudnn.benchmark = benchmark_before


@contextlib.contextmanager
def seeded_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Within the block, the default random generator of `device` (a CPU or one CUDA GPU) is
    seeded with `seed`; on leaving, its state (and the CPU's) is what it was, so the caller's
    random stream goes on as if nothing had been drawn. Used where the networks draw from the
    default generator (per-layer noise) and the result must repeat. On other device types
    (mps, xpu) their generator is neither seeded nor restored."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        else:  # torch.manual_seed would also seed every GPU, outside the fork
            torch.default_generator.manual_seed(seed)
        yield
