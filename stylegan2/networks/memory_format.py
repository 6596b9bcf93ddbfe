"""channels_last for the synthesis and discriminator blocks: a run-time choice, not architecture.

With it on, every block turns its input activations (and the discriminator its input images)
into channels_last before the first conv; cuDNN then picks NHWC kernels, whose outputs stay
channels_last through the block, and the project's kernels take either layout. The weights
and the numbers computed are the same either way (up to the last bits that the convolution
algorithms round differently), so the setting is not part of ModelConfig or of checkpoints:
a model trained one way generates the other way.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class LayoutSwitch:
    """Mixed into the blocks that compute in a chosen layout (synthesis and discriminator
    blocks): the switch `channels_last`, which use_channels_last sets, and `to_block_layout`,
    which a block applies to its inputs. Both live here so the flag is read where it is set:
    a block hands on activations, never the flag."""

    channels_last: bool = False

    def to_block_layout(self, x: torch.Tensor) -> torch.Tensor:
        """x in the layout this block computes in: channels_last when switched on, else as
        given (a copy only when the layout changes)."""
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


def use_channels_last(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every block under `module` (a Generator, Discriminator or any module holding
    their blocks) to channels_last activations, or back. Returns `module` for chaining.
    Raises ValueError if nothing under `module` has a layout switch, so a typo'd target does not
    silently keep the old layout."""
    blocks = [m for m in module.modules() if isinstance(m, LayoutSwitch)]
    if not blocks:
        raise ValueError(f"use_channels_last: {type(module).__name__} holds no synthesis or "
                         "discriminator blocks")
    for block in blocks:
        block.channels_last = bool(enabled)
    return module
