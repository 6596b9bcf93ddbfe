"""The one loop that turns a folder of image files into a dataset, and the generic folder source.

A source that is a folder of images (a plain folder, OASIS, ADNI) only decides which files to
read and what they mean: it returns an `ImageListing`, and `open_listing` does the rest (subset,
parallel decoding, skipping and counting bad files, the mixed-size report, labels of the files
that decoded, the description). So every layout behaves the same way, and caching (keyed on the
listing's files) sits in one place, in front of this loop.
"""
from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from .base import DatasetError, ImageDataset, report, skipped_message
from .imageops import DECODE_ERRORS, load_image_file
from .scan import IMAGE_SUFFIXES, is_image_file, walk_files

# PIL releases the GIL while decoding and resizing, so a few threads keep every core busy.
MAX_DECODE_THREADS = 8
# The mixed-size report names the most common source sizes, then counts the rest: a folder of
# photos can hold hundreds of sizes and the report must stay one readable line.
MAX_SIZES_NAMED = 4


@dataclass
class ImageListing:
    """What an image-folder layout reads and how it describes itself.

    root: the layout's folder. files: image paths in load order. labels: one class index per
    file (None if the layout is unlabeled), indexing `label_names`. title: the start of the
    dataset's description ("OASIS keras_png_slices_data at"). noun: what one file is, for
    progress bars and errors ("OASIS slice").
    """

    root: Path
    files: list[Path]
    title: str
    noun: str = "image"
    labels: Optional[list[int]] = None
    label_names: list[str] = field(default_factory=list)


def select_subset(n: int, max_images: Optional[int], seed: int) -> np.ndarray:
    """Indices (sorted, int64 [min(n, max_images)]) of a seeded random subset of range(n).

    Random rather than the first `max_images`, so a subset of a class-sorted layout (ADNI) keeps
    every class.
    """
    if max_images is None or max_images >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_images, replace=False)).astype(np.int64)


@dataclass
class LoadedFiles:
    """Result of decoding a list of files.

    images: uint8 [num_ok, C, R, R]; kept: int64 [num_ok] indices into the input list of the
    files that decoded; skipped: count of files that did not; first_error: "name: reason" of
    the first failure, for the report; sizes: how many decoded files had each (width, height).
    """

    images: np.ndarray
    kept: np.ndarray
    skipped: int
    first_error: Optional[str]
    sizes: Counter = field(default_factory=Counter)


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
    sizes: Counter = Counter()
    first_error: Optional[str] = None

    def decode(path: Path) -> tuple[np.ndarray, tuple[int, int]] | str:
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
                out[i], size = result
                sizes[size] += 1
                ok[i] = True
            bar.update(1)
    kept = np.flatnonzero(ok)
    images = out if kept.size == len(files) else out[kept]
    return LoadedFiles(images, kept, len(files) - int(kept.size), first_error, sizes)


def resized_message(sizes: Counter, resolution: int, where: str) -> Optional[str]:
    """One line saying how many images of a mixed-size set were resized, from which sizes
    (width x height); None when all images share one size (resizing them all alike is what a
    resolution asks for, nothing to report)."""
    if len(sizes) < 2:
        return None
    target = (resolution, resolution)
    resized = sorted(((n, s) for s, n in sizes.items() if s != target), key=lambda t: (-t[0], t[1]))
    named = ", ".join(f"{n} from {w}x{h}" for n, (w, h) in resized[:MAX_SIZES_NAMED])
    rest = resized[MAX_SIZES_NAMED:]
    if rest:
        named += f", {sum(n for n, _ in rest)} from {len(rest)} other sizes"
    count = sum(n for n, _ in resized)
    return (f"images under {where} differ in size: resized {count} of {sum(sizes.values())} to "
            f"{resolution}x{resolution} ({named})")


def open_listing(
    listing: ImageListing,
    resolution: int,
    channels: int,
    *,
    fit: str = "pad",
    seed: int = 0,
    max_images: Optional[int] = None,
    progress: bool = True,
) -> ImageDataset:
    """Decodes the files of `listing` (a seeded `max_images` subset if given) into uint8
    [N, channels, resolution, resolution], with int64 labels [N] for a labeled layout.

    Files that cannot be decoded are skipped, counted and reported in one line; a set of mixed
    sizes is reported in one line too. DatasetError if no file decodes.
    """
    idx = select_subset(len(listing.files), max_images, seed)
    files = [listing.files[i] for i in idx]
    loaded = load_image_files(files, resolution, channels, fit=fit, progress=progress,
                              desc=f"loading {listing.noun}s")
    where = str(listing.root)
    if loaded.images.shape[0] == 0:
        reason = f" (first error: {loaded.first_error})" if loaded.first_error else ""
        raise DatasetError(f"no readable image in {where}: all {len(files)} {listing.noun} files "
                           f"failed to decode{reason}")
    notes: list[str] = []
    if loaded.skipped:
        report(skipped_message(loaded.skipped, len(files), where, loaded.first_error), notes)
    message = resized_message(loaded.sizes, resolution, where)
    if message:
        report(message, notes)
    labels = None
    counts = ""
    if listing.labels is not None:
        labels = np.asarray(listing.labels, dtype=np.int64)[idx][loaded.kept]
        counts = ": " + ", ".join(f"{name} {int((labels == i).sum())}"
                                  for i, name in enumerate(listing.label_names))
    n = loaded.images.shape[0]
    return ImageDataset(loaded.images, labels, listing.label_names if labels is not None else None,
                        skipped=loaded.skipped, notes=notes,
                        source=f"{listing.title} {listing.root} ({n} images{counts})")


def list_image_folder(root: Path) -> ImageListing:
    """Image files under `root`, recursively, sorted, unlabeled; DatasetError if there are none."""
    files = [p for p in walk_files(root) if is_image_file(p)]
    if not files:
        raise DatasetError(
            f"no images found in {root}: expected image files ({', '.join(IMAGE_SUFFIXES)}) "
            "in it or its subfolders, an OASIS keras_png_slices_data folder, an ADNI AD_NC "
            "folder, or NIfTI volumes (.nii/.nii.gz)"
        )
    return ImageListing(root, files, title="image folder")
