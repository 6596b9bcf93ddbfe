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

from .base import DatasetError
from .folder import ImageListing
from .scan import child_dirs, find_child, is_image_file, walk_files

LABEL_NAMES = ["AD", "NC"]
SPLITS = ("train", "test")


def adni_splits(root: Path) -> tuple[str, ...]:
    """The split folders (train, test) present under an ADNI root; () for root/{AD,NC}."""
    return tuple(s for s in SPLITS if find_child(root, s) is not None)


def adni_class_dirs(root: Path, splits: Optional[tuple[str, ...]] = None) -> list[tuple[Path, int]]:
    """(folder, label) pairs of `root`: root/{train,test}/{AD,NC} (only the `splits` named, when
    given), or root/{AD,NC} directly."""
    chosen = SPLITS if splits is None else splits
    parents = [p for p in (find_child(root, s) for s in SPLITS if s in chosen) if p is not None]
    if splits is None:
        parents = parents or [root]
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


def list_adni(root: Path, splits: Optional[tuple[str, ...]] = None) -> ImageListing:
    """The image files of ADNI AD_NC at `root` (all splits, or those named in `splits`), by
    split, class folder and name, labeled 0 = AD, 1 = NC; DatasetError if there are none."""
    files: list[Path] = []
    labels: list[int] = []
    for d, label in adni_class_dirs(root, splits):
        found = [p for p in walk_files(d) if is_image_file(p)]
        files.extend(found)
        labels.extend([label] * len(found))
    if not files:
        raise DatasetError(f"ADNI layout at {root} has no images: expected "
                           "{train,test}/{AD,NC}/*.jpeg")
    title = "ADNI AD_NC at" if splits is None else f"ADNI AD_NC ({'+'.join(splits)} split) at"
    return ImageListing(root, files, title=title, noun="ADNI slice", labels=labels,
                        label_names=list(LABEL_NAMES))
