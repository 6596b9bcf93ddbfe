"""The ADNI slices in the "AD_NC" layout, labeled by class folder.

    AD_NC/
        train/AD/*.jpeg   train/NC/*.jpeg
        test/AD/*.jpeg    test/NC/*.jpeg

The slices are 256 wide and 240 high; padding them with black to 256x256 keeps the whole brain
and the true aspect ratio. The class folder is the label: AD (Alzheimer's disease) = 0,
NC (normal control) = 1, for conditional training and for colouring plots.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .base import DatasetError, ImageDataset
from .folder import load_image_files, require_images, select_subset
from .scan import child_dirs, find_child, is_image_file, walk_files

LABEL_NAMES = ["AD", "NC"]
SPLITS = ("train", "test")


def adni_class_dirs(root: Path) -> list[tuple[Path, int]]:
    """(folder, label) pairs of `root`: root/{train,test}/{AD,NC}, or root/{AD,NC} directly."""
    parents = [p for p in (find_child(root, s) for s in SPLITS) if p is not None] or [root]
    found = []
    for parent in parents:
        for label, name in enumerate(LABEL_NAMES):
            d = find_child(parent, name)
            if d is not None:
                found.append((d, label))
    return found


def find_adni_root(path: Path) -> Optional[Path]:
    """`path`, or its AD_NC (or only) subfolder, if it has the AD_NC layout; else None.

    Both class names must be present somewhere: one "AD" folder alone is too weak a sign.
    """
    children = child_dirs(path)
    candidates = [path] + [d for d in children if d.name.lower() == "ad_nc" or len(children) == 1]
    for root in candidates:
        labels = {label for _, label in adni_class_dirs(root)}
        if labels == {0, 1}:
            return root
    return None


def open_adni(
    root: Path,
    resolution: int,
    channels: int,
    *,
    fit: str = "pad",
    seed: int = 0,
    max_images: Optional[int] = None,
    progress: bool = True,
) -> ImageDataset:
    """ADNI AD_NC at `root`: uint8 [N, channels, resolution, resolution], labels int64 [N]
    (0 = AD, 1 = NC)."""
    files: list[Path] = []
    labels: list[int] = []
    for d, label in adni_class_dirs(root):
        found = [p for p in walk_files(d) if is_image_file(p)]
        files.extend(found)
        labels.extend([label] * len(found))
    if not files:
        raise DatasetError(f"ADNI layout at {root} has no images: expected "
                           "{train,test}/{AD,NC}/*.jpeg")
    idx = select_subset(len(files), max_images, seed)
    files = [files[i] for i in idx]
    label_arr = np.asarray(labels, dtype=np.int64)[idx]
    loaded = load_image_files(files, resolution, channels, fit=fit, progress=progress,
                              desc="loading ADNI slices")
    require_images(loaded, root, len(files), "ADNI image")
    label_arr = label_arr[loaded.kept]
    counts = ", ".join(f"{name} {int((label_arr == i).sum())}" for i, name in enumerate(LABEL_NAMES))
    n = loaded.images.shape[0]
    return ImageDataset(loaded.images, label_arr, LABEL_NAMES, skipped=loaded.skipped,
                        source=f"ADNI AD_NC at {root} ({n} images: {counts})")
