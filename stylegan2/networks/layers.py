"""The layers both networks are built from, all with an equalized learning rate.

Equalized learning rate (Karras et al. 2018): every weight is stored as N(0, 1) / lr_mult and
multiplied at run time by lr_mult / sqrt(fan_in); biases are stored / lr_mult and multiplied by
lr_mult. Adam then moves every weight at the same relative speed, whatever its fan-in.

Where the convolutions go:
- Generator layers (SynthesisLayer, ToRGB) call `stylegan2_ops.modulated_conv2d` with the
  keyword-only extras (bias, act, gain, clamp), so the CUDA path can fuse demodulation, noise,
  bias, activation, gain and clamp into one epilogue.
- Discriminator layers (Conv2dLayer) have no styles. Routing them through modulated_conv2d
  with styles of ones would add a per-sample weight modulation and a grouped conv for nothing,
  so they use `F.conv2d` on the equalized weight, resample with `stylegan2_ops.upfirdn2d`
  exactly as NVlabs' conv2d_resample does for down=2 (blur, then strided conv; a 1x1 conv
  downsamples first), then apply `stylegan2_ops.bias_act`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import stylegan2_ops as ops

RESAMPLE_FILTER = (1, 3, 3, 1)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2)) along `dim` ([batch_size, features] -> same shape)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def _scaled_clamp(clamp: Optional[float], gain: float) -> Optional[float]:
    return clamp * gain if clamp is not None else None


class FullyConnected(nn.Module):
    """y = act(x @ (W * lr_mult / sqrt(in))^T + b * lr_mult), via bias_act.

    Shapes: x [batch_size, in_features] -> [batch_size, out_features].
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        act: str = "linear",
        lr_mult: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.act = in_features, out_features, act
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mult)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init) / lr_mult)) if bias else None
        self.weight_gain = lr_mult / math.sqrt(in_features)
        self.bias_gain = lr_mult

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None
        if self.bias is not None:
            b = self.bias.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        return ops.bias_act(x.matmul(w.t()), b, act=self.act)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, act={self.act}"


class Conv2dLayer(nn.Module):
    """Plain equalized-lr convolution with optional 2x downsampling (the discriminator's conv).

    Shapes: x [batch_size, in_channels, height, width] ->
            [batch_size, out_channels, height // down, width // down].
    The output is bias_act(conv(x), bias, act, gain=act_gain * gain, clamp=conv_clamp * gain),
    computed in x's dtype (the weight is cast to it, as NVlabs does).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool = True,
        act: str = "linear",
        down: int = 1,
        conv_clamp: Optional[float] = None,
    ) -> None:
        super().__init__()
        if down not in (1, 2):
            raise ValueError(f"Conv2dLayer: down must be 1 or 2, got {down}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.act, self.down, self.conv_clamp = act, down, conv_clamp
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.act_gain = ops.ACTIVATIONS[act].def_gain
        # A constant, rebuilt at construction, so it stays out of checkpoints.
        self.register_buffer("resample_filter", ops.setup_filter(list(RESAMPLE_FILTER)), persistent=False)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        pad = self.kernel_size // 2
        if self.down == 1:
            x = F.conv2d(x, w, padding=pad)
        elif self.kernel_size == 1:
            # Downsample first: the 1x1 conv then runs on a quarter of the pixels.
            x = ops.downsample2d(x, self.resample_filter, down=2)
            x = F.conv2d(x, w)
        else:
            # Blur with the padding that makes the strided conv land on the downsampled grid.
            fw = self.resample_filter.shape[-1]
            p0 = pad + (fw - self.down + 1) // 2
            p1 = pad + (fw - self.down) // 2
            x = ops.upfirdn2d(x, self.resample_filter, padding=[p0, p1, p0, p1])
            x = F.conv2d(x, w, stride=self.down)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return ops.bias_act(
            x, b, act=self.act, gain=self.act_gain * gain, clamp=_scaled_clamp(self.conv_clamp, gain)
        )

    def extra_repr(self) -> str:
        return (
            f"in={self.in_channels}, out={self.out_channels}, k={self.kernel_size}, "
            f"act={self.act}, down={self.down}"
        )


class SynthesisLayer(nn.Module):
    """Modulated (and demodulated) 3x3 conv + per-pixel noise + bias + lrelu.

    Shapes: x [batch_size, in_channels, res // up, res // up], w [batch_size, w_dim] ->
            [batch_size, out_channels, res, res].
    The weight is not scaled by 1/sqrt(fan_in): demodulation normalizes it anyway (and
    modulated_conv2d pre-normalizes it itself for half precision).
    Noise: 'random' draws N(0, 1) per call, 'const' uses the stored `noise_const` buffer,
    'none' adds nothing; either is scaled by the learned scalar `noise_strength` (init 0).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        *,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        act: str = "lrelu",
        conv_clamp: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.resolution = in_channels, out_channels, resolution
        self.up, self.use_noise, self.act, self.conv_clamp = up, use_noise, act, conv_clamp
        self.padding = kernel_size // 2
        self.act_gain = ops.ACTIVATIONS[act].def_gain
        # Styles start at 1 (bias_init=1): the layer begins as a plain demodulated conv.
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("resample_filter", ops.setup_filter(list(RESAMPLE_FILTER)), persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool = True,
        gain: float = 1.0,
    ) -> torch.Tensor:
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn(
                [x.shape[0], 1, self.resolution, self.resolution], device=x.device
            ) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = (self.noise_const * self.noise_strength).reshape(1, 1, self.resolution, self.resolution)
        if noise is not None:
            noise = noise.to(x.dtype)
        return ops.modulated_conv2d(
            x,
            self.weight,
            styles,
            noise=noise,
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
            flip_weight=(self.up == 1),  # transposed convs (up=2) need the flipped kernel
            fused_modconv=fused_modconv,
            bias=self.bias.to(x.dtype),
            act=self.act,
            gain=self.act_gain * gain,
            clamp=_scaled_clamp(self.conv_clamp, gain),
        )

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, out={self.out_channels}, res={self.resolution}, up={self.up}"


class ToRGB(nn.Module):
    """1x1 modulated conv without demodulation + bias (linear): features to image channels.

    Shapes: x [batch_size, in_channels, res, res], w [batch_size, w_dim] ->
            [batch_size, img_channels, res, res] (in x's dtype).
    """

    def __init__(
        self, in_channels: int, img_channels: int, w_dim: int, *, conv_clamp: Optional[float] = None
    ) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(img_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        # No demodulation, so equalized lr scaling is applied to the styles instead.
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        return ops.modulated_conv2d(
            x,
            self.weight,
            styles,
            demodulate=False,
            fused_modconv=fused_modconv,
            bias=self.bias.to(x.dtype),
            clamp=self.conv_clamp,
        )


def mbstd_group_size(batch_size: int, group: int) -> int:
    """The largest divisor of batch_size that is at most `group` (NVlabs takes min(group, N)
    and fails when that does not divide N; this keeps odd final batches working)."""
    g = min(group, batch_size)
    while batch_size % g:
        g -= 1
    return g


class MinibatchStd(nn.Module):
    """Appends the minibatch standard deviation as extra feature maps.

    Samples n and n + k * (N / G) form a group (G = group size). Within each group, the std of
    every feature over the group is averaged over features, height and width, separately for
    each of `num_channels` channel slices, and broadcast as new maps.
    Shapes: x [batch_size, C, H, W] -> [batch_size, C + num_channels, H, W].
    """

    def __init__(self, group_size: int, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = mbstd_group_size(n, self.group_size)
        f = self.num_channels
        y = x.reshape(g, n // g, f, c // f, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)  # variance over the group
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])  # [n // g, f]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"
