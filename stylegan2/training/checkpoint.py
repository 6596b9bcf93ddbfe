"""Checkpoints: atomic writes, weights_only-safe contents, and the RNG state needed to resume exactly.

A checkpoint is a plain dict of tensors, dicts, lists, ints, floats and strings, so
`torch.load(path, weights_only=True)` reads it and loading never runs code. Layout:

    format, version, created, torch
    G, D, G_ema          state dicts
    opt_G, opt_D         optimizer state dicts
    loss                 the loss's own state (e.g. {"pl_mean": tensor})
    config               TrainConfig.to_dict()
    model_config         the networks' ModelConfig as a dict
    progress             {"cur_nimg", "step", "tick", "elapsed_s"}
    rng                  {"torch_cpu", "torch_cuda", "numpy", "python", "feeder"}
    dataset              {"fingerprint", "source", "num_images", "label_names"}
"""
from __future__ import annotations

import os
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "stylegan2-brain-mri"
VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{6})(?:\.(\d{3}))?\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, unreadable, or from another dataset/format."""


def ckpt_tag(cur_nimg: int) -> str:
    """File-name tag for a point in training: whole kimg from 1 kimg on ("000004" for 4000 to
    4999 images, as StyleGAN tools name snapshots), images below that ("000000.064" for 64), so
    short test runs still get one file per snapshot."""
    kimg, rest = divmod(int(cur_nimg), 1000)
    return f"{kimg:06d}" if kimg > 0 else f"{kimg:06d}.{rest:03d}"


def ckpt_name(cur_nimg: int) -> str:
    return f"ckpt-{ckpt_tag(cur_nimg)}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(cur_nimg, path) of every checkpoint in a run directory, oldest first."""
    d = Path(run_dir) / "checkpoints"
    found = []
    if d.is_dir():
        for p in d.iterdir():
            if m := _NAME.match(p.name):
                found.append((int(m.group(1)) * 1000 + int(m.group(2) or 0), p))
    return sorted(found)


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
    one; the temporary file is removed when the save fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with weights_only=True (never runs code) and check that it is one of ours."""
    p = find_checkpoint(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {p}: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a stylegan2 checkpoint of this package")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{p} has format version {ckpt['version']}; this package reads <= {VERSION}")
    ckpt["path"] = str(p)
    return ckpt


def new_checkpoint(**parts: Any) -> dict[str, Any]:
    """The envelope every checkpoint shares, plus the given parts."""
    return {"format": FORMAT, "version": VERSION, "torch": str(torch.__version__),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **parts}


def capture_rng() -> dict[str, Any]:
    """Global RNG states as tensors and lists (weights_only-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, pystate, gauss_next = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "state": list(pystate),
                   "gauss_next": None if gauss_next is None else float(gauss_next)},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of capture_rng. CUDA states are restored only when as many devices are visible."""
    torch.set_rng_state(state["torch_cpu"].cpu())
    cuda = state.get("torch_cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (keep <= 0 keeps everything)."""
    if keep <= 0:
        return
    for _, p in list_checkpoints(run_dir)[:-keep]:
        p.unlink(missing_ok=True)
