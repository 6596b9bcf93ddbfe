"""rosinality/stylegan2-pytorch checkpoints (`g`, `d`, `g_ema`, `args`, optionally `latent_avg`).

Read with torch.load(weights_only=True); the `args` entry (an argparse.Namespace) is read into a
plain record class of ours, so no class of the file's choosing is built.

How their layers line up with ours:
- `style.{i}` (i from 1; `style.0` is the pixel norm) -> `mapping.layers.{i-1}`: the same
  equalized-lr storage (effective weight = stored * lr_mul / sqrt(in), bias = stored * lr_mul).
- `input.input` [1, C, 4, 4] -> the 4x4 block's `const` [C, 4, 4].
- `conv1`, `convs.{2k}` (upsampling) and `convs.{2k+1}` -> the blocks' `conv1`, `conv0`, `conv1`:
  `conv.weight` [1, O, I, k, k] -> `weight`, `conv.modulation` -> `affine`, `noise.weight` [1]
  -> `noise_strength`, `activate.bias` -> `bias`. Their 1/sqrt(fan-in) weight scale cancels in
  the demodulation (only the 1e-8 epsilon moves, far below float32 rounding).
- `to_rgb1`, `to_rgbs.{k}` -> `torgb` (bias [1, C, 1, 1] -> [C]); no demodulation, and their
  1/sqrt(in) weight scale equals ours on the styles.
- `noises.noise_{n}` [1, 1, r, r] -> the layers' `noise_const` [r, r].
- D: `convs.0` -> the top block's `fromrgb`; `convs.{i}` ResBlocks -> `blocks.b{r}` (`conv1`,
  `conv2`, `skip` -> `conv0`, `conv1`, `skip`); `final_conv`, `final_linear.0/.1` -> `b4.conv`,
  `b4.fc`, `b4.out`. Minibatch std: groups of 4, one feature map, as theirs.
- Their blur kernels are buffers; each is checked against [1, 3, 3, 1] (x4 when upsampling).
"""
from __future__ import annotations

import os
import re
import warnings
from typing import Any, Optional, Union

import torch

import stylegan2_ops as ops
from stylegan2.networks import MappingNetwork, ModelConfig

from .common import (ConversionError, ConversionReport, Converted, channel_budget, fail_if_partial,
                     fresh_state_dicts, map_state_dict)

FORMAT = "rosinality"
_FILTER = ops.setup_filter([1, 3, 3, 1])
W_AVG_SAMPLES = 10000


class RecordedArgs:
    """What the checkpoint's argparse.Namespace held (attributes only; no behaviour)."""

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def read_rosinality(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """The checkpoint dict, read with torch.load(weights_only=True); `args` becomes a plain dict.
    Raises the checkpoint loader's one-line CheckpointError for a file torch refuses."""
    from pathlib import Path

    # The checkpoint loader's diagnosis (truncated / not a checkpoint / holds code), same wording.
    from stylegan2.training.checkpoint import _why_unreadable
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([(RecordedArgs, "argparse.Namespace")]):
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises several types; the file itself says which failure it was
        raise ConversionError(f"{path} cannot be read safely: {_why_unreadable(Path(path))}") from None
    if not isinstance(ckpt, dict):
        raise ConversionError(f"{path}: a {type(ckpt).__name__}, not a dict with g / g_ema / d")
    if isinstance(ckpt.get("args"), RecordedArgs):
        ckpt["args"] = ckpt["args"].as_dict()
    return ckpt


def _count(pattern: str, sd: dict[str, torch.Tensor]) -> list[int]:
    pat = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := pat.match(k))})


_LAYER = {"conv.weight": "weight", "conv.modulation.weight": "affine.weight",
          "conv.modulation.bias": "affine.bias", "noise.weight": "noise_strength", "activate.bias": "bias"}
_TORGB = {"conv.weight": "weight", "conv.modulation.weight": "affine.weight",
          "conv.modulation.bias": "affine.bias", "bias": "bias"}


def _g_name(name: str) -> Optional[str]:
    if m := re.match(r"style\.(\d+)\.(weight|bias)$", name):
        return f"mapping.layers.{int(m.group(1)) - 1}.{m.group(2)}"
    if name == "input.input":
        return "synthesis.blocks.b4.const"
    if name == "latent_avg":
        return "mapping.w_avg"
    if m := re.match(r"conv1\.(.+)$", name):
        return f"synthesis.blocks.b4.conv1.{_LAYER[m.group(1)]}" if m.group(1) in _LAYER else None
    if m := re.match(r"to_rgb1\.(.+)$", name):
        return f"synthesis.blocks.b4.torgb.{_TORGB[m.group(1)]}" if m.group(1) in _TORGB else None
    if m := re.match(r"convs\.(\d+)\.(.+)$", name):
        j = int(m.group(1))
        if m.group(2) not in _LAYER:
            return None
        return f"synthesis.blocks.b{2 ** (j // 2 + 3)}.conv{j % 2}.{_LAYER[m.group(2)]}"
    if m := re.match(r"to_rgbs\.(\d+)\.(.+)$", name):
        return f"synthesis.blocks.b{2 ** (int(m.group(1)) + 3)}.torgb.{_TORGB[m.group(2)]}" if m.group(2) in _TORGB else None
    if m := re.match(r"noises\.noise_(\d+)$", name):
        n = int(m.group(1))
        if n == 0:
            return "synthesis.blocks.b4.conv1.noise_const"
        return f"synthesis.blocks.b{2 ** ((n - 1) // 2 + 3)}.conv{(n - 1) % 2}.noise_const"
    return None


def _d_namer(resolution: int):
    def rename(name: str) -> Optional[str]:
        if m := re.match(r"convs\.0\.([01])\.(weight|bias)$", name):
            return f"blocks.b{resolution}.fromrgb.{m.group(2)}"
        if m := re.match(r"convs\.(\d+)\.(.+)$", name):
            r = resolution // 2 ** (int(m.group(1)) - 1)
            sub = {"conv1.0.weight": "conv0.weight", "conv1.1.bias": "conv0.bias", "conv2.1.weight": "conv1.weight",
                   "conv2.2.bias": "conv1.bias", "skip.1.weight": "skip.weight"}.get(m.group(2))
            return f"blocks.b{r}.{sub}" if sub else None
        sub = {"final_conv.0.weight": "b4.conv.weight", "final_conv.1.bias": "b4.conv.bias",
               "final_linear.0.weight": "b4.fc.weight", "final_linear.0.bias": "b4.fc.bias",
               "final_linear.1.weight": "b4.out.weight", "final_linear.1.bias": "b4.out.bias"}
        return sub.get(name)
    return rename


def _kernel_check(name: str, t: torch.Tensor) -> Optional[str]:
    """'' for a blur-kernel buffer equal to [1,3,3,1] (x4 in upsampling layers), a reason if not."""
    if not name.endswith("kernel"):
        return None
    for expected in (_FILTER, _FILTER * 4):
        if tuple(t.shape) == tuple(expected.shape) and torch.allclose(t.float(), expected, atol=1e-6):
            return ""
    return "a blur kernel other than the [1, 3, 3, 1] our layers use"


def _model_config(g: dict[str, torch.Tensor], d: Optional[dict[str, torch.Tensor]], args: dict[str, Any],
                  report: ConversionReport) -> ModelConfig:
    styles = _count(r"style\.(\d+)\.weight$", g)
    if not styles or "input.input" not in g or "conv1.conv.weight" not in g:
        raise ConversionError(f"{report.source}: no style.N / input.input / conv1 tensors: "
                              "not a rosinality StyleGAN2 generator")
    rgbs = _count(r"to_rgbs\.(\d+)\.", g)
    resolution = 2 ** (len(rgbs) + 2)
    widths = {4: int(g["conv1.conv.weight"].shape[1])}
    widths.update({2 ** (k + 3): int(g[f"convs.{2 * k + 1}.conv.weight"].shape[1]) for k in range(len(rgbs))})
    z_dim = int(g[f"style.{styles[0]}.weight"].shape[1])
    w_dim = int(g[f"style.{styles[-1]}.weight"].shape[0])
    channels = int(g["to_rgb1.conv.weight"].shape[1])
    mult = args.get("channel_multiplier")
    hint = (16384 * int(mult), 512) if isinstance(mult, int) else None  # their width table as a budget
    base, cmax = channel_budget(widths, hint)
    for key, ours in (("size", resolution), ("latent", w_dim), ("n_mlp", len(styles))):
        if key in args and args[key] != ours:
            report.notes.append(f"args.{key}={args[key]!r} but the tensors say {ours}; the tensors win")
    mbstd_channels = 1
    if d is not None and "final_conv.0.weight" in d:
        mbstd_channels = int(d["final_conv.0.weight"].shape[1]) - widths[4]
    lr = float(args.get("lr_mlp", 0.01))
    return ModelConfig(resolution=resolution, channels=channels, c_dim=0, z_dim=z_dim, w_dim=w_dim,
                       mapping_layers=len(styles), mapping_lr_mult=lr, channel_base=base, channel_max=cmax,
                       mbstd_group=4, mbstd_channels=max(mbstd_channels, 0))


def estimate_w_avg(cfg: ModelConfig, g_state: dict[str, torch.Tensor], samples: int = W_AVG_SAMPLES,
                   seed: int = 0) -> torch.Tensor:
    """Mean of the mapping network's w over `samples` seeded z ~ N(0, I) ([w_dim]): the
    truncation centre rosinality's scripts compute on the fly (their mean_latent)."""
    mapping = MappingNetwork(cfg.z_dim, cfg.c_dim, cfg.w_dim, None, num_layers=cfg.mapping_layers,
                             lr_mult=cfg.mapping_lr_mult, w_avg_beta=None)
    mapping.load_state_dict({k[len("mapping."):]: v for k, v in g_state.items()
                             if k.startswith("mapping.") and k != "mapping.w_avg"})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ws = [mapping(torch.randn(min(1000, samples - i), cfg.z_dim, generator=gen), None)
              for i in range(0, samples, 1000)]
    return torch.cat(ws).mean(dim=0)


def convert_rosinality_state_dicts(
    g: Optional[dict[str, torch.Tensor]],
    d: Optional[dict[str, torch.Tensor]],
    g_ema: Optional[dict[str, torch.Tensor]],
    args: Optional[dict[str, Any]] = None,
    latent_avg: Optional[torch.Tensor] = None,
    report: Optional[ConversionReport] = None,
    allow_partial: bool = False,
) -> Converted:
    """rosinality state dicts -> our Converted networks. Without `latent_avg` the truncation
    centre is estimated (estimate_w_avg) and the report says so."""
    report = report or ConversionReport(source="state dicts", format=FORMAT)
    g_src = g_ema if g_ema is not None else g
    if g_src is None:
        raise ConversionError(f"{report.source}: neither g nor g_ema is present")
    cfg = _model_config(g_src, d, dict(args or {}), report)
    g_fresh, d_fresh = fresh_state_dicts(cfg)

    def convert_g(label: str, sd: dict[str, torch.Tensor], rep: ConversionReport) -> dict[str, torch.Tensor]:
        src = dict(sd)
        if latent_avg is not None:
            src["latent_avg"] = latent_avg.reshape(-1)
        out = map_state_dict(label, src, g_fresh, _g_name, rep, constants=_kernel_check)
        if latent_avg is None:
            # rosinality keeps no w average: estimated below, not a gap in the mapping.
            rep.unmapped_target[:] = [u for u in rep.unmapped_target if not u.startswith(f"{label}.mapping.w_avg")]
            rep.fresh[:] = [f for f in rep.fresh if f != f"{label}.mapping.w_avg"]
        return out

    out_ema = convert_g("g_ema", g_src, report)
    if latent_avg is None:
        out_ema["mapping.w_avg"] = estimate_w_avg(cfg, out_ema)
        report.notes.append(f"no latent_avg in the file: w_avg (the truncation centre) is the mean w of "
                            f"{W_AVG_SAMPLES} seeded z samples, as rosinality's mean_latent computes it")
    if g is not None and g_ema is not None:
        out_g = convert_g("g", g, report)
        out_g["mapping.w_avg"] = out_ema["mapping.w_avg"].clone()
    else:
        report.notes.append(f"the file holds only {'g_ema' if g is None else 'g'}; G and G_ema both start from it")
        out_g = {k: v.clone() for k, v in out_ema.items()}
    if d is not None:
        out_d = map_state_dict("d", d, d_fresh, _d_namer(cfg.resolution), report, constants=_kernel_check)
    else:
        report.unmapped_target.append("D (the file has no discriminator)")
        report.fresh.append("D (all)")
        out_d = d_fresh
    fail_if_partial(report, allow_partial)
    return Converted(cfg, out_g, out_d, out_ema, report)


def load_rosinality(path: Union[str, os.PathLike], allow_partial: bool = False) -> Converted:
    """Convert a rosinality `.pt` checkpoint (read with torch.load(weights_only=True))."""
    ckpt = read_rosinality(path)
    if not any(isinstance(ckpt.get(k), dict) for k in ("g", "g_ema")):
        raise ConversionError(f"{path}: no g or g_ema state dict (keys: {sorted(map(str, ckpt))})")
    report = ConversionReport(source=str(path), format=FORMAT)
    la = ckpt.get("latent_avg")
    return convert_rosinality_state_dicts(
        ckpt.get("g"), ckpt.get("d"), ckpt.get("g_ema"),
        args=ckpt.get("args") if isinstance(ckpt.get("args"), dict) else None,
        latent_avg=la if torch.is_tensor(la) else None, report=report, allow_partial=allow_partial)
