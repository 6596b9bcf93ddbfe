"""Decoding one image file into a square uint8 array, and turning float slices into pixels.

Every 2-D source ends here, so grayscale conversion, squaring and resizing behave the same for
a folder of photos, OASIS PNGs and ADNI JPEGs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# What a file that claims to be an image may raise while being decoded. PIL reports most damage
# as OSError (UnidentifiedImageError, "image file is truncated"), broken PNG chunks as
# SyntaxError, and absurd sizes as DecompressionBombError.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)

FIT_MODES = ("pad", "crop")


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Converts any PIL image to 'L' (channels=1) or 'RGB' (channels=3).

    16-bit and float images (common for medical PNG/TIFF) are rescaled from their own min..max
    to 0..255: PIL's own conversion would clip them to 255 and lose the anatomy.
    """
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(np.round(scaled).astype(np.uint8))
    if channels == 1:
        return img if img.mode == "L" else img.convert("RGB").convert("L")
    return img if img.mode == "RGB" else img.convert("RGB")


def fit_square(img: Image.Image, fit: str = "pad") -> Image.Image:
    """Makes an image square: 'pad' centres it on black (MRI background), 'crop' cuts the centre."""
    w, h = img.size
    if w == h:
        return img
    if fit == "crop":
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        return img.crop((left, top, left + s, top + s))
    s = max(w, h)
    canvas = Image.new(img.mode, (s, s), 0)
    canvas.paste(img, ((s - w) // 2, (s - h) // 2))
    return canvas


def load_image_file(path: Path, resolution: int, channels: int, fit: str = "pad"
                    ) -> tuple[np.ndarray, tuple[int, int]]:
    """Decodes one PNG/JPEG/... file into uint8 [channels, resolution, resolution], and returns
    it with the file's own (width, height), so a caller can say what it resized.

    Grayscale sources are replicated when channels=3; RGB sources are converted to luma when
    channels=1. Raises one of DECODE_ERRORS if the file cannot be decoded.
    """
    with Image.open(path) as img:
        size = img.size  # before draft(), which shrinks the decoded JPEG
        if img.format == "JPEG":
            # Let the JPEG decoder downscale by 2/4/8 when the file is much larger than needed:
            # decoding a 4000 px photo to feed a 256 px model is most of the cost otherwise.
            img.draft("L" if channels == 1 else "RGB", (resolution, resolution))
        img.load()
        img = to_mode(img, channels)
    img = fit_square(img, fit)
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[None], channels, axis=0)
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr), size


def float_to_uint8(x: np.ndarray) -> np.ndarray:
    """Maps floats in [0, 1] (any shape) to uint8 0..255, clipping outside values."""
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def resize_float(square: np.ndarray, resolution: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """Resamples region `box` = (left, top, right, bottom) of a float32 [H, W] array to
    [resolution, resolution] with an antialiasing Lanczos filter (PIL 'F' mode)."""
    img = Image.fromarray(np.ascontiguousarray(square, dtype=np.float32))
    out = img.resize((resolution, resolution), Image.Resampling.LANCZOS, box=box)
    return np.asarray(out, dtype=np.float32)
