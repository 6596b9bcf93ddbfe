"""Facts about a 3-D brain volume shared by the NIfTI source and the MNI152 set: orientation,
intensity normalisation, which axial slices hold brain, and the square field of view.

Arrays are indexed [x, y, z] in RAS+ orientation (x: left->right, y: posterior->anterior,
z: inferior->superior), so axial slices are `volume[:, :, k]`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A voxel is tissue when its normalised intensity exceeds this fraction of the robust maximum.
# Background (air, or zeros of a skull-stripped scan) sits far below; grey matter on T1 far above.
TISSUE_LEVEL = 0.1
# An axial slice "contains brain" when its tissue area is at least this fraction of the largest
# slice's area. Relative to the volume, so it does not depend on the field of view; it drops the
# caps at the top of the head and the last sliver of cerebellum, which look like noise blobs.
MIN_RELATIVE_AREA = 0.2
# ...and at least this fraction of the slice, so a volume of pure noise specks yields nothing.
MIN_ABSOLUTE_AREA = 0.005
# Margin around the brain's bounding box, as a fraction of its larger side, on each side.
FOV_MARGIN = 0.05
# Intensity percentiles: the background level, and the robust maximum among voxels above it.
LOW_PERCENTILE = 1.0
HIGH_PERCENTILE = 99.5
# Percentiles are estimated on at most this many voxels (exact enough, and 20x faster on 256^3).
PERCENTILE_SAMPLES = 1 << 20


def normalise_volume(data: np.ndarray) -> np.ndarray:
    """Maps a volume's intensities to [0, 1] per volume: the background level -> 0 and the
    99.5th percentile of the voxels above it -> 1, clipped. Robust to a few hot voxels.

    data: float [X, Y, Z] (non-finite values are treated as background). Returns float32 [X, Y, Z],
    all zeros if the volume is constant.
    """
    data = np.nan_to_num(np.asarray(data, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    flat = data.ravel()
    sample = flat[:: max(1, flat.size // PERCENTILE_SAMPLES)]
    lo = float(np.percentile(sample, LOW_PERCENTILE))
    above = sample[sample > lo]
    if above.size == 0:
        return np.zeros_like(data)
    hi = float(np.percentile(above, HIGH_PERCENTILE))
    if hi <= lo:
        return np.zeros_like(data)
    out = (data - lo) / (hi - lo)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def brain_slices(norm: np.ndarray) -> np.ndarray:
    """Which axial slices contain brain. norm: float [X, Y, Z] in [0, 1]; returns bool [Z]."""
    area = (norm > TISSUE_LEVEL).sum(axis=(0, 1))
    if area.size == 0:
        return np.zeros(0, dtype=bool)
    need = max(MIN_RELATIVE_AREA * float(area.max()), MIN_ABSOLUTE_AREA * norm.shape[0] * norm.shape[1], 1.0)
    return area >= need


@dataclass
class FieldOfView:
    """A square axial field of view around the brain, in voxel coordinates of the volume.

    center_x, center_y: voxel coordinates of the square's centre; side_mm: its side in mm.
    """

    center_x: float
    center_y: float
    side_mm: float


def brain_field_of_view(norm: np.ndarray, keep: np.ndarray, zooms: tuple[float, float, float]) -> FieldOfView:
    """The square (plus margin) enclosing the tissue of all kept slices.

    norm: float [X, Y, Z]; keep: bool [Z] (at least one True); zooms: voxel size (x, y, z) in mm.
    """
    tissue = (norm[:, :, keep] > TISSUE_LEVEL).any(axis=2)
    xs = np.flatnonzero(tissue.any(axis=1))
    ys = np.flatnonzero(tissue.any(axis=0))
    wx = (xs[-1] - xs[0] + 1) * zooms[0]
    wy = (ys[-1] - ys[0] + 1) * zooms[1]
    side = max(wx, wy) * (1.0 + 2.0 * FOV_MARGIN)
    # Plain floats: numpy scalars would turn later torch arithmetic into slow numpy round trips.
    return FieldOfView(float(xs[0] + xs[-1]) / 2.0, float(ys[0] + ys[-1]) / 2.0, float(side))


def slice_bands(z: np.ndarray, z_lo: float, z_hi: float) -> np.ndarray:
    """Band labels (0 inferior, 1 middle, 2 superior): thirds of [z_lo, z_hi].
    z: float [N] slice positions; returns int64 [N]."""
    rel = (np.asarray(z, dtype=np.float64) - z_lo) / max(z_hi - z_lo, 1e-6)
    return np.clip(np.floor(rel * 3.0), 0, 2).astype(np.int64)


BAND_NAMES = ["inferior", "middle", "superior"]
