"""Feeding real images (and labels) to the training loop, deterministically and resumably.

The dataset already holds every image as uint8 [N, C, R, R] in memory, so batches are gathered by
index instead of going through worker processes: the order comes from a seeded generator whose
state is saved in checkpoints, which is what makes a resumed run bit-identical to an uninterrupted
one. On a GPU the whole uint8 array is moved to the device once when it fits comfortably (else it
is pinned and copied per batch without blocking); conversion to float happens on the device.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

_GPU_SHARE = 0.25  # put the dataset on the GPU when it takes at most this share of free memory


class BatchFeeder:
    """Infinite shuffled batches: epoch e visits the images in a permutation drawn from the feeder's
    own generator; x-flips and the class labels given to G come from the same generator."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, c_dim: int, batch: int,
                 device: torch.device, seed: int = 0, mirror: bool = False) -> None:
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images: expected uint8 [N, C, R, R], got {images.dtype} {images.shape}")
        if len(images) == 0:
            raise ValueError("images: the dataset is empty")
        self.n = len(images)
        self.batch, self.device, self.mirror, self.c_dim = batch, device, mirror, c_dim
        with warnings.catch_warnings():
            # A memory-mapped cache file (several ranks share one copy) is read-only; nothing
            # here writes to it, which is what torch's warning is about.
            warnings.filterwarnings("ignore", message=".*not writable.*")
            host = torch.from_numpy(np.ascontiguousarray(images))
        self.images = self._place(host, device)
        if c_dim > 0:
            if labels is None:
                raise ValueError("labels: conditioning asked for, but the dataset has no labels")
            lab = torch.as_tensor(np.asarray(labels, dtype=np.int64))
            if lab.min() < 0 or lab.max() >= c_dim:
                raise ValueError(f"labels: must lie in [0, {c_dim}), got {lab.min()}..{lab.max()}")
            self.onehot = torch.nn.functional.one_hot(lab, c_dim).float().to(device)
        else:
            self.onehot = torch.zeros(self.n, 0, device=device)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.epoch = 0
        self.pos = 0
        self.perm = torch.randperm(self.n, generator=self.gen)

    @staticmethod
    def _place(host: torch.Tensor, device: torch.device) -> torch.Tensor:
        if device.type != "cuda":
            return host
        free, _ = torch.cuda.mem_get_info(device)
        if host.numel() <= _GPU_SHARE * free:
            return host.to(device)
        return host.pin_memory()

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Host tensor -> device without making the host wait for the GPU's queue (a plain .to()
        from pageable memory synchronizes the stream; a pinned, non-blocking copy does not)."""
        if self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def _indices(self, n: int) -> torch.Tensor:
        out = []
        while n > 0:
            if self.pos == self.n:
                self.epoch += 1
                self.pos = 0
                self.perm = torch.randperm(self.n, generator=self.gen)
            take = min(n, self.n - self.pos)
            out.append(self.perm[self.pos:self.pos + take])
            self.pos += take
            n -= take
        return torch.cat(out)

    def reals(self, part: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Next batch: images float32 [batch, C, R, R] in [-1, 1] and labels [batch, c_dim].

        part: the slice of the batch this rank trains on (split.Split.local). The order and the
        flips are drawn for the whole batch on every rank, so the ranks' shards of an epoch are
        disjoint, cover it, and the generator stays the same on all of them."""
        idx = self._indices(self.batch)
        flip = torch.rand(self.batch, generator=self.gen) < 0.5 if self.mirror else None
        if part is not None:
            idx, flip = idx[part], (flip[part] if flip is not None else None)
        idx_dev = self._to_device(idx)
        if self.images.device == self.device:
            x = self.images[idx_dev]
        else:  # dataset too large for the GPU: gather on the host, copy the batch
            x = self._to_device(self.images[idx])
        x = x.float() / 127.5 - 1
        if flip is not None:
            x = torch.where(self._to_device(flip).view(-1, 1, 1, 1), x.flip(-1), x)
        return x, self.onehot[idx_dev]

    def fake_labels(self, n: int) -> torch.Tensor:
        """Labels for generated images [n, c_dim], drawn with the dataset's class frequencies."""
        if self.c_dim == 0:
            return self.onehot.new_zeros(n, 0)
        return self.onehot[self._to_device(torch.randint(self.n, (n,), generator=self.gen))]

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "epoch": self.epoch, "pos": self.pos,
                "perm": self.perm.clone(), "n": self.n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["n"] != self.n:
            raise ValueError(f"feeder state: saved for {state['n']} images, dataset has {self.n}")
        self.gen.set_state(state["gen"])
        self.epoch, self.pos, self.perm = int(state["epoch"]), int(state["pos"]), state["perm"].clone()
