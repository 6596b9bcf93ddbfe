"""Dataset splits: which part of a layout training reads, and which part the metrics hold out.

OASIS keras_png_slices_data has train/validate/test folders and ADNI AD_NC train/test. A GAN
trained on the training split can be measured against a split it never saw (FID on held-out
slices says whether it learned the distribution rather than the training images). Other sources
(the built-in set, NIfTI volumes, a plain folder) have no splits.

    split=None       every image of every split (the behaviour before splits existed)
    split="auto"     the training split where the layout has one besides others, else everything
    split="validate" that split only (DatasetError if the layout has none of that name)
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .adni import adni_splits
from .base import DatasetError
from .detect import Layout, detect_layout, is_builtin
from .oasis import oasis_splits

AUTO = "auto"
TRAIN = "train"
# Which split a held-out reference prefers: validate (OASIS's own choice for model selection),
# then test, then train (a model trained on the test split is compared with the training one).
HELD_OUT_ORDER = ("validate", "test", "train")
LABELS = {"oasis": "OASIS", "adni": "ADNI"}


def layout_splits(layout: Layout) -> tuple[str, ...]:
    """The splits present in a detected layout, () for layouts without splits."""
    if layout.kind == "oasis":
        return oasis_splits(layout.root)
    if layout.kind == "adni":
        return adni_splits(layout.root)
    return ()


def dataset_splits(spec: str) -> tuple[str, ...]:
    """The splits of a dataset spec ('mni152' or a path); () when it has none."""
    if is_builtin(spec):
        return ()
    return layout_splits(detect_layout(Path(spec).expanduser()))


def choose_split(layout: Optional[Layout], split: Optional[str]) -> Optional[str]:
    """`split` made concrete for a layout (None for the built-in set): None (everything), or one
    split it has. DatasetError naming the splits there are when the asked one is not there."""
    if split is None:
        return None
    splits = layout_splits(layout) if layout is not None else ()
    if split == AUTO:
        # Only where another split is left over to hold out; a lone train folder is everything.
        return TRAIN if TRAIN in splits and len(splits) > 1 else None
    if split not in splits:
        where = layout.root if layout is not None else "the built-in set"
        have = f"its splits are {', '.join(splits)}" if splits else "it has no splits"
        raise DatasetError(f"no '{split}' split in {where}: {have}")
    return split


def resolve_split(spec: str, split: Optional[str]) -> Optional[str]:
    """choose_split for a dataset spec (see the module docstring)."""
    if split is None:
        return None
    return choose_split(None if is_builtin(spec) else detect_layout(Path(spec).expanduser()), split)


def held_out_split(spec: str, used: Optional[str]) -> Optional[str]:
    """The split a model trained on split `used` did not see (validate, else test, else train),
    or None when it trained on everything or the dataset has no other split."""
    if used is None:
        return None
    splits = dataset_splits(spec)
    return next((s for s in HELD_OUT_ORDER if s in splits and s != used), None)


def describe_split(spec: str, split: Optional[str], num_images: int) -> str:
    """How reports name a reference set: "OASIS validate (1120 images)", or for a set without a
    chosen split its kind and size ("mni152 (2000 images)")."""
    if is_builtin(spec):
        name = spec.strip().lower()
    else:
        layout = detect_layout(Path(spec).expanduser())
        name = LABELS.get(layout.kind, str(layout.root))
        if split is None and layout_splits(layout):
            split = "all splits"
    return f"{name}{' ' + split if split else ''} ({num_images} images)"
