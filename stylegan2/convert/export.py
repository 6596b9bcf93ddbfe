"""Entry points: recognise a file, convert it, write it as our checkpoint or as NVlabs' names.

    load_foreign_checkpoint(path)  NVlabs pickle / rosinality .pt / NVlabs-named state dicts
                                   -> Converted (our ModelConfig, G, D, G_ema state dicts, report)
    load_any(path)                 the same, and this project's own checkpoints too
    load_as_checkpoint(path)       -> our checkpoint dict, converted in memory where foreign
    convert(src, dst)              -> this project's checkpoint (checked by its loader)
    export_nvlabs(src, dst)        -> NVlabs-named state dicts + their init_kwargs
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch

from stylegan2.fileio import sha256_file
from stylegan2.networks import ModelConfig

from .adapt import adapt_channels
from .common import ConversionError, ConversionReport, Converted, UnknownFormat, fail_if_partial
from .nvlabs import (NotNvlabsPickle, convert_nvlabs_state_dicts, load_nvlabs_pickle, nvlabs_init_kwargs,
                     to_nvlabs_state_dict)
from .rosinality import RecordedArgs, convert_rosinality_state_dicts, read_rosinality
from .unpickle import RefusedPickle

PathLike = Union[str, os.PathLike]
NVLABS_STATE_DICT = "nvlabs-state-dict"  # the `format` entry export_nvlabs writes


def _kind(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        return "zip"   # torch.save (rosinality, ours, an NVlabs-named export)
    if head[:1] == b"\x80":
        return "pickle"  # pickle.dump (NVlabs) or torch's legacy format
    raise UnknownFormat(f"{path}: neither a pickle nor a torch.save archive")


def load_foreign_checkpoint(path: PathLike, allow_partial: bool = False) -> Converted:
    """Convert an NVlabs network pickle, a rosinality checkpoint or an NVlabs-named state-dict
    export into our terms, without running code from the file. Raises ConversionError (or
    unpickle.RefusedPickle, a subclass of pickle.UnpicklingError) with a one-line reason; refuses
    anything partially mapped unless allow_partial (see Converted.report)."""
    p = Path(path)
    if not p.is_file():
        raise ConversionError(f"{p}: no such file")
    if _kind(p) == "pickle":
        try:
            return load_nvlabs_pickle(p, allow_partial)
        except NotNvlabsPickle as first:
            # torch's legacy torch.save format also starts like a pickle: read it the safe way.
            try:
                ckpt = read_rosinality(p)
            except ConversionError:
                raise first from None
            return _from_dict(ckpt, p, allow_partial)
    return _from_dict(read_rosinality(p), p, allow_partial)


def _from_dict(ckpt: dict[str, Any], p: Path, allow_partial: bool) -> Converted:
    from stylegan2.training.checkpoint import FORMAT
    if ckpt.get("format") == FORMAT:
        raise ConversionError(f"{p} is already a checkpoint of this project")
    if ckpt.get("format") == NVLABS_STATE_DICT:
        report = ConversionReport(source=str(p), format=NVLABS_STATE_DICT)
        return convert_nvlabs_state_dicts(ckpt.get("G"), ckpt.get("D"), ckpt.get("G_ema"),
                                          dict(ckpt.get("G_init_kwargs") or {}), dict(ckpt.get("D_init_kwargs") or {}),
                                          report=report, allow_partial=allow_partial)
    if isinstance(ckpt.get("g"), dict) or isinstance(ckpt.get("g_ema"), dict):
        report = ConversionReport(source=str(p), format="rosinality")
        la = ckpt.get("latent_avg")
        args = ckpt.get("args")
        return convert_rosinality_state_dicts(ckpt.get("g"), ckpt.get("d"), ckpt.get("g_ema"),
                                              args=args if isinstance(args, dict) else None,
                                              latent_avg=la if torch.is_tensor(la) else None,
                                              report=report, allow_partial=allow_partial)
    raise UnknownFormat(f"{p}: not a format this converter knows (keys: {sorted(map(str, ckpt))[:8]}); "
                          "it reads NVlabs network pickles, rosinality checkpoints and NVlabs-named exports")


def load_any(path: PathLike, allow_partial: bool = False) -> Converted:
    """This project's checkpoint (a file or run directory) as a Converted, or a foreign one
    converted in memory; the report's first note says which. Raises CheckpointError (ours, but
    invalid), ConversionError or RefusedPickle, each one line, for a commands' error message."""
    from stylegan2.training.checkpoint import find_checkpoint, load_checkpoint
    p = find_checkpoint(path)
    if _ours(p) is not False:
        ck = load_checkpoint(p)
        report = ConversionReport(source=str(p), format="stylegan2-brain-mri",
                                  notes=["a checkpoint of this project: nothing converted"])
        return Converted(ModelConfig.from_dict(ck["model_config"]), ck["G"], ck["D"], ck["G_ema"], report)
    conv = load_foreign_checkpoint(p, allow_partial)
    conv.report.notes.insert(0, f"converted in memory from a {conv.report.format} checkpoint")
    return conv


def _ours(p: Path) -> Optional[bool]:
    """True for this project's checkpoint, False for anything else torch or pickle can read the
    safe way, None for a torch.save archive that does not load: our loader then says why (it
    names code a file would run, or a truncated archive), rather than the converter's "unknown
    format"."""
    from stylegan2.training.checkpoint import FORMAT
    if _kind(p) != "zip":
        return False
    with warnings.catch_warnings(), torch.serialization.safe_globals([(RecordedArgs, "argparse.Namespace")]):
        warnings.simplefilter("ignore")
        try:
            head = torch.load(p, map_location="meta", weights_only=True)
        except Exception:
            return None
    return isinstance(head, dict) and head.get("format") == FORMAT


def load_as_checkpoint(path: PathLike, generator_only: bool = False
                       ) -> tuple[dict[str, Any], Optional[ConversionReport]]:
    """What commands that read `--ckpt` load: this project's checkpoint (a file or a run
    directory's newest) as load_checkpoint gives it, with None for the report; or a foreign one
    converted in memory into the same dict (progress 0, dataset "converted from ..."), with its
    report, whose first note says so.

    generator_only: the caller only runs generators (generate, info's parameter counts), so a
    file without a discriminator (rosinality's g_ema-only releases) or with D tensors nothing
    of ours takes still loads, its D left fresh and listed in the report; anything unmapped on
    the generators' side is refused as always."""
    from stylegan2.training.checkpoint import find_checkpoint, load_checkpoint
    p = find_checkpoint(path)
    try:
        ours = _ours(p)
    except UnknownFormat:
        ours = None  # empty or random bytes: our loader says which, naming the file
    if ours is not False:
        return load_checkpoint(p), None
    try:
        conv = load_foreign_checkpoint(p, allow_partial=generator_only)
    except (UnknownFormat, RefusedPickle):
        # Neither format was recognised, or the pickle asks to run code: give our loader's
        # one line (not a checkpoint of this project / refused because it contains code).
        load_checkpoint(p)
        raise  # only if our loader accepted what the converter could not
    if generator_only:
        # Only the discriminator's side may be partial: its labels start with "D".
        generators = [u for u in conv.report.unmapped_source + conv.report.unmapped_target if not u.startswith("D")]
        fail_if_partial(dataclasses.replace(conv.report, unmapped_source=generators, unmapped_target=[]), False)
    conv.report.notes.insert(0, f"converted in memory from a {conv.report.format} checkpoint")
    ck = make_checkpoint(conv, str(p), sha256_file(p))
    ck["path"] = str(p)  # what load_checkpoint records, for the commands that print it
    return ck, conv.report


def make_checkpoint(conv: Converted, source: str = "", fingerprint: str = "") -> dict[str, Any]:
    """Our checkpoint dict for converted networks: weights, fresh optimizer states, progress 0, a
    training config consistent with the model config (batch a multiple of the minibatch-std
    group), and the conversion report in config.extra. Its dataset fingerprint names the source,
    so --resume on real data refuses it: fine-tuning starts a fresh run from its weights."""
    from stylegan2.training import checkpoint as ckpt_io
    from stylegan2.training.config import TrainConfig, resolve
    from stylegan2.training.state import make_optimizer

    # The numbers the networks use (ModelConfig filled in the precision defaults), written into
    # the training config too, so the two agree as the loader checks.
    mc = conv.model_config
    g = mc.mbstd_group
    tc = resolve(TrainConfig(
        preset="custom", data=f"converted:{source}", resolution=mc.resolution, channels=mc.channels,
        cond=mc.c_dim > 0, z_dim=mc.z_dim, w_dim=mc.w_dim, mapping_layers=mc.mapping_layers,
        channel_base=mc.channel_base, channel_max=mc.channel_max, mbstd_group=g, precision=mc.precision,
        num_fp16_res=mc.num_fp16_res, conv_clamp=mc.conv_clamp, batch=g * max(1, math.ceil(32 / g)),
        extra={"converted_from": source, "source_format": conv.report.format, "conversion": conv.report.lines()}))
    G, D, _ = conv.build("cpu")
    rng = ckpt_io.capture_rng()
    rng["feeder"] = {"gen": torch.Generator().get_state(), "epoch": 0, "pos": 0,
                     "perm": torch.zeros(1, dtype=torch.int64), "n": 1}
    return ckpt_io.new_checkpoint(
        G={k: v.clone() for k, v in conv.G.items()}, D={k: v.clone() for k, v in conv.D.items()},
        G_ema={k: v.clone() for k, v in conv.G_ema.items()},
        opt_G=make_optimizer(G, tc, tc.pl_interval if tc.pl_weight > 0 else 0).state_dict(),
        opt_D=make_optimizer(D, tc, tc.r1_interval).state_dict(),
        loss={"pl_mean": torch.zeros([])}, config=tc.to_dict(), model_config=mc.to_dict(),
        progress={"cur_nimg": 0, "step": 0, "tick": 0, "elapsed_s": 0.0}, rng=rng,
        dataset={"fingerprint": f"converted:{fingerprint}", "source": f"converted from {source}",
                 "num_images": 0, "label_names": [str(i) for i in range(mc.c_dim)]})


def convert(src: PathLike, dst: PathLike, allow_partial: bool = False, channels: Optional[int] = None,
            resolution: Optional[int] = None) -> ConversionReport:
    """Convert `src` (NVlabs pickle, rosinality .pt, NVlabs-named export) into our checkpoint at
    `dst` (written atomically, then read back through the checkpoint loader and validator).
    `channels` / `resolution` adapt the networks (see adapt.adapt_channels). Returns the report."""
    from stylegan2.training.checkpoint import atomic_save, load_checkpoint, validate_checkpoint
    src, dst = Path(src), Path(dst)
    conv = load_foreign_checkpoint(src, allow_partial)
    if channels is not None or resolution is not None:
        conv = adapt_channels(conv, channels=channels, resolution=resolution)
    ck = make_checkpoint(conv, str(src), sha256_file(src))
    # The same checks generate and train apply, before anything is written: fail here, not later.
    validate_checkpoint(ck, dst)
    atomic_save(ck, dst)
    try:
        load_checkpoint(dst)  # and read back the way they read it (weights_only)
    except Exception:
        dst.unlink(missing_ok=True)  # a file our loader refuses is worse than none
        raise
    conv.report.notes.append(f"written to {dst}")
    return conv.report


def export_nvlabs(src: PathLike, dst: PathLike, allow_partial: bool = False) -> ConversionReport:
    """Write `src` (ours or any format load_any reads) as {G, D, G_ema} state dicts under NVlabs'
    names plus G_init_kwargs / D_init_kwargs for stylegan2-ada-pytorch's Generator and
    Discriminator, which then load them with load_state_dict. A plain torch.save of tensors
    and plain values (torch.load(weights_only=True) reads it)."""
    from stylegan2.training.checkpoint import atomic_save
    conv = load_any(src, allow_partial)
    mc = conv.model_config
    g_kw, d_kw = nvlabs_init_kwargs(mc)
    if mc.precision == "bf16":
        conv.report.notes.append("bf16 layers exported as NVlabs' fp16 layers (their only reduced precision)")
    if mc.c_dim and mc.resolved_d_mapping_layers != mc.mapping_layers:
        conv.report.notes.append(f"D's mapping has {mc.resolved_d_mapping_layers} layers (D_init_kwargs says so)")
    atomic_save({"format": NVLABS_STATE_DICT, "G": to_nvlabs_state_dict(conv.G, mc, "G"),
                 "D": to_nvlabs_state_dict(conv.D, mc, "D"), "G_ema": to_nvlabs_state_dict(conv.G_ema, mc, "G_ema"),
                 "G_init_kwargs": g_kw, "D_init_kwargs": d_kw}, Path(dst))
    conv.report.notes.append(f"exported with NVlabs' names to {dst}")
    return conv.report


__all__ = ["convert", "export_nvlabs", "load_any", "load_as_checkpoint", "load_foreign_checkpoint", "make_checkpoint"]
