"""Transfer converted networks to other image channels and resolutions.

Colour: the skip generator's image is a sum of ToRGB outputs (upsampled, linear), so combining
every ToRGB's output rows with luminance weights makes the grayscale generator produce exactly
the luminance of the colour one (while no conv clamp bites). The discriminator's only image
input is the top block's FromRGB; summing its colour columns makes the grayscale D see a gray
image as the colour D saw that gray replicated into R, G and B. Gray to colour does the
reverse (rows copied, columns shared out by thirds).

Resolution: blocks are named by resolution, so every tensor whose name and shape exist at the
new resolution is kept; the rest starts fresh (seeded) and is listed in the report.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional

import torch

from stylegan2.networks import ModelConfig

from .common import ConversionReport, Converted, fresh_state_dicts

# ITU-R BT.601 luma, what PIL's convert("L") (and so this project's grayscale loading) uses.
LUMINANCE = (0.299, 0.587, 0.114)


def _recolour(sd: dict[str, torch.Tensor], old: int, new: int) -> dict[str, torch.Tensor]:
    out = dict(sd)
    lum = torch.tensor(LUMINANCE)
    for k, v in sd.items():
        if re.search(r"torgb\.(weight|bias)$", k):  # rows are image channels
            if old == 3 and new == 1:
                out[k] = (v * lum.reshape([3] + [1] * (v.ndim - 1))).sum(dim=0, keepdim=True)
            elif old == 1 and new == 3:
                out[k] = v.repeat([3] + [1] * (v.ndim - 1))
        elif re.search(r"fromrgb\.weight$", k):  # columns are image channels
            # The stored weight is scaled at run time by 1/sqrt(image channels) (equalized lr),
            # so the effective columns are summed (or shared out) and then stored back.
            if old == 3 and new == 1:
                out[k] = v.sum(dim=1, keepdim=True) / math.sqrt(3)
            elif old == 1 and new == 3:
                out[k] = v.repeat(1, 3, 1, 1) / math.sqrt(3)
    return out


def _carry(label: str, old: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor],
           report: ConversionReport) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in fresh.items()}
    for k, v in old.items():
        if k in fresh and tuple(fresh[k].shape) == tuple(v.shape):
            out[k] = v.detach().clone().to(fresh[k].dtype)
        else:
            report.notes.append(f"{label}.{k} {list(v.shape)} is not used at the new size (dropped)")
    for k in fresh:
        if k not in old or tuple(old[k].shape) != tuple(fresh[k].shape):
            report.fresh.append(f"{label}.{k}")
    return out


def adapt_channels(converted: Converted, channels: Optional[int] = None, resolution: Optional[int] = None,
                   seed: int = 0) -> Converted:
    """Converted networks for `channels` (1 or 3) and/or `resolution` (a power of two).

    RGB -> grayscale: ToRGB rows combined with LUMINANCE weights, FromRGB columns summed
    (grayscale -> RGB: rows copied, columns divided by 3). Resolution: blocks that exist at both
    sizes are reused, new ones initialised fresh (seeded by `seed`); the returned report lists
    every fresh tensor and every dropped one. The input is not modified.
    """
    cfg = converted.model_config
    new_ch = cfg.channels if channels is None else int(channels)
    new_res = cfg.resolution if resolution is None else int(resolution)
    report = dataclasses.replace(converted.report, notes=list(converted.report.notes), fresh=list(converted.report.fresh),
                                 unmapped_source=list(converted.report.unmapped_source),
                                 unmapped_target=list(converted.report.unmapped_target))
    if new_ch == cfg.channels and new_res == cfg.resolution:
        return dataclasses.replace(converted, report=report)
    fp16 = cfg.num_fp16_res
    new_cfg = dataclasses.replace(cfg, channels=new_ch, resolution=new_res)
    new_cfg = ModelConfig.from_dict(new_cfg.to_dict())  # validates the new combination
    if new_ch != cfg.channels:
        if new_ch == 1:
            report.notes.append(f"RGB -> grayscale: every ToRGB's rows combined with luminance weights "
                                f"{LUMINANCE}, the discriminator's FromRGB columns summed")
        else:
            report.notes.append("grayscale -> RGB: every ToRGB row copied to R, G and B, the "
                                "discriminator's FromRGB column shared out by thirds")
    if new_res != cfg.resolution:
        report.notes.append(f"resolution {cfg.resolution} -> {new_res}: blocks at both sizes reused, "
                            f"the others initialised fresh (seed {seed}); {fp16} highest resolutions in reduced precision")
    g_fresh, d_fresh = fresh_state_dicts(new_cfg, seed)
    sds = {}  # G and G_ema take the same fresh values where both are new, as a new run's would
    for label, sd, fresh in (("G", converted.G, g_fresh), ("D", converted.D, d_fresh),
                             ("G_ema", converted.G_ema, g_fresh)):
        sds[label] = _carry(label, _recolour(sd, cfg.channels, new_ch), fresh, report)
    if new_res > cfg.resolution:
        # New blocks' ToRGBs start at zero: the skip generator's image is then exactly the old
        # one upsampled, and fine-tuning grows detail from there (their weights still get
        # gradients, as the features they read are not zero).
        for label in ("G", "G_ema"):
            for r in new_cfg.block_resolutions:
                if r > cfg.resolution:
                    for part in ("weight", "bias"):
                        sds[label][f"synthesis.blocks.b{r}.torgb.{part}"].zero_()
        report.notes.append("the new blocks' ToRGB weights start at zero, so the generator first "
                            "draws the old images upsampled")
    return Converted(new_cfg, sds["G"], sds["D"], sds["G_ema"], report)
