"""Process-wide torch settings, changed only for the length of a block and then put back.

Library functions (training, generation, dataset building) run inside a notebook or another
program whose own settings they must not leave changed: the CPU thread count and cuDNN autotuning
are global to the process, so whoever changes them does so here, for a `with` block.
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
