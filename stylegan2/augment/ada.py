"""The StyleGAN2-ADA augmentation pipeline `bgc` (Karras et al. 2020, "Training Generative
Adversarial Networks with Limited Data", appendix B), for any number of channels.

Per image, each transform is applied with probability p (times its strength), in this order:

    pixel blitting   x-flip (then a fair coin: flip or not), quarter turns (0..3, uniform),
                     integer translation (uniform in +-xint_max of the size, rounded to pixels)
    general geometry isotropic scaling 2^N(0, scale_std), rotation U(-pi, pi) * rotate_max,
                     anisotropic scaling 2^N(0, aniso_std) in x and its inverse in y, a second
                     rotation, fractional translation N(0, xfrac_std) of the size. The two
                     rotations each run with probability 1 - sqrt(1 - p), so that some rotation
                     happens with probability p.
    colour           brightness + N(0, brightness_std), contrast x 2^N(0, contrast_std), and on
                     3-channel images only: luma flip, hue rotation about the luma axis
                     U(-pi, pi) * hue_max, saturation x 2^N(0, saturation_std).

The geometric transforms of one image are composed into two matrices: the pixel-blitting part,
applied exactly by warp.blit(), and the general part, applied by warp.affine_warp() (2x
upsampling with the symlet-6 filter through stylegan2_ops.upfirdn2d, bilinear resampling, filter
and 2x downsampling; reflection outside the image). Splitting them changes nothing in exact
arithmetic (the composed matrix is their product), but keeps flips, quarter turns and integer
shifts free of filter error. The colour transforms form one 4x4 matrix per image (for other than
3 channels, its gain and offset on the luma axis: brightness and contrast).

An image that no transform touched is returned with its input values bit for bit, and with
p == 0 (a number) the input tensor itself is returned: the augmentation cannot leak when off.
Every step is differentiable any number of times with respect to the images (R1 is taken
through the augmentation); nothing reads a value back from the device.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

from . import matrices as M
from .warp import SYM6, affine_warp, blit, filter_delay, make_filter

GEOMETRIC = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOUR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
NEEDS_RGB = ("lumaflip", "hue", "saturation")
# The paper's three groups, named by the letters of its pipeline names ('bgc' = all three):
# b = pixel blitting, g = general geometry, c = colour.
GROUPS = {"b": ("xflip", "rotate90", "xint"), "g": ("scale", "rotate", "aniso", "xfrac"), "c": COLOUR}
PIPES = ("bgc", "bg", "bc", "gc", "b", "g", "c")
# Slots of sample()'s random numbers, one row each: a transform's parameters and its gate
# ('NAME?', the uniform that decides whether it runs). The two rotations have one each.
_UNIFORM = ("xflip", "xflip?", "rotate90", "rotate90?", "xint_x", "xint_y", "xint?", "scale?", "rotate_a",
            "rotate_a?", "aniso?", "rotate_b", "rotate_b?", "xfrac?", "brightness?", "contrast?", "lumaflip",
            "lumaflip?", "hue", "hue?", "saturation?")
_NORMAL = ("scale", "aniso", "xfrac_x", "xfrac_y", "brightness", "contrast", "saturation")


def pipe_strengths(pipe: str) -> dict[str, float]:
    """The strengths that turn off every transform outside the groups `pipe` names (one of
    PIPES): e.g. 'bg' -> {'brightness': 0, ...}. Pass them to AdaPipeline. The groups left on
    keep the paper's strengths, and their random numbers do not change (see sample())."""
    if pipe not in PIPES:
        raise ValueError(f"augmentation pipeline must be one of {', '.join(PIPES)}, got {pipe!r}")
    return {name: 0.0 for group, names in GROUPS.items() if group not in pipe for name in names}

Probability = Union[float, torch.Tensor]


class AdaPipeline:
    """ADA's `bgc` pipeline. Call it as pipe(images, p).

    Args:
        num_channels: channels of the images it will see; the colour transforms that need RGB
            (luma flip, hue, saturation) are skipped for any other count, and `skipped` says so.
        xflip ... saturation: strength of each transform (0 disables it; its probability is
            strength * p), defaults as the paper's `bgc`.
        xint_max ... saturation_std: ranges of the random parameters (the paper's defaults).
        taps: the resampling filter's taps (symlet 6).
        impl: passed to upfirdn2d ('auto', 'ref' or 'cuda').

    Attributes:
        enabled: names of the transforms that will run, in order.
        skipped: {name: why} of the ones that will not although their strength is non-zero.
    """

    def __init__(
        self,
        num_channels: int = 1,
        *,
        xflip: float = 1, rotate90: float = 1, xint: float = 1,
        scale: float = 1, rotate: float = 1, aniso: float = 1, xfrac: float = 1,
        brightness: float = 1, contrast: float = 1, lumaflip: float = 1, hue: float = 1, saturation: float = 1,
        xint_max: float = 0.125, scale_std: float = 0.2, rotate_max: float = 1, aniso_std: float = 0.2,
        xfrac_std: float = 0.125, brightness_std: float = 0.2, contrast_std: float = 0.5,
        hue_max: float = 1, saturation_std: float = 1,
        taps: tuple[float, ...] = SYM6,
        impl: str = "auto",
    ) -> None:
        if not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"num_channels must be an int >= 1, got {num_channels!r}")
        self.num_channels = num_channels
        strengths = dict(xflip=xflip, rotate90=rotate90, xint=xint, scale=scale, rotate=rotate, aniso=aniso,
                         xfrac=xfrac, brightness=brightness, contrast=contrast, lumaflip=lumaflip, hue=hue,
                         saturation=saturation)
        for name, v in strengths.items():
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"{name} strength must be a number >= 0, got {v!r}")
        self.skipped: dict[str, str] = {}
        if num_channels != 3:
            for name in NEEDS_RGB:
                if strengths[name] > 0:
                    self.skipped[name] = f"needs 3 channels, the images have {num_channels}"
                    strengths[name] = 0
        self.strength = strengths
        self.enabled = tuple(k for k in GEOMETRIC + COLOUR if strengths[k] > 0)
        self.xint_max, self.scale_std, self.rotate_max = xint_max, scale_std, rotate_max
        self.aniso_std, self.xfrac_std = aniso_std, xfrac_std
        self.brightness_std, self.contrast_std = brightness_std, contrast_std
        self.hue_max, self.saturation_std = hue_max, saturation_std
        self.taps, self.impl = tuple(float(v) for v in taps), impl
        self._delay = filter_delay(self.taps)  # from host numbers: no device read per call
        self._filters: dict[torch.device, torch.Tensor] = {}

    def describe(self) -> str:
        """One line for logs: what runs and what is skipped, and why."""
        groups = "".join(g for g, names in GROUPS.items() if any(self.strength[k] > 0 for k in names))
        text = f"ada {groups or 'pipeline'}: " + (", ".join(self.enabled) or "nothing")
        if self.skipped:
            reasons = sorted(set(self.skipped.values()))
            text += f" (skipped: {', '.join(self.skipped)}: {'; '.join(reasons)})"
        return text

    def _filter(self, device: torch.device) -> torch.Tensor:
        if device not in self._filters:
            self._filters[device] = make_filter(self.taps, device=device)
        return self._filters[device]

    # --- random parameters -----------------------------------------------------------------

    def sample(
        self, n: int, height: int, width: int, p: Probability, device: torch.device,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draws the transforms of n images.

        Returns:
            blit_inv: [n, 3, 3] float64 sampling matrices of the pixel-blitting part.
            geom_inv: [n, 3, 3] float64 sampling matrices of the general part.
            colour: [n, 4, 4] float64 colour matrices acting on (r, g, b, 1).
        """
        f64 = torch.float64
        s = self.strength
        # Every random number of every transform, drawn in two calls whether the transform is
        # on or not: turning one off (a strength of 0, --aug-pipe) leaves the others' numbers as
        # they were for the same generator, and the pipeline costs two RNG launches, not 25.
        u = dict(zip(_UNIFORM, torch.rand([len(_UNIFORM), n], device=device, dtype=f64,
                                          generator=generator).unbind(0)))
        g = dict(zip(_NORMAL, torch.randn([len(_NORMAL), n], device=device, dtype=f64,
                                          generator=generator).unbind(0)))

        def gate(name: str, strength: float, prob: Probability | None = None) -> torch.Tensor:
            return u[name + "?"] < (strength * p if prob is None else prob)

        one, zero = torch.ones([n], device=device, dtype=f64), torch.zeros([n], device=device, dtype=f64)
        blit_inv = M.identity(n, device, f64)
        if s["xflip"] > 0:
            flip = torch.where(gate("xflip", s["xflip"]), torch.floor(u["xflip"] * 2), zero)
            blit_inv = blit_inv @ M.scale_inv(1 - 2 * flip, one)
        if s["rotate90"] > 0:
            k = torch.where(gate("rotate90", s["rotate90"]), torch.floor(u["rotate90"] * 4), zero)
            blit_inv = blit_inv @ M.quarter_turns_inv(k).to(f64)
        if s["xint"] > 0:
            tx, ty = (u["xint_x"] * 2 - 1) * self.xint_max, (u["xint_y"] * 2 - 1) * self.xint_max
            on = gate("xint", s["xint"])
            tx, ty = torch.where(on, torch.round(tx * width), zero), torch.where(on, torch.round(ty * height), zero)
            blit_inv = blit_inv @ M.translate_inv(tx, ty)

        geom_inv = M.identity(n, device, f64)
        if s["scale"] > 0:
            sc = torch.where(gate("scale", s["scale"]), torch.exp2(g["scale"] * self.scale_std), one)
            geom_inv = geom_inv @ M.scale_inv(sc, sc)
        # A number becomes a fill on the device (as_tensor would copy it over from the host).
        p_dev = p.to(device=device, dtype=f64) if isinstance(p, torch.Tensor) \
            else torch.full([], float(p), dtype=f64, device=device)
        p_rot = 1 - torch.sqrt(torch.clamp(1 - s["rotate"] * p_dev, 0, 1))
        if s["rotate"] > 0:
            theta = (u["rotate_a"] * 2 - 1) * math.pi * self.rotate_max
            theta = torch.where(gate("rotate_a", s["rotate"], p_rot), theta, zero)
            geom_inv = geom_inv @ M.rotate_inv(torch.cos(theta), torch.sin(theta))
        if s["aniso"] > 0:
            sc = torch.where(gate("aniso", s["aniso"]), torch.exp2(g["aniso"] * self.aniso_std), one)
            geom_inv = geom_inv @ M.scale_inv(sc, 1 / sc)
        if s["rotate"] > 0:
            theta = (u["rotate_b"] * 2 - 1) * math.pi * self.rotate_max
            theta = torch.where(gate("rotate_b", s["rotate"], p_rot), theta, zero)
            geom_inv = geom_inv @ M.rotate_inv(torch.cos(theta), torch.sin(theta))
        if s["xfrac"] > 0:
            tx, ty = g["xfrac_x"] * self.xfrac_std, g["xfrac_y"] * self.xfrac_std
            on = gate("xfrac", s["xfrac"])
            geom_inv = geom_inv @ M.translate_inv(torch.where(on, tx * width, zero), torch.where(on, ty * height, zero))

        colour = torch.eye(4, device=device, dtype=f64).expand(n, 4, 4).clone()
        luma = torch.cat([torch.ones(3, device=device, dtype=f64), torch.zeros(1, device=device, dtype=f64)]) / math.sqrt(3)
        luma_outer = torch.outer(luma, luma)  # projection onto the luma axis (in rgb)
        eye4 = torch.eye(4, device=device, dtype=f64)
        if s["brightness"] > 0:
            b = torch.where(gate("brightness", s["brightness"]), g["brightness"] * self.brightness_std, zero)
            shift = eye4.expand(n, 4, 4).clone()
            shift[:, :3, 3] = b[:, None]
            colour = shift @ colour
        if s["contrast"] > 0:
            c = torch.where(gate("contrast", s["contrast"]), torch.exp2(g["contrast"] * self.contrast_std), one)
            gain = torch.diag_embed(torch.stack([c, c, c, one], dim=1))
            colour = gain @ colour
        if s["lumaflip"] > 0:
            i = torch.where(gate("lumaflip", s["lumaflip"]), torch.floor(u["lumaflip"] * 2), zero)
            colour = (eye4 - 2 * luma_outer * i[:, None, None]) @ colour  # Householder about luma
        if s["hue"] > 0:
            theta = torch.where(gate("hue", s["hue"]), (u["hue"] * 2 - 1) * math.pi * self.hue_max, zero)
            colour = _rotate_about_axis(luma[:3], theta) @ colour
        if s["saturation"] > 0:
            sat = torch.where(gate("saturation", s["saturation"]), torch.exp2(g["saturation"] * self.saturation_std), one)
            colour = (luma_outer + (eye4 - luma_outer) * sat[:, None, None]) @ colour
        return blit_inv, geom_inv, colour

    # --- application -----------------------------------------------------------------------

    def __call__(
        self, x: torch.Tensor, p: Probability, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Augments a batch.

        Args:
            x: [N, C, H, W] images in [-1, 1] (C = num_channels), any float dtype (float16 and
                bfloat16 are augmented in float32), contiguous or channels_last.
            p: the augmentation probability, a number or a 0-d tensor on x's device (the ADA
                controller's, read there without a sync).
            generator: the random source (on x's device); None uses the global one.
        Returns:
            [N, C, H, W] in x's dtype and memory format; x itself when p is the number 0.
        """
        if x.ndim != 4 or x.shape[1] != self.num_channels:
            raise ValueError(f"AdaPipeline: expected [N, {self.num_channels}, H, W] images, got {list(x.shape)}")
        if not isinstance(p, torch.Tensor):
            if not 0 <= p <= 1:
                raise ValueError(f"AdaPipeline: p must be in [0, 1], got {p!r}")
            if p == 0:
                return x
        n, c, h, w = x.shape
        work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        blit_inv, geom_inv, colour = self.sample(n, h, w, p, x.device, generator)
        eye3 = torch.eye(3, device=x.device, dtype=torch.float64)

        # Exact part first; a gather, so untouched images keep their values.
        if any(self.strength[k] > 0 for k in ("xflip", "rotate90", "xint")):
            work = blit(work, blit_inv)
        if any(self.strength[k] > 0 for k in ("scale", "rotate", "aniso", "xfrac")):
            moved = (geom_inv != eye3).flatten(1).any(dim=1)
            warped = affine_warp(work, geom_inv, self._filter(x.device), delay=self._delay, impl=self.impl)
            work = torch.where(moved[:, None, None, None], warped, work)
        if any(self.strength[k] > 0 for k in COLOUR):
            work = _apply_colour(work, colour)
        return work.to(x.dtype)


def _rotate_about_axis(v: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """[n, 4, 4] rotations by theta [n] about the unit 3-vector v (Rodrigues), acting on rgb."""
    n = theta.shape[0]
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    cross = torch.zeros(3, 3, dtype=v.dtype, device=v.device)
    cross[0, 1], cross[0, 2], cross[1, 0] = -v[2], v[1], v[2]
    cross[1, 2], cross[2, 0], cross[2, 1] = -v[0], -v[1], v[0]
    rot3 = cos * torch.eye(3, dtype=v.dtype, device=v.device) + sin * cross + (1 - cos) * torch.outer(v, v)
    out = torch.eye(4, dtype=v.dtype, device=v.device).expand(n, 4, 4).clone()
    out[:, :3, :3] = rot3
    return out


def _apply_colour(x: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Applies [N, 4, 4] colour matrices to [N, C, H, W] images; images whose matrix is the
    identity keep their values bit for bit (x * 1 + 0 would turn -0.0 into +0.0)."""
    c = x.shape[1]
    eye4 = torch.eye(4, device=x.device, dtype=colour.dtype)
    touched = (colour != eye4).flatten(1).any(dim=1)[:, None, None, None]
    m = colour.to(x.dtype)
    if c == 3:
        out = torch.einsum("nij,njhw->nihw", m[:, :3, :3], x) + m[:, :3, 3, None, None]
    else:
        # Without colour, the matrix's action on a grey value: mean gain and offset over rgb
        # (brightness and contrast act the same on every channel, so this is exact for them).
        gain = m[:, :3, :3].sum(dim=2).mean(dim=1)[:, None, None, None]
        offset = m[:, :3, 3].mean(dim=1)[:, None, None, None]
        out = x * gain + offset
    return torch.where(touched, out, x).contiguous(memory_format=_fmt(x))


def _fmt(x: torch.Tensor) -> torch.memory_format:
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
