"""The one image-folder loop the folder/OASIS/ADNI layouts share, and the mixed-size report.

Source files get modification times an hour in the past, as data on disk usually has.
"""
from __future__ import annotations

import os
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import stylegan2.data as data
import stylegan2.data.folder as folder
import stylegan2.data.opener as opener
from stylegan2.data import DatasetWarning, ImageDataset, open_dataset

HOUR_AGO = time.time() - 3600


@pytest.fixture
def rng(gen: torch.Generator) -> np.random.Generator:
    return np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))



def save(path: Path, arr: np.ndarray, when: float | None = HOUR_AGO, **kw) -> Path:
    """Writes pixels to `path` (format from the suffix) and dates it `when` (None: now)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    if when is not None:
        os.utime(path, (when, when))
    return path


def decoded(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def opened(spec, resolution: int, channels: int = 1, **kw) -> ImageDataset:
    kw.setdefault("progress", False)
    return open_dataset(str(spec), resolution, channels, **kw)



def make_folder(root: Path, rng: np.random.Generator, n: int = 4, size: int = 12) -> Path:
    for i in range(n):
        save(root / f"img_{i}.png", rng.integers(1, 256, (size, size), dtype=np.uint8))
    return root


def make_oasis(root: Path, rng: np.random.Generator, n: int = 2, size: int = 12) -> Path:
    data_root = root / "keras_png_slices_data"
    for split in ("train", "validate", "test"):
        for i in range(n):
            save(data_root / f"keras_png_slices_{split}" / f"case_{i}_slice_0.nii.png",
                 rng.integers(1, 128, (size, size), dtype=np.uint8))
            save(data_root / f"keras_png_slices_seg_{split}" / f"seg_{i}_slice_0.nii.png",
                 rng.integers(200, 256, (size, size), dtype=np.uint8))
    return root


def make_adni(root: Path, rng: np.random.Generator, n: int = 2, size: int = 12) -> Path:
    for split in ("train", "test"):
        for name in ("AD", "NC"):
            for i in range(n):
                save(root / "AD_NC" / split / name / f"{name}_{i}.png",
                     rng.integers(1, 256, (size, size), dtype=np.uint8))
    return root


LAYOUTS = {"folder": make_folder, "oasis": make_oasis, "adni": make_adni}


# ---------------------------------------------------------------------------------------------
# The one image-folder loop


@pytest.mark.parametrize("kind", ["folder", "oasis", "adni"])
def test_each_layout_goes_through_the_shared_loop(tmp_path: Path, rng: np.random.Generator,
                                                  monkeypatch: pytest.MonkeyPatch, kind: str):
    """The same loop decodes every layout: same skipping and reporting of bad files, same
    subset, labels kept in step with the files that decoded."""
    src = LAYOUTS[kind](tmp_path / "src", rng, n=3)
    listing = opener.LISTERS[kind](data.detect_layout(src).root)
    bad = listing.files[1]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(64))
    seen = []
    real = opener.open_listing

    def spy(lst, *args, **kwargs):
        seen.append(lst)
        return real(lst, *args, **kwargs)

    monkeypatch.setattr(opener, "open_listing", spy)
    with pytest.warns(DatasetWarning, match=rf"skipped 1 of {len(listing.files)} unreadable files .*{bad.name}"):
        ds = opened(src, 12)
    assert len(seen) == 1 and seen[0].files == listing.files
    assert len(ds) == len(listing.files) - 1 and ds.skipped == 1
    good = [f for f in listing.files if f != bad]
    for img, f in zip(ds.images, good):
        np.testing.assert_array_equal(img[0], decoded(f))
    if kind == "adni":
        want = [lab for f, lab in zip(listing.files, listing.labels) if f != bad]
        assert ds.labels.tolist() == want and ds.label_names == ["AD", "NC"]
        assert "AD 5" in ds.source and "NC 6" in ds.source
    else:
        assert ds.labels is None
    # A seeded subset comes from the same loop too.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)  # the bad file may be in it
        sub = opened(src, 12, max_images=len(listing.files) - 1, seed=3)
    assert len(sub) + sub.skipped == len(listing.files) - 1


# ---------------------------------------------------------------------------------------------
# The mixed-size report


def test_mixed_sizes_are_reported_in_one_line(tmp_path: Path, rng: np.random.Generator):
    src = tmp_path / "src"
    save(src / "a.png", rng.integers(1, 256, (16, 16), dtype=np.uint8))
    save(src / "b.png", rng.integers(1, 256, (10, 16), dtype=np.uint8))   # 16 wide, 10 high
    save(src / "c.png", rng.integers(1, 256, (10, 16), dtype=np.uint8))
    save(src / "d.png", rng.integers(1, 256, (45, 37), dtype=np.uint8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = opened(src, 16)
    lines = [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]
    assert lines == [f"images under {src} differ in size: resized 3 of 4 to 16x16 "
                     "(2 from 16x10, 1 from 37x45)"]
    assert ds.notes == lines


def test_many_sizes_name_the_most_common_and_count_the_rest():
    sizes = Counter({(8, 8): 5, (10, 8): 4, (12, 8): 3, (14, 8): 2, (16, 8): 2, (18, 8): 1, (20, 8): 1})
    line = folder.resized_message(sizes, 8, "/d")
    assert line == ("images under /d differ in size: resized 13 of 18 to 8x8 (4 from 10x8, 3 from 12x8, "
                    "2 from 14x8, 2 from 16x8, 2 from 2 other sizes)")


def test_one_size_everywhere_is_not_reported(tmp_path: Path, rng: np.random.Generator):
    src = tmp_path / "src"
    for i in range(3):
        save(src / f"{i}.png", rng.integers(1, 256, (10, 14), dtype=np.uint8))  # all padded+resized alike
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)
        ds = opened(src, 8)
    assert ds.notes == []
