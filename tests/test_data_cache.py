"""The dataset cache, the one image-folder loop the folder/OASIS/ADNI layouts share, the
mixed-size report and `python -m stylegan2 cache`.

Hits and misses are told apart by counting calls of the decoders (never by timing). Source
files get modification times an hour in the past unless a test is about fresh files: a file
written a moment ago is also hashed (its time stamp may not change on a quick rewrite), which
is tested on its own below.
"""
from __future__ import annotations

import os
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import stylegan2.data as data
import stylegan2.data.base as base
import stylegan2.data.folder as folder
import stylegan2.data.opener as opener
from stylegan2 import cli
from stylegan2.data import DatasetWarning, ImageDataset, clear_cache, list_cache, open_dataset
from stylegan2.data import cache as cache_mod
from stylegan2.training.run_dir import dataset_name

HOUR_AGO = time.time() - 3600


@pytest.fixture
def rng(gen: torch.Generator) -> np.random.Generator:
    return np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts every decode: per image file, per NIfTI folder read and per MNI152 build."""
    counts: Counter = Counter()

    def counted(name: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(folder, "load_image_file", counted("image", folder.load_image_file))
    monkeypatch.setattr(opener, "open_nifti", counted("nifti", opener.open_nifti))
    monkeypatch.setattr(opener, "build_mni152", counted("mni152", opener.build_mni152))
    return counts


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


def cache_files(cache: Path) -> list[Path]:
    return sorted((cache / "datasets").glob("*.npz"))


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


def make_nifti(root: Path, rng: np.random.Generator) -> Path:
    vol = rng.uniform(0, 5, (12, 12, 8)).astype(np.float32)
    vol[3:9, 3:9, 2:6] = rng.uniform(300, 1000, (6, 6, 4))
    root.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), root / "v.nii.gz")
    os.utime(root / "v.nii.gz", (HOUR_AGO, HOUR_AGO))
    return root


# ---------------------------------------------------------------------------------------------
# Hits


@pytest.mark.parametrize("kind", ["folder", "oasis", "adni", "nifti", "mni152"])
def test_second_open_reads_the_cache_instead_of_decoding(tmp_path: Path, rng: np.random.Generator,
                                                         calls: Counter, kind: str):
    if kind == "mni152":
        spec, kw = "mni152", dict(max_images=6)
    elif kind == "nifti":
        spec, kw = make_nifti(tmp_path / "scans", rng), {}
    else:
        spec, kw = LAYOUTS[kind](tmp_path / "src", rng), {}
    first = opened(spec, 8, **kw)
    decodes = dict(calls)
    assert sum(decodes.values()) > 0
    (entry,) = cache_files(data.default_cache_dir())  # the per-test folder (conftest)
    assert entry.name.startswith(f"{kind}-8px-1ch-")

    again = opened(spec, 8, **kw)
    assert dict(calls) == decodes, "the second open decoded again"
    np.testing.assert_array_equal(again.images, first.images)
    assert again.images.flags.c_contiguous and again.images.dtype == np.uint8
    if first.labels is None:
        assert again.labels is None
    else:
        np.testing.assert_array_equal(again.labels, first.labels)
    assert (again.label_names, again.source, again.skipped) == (first.label_names, first.source, first.skipped)
    assert again.fingerprint() == first.fingerprint()


def test_cache_hit_carries_the_fingerprint(tmp_path: Path, rng: np.random.Generator,
                                           monkeypatch: pytest.MonkeyPatch):
    src = make_adni(tmp_path / "src", rng)
    want = opened(src, 8).fingerprint()
    hit = opened(src, 8)

    def no_hash(*args):
        raise AssertionError("the fingerprint was computed again")

    with monkeypatch.context() as m:
        m.setattr(base.hashlib, "sha256", no_hash)
        assert hit.fingerprint() == want
    assert ImageDataset(hit.images.copy(), hit.labels, hit.label_names).fingerprint() == want


def test_cache_dir_argument_and_environment_variable(tmp_path: Path, rng: np.random.Generator,
                                                     monkeypatch: pytest.MonkeyPatch, calls: Counter):
    src = make_folder(tmp_path / "src", rng)
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "env"))
    opened(src, 8)
    opened(src, 8, cache_dir=str(tmp_path / "arg"))
    assert len(cache_files(tmp_path / "env")) == 1 and len(cache_files(tmp_path / "arg")) == 1
    assert calls["image"] == 8  # two caches, each filled once
    monkeypatch.delenv(data.CACHE_ENV)
    assert data.default_cache_dir() == Path.home() / ".cache" / "stylegan2"


# ---------------------------------------------------------------------------------------------
# Misses: what changes the key


@pytest.mark.filterwarnings("ignore::stylegan2.data.DatasetWarning")  # the 14x14 file makes sizes mixed
def test_changed_added_and_removed_files_invalidate(tmp_path: Path, rng: np.random.Generator, calls: Counter):
    src = make_oasis(tmp_path / "src", rng)
    split = src / "keras_png_slices_data" / "keras_png_slices_train"
    first = opened(src, 8)
    assert len(first) == 6 and calls["image"] == 6

    def reopen() -> tuple[ImageDataset, int]:
        before = calls["image"]
        ds = opened(src, 8)
        return ds, calls["image"] - before

    assert reopen()[1] == 0
    # Only the modification time changes: decoded again, then read from the cache again.
    victim = split / "case_0_slice_0.nii.png"
    os.utime(victim, (HOUR_AGO - 60, HOUR_AGO - 60))
    assert reopen()[1] == 6 and reopen()[1] == 0
    # New pixels of another size, stamped with the old time: the size tells.
    st = victim.stat()
    save(victim, rng.integers(1, 128, (14, 14), dtype=np.uint8), when=None)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert victim.stat().st_size != st.st_size
    ds, n = reopen()
    assert n == 6 and not np.array_equal(ds.images, first.images)
    # An added and a removed file.
    save(split / "case_9_slice_0.nii.png", rng.integers(1, 128, (12, 12), dtype=np.uint8))
    ds, n = reopen()
    assert n == 7 and len(ds) == 7
    (split / "case_1_slice_0.nii.png").unlink()
    ds, n = reopen()
    assert n == 6 and len(ds) == 6
    # A file in a folder the layout never reads (the masks) is not a source.
    save(src / "keras_png_slices_data" / "keras_png_slices_seg_train" / "new.png",
         rng.integers(1, 128, (12, 12), dtype=np.uint8))
    assert reopen()[1] == 0
    # A new version of a dataset replaces the old file instead of piling up beside it.
    assert len(cache_files(data.default_cache_dir())) == 1


def test_each_option_that_changes_pixels_has_its_own_entry(tmp_path: Path, rng: np.random.Generator,
                                                           calls: Counter):
    src = tmp_path / "src"
    for i in range(5):
        save(src / f"{i}.png", rng.integers(1, 256, (10, 14), dtype=np.uint8))
    variants = [dict(resolution=8), dict(resolution=16), dict(resolution=8, channels=3),
                dict(resolution=8, fit="crop"), dict(resolution=8, max_images=3, seed=1),
                dict(resolution=8, max_images=3, seed=2)]
    results = [opened(src, **v) for v in variants]
    assert len(cache_files(data.default_cache_dir())) == len(variants)
    assert results[0].images.shape == (5, 1, 8, 8) and results[1].images.shape == (5, 1, 16, 16)
    assert results[2].images.shape == (5, 3, 8, 8) and len(results[4]) == 3
    assert not np.array_equal(results[0].images, results[3].images)
    decodes = calls["image"]
    for v, want in zip(variants, results):
        np.testing.assert_array_equal(opened(src, **v).images, want.images)
    assert calls["image"] == decodes
    # Without a subset the seed changes nothing, so it must not cost a decode.
    opened(src, 8, seed=7)
    assert calls["image"] == decodes


def test_fresh_files_are_checked_by_content(tmp_path: Path, rng: np.random.Generator, calls: Counter,
                                            monkeypatch: pytest.MonkeyPatch):
    """A file rewritten within one time-stamp tick keeps its size and time: files that fresh when
    decoded are hashed, so same-size new pixels under an unchanged stamp are still noticed."""
    monkeypatch.setattr(cache_mod, "SETTLE_SECONDS", 3600.0)  # however slow the machine: still fresh
    src = tmp_path / "src"
    first_pixels = rng.integers(1, 256, (12, 12), dtype=np.uint8)
    victim = save(src / "a.png", first_pixels, when=None)
    save(src / "b.png", rng.integers(1, 256, (12, 12), dtype=np.uint8), when=None)
    first = opened(src, 12)
    opened(src, 12)
    assert calls["image"] == 2  # fresh but unchanged: a hit
    st = victim.stat()
    changed = first_pixels.copy()
    changed[3, 4] ^= 1
    save(victim, changed, when=None)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    if victim.stat().st_size != st.st_size:
        pytest.skip("PNG size changed with the pixel; the stat key alone already tells")
    ds = opened(src, 12)
    assert calls["image"] == 4
    np.testing.assert_array_equal(ds.images[0, 0], changed)
    assert not np.array_equal(ds.images, first.images)


def test_files_that_settle_during_the_build_are_not_hashed_again(tmp_path: Path, rng: np.random.Generator,
                                                                 monkeypatch: pytest.MonkeyPatch):
    src = make_folder(tmp_path / "src", rng)
    for f in src.iterdir():
        os.utime(f)  # fresh when the build starts
    real = opener.open_listing

    def slow_build(*args, **kwargs):
        # As if decoding outlasted the settling time: the stamps can be trusted once it is done.
        monkeypatch.setattr(cache_mod, "SETTLE_SECONDS", 0.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(opener, "open_listing", slow_build)
    opened(src, 8)
    (path,) = cache_files(data.default_cache_dir())
    assert cache_mod.read_header(path)["fresh"] == {}


# ---------------------------------------------------------------------------------------------
# Damaged files and writing


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "flipped byte"])
def test_damaged_cache_file_is_rebuilt(tmp_path: Path, rng: np.random.Generator, calls: Counter, damage: str):
    src = make_folder(tmp_path / "src", rng, n=6, size=16)
    first = opened(src, 16)
    (path,) = cache_files(data.default_cache_dir())
    raw = bytearray(path.read_bytes())
    if damage == "garbage":
        raw = bytearray(rng.bytes(len(raw)))
    elif damage == "empty":
        raw = bytearray()
    elif damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 2] ^= 0xFF  # inside the pixels: only the CRC-32 can tell
    path.write_bytes(bytes(raw))
    with pytest.warns(DatasetWarning, match="unreadable dataset cache"):
        again = opened(src, 16)
    assert calls["image"] == 12
    np.testing.assert_array_equal(again.images, first.images)
    # ...and the rebuilt file is whole again.
    opened(src, 16)
    assert calls["image"] == 12


def test_cache_is_written_to_a_temporary_file_then_renamed(tmp_path: Path, rng: np.random.Generator,
                                                           monkeypatch: pytest.MonkeyPatch):
    src = make_folder(tmp_path / "src", rng)
    renames = []
    real_replace = os.replace

    def spy(a, b):
        renames.append((Path(a), Path(b), Path(b).exists()))
        real_replace(a, b)

    monkeypatch.setattr(cache_mod.os, "replace", spy)
    opened(src, 8)
    ((tmp, final, existed),) = renames
    assert tmp.parent == final.parent and tmp.name.endswith(".tmp") and not existed
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]  # no temporary left

    def fail(a, b):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_mod.os, "replace", fail)
    final.unlink()
    with pytest.warns(DatasetWarning, match="could not write dataset cache"):
        ds = opened(src, 8)
    assert len(ds) == 4 and list(final.parent.iterdir()) == []


def test_unwritable_cache_folder_only_warns(tmp_path: Path, rng: np.random.Generator):
    src = make_folder(tmp_path / "src", rng)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(DatasetWarning, match="could not write dataset cache"):
        ds = opened(src, 8, cache_dir=str(blocker))
    assert len(ds) == 4


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
    # A cache hit says it again rather than hiding it.
    with pytest.warns(DatasetWarning, match=r"resized 3 of 4 to 16x16 .*cached in"):
        opened(src, 16)


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


# ---------------------------------------------------------------------------------------------
# Listing and clearing, through the library and the command line


def test_cache_list_and_clear_end_to_end(tmp_path: Path, rng: np.random.Generator,
                                         monkeypatch: pytest.MonkeyPatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(data.CACHE_ENV, str(cache))
    folder_ds = opened(make_folder(tmp_path / "imgs", rng), 8)
    opened(make_oasis(tmp_path / "oasis", rng), 8)
    opened(make_oasis(tmp_path / "oasis", rng), 16)
    store = cache / "datasets"
    (store / "folder-8px-1ch-00000000000000000000.npz").write_bytes(b"PK\x05\x06" + bytes(18))  # damaged
    (store / "oasis-16px-1ch-0123.abcd.tmp").write_bytes(b"half")                         # killed write
    np.savez(store / "mni152-8px-1ch-11111111111111111111.npz", images=np.zeros((1, 1, 8, 8), np.uint8))  # format 1
    (store / "README.txt").write_text("not ours: never listed or removed")
    old = next(store.glob("oasis-8px-*.npz"))
    os.utime(old, (time.time() - 5 * 86400,) * 2)

    runner = CliRunner()
    r = runner.invoke(cli.main, ["cache", "--list"])
    assert r.exit_code == 0, r.output
    assert "6 files" in r.output and str(store) in r.output
    folder_line = next(line for line in r.output.splitlines() if folder_ds.source in line)
    assert folder_line.split()[:3] == ["folder", "8", "4"]
    assert "damaged" in r.output and "unfinished write" in r.output and "older cache format" in r.output
    assert runner.invoke(cli.main, ["cache"]).output == r.output  # listing is the default

    r = runner.invoke(cli.main, ["cache", "--list", "--kind", "oasis"])
    assert "3 files" in r.output and "folder " not in r.output
    r = runner.invoke(cli.main, ["cache", "--clear", "--unused-days", "2"])
    assert r.exit_code == 0 and f"removed {old.name} (oasis" in r.output
    assert "removed 1 file " in r.output and str(store) in r.output and not old.exists()

    r = runner.invoke(cli.main, ["cache", "--clear", "--kind", "folder"])
    assert "removed 2 files" in r.output
    assert sorted(e.kind for e in list_cache()) == ["mni152", "oasis", "oasis"]

    r = runner.invoke(cli.main, ["cache", "--clear"])
    assert r.exit_code == 0 and "removed 3 files" in r.output
    assert sorted(p.name for p in store.iterdir()) == ["README.txt"]
    assert "0 files" in runner.invoke(cli.main, ["cache", "--list"]).output
    assert clear_cache() == []

    r = runner.invoke(cli.main, ["cache", "--list", "--clear"])
    assert r.exit_code == 2 and "not both" in r.output
    r = runner.invoke(cli.main, ["cache", "--list", "--dir", str(tmp_path / "elsewhere")])
    assert r.exit_code == 0 and str(tmp_path / "elsewhere" / "datasets") in r.output


def test_list_cache_reports_what_the_cli_shows(tmp_path: Path, rng: np.random.Generator):
    ds = opened(make_adni(tmp_path / "adni", rng), 8, channels=3)
    (entry,) = list_cache()
    assert (entry.kind, entry.resolution, entry.channels, entry.images, entry.state) == ("adni", 8, 3, 8, "ok")
    assert entry.source == ds.source and entry.size == entry.path.stat().st_size
    assert abs(entry.last_used - time.time()) < 60


def test_builtin_name_is_defined_once_and_imported_by_the_cli_and_run_names():
    assert data.BUILTIN == "mni152" and data.KINDS[0] == data.BUILTIN
    assert "BUILTIN_DATA" not in vars(cli) and cli.BUILTIN is data.BUILTIN
    assert dataset_name(" MNI152 ") == data.BUILTIN
