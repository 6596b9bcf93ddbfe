"""The in-memory dataset every source produces, and the errors it raises.

All sources (image folders, OASIS, ADNI, NIfTI, the built-in MNI152 set) decode everything up
front into one uint8 array. A training set of brain slices at 256x256 is a few hundred MB, which
fits in memory, and decoding once means a bad file is found before any network is built rather
than an hour into a run.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from typing import Optional, Sequence

import numpy as np
import torch

FINGERPRINT_VERSION = b"stylegan2-dataset-fingerprint-v1"


class DatasetError(ValueError):
    """A dataset cannot be used: wrong path, nothing in it, or nothing readable.

    Raised while opening the dataset, before any network is built, with a message naming the
    path and what was expected there.
    """


class DatasetWarning(UserWarning):
    """Something was wrong with part of a dataset (e.g. unreadable files that were skipped)."""


class ImageDataset(torch.utils.data.Dataset):
    """Square images held in memory as uint8, with optional integer labels.

    Attributes:
        images: uint8 array [num_images, num_channels, resolution, resolution], C-contiguous.
        labels: int64 array [num_images] of indices into `label_names`, or None if unlabeled.
        label_names: class names, e.g. ["AD", "NC"]; [] if unlabeled.
        skipped: number of files (or volumes) skipped because they could not be read.
        source: a human description, e.g. "ADNI AD_NC at /data/AD_NC (21520 images: ...)".
        notes: the one-line reports made while decoding (skipped files, resized images). Kept
            with the pixels so that a copy read back from the cache can report them again.

    `dataset[i]` returns (uint8 tensor [num_channels, resolution, resolution], label or -1).
    The training loop converts pixels to [-1, 1] with `x.float() / 127.5 - 1`.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Optional[np.ndarray] = None,
        label_names: Optional[Sequence[str]] = None,
        *,
        skipped: int = 0,
        source: str = "",
        notes: Sequence[str] = (),
        fingerprint: Optional[str] = None,
    ) -> None:
        """images: uint8 [N, C, R, R] with C in (1, 3); labels: integer [N] or None.

        fingerprint: `fingerprint()` of exactly these arrays when it is already known (a cache
        file whose checksums just passed stores it), so it is not hashed again.
        """
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                "images must be a uint8 numpy array [N, C, R, R], got "
                f"{type(images).__name__} {getattr(images, 'dtype', '')} "
                f"{list(getattr(images, 'shape', []))}"
            )
        n, c, h, w = images.shape
        if c not in (1, 3) or h != w:
            raise ValueError(f"images must be [N, 1 or 3, R, R] (square), got {list(images.shape)}")
        names = list(label_names or [])
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (n,) or labels.dtype.kind not in "iu":
                raise ValueError(f"labels must be integers [{n}], got {labels.dtype} {list(labels.shape)}")
            labels = labels.astype(np.int64)
            if n and (labels.min() < 0 or labels.max() >= len(names)):
                raise ValueError(
                    f"labels must index label_names ({len(names)} names), "
                    f"got values in [{labels.min()}, {labels.max()}]"
                )
        elif names:
            raise ValueError("label_names given without labels")
        self.images = np.ascontiguousarray(images)
        self.labels = labels
        self.label_names = names
        self.skipped = int(skipped)
        self.source = source
        self.notes = [str(n) for n in notes]
        self._fingerprint = fingerprint

    @property
    def resolution(self) -> int:
        """Side length R of the square images."""
        return int(self.images.shape[2])

    @property
    def num_channels(self) -> int:
        """Channels C per image (1 for grayscale, 3 for RGB)."""
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        """Number of label classes (0 if unlabeled)."""
        return len(self.label_names)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """Returns (uint8 tensor [C, R, R], label index or -1 if unlabeled)."""
        img = torch.from_numpy(self.images[i])
        label = -1 if self.labels is None else int(self.labels[i])
        return img, label

    def fingerprint(self) -> str:
        """A stable hex digest of pixel content, labels, label names, resolution and channels.

        Stored in checkpoints so a resumed run can tell whether it is fed the same data. Computed
        once (hashing a few hundred MB takes about a second) and remembered.
        """
        if self._fingerprint is None:
            h = hashlib.sha256(FINGERPRINT_VERSION)
            meta = {"shape": list(self.images.shape), "label_names": self.label_names,
                    "labeled": self.labels is not None}
            h.update(json.dumps(meta, sort_keys=True).encode())
            h.update(memoryview(self.images).cast("B"))
            if self.labels is not None:
                h.update(self.labels.astype("<i8").tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        return (f"ImageDataset({len(self)} images, {self.num_channels}x{self.resolution}x"
                f"{self.resolution}, classes={self.label_names}, skipped={self.skipped}, "
                f"source={self.source!r})")


def report(message: str, notes: Optional[list[str]] = None) -> None:
    """Reports one line about a dataset as a DatasetWarning (the path every data report takes,
    so callers filter or record them in one place) and appends it to `notes` if given."""
    if notes is not None:
        notes.append(message)
    warnings.warn(message, DatasetWarning, stacklevel=3)


def skipped_message(skipped: int, total: int, where: str, example: Optional[str]) -> str:
    """The one-line summary of `skipped` unreadable items out of `total`."""
    first = f"; first: {example}" if example else ""
    return f"skipped {skipped} of {total} unreadable files under {where}{first}"
