"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

Always on (no probability), the same kind of transform for reals and fakes, per image:
    color        brightness + U(-0.5, 0.5); saturation x U(0, 2) about the pixel's channel
                 mean (3-channel only: on one channel it is the identity, so it is skipped);
                 contrast x U(0.5, 1.5) about the image mean
    translation  an integer shift of up to 1/16 of the size each way (ratio 1/8), zero fill
    cutout       a zeroed square of half the size at a random centre

Built from elementwise ops and gathers, so it has gradients of any order with respect to the
images (R1 through the augmentation works as with ADA).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

POLICIES = ("color", "translation", "cutout")


class DiffAugment:
    """Call as aug(images) -> augmented images.

    Args:
        policy: the transforms to run, in order: a comma-separated string or a sequence of
            names from POLICIES.
        num_channels: channels of the images (saturation is skipped unless 3).
        translation_ratio: maximum total shift as a fraction of the size (0.125).
        cutout_ratio: cutout side as a fraction of the size (0.5).
    """

    def __init__(
        self, policy: Union[str, Sequence[str]] = "color,translation,cutout", num_channels: int = 1,
        translation_ratio: float = 0.125, cutout_ratio: float = 0.5,
    ) -> None:
        names = [s.strip() for s in policy.split(",")] if isinstance(policy, str) else list(policy)
        names = [s for s in names if s]
        unknown = [s for s in names if s not in POLICIES]
        if unknown:
            raise ValueError(f"unknown DiffAugment policy {', '.join(unknown)}; choose from {', '.join(POLICIES)}")
        self.policy = tuple(names)
        self.num_channels = num_channels
        self.translation_ratio, self.cutout_ratio = float(translation_ratio), float(cutout_ratio)
        self.skipped = {"saturation": f"needs 3 channels, the images have {num_channels}"} \
            if "color" in names and num_channels != 3 else {}

    def describe(self) -> str:
        text = "diffaugment: " + (", ".join(self.policy) or "nothing")
        if self.skipped:
            text += f" (skipped: {', '.join(f'{k}: {v}' for k, v in self.skipped.items())})"
        return text

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """x: [N, C, H, W] in [-1, 1] -> [N, C, H, W], same dtype and memory format."""
        fmt = torch.channels_last if (not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)) \
            else torch.contiguous_format
        for name in self.policy:
            x = getattr(self, "_" + name)(x, generator)
        return x.contiguous(memory_format=fmt)

    @staticmethod
    def _rand(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        return torch.rand([x.shape[0], 1, 1, 1], device=x.device, dtype=x.dtype, generator=generator)

    def _color(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        x = x + (self._rand(x, generator) - 0.5)
        if x.shape[1] == 3:
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * (self._rand(x, generator) * 2) + mean
        mean = x.mean(dim=[1, 2, 3], keepdim=True)
        return (x - mean) * (self._rand(x, generator) + 0.5) + mean

    def _translation(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        n, c, h, w = x.shape
        sx, sy = int(w * self.translation_ratio / 2 + 0.5), int(h * self.translation_ratio / 2 + 0.5)
        tx = torch.randint(-sx, sx + 1, [n, 1, 1], device=x.device, generator=generator)
        ty = torch.randint(-sy, sy + 1, [n, 1, 1], device=x.device, generator=generator)
        cols = torch.arange(w, device=x.device)[None, None, :] + tx  # [N, 1, W]
        rows = torch.arange(h, device=x.device)[None, :, None] + ty  # [N, H, 1]
        inside = ((cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)).to(x.dtype)  # [N, H, W]
        index = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).reshape(n, 1, h * w).expand(n, c, -1)
        out = x.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)
        return out * inside[:, None]

    def _cutout(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        n, _, h, w = x.shape
        cw, ch = int(w * self.cutout_ratio + 0.5), int(h * self.cutout_ratio + 0.5)
        # Centres so that the square may hang over any edge by up to half its side.
        cx = torch.randint(0, w + (1 - cw % 2), [n, 1, 1], device=x.device, generator=generator)
        cy = torch.randint(0, h + (1 - ch % 2), [n, 1, 1], device=x.device, generator=generator)
        cols = torch.arange(w, device=x.device)[None, None, :] - (cx - cw // 2)
        rows = torch.arange(h, device=x.device)[None, :, None] - (cy - ch // 2)
        cut = (cols >= 0) & (cols < cw) & (rows >= 0) & (rows < ch)
        return x * (~cut).to(x.dtype)[:, None]
