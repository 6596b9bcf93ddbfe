"""Foreign StyleGAN2 checkpoints in and out, never running code from a file.

    load_foreign_checkpoint(path, allow_partial=False) -> Converted
        NVlabs network pickles (stylegan2-ada-pytorch, stylegan3 --cfg stylegan2), rosinality
        .pt checkpoints, and NVlabs-named exports, as our ModelConfig + G / D / G_ema state
        dicts + a ConversionReport (Converted.build() gives the networks).
    load_any(path)            the same, and this project's own checkpoints
    load_as_checkpoint(path, generator_only=False) -> (checkpoint dict, report or None)
        what --ckpt reads: ours as loaded, a foreign file converted in memory
    convert(src, dst, allow_partial=False, channels=None, resolution=None) -> ConversionReport
        writes this project's checkpoint (validated by its loader)
    adapt_channels(converted, channels=None, resolution=None)  RGB <-> grayscale, resolution
    to_nvlabs_state_dict(sd, cfg, network), nvlabs_init_kwargs(cfg), export_nvlabs(src, dst)
    load_restricted_pickle(path)  the safe pickle reader underneath
"""
from __future__ import annotations

from .adapt import LUMINANCE, adapt_channels
from .common import ConversionError, ConversionReport, Converted
from .export import convert, export_nvlabs, load_any, load_as_checkpoint, load_foreign_checkpoint, make_checkpoint
from .nvlabs import convert_nvlabs_state_dicts, load_nvlabs_pickle, nvlabs_init_kwargs, to_nvlabs_state_dict
from .rosinality import convert_rosinality_state_dicts, estimate_w_avg, load_rosinality
from .unpickle import RecordedObject, RefusedPickle, load_restricted_pickle

__all__ = [
    "LUMINANCE", "ConversionError", "ConversionReport", "Converted", "RecordedObject", "RefusedPickle",
    "adapt_channels", "convert", "convert_nvlabs_state_dicts", "convert_rosinality_state_dicts",
    "estimate_w_avg", "export_nvlabs", "load_any", "load_as_checkpoint", "load_foreign_checkpoint",
    "load_nvlabs_pickle", "load_restricted_pickle", "load_rosinality", "make_checkpoint", "nvlabs_init_kwargs",
    "to_nvlabs_state_dict",
]
