"""The layer shapes the kernel benchmarks run at: those of a StyleGAN2 model, by default the
product's 256x256 target at batch 32 (channel base 16384, at most 512 feature maps):

    modulated_conv2d   512 -> 512 at 4 (up=1 only), 8, 16, 32 (up=2 first conv, then up=1),
                       512 -> 256 at 64, 256 -> 128 at 128, 128 -> 64 at 256
    bias_act           the activations: 512 ch at 4..32, 256 at 64, 128 at 128, 64 at 256
    upfirdn2d          upsample2d (res/2 -> res), downsample2d (res -> res/2) and filter2d (res)
                       on those activations, with the [1, 3, 3, 1] filter

Channel counts follow ModelConfig.channels_at: min(channel_base // res, channel_max). --quick
uses the same structure at a toy size (16x16, at most 32 feature maps, batch 2, bfloat16).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from stylegan2.networks.config import block_resolutions, channels_at


@dataclass(frozen=True)
class ModelShape:
    """The part of a StyleGAN2 configuration that fixes the layer shapes."""

    resolution: int = 256
    batch: int = 32
    channel_base: int = 16384
    channel_max: int = 512
    num_fp16_res: int = 4
    half: torch.dtype = torch.float16  # the reduced dtype of those layers

    def channels_at(self, res: int) -> int:
        return channels_at(res, self.channel_base, self.channel_max)

    @property
    def resolutions(self) -> list[int]:
        """4, 8, ..., resolution."""
        return block_resolutions(self.resolution)

    def policy_dtype(self, res: int) -> torch.dtype:
        """The dtype the mixed-precision model (`half` in the num_fp16_res highest resolutions,
        never at 4x4) runs the layer at `res` in."""
        first = max(self.resolution // 2 ** (self.num_fp16_res - 1), 8)
        return self.half if self.num_fp16_res > 0 and res >= first else torch.float32


FULL = ModelShape()
# bfloat16 for the toy run: CPU float16 convolutions are erratic (up to 1000x slower than float32).
QUICK = ModelShape(resolution=16, batch=2, channel_base=256, channel_max=32, num_fp16_res=2,
                   half=torch.bfloat16)


@dataclass(frozen=True)
class ConvShape:
    """One synthesis conv: [batch, cin, res // up, res // up] -> [batch, cout, res, res], 3x3."""

    batch: int
    cin: int
    cout: int
    res: int
    up: int
    kernel: int = 3

    @property
    def in_res(self) -> int:
        return self.res // self.up

    def describe(self) -> str:
        return (f"{self.batch}x{self.cin}x{self.in_res}x{self.in_res}->{self.cout}x{self.res}x{self.res}"
                f" k{self.kernel}" + (f" up{self.up}" if self.up > 1 else ""))


@dataclass(frozen=True)
class ActShape:
    """One activation tensor [batch, channels, res, res]."""

    batch: int
    channels: int
    res: int

    @property
    def size(self) -> list[int]:
        return [self.batch, self.channels, self.res, self.res]

    def describe(self) -> str:
        return f"{self.batch}x{self.channels}x{self.res}x{self.res}"


def conv_shapes(m: ModelShape) -> list[ConvShape]:
    """The generator's 3x3 modulated convs, low resolution first: conv1 of the 4x4 block, then
    per block the up=2 conv0 (input from the block below) and the up=1 conv1."""
    out = [ConvShape(m.batch, m.channels_at(4), m.channels_at(4), 4, 1)]
    for res in m.resolutions[1:]:
        cin, cout = m.channels_at(res // 2), m.channels_at(res)
        out.append(ConvShape(m.batch, cin, cout, res, 2))
        out.append(ConvShape(m.batch, cout, cout, res, 1))
    return out


def act_shapes(m: ModelShape) -> list[ActShape]:
    """The generator's activations, one per resolution."""
    return [ActShape(m.batch, m.channels_at(r), r) for r in m.resolutions]
