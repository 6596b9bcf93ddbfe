"""Interpolation between seeds: spherical in Z (the Gaussian's mass lies near a sphere, and a
straight line through its middle leaves it), linear in W (the space the mapping learned to keep
flat, Karras et al. 2019 section 4).

    frames = interpolation_frames(G, [0, 5, 9], space="w", steps=60, loop=False)  # [121, C, R, R]
    save_strip(frames, "strip.png", strip_indices(3, 60, False, 4)); save_gif(frames, "interp.gif", fps=20)
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from .. import fileio
from ..images import save_grid, to_uint8
from ..sampling import seed_latents
from .common import ExploreError, model_device, publish, seed_ws, synthesize

SPACES = ("z", "w")


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of vectors [..., D] along the great circle (norms interpolated
    linearly); exactly a at t = 0 and b at t = 1. Nearly parallel vectors fall back to lerp."""
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na, b / nb
    cos = (ua * ub).sum(dim=-1, keepdim=True).clamp(-1, 1)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    direction = torch.where(sin > 1e-6,
                            (torch.sin((1 - t) * theta) * ua + torch.sin(t * theta) * ub) / sin.clamp_min(1e-6),
                            torch.lerp(ua, ub, t))
    return direction * torch.lerp(na, nb, t)


def frame_times(num_keys: int, steps: int, loop: bool) -> list[tuple[int, float]]:
    """(segment, t) per frame: `steps` frames from each key to the next, then the last key
    itself (t = 1 of the last segment); with `loop`, a last segment back to the first key
    instead, whose end (the first frame again) is not repeated."""
    segments = num_keys if loop else num_keys - 1
    times = [(s, i / steps) for s in range(segments) for i in range(steps)]
    if not loop:
        times.append((segments - 1, 1.0))
    return times


@torch.no_grad()
def interpolation_ws(G: nn.Module, seeds: Sequence[int], *, space: str = "w", steps: int = 60, loop: bool = False,
                     c: Optional[torch.Tensor] = None, truncation_psi: float = 1.0) -> torch.Tensor:
    """ws [F, num_ws, w_dim] of the frames between consecutive seeds (see frame_times): slerp
    of z then the mapping for space 'z', lerp of the mapped ws for 'w'. A frame at a seed is that
    seed's ws as `generate` maps it."""
    if space not in SPACES:
        raise ExploreError(f"space: must be one of {', '.join(SPACES)}, got {space!r}")
    if len(seeds) < 2:
        raise ExploreError(f"interpolation needs at least 2 seeds, got {len(seeds)}")
    if steps < 1:
        raise ExploreError(f"steps: must be at least 1, got {steps}")
    dev = model_device(G)
    z = seed_latents(seeds, G.z_dim, dev)
    cc = None if c is None else c.to(dev)
    n = len(seeds)
    times = frame_times(n, steps, loop)
    if space == "w":
        keys = seed_ws(G, seeds, c, truncation_psi=truncation_psi)
        # A key frame is copied, not computed as a + 0 * (b - a): bit-exact with the seed's image.
        return torch.stack([keys[s] if t == 0 else (keys[(s + 1) % n] if t == 1 else
                            torch.lerp(keys[s], keys[(s + 1) % n], t)) for s, t in times])
    zs = torch.stack([slerp(z[s], z[(s + 1) % n], t) for s, t in times])
    # One frame at a time, as seed_ws maps: a key frame is then its seed's ws to the bit.
    return torch.cat([G.mapping(zs[i:i + 1], cc, truncation_psi=truncation_psi) for i in range(len(zs))])


def interpolation_frames(G: nn.Module, seeds: Sequence[int], *, space: str = "w", steps: int = 60,
                         loop: bool = False, c: Optional[torch.Tensor] = None, truncation_psi: float = 1.0,
                         noise_mode: str = "const", batch: int = 1, progress: bool = False) -> torch.Tensor:
    """Images float32 [F, C, R, R] of interpolation_ws's frames (on the CPU), one at a time by
    default so a key frame is exactly `generate --batch 1`'s image of its seed."""
    ws = interpolation_ws(G, seeds, space=space, steps=steps, loop=loop, c=c, truncation_psi=truncation_psi)
    return synthesize(G, ws, noise_mode=noise_mode, batch=batch, progress=progress)


def strip_indices(num_keys: int, steps: int, loop: bool, per_segment: int) -> list[int]:
    """Frame indices for a strip: every seed's frame and `per_segment` - 1 evenly spaced frames
    between consecutive seeds (fewer when a segment has fewer frames)."""
    per = max(1, min(per_segment, steps))
    segments = num_keys if loop else num_keys - 1
    idx = [s * steps + round(j * steps / per) for s in range(segments) for j in range(per)]
    if not loop:
        idx.append(segments * steps)
    return sorted(set(idx))


def save_strip(frames: torch.Tensor, path: str | Path, indices: Sequence[int]) -> Path:
    """One row of the chosen frames (strip_indices) as a PNG."""
    return save_grid(frames[list(indices)], path, cols=len(indices))


def gif_scale(resolution: int) -> int:
    """The integer enlargement save_grid uses (at least 64 px), so small models stay visible."""
    return max(1, math.ceil(64 / resolution))


def save_gif(frames: torch.Tensor, path: str | Path, fps: float = 20) -> Path:
    """An animated GIF (looping forever) of frames [F, C, R, R] float in [-1, 1], enlarged like
    save_grid. Grayscale frames are written as 8-bit gray, exactly their PNG values."""
    if not fps > 0:
        raise ExploreError(f"fps: must be positive, got {fps}")
    scale = gif_scale(frames.shape[-1])
    arr = to_uint8(frames)
    if scale > 1:
        arr = np.repeat(np.repeat(arr, scale, axis=1), scale, axis=2)
    mode = "L" if arr.shape[3] == 1 else "RGB"
    pics = [Image.fromarray(a[:, :, 0] if mode == "L" else a, mode) for a in arr]
    duration = max(20, round(1000 / fps))  # browsers treat under 20 ms as 100 ms

    def write(f: object) -> None:
        pics[0].save(f, format="GIF", save_all=True, append_images=pics[1:], duration=duration, loop=0,
                     optimize=False, disposal=1)

    return fileio.atomic_write(path, write)


def write_interpolation(frames: torch.Tensor, folder: str | Path, strip: Sequence[int], *, fps: float = 20,
                        stem: str = "interpolation") -> dict[str, Path]:
    """<stem>.png (a strip of the frames `strip` indexes, see strip_indices) and <stem>.gif
    (every frame) in `folder`, both or neither."""
    return publish(folder, {f"{stem}.png": lambda p: save_strip(frames, p, strip),
                            f"{stem}.gif": lambda p: save_gif(frames, p, fps)})
