"""Checkpoints: atomic writes, weights_only-safe contents, and the RNG state needed to resume exactly.

A checkpoint is a plain dict of tensors, dicts, lists, ints, floats and strings, so
`torch.load(path, weights_only=True)` reads it and loading never runs code. Layout:

    format, version, created, torch
    G, D, G_ema          state dicts
    opt_G, opt_D         optimizer state dicts
    loss                 the loss's own state (e.g. {"pl_mean": tensor})
    config               TrainConfig.to_dict()
    model_config         the networks' ModelConfig as a dict, precision defaults filled in (older
                         files hold only the fields the training config decides: the rest take
                         ModelConfig's defaults, which is what those networks used)
    progress             {"cur_nimg", "step", "tick", "elapsed_s"}
    rng                  {"torch_cpu", "torch_cuda", "feeder"} (older files also "numpy", "python")
    split                {"world_size", "batch_gpu", "chunk_rng"}: the RNG stream of every chunk
                         of the batch (split.py; absent in older files)
    dataset              {"fingerprint", "source", "num_images", "label_names"}
    augment              Augment.state_dict(): {"kind"} and, for ADA, its p and accumulators
                         (absent from checkpoints written before augmentation: they resume as
                         "none", which is what their config says)
"""
from __future__ import annotations

import copy
import math
import os
import re
import time
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

import torch

from .. import fileio
from ..pickle_scan import ZIP_MAGIC, non_tensor_globals, pickle_globals
from ..networks import Discriminator, Generator, ModelConfig
from .config import TrainConfig, resolve
from .split import check_saved as check_split
from .state import Run, model_config_dict

FORMAT = "stylegan2-brain-mri"
VERSION = 1
# Checkpoints are named by the images shown, 9 digits ("ckpt-000002032.pt"), so names sort as
# training went and never carry a fraction. Earlier versions wrote whole kimg ("ckpt-000002.pt",
# any count from 2000 to 2999) or kimg with images below 1 kimg ("ckpt-000000.736.pt"); those are
# still found, and ordered by the count their name gives.
_NAME = re.compile(r"^ckpt-(\d{9,})\.pt$")
_OLD_NAME = re.compile(r"^ckpt-(\d{6})(?:\.(\d{3}))?\.pt$")
TAG_DIGITS = 9
BEST = "best.pt"  # the checkpoint with the lowest FID so far (train --metrics fid), beside the latest
CHECKPOINTS = "checkpoints"  # the folder of a run directory that holds its checkpoints


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, unreadable, invalid, or from another format.

    str() is always one line. `path` is the file concerned (when there is one) and `reason` the
    message without it, for callers that list several files (resume's fall-back).
    """

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, reason: str | None = None) -> None:
        message = " ".join(str(message).split())  # one line, whatever an inner message held
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.reason = " ".join((reason or message).split())


def ckpt_tag(cur_nimg: int) -> str:
    """File-name tag for a point in training: the number of real images shown, 9 digits
    ("000002032" for 2032 images, 2.032 kimg), so every snapshot gets its own name, names sort
    in training order up to a million kimg, and a run stopped mid-way needs no fraction."""
    return f"{int(cur_nimg):0{TAG_DIGITS}d}"


def name_nimg(name: str) -> int | None:
    """The image count a checkpoint file name gives (this version's or an earlier one's), or
    None for a name that is not a numbered checkpoint (best.pt, a temporary file)."""
    if m := _NAME.match(name):
        return int(m.group(1))
    if m := _OLD_NAME.match(name):
        return int(m.group(1)) * 1000 + int(m.group(2) or 0)
    return None


def ckpt_name(cur_nimg: int) -> str:
    return f"ckpt-{ckpt_tag(cur_nimg)}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(cur_nimg, path) of every checkpoint in a run directory, oldest first."""
    d = Path(run_dir) / CHECKPOINTS
    found = []
    if d.is_dir():
        for p in d.iterdir():
            nimg = name_nimg(p.name)
            if nimg is not None:
                found.append((nimg, p))
    return sorted(found)


def run_dir_of(path: str | os.PathLike) -> Path | None:
    """The run directory a checkpoint file belongs to (run/checkpoints/ckpt-*.pt -> run), or None
    for a file kept elsewhere."""
    p = Path(path)
    return p.parent.parent if p.parent.name == CHECKPOINTS else None


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file as given, or the newest one in a run directory."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        found = list_checkpoints(p)
        if not found:
            raise CheckpointError(f"no checkpoints (checkpoints/ckpt-*.pt) in run directory {p}")
        return found[-1][1]
    raise CheckpointError(f"checkpoint not found: {p}")


def atomic_save(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """torch.save into a temporary file in the same folder, fsync, then os.replace over `path`.

    A crash or a failing save at any point leaves either the old file or the new one, never a torn
    one; the temporary file is removed when the save fails, which raises fileio.WriteError (one
    line naming the file and the cause, e.g. the disk is full).
    """
    path = Path(path)
    fileio.make_dirs(path.parent)
    return fileio.atomic_write(path, lambda f: torch.save(obj, f), fsync=True)


# --------------------------------------------------------------------------------------------
# Reading: a file that is not a readable checkpoint of ours gets one line saying which of the
# three it is (truncated/damaged, not a checkpoint, refused because it holds code). torch's own
# message is never shown: it suggests loading with weights_only=False, which is how a payload runs.

_PICKLE_PROTO = b"\x80"      # a bare pickle (torch's legacy format, or pickle.dump)


def _why_unreadable(p: Path) -> str:
    """Which kind of unreadable file `p` is, after torch.load(weights_only=True) refused it."""
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return f"cannot be read ({fileio.describe_cause(e)})"
    if size == 0:
        return "the file is empty (truncated)"

    def refused(code: list[str]) -> str:
        what = f"loading it would call {', '.join(code)}" if code else \
            "pickled objects other than tensors and plain data"
        return f"refused because it contains code ({what}); nothing in it was run"

    if head == ZIP_MAGIC:
        try:
            with zipfile.ZipFile(p) as z:
                broken = _bad_record(z)
                if broken is not None:
                    return broken
                pkl = [i for i in z.infolist() if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
                if not pkl:
                    return "not a checkpoint (a zip archive without the data.pkl that torch.save writes)"
                data = _read_member(z, pkl[0])
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error):
            return "truncated or damaged (its zip archive is incomplete)"
        names = pickle_globals(data)
        if names is None:
            return "truncated or damaged (its data.pkl is incomplete)"
        # An intact archive with a complete pickle that torch's safe loader refused: the pickle
        # asks for something other than tensors and containers.
        return refused(non_tensor_globals(names))
    if head[:1] == _PICKLE_PROTO:
        with open(p, "rb") as f:
            code = non_tensor_globals(pickle_globals(f.read()) or [])
        if code:
            return refused(code)
        return "not a checkpoint (a plain pickle, not the zip archive torch.save writes)"
    return "not a checkpoint (neither a zip archive written by torch.save nor a pickle)"


def read_checkpoint_file(p: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """torch.load(p, weights_only=True), failing with a one-line CheckpointError (never torch's
    text) that says whether the file is truncated, damaged, not a checkpoint, or refused for
    holding code.

    torch.load does not check the CRC-32 that torch.save stores for each record of its zip
    archive: a flipped bit in a tensor's bytes (a failing disk, a bad copy) loads silently as a
    wrong weight. So the records are checked here too (about 1 s per GB), in the same open file
    that was loaded (a file replaced in between cannot pass for the one that was read)."""
    p = Path(p)
    try:
        with open(p, "rb") as f:
            with warnings.catch_warnings():
                # e.g. "Detected pickle protocol 4": noise about a file we are about to reject anyway.
                warnings.simplefilter("ignore")
                loaded = torch.load(f, map_location=map_location, weights_only=True)
            f.seek(0)
            reason = None
            if f.read(4) == ZIP_MAGIC:  # torch's legacy format, a bare pickle, has no checksums
                f.seek(0)
                with zipfile.ZipFile(f) as z:
                    reason = _bad_record(z)
        if reason is None:
            return loaded
    except Exception:  # torch raises RuntimeError, UnpicklingError, EOFError, KeyError, OSError...
        # ...even an OSError (EINVAL) for a truncated archive: the file itself is examined to tell
        # which kind of failure it was, including whether it can be read at all.
        reason = _why_unreadable(p)
    raise CheckpointError(f"{p} is not a readable checkpoint of this project: {reason}", path=p,
                          reason=f"not a readable checkpoint: {reason}") from None


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A record's bytes; one stored without a CRC-32 (0, see _bad_record) is read unchecked
    (zipfile would compare it with 0 and call it damaged)."""
    if info.CRC == 0 and info.file_size > 0:
        info = copy.copy(info)
        del info.CRC  # zipfile checks a record's CRC only when its ZipInfo has one
    with z.open(info) as member:
        return member.read()


def _bad_record(z: zipfile.ZipFile) -> str | None:
    """'damaged (<record> fails its checksum)' for the first record of `z` whose content does not
    match its stored CRC-32, else None. Records stored with a CRC of 0 and some content are
    skipped: torch.save writes those when its compute_crc32 option is off, and they cannot be
    checked (zipfile's testzip() would call every one of them damaged)."""
    for info in z.infolist():
        if info.CRC == 0 and info.file_size > 0:
            continue
        try:
            with z.open(info) as member:  # reading to the end compares the CRC-32
                while member.read(1 << 24):
                    pass
        except zipfile.BadZipFile:
            return f"damaged ({info.filename} fails its checksum)"
    return None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    validate: bool = True) -> dict[str, Any]:
    """Load a checkpoint (a file, or a run directory's newest) safely and check it is one of ours.

    Loading never runs code (weights_only=True). With validate=True (the default) every entry is
    checked before anything uses it (see validate_checkpoint). Raises CheckpointError, one line.
    """
    p = find_checkpoint(path)
    ckpt = read_checkpoint_file(p, map_location)
    if validate:
        validate_checkpoint(ckpt, p)
    elif not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a checkpoint of this project (no format '{FORMAT}')", path=p)
    ckpt["path"] = str(p)
    return ckpt


def load_newest_valid(run_dir: str | os.PathLike, map_location: str | torch.device = "cpu"
                      ) -> tuple[dict[str, Any], list[tuple[Path, str]]]:
    """The newest checkpoint of a run directory that loads and validates, and the (path, reason)
    of each newer one skipped. Resuming uses it so that a checkpoint torn by a dying disk or a
    copy cut short costs one snapshot interval, not the run. Raises CheckpointError when none is
    usable (or there are none)."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"no checkpoints (checkpoints/ckpt-*.pt) in run directory {run_dir}")
    skipped: list[tuple[Path, str]] = []
    for _, p in reversed(found):
        try:
            return load_checkpoint(p, map_location), skipped
        except CheckpointError as e:
            skipped.append((p, e.reason))
    newest = skipped[0]
    raise CheckpointError(f"no usable checkpoint in {run_dir}: all {len(found)} failed to load or "
                          f"validate (newest {newest[0].name}: {newest[1]})")


# --------------------------------------------------------------------------------------------
# Validation: structure, types, configs, and every tensor's name and shape against the networks
# the stored model_config builds (built on the meta device: no memory, no initialisation).

_TOP = {"G": dict, "D": dict, "G_ema": dict, "opt_G": dict, "opt_D": dict, "loss": dict, "config": dict,
        "model_config": dict, "progress": dict, "rng": dict, "dataset": dict}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shape(t: Any) -> str:
    return str(list(t.shape)) if torch.is_tensor(t) else type(t).__name__


def _check_state_dict(name: str, saved: dict[str, Any], expected: dict[str, torch.Tensor]) -> None:
    missing = [k for k in expected if k not in saved]
    extra = [k for k in saved if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
        if extra:
            parts.append(f"{len(extra)} unknown tensor(s) ({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''})")
        raise ValueError(f"{name}: {' and '.join(parts)} for the networks its model_config builds")
    for k, ref in expected.items():
        v = saved[k]
        if not torch.is_tensor(v):
            raise ValueError(f"{name}: '{k}' is a {type(v).__name__}, not a tensor")
        if tuple(v.shape) != tuple(ref.shape):
            raise ValueError(f"{name}: tensor '{k}' has shape {list(v.shape)}, its model_config needs "
                             f"{list(ref.shape)}")
        if v.is_floating_point() != ref.is_floating_point():
            raise ValueError(f"{name}: tensor '{k}' has dtype {v.dtype}, expected {ref.dtype}")


def _check_optimizer(name: str, opt: dict[str, Any], shapes: list[torch.Size]) -> None:
    groups, st = opt.get("param_groups"), opt.get("state")
    if not isinstance(groups, list) or not isinstance(st, dict) or \
            not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        raise ValueError(f"{name}: not an optimizer state (needs 'state' and 'param_groups' with 'params')")
    ids = [i for g in groups for i in g["params"]]
    if ids != list(range(len(shapes))):
        raise ValueError(f"{name}: holds state for {len(ids)} parameters, the network has {len(shapes)}")
    for i, s in st.items():
        if not _is_int(i) or not 0 <= i < len(shapes) or not isinstance(s, dict):
            raise ValueError(f"{name}: state entry {i!r} does not belong to a parameter")
        for key, v in s.items():
            if key == "step":
                continue
            if not torch.is_tensor(v) or tuple(v.shape) != tuple(shapes[i]):
                raise ValueError(f"{name}: state '{key}' of parameter {i} has shape {_shape(v)}, "
                                 f"the parameter {list(shapes[i])}")


def _check_fields(name: str, d: dict[str, Any], fields: dict[str, Callable[[Any], bool]],
                  what: str | dict[str, str]) -> None:
    """Each named field present and accepted by its check; `what` says what was expected (one
    phrase for all, or one per field)."""
    for key, ok in fields.items():
        if key not in d:
            raise ValueError(f"{name}: missing '{key}'")
        if not ok(d[key]):
            raise ValueError(f"{name}: '{key}' is {d[key]!r}, expected {what.get(key) if isinstance(what, dict) else what}")


def _nonneg_int(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _check_contents(ck: dict[str, Any]) -> None:
    """Raises ValueError naming the first thing wrong with a loaded checkpoint dict."""
    missing = [k for k in _TOP if k not in ck]
    if missing:
        raise ValueError(f"missing {', '.join(repr(k) for k in missing)}")
    for k, typ in _TOP.items():
        if not isinstance(ck[k], typ):
            raise ValueError(f"'{k}' is a {type(ck[k]).__name__}, expected a {typ.__name__}")

    try:
        mc = ModelConfig.from_dict(ck["model_config"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"invalid model_config: {e}") from None
    try:
        cfg = resolve(TrainConfig.from_dict(ck["config"]))
    except (ValueError, TypeError) as e:
        raise ValueError(f"invalid stored config: {e}") from None
    # Compared as the networks see them: a config that leaves the precision pair None (this
    # version) and one that states the numbers (earlier ones) both build what model_config says.
    stated = model_config_dict(cfg, mc.c_dim)
    try:
        derived = ModelConfig.from_dict(stated)
    except (ValueError, TypeError) as e:
        raise ValueError(f"the stored config builds no valid model: {e}") from None
    differ = [k for k in stated if getattr(derived, k) != getattr(mc, k)]
    if differ:
        k = differ[0]
        raise ValueError(f"config and model_config disagree on {k} ({getattr(derived, k)!r} vs {getattr(mc, k)!r})")

    _check_fields("progress", ck["progress"], {"cur_nimg": _nonneg_int, "step": _nonneg_int, "tick": _nonneg_int,
                                               "elapsed_s": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                                               and math.isfinite(v) and v >= 0}, "a non-negative number")
    _check_fields("dataset", ck["dataset"], {
        "fingerprint": lambda v: isinstance(v, str), "source": lambda v: isinstance(v, str),
        "num_images": _nonneg_int,
        "label_names": lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v)},
        {"fingerprint": "a string", "source": "a string", "num_images": "a non-negative int",
         "label_names": "a list of strings"})

    rng = ck["rng"]
    if not torch.is_tensor(rng.get("torch_cpu")) or rng["torch_cpu"].dtype != torch.uint8:
        raise ValueError("rng: 'torch_cpu' is not a torch RNG state (a uint8 tensor)")
    cuda = rng.get("torch_cuda", [])
    if not isinstance(cuda, list) or not all(torch.is_tensor(t) and t.dtype == torch.uint8 for t in cuda):
        raise ValueError("rng: 'torch_cuda' is not a list of torch RNG states")
    feeder = rng.get("feeder")
    if not isinstance(feeder, dict):
        raise ValueError("rng: missing the data feeder's state ('feeder')")
    _check_fields("rng.feeder", feeder, {"n": lambda v: _is_int(v) and v > 0, "epoch": _nonneg_int,
                                         "pos": _nonneg_int,
                                         "gen": lambda v: torch.is_tensor(v) and v.dtype == torch.uint8,
                                         "perm": lambda v: torch.is_tensor(v) and v.dim() == 1},
                  "a valid feeder state")
    if len(feeder["perm"]) != feeder["n"] or feeder["pos"] > feeder["n"]:
        raise ValueError(f"rng.feeder: a permutation of {len(feeder['perm'])} images at position "
                         f"{feeder['pos']} does not fit n = {feeder['n']}")

    _check_augment(ck.get("augment"), cfg.aug)

    # The path-length running mean (StyleGAN2Loss.state_dict), which resuming restores.
    if not torch.is_tensor(ck["loss"].get("pl_mean")) or ck["loss"]["pl_mean"].numel() != 1:
        raise ValueError("loss: 'pl_mean' is missing or not a one-element tensor")

    check_split(ck.get("split"))  # per-chunk RNG streams (split.py); absent in older files

    with torch.device("meta"):  # shapes only: no memory, no random initialisation
        G, D = Generator(mc), Discriminator(mc)
    g_ref, d_ref = G.state_dict(), D.state_dict()
    _check_state_dict("G", ck["G"], g_ref)
    _check_state_dict("G_ema", ck["G_ema"], g_ref)
    _check_state_dict("D", ck["D"], d_ref)
    _check_optimizer("opt_G", ck["opt_G"], [p.shape for p in G.parameters()])
    _check_optimizer("opt_D", ck["opt_D"], [p.shape for p in D.parameters()])


def _check_augment(aug: Any, kind: str) -> None:
    """The augmentation state (absent in checkpoints from before it existed): of the config's
    kind, and for ADA a p in [0, 1] and the accumulators resuming restores."""
    if aug is None:
        return
    if not isinstance(aug, dict) or aug.get("kind") != kind:
        got = aug.get("kind") if isinstance(aug, dict) else type(aug).__name__
        raise ValueError(f"augment: state of kind {got!r}, the stored config says aug {kind!r}")
    if kind != "ada":
        return
    ctrl = aug.get("controller")
    if not isinstance(ctrl, dict):
        raise ValueError("augment: missing ADA's controller state")
    for key in ("p", "rt", "sign_sum"):
        v = ctrl.get(key)
        if not torch.is_tensor(v) or v.numel() != 1 or not v.is_floating_point():
            raise ValueError(f"augment.controller: '{key}' is not a one-element float tensor")
    if not 0.0 <= float(ctrl["p"]) <= 1.0:
        raise ValueError(f"augment.controller: p = {float(ctrl['p'])} is outside [0, 1]")
    _check_fields("augment.controller", ctrl, {"count": _nonneg_int, "steps": _nonneg_int, "nimg": _nonneg_int},
                  "a non-negative int")


def validate_checkpoint(ckpt: Any, path: str | os.PathLike = "checkpoint") -> None:
    """Check a loaded checkpoint before anything uses it: our format and version, every entry
    present with the right type, the stored training config and model config valid and
    consistent, progress and dataset fields, RNG and feeder states, and every tensor of G, G_ema
    and D (and every optimizer moment) named and shaped as the networks its model_config builds.
    Raises CheckpointError with one line naming the first problem."""
    p = Path(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a checkpoint of this project (no format '{FORMAT}' entry)",
                              path=p, reason=f"not a checkpoint of this project (no format '{FORMAT}' entry)")
    version = ckpt.get("version")
    if not _is_int(version) or version < 1 or version > VERSION:
        why = f"has format version {version!r}; this package reads 1 to {VERSION}"
        raise CheckpointError(f"{p} {why}", path=p, reason=why)
    try:
        _check_contents(ckpt)
    except ValueError as e:
        why = f"not a valid checkpoint: {e}"
        raise CheckpointError(f"{p} is {why}", path=p, reason=why) from None


def new_checkpoint(**parts: Any) -> dict[str, Any]:
    """The envelope every checkpoint shares, plus the given parts."""
    return {"format": FORMAT, "version": VERSION, "torch": str(torch.__version__),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **parts}


# --------------------------------------------------------------------------------------------
# A run in and out of checkpoints.

class ResumeError(RuntimeError):
    """A checkpoint that cannot continue this run (other dataset, other model)."""


def checkpoint_dict(run: Run) -> dict[str, Any]:
    rng = capture_rng()
    rng["feeder"] = run.feeder.state_dict()
    return new_checkpoint(
        G=run.G.state_dict(), D=run.D.state_dict(), G_ema=run.G_ema.state_dict(),
        opt_G=run.opt_G.state_dict(), opt_D=run.opt_D.state_dict(), loss=dict(run.loss.state_dict()),
        config=run.cfg.to_dict(), model_config=dict(run.model_cfg),
        progress={"cur_nimg": run.cur_nimg, "step": run.step, "tick": run.tick,
                  "elapsed_s": float(run.elapsed_s)},
        rng=rng, dataset=dict(run.dataset_info), augment=run.aug.state_dict(),
        # Every chunk's RNG stream, for a resume on any number of ranks (split.py); gathered from
        # the ranks by the loop before rank 0 writes.
        **({"split": run.split.state_dict()} if run.split is not None else {}))


def save_checkpoint(run: Run, run_dir: Path, keep: int = 0) -> Path:
    path = atomic_save(checkpoint_dict(run), Path(run_dir) / CHECKPOINTS / ckpt_name(run.cur_nimg))
    prune_checkpoints(run_dir, keep, protect=path)
    return path


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two ModelConfig dicts build the same networks. Compared through ModelConfig, not
    as dicts: a checkpoint of an earlier version holds only the fields its training config
    decided (the others were ModelConfig's defaults), and a None in the precision pair means the
    numbers ModelConfig fills in for it."""
    return ModelConfig.from_dict(a) == ModelConfig.from_dict(b)


def restore_run(run: Run, ckpt: dict[str, Any], allow_data_change: bool = False) -> None:
    """Load everything a checkpoint holds into a freshly set-up run (same config)."""
    saved_fp = ckpt["dataset"]["fingerprint"]
    if saved_fp != run.dataset_info["fingerprint"]:
        if not allow_data_change:
            raise ResumeError(
                f"the dataset differs from the one this checkpoint was trained on "
                f"(checkpoint: {ckpt['dataset']['source']!r}, fingerprint {saved_fp[:12]}; now: "
                f"{run.dataset_info['source']!r}, fingerprint {run.dataset_info['fingerprint'][:12]}). "
                f"Pass --allow-data-change to continue on the new data anyway.")
    if not same_model(ckpt["model_config"], run.model_cfg):
        raise ResumeError(f"checkpoint model {ckpt['model_config']} differs from {run.model_cfg}")
    run.G.load_state_dict(ckpt["G"])
    run.D.load_state_dict(ckpt["D"])
    run.G_ema.load_state_dict(ckpt["G_ema"])
    run.opt_G.load_state_dict(ckpt["opt_G"])
    run.opt_D.load_state_dict(ckpt["opt_D"])
    run.loss.load_state_dict(ckpt["loss"])
    if "augment" in ckpt:
        run.aug.load_state_dict(ckpt["augment"])
    elif run.aug.kind != "none":
        # Starting ADA's p from scratch is the silent loss this guards against.
        raise ResumeError(f"the checkpoint holds no augmentation state, this run uses --aug {run.aug.kind}")
    p = ckpt["progress"]
    run.cur_nimg, run.step, run.tick = int(p["cur_nimg"]), int(p["step"]), int(p["tick"])
    run.elapsed_s = float(p["elapsed_s"])
    if saved_fp == run.dataset_info["fingerprint"]:
        run.feeder.load_state_dict(ckpt["rng"]["feeder"])
    restore_rng(ckpt["rng"])
    if run.split is not None:  # this rank's RNG streams, the same or another number of ranks
        run.split.start(run.cfg.seed, run.step, ckpt.get("split"))


# --------------------------------------------------------------------------------------------
# The networks of a checkpoint, as every command that uses one (generate, info) builds them.

def _as_checkpoint(ckpt: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
    return ckpt if isinstance(ckpt, dict) else load_checkpoint(ckpt)


def load_generator(ckpt: dict[str, Any] | str | os.PathLike, *, raw: bool = False,
                   device: str | torch.device = "cpu") -> Generator:
    """The generator of a checkpoint (a loaded dict, a file, or a run directory's newest), on
    `device`, in eval mode with gradients off. G_ema, as StyleGAN tools generate, unless `raw`
    asks for the trained G. A path is loaded and validated first (CheckpointError, one line)."""
    ck = _as_checkpoint(ckpt)
    G = Generator(ModelConfig.from_dict(ck["model_config"]))
    G.load_state_dict(ck["G" if raw else "G_ema"])
    return G.to(device).eval().requires_grad_(False)


def load_discriminator(ckpt: dict[str, Any] | str | os.PathLike, *,
                       device: str | torch.device = "cpu") -> Discriminator:
    """The discriminator of a checkpoint, as load_generator gives its generator."""
    ck = _as_checkpoint(ckpt)
    D = Discriminator(ModelConfig.from_dict(ck["model_config"]))
    D.load_state_dict(ck["D"])
    return D.to(device).eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------
# RNG. Training draws only from torch's global generators (latents, noise, style mixing) and the
# feeder's own generator (data order, flips, fake labels); nothing in this package draws from
# numpy's or Python's global RNG (the folder loader uses its own seeded numpy Generator). So
# only torch's states are saved. Checkpoints of earlier versions also hold "numpy" and
# "python" entries: they still load, and those entries are ignored (restoring them would
# change nothing this package computes, and would overwrite a notebook user's own seeding).

def capture_rng() -> dict[str, Any]:
    """torch's global RNG states as tensors (weights_only-safe)."""
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of capture_rng. CUDA states are restored only when as many devices are visible."""
    torch.set_rng_state(state["torch_cpu"].cpu())
    cuda = state.get("torch_cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def prune_checkpoints(run_dir: str | os.PathLike, keep: int, protect: str | os.PathLike | None = None) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps everything), never `protect`
    (the one just written: after resuming past a broken newer file, the fresh checkpoint is not
    the newest by name, and --keep 1 would otherwise delete it and keep the broken one)."""
    if keep <= 0:
        return
    keep_path = None if protect is None else Path(protect)
    for _, p in list_checkpoints(run_dir)[:-keep]:
        if p != keep_path:
            p.unlink(missing_ok=True)
