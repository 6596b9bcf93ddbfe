"""ModelConfig: every architectural choice of the generator and discriminator, in one dataclass.

The config is saved as a plain dict in every checkpoint (`to_dict` / `from_dict`), so a
checkpoint rebuilds its networks without running code. Defaults are StyleGAN2 config F with the
StyleGAN2-ADA refinements at the product's main target, 256x256 grayscale, with NVlabs' 256-pixel
channel budget (channel_base 16384).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..plain_dict import PlainDict

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_CONV_CLAMP = 256.0  # NVlabs' clamp for the reduced-precision layers
DEFAULT_NUM_FP16_RES = 4  # NVlabs' count of highest resolutions in reduced precision
DEFAULT_MBSTD_GROUP = 4   # NVlabs' minibatch standard deviation group size


def block_resolutions(resolution: int) -> list[int]:
    """Block resolutions of a StyleGAN2 at `resolution`, low to high: [4, 8, ..., resolution]."""
    return [2**i for i in range(2, int(math.log2(resolution)) + 1)]


def channels_at(res: int, channel_base: int, channel_max: int) -> int:
    """Feature maps of the blocks at resolution `res`: min(channel_base // res, channel_max)."""
    return min(channel_base // res, channel_max)


@dataclass
class ModelConfig(PlainDict):
    """Architecture of Generator and Discriminator.

    Attributes:
        resolution: image side in pixels, a power of two from 4 to 1024.
        channels: image channels, 1 (grayscale MRI) or 3.
        c_dim: number of classes for conditioning (0 = unconditional).
        z_dim, w_dim: sizes of the input latent z and the intermediate latent w.
        mapping_layers: fully connected layers in the mapping network.
        mapping_lr_mult: learning-rate multiplier of the mapping layers (equalized lr).
        w_avg_beta: decay of the running average of w used by the truncation trick.
        channel_base, channel_max: a block at resolution r has min(channel_base // r,
            channel_max) feature maps.
        num_fp16_res: how many of the highest resolutions run in the reduced dtype that
            `precision` names (NVlabs' num_fp16_res); None = 4 under mixed precision, 0 at fp32.
            Must be 0 when precision is "fp32" and positive otherwise, so a config never asks
            for mixed precision and silently gets none.
        precision: "fp32" (everything float32), "fp16" or "bf16" (the reduced dtype of those
            layers; mappings, ToRGB sums and the discriminator epilogue stay float32).
        conv_clamp: clamp every conv output to [-conv_clamp, conv_clamp]; None = 256 when
            mixed precision is on, no clamping otherwise.

        mbstd_group: minibatch standard deviation group size (the largest divisor of the
            batch size not above it is used, so odd batch sizes still work).
        mbstd_channels: feature maps the minibatch standard deviation layer appends.
        d_mapping_layers: layers of the discriminator's conditioning mapping (c_dim > 0 only);
            None = mapping_layers. NVlabs keeps it separate (8 whatever G's depth is), so
            imported conditional networks need their own value here.

    The precision defaults are filled in here, on construction, and nowhere else: callers (the
    training config, converters, notebooks) pass None through, and the fields hold the numbers
    the networks use from then on, so `to_dict()` (a checkpoint's model_config) states them.
    """

    resolution: int = 256
    channels: int = 1
    c_dim: int = 0
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_lr_mult: float = 0.01
    w_avg_beta: float = 0.995
    channel_base: int = 16384
    channel_max: int = 512
    num_fp16_res: Optional[int] = None
    precision: str = "fp32"
    conv_clamp: Optional[float] = None
    mbstd_group: int = DEFAULT_MBSTD_GROUP
    mbstd_channels: int = 1
    d_mapping_layers: Optional[int] = None

    def __post_init__(self) -> None:
        self._fill_precision_defaults()
        self.validate()

    def _fill_precision_defaults(self) -> None:
        """None -> NVlabs' mixed-precision defaults (4 highest resolutions, clamp 256), or none
        of either at fp32. Explicit values are kept (validate() then judges them); a config
        already filled in (a checkpoint's) comes out unchanged."""
        mixed = self.precision != "fp32"
        if self.num_fp16_res is None:
            self.num_fp16_res = DEFAULT_NUM_FP16_RES if mixed else 0
        if self.conv_clamp is None and mixed:
            self.conv_clamp = DEFAULT_CONV_CLAMP
        elif isinstance(self.conv_clamp, int) and not isinstance(self.conv_clamp, bool):
            self.conv_clamp = float(self.conv_clamp)  # the layers scale it by float gains

    def validate(self) -> None:
        """Raises ValueError naming the first field that does not make sense."""
        r = self.resolution
        if not isinstance(r, int) or r < 4 or r > 1024 or r & (r - 1):
            raise ValueError(f"resolution must be a power of two from 4 to 1024, got {r!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3, got {self.channels!r}")
        for name in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "mbstd_group"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.channel_base // r < 1:
            raise ValueError(f"channel_base {self.channel_base} gives no channels at resolution {r} (a block at "
                             f"resolution r has channel_base // r): use at least {r}")
        if self.d_mapping_layers is not None and (
            not isinstance(self.d_mapping_layers, int) or self.d_mapping_layers < 1
        ):
            raise ValueError(f"d_mapping_layers must be a positive int or None, got {self.d_mapping_layers!r}")
        for name in ("c_dim", "num_fp16_res", "mbstd_channels"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision == "fp32" and self.num_fp16_res > 0:
            raise ValueError(
                f"num_fp16_res={self.num_fp16_res} asks for mixed precision but precision='fp32'; "
                "set precision='fp16' (or 'bf16'), or num_fp16_res=0"
            )
        if self.precision != "fp32" and self.num_fp16_res == 0:
            raise ValueError(
                f"precision={self.precision!r} needs num_fp16_res > 0 (how many of the highest "
                "resolutions run in it; NVlabs uses 4)"
            )
        if self.conv_clamp is not None and not (self.conv_clamp > 0 and math.isfinite(self.conv_clamp)):
            raise ValueError(f"conv_clamp must be a positive number or None, got {self.conv_clamp!r}")
        if not 0 < self.mapping_lr_mult <= 1:
            raise ValueError(f"mapping_lr_mult must be in (0, 1], got {self.mapping_lr_mult!r}")
        if not 0 <= self.w_avg_beta < 1:
            raise ValueError(f"w_avg_beta must be in [0, 1), got {self.w_avg_beta!r}")
        if self.mbstd_channels > 0 and self.channels_at(4) % self.mbstd_channels:
            raise ValueError(
                f"mbstd_channels={self.mbstd_channels} must divide the 4x4 feature maps "
                f"({self.channels_at(4)})"
            )

    # --- derived quantities ------------------------------------------------------------------

    @property
    def log2_resolution(self) -> int:
        return int(math.log2(self.resolution))

    @property
    def block_resolutions(self) -> list[int]:
        """Generator block resolutions, low to high: [4, 8, ..., resolution]."""
        return block_resolutions(self.resolution)

    def channels_at(self, res: int) -> int:
        """Feature maps of the blocks at resolution `res`."""
        return channels_at(res, self.channel_base, self.channel_max)

    @property
    def reduced_dtype(self) -> torch.dtype:
        """The dtype of the reduced-precision layers (float32 when precision is 'fp32')."""
        return PRECISIONS[self.precision]

    @property
    def fp16_resolution(self) -> int:
        """Blocks at this resolution and above run in `reduced_dtype` (as NVlabs, never 4x4)."""
        if self.num_fp16_res == 0:
            return self.resolution * 2  # none
        return max(2 ** (self.log2_resolution + 1 - self.num_fp16_res), 8)

    def block_dtype(self, res: int) -> torch.dtype:
        """Compute dtype of the block at resolution `res`."""
        return self.reduced_dtype if res >= self.fp16_resolution else torch.float32

    @property
    def resolved_d_mapping_layers(self) -> int:
        """Depth of the discriminator's conditioning mapping."""
        return self.mapping_layers if self.d_mapping_layers is None else self.d_mapping_layers

    @property
    def num_ws(self) -> int:
        """Number of w vectors the synthesis network consumes: two per block (one for the 4x4
        block) plus the last ToRGB."""
        return 2 * self.log2_resolution - 2
