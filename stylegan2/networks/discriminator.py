"""The StyleGAN2 residual discriminator.

FromRGB at the top resolution only, then one block per resolution R, R/2, ..., 8: conv 3x3,
conv 3x3 with 2x downsampling, plus a 1x1 downsampling skip; both paths are scaled by
sqrt(0.5) so the sum keeps unit variance. The 4x4 epilogue appends the minibatch standard
deviation, then conv 3x3, FC, and the output FC. With c_dim > 0 the output layer produces a
`cmap_dim` vector that is projected onto a mapping of c (projection discriminator).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from .config import DEFAULT_MBSTD_GROUP, ModelConfig
from .layers import Conv2dLayer, FullyConnected, MinibatchStd
from .mapping import MappingNetwork
from .memory_format import LayoutSwitch


class DiscriminatorBlock(LayoutSwitch, nn.Module):
    """x [N, tmp_channels, res, res] (None at the top) and img [N, img_channels, res, res] ->
    x [N, out_channels, res / 2, res / 2] in the block's dtype."""

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        resolution: int,
        img_channels: int,
        *,
        dtype: torch.dtype = torch.float32,
        conv_clamp: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.resolution, self.dtype = in_channels, resolution, dtype
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, act="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, act="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, act="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: Optional[torch.Tensor], img: torch.Tensor, force_fp32: bool = False) -> torch.Tensor:
        dtype = torch.float32 if force_fp32 else self.dtype
        if self.in_channels == 0:
            x = self.fromrgb(self.to_block_layout(img.to(dtype)))
        else:
            x = x.to(dtype)
        x = self.to_block_layout(x)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv0(x)
        x = self.conv1(x, gain=math.sqrt(0.5))
        return y + x


class DiscriminatorEpilogue(nn.Module):
    """x [N, in_channels, 4, 4] (float32), cmap [N, cmap_dim] or None -> logits [N, 1]."""

    def __init__(
        self,
        in_channels: int,
        cmap_dim: int,
        *,
        img_channels: int,
        from_rgb: bool,
        mbstd_group: int = DEFAULT_MBSTD_GROUP,
        mbstd_channels: int = 1,
        conv_clamp: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.cmap_dim = cmap_dim
        # Only a 4x4 discriminator has no block above the epilogue to read the image.
        self.fromrgb = (Conv2dLayer(img_channels, in_channels, 1, act="lrelu", conv_clamp=conv_clamp)
                        if from_rgb else None)
        self.mbstd = MinibatchStd(mbstd_group, mbstd_channels) if mbstd_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_channels, in_channels, 3, act="lrelu", conv_clamp=conv_clamp)
        self.fc = FullyConnected(in_channels * 4 * 4, in_channels, act="lrelu")
        self.out = FullyConnected(in_channels, cmap_dim if cmap_dim > 0 else 1)

    def forward(self, x: Optional[torch.Tensor], img: torch.Tensor, cmap: Optional[torch.Tensor]) -> torch.Tensor:
        if self.fromrgb is not None:
            x = self.fromrgb(img.to(torch.float32))
        x = x.to(torch.float32)  # the epilogue always runs in float32, as NVlabs does
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if cmap is not None:
            x = (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        return x


class Discriminator(nn.Module):
    """img [N, channels, R, R] (+ c) -> logits [N, 1] float32."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.c_dim, self.img_resolution, self.img_channels = cfg.c_dim, cfg.resolution, cfg.channels
        clamp = cfg.conv_clamp
        self.blocks = nn.ModuleDict()
        for res in reversed(cfg.block_resolutions[1:]):  # R, R/2, ..., 8
            self.blocks[f"b{res}"] = DiscriminatorBlock(
                cfg.channels_at(res) if res < cfg.resolution else 0,
                cfg.channels_at(res),
                cfg.channels_at(res // 2),
                res,
                cfg.channels,
                dtype=cfg.block_dtype(res),
                conv_clamp=clamp,
            )
        cmap_dim = cfg.channels_at(4) if cfg.c_dim > 0 else 0
        # Projection conditioning: c mapped (its own depth, lr_mult 0.01, no w average) to cmap_dim.
        self.mapping = (
            MappingNetwork(
                0, cfg.c_dim, cmap_dim, None,
                num_layers=cfg.resolved_d_mapping_layers, lr_mult=cfg.mapping_lr_mult, w_avg_beta=None,
            )
            if cfg.c_dim > 0
            else None
        )
        self.b4 = DiscriminatorEpilogue(
            cfg.channels_at(4),
            cmap_dim,
            img_channels=cfg.channels,
            from_rgb=cfg.resolution == 4,
            mbstd_group=cfg.mbstd_group,
            mbstd_channels=cfg.mbstd_channels,
            conv_clamp=clamp,
        )

    def forward(self, img: torch.Tensor, c: Optional[torch.Tensor] = None, force_fp32: bool = False) -> torch.Tensor:
        """img [N, img_channels, R, R] in about [-1, 1]; c [N, c_dim] rows or [N] labels
        (ignored when unconditional) -> logits [N, 1] float32."""
        expected = [self.img_channels, self.img_resolution, self.img_resolution]
        if img.ndim != 4 or list(img.shape[1:]) != expected:
            raise ValueError(f"img must have shape [N, {', '.join(map(str, expected))}], got {list(img.shape)}")
        x = None
        for block in self.blocks.values():
            x = block(x, img, force_fp32=force_fp32)
        cmap = self.mapping(None, c) if self.mapping is not None else None
        return self.b4(x, img, cmap)
