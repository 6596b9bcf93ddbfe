"""NIfTI volumes (.nii, .nii.gz): every axial slice that contains brain becomes one image.

Each volume is reoriented to RAS+ (so "axial" means the same thing for every scanner), its
intensities normalised with per-volume percentiles, and the slices with enough tissue cut out
with one square field of view around the brain (physical mm, so anisotropic voxels keep the true
aspect ratio) and resampled to the target resolution with an antialiasing filter. Images show
anterior at the top.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from .base import DatasetError, ImageDataset, report, skipped_message
from .folder import select_subset
from .imageops import float_to_uint8, resize_float
from .scan import is_nifti_file, walk_files
from .volume import brain_field_of_view, brain_slices, normalise_volume


class NotBrainVolume(ValueError):
    """A volume that could be read but has no slice with brain (or is not 3-D)."""


def read_volume(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Reads a NIfTI file as float32 [X, Y, Z] in RAS+ orientation, plus voxel size in mm.

    4-D files (e.g. fMRI) contribute their first volume.
    """
    import nibabel as nib  # nibabel is light, but only this source needs it

    img = nib.as_closest_canonical(nib.load(str(path)))
    shape = img.shape
    if len(shape) == 3:
        data = np.asarray(img.dataobj, dtype=np.float32)
    elif len(shape) == 4 or (len(shape) > 4 and all(s == 1 for s in shape[4:])):
        data = np.asarray(img.dataobj[:, :, :, 0], dtype=np.float32).reshape(shape[:3])
    else:
        raise NotBrainVolume(f"expected a 3-D or 4-D volume, got shape {shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if any(not np.isfinite(z) or z <= 0 for z in zooms):
        zooms = (1.0, 1.0, 1.0)  # a broken header: square voxels is the only sane guess
    return data, zooms  # type: ignore[return-value]


def volume_to_slices(data: np.ndarray, zooms: tuple[float, float, float], resolution: int) -> np.ndarray:
    """The brain-containing axial slices of one volume as uint8 [num_slices, resolution, resolution].

    data: float [X, Y, Z] in RAS+; zooms: voxel size (x, y, z) in mm. Raises NotBrainVolume if no
    slice contains brain.
    """
    norm = normalise_volume(data)
    keep = brain_slices(norm)
    if not keep.any():
        raise NotBrainVolume("no axial slice contains brain (the volume is empty or constant)")
    fov = brain_field_of_view(norm, keep, zooms)
    nx, ny = norm.shape[0], norm.shape[1]
    # In the displayed slice, column = x and row = flipped y (anterior at the top).
    half_cols = fov.side_mm / 2.0 / zooms[0]
    half_rows = fov.side_mm / 2.0 / zooms[1]
    pad = int(np.ceil(max(half_cols, half_rows))) + 1  # PIL needs the box inside the image
    col_c = fov.center_x + 0.5 + pad
    row_c = (ny - 1 - fov.center_y) + 0.5 + pad
    box = (col_c - half_cols, row_c - half_rows, col_c + half_cols, row_c + half_rows)
    out = np.empty((int(keep.sum()), resolution, resolution), dtype=np.uint8)
    for i, k in enumerate(np.flatnonzero(keep)):
        sl = norm[:, ::-1, k].T  # [Y, X], anterior row first
        padded = np.zeros((ny + 2 * pad, nx + 2 * pad), dtype=np.float32)
        padded[pad:pad + ny, pad:pad + nx] = sl
        out[i] = float_to_uint8(resize_float(padded, resolution, box))
    return out


# What reading a damaged or foreign file may raise: nibabel's ImageFileError is a plain
# Exception subclass, truncated gzip streams give EOFError or zlib.error.
def _read_errors() -> tuple[type[BaseException], ...]:
    from nibabel.filebasedimages import ImageFileError  # here: nibabel is needed only once NIfTI files are read

    return (OSError, EOFError, ValueError, zlib.error, ImageFileError, NotBrainVolume)


def list_nifti_files(path: Path) -> list[Path]:
    """The NIfTI files at `path` (a file, or a folder searched recursively), sorted."""
    if path.is_file():
        return [path]
    return [p for p in walk_files(path) if is_nifti_file(p)]


def open_nifti(
    path: Path,
    resolution: int,
    channels: int,
    *,
    seed: int = 0,
    max_images: Optional[int] = None,
    progress: bool = True,
    files: Optional[Sequence[Path]] = None,
) -> ImageDataset:
    """Axial brain slices of every NIfTI volume at `path`, unlabeled:
    uint8 [N, channels, resolution, resolution]. Unreadable volumes (and volumes without brain)
    are skipped and counted."""
    files = list(files) if files is not None else list_nifti_files(path)
    if not files:
        raise DatasetError(f"no NIfTI volumes found in {path}: expected .nii or .nii.gz files")
    errors = _read_errors()
    parts: list[np.ndarray] = []
    skipped, first_error = 0, None
    for f in tqdm(files, desc="loading NIfTI volumes", unit="vol", disable=not progress, leave=False):
        try:
            data, zooms = read_volume(f)
            parts.append(volume_to_slices(data, zooms, resolution))
        except errors as e:
            skipped += 1
            first_error = first_error or f"{f.name}: {type(e).__name__}: {e}"
    if not parts:
        raise DatasetError(f"no usable NIfTI volume in {path}: all {len(files)} volumes failed "
                           f"(first error: {first_error})")
    notes: list[str] = []
    if skipped:
        report(skipped_message(skipped, len(files), str(path), first_error), notes)
    slices = np.concatenate(parts, axis=0)
    slices = slices[select_subset(slices.shape[0], max_images, seed)]
    images = np.ascontiguousarray(np.repeat(slices[:, None], channels, axis=1))
    return ImageDataset(images, skipped=skipped, notes=notes,
                        source=f"NIfTI volumes at {path} ({len(parts)} volumes, "
                               f"{images.shape[0]} axial slices)")
