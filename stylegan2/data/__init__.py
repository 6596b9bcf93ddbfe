"""Datasets for training: every source decoded into one in-memory uint8 array.

    ds = open_dataset("mni152", resolution=256)        # built-in, no download
    ds = open_dataset("/data/keras_png_slices_data", 256)   # OASIS, ADNI AD_NC, NIfTI or a folder
    img, label = ds[0]     # uint8 tensor [C, R, R], label index or -1
    ds.images              # uint8 [N, C, R, R]; ds.labels int64 [N] or None; ds.label_names

Every source is decoded once and cached on disk ($STYLEGAN2_CACHE, else ~/.cache/stylegan2);
`list_cache` and `clear_cache` show and remove those files. See `open_dataset` for the sources
and options.
"""
from .base import DatasetError, DatasetWarning, ImageDataset
from .cache import (CACHE_ENV, CacheEntry, clear_cache, datasets_dir, default_cache_dir, format_entries,
                    format_size, list_cache)
from .detect import BUILTIN, KINDS, LAYOUTS, detect_layout, is_builtin
from .mni152 import DEFAULT_COUNT as MNI152_DEFAULT_COUNT
from .opener import open_dataset
from .splits import choose_split, dataset_splits, describe_split, held_out_split, resolve_split

__all__ = [
    "BUILTIN",
    "CACHE_ENV",
    "CacheEntry",
    "DatasetError",
    "DatasetWarning",
    "ImageDataset",
    "KINDS",
    "LAYOUTS",
    "MNI152_DEFAULT_COUNT",
    "choose_split",
    "clear_cache",
    "datasets_dir",
    "dataset_splits",
    "describe_split",
    "held_out_split",
    "default_cache_dir",
    "detect_layout",
    "format_entries",
    "format_size",
    "is_builtin",
    "list_cache",
    "open_dataset",
    "resolve_split",
]
