"""Exponential moving average of the generator's weights (G_ema, the network one samples from)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


@torch.no_grad()
def ema_update(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """G_ema <- beta * G_ema + (1 - beta) * G for parameters; buffers (w_avg, const noise)
    are copied, as NVlabs does: they are statistics of G, not something to average.

    Both modules must have the same architecture (G_ema is usually copy.deepcopy(G)).
    Runs on the device without host synchronisation.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"ema_update: beta must be in [0, 1], got {beta!r}")
    params_ema, params = dict(G_ema.named_parameters()), dict(G.named_parameters())
    if params_ema.keys() != params.keys():
        raise ValueError("ema_update: G_ema and G have different parameters")
    for name, p in params.items():
        params_ema[name].lerp_(p.detach().to(params_ema[name].dtype), 1.0 - beta)
    buffers_ema = dict(G_ema.named_buffers())
    for name, b in G.named_buffers():
        buffers_ema[name].copy_(b)


def ema_beta(batch_size: int, ema_kimg: float = 10.0, *, rampup: Optional[float] = None, cur_nimg: int = 0) -> float:
    """The per-step EMA decay that gives G_ema a half-life of `ema_kimg` thousand images.

    NVlabs: beta = 0.5 ** (batch_size / ema_nimg), with ema_nimg = ema_kimg * 1000, optionally
    ramped up early in training to min(ema_nimg, cur_nimg * rampup) (rampup 0.05 is usual
    for small data sets; None = no ramp).
    """
    ema_nimg = ema_kimg * 1000.0
    if rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))
