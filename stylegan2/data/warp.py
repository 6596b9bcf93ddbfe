"""Random smooth deformations and intensity changes that turn one brain volume into many slices.

Two stages, because sampling a 3-D volume costs about ten times more per pixel than sampling a
2-D image (measured on 2 CPU cores: ~130 vs ~11 ns per pixel with grid_sample):

1. `render_base`: oblique cuts through the volume ("base slices"): a random height, a tilt of
   the cutting plane (pitch and roll, as head positioning varies between scans) and a smooth
   through-plane displacement field, rendered on a field of view somewhat larger than the
   output; then a gamma (grey/white contrast) and a smooth multiplicative bias field (the
   receive-coil inhomogeneity of real scans).
2. `warp_images`: each base slice is seen by one or more output images, each through its own
   in-plane rotation, scale, aspect, shift and smooth B-spline displacement field (bending gyri
   and ventricles by a few mm), and its own global gain.

At low resolution every image has its own base slice; at high resolution images share them
(see `base_counts`), which keeps a 256 px build within seconds rather than minutes.

Angles are in radians, distances in mm or in half-fields of view ("hfov": 1 = half the side).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from .volume import FieldOfView


@dataclass(frozen=True)
class WarpStrength:
    """Spread of the random changes (standard deviations, clipped at 2.5 sd).

    Chosen by eye so the slices stay anatomically plausible: a few degrees of tilt and a few mm
    of local displacement lie within normal head-positioning and inter-subject variation.
    """

    pitch_deg: float = 5.0      # base: plane tilt about the left-right axis
    roll_deg: float = 3.0       # base: plane tilt about the front-back axis
    warp_z_mm: float = 2.5      # base: RMS through-plane B-spline displacement
    gamma: float = 1.3          # base: mean intensity gamma (>1 deepens the template's mild
    #                             grey/white contrast towards that of typical T1 slices)
    log_gamma: float = 0.15     # base: spread of log(gamma)
    bias: float = 0.1           # base: RMS log of the multiplicative bias field
    yaw_deg: float = 4.0        # image: in-plane rotation
    log_scale: float = 0.05     # image: overall size
    log_aspect: float = 0.04    # image: width vs height
    shift: float = 0.025        # image: centre shift (hfov)
    warp: float = 0.035         # image: RMS in-plane B-spline displacement (hfov)
    gain: float = 0.05          # image: global intensity gain
    warp_grid: int = 6          # control points per side of the displacement fields
    bias_grid: int = 4          # control points per side of the bias field


# Side of the base slices' field of view relative to the output's: room for the image-stage
# shifts, shrinks and displacements without cutting the brain at the border.
BASE_MARGIN = 1.2

# The cubic B-spline averages neighbouring control values, which shrinks the field's standard
# deviation: per axis the variance factor averaged over positions is the integral of the squared
# basis function, 151/315; the 2-D tensor-product field gets its square. Dividing the control
# values by this keeps the WarpStrength numbers equal to the field's RMS.
BSPLINE_STD = 151 / 315


def bspline_matrix(size: int, grid: int) -> torch.Tensor:
    """Cubic B-spline weights float32 [size, grid] mapping `grid` control values to `size`
    samples. The samples span the inner control intervals [1, grid - 2], where the weights sum
    to one, so the field is C2-smooth everywhere and does not fade at the image border."""
    t = 1.0 + (torch.arange(size, dtype=torch.float64) + 0.5) / size * (grid - 3)
    d = (t[:, None] - torch.arange(grid, dtype=torch.float64)[None, :]).abs()
    w = torch.where(d < 1, (4 - 6 * d**2 + 3 * d**3) / 6,
                    torch.where(d < 2, (2 - d) ** 3 / 6, torch.zeros_like(d)))
    return w.float()


def smooth_field(coarse: torch.Tensor, size: int) -> torch.Tensor:
    """Control values float [B, C, G, G] -> smooth field float32 [B, size, size, C], channels
    last (the layout grid_sample wants). Two small matrix products: far cheaper than bicubic
    interpolation at 256 px."""
    b, c, g, _ = coarse.shape
    w = bspline_matrix(size, g)
    cols = torch.matmul(coarse.float(), w.t())                  # [B, C, G, size]
    cols = cols.permute(0, 2, 3, 1).reshape(b, g, size * c)      # [B, G, size * C]
    return torch.matmul(w, cols).view(b, size, size, c)


def control_coords(grid: int) -> torch.Tensor:
    """Normalised image coordinates float64 [grid] of the control points of a `bspline_matrix`
    field (pixel centres of the image span [-1, 1]; the outer points lie beyond it).

    A cubic B-spline reproduces linear functions exactly, so an affine map evaluated at these
    points and added to the control values is applied by the same two matrix products as the
    smooth displacement: the whole sampling grid costs no per-pixel arithmetic.
    """
    return 2.0 * (torch.arange(grid, dtype=torch.float64) - 1.0) / (grid - 3) - 1.0


def _normal(n: int, std: float, g: torch.Generator) -> torch.Tensor:
    return (torch.randn(n, generator=g, dtype=torch.float64) * std).clamp(-2.5 * std, 2.5 * std)


def _field(n: int, c: int, grid: int, rms: float, g: torch.Generator) -> torch.Tensor:
    return torch.randn(n, c, grid, grid, generator=g, dtype=torch.float64) * (rms / BSPLINE_STD)


@dataclass
class Draws:
    """Per-item random draws; every field has the item count as its first dimension."""

    def take(self, idx: torch.Tensor | slice) -> "Draws":
        """The draws of items `idx` (int64 [K] or a slice)."""
        return type(self)(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


@dataclass
class BaseDraws(Draws):
    z: torch.Tensor         # [N] height of the cut's centre (voxel index along z)
    pitch: torch.Tensor     # [N] radians
    roll: torch.Tensor      # [N] radians
    warp_z: torch.Tensor    # [N, 1, G, G] through-plane displacement control values (mm)
    gamma: torch.Tensor     # [N]
    bias: torch.Tensor      # [N, 1, Gb, Gb] log-gain control values


@dataclass
class ImageDraws(Draws):
    yaw: torch.Tensor       # [N] radians
    scale_u: torch.Tensor   # [N] horizontal scale
    scale_v: torch.Tensor   # [N] vertical scale
    shift: torch.Tensor     # [N, 2] (hfov)
    warp: torch.Tensor      # [N, 2, G, G] in-plane displacement control values (hfov)
    gain: torch.Tensor      # [N]


def draw_base(n: int, z_lo: float, z_hi: float, s: WarpStrength, g: torch.Generator) -> BaseDraws:
    """Draws `n` base cuts. Heights are stratified (one per equal sub-interval of [z_lo, z_hi])
    and shuffled: every band is covered even for tiny counts, and neighbours differ."""
    strata = (torch.arange(n, dtype=torch.float64) + torch.rand(n, generator=g, dtype=torch.float64)) / n
    z = z_lo + strata[torch.randperm(n, generator=g)] * (z_hi - z_lo)
    deg = math.pi / 180.0
    return BaseDraws(
        z=z,
        pitch=_normal(n, s.pitch_deg * deg, g),
        roll=_normal(n, s.roll_deg * deg, g),
        warp_z=_field(n, 1, s.warp_grid, s.warp_z_mm, g),
        gamma=s.gamma * torch.exp(_normal(n, s.log_gamma, g)),
        bias=_field(n, 1, s.bias_grid, s.bias, g),
    )


def draw_images(n: int, s: WarpStrength, g: torch.Generator) -> ImageDraws:
    """Draws the in-plane warp and gain of `n` output images."""
    log_scale, log_aspect = _normal(n, s.log_scale, g), _normal(n, s.log_aspect, g)
    return ImageDraws(
        yaw=_normal(n, s.yaw_deg * math.pi / 180.0, g),
        scale_u=torch.exp(log_scale + log_aspect),
        scale_v=torch.exp(log_scale - log_aspect),
        shift=torch.stack([_normal(n, s.shift, g), _normal(n, s.shift, g)], dim=1),
        warp=_field(n, 2, s.warp_grid, s.warp, g),
        gain=1.0 + _normal(n, s.gain, g),
    )


def render_base(vol: torch.Tensor, d: BaseDraws, fov: FieldOfView, zooms: tuple[float, float, float],
                size: int, pool: int = 1) -> torch.Tensor:
    """Oblique cuts through a volume: returns float32 [B, 1, size, size] covering BASE_MARGIN
    times the side of `fov`, anterior up.

    vol: float32 [1, 1, Z, Y, X], values in [0, 1], RAS+; it is the original volume (voxel size
    `zooms` mm, the grid `fov` and `d.z` refer to) box-averaged by `pool` (see shrink_volume).
    """
    b, g = d.z.shape[0], d.warp_z.shape[-1]
    nz, ny, nx = vol.shape[2:]
    k = control_coords(g)
    half = fov.side_mm * BASE_MARGIN / 2.0
    col = (k * half).view(1, 1, g)    # mm to the right (+x)
    row = (-k * half).view(1, g, 1)   # mm up the image (+y, anterior)
    dz = d.warp_z[:, 0]               # [B, G, G] mm along the plane normal
    per = lambda t: t.view(b, 1, 1)   # noqa: E731 - per-image scalar, broadcast over control points
    cr, sr = torch.cos(per(d.roll)), torch.sin(per(d.roll))
    cp, sp = torch.cos(per(d.pitch)), torch.sin(per(d.pitch))
    # Plane point (col, row, dz) tilted by roll (about y) then pitch (about x), in mm.
    x = cr * col + sr * dz
    z1 = -sr * col + cr * dz
    y = cp * row - sp * z1
    z = sp * row + cp * z1
    # Original voxel index i is pooled index (i - (pool - 1) / 2) / pool; grid_sample wants [-1, 1].
    off = (pool - 1) / 2.0

    def norm(idx: torch.Tensor, n: int) -> torch.Tensor:
        return (idx - off) * (2.0 / (pool * (n - 1))) - 1

    ctrl = torch.stack([norm(fov.center_x + x / zooms[0], nx), norm(fov.center_y + y / zooms[1], ny),
                        norm(per(d.z) + z / zooms[2], nz)], dim=1)  # [B, 3, G, G]
    grid = smooth_field(ctrl, size)  # [B, size, size, 3]
    # The B cuts become the depth axis of one 3-D output: one grid_sample call over one volume.
    out = F.grid_sample(vol, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]
    bias = smooth_field(d.bias, size)[..., 0].exp_()
    out = out.clamp_(0, 1).pow_(d.gamma.float().view(b, 1, 1)).mul_(bias).clamp_(0, 1)
    return out.unsqueeze(1)


def warp_images(base: torch.Tensor, d: ImageDraws, size: int) -> torch.Tensor:
    """Warps base slices float32 [B, 1, S, S] (one per image) into uint8 [B, size, size]."""
    b, g = base.shape[0], d.warp.shape[-1]
    k = control_coords(g)
    u, v = k.view(1, 1, g), k.view(1, g, 1)
    per = lambda t: t.view(b, 1, 1)  # noqa: E731
    cos, sin = torch.cos(per(d.yaw)), torch.sin(per(d.yaw))
    # Output coordinates -> base coordinates; the base sees BASE_MARGIN times the field of view.
    bu = per(d.scale_u) * (cos * u - sin * v) + per(d.shift[:, 0]) + d.warp[:, 0]
    bv = per(d.scale_v) * (sin * u + cos * v) + per(d.shift[:, 1]) + d.warp[:, 1]
    grid = smooth_field(torch.stack([bu, bv], dim=1) / BASE_MARGIN, size)  # [B, size, size, 2]
    img = F.grid_sample(base, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
    # Bilinear weights are non-negative, so img >= 0 already; +0.5 then truncation rounds.
    img = img.mul_((255.0 * d.gain).float().view(b, 1, 1)).add_(0.5).clamp_(max=255.0)
    return img.to(torch.uint8)


def antialias_sigmas(pixel_mm: float, zooms: tuple[float, float, float]) -> tuple[float, float, float]:
    """Gaussian sigmas (voxels, per axis) that blur a volume of voxel size `zooms` (mm) to the
    footprint of a `pixel_mm` pixel: without them, sampling a 1 mm volume at 6 mm pixels aliases
    the cortex into speckle. Zero where voxels are already as large as pixels."""
    sigmas = [0.5 * math.sqrt(max((pixel_mm / zm) ** 2 - 1.0, 0.0)) for zm in zooms]
    return sigmas[0], sigmas[1], sigmas[2]


def gaussian_blur3d(vol: torch.Tensor, sigmas: tuple[float, float, float]) -> torch.Tensor:
    """Separable Gaussian blur of float32 [X, Y, Z]; sigmas in voxels per axis (~0 = none).

    Each axis is a sum of shifted, weighted copies (in-place adds): the kernels here are short
    (a few taps), and on one CPU thread this is ~10x faster than conv1d over a single channel.
    Outside the volume counts as zero, which is right for brain volumes (background is zero).
    """
    for axis, sigma in enumerate(sigmas):
        if sigma <= 0.05:
            continue
        radius = max(1, int(math.ceil(3.0 * sigma)))
        taps = torch.exp(-0.5 * (torch.arange(radius + 1, dtype=torch.float64) / sigma) ** 2)
        taps = taps / (2 * taps.sum() - taps[0])
        n = vol.shape[axis]
        out = vol * float(taps[0])
        for d in range(1, min(radius, n - 1) + 1):
            w = float(taps[d])
            out.narrow(axis, d, n - d).add_(vol.narrow(axis, 0, n - d), alpha=w)
            out.narrow(axis, 0, n - d).add_(vol.narrow(axis, d, n - d), alpha=w)
        vol = out
    return vol


def shrink_volume(vol: torch.Tensor, zooms: tuple[float, float, float], pixel_mm: float
                  ) -> tuple[torch.Tensor, tuple[float, float, float], int]:
    """Box-averages float32 [X, Y, Z] by the largest integer factor that keeps voxels no larger
    than 2/3 of a pixel: low-resolution sets then blur and sample a small volume (much faster).
    Returns the volume, its voxel size and the factor."""
    f = int(pixel_mm / 1.5 / max(zooms))
    if f < 2:
        return vol, zooms, 1
    out = F.avg_pool3d(vol[None, None], kernel_size=f, stride=f, ceil_mode=True)[0, 0]
    return out.contiguous(), tuple(z * f for z in zooms), f  # type: ignore[return-value]


def base_counts(count: int, size: int, budget_pixels: int) -> int:
    """How many base slices to render for `count` images at base side `size`: one per image
    when the 3-D sampling fits in `budget_pixels`, else as many as fit (images share them)."""
    return int(np.clip(budget_pixels // (size * size), 1, count))
