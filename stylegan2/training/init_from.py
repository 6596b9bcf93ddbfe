"""Fine-tuning from pretrained weights (`train --init-from FILE`).

A fresh run (progress 0, new optimizer states, the run's own dataset and seed) whose G, D and
G_ema start from another checkpoint's weights: this project's, or an NVlabs / rosinality file
converted in memory. `--resume` stays what it is, the exact continuation of one of our runs.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

from ..convert import Converted, adapt_channels, load_any
from ..networks import ModelConfig
from .state import Run

# The TrainConfig fields a source's networks decide (model_config_dict maps them one to one).
SOURCE_FIELDS = ("resolution", "channels", "z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max")
# ModelConfig fields that change how weights run, not which weights exist or what they mean:
# the run's own precision and batch decide them.
_RUN_ONLY = frozenset({"precision", "num_fp16_res", "conv_clamp", "mbstd_group"})


def load_init(path: str | os.PathLike, channels: Optional[int] = None, resolution: Optional[int] = None) -> Converted:
    """The weights `path` holds, as our networks take them, adapted to `channels` / `resolution`
    where given and different (adapt_channels: luminance ToRGB rows, summed FromRGB columns,
    fresh blocks for a new resolution; its report says which). A partial source is refused
    (load_any): fine-tuning from half-mapped weights is better done knowingly, through
    `convert --allow-partial` first."""
    conv = load_any(path)
    mc = conv.model_config
    if (channels is not None and channels != mc.channels) or (resolution is not None and resolution != mc.resolution):
        conv = adapt_channels(conv, channels=channels, resolution=resolution)
    return conv


def config_overrides(conv: Converted) -> dict[str, Any]:
    """TrainConfig values that build networks of the source's shape."""
    return {f: getattr(conv.model_config, f) for f in SOURCE_FIELDS}


def init_mismatch(model_cfg: dict[str, Any], conv: Converted) -> list[str]:
    """How the networks a run builds (its ModelConfig dict) differ from the source's, in what
    the weights are; empty when the source's state dicts load and mean the same there."""
    ours, theirs = ModelConfig.from_dict(model_cfg), conv.model_config
    out = []
    for f in dataclasses.fields(ModelConfig):
        if f.name in _RUN_ONLY:
            continue
        a, b = getattr(theirs, f.name), getattr(ours, f.name)
        if f.name == "d_mapping_layers":
            if not ours.c_dim and not theirs.c_dim:
                continue  # no conditioning: D has no mapping at all
            a, b = theirs.resolved_d_mapping_layers, ours.resolved_d_mapping_layers
        if a != b:
            hint = " (--cond with a dataset of as many classes)" if f.name == "c_dim" else ""
            out.append(f"{f.name} is {a!r} in the source, {b!r} in this run{hint}")
    return out


def apply_init(run: Run, conv: Converted) -> None:
    """Load the source's weights into a freshly set-up run (setup_run), in place, so the
    optimizers already hold these parameters. Raises ValueError when the networks differ."""
    bad = init_mismatch(run.model_cfg, conv)
    if bad:
        raise ValueError(f"--init-from {conv.report.source}: its networks differ from this run's: {'; '.join(bad)}")
    run.G.load_state_dict(conv.G)
    run.D.load_state_dict(conv.D)
    run.G_ema.load_state_dict(conv.G_ema)
