"""Loading a list of image files into memory, and the generic "folder of images" source.

OASIS and ADNI are folders of images with a known layout; they choose which files to read and
hand the list to `load_image_files`, so decoding, skipping and progress are shared.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from .base import DatasetError, ImageDataset, warn_skipped
from .imageops import DECODE_ERRORS, load_image_file
from .scan import IMAGE_SUFFIXES, is_image_file, walk_files

# PIL releases the GIL while decoding and resizing, so a few threads keep every core busy.
MAX_DECODE_THREADS = 8


def select_subset(n: int, max_images: Optional[int], seed: int) -> np.ndarray:
    """Indices (sorted, int64 [min(n, max_images)]) of a seeded random subset of range(n).

    Random rather than the first `max_images`, so a subset of a class-sorted layout (ADNI) keeps
    every class.
    """
    if max_images is None or max_images >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_images, replace=False)).astype(np.int64)


class LoadedFiles:
    """Result of decoding a list of files.

    images: uint8 [num_ok, C, R, R]; kept: int64 [num_ok] indices into the input list of the
    files that decoded; skipped: count of files that did not; first_error: "name: reason" of
    the first failure, for the warning.
    """

    def __init__(self, images: np.ndarray, kept: np.ndarray, skipped: int, first_error: Optional[str]):
        self.images = images
        self.kept = kept
        self.skipped = skipped
        self.first_error = first_error


def load_image_files(
    files: Sequence[Path],
    resolution: int,
    channels: int,
    *,
    fit: str = "pad",
    progress: bool = True,
    desc: str = "loading images",
) -> LoadedFiles:
    """Decodes `files` in parallel into uint8 [num_ok, channels, resolution, resolution],
    skipping (and counting) files that cannot be decoded. Order follows `files`."""
    out = np.empty((len(files), channels, resolution, resolution), dtype=np.uint8)
    ok = np.zeros(len(files), dtype=bool)
    first_error: Optional[str] = None

    def decode(path: Path) -> np.ndarray | str:
        try:
            return load_image_file(path, resolution, channels, fit)
        except DECODE_ERRORS as e:
            return f"{path.name}: {type(e).__name__}: {e}"

    workers = max(1, min(MAX_DECODE_THREADS, os.cpu_count() or 1, len(files)))
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(files), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for i, result in enumerate(pool.map(decode, files, chunksize=16)):
            if isinstance(result, str):
                first_error = first_error or result
            else:
                out[i] = result
                ok[i] = True
            bar.update(1)
    kept = np.flatnonzero(ok)
    images = out if kept.size == len(files) else out[kept]
    return LoadedFiles(images, kept, len(files) - int(kept.size), first_error)


def require_images(loaded: LoadedFiles, root: Path, total: int, what: str) -> None:
    """Raises DatasetError if nothing decoded; otherwise warns about skipped files."""
    if loaded.images.shape[0] == 0:
        reason = f" (first error: {loaded.first_error})" if loaded.first_error else ""
        raise DatasetError(
            f"no readable image in {root}: all {total} {what} files failed to decode{reason}"
        )
    warn_skipped(loaded.skipped, total, str(root), loaded.first_error)


def list_image_files(root: Path) -> list[Path]:
    """Image files under `root`, recursively, sorted; DatasetError if there are none."""
    files = [p for p in walk_files(root) if is_image_file(p)]
    if not files:
        raise DatasetError(
            f"no images found in {root}: expected image files ({', '.join(IMAGE_SUFFIXES)}) "
            "in it or its subfolders, an OASIS keras_png_slices_data folder, an ADNI AD_NC "
            "folder, or NIfTI volumes (.nii/.nii.gz)"
        )
    return files


def open_image_folder(
    root: Path,
    resolution: int,
    channels: int,
    *,
    fit: str = "pad",
    seed: int = 0,
    max_images: Optional[int] = None,
    progress: bool = True,
) -> ImageDataset:
    """A folder of images (recursive), unlabeled: uint8 [N, channels, resolution, resolution]."""
    files = list_image_files(root)
    files = [files[i] for i in select_subset(len(files), max_images, seed)]
    loaded = load_image_files(files, resolution, channels, fit=fit, progress=progress)
    require_images(loaded, root, len(files), "image")
    n = loaded.images.shape[0]
    return ImageDataset(loaded.images, skipped=loaded.skipped,
                        source=f"image folder {root} ({n} images)")
