"""NVlabs stylegan2-ada-pytorch / stylegan3 (`--cfg stylegan2`) networks, both ways.

Their parameter names differ from ours in three places only: mapping layers are `fc{i}` (ours
`layers.{i}`), synthesis blocks sit directly under `synthesis` (ours under `synthesis.blocks`),
and discriminator blocks above 4x4 directly at the top (ours under `blocks`). Every layer also
stores its [1,3,3,1] resampling filter as a buffer; ours rebuild it, so on import each is checked
against that filter and on export it is written back.

Options come from the networks' recorded attributes (what the objects actually do), then their
`init_kwargs`, then NVlabs' defaults; the widths, depths and sizes come from tensor shapes.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Optional, Union

import torch

import stylegan2_ops as ops
from stylegan2.networks import ModelConfig

from .common import (ConversionError, ConversionReport, Converted, channel_budget, fail_if_partial,
                     fresh_state_dicts, map_state_dict)
from .unpickle import RecordedObject, load_restricted_pickle

FORMAT = "nvlabs-pickle"
_FILTER = ops.setup_filter([1, 3, 3, 1])

# init_kwargs this importer understands; anything else is reported (it may change the network).
_G_KEYS = {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs"}
_SYNTH_KEYS = {"channel_base", "channel_max", "num_fp16_res", "conv_clamp", "architecture",
               "resample_filter", "fp16_channels_last", "channels_last", "use_noise", "activation",
               "kernel_size", "fused_modconv_default"}
_MAP_KEYS = {"num_layers", "embed_features", "layer_features", "activation", "lr_multiplier", "w_avg_beta"}
_D_KEYS = {"c_dim", "img_resolution", "img_channels", "architecture", "channel_base", "channel_max",
           "num_fp16_res", "conv_clamp", "cmap_dim", "block_kwargs", "mapping_kwargs", "epilogue_kwargs"}
_D_BLOCK_KEYS = {"activation", "resample_filter", "fp16_channels_last", "freeze_layers"}
_EPI_KEYS = {"mbstd_group_size", "mbstd_num_channels", "activation"}


# --------------------------------------------------------------------------------------------
# Reading the pickle.

class NotNvlabsPickle(ConversionError):
    """A pickle that is not NVlabs' dict of networks (torch's legacy save format starts with one
    holding a number, so the caller may try that reader next)."""


def read_nvlabs_pickle(path: Union[str, os.PathLike]) -> tuple[dict[str, RecordedObject], list[str]]:
    """The recorded networks of an NVlabs pickle ({'G', 'D', 'G_ema'} as present) and reader notes.
    Never runs code from the file; raises unpickle.RefusedPickle or ConversionError."""
    obj, notes = load_restricted_pickle(path)
    if not isinstance(obj, dict):
        raise NotNvlabsPickle(f"{path}: a pickle of a {type(obj).__name__}, not NVlabs' dict of networks")
    nets = {k: obj[k] for k in ("G", "D", "G_ema") if isinstance(obj.get(k), RecordedObject)}
    if "G_ema" not in nets and "G" not in nets:
        raise ConversionError(f"{path}: no recorded G or G_ema network (keys: {sorted(map(str, obj))})")
    return nets, notes


def _refuse_unsupported(G: RecordedObject, D: Optional[RecordedObject], path: str) -> None:
    synth = G.children.get("synthesis")
    if synth is None or G.class_name != "Generator":
        raise ConversionError(f"{path}: G is a {G.class_name} without a synthesis network, not a StyleGAN2 generator")
    names = set(synth.children)
    if "input" in names or any(re.match(r"L\d+_", n) for n in names):
        raise ConversionError(f"{path}: a StyleGAN3 (stylegan3-t / stylegan3-r) generator: its alias-free "
                              "synthesis network is not StyleGAN2's and this library does not implement it; "
                              "only networks trained with --cfg stylegan2 (or stylegan2-ada-pytorch) convert")
    for name, block in synth.children.items():
        # The recorded attribute, else the structure: 'orig' lacks ToRGBs below the top block,
        # 'resnet' has a 1x1 skip conv in every block above 4x4.
        arch = block.attr("architecture") or ("resnet" if "skip" in block.children else
                                              "skip" if "torgb" in block.children else "orig")
        if arch != "skip" or "skip" in block.children or "torgb" not in block.children:
            raise ConversionError(f"{path}: G block {name} uses architecture {arch!r}; this library's "
                                  "generator is the 'skip' one only ('orig' and 'resnet' G are refused)")
    if D is not None:
        for name, block in D.children.items():
            if name == "b4" or name == "mapping":
                continue
            shape = "resnet" if "skip" in block.children else "orig or skip"  # what its layers say
            arch = block.attr("architecture") or shape
            if arch != "resnet" or shape != "resnet":
                arch = arch if arch != "resnet" else shape
                raise ConversionError(f"{path}: D block {name} uses architecture {arch!r}; this library's "
                                      "discriminator is the 'resnet' one only ('orig' and 'skip' D are refused)")


def _recorded_options(G: RecordedObject, D: Optional[RecordedObject]) -> dict[str, Any]:
    """Options the recorded objects' own attributes state (they win over init_kwargs)."""
    opts: dict[str, Any] = {}
    mapping = G.children.get("mapping")
    if mapping is not None:
        fc0 = mapping.children.get("fc0")
        if fc0 is not None and fc0.attr("bias_gain") is not None:
            opts["mapping_lr"] = float(fc0.attr("bias_gain"))
        if "w_avg_beta" in mapping.state:
            opts["w_avg_beta"] = mapping.attr("w_avg_beta")
    synth = G.children.get("synthesis")
    if synth is not None:
        blocks = list(synth.children.values())
        opts["g_fp16"] = sum(bool(b.attr("use_fp16", False)) for b in blocks)
        conv = blocks[0].children.get("conv1") if blocks else None
        if conv is not None and "conv_clamp" in conv.state:
            opts["g_clamp"] = conv.attr("conv_clamp")
    if D is not None:
        blocks = [b for n, b in D.children.items() if n not in ("b4", "mapping")]
        opts["d_fp16"] = sum(bool(b.attr("use_fp16", False)) for b in blocks)
        epi = D.children.get("b4")
        if epi is not None:
            conv = epi.children.get("conv")
            if conv is not None and "conv_clamp" in conv.state:
                opts["d_clamp"] = conv.attr("conv_clamp")
            mbstd = epi.children.get("mbstd")
            if mbstd is not None:
                opts["mbstd_group"] = mbstd.attr("group_size", 4)
        dmap = D.children.get("mapping")
        if dmap is not None and dmap.children.get("fc0") is not None:
            gain = dmap.children["fc0"].attr("bias_gain")
            if gain is not None:
                opts["d_mapping_lr"] = float(gain)
    return opts


def load_nvlabs_pickle(path: Union[str, os.PathLike], allow_partial: bool = False) -> Converted:
    """Convert an NVlabs network pickle (G, D, G_ema with their init_kwargs) without running it."""
    path = str(path)
    nets, notes = read_nvlabs_pickle(path)
    G_rec = nets.get("G_ema", nets.get("G"))
    assert G_rec is not None
    _refuse_unsupported(G_rec, nets.get("D"), path)
    if "G" in nets and nets["G"] is not G_rec:
        _refuse_unsupported(nets["G"], None, path)
    report = ConversionReport(source=path, format=FORMAT, notes=list(notes))
    d_rec = nets.get("D")
    return convert_nvlabs_state_dicts(
        G=nets["G"].tensors() if "G" in nets else None,
        D=d_rec.tensors() if d_rec is not None else None,
        G_ema=nets["G_ema"].tensors() if "G_ema" in nets else None,
        G_kwargs=G_rec.init_kwargs,
        D_kwargs=d_rec.init_kwargs if d_rec is not None else {},
        recorded=_recorded_options(G_rec, d_rec),
        report=report, allow_partial=allow_partial)


# --------------------------------------------------------------------------------------------
# From NVlabs-named state dicts to ours.

def _count(prefix: str, sd: dict[str, torch.Tensor]) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in sd if (m := pat.match(k))})


def _options(G_kwargs: dict[str, Any], D_kwargs: dict[str, Any], recorded: dict[str, Any],
             report: ConversionReport) -> dict[str, Any]:
    """Merge recorded attributes, init_kwargs and NVlabs' defaults; report kwargs not understood."""
    g_kw = dict(G_kwargs)
    synth = dict(g_kw.get("synthesis_kwargs") or {})
    synth.update({k: g_kw[k] for k in _SYNTH_KEYS if k in g_kw})  # stylegan3 passes them flat
    gmap = dict(g_kw.get("mapping_kwargs") or {})
    d_kw = dict(D_kwargs)
    dmap = dict(d_kw.get("mapping_kwargs") or {})
    epi = dict(d_kw.get("epilogue_kwargs") or {})
    dblock = dict(d_kw.get("block_kwargs") or {})

    def unknown(where: str, kw: dict[str, Any], known: set[str]) -> None:
        for k in sorted(set(kw) - known):
            report.unmapped_source.append(f"{where} option {k}={kw[k]!r} (not understood)")
    unknown("G", g_kw, _G_KEYS | _SYNTH_KEYS)
    unknown("G synthesis", dict(g_kw.get("synthesis_kwargs") or {}), _SYNTH_KEYS)
    unknown("G mapping", gmap, _MAP_KEYS)
    unknown("D", d_kw, _D_KEYS)
    unknown("D mapping", dmap, _MAP_KEYS)
    unknown("D epilogue", epi, _EPI_KEYS)
    unknown("D block", dblock, _D_BLOCK_KEYS)
    for where, kw in (("G", synth), ("G mapping", gmap), ("D", d_kw), ("D mapping", dmap), ("D epilogue", epi),
                      ("D block", dblock)):
        if kw.get("activation", "lrelu") != "lrelu":
            report.unmapped_source.append(f"{where} activation {kw['activation']!r} (ours is lrelu)")
        if list(kw.get("resample_filter", [1, 3, 3, 1])) != [1, 3, 3, 1]:
            report.unmapped_source.append(f"{where} resample_filter {kw['resample_filter']!r} (ours is [1, 3, 3, 1])")
    if synth.get("use_noise", True) is False:
        report.unmapped_source.append("G use_noise=False (our synthesis layers always have noise inputs)")

    def pick(key: str, *candidates: Any, default: Any) -> Any:
        if key in recorded:
            return recorded[key]
        for c in candidates:
            if c is not None:
                return c
        return default

    return {
        "mapping_lr": float(pick("mapping_lr", gmap.get("lr_multiplier"), default=0.01)),
        "w_avg_beta": pick("w_avg_beta", gmap.get("w_avg_beta"), default=0.995),
        "d_mapping_lr": float(pick("d_mapping_lr", dmap.get("lr_multiplier"), default=0.01)),
        "g_fp16": int(pick("g_fp16", synth.get("num_fp16_res"), default=0)),
        "d_fp16": int(pick("d_fp16", d_kw.get("num_fp16_res"), default=0)),
        "g_clamp": pick("g_clamp", synth.get("conv_clamp"), default=None),
        "d_clamp": pick("d_clamp", d_kw.get("conv_clamp"), default=None),
        "mbstd_group": pick("mbstd_group", epi.get("mbstd_group_size"), default=4),
        "hint": (synth.get("channel_base"), synth.get("channel_max")),
        "d_hint": (d_kw.get("channel_base"), d_kw.get("channel_max")),
    }


def _model_config(G: dict[str, torch.Tensor], D: Optional[dict[str, torch.Tensor]], opts: dict[str, Any],
                  report: ConversionReport) -> ModelConfig:
    n_map = _count("mapping.fc", G)
    if n_map == 0 or "synthesis.b4.const" not in G:
        raise ConversionError(f"{report.source}: G has no mapping.fc0 or synthesis.b4.const: not a StyleGAN2 generator")
    res_list = sorted(int(m.group(1)) for k in G if (m := re.match(r"synthesis\.b(\d+)\.conv1\.weight$", k)))
    resolution = res_list[-1]
    widths = {r: int(G[f"synthesis.b{r}.conv1.weight"].shape[0]) for r in res_list}
    c_dim = int(G["mapping.embed.weight"].shape[1]) if "mapping.embed.weight" in G else 0
    embed = int(G["mapping.embed.weight"].shape[0]) if c_dim else 0
    w_dim = int(G[f"mapping.fc{n_map - 1}.weight"].shape[0])
    z_dim = int(G["mapping.fc0.weight"].shape[1]) - embed
    channels = int(G[f"synthesis.b{resolution}.torgb.weight"].shape[0])
    hint = opts["hint"] if None not in opts["hint"] else None
    base, cmax = channel_budget(widths, hint)

    mbstd_channels, d_layers = 1, None
    if D is not None:
        d_widths = {4: int(D["b4.conv.weight"].shape[0])} if "b4.conv.weight" in D else {}
        d_widths.update({int(m.group(1)): int(v.shape[0]) for k, v in D.items()
                         if (m := re.match(r"b(\d+)\.conv0\.weight$", k))})
        if d_widths != widths:
            raise ConversionError(f"{report.source}: D's channel counts {dict(sorted(d_widths.items()))} differ from "
                                  f"G's {dict(sorted(widths.items()))}; this library's G and D share one budget")
        mbstd_channels = int(D["b4.conv.weight"].shape[1]) - widths[4]
        if c_dim:
            d_map = _count("mapping.fc", D)
            d_layers = d_map if d_map != n_map else None
    if opts["g_fp16"] != opts["d_fp16"] and D is not None:
        report.notes.append(f"G ran {opts['g_fp16']} resolutions in fp16 and D {opts['d_fp16']}; ours runs G's "
                            "number in both (a speed setting: the functions are the same)")
    if opts["g_clamp"] != opts["d_clamp"] and D is not None:
        report.unmapped_source.append(f"D conv_clamp={opts['d_clamp']} differs from G's {opts['g_clamp']} "
                                      "(ours has one conv_clamp for both)")
    fp16, clamp = opts["g_fp16"], opts["g_clamp"]
    if fp16 and clamp is None:
        report.notes.append(f"the source ran {fp16} resolutions in fp16 without conv clamping; converted as "
                            "float32 (ours clamps whenever it runs fp16), the same function")
        fp16 = 0
    group = opts["mbstd_group"]
    if group is None:
        report.notes.append("the source's minibatch-std group is the whole batch; ours uses groups of 32")
        group = 32
    beta = opts["w_avg_beta"]
    if beta is None:
        report.notes.append("the source tracks no w average; ours tracks one with decay 0.995")
        beta = 0.995
    fp16 = min(fp16, int(math.log2(resolution)) - 1)
    return ModelConfig(
        resolution=resolution, channels=channels, c_dim=c_dim, z_dim=z_dim, w_dim=w_dim,
        mapping_layers=n_map, mapping_lr_mult=opts["mapping_lr"], w_avg_beta=float(beta),
        channel_base=base, channel_max=cmax, num_fp16_res=fp16, precision="fp16" if fp16 else "fp32",
        conv_clamp=None if clamp is None else float(clamp), mbstd_group=int(group),
        mbstd_channels=mbstd_channels, d_mapping_layers=d_layers)


def _filter_check(name: str, t: torch.Tensor) -> Optional[str]:
    """'' for a resampling-filter buffer equal to ours, a reason if it differs, None otherwise."""
    if not name.endswith("resample_filter"):
        return None
    if tuple(t.shape) == tuple(_FILTER.shape) and torch.allclose(t.float(), _FILTER, atol=1e-6):
        return ""
    return "a resampling filter other than the [1, 3, 3, 1] our layers use"


def _g_name(name: str) -> Optional[str]:
    name = re.sub(r"^mapping\.fc(\d+)\.", r"mapping.layers.\1.", name)
    return re.sub(r"^synthesis\.b(\d+)\.", r"synthesis.blocks.b\1.", name)


def _d_name(name: str) -> Optional[str]:
    name = re.sub(r"^mapping\.fc(\d+)\.", r"mapping.layers.\1.", name)
    m = re.match(r"^b(\d+)\.", name)
    if m and m.group(1) != "4":
        return "blocks." + name
    return name


def convert_nvlabs_state_dicts(
    G: Optional[dict[str, torch.Tensor]],
    D: Optional[dict[str, torch.Tensor]],
    G_ema: Optional[dict[str, torch.Tensor]],
    G_kwargs: dict[str, Any],
    D_kwargs: dict[str, Any],
    recorded: Optional[dict[str, Any]] = None,
    report: Optional[ConversionReport] = None,
    allow_partial: bool = False,
) -> Converted:
    """NVlabs-named state dicts (+ the networks' init_kwargs) -> our Converted networks.

    G or G_ema may be missing (the other is used for both, with a note); a missing D is left
    freshly initialised and counts as partial. Raises ConversionError for networks our config
    cannot express, and for anything unmapped unless allow_partial.
    """
    report = report or ConversionReport(source="state dicts", format="nvlabs-state-dict")
    g_src = G_ema if G_ema is not None else G
    if g_src is None:
        raise ConversionError(f"{report.source}: neither G nor G_ema is present")
    opts = _options(G_kwargs, D_kwargs, recorded or {}, report)
    cfg = _model_config(g_src, D, opts, report)
    g_fresh, d_fresh = fresh_state_dicts(cfg)
    out_ema = map_state_dict("G_ema", g_src, g_fresh, _g_name, report, constants=_filter_check)
    if G is not None and G_ema is not None:
        out_g = map_state_dict("G", G, g_fresh, _g_name, report, constants=_filter_check)
    else:
        report.notes.append(f"the source holds only {'G_ema' if G is None else 'G'}; G and G_ema both start from it")
        out_g = {k: v.clone() for k, v in out_ema.items()}
    if D is not None:
        ratio = opts["d_mapping_lr"] / cfg.mapping_lr_mult
        if ratio != 1:
            # Ours has one multiplier for both mappings; the stored values absorb the difference
            # (the embedding runs at 1 on both sides and is left alone).
            report.notes.append(f"D's mapping learning-rate multiplier {opts['d_mapping_lr']} differs from G's "
                                f"{cfg.mapping_lr_mult}; its layers' stored weights were rescaled so it computes the same")
        out_d = map_state_dict("D", D, d_fresh, _d_name, report, constants=_filter_check,
                               scale=lambda k: ratio if k.startswith("mapping.layers.") else 1.0)
    else:
        report.unmapped_target.append("D (the source has no discriminator)")
        report.fresh.append("D (all)")
        out_d = d_fresh
    fail_if_partial(report, allow_partial)
    return Converted(cfg, out_g, out_d, out_ema, report)


# --------------------------------------------------------------------------------------------
# Export: our networks under NVlabs' names.

def nvlabs_init_kwargs(cfg: ModelConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(G_kwargs, D_kwargs) for stylegan2-ada-pytorch's training.networks.Generator and
    Discriminator that build networks our exported state dicts load into. (stylegan3's
    networks_stylegan2.Generator takes the synthesis_kwargs entries as flat keywords.)"""
    fp16 = cfg.num_fp16_res if cfg.precision != "fp32" else 0
    g = dict(z_dim=cfg.z_dim, c_dim=cfg.c_dim, w_dim=cfg.w_dim, img_resolution=cfg.resolution,
             img_channels=cfg.channels,
             mapping_kwargs=dict(num_layers=cfg.mapping_layers, lr_multiplier=cfg.mapping_lr_mult,
                                 w_avg_beta=cfg.w_avg_beta),
             synthesis_kwargs=dict(channel_base=cfg.channel_base, channel_max=cfg.channel_max,
                                   num_fp16_res=fp16, conv_clamp=cfg.conv_clamp))
    d = dict(c_dim=cfg.c_dim, img_resolution=cfg.resolution, img_channels=cfg.channels, architecture="resnet",
             channel_base=cfg.channel_base, channel_max=cfg.channel_max, num_fp16_res=fp16,
             conv_clamp=cfg.conv_clamp,
             mapping_kwargs=dict(num_layers=cfg.resolved_d_mapping_layers, lr_multiplier=cfg.mapping_lr_mult),
             epilogue_kwargs=dict(mbstd_group_size=cfg.mbstd_group, mbstd_num_channels=cfg.mbstd_channels))
    return g, d


def to_nvlabs_state_dict(state_dict: dict[str, torch.Tensor], cfg: ModelConfig,
                         network: str = "G") -> dict[str, torch.Tensor]:
    """One of our state dicts (network "G" / "G_ema" or "D") under NVlabs' names, with the
    resampling-filter buffers their layers register, so their networks built from
    nvlabs_init_kwargs(cfg) load it with load_state_dict (strict)."""
    out: dict[str, torch.Tensor] = {}
    if network in ("G", "G_ema"):
        for k, v in state_dict.items():
            k = re.sub(r"^mapping\.layers\.(\d+)\.", r"mapping.fc\1.", k)
            out[re.sub(r"^synthesis\.blocks\.", "synthesis.", k)] = v.detach().clone()
        for r in cfg.block_resolutions:
            out[f"synthesis.b{r}.resample_filter"] = _FILTER.clone()
            out[f"synthesis.b{r}.conv1.resample_filter"] = _FILTER.clone()
            if r > 4:
                out[f"synthesis.b{r}.conv0.resample_filter"] = _FILTER.clone()
    elif network == "D":
        for k, v in state_dict.items():
            k = re.sub(r"^mapping\.layers\.(\d+)\.", r"mapping.fc\1.", k)
            out[re.sub(r"^blocks\.", "", k)] = v.detach().clone()
        for r in cfg.block_resolutions[1:]:
            layers = ["", "conv0.", "conv1.", "skip."] + (["fromrgb."] if r == cfg.resolution else [])
            for layer in layers:
                out[f"b{r}.{layer}resample_filter"] = _FILTER.clone()
        out["b4.conv.resample_filter"] = _FILTER.clone()
        if cfg.resolution == 4:
            out["b4.fromrgb.resample_filter"] = _FILTER.clone()
    else:
        raise ValueError(f"network must be 'G', 'G_ema' or 'D', got {network!r}")
    return out
