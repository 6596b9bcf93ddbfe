"""The OASIS brain MRI slices in the "keras_png_slices_data" layout.

    keras_png_slices_data/
        keras_png_slices_train/       case_001_slice_0.nii.png ...   <- MRI slices (used)
        keras_png_slices_validate/                                   <- used
        keras_png_slices_test/                                       <- used
        keras_png_slices_seg_train/   segmentation masks             <- NEVER used
        keras_png_slices_seg_validate/, keras_png_slices_seg_test/   <- NEVER used

All three image splits are training data for a GAN. The `_seg_` folders hold label masks whose
images would silently poison a generator, so only the three exact image-folder names are read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .base import DatasetError, ImageDataset
from .folder import load_image_files, require_images, select_subset
from .scan import child_dirs, is_image_file, walk_files

SPLITS = ("train", "validate", "test")
SPLIT_DIRS = tuple(f"keras_png_slices_{s}" for s in SPLITS)
MAX_SEARCH_DIRS = 64


def find_oasis_root(path: Path) -> Optional[Path]:
    """The folder holding keras_png_slices_{train,validate,test}: `path` itself, or a
    subfolder up to two levels down (e.g. the root of the unzipped archive). None if absent."""
    level = [path]
    for _ in range(3):
        for d in level:
            names = {c.name for c in child_dirs(d)}
            if names.intersection(SPLIT_DIRS):
                return d
        level = [c for d in level for c in child_dirs(d)]
        if len(level) > MAX_SEARCH_DIRS:  # a big generic tree: not an unzipped OASIS archive
            return None
    return None


def oasis_files(root: Path) -> list[Path]:
    """Image files of the three image splits, in split order (train, validate, test)."""
    files: list[Path] = []
    for name in SPLIT_DIRS:
        split = root / name
        if split.is_dir():
            files.extend(p for p in walk_files(split) if is_image_file(p))
    return files


def open_oasis(
    root: Path,
    resolution: int,
    channels: int,
    *,
    fit: str = "pad",
    seed: int = 0,
    max_images: Optional[int] = None,
    progress: bool = True,
) -> ImageDataset:
    """All OASIS image splits under `root`, unlabeled: uint8 [N, channels, resolution, resolution]."""
    files = oasis_files(root)
    if not files:
        raise DatasetError(
            f"OASIS layout at {root} has no images: expected PNG files in "
            + ", ".join(SPLIT_DIRS)
        )
    files = [files[i] for i in select_subset(len(files), max_images, seed)]
    loaded = load_image_files(files, resolution, channels, fit=fit, progress=progress,
                              desc="loading OASIS slices")
    require_images(loaded, root, len(files), "OASIS image")
    n = loaded.images.shape[0]
    return ImageDataset(loaded.images, skipped=loaded.skipped,
                        source=f"OASIS keras_png_slices_data at {root} ({n} images)")
