"""Ground truth to colour an embedding by: a dataset's class labels (AD/NC for ADNI, the slice
band for the built-in mni152 set) or the split a file came from (OASIS train/validate/test,
ADNI train/test), as strings, one per image."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..data import DatasetError, detect_layout, is_builtin
from ..data.adni import list_adni
from ..data.folder import select_subset
from ..data.oasis import SPLIT_DIRS, SPLITS, list_oasis
from .common import ExploreError

LABEL_FIELDS = ("auto", "class", "split", "none")


def class_title(spec: str) -> str:
    """What the class labels of a dataset mean, for a legend."""
    if is_builtin(spec):
        return "slice band"
    try:
        kind = detect_layout(Path(spec).expanduser()).kind
    except DatasetError:
        return "class"
    return "diagnosis" if kind == "adni" else "class"


def _split_of(path: Path, root: Path) -> Optional[str]:
    parts = path.relative_to(root).parts
    first = parts[0] if parts else ""
    if first in SPLIT_DIRS:
        return SPLITS[SPLIT_DIRS.index(first)]
    return first.lower() if first.lower() in ("train", "test") else None


def split_labels(spec: str, count: int, *, max_images: Optional[int] = None, seed: int = 0) -> list[str]:
    """The split of each of the `count` images open_dataset(spec, max_images=..., seed=...) loads
    (the same seeded subset, in the same order). ExploreError when the layout has no splits or
    files were skipped while decoding (then the images no longer line up with the files)."""
    if is_builtin(spec):
        raise ExploreError(f"label field 'split': the built-in {spec} set has no splits (its labels are slice "
                           "bands: use --label class)")
    try:
        layout = detect_layout(Path(spec).expanduser())
    except DatasetError as e:
        raise ExploreError(str(e)) from None
    if layout.kind not in ("oasis", "adni"):
        raise ExploreError(f"label field 'split': {spec} is a {layout.kind} dataset, which has no splits "
                           "(OASIS and ADNI have)")
    listing = list_oasis(layout.root) if layout.kind == "oasis" else list_adni(layout.root)
    idx = select_subset(len(listing.files), max_images, seed)
    splits = [_split_of(listing.files[i], layout.root) for i in idx]
    if any(s is None for s in splits):
        raise ExploreError(f"label field 'split': {layout.root} keeps its classes without train/test folders")
    if len(splits) != count:
        raise ExploreError(f"label field 'split': {len(splits) - count} files of {layout.root} could not be read, "
                           "so images and files no longer line up; use --label class or none")
    return [str(s) for s in splits]


def dataset_labels(dataset: Any, spec: str, field: str, *, max_images: Optional[int] = None,
                   seed: int = 0) -> tuple[str, Optional[list[str]]]:
    """(title, one label string per image of `dataset`, or None for field 'none').

    field: 'class' (the dataset's labels; ExploreError if it has none), 'split' (see
    split_labels), 'none', or 'auto': class when the dataset has labels, else split for OASIS,
    else none."""
    if field not in LABEL_FIELDS:
        raise ExploreError(f"label field: must be one of {', '.join(LABEL_FIELDS)}, got {field!r}")
    if field == "auto":
        if dataset.labels is not None:
            field = "class"
        else:
            try:
                return "split", split_labels(spec, len(dataset), max_images=max_images, seed=seed)
            except ExploreError:
                return "none", None
    if field == "none":
        return "none", None
    if field == "class":
        if dataset.labels is None:
            raise ExploreError(f"label field 'class': {dataset.source} has no class labels (ADNI and mni152 have; "
                               "try --label split for OASIS, or none)")
        names = np.asarray(dataset.label_names, dtype=object)
        return class_title(spec), [str(s) for s in names[dataset.labels]]
    return "split", split_labels(spec, len(dataset), max_images=max_images, seed=seed)
