"""The mapping network: z (and class c) -> w, with the running w average for truncation."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from .layers import FullyConnected, normalize_2nd_moment


def as_condition(
    c: Optional[torch.Tensor], c_dim: int, batch_size: int, device: torch.device
) -> Optional[torch.Tensor]:
    """Normalizes a class condition to float32 one-hot-like rows [batch_size, c_dim].

    Accepts float rows [batch_size, c_dim] (one-hot or soft labels) or integer labels
    [batch_size] (converted to one-hot rows on the device). Returns None when c_dim == 0 (c is
    then ignored, as NVlabs ignores an empty c).
    """
    if c_dim == 0:
        return None
    if c is None:
        raise ValueError(f"this network is conditional (c_dim={c_dim}); pass c as labels [N] or rows [N, {c_dim}]")
    if not c.is_floating_point():
        if c.ndim != 1:
            raise ValueError(f"integer c must be labels of shape [N], got {list(c.shape)}")
        # A comparison rather than F.one_hot: no range check that reads values back to the host.
        # Labels outside [0, c_dim) give an all-zero row.
        c = c[:, None] == torch.arange(c_dim, device=c.device)
    if c.ndim != 2 or c.shape[1] != c_dim:
        raise ValueError(f"c must have shape [N, {c_dim}], got {list(c.shape)}")
    if c.shape[0] != batch_size:
        raise ValueError(f"c has {c.shape[0]} rows but the batch has {batch_size}")
    return c.to(device=device, dtype=torch.float32)


class MappingNetwork(nn.Module):
    """z [N, z_dim] (and c) -> w [N, num_ws, w_dim] (or [N, w_dim] when num_ws is None).

    z is normalized to unit second moment; with c_dim > 0 the embedded c is normalized too and
    concatenated. `num_layers` FC layers with lrelu follow, at learning-rate multiplier lr_mult.
    The discriminator's conditioning mapping uses z_dim=0 (c only) and no w average.
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: Optional[int],
        *,
        num_layers: int = 8,
        lr_mult: float = 0.01,
        w_avg_beta: Optional[float] = 0.995,
    ) -> None:
        super().__init__()
        if z_dim == 0 and c_dim == 0:
            raise ValueError("MappingNetwork needs z_dim > 0 or c_dim > 0")
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.w_avg_beta = w_avg_beta
        # The embedding is a plain layer at lr_mult 1; only the mapping layers are slowed.
        self.embed = FullyConnected(c_dim, w_dim) if c_dim > 0 else None
        features = [z_dim + (w_dim if c_dim > 0 else 0)] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            FullyConnected(features[i], features[i + 1], act="lrelu", lr_mult=lr_mult)
            for i in range(num_layers)
        )
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self,
        z: Optional[torch.Tensor],
        c: Optional[torch.Tensor] = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: Optional[int] = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        """Args:
            z: [batch_size, z_dim] (None when z_dim == 0).
            c: [batch_size, c_dim] floats or [batch_size] integer labels; ignored if c_dim == 0.
            truncation_psi: w <- w_avg + psi * (w - w_avg); 1 = off.
            truncation_cutoff: truncate only the first `cutoff` ws (None = all).
            update_emas: move w_avg towards this batch's mean w (decay w_avg_beta).
        Returns:
            ws [batch_size, num_ws, w_dim], or w [batch_size, w_dim] if num_ws is None.
        """
        parts = []
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"z must have shape [N, {self.z_dim}], got {None if z is None else list(z.shape)}")
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
            batch, device = z.shape[0], z.device
        else:
            if c is None:
                raise ValueError("this mapping network maps c only; pass c")
            batch, device = c.shape[0], c.device
        c = as_condition(c, self.c_dim, batch, device)
        if self.embed is not None:
            parts.append(normalize_2nd_moment(self.embed(c)))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for layer in self.layers:
            x = layer(x)

        if update_emas and self.w_avg_beta is not None:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is None:
            return x
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ValueError("truncation needs a tracked w_avg (w_avg_beta is None)")
            truncated = self.w_avg.lerp(x, truncation_psi)
            if truncation_cutoff is None:
                x = truncated
            else:
                keep = torch.arange(self.num_ws, device=x.device) < truncation_cutoff
                x = torch.where(keep[None, :, None], truncated, x)
        return x
