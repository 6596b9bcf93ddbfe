"""Projection: find the latent from which a generator draws a given image (Karras et al. 2020,
"Analyzing and improving the image quality of StyleGAN", section 5 and appendix D, read for
what it does; written here from that description).

    target = read_target("slice.png", G.img_resolution, G.img_channels)   # [1, C, R, R] in [-1, 1]
    result = project(G, target, D=D, steps=1000)          # result.ws [1, num_ws, w_dim], .image, .losses

What is fitted: one w for every layer (W), or one per layer (W+, `w_plus`), and optionally the
per-layer noise maps (`fit_noise`). As in the paper, w starts at the mean of 10000 mapped
latents, Gaussian noise of a decaying size is added to it early on (so the search does not lock
onto the first basin), the learning rate ramps up over the first 5% and down (cosine) over the
last 25%, and fitted noise maps are kept from carrying image content by a penalty on their
autocorrelation at every scale of a pyramid, and renormalised to zero mean and unit variance
after each step.

The loss: mean squared pixel distance, plus the distance between the discriminator's features
of both images (every block's output and the last hidden layer, each unit-normalised across
channels, as LPIPS normalises VGG's), plus LPIPS when its weights are given (see lpips.py).
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .. import fileio
from ..images import save_grid
from .common import ExploreError, model_device, publish

W_STATS_SAMPLES = 10000
LR_RAMPUP = 0.05
LR_RAMPDOWN = 0.25
W_NOISE_START = 0.05  # times the spread of w
W_NOISE_RAMP = 0.75  # fraction of the steps over which that noise decays to zero
NOISE_REG_WEIGHT = 1e5


def read_target(path: str | os.PathLike, resolution: int, channels: int) -> torch.Tensor:
    """An 8-bit PNG/JPEG as float32 [1, channels, resolution, resolution] in [-1, 1].

    The image must already be the model's size and channel count (grayscale 'L' for 1 channel,
    'RGB' for 3): resizing or colour conversion here would fit something other than the slice
    given. Raises ExploreError, one line naming the file and what is wrong."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            mode, size = im.mode, im.size
            arr = np.asarray(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ExploreError(f"target {p}: not a readable image ({type(e).__name__}: {e})") from None
    want = "L" if channels == 1 else "RGB"
    if size != (resolution, resolution):
        raise ExploreError(f"target {p} is {size[0]}x{size[1]}, but the model makes {resolution}x{resolution} "
                           "images: give a slice of that size")
    if mode != want:
        have = {"L": "grayscale (1 channel)", "RGB": "RGB (3 channels)"}.get(mode, f"mode {mode}")
        need = "grayscale (1 channel, mode L)" if channels == 1 else "RGB (3 channels)"
        raise ExploreError(f"target {p} is {have}, but the model makes {need} images")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1


# --------------------------------------------------------------------------------------------
# Losses.

class DiscriminatorFeatures:
    """images [N, C, R, R] in [-1, 1] -> the discriminator's features at every block output and
    its last hidden layer (a list of tensors), differentiable with respect to the images.
    The minibatch-std layer gets groups of one image, so no image's features depend on another."""

    def __init__(self, D: nn.Module) -> None:
        self.D = copy.deepcopy(D).eval().requires_grad_(False)
        if self.D.b4.mbstd is not None:
            self.D.b4.mbstd.group_size = 1
        self._taken: list[torch.Tensor] = []
        for block in self.D.blocks.values():
            block.register_forward_hook(lambda _m, _i, out: self._taken.append(out))
        self.D.b4.fc.register_forward_hook(lambda _m, _i, out: self._taken.append(out))
        self._c = torch.zeros(1, self.D.c_dim, device=model_device(self.D)) if self.D.c_dim > 0 else None

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        self._taken = []
        c = None if self._c is None else self._c.expand(len(images), -1)
        self.D(images, c, force_fp32=True)
        return [t.float() for t in self._taken]


def feature_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Mean over levels of the mean squared difference of channel-normalised features."""
    total = a[0].new_zeros(())
    for x, y in zip(a, b):
        total = total + (F.normalize(x, dim=1) - F.normalize(y, dim=1)).square().sum(dim=1).mean()
    return total / len(a)


def noise_regularization(maps: list[torch.Tensor]) -> torch.Tensor:
    """Sum over maps and pyramid levels (halved down to 8x8) of the squared mean products of
    each map with itself shifted one pixel across and one pixel down (wrapping): zero for white
    noise, large when a map holds smooth structure, i.e. image content."""
    total = maps[0].new_zeros(())
    for m in maps:
        x = m.reshape(1, 1, *m.shape[-2:])
        while True:
            total = total + (x * x.roll(1, dims=3)).mean().square() + (x * x.roll(1, dims=2)).mean().square()
            if x.shape[-1] <= 8:
                break
            x = F.avg_pool2d(x, 2)
    return total


def learning_rate(t: float, base: float) -> float:
    """base, ramped up linearly over the first LR_RAMPUP of the run and down (cosine) over the
    last LR_RAMPDOWN; t in [0, 1]."""
    down = min(1.0, (1.0 - t) / LR_RAMPDOWN)
    return base * (0.5 - 0.5 * math.cos(down * math.pi)) * min(1.0, t / LR_RAMPUP)


# --------------------------------------------------------------------------------------------

@dataclass
class Projection:
    """What project found.

    ws: float32 [1, num_ws, w_dim] (W projections repeat one w). image: float32 [1, C, R, R],
    drawn from ws (and the fitted noise, if any). snapshots: (step, image [1, C, R, R]) for a
    progress strip, first and last included. losses: the loss per step (pixel + features
    (+ LPIPS), without the noise penalty). parts: each term per step. noise: the fitted noise
    maps by layer name, or None.
    """

    ws: torch.Tensor
    image: torch.Tensor
    snapshots: list[tuple[int, torch.Tensor]]
    losses: list[float]
    parts: dict[str, list[float]] = field(default_factory=dict)
    noise: Optional[dict[str, torch.Tensor]] = None


def _noise_layers(G: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in G.synthesis.named_modules()
            if getattr(m, "use_noise", False) and hasattr(m, "noise_const")}


@torch.no_grad()
def w_statistics(G: nn.Module, c: Optional[torch.Tensor] = None, samples: int = W_STATS_SAMPLES,
                 seed: int = 0) -> tuple[torch.Tensor, float]:
    """The mean w [1, 1, w_dim] of `samples` mapped latents and their spread (root mean squared
    distance from it), from a seeded generator."""
    dev = model_device(G)
    z = torch.randn(samples, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(dev)
    cc = None if c is None else c.to(dev).expand(samples, -1)
    w = G.mapping(z, cc)[:, :1, :]
    mean = w.mean(dim=0, keepdim=True)
    spread = float((w - mean).square().sum(dim=2).mean().sqrt())
    return mean, spread


def project(G: nn.Module, target: torch.Tensor, *, D: Optional[nn.Module] = None, steps: int = 1000,
            w_plus: bool = False, fit_noise: bool = False, lr: float = 0.1, pixel_weight: float = 1.0,
            feature_weight: float = 1.0, lpips: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
            lpips_weight: float = 1.0, c: Optional[torch.Tensor] = None, seed: int = 0, snapshots: int = 8,
            progress: bool = False) -> Projection:
    """Fit a latent so that G draws `target` (float [1, C, R, R] in [-1, 1], see read_target).

    D: the discriminator whose features enter the loss (None: pixels and LPIPS only).
    steps: optimisation steps (Adam). w_plus: one w per layer instead of one for all.
    fit_noise: fit the noise maps too (regularised; see the module docstring); otherwise the
        generator's stored noise is used, so `generate --ws` redraws the projection exactly.
    lpips: a features function (lpips.lpips_features) whose squared distance is added.
    c: labels [1, c_dim] of a conditional generator. seed: w statistics, w noise and noise maps.
    Raises ExploreError for a target of the wrong shape or a conditional G without c.
    G is not modified (noise is fitted on a copy).
    """
    shape = [1, G.img_channels, G.img_resolution, G.img_resolution]
    if list(target.shape) != shape:
        raise ExploreError(f"target: expected shape {shape}, got {list(target.shape)}")
    if steps < 1:
        raise ExploreError(f"steps: must be at least 1, got {steps}")
    if G.c_dim > 0 and c is None:
        raise ExploreError("this generator is conditional: give the class of the target")
    dev = model_device(G)
    force_fp32 = dev.type != "cuda"
    G = copy.deepcopy(G).eval().requires_grad_(False)
    target = target.to(dev, torch.float32)
    gen = torch.Generator().manual_seed(seed)

    w_mean, w_spread = w_statistics(G, c, seed=seed)
    start = w_mean.repeat(1, G.num_ws if w_plus else 1, 1)
    w = start.clone().requires_grad_(True)
    params = [w]
    noise_maps: dict[str, torch.Tensor] = {}
    if fit_noise:
        for name, layer in _noise_layers(G).items():
            n = torch.randn(layer.noise_const.shape, generator=gen).to(dev).requires_grad_(True)
            layer.noise_const = n  # the buffer becomes the fitted tensor; noise_mode 'const' reads it
            noise_maps[name] = n
            params.append(n)
    opt = torch.optim.Adam(params, betas=(0.9, 0.999), lr=lr)

    dfeat = DiscriminatorFeatures(D) if D is not None and feature_weight > 0 else None
    with torch.no_grad():
        target_d = dfeat(target) if dfeat is not None else None
        target_l = lpips(target) if lpips is not None else None

    def draw(ws: torch.Tensor) -> torch.Tensor:
        return G.synthesis(ws.expand(-1, G.num_ws, -1) if not w_plus else ws, noise_mode="const",
                           force_fp32=force_fp32)

    snap_at = set(np.linspace(0, steps - 1, max(2, snapshots)).round().astype(int).tolist()) if steps > 1 else {0}
    snaps: list[tuple[int, torch.Tensor]] = []
    losses: list[float] = []
    parts: dict[str, list[float]] = {"pixel": [], "features": [], "lpips": [], "noise": []}
    for step in tqdm(range(steps), desc="project", unit="step", disable=not progress, leave=False):
        t = step / steps
        for group in opt.param_groups:
            group["lr"] = learning_rate(t, lr)
        jitter = w_spread * W_NOISE_START * max(0.0, 1.0 - t / W_NOISE_RAMP) ** 2
        ws_in = w + torch.randn(w.shape, generator=gen).to(dev) * jitter
        img = draw(ws_in)
        pixel = (img - target).square().mean()
        feats = feature_distance(dfeat(img), target_d) if dfeat is not None else img.new_zeros(())
        perc = (lpips(img) - target_l).square().sum() if lpips is not None else img.new_zeros(())
        reg = noise_regularization(list(noise_maps.values())) if noise_maps else img.new_zeros(())
        loss = pixel_weight * pixel + feature_weight * feats + lpips_weight * perc
        opt.zero_grad(set_to_none=True)
        (loss + NOISE_REG_WEIGHT * reg).backward()
        opt.step()
        with torch.no_grad():
            for n in noise_maps.values():  # zero mean, unit variance: the statistics noise is trained with
                n.sub_(n.mean()).div_(n.square().mean().sqrt().clamp_min(1e-8))
        losses.append(loss.item())
        for k, v in (("pixel", pixel), ("features", feats), ("lpips", perc), ("noise", reg)):
            parts[k].append(v.item())
        if step in snap_at:
            with torch.no_grad():
                snaps.append((step + 1, draw(w).float().cpu()))
    with torch.no_grad():
        final_ws = (w if w_plus else w.expand(-1, G.num_ws, -1)).detach().float().cpu().clone()
        image = draw(w).float().cpu()
    used = {k: v for k, v in parts.items() if any(x != 0 for x in v)}
    return Projection(ws=final_ws, image=image, snapshots=snaps, losses=losses, parts=used,
                      noise={k: v.detach().cpu().clone() for k, v in noise_maps.items()} if fit_noise else None)


def plot_losses(result: Projection, path: Path) -> None:
    """The loss per step (log scale), total and each term that was used."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.arange(1, len(result.losses) + 1)
    ax.plot(steps, result.losses, label="loss", color="black", linewidth=1.5)
    for name, values in result.parts.items():
        if name != "noise":
            ax.plot(steps, values, label=name, linewidth=1, alpha=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("projection")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    try:
        fileio.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def write_projection(result: Projection, target: torch.Tensor, folder: str | Path) -> dict[str, Path]:
    """In `folder`, all or none: target_projected.png (target beside projection),
    projected.png (the projection at the model's size), projected_w.npy (ws [1, num_ws, w_dim],
    what `generate --ws` renders), progress.png (the snapshots in order), loss.png, and
    projected_noise.npz when noise was fitted."""
    from ..images import save_image, to_uint8

    writers = {
        "target_projected.png": lambda p: save_grid(torch.cat([target.float().cpu(), result.image]), p, cols=2),
        "projected.png": lambda p: save_image(to_uint8(result.image)[0], p),
        "projected_w.npy": lambda p: fileio.atomic_write(p, lambda f: np.save(f, result.ws.numpy())),
        "progress.png": lambda p: save_grid(torch.cat([s for _, s in result.snapshots]), p,
                                            cols=len(result.snapshots)),
        "loss.png": lambda p: plot_losses(result, p),
    }
    if result.noise is not None:
        noise = {k: v.numpy() for k, v in result.noise.items()}
        writers["projected_noise.npz"] = lambda p: fileio.atomic_write(p, lambda f: np.savez(f, **noise))
    return publish(folder, writers)
