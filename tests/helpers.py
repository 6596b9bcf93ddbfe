"""What the training, resume and command tests share: synthetic brain-slice-like images, tiny
runs of the `tiny` preset, the untrained run folder the commands read, and the checks that
compare two runs' checkpoints. (pytest puts tests/ on the path, so test files `import helpers`.)"""
from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest
import torch
from PIL import Image

from stylegan2.data import ImageDataset, open_dataset
from stylegan2.training import checkpoint as ckpt_io
from stylegan2.training import loop, state
from stylegan2.training.config import TrainConfig, make_config
from stylegan2.training.phases import train_step
from stylegan2.training.state import Run
from stylegan2.training.stats import StatsAccumulator

# --------------------------------------------------------------------------------------------
# Images.


def blob_dataset(gen: torch.Generator, n: int, res: int = 16, labeled: bool = False,
                 spread: float = 0.5) -> ImageDataset:
    """n uint8 images [n, 1, res, res]: bright ellipses of random size (semi-axes 0.3 to
    0.3 + spread) and position on noise; with `labeled`, three random classes."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, res), torch.linspace(-1, 1, res), indexing="ij")
    p = torch.rand(n, 5, generator=gen)
    cx, cy = (p[:, 0] - 0.5)[:, None, None] * 0.6, (p[:, 1] - 0.5)[:, None, None] * 0.6
    ax, ay = 0.3 + spread * p[:, 2, None, None], 0.3 + spread * p[:, 3, None, None]
    inside = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 < 1
    img = inside * (120 + 120 * p[:, 4, None, None]) + 15 * torch.rand(n, res, res, generator=gen)
    images = img.clamp(0, 255).to(torch.uint8)[:, None].numpy()
    if labeled:
        labels = torch.randint(0, 3, (n,), generator=gen).numpy().astype(np.int64)
        return ImageDataset(images, labels, ["inferior", "middle", "superior"], source=f"blobs ({n})")
    return ImageDataset(images, source=f"blobs ({n})")


def ellipse_slices(g: np.random.Generator, n: int, res: int = 16, base: float = 120.0,
                   scale: float = 120.0) -> np.ndarray:
    """uint8 [n, 1, res, res]: ellipses of random size and position, brightness base + scale * U,
    on faint noise. Draws from `g` image by image, so callers sharing one generator across
    folders get the same images as one call per image would."""
    yy, xx = np.mgrid[0:res, 0:res] / ((res - 1) / 2) - 1
    out = np.empty((n, 1, res, res), np.uint8)
    for i in range(n):
        cx, cy, rx, ry, v = g.random(5)
        inside = ((xx - cx + 0.5) / (0.3 + 0.5 * rx)) ** 2 + ((yy - cy + 0.5) / (0.3 + 0.5 * ry)) ** 2 < 1
        out[i, 0] = np.clip(inside * (base + scale * v) + 15 * g.random((res, res)), 0, 255)
    return out


def write_pngs(folder: Path, images: np.ndarray, stem: str) -> Path:
    """images [n, 1, h, w] uint8 as grayscale PNGs `{stem}{i:03d}.png` in `folder` (made)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img[0], "L").save(folder / f"{stem}{i:03d}.png")
    return folder


# --------------------------------------------------------------------------------------------
# Runs and their checkpoints.


def tiny(**overrides: Any) -> TrainConfig:
    """The tiny preset with both lazy penalties inside a few steps (R1 every 3, path length every
    2), 4-image grids and one thread (as conftest sets outside training: a run's numbers then do
    not depend on the machine's cores), plus `overrides`, resolved."""
    cfg, _ = make_config("tiny", dict(dict(r1_interval=3, pl_interval=2, grid_images=4, threads=1), **overrides))
    return cfg


def train_quietly(cfg: TrainConfig, run_dir: Path, ds: Any, log: Optional[Callable[[str], None]] = None,
                  **kw: Any) -> Any:
    """loop.train without a progress bar; its log lines go to `log` (dropped when None)."""
    return loop.train(cfg, run_dir, ds, progress=False, log=log or (lambda s: None), **kw)


def untrained_run(root: Path, data: Path, name: str, prepare: Optional[Callable[[Run], None]] = None) -> Path:
    """root/name: a run folder holding one untrained checkpoint of the tiny preset whose config
    names `data` (so commands find it without --data); `prepare` may change the run first."""
    cfg, _ = make_config("tiny", {"data": str(data)})
    dataset = open_dataset(str(data), cfg.resolution, cfg.channels, cache_dir=str(root / "cache"), progress=False)
    run = state.setup_run(cfg, dataset, torch.device("cpu"))
    if prepare is not None:
        prepare(run)
    ckpt_io.save_checkpoint(run, root / name)
    return root / name


def assert_same_weights(a: dict[str, Any], b: dict[str, Any]) -> None:
    """G, D and G_ema of two checkpoints equal bit for bit."""
    for key in ("G", "D", "G_ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Weights, optimizer moments, the path-length mean and the progress of two checkpoints equal."""
    assert_same_weights(a, b)
    for key in ("opt_G", "opt_D"):
        for i, s in a[key]["state"].items():
            for k, v in s.items():
                assert torch.equal(v, b[key]["state"][i][k]), f"{key} state {i}.{k} differs"
    assert torch.equal(a["loss"]["pl_mean"], b["loss"]["pl_mean"])
    assert a["progress"]["cur_nimg"] == b["progress"]["cur_nimg"]
    assert a["progress"]["step"] == b["progress"]["step"]


def whole_and_resumed(tmp_path: Path, ds: Any, config: Callable[[float], TrainConfig], steps: int, batch: int,
                      before_resume: Optional[Callable[[dict[str, Any]], dict[str, Any]]] = None,
                      ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """2 * steps in one go (tmp_path/whole), and steps, a checkpoint, another process RNG state,
    steps more from it (tmp_path/split). `config(kimg)` makes both runs' configs; the resumed one
    is the checkpoint's own, with the whole run's kimg. `before_resume` may replace the
    checkpoint resumed from. Returns (whole, resumed from, split) checkpoints."""
    kimg = 2 * steps * batch / 1000
    train_quietly(config(kimg), tmp_path / "whole", ds)
    train_quietly(config(steps * batch / 1000), tmp_path / "split", ds)
    mid = ckpt_io.load_checkpoint(tmp_path / "split")
    if before_resume is not None:
        mid = before_resume(mid)
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    train_quietly(TrainConfig.from_dict(dict(mid["config"], kimg=kimg)), tmp_path / "split", ds, resume=mid)
    return ckpt_io.load_checkpoint(tmp_path / "whole"), mid, ckpt_io.load_checkpoint(tmp_path / "split")


def sigterm_after_step(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The training loop sends this process SIGTERM right after its n-th step: between two steps,
    where a real one arrives as the loop sees it."""
    real_step, steps = loop.train_step, [0]

    def step_then_signal(run: Run, acc: StatsAccumulator) -> None:
        real_step(run, acc)
        steps[0] += 1
        if steps[0] == n:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(loop, "train_step", step_then_signal)


def assert_steps_never_wait(run: Run, steps: int) -> dict[str, float]:
    """`steps` training steps after as many warm-up ones (kernel loading and self-checks, cuDNN
    autotuning, Adam state) with CUDA sync debug mode 'error', so anything that makes the host
    wait for the GPU raises. Returns the finite stats of the tick boundary (the one read-back)."""
    acc = StatsAccumulator()
    for _ in range(steps):
        train_step(run, acc)
    acc.reduce()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(steps):
            train_step(run, acc)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    values = acc.reduce()
    assert values and all(math.isfinite(v) for v in values.values())
    return values
