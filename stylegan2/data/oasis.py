"""The OASIS brain MRI slices in the "keras_png_slices_data" layout.

    keras_png_slices_data/
        keras_png_slices_train/       case_001_slice_0.nii.png ...   <- MRI slices (used)
        keras_png_slices_validate/                                   <- used
        keras_png_slices_test/                                       <- used
        keras_png_slices_seg_train/   segmentation masks             <- NEVER used
        keras_png_slices_seg_validate/, keras_png_slices_seg_test/   <- NEVER used

By default all three image splits are read; `splits` picks some (training on "train" keeps
"validate" for the metrics' held-out reference, see splits.py). The `_seg_` folders hold label masks whose
images would silently poison a generator, so only the three exact image-folder names are read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .base import DatasetError
from .folder import ImageListing
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


def oasis_splits(root: Path) -> tuple[str, ...]:
    """The image splits present under an OASIS root, in SPLITS order."""
    return tuple(s for s, name in zip(SPLITS, SPLIT_DIRS) if (root / name).is_dir())


def list_oasis(root: Path, splits: Optional[tuple[str, ...]] = None) -> ImageListing:
    """The image files of the image splits under `root` (all three, or those named in `splits`),
    in split order (train, validate, test), unlabeled; DatasetError if there are none."""
    chosen = SPLITS if splits is None else splits
    files: list[Path] = []
    for s, name in zip(SPLITS, SPLIT_DIRS):
        split = root / name
        if s in chosen and split.is_dir():
            files.extend(p for p in walk_files(split) if is_image_file(p))
    if not files:
        raise DatasetError(
            f"OASIS layout at {root} has no images: expected PNG files in "
            + ", ".join(n for s, n in zip(SPLITS, SPLIT_DIRS) if s in chosen)
        )
    title = "OASIS keras_png_slices_data at" if splits is None else \
        f"OASIS keras_png_slices_data ({'+'.join(splits)} split) at"
    return ImageListing(root, files, title=title, noun="OASIS slice")
