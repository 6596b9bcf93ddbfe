"""The grids a training run writes: reals.png from the dataset and fakes_*.png from fixed latents,
so snapshots of one run can be compared image by image."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..images import save_grid
from .state import Run


def grid_latents(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed z [grid_images, z_dim] and labels (classes in turn) for the fake grids. Drawn from a
    private generator so snapshots never disturb the training RNG."""
    n = run.cfg.grid_images
    z = torch.randn(n, run.cfg.z_dim, generator=torch.Generator().manual_seed(run.cfg.seed))
    c_dim = run.feeder.c_dim
    c = torch.nn.functional.one_hot(torch.arange(n) % c_dim, c_dim).float() if c_dim else torch.zeros(n, 0)
    return z.to(run.device), c.to(run.device)


@torch.no_grad()
def render(G: torch.nn.Module, z: torch.Tensor, c: torch.Tensor, batch: int,
           truncation_psi: float = 1.0, noise_mode: str = "const") -> torch.Tensor:
    """G(z, c) in chunks of `batch` -> float32 [N, C, R, R] on the CPU."""
    out = []
    for i in range(0, len(z), batch):
        cc = c[i:i + batch] if c.shape[1] else None
        out.append(G(z[i:i + batch], cc, truncation_psi=truncation_psi, noise_mode=noise_mode).float().cpu())
    return torch.cat(out)


def save_reals(run: Run, dataset: Any, path: Path) -> Path:
    g = torch.Generator().manual_seed(run.cfg.seed)
    idx = torch.randperm(len(dataset), generator=g)[:run.cfg.grid_images].sort().values
    return save_grid(torch.from_numpy(dataset.images[idx.numpy()]), path)
