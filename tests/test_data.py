"""Datasets: every source, the layout detection, errors, channels, caching and fingerprints.

Trees are built in tmp_path from seeded random pixels (never blank images). Where no resize
happens the loaded pixels are compared exactly with the files' own decoded pixels.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import stylegan2.data.opener as opener
from stylegan2.data import (CACHE_ENV, DatasetError, DatasetWarning, ImageDataset, default_cache_dir,
                            detect_layout, open_dataset)
from stylegan2.data.warp import bspline_matrix, control_coords, gaussian_blur3d, smooth_field


@pytest.fixture
def rng(gen: torch.Generator) -> np.random.Generator:
    """A numpy generator seeded from the per-test torch generator."""
    return np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))


def save(path: Path, arr: np.ndarray, **kw) -> Path:
    """Writes uint8 [H, W] or [H, W, 3] (or uint16 [H, W]) pixels to `path` (format from suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def decoded(path: Path, mode: str = "L") -> np.ndarray:
    """The file's pixels as PIL decodes them: uint8 [H, W] (L) or [H, W, 3] (RGB)."""
    with Image.open(path) as im:
        return np.asarray(im.convert(mode))


def opened(spec, resolution, channels=1, **kw) -> ImageDataset:
    kw.setdefault("progress", False)
    return open_dataset(str(spec), resolution, channels, **kw)


# ---------------------------------------------------------------------------------------------
# Generic folders


def test_folder_mixed_sizes_formats_nested_and_corrupt(tmp_path: Path, rng: np.random.Generator):
    root = tmp_path / "imgs"
    square = save(root / "a_square.png", rng.integers(1, 256, (16, 16), dtype=np.uint8))
    wide = save(root / "sub" / "b_wide.png", rng.integers(1, 256, (10, 16), dtype=np.uint8))
    rgb = save(root / "sub" / "deeper" / "c_rgb.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    save(root / "sub" / "d_big.JPG", rng.integers(0, 256, (45, 37, 3), dtype=np.uint8), quality=90)
    save(root / "e_tall.jpeg", rng.integers(0, 256, (29, 11), dtype=np.uint8))
    (root / "sub" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(200))
    (root / "notes.txt").write_text("not an image")
    save(root / ".hidden.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))

    with pytest.warns(DatasetWarning, match=r"skipped 1 of 6 unreadable files .*corrupt\.png"):
        ds = opened(root, 16)
    assert detect_layout(root).kind == "folder"
    assert len(ds) == 5 and ds.skipped == 1
    assert ds.images.shape == (5, 1, 16, 16) and ds.images.dtype == np.uint8
    assert ds.labels is None and ds.label_names == [] and "image folder" in ds.source
    # Sorted order: a_square, e_tall, sub/b_wide, sub/d_big, sub/deeper/c_rgb.
    np.testing.assert_array_equal(ds.images[0, 0], decoded(square))
    # 16 wide x 10 high: padded with 3 black rows above and below, content unchanged.
    assert (ds.images[2, 0, :3] == 0).all() and (ds.images[2, 0, 13:] == 0).all()
    np.testing.assert_array_equal(ds.images[2, 0, 3:13], decoded(wide))
    # RGB -> luma (ITU-R 601-2), against a float64 computation of the definition.
    src = decoded(rgb, "RGB").astype(np.float64)
    luma = src @ np.array([0.299, 0.587, 0.114])
    assert np.abs(ds.images[4, 0].astype(np.float64) - luma).max() <= 1.0
    # Resized images keep their content: not blank, and varied.
    for i in (1, 3):
        assert ds.images[i].std() > 10
    img, label = ds[3]
    assert isinstance(img, torch.Tensor) and img.dtype == torch.uint8 and img.shape == (1, 16, 16)
    assert label == -1


def test_folder_channels3_keeps_rgb_and_replicates_gray(tmp_path: Path, rng: np.random.Generator):
    gray = save(tmp_path / "g.png", rng.integers(1, 256, (12, 12), dtype=np.uint8))
    rgb = save(tmp_path / "r.png", rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    ds = opened(tmp_path, 12, channels=3)
    assert ds.images.shape == (2, 3, 12, 12) and ds.num_channels == 3
    for c in range(3):
        np.testing.assert_array_equal(ds.images[0, c], decoded(gray))
    np.testing.assert_array_equal(ds.images[1].transpose(1, 2, 0), decoded(rgb, "RGB"))
    assert not np.array_equal(ds.images[1, 0], ds.images[1, 1])


def test_folder_crop_mode_and_16bit(tmp_path: Path, rng: np.random.Generator):
    wide = save(tmp_path / "a.png", rng.integers(1, 256, (10, 16), dtype=np.uint8))
    deep = rng.integers(1000, 60000, (10, 10)).astype(np.uint16)
    save(tmp_path / "b16.png", deep)
    ds = opened(tmp_path, 10, fit="crop")
    np.testing.assert_array_equal(ds.images[0, 0], decoded(wide)[:, 3:13])
    # 16-bit pixels are rescaled from their own range, not clipped at 255.
    want = (deep.astype(np.float64) - deep.min()) / (deep.max() - deep.min()) * 255
    assert np.abs(ds.images[1, 0] - want).max() <= 0.501


def test_folder_max_images_is_seeded_subset(tmp_path: Path, rng: np.random.Generator):
    for i in range(9):
        save(tmp_path / f"{i}.png", rng.integers(1, 256, (8, 8), dtype=np.uint8))
    full = opened(tmp_path, 8)
    a = opened(tmp_path, 8, max_images=4, seed=1)
    b = opened(tmp_path, 8, max_images=4, seed=1)
    assert len(a) == 4
    np.testing.assert_array_equal(a.images, b.images)
    rows = {full.images[i].tobytes() for i in range(9)}
    assert all(a.images[i].tobytes() in rows for i in range(4))


# ---------------------------------------------------------------------------------------------
# OASIS and ADNI layouts


def test_oasis_reads_all_image_splits_never_seg(tmp_path: Path, rng: np.random.Generator):
    data = tmp_path / "download" / "keras_png_slices_data"
    expected = []
    for split, n in (("train", 3), ("validate", 2), ("test", 2)):
        for i in range(n):
            # Image slices live in [1, 127]; masks in [200, 255], so a leaked mask is visible.
            arr = rng.integers(1, 128, (16, 16), dtype=np.uint8)
            save(data / f"keras_png_slices_{split}" / f"case_{i:03d}_slice_{i}.nii.png", arr)
            expected.append(arr)
            mask = rng.integers(200, 256, (16, 16), dtype=np.uint8)
            save(data / f"keras_png_slices_seg_{split}" / f"seg_{i:03d}_slice_{i}.nii.png", mask)
    layout = detect_layout(tmp_path / "download")
    assert layout.kind == "oasis" and layout.root == data
    ds = opened(tmp_path / "download", 16)
    assert len(ds) == 7 and ds.skipped == 0 and "OASIS" in ds.source
    assert ds.images.max() <= 127
    assert sorted(a.tobytes() for a in expected) == sorted(im[0].tobytes() for im in ds.images)


@pytest.mark.parametrize("wrapped", [False, True])
def test_adni_labels_and_padding(tmp_path: Path, rng: np.random.Generator, wrapped: bool):
    root = tmp_path / "AD_NC"
    files = []
    for split, counts in (("train", (2, 3)), ("test", (1, 1))):
        for label, (name, n) in enumerate(zip(["AD", "NC"], counts)):
            for i in range(n):
                arr = rng.integers(1, 256, (240, 256), dtype=np.uint8)  # 256 wide, 240 high
                files.append((save(root / split / name / f"{name}_{i}.jpeg", arr, quality=85), label))
    ds = opened(tmp_path if wrapped else root, 256)
    assert detect_layout(tmp_path if wrapped else root).root == root
    assert ds.label_names == ["AD", "NC"] and len(ds) == 7 and ds.num_classes == 2
    assert ds.labels.dtype == np.int64
    # Loader order: split (train, test), then class folder (AD, NC), then file name.
    by_label = sorted(files, key=lambda fl: (fl[0].parts[-3] != "train", fl[1], fl[0].name))
    assert [lab for _, lab in by_label] == ds.labels.tolist()
    for i, (path, label) in enumerate(by_label):
        assert (ds.images[i, 0, :8] == 0).all() and (ds.images[i, 0, 248:] == 0).all()
        np.testing.assert_array_equal(ds.images[i, 0, 8:248], decoded(path))
        img, lab = ds[i]
        assert img.shape == (1, 256, 256) and lab == label
    assert "AD 3" in ds.source and "NC 4" in ds.source


def test_adni_small_resolution_rgb_jpeg(tmp_path: Path, rng: np.random.Generator):
    for name in ("AD", "NC"):
        save(tmp_path / "train" / name / "x.jpeg", rng.integers(0, 256, (240, 256, 3), dtype=np.uint8))
    ds = opened(tmp_path, 32, channels=3)
    assert ds.images.shape == (2, 3, 32, 32) and ds.labels.tolist() == [0, 1]


# ---------------------------------------------------------------------------------------------
# NIfTI volumes


def brain_volume(rng: np.random.Generator, shape: tuple[int, int, int], z_range: range) -> np.ndarray:
    """float32 [X, Y, Z]: faint noise everywhere, a random-intensity block of "brain" in the
    slices of z_range (the same area in each, so all of them count as brain), and a 3x3 sliver
    of tissue in the slice above (too little to count as a brain slice)."""
    vol = rng.uniform(0, 5, shape).astype(np.float32)
    x0, y0 = shape[0] // 5, shape[1] // 5
    block = rng.uniform(300, 1000, (shape[0] - 2 * x0, shape[1] - 2 * y0, len(z_range)))
    vol[x0:shape[0] - x0, y0:shape[1] - y0, z_range.start:z_range.stop] = block
    vol[x0:x0 + 3, y0:y0 + 3, z_range.stop] = rng.uniform(300, 1000, (3, 3))
    return vol


def test_nifti_folder_keeps_brain_slices_and_skips_corrupt(tmp_path: Path, rng: np.random.Generator):
    root = tmp_path / "scans"
    (root / "sub").mkdir(parents=True)
    v1 = brain_volume(rng, (20, 24, 16), range(3, 11))
    nib.save(nib.Nifti1Image(v1, np.diag([1.0, 1.2, 2.0, 1.0])), root / "a.nii")
    v2 = brain_volume(rng, (18, 18, 12), range(5, 9))
    nib.save(nib.Nifti1Image(v2, np.diag([-1.0, 1.0, -1.5, 1.0])), root / "sub" / "b.nii.gz")
    (root / "sub" / "broken.nii.gz").write_bytes(rng.bytes(300))
    assert detect_layout(root).kind == "nifti"
    with pytest.warns(DatasetWarning, match="skipped 1 of 3"):
        ds = opened(root, 24, cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 8 + 4 and ds.skipped == 1 and ds.labels is None
    assert "2 volumes" in ds.source
    for img in ds.images[:, 0]:
        assert img.max() >= 200          # per-volume normalisation reaches the top of the range
        assert img[12, 12] >= 50         # brain in the middle of the field of view
        ring = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).astype(np.float64)
        assert ring.mean() < 0.25 * img[6:18, 6:18].mean()  # a dark margin around it

    # A single file works too, and slices without brain are excluded there as well.
    single = opened(root / "a.nii", 24, cache_dir=str(tmp_path / "cache"))
    assert len(single) == 8
    np.testing.assert_array_equal(single.images, ds.images[:8])


def test_nifti_cache_hit_returns_identical_data(tmp_path: Path, rng: np.random.Generator,
                                                 monkeypatch: pytest.MonkeyPatch):
    nib.save(nib.Nifti1Image(brain_volume(rng, (16, 16, 10), range(2, 8)), np.eye(4)), tmp_path / "v.nii.gz")
    cache = tmp_path / "cache"
    first = opened(tmp_path / "v.nii.gz", 16, cache_dir=str(cache))

    def no_build(*args, **kwargs):
        raise AssertionError("cache miss: the volume was read again")

    monkeypatch.setattr(opener, "open_nifti", no_build)
    again = opened(tmp_path / "v.nii.gz", 16, cache_dir=str(cache))
    np.testing.assert_array_equal(first.images, again.images)
    assert first.fingerprint() == again.fingerprint()


def test_nifti_without_brain_is_an_error(tmp_path: Path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), tmp_path / "empty.nii")
    with pytest.raises(DatasetError, match="no usable NIfTI volume"):
        opened(tmp_path, 16, cache_dir=str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------------------
# Built-in MNI152 set


def test_mni152_deterministic_labeled_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    a = opened("mni152", 16, max_images=12, seed=3, cache_dir=str(tmp_path / "c1"))
    b = opened("mni152", 16, max_images=12, seed=3, cache_dir=str(tmp_path / "c2"))  # rebuilt
    c = opened("mni152", 16, max_images=12, seed=4, cache_dir=str(tmp_path / "c3"))
    assert a.images.shape == (12, 1, 16, 16)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert a.label_names == ["inferior", "middle", "superior"]
    assert set(a.labels.tolist()) == {0, 1, 2}
    # Brain slices, not noise or blanks: dark corners, a bright centre, and all images differ.
    assert (a.images[:, 0, 0, 0] <= 5).all() and (a.images[:, 0, -1, -1] <= 5).all()
    assert (a.images.max(axis=(1, 2, 3)) > 100).all()
    assert ((a.images > 20).mean(axis=(1, 2, 3)) > 0.08).all()
    assert len({im.tobytes() for im in a.images}) == 12

    # A cache hit (here via the environment variable) returns identical data without building.
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c1"))
    assert default_cache_dir() == tmp_path / "c1"
    assert len(list((tmp_path / "c1" / "datasets").glob("mni152-16px-1ch-*.npz"))) == 1

    def no_build(*args, **kwargs):
        raise AssertionError("cache miss: mni152 was built again")

    monkeypatch.setattr(opener, "build_mni152", no_build)
    hit = opened("mni152", 16, max_images=12, seed=3)
    np.testing.assert_array_equal(hit.images, a.images)
    np.testing.assert_array_equal(hit.labels, a.labels)
    assert hit.label_names == a.label_names and hit.fingerprint() == a.fingerprint()


def test_mni152_channels3_replicates(tmp_path: Path):
    ds = opened("mni152", 8, channels=3, max_images=6, cache_dir=str(tmp_path))
    assert ds.images.shape == (6, 3, 8, 8)
    assert (ds.images[:, 0] == ds.images[:, 2]).all() and ds.images.max() > 50


def test_unreadable_cache_is_rebuilt(tmp_path: Path):
    first = opened("mni152", 8, max_images=6, cache_dir=str(tmp_path))
    (path,) = (tmp_path / "datasets").glob("*.npz")
    path.write_bytes(b"garbage")
    with pytest.warns(DatasetWarning, match="unreadable dataset cache"):
        again = opened("mni152", 8, max_images=6, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(first.images, again.images)


# ---------------------------------------------------------------------------------------------
# Errors


def test_missing_path_names_it(tmp_path: Path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match="does not exist") as e:
        opened(missing, 16)
    assert str(missing) in str(e.value) and "mni152" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_empty_folder_names_it(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="is empty") as e:
        opened(empty, 16)
    assert str(empty) in str(e.value)


def test_folder_without_images_names_it(tmp_path: Path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(DatasetError, match="no images found") as e:
        opened(tmp_path, 16)
    assert str(tmp_path) in str(e.value)


def test_folder_of_unreadable_files_names_it(tmp_path: Path, rng: np.random.Generator):
    for i in range(3):
        (tmp_path / f"bad{i}.png").write_bytes(rng.bytes(64))
    (tmp_path / "trunc.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.bytes(40))
    with pytest.raises(DatasetError, match="no readable image") as e:
        opened(tmp_path, 16)
    assert str(tmp_path) in str(e.value) and "4" in str(e.value)


def test_file_that_is_not_a_dataset(tmp_path: Path, rng: np.random.Generator):
    f = save(tmp_path / "one.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    with pytest.raises(DatasetError, match="is a file"):
        opened(f, 16)


@pytest.mark.parametrize("kw", [dict(resolution=3), dict(channels=2), dict(max_images=0),
                                dict(fit="stretch"), dict(resolution=16.0)])
def test_bad_arguments(kw: dict):
    args = dict(resolution=16, channels=1)
    args.update(kw)
    with pytest.raises(ValueError, match=next(iter(kw))):
        open_dataset("mni152", args.pop("resolution"), args.pop("channels"), progress=False, **args)


# ---------------------------------------------------------------------------------------------
# Fingerprints and the dataset class


def test_fingerprint_stable_and_sensitive(tmp_path: Path, rng: np.random.Generator):
    arr = rng.integers(1, 255, (12, 12), dtype=np.uint8)
    save(tmp_path / "a.png", arr)
    save(tmp_path / "b.png", rng.integers(1, 256, (12, 12), dtype=np.uint8))
    fp = opened(tmp_path, 12).fingerprint()
    assert fp == opened(tmp_path, 12).fingerprint()
    assert fp != opened(tmp_path, 8).fingerprint()
    assert fp != opened(tmp_path, 12, channels=3).fingerprint()
    arr = arr.copy()
    arr[5, 7] += 1  # one pixel, one grey level
    save(tmp_path / "a.png", arr)
    assert fp != opened(tmp_path, 12).fingerprint()

    images = rng.integers(0, 256, (4, 1, 8, 8), dtype=np.uint8)
    x = ImageDataset(images, np.array([0, 1, 0, 1]), ["p", "q"])
    y = ImageDataset(images.copy(), np.array([0, 1, 1, 1]), ["p", "q"])
    z = ImageDataset(images.copy(), np.array([0, 1, 0, 1]), ["q", "p"])
    w = ImageDataset(images.copy())
    assert len({x.fingerprint(), y.fingerprint(), z.fingerprint(), w.fingerprint()}) == 4


@pytest.mark.parametrize("bad", [
    dict(images=np.zeros((2, 1, 8, 8), np.float32)),
    dict(images=np.ones((2, 2, 8, 8), np.uint8)),
    dict(images=np.ones((2, 1, 8, 6), np.uint8)),
    dict(images=np.ones((2, 1, 8, 8), np.uint8), labels=np.array([0, 2]), label_names=["a", "b"]),
    dict(images=np.ones((2, 1, 8, 8), np.uint8), labels=np.array([0]), label_names=["a"]),
])
def test_image_dataset_rejects_bad_arrays(bad: dict):
    with pytest.raises(ValueError):
        ImageDataset(**bad)


# ---------------------------------------------------------------------------------------------
# The warp building blocks, against float64 computations of their definitions


def test_bspline_field_reproduces_affine_maps(gen: torch.Generator):
    for size, g in ((7, 5), (16, 6), (33, 8)):
        coef = torch.randn(2, 3, generator=gen, dtype=torch.float64)
        k = control_coords(g)
        ctrl = (coef[:, 0].view(2, 1, 1) * k.view(1, 1, g) + coef[:, 1].view(2, 1, 1) * k.view(1, g, 1)
                + coef[:, 2].view(2, 1, 1))  # [2 channels, G rows, G cols]
        field = smooth_field(ctrl[None], size)[0]  # [size, size, 2]
        c = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
        want = coef[:, 0].view(1, 1, 2) * c.view(1, size, 1) + coef[:, 1].view(1, 1, 2) * c.view(size, 1, 1) \
            + coef[:, 2].view(1, 1, 2)
        torch.testing.assert_close(field.double(), want, atol=1e-5, rtol=0)
        weights = bspline_matrix(size, g).double()
        torch.testing.assert_close(weights.sum(1), torch.ones(size, dtype=torch.float64))


def test_gaussian_blur_matches_definition(gen: torch.Generator):
    vol = torch.rand(9, 13, 7, generator=gen, dtype=torch.float64)
    sigmas = (0.8, 0.0, 1.7)
    out = gaussian_blur3d(vol, sigmas)
    want = vol
    for axis, s in enumerate(sigmas):
        if s == 0:
            continue
        r = int(np.ceil(3 * s))
        taps = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / s) ** 2)
        taps /= taps.sum()
        n = vol.shape[axis]
        m = torch.zeros(n, n, dtype=torch.float64)  # zero padding outside the volume
        for i in range(n):
            for j in range(max(0, i - r), min(n, i + r + 1)):
                m[i, j] = taps[j - i + r]
        want = torch.movedim(torch.movedim(want, axis, -1) @ m.T, -1, axis)
    torch.testing.assert_close(out, want)


def test_no_nilearn_import_outside_mni152(tmp_path: Path, rng: np.random.Generator):
    import subprocess
    import sys

    save(tmp_path / "a.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    code = ("import sys, stylegan2.data as d; d.open_dataset(sys.argv[1], 8, progress=False); "
            "print('nilearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    assert out.stdout.strip() == "False"
