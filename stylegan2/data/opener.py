"""`open_dataset`: one entry point from a dataset spec to an in-memory ImageDataset."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

from .adni import list_adni
from .base import ImageDataset
from .cache import cached_dataset
from .detect import BUILTIN, detect_layout, is_builtin
from .folder import ImageListing, list_image_folder, open_listing
from .imageops import FIT_MODES
from .mni152 import DEFAULT_COUNT, GENERATOR_VERSION, WarpStrength, build_mni152, template_path
from .nifti import list_nifti_files, open_nifti
from .oasis import list_oasis
from .splits import choose_split

# The image-folder layouts: each lists its files (and labels), `open_listing` decodes them.
# oasis and adni also take the splits to list.
LISTERS: dict[str, Callable[..., ImageListing]] = {
    "oasis": list_oasis,
    "adni": list_adni,
    "folder": list_image_folder,
}


def _check_args(spec: object, resolution: object, channels: object, max_images: object, fit: object) -> None:
    if not isinstance(spec, (str, os.PathLike)) or not str(spec):
        raise ValueError(f"spec must be '{BUILTIN}' or a dataset path, got {spec!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 4:
        raise ValueError(f"resolution must be an int >= 4, got {resolution!r}")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int)
                                   or max_images < 1):
        raise ValueError(f"max_images must be None or an int >= 1, got {max_images!r}")
    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")


def open_dataset(
    spec: str,
    resolution: int,
    channels: int = 1,
    *,
    seed: int = 0,
    cache_dir: Optional[str] = None,
    max_images: Optional[int] = None,
    progress: bool = True,
    fit: str = "pad",
    mmap: bool = False,
    split: Optional[str] = None,
) -> ImageDataset:
    """Opens a dataset and decodes it into memory as uint8 [N, channels, resolution, resolution].

    spec: "mni152" for the built-in set (warped slices of the MNI152 T1 template shipped with
        nilearn; `max_images` images, default DEFAULT_COUNT), or a path: a NIfTI file, or a
        folder auto-detected as OASIS keras_png_slices_data, ADNI AD_NC, NIfTI volumes, or a
        generic recursive folder of PNG/JPEG images.
    resolution: side R of the square output images. channels: 1 (grayscale) or 3 (RGB; grayscale
        sources are replicated).
    seed: seeds the MNI152 warps and the choice of the `max_images` subset of larger datasets.
    cache_dir: the cache folder (default $STYLEGAN2_CACHE or ~/.cache/stylegan2). Every kind
        is decoded once and read back from there while its files (paths, sizes, modification
        times) and these arguments stay the same; see `stylegan2.data.cache`.
    max_images: keep at most this many images (a seeded random subset).
    progress: show tqdm progress bars while loading.
    fit: how non-square images become square: "pad" (centred on black) or "crop" (centre).
    mmap: a dataset found in the cache has its images memory-mapped read-only from the cache
        file, not read into this process's memory (training ranks of one machine share them).
    split: None reads every split of a layout that has them (OASIS train/validate/test, ADNI
        train/test); "auto" the training split where there are others to hold out; a split's
        name that split only (DatasetError if there is none of that name). See splits.py.

    Raises DatasetError (a ValueError) naming the path if it does not exist, is empty or holds
    nothing readable; ValueError for bad arguments. Unreadable files are skipped, counted in
    `skipped` and summarised in one DatasetWarning.
    """
    _check_args(spec, resolution, channels, max_images, fit)
    if is_builtin(spec):
        choose_split(None, split)  # the built-in set has no splits: naming one is an error
        count = max_images or DEFAULT_COUNT
        tpl = template_path()
        params: dict[str, Any] = dict(resolution=resolution, channels=channels, count=count, seed=seed,
                                      version=GENERATOR_VERSION, strength=asdict(WarpStrength()))
        return cached_dataset(BUILTIN, params, [tpl] if tpl else [],
                              lambda: build_mni152(resolution, channels, count, seed, progress=progress),
                              cache_dir=cache_dir, mmap=mmap)

    layout = detect_layout(Path(spec).expanduser())
    root = layout.root
    # The seed only picks the max_images subset here: without one it changes nothing, and must
    # not make `train --seed 1` decode a folder again.
    params = dict(root=str(root.resolve()), resolution=resolution, channels=channels,
                  max_images=max_images, seed=seed if max_images is not None else None)
    options = dict(seed=seed, max_images=max_images, progress=progress)
    chosen = choose_split(layout, split)  # before decoding: a split NIfTI volumes lack is an error
    if layout.kind == "nifti":
        volumes = list_nifti_files(root)
        return cached_dataset("nifti", params, volumes,
                              lambda: open_nifti(root, resolution, channels, files=volumes, **options),
                              cache_dir=cache_dir, mmap=mmap)
    if chosen is None:
        listing = LISTERS[layout.kind](root)
    else:  # only oasis and adni have splits (choose_split refused the others)
        listing = LISTERS[layout.kind](root, (chosen,))
        # In the key only when set, so the slots of whole datasets keep the names they had.
        params["split"] = chosen
    return cached_dataset(layout.kind, {**params, "fit": fit}, listing.files,
                          lambda: open_listing(listing, resolution, channels, fit=fit, **options),
                          cache_dir=cache_dir, mmap=mmap)
