"""stylegan2.image_writer.PngWriter: every queued image lands intact, memory stays bounded, and a
failed write is an error, not a silent gap."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stylegan2.image_writer import PngWriter


def test_every_image_is_written_intact(tmp_path, gen):
    rng = np.random.default_rng(int(gen.initial_seed()))
    images = [rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)
              for h, w, c in [(16, 16, 1), (9, 13, 3), (32, 8, 1)] * 7]
    with PngWriter(workers=2) as w:
        for i, im in enumerate(images):
            w.submit(im, tmp_path / f"im{i}.png")
            assert len(w._pending) <= 8  # at most 4 per worker wait in memory
    assert w.written == len(images)
    for i, im in enumerate(images):
        back = np.asarray(Image.open(tmp_path / f"im{i}.png"))
        assert np.array_equal(back.reshape(im.shape), im)
    assert not list(tmp_path.glob("*.tmp*"))


def test_failed_write_and_bad_images_are_errors(tmp_path):
    with pytest.raises(ValueError, match="workers: must be at least 1, got 0"):
        PngWriter(workers=0)
    w = PngWriter(workers=1)
    with pytest.raises(ValueError, match=r"image: expected uint8 \[H, W, 1 or 3\], got float32"):
        w.submit(np.zeros((4, 4, 1), np.float32), tmp_path / "x.png")
    w.submit(np.zeros((4, 4, 1), np.uint8), tmp_path / "missing-folder" / "x.png")
    # One line naming the file and the cause (stylegan2.fileio.WriteError, an OSError).
    with pytest.raises(OSError, match=r"cannot write .*missing-folder/x\.png: .*\[ENOENT\]"):
        w.close()
