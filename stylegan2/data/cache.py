"""An on-disk cache of built datasets (.npz), keyed by everything that determines their pixels.

Building the MNI152 set or slicing a folder of NIfTI volumes costs seconds to minutes; reading
the result back costs a fraction of that. The folder is $STYLEGAN2_CACHE, else
~/.cache/stylegan2, with datasets in its `datasets/` subfolder. Files are written to a temporary
name and renamed, so a killed process or two processes building at once never leave a torn file;
a cache that cannot be written (read-only home, full disk) only costs a warning.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .base import DatasetWarning, ImageDataset

CACHE_ENV = "STYLEGAN2_CACHE"
# Bump when the way any source turns files into pixels changes, so stale caches are not reused.
CACHE_FORMAT = 1
# zlib level 1: brain slices are mostly black background and compress about 3x even at the
# fastest level; level 6 would triple the write time for a few percent.
COMPRESS_LEVEL = 1


def default_cache_dir() -> Path:
    """$STYLEGAN2_CACHE if set, else ~/.cache/stylegan2."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "stylegan2"


def cache_file(cache_dir: Optional[str | os.PathLike], kind: str, params: dict[str, Any]) -> Path:
    """The cache path for a dataset of `kind` built with `params` (JSON-serialisable)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    blob = json.dumps({"format": CACHE_FORMAT, "kind": kind, **params}, sort_keys=True, default=str)
    key = hashlib.sha256(blob.encode()).hexdigest()[:20]
    res, ch = params.get("resolution", "x"), params.get("channels", "x")
    return root / "datasets" / f"{kind}-{res}px-{ch}ch-{key}.npz"


def load_cached(path: Path) -> Optional[ImageDataset]:
    """The dataset stored at `path`, or None if there is none (or it is unreadable)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            labels = z["labels"] if bool(z["has_labels"]) else None
            return ImageDataset(
                z["images"], labels, [str(s) for s in z["label_names"]],
                skipped=int(z["skipped"]), source=str(z["source"]),
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        warnings.warn(f"ignoring unreadable dataset cache {path} ({e}); rebuilding", DatasetWarning,
                      stacklevel=2)
        return None


def save_cached(path: Path, ds: ImageDataset) -> None:
    """Writes `ds` to `path` atomically; warns (does not raise) if the cache is not writable."""
    arrays = {
        "images": ds.images,
        "labels": ds.labels if ds.labels is not None else np.zeros(0, dtype=np.int64),
        "has_labels": np.array(ds.labels is not None),
        "label_names": np.array(ds.label_names, dtype=np.str_),
        "skipped": np.array(ds.skipped, dtype=np.int64),
        "source": np.array(ds.source, dtype=np.str_),
    }
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f, \
                zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, compresslevel=COMPRESS_LEVEL) as zf:
            for name, arr in arrays.items():
                # force_zip64: the images of a large set exceed the 2 GiB plain-zip limit
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        warnings.warn(f"could not write dataset cache {path} ({e}); the dataset will be rebuilt "
                      f"next time (set {CACHE_ENV} to a writable folder)", DatasetWarning, stacklevel=2)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
