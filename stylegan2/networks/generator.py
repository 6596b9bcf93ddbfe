"""The StyleGAN2 generator: mapping network + skip-architecture synthesis network.

Synthesis: a learned 4x4 constant, then one block per resolution 4, 8, ..., R. The 4x4 block
has one conv and a ToRGB; every later block has an up=2 conv, a conv and a ToRGB. Each block
adds its ToRGB output to the upsampled image of the block below (the skip generator), so the
image is assembled across scales in float32 while the blocks run in their own dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

import stylegan2_ops as ops

from .config import ModelConfig
from .layers import RESAMPLE_FILTER, SynthesisLayer, ToRGB
from .memory_format import LayoutSwitch
from .mapping import MappingNetwork


class SynthesisBlock(LayoutSwitch, nn.Module):
    """One resolution of the synthesis network.

    Shapes: x [N, in_channels, res / 2, res / 2] (None for the 4x4 block),
            img [N, img_channels, res / 2, res / 2] float32 (None for the 4x4 block),
            ws [N, num_conv + num_torgb, w_dim]
         -> x [N, out_channels, res, res] (block dtype), img [N, img_channels, res, res] float32.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        *,
        dtype: torch.dtype = torch.float32,
        conv_clamp: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.resolution, self.dtype = in_channels, resolution, dtype
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGB(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1
        self.fused_modconv: Optional[bool] = None  # inference override (Generator.set_fused_modconv)
        self.register_buffer("resample_filter", ops.setup_filter(list(RESAMPLE_FILTER)), persistent=False)

    def forward(
        self,
        x: Optional[torch.Tensor],
        img: Optional[torch.Tensor],
        ws: torch.Tensor,
        noise_mode: str = "random",
        force_fp32: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.float32 if force_fp32 else self.dtype
        # NVlabs' rule: the grouped (fused) modulated conv in inference; in training, and in
        # half precision with batch > 1, modulate activations instead (cheaper backward, and
        # the half-precision pre-normalization lives on that path).
        fused = (not self.training) and (dtype == torch.float32 or ws.shape[0] == 1)
        if not self.training and self.fused_modconv is not None:
            fused = self.fused_modconv
        w = ws.unbind(dim=1)
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            x = self.to_block_layout(x)
            x = self.conv1(x, w[0], noise_mode=noise_mode, fused_modconv=fused)
        else:
            x = self.to_block_layout(x.to(dtype))
            x = self.conv0(x, w[0], noise_mode=noise_mode, fused_modconv=fused)
            x = self.conv1(x, w[1], noise_mode=noise_mode, fused_modconv=fused)
        y = self.torgb(x, w[self.num_conv], fused_modconv=fused).to(torch.float32)
        img = y if img is None else ops.upsample2d(img, self.resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [N, num_ws, w_dim] -> img [N, img_channels, R, R] float32."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = cfg.w_dim, cfg.resolution, cfg.channels
        self.block_resolutions = cfg.block_resolutions
        clamp = cfg.conv_clamp
        self.blocks = nn.ModuleDict()
        for res in self.block_resolutions:
            self.blocks[f"b{res}"] = SynthesisBlock(
                cfg.channels_at(res // 2) if res > 4 else 0,
                cfg.channels_at(res),
                cfg.w_dim,
                res,
                cfg.channels,
                dtype=cfg.block_dtype(res),
                conv_clamp=clamp,  # every block, as NVlabs' mixed-precision configs do
            )
        # Consecutive blocks share a w: block k's ToRGB uses the same w as block k+1's first conv.
        self.num_ws = sum(b.num_conv for b in self.blocks.values()) + 1
        assert self.num_ws == cfg.num_ws

    def forward(self, ws: torch.Tensor, noise_mode: str = "random", force_fp32: bool = False) -> torch.Tensor:
        """ws [N, num_ws, w_dim] -> img [N, img_channels, R, R] float32.

        noise_mode: 'random' (fresh noise), 'const' (stored per-layer noise; deterministic) or
        'none'. force_fp32: run every block in float32 whatever the config's precision.
        """
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must have shape [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for block in self.blocks.values():
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            x, img = block(x, img, block_ws, noise_mode=noise_mode, force_fp32=force_fp32)
            w_idx += block.num_conv
        return img


class Generator(nn.Module):
    """z [N, z_dim] (+ c) -> img [N, channels, resolution, resolution] float32, roughly [-1, 1].

    Attributes z_dim, c_dim, w_dim, num_ws, img_resolution, img_channels describe the
    interface; `cfg` is the ModelConfig it was built from.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.z_dim, self.c_dim, self.w_dim = cfg.z_dim, cfg.c_dim, cfg.w_dim
        self.img_resolution, self.img_channels = cfg.resolution, cfg.channels
        # Submodules named as NVlabs names them, so G.mapping(...) and G.synthesis(...) are
        # the interface's calls and state-dict keys read mapping.* / synthesis.*.
        self.synthesis = SynthesisNetwork(cfg)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            cfg.z_dim,
            cfg.c_dim,
            cfg.w_dim,
            self.num_ws,
            num_layers=cfg.mapping_layers,
            lr_mult=cfg.mapping_lr_mult,
            w_avg_beta=cfg.w_avg_beta,
        )

    def set_fused_modconv(self, fused: Optional[bool]) -> "Generator":
        """How the synthesis convs run in eval mode: True, one grouped conv over per-sample
        modulated weights; False, the shared weights on modulated activations (the training
        path); None (the default), NVlabs' rule: grouped in float32 layers and for single
        images, shared weights in reduced-precision layers. Same result either way up to
        rounding; which is faster depends on batch, resolution and GPU (the benchmarks' 'unfused'
        generation variant measures it). Training mode always uses the shared weights."""
        if fused not in (None, True, False):
            raise ValueError(f"set_fused_modconv: expected True, False or None, got {fused!r}")
        for block in self.synthesis.blocks.values():
            block.fused_modconv = fused
        return self

    @property
    def w_avg(self) -> torch.Tensor:
        """The running average of w [w_dim] (the truncation centre)."""
        return self.mapping.w_avg

    def forward(
        self,
        z: torch.Tensor,
        c: Optional[torch.Tensor] = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: Optional[int] = None,
        noise_mode: str = "random",
        update_emas: bool = False,
        force_fp32: bool = False,
    ) -> torch.Tensor:
        """z [N, z_dim] (+ c) -> img [N, img_channels, R, R] float32.

        G.mapping(z, c, truncation_psi, truncation_cutoff, update_emas) -> ws [N, num_ws, w_dim]
        and G.synthesis(ws, noise_mode, force_fp32) -> img are the two halves.
        """
        ws = self.mapping(z, c, truncation_psi, truncation_cutoff, update_emas)
        return self.synthesis(ws, noise_mode=noise_mode, force_fp32=force_fp32)
