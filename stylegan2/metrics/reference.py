"""The real images a model is measured against: the split its training did not use, where the
dataset has splits (OASIS validate, ADNI test), else its training images, and how to name them.

    ref = reference_set("/data/keras_png_slices_data", 64, 1, used_split="train")
    ref.dataset, ref.name, ref.held_out        # ImageDataset, "OASIS validate (1120 images)", True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..data import describe_split, held_out_split, open_dataset


@dataclass
class Reference:
    """dataset: the real images. name: how every reported number names them. split: the split
    read (None: all of the dataset). held_out: whether training never saw them."""

    dataset: Any
    name: str
    split: Optional[str]
    held_out: bool


def reference_set(spec: str, resolution: int, channels: int, used_split: Optional[str], *,
                  training: Any = None, max_images: Optional[int] = None, progress: bool = False) -> Reference:
    """The reference set for a model trained on split `used_split` of `spec` (None: on all of it).

    A split training did not use when there is one (validate, else test, else train); otherwise
    the training images, named so ("... (training images, no held-out split)"): numbers against
    them say how close fakes come to what the model saw, not how well it generalises.
    training: the training ImageDataset when already open (reused rather than decoded again).
    max_images: the subset training used (only applies when the reference is the training set).
    Raises DatasetError (one line) when the data cannot be opened.
    """
    held = held_out_split(spec, used_split)
    if held is not None:
        ds = open_dataset(spec, resolution, channels, split=held, progress=progress)
        return Reference(ds, describe_split(spec, held, len(ds)), held, True)
    ds = training if training is not None else open_dataset(spec, resolution, channels, split=used_split,
                                                             max_images=max_images, progress=progress)
    return Reference(ds, f"{describe_split(spec, used_split, len(ds))}: the training images, no held-out split",
                     used_split, False)
