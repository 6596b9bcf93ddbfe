"""What the explore tools share: their one-line error, latents from seeds, and the image a
generator draws from given ws."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .. import fileio
from ..sampling import seed_latents


class ExploreError(ValueError):
    """Bad input to an explore tool (a layer out of range, a target of the wrong size, a label
    field the dataset lacks): one line naming the problem, raised before any long work."""


def model_device(G: nn.Module) -> torch.device:
    return next(iter(G.parameters())).device


@torch.no_grad()
def seed_ws(G: nn.Module, seeds: Sequence[int], c: Optional[torch.Tensor] = None, *,
            truncation_psi: float = 1.0) -> torch.Tensor:
    """ws [len(seeds), num_ws, w_dim] of the seeds' latents, drawn as `generate --seeds` draws
    them (seed_latents) and mapped one seed at a time: a batch of several rounds differently in
    the last bits (BLAS picks kernels by shape), and one at a time an image made from these ws
    is exactly `generate --batch 1`'s image for the seed, whatever else is drawn with it.

    c: labels [1, c_dim] shared by every seed (sampling.class_vector), or None.
    """
    dev = model_device(G)
    z = seed_latents(seeds, G.z_dim, dev)
    cc = None if c is None else c.to(dev)
    return torch.cat([G.mapping(z[i:i + 1], cc, truncation_psi=truncation_psi) for i in range(len(seeds))])


@torch.no_grad()
def synthesize(G: nn.Module, ws: torch.Tensor, *, noise_mode: str = "const", batch: int = 1,
               progress: bool = False) -> torch.Tensor:
    """ws [N, num_ws, w_dim] -> images float32 [N, C, R, R] on the CPU, `batch` at a time. The
    default, one at a time, makes each image independent of its neighbours to the bit (equal
    ws give equal pixels); larger batches are faster and differ only in rounding.

    Layers run in float32 on a CPU (reduced-precision blocks of a GPU-trained model would not run
    there), as `generate` runs them.
    """
    dev = model_device(G)
    force_fp32 = dev.type != "cuda"
    starts = tqdm(range(0, len(ws), batch), desc="synthesis", unit="batch", disable=not progress, leave=False)
    out = [G.synthesis(ws[i:i + batch].to(dev), noise_mode=noise_mode, force_fp32=force_fp32).float().cpu()
           for i in starts]
    return torch.cat(out)


def publish(folder: str | os.PathLike, writers: dict[str, Callable[[Path], Any]]) -> dict[str, Path]:
    """Write a command's output files all or none: each writer(path) fills its file inside a
    hidden temporary folder in `folder`, and only when every one has succeeded are they moved
    into `folder` (a rename each). A failure (a full disk, an error while plotting) leaves
    `folder` as it was and raises (fileio.WriteError for a write that failed).

    writers: {file name: function writing that path}. Returns {file name: final path}.
    """
    folder = fileio.make_dirs(folder)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".explore-", suffix=".tmp", dir=folder))
    except OSError as e:
        raise fileio.WriteError(folder, e, what="cannot write in") from None
    try:
        for name, write in writers.items():
            write(tmp / name)
        done = {}
        for name in writers:
            os.replace(tmp / name, folder / name)
            done[name] = folder / name
        return done
    except OSError as e:
        if isinstance(e, fileio.WriteError):
            raise
        raise fileio.WriteError(folder, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
