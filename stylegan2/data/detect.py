"""Deciding which source a dataset spec is: the built-in set, or a path to OASIS, ADNI, NIfTI
volumes or a plain image folder."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from .adni import find_adni_root
from .base import DatasetError, DatasetWarning
from .oasis import find_oasis_root
from .scan import is_image_file, is_nifti_file, walk_files

# The name of the built-in dataset (warped MNI152 slices, see mni152.py), as users type it; the
# command line imports it from here.
BUILTIN = "mni152"
LAYOUTS = ("oasis", "adni", "nifti", "folder")
# Every kind of dataset, e.g. for choosing what to list or clear in the cache.
KINDS = (BUILTIN, *LAYOUTS)

EXPECTED = (f"'{BUILTIN}' (the built-in set), a folder of PNG/JPEG images, an OASIS "
            "keras_png_slices_data folder, an ADNI AD_NC folder, or NIfTI volumes (.nii/.nii.gz)")


def is_builtin(spec: object) -> bool:
    """True if `spec` names the built-in dataset (any case, surrounding blanks ignored)."""
    return isinstance(spec, str) and spec.strip().lower() == BUILTIN


@dataclass
class Layout:
    """kind: one of LAYOUTS; root: the folder (or NIfTI file) the source reads from."""

    kind: str
    root: Path


def detect_layout(path: Path) -> Layout:
    """Finds the layout of the dataset at `path`; DatasetError if it cannot be one.

    Known layouts are recognised by their folder names (they may sit up to two levels below
    `path`); otherwise a folder of NIfTI volumes if it holds .nii/.nii.gz files and no images,
    otherwise a generic image folder.
    """
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist; expected {EXPECTED}")
    if path.is_file():
        if is_nifti_file(path):
            return Layout("nifti", path)
        raise DatasetError(f"dataset path {path} is a file; expected {EXPECTED}")
    oasis = find_oasis_root(path)
    if oasis is not None:
        return Layout("oasis", oasis)
    adni = find_adni_root(path)
    if adni is not None:
        return Layout("adni", adni)
    files = walk_files(path)
    if not files:
        raise DatasetError(f"dataset folder {path} is empty; expected {EXPECTED}")
    n_images = sum(1 for f in files if is_image_file(f))
    n_nifti = sum(1 for f in files if is_nifti_file(f))
    if n_nifti and not n_images:
        return Layout("nifti", path)
    if n_nifti:
        warnings.warn(f"{path} holds both images and {n_nifti} NIfTI volumes; using the "
                      f"{n_images} images and ignoring the volumes", DatasetWarning, stacklevel=3)
    return Layout("folder", path)
