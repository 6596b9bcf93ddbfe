"""LPIPS (Zhang et al. 2018) for projection, from a local file only: NVlabs' TorchScript VGG16
(`vgg16.pt`, what their projector uses), called as vgg16(img_0_255, resize_images=False,
return_lpips=True) -> [N, D] features whose squared distance is LPIPS. Never downloaded here."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..metrics.features import local_weights_path
from .common import ExploreError

LPIPS_WEIGHTS_ENV = "STYLEGAN2_LPIPS_WEIGHTS"
LPIPS_FILE = "vgg16.pt"
LPIPS_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt"
# VGG sees 256x256 images, as NVlabs' projector feeds it (larger ones are area-downsampled
# there; smaller ones, like this project's CPU models, are enlarged so the deep layers see more
# than a pixel or two).
LPIPS_SIZE = 256


def lpips_weights_path(weights: Optional[str | os.PathLike] = None) -> Path:
    """`weights`, else $STYLEGAN2_LPIPS_WEIGHTS, else torch.hub's checkpoint folder/vgg16.pt."""
    return local_weights_path(weights, LPIPS_WEIGHTS_ENV, LPIPS_FILE)


def lpips_features(weights: Optional[str | os.PathLike] = None,
                   device: str | torch.device = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """images float [N, C, R, R] in [-1, 1] (C = 1 or 3) -> LPIPS features [N, D], differentiable.
    Raises ExploreError (one line saying where to put the file) when it is missing or not
    TorchScript."""
    path = lpips_weights_path(weights)
    if not path.is_file():
        raise ExploreError(f"LPIPS needs NVlabs' VGG16 file at {path}: download {LPIPS_URL} and put it there "
                           f"(or name it with --lpips-weights or ${LPIPS_WEIGHTS_ENV}); it is never downloaded at "
                           "run time. Without it, project with the pixel and discriminator losses (no --lpips)")
    try:
        vgg = torch.jit.load(str(path), map_location=device).eval()
    except Exception as e:  # jit.load raises RuntimeError or ValueError for other files
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExploreError(f"{path} is not NVlabs' TorchScript VGG16 ({first})") from None
    for p in vgg.parameters():
        p.requires_grad_(False)

    def features(images: torch.Tensor) -> torch.Tensor:
        x = (images.float() + 1) * 127.5
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] > LPIPS_SIZE:
            x = F.interpolate(x, size=(LPIPS_SIZE, LPIPS_SIZE), mode="area")
        elif x.shape[-1] < LPIPS_SIZE:
            x = F.interpolate(x, size=(LPIPS_SIZE, LPIPS_SIZE), mode="bilinear", align_corners=False)
        return vgg(x, resize_images=False, return_lpips=True)

    return features
