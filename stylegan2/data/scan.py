"""Finding the files of a dataset on disk.

Hidden files and folders (".DS_Store", ".ipynb_checkpoints", macOS "._x.png" resource forks) and
"__MACOSX" folders left by unzipping on a Mac are never dataset content: the Kaggle copies of
OASIS and ADNI contain some of them, and counting them as "unreadable images" would only alarm.
"""
from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_image_file(path: Path) -> bool:
    """True for names ending in a PNG/JPEG/BMP/TIFF suffix (case-insensitive)."""
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def is_nifti_file(path: Path) -> bool:
    """True for names ending in .nii or .nii.gz (case-insensitive)."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _ignored(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def walk_files(root: Path) -> list[Path]:
    """All non-hidden files under `root`, recursively, sorted so the order never depends on the
    file system (it feeds subset selection and the cache key)."""
    # Sorted by path components, which is how Paths compare, but on plain tuples built once per
    # folder: comparing Path objects cost about a second for OASIS's 11k files, a third of what
    # a cached start may take.
    found: list[tuple[tuple[str, ...], str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
        parts = Path(dirpath).relative_to(root).parts
        found.extend(((*parts, f), dirpath, f) for f in filenames if not _ignored(f))
    found.sort(key=lambda entry: entry[0])
    return [Path(dirpath, f) for _, dirpath, f in found]


def child_dirs(root: Path) -> list[Path]:
    """Immediate, non-hidden subfolders of `root`, sorted."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return []
    return [Path(e.path) for e in entries if not _ignored(e.name) and e.is_dir()]


def find_child(root: Path, name: str) -> Path | None:
    """The subfolder of `root` called `name`, compared case-insensitively, or None."""
    for d in child_dirs(root):
        if d.name.lower() == name.lower():
            return d
    return None
