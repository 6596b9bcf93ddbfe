"""StyleGAN2 networks (config F with the StyleGAN2-ADA refinements).

    ModelConfig      architecture (saved as a plain dict in checkpoints)
    Generator        z (+ c) -> image; G.mapping(z, c, ...) -> ws, G.synthesis(ws, ...) -> image
    Discriminator    image (+ c) -> logits [N, 1]
    ema_update       G_ema <- lerp(G, G_ema, beta); ema_beta gives NVlabs' beta for a batch size
    count_parameters parameter count of a module (buffers excluded)
    use_channels_last  run the blocks' activations channels_last (a run-time switch, not saved)
"""
from __future__ import annotations

import torch.nn as nn

from .config import ModelConfig
from .discriminator import Discriminator
from .ema import ema_beta, ema_update
from .generator import Generator
from .mapping import MappingNetwork
from .memory_format import LayoutSwitch, use_channels_last


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements, frozen or not (buffers such as w_avg are not counted), so a
    network loaded for inference counts the same as the one that was trained."""
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "Discriminator",
    "LayoutSwitch",
    "Generator",
    "MappingNetwork",
    "ModelConfig",
    "count_parameters",
    "ema_beta",
    "ema_update",
    "use_channels_last",
]
