"""The built-in default dataset: warped axial slices of the MNI152 T1 template.

The skull-stripped MNI152 (ICBM 2009a, 1 mm) T1 template ships inside the nilearn package, so
this set needs no download and `python -m stylegan2 train` works on a fresh machine. One template
gives many distinct training images because every image is an oblique axial cut through the
volume at a random height, seen through a random smooth deformation and a random intensity
response:

* geometry: height uniform over the brain (stratified, so every band is covered), tilt of the
  cutting plane (pitch/roll, as head positioning varies between scans), in-plane rotation,
  scale, aspect and shift, plus a smooth in-plane displacement field (cubic B-spline over a
  coarse grid: bends gyri and ventricles by a few mm) and a smooth through-plane one;
* intensity: gamma (changes grey/white matter contrast), global gain and a smooth
  multiplicative bias field (the receive-coil inhomogeneity every real scan has).

Labels are the slice band of the cut's centre: inferior / middle / superior thirds of the brain.
Everything is drawn up front from one seeded generator, so the pixels depend only on the seed,
the count and the resolution (not on chunk sizes or thread counts).
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..torch_settings import torch_settings
from .base import DatasetError, ImageDataset
from .nifti import read_volume
from .volume import BAND_NAMES, brain_field_of_view, brain_slices, normalise_volume, slice_bands
from .warp import (BASE_MARGIN, WarpStrength, antialias_sigmas, base_counts, draw_base, draw_images,
                   gaussian_blur3d, render_base, shrink_volume, warp_images)

DEFAULT_COUNT = 4096
TEMPLATE_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
# Bump when anything here or in warp.py changes the pixels (part of the cache key).
GENERATOR_VERSION = 1
# Template intensities are normalised so the robust maximum (white matter) is 1; scaled by this,
# white matter lands near 230 of 255 like in typical 8-bit MRI slices, leaving headroom for the
# random gain and bias field instead of clipping the brightest tissue flat.
WHITE_LEVEL = 0.9
# 3-D sampling budget (pixels of base slices): above it, images share base slices. ~4 s at
# ~130 ns per pixel on one core.
BASE_BUDGET_PIXELS = 1 << 25
# Pixels per batch of tensor work: big enough to amortise per-op overhead, small enough that the
# temporaries (a few float32 copies) stay around 100 MB.
CHUNK_PIXELS = 1 << 22


def template_path() -> Optional[Path]:
    """The template file inside the installed nilearn package, found without importing nilearn
    (its import takes seconds); None if nilearn or the file is not there."""
    try:
        spec = importlib.util.find_spec("nilearn")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "datasets" / "data" / TEMPLATE_FILE
        if p.is_file():
            return p
    return None


def load_template() -> tuple[np.ndarray, tuple[float, float, float]]:
    """The MNI152 T1 template as float32 [X, Y, Z] (RAS+) plus its voxel size in mm.

    Reads nilearn's packaged file; if a future nilearn moves it, asks nilearn's loader, which
    also reads the packaged copy (it never downloads).
    """
    path = template_path()
    if path is not None:
        return read_volume(path)
    try:  # optional packages, needed only for this fallback: a missing one is a DatasetError below
        import nibabel as nib
        from nilearn.datasets import load_mni152_template
    except ImportError as e:
        raise DatasetError(
            "the built-in 'mni152' dataset needs the MNI152 template that ships with nilearn: "
            f"pip install nilearn ({e})"
        ) from e
    img = nib.as_closest_canonical(load_mni152_template(resolution=1))
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return np.asarray(img.dataobj, dtype=np.float32), zooms  # type: ignore[return-value]


def single_thread() -> contextlib.AbstractContextManager[None]:
    """Runs torch CPU ops on one thread inside the block, restoring the setting after.

    The work here is many small memory-bound tensor ops; on small VMs waking a second intra-op
    thread costs more than it saves (measured: ~20 ms per op instead of ~1 ms on a 2-core VM,
    which made a 4096-image build take minutes). The result is cached, so a slower build on a
    big machine is paid once.
    """
    return torch_settings(threads=1)


def build_mni152(
    resolution: int,
    channels: int = 1,
    count: int = DEFAULT_COUNT,
    seed: int = 0,
    *,
    progress: bool = True,
    strength: WarpStrength = WarpStrength(),
) -> ImageDataset:
    """Builds `count` warped MNI152 slices: images uint8 [count, channels, resolution, resolution],
    labels int64 [count] (0 inferior, 1 middle, 2 superior)."""
    with single_thread(), torch.no_grad():
        data, zooms = load_template()
        norm = normalise_volume(data)
        del data
        keep = brain_slices(norm)
        zs = np.flatnonzero(keep)
        z_lo, z_hi = float(zs[0]), float(zs[-1])
        fov = brain_field_of_view(norm, keep, zooms)

        base_size = int(math.ceil(resolution * BASE_MARGIN))
        pixel_mm = fov.side_mm / resolution
        vol, vol_zooms, pool = shrink_volume(torch.from_numpy(norm).mul_(WHITE_LEVEL), zooms, pixel_mm)
        vol = gaussian_blur3d(vol, antialias_sigmas(pixel_mm, vol_zooms))
        vol = vol.permute(2, 1, 0).contiguous()[None, None]  # [1, 1, Z, Y, X]: grid_sample's D, H, W

        g = torch.Generator().manual_seed(int(seed))
        n_base = base_counts(count, base_size, BASE_BUDGET_PIXELS)
        base_draws = draw_base(n_base, z_lo, z_hi, strength, g)
        image_draws = draw_images(count, strength, g)

        # Image i is seen through base slice i % n_base, so consecutive images differ in height;
        # the users of a chunk of bases [b0, b1) are then contiguous runs, one per round.
        images = np.empty((count, channels, resolution, resolution), dtype=np.uint8)
        base_chunk = max(1, CHUNK_PIXELS // (base_size * base_size))
        image_chunk = max(1, CHUNK_PIXELS // (resolution * resolution))
        with tqdm(total=count, desc="building mni152 slices", unit="img", disable=not progress,
                  leave=False) as bar:
            for b0 in range(0, n_base, base_chunk):
                b1 = min(b0 + base_chunk, n_base)
                base = render_base(vol, base_draws.take(slice(b0, b1)), fov, zooms, base_size, pool)
                for start in range(b0, count, n_base):
                    stop = min(start + b1 - b0, count)
                    for s0 in range(start, stop, image_chunk):
                        s1 = min(s0 + image_chunk, stop)
                        out = warp_images(base[s0 - start:s1 - start],
                                          image_draws.take(slice(s0, s1)), resolution)
                        images[s0:s1] = out.numpy()[:, None]
                        bar.update(s1 - s0)
    labels = slice_bands(base_draws.z.numpy()[np.arange(count) % n_base], z_lo, z_hi)
    return ImageDataset(images, labels, BAND_NAMES,
                        source=f"MNI152 T1 template (nilearn): {count} warped axial slices "
                               f"({n_base} cuts), seed {seed}")
