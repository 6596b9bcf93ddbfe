"""Memorization audit: is any generated image a (near) copy of a training image?

For each fake, its nearest training image by pixel distance (RMS difference per pixel, images
in [-1, 1], fakes rounded to uint8 as their PNGs would be) and, given a feature network, by
feature distance (Euclidean). A distance means little on its own, so the threshold is calibrated
on the training set itself: for (a seeded sample of) real images, the distance to the nearest
*other* real image; the threshold is a low percentile of those (default the 1st). A fake at least
as close to some training image as the closest 1% of real images are to their own nearest
neighbours is flagged. Adjacent MRI slices are near-duplicates of each other, which is why a
percentile of real-to-real distances, not a fixed number, is the yardstick.

Outputs (written atomically): pairs.csv (every fake: nearest index and distance for each
measure, and whether it was flagged), closest_pairs.png (the closest pairs: fake, nearest by
pixels, nearest by features), summary.json.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from .. import fileio
from ..images import save_grid
from .features import FeatureNetwork, extract_features
from .neighbors import kth_nearest


@dataclass
class AuditMeasure:
    """One distance (pixel or feature): per-fake nearest training index and distance, the
    calibrated threshold and the fraction of fakes closer than it."""

    name: str
    nearest: np.ndarray  # int64 [N_fake]
    distance: np.ndarray  # float64 [N_fake]
    threshold: float
    real_nn_percentiles: dict[str, float]  # the calibration distribution (real -> nearest other real)

    @property
    def flagged(self) -> np.ndarray:
        # <=, not <: when the real set holds exact duplicates (blank slices) the threshold can be
        # 0, and an exact copy must still be flagged.
        return self.distance <= self.threshold

    @property
    def fraction_flagged(self) -> float:
        return float(self.flagged.mean()) if len(self.distance) else 0.0

    def summary(self) -> dict[str, Any]:
        q = np.percentile(self.distance, [0, 1, 5, 50, 95]) if len(self.distance) else [np.nan] * 5
        return {"threshold": self.threshold, "fraction_flagged": self.fraction_flagged,
                "num_flagged": int(self.flagged.sum()),
                "fake_nn_distance": dict(zip(["min", "p1", "p5", "median", "p95"], map(float, q))),
                "real_nn_distance": self.real_nn_percentiles}


@dataclass
class AuditResult:
    measures: list[AuditMeasure]
    num_fake: int
    num_train: int
    percentile: float
    reference: str
    files: dict[str, str] = field(default_factory=dict)

    def measure(self, name: str) -> AuditMeasure:
        return next(m for m in self.measures if m.name == name)

    def summary(self) -> dict[str, Any]:
        return {"num_fake": self.num_fake, "num_train": self.num_train, "reference": self.reference,
                "threshold_percentile": self.percentile, "files": self.files,
                "measures": {m.name: m.summary() for m in self.measures}}


def _calibrate(vectors: torch.Tensor, percentile: float, calib_n: int, seed: int,
               chunk: int) -> tuple[float, dict[str, float]]:
    """The `percentile` of real -> nearest-other-real distances, over a seeded sample of
    `calib_n` query images searched against all of them."""
    n = vectors.shape[0]
    if n < 2:
        raise ValueError("the audit needs at least 2 training images to calibrate its threshold")
    if calib_n < n:
        queries = np.sort(np.random.default_rng(seed).choice(n, calib_n, replace=False))
        d, _ = kth_nearest(vectors[torch.from_numpy(queries)], vectors, 1, self_index=queries, chunk=chunk)
    else:
        d, _ = kth_nearest(vectors, vectors, 1, exclude_self=True, chunk=chunk)
    stats = dict(zip(["min", "p1", "p5", "median"], map(float, np.percentile(d, [0, 1, 5, 50]))))
    # Reals with an exact duplicate make the threshold 0 once they pass `percentile`: say so.
    stats["fraction_exact_duplicates"] = float((d == 0).mean())
    return float(np.percentile(d, percentile)), stats


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 as is; float in [-1, 1] rounded to uint8 as a saved PNG of it would be. Pixels are
    compared as uint8 so the training set needs no float copy (3 GB for OASIS at 256)."""
    if images.dtype == torch.uint8:
        return images
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _pixel_scale(images: torch.Tensor) -> float:
    """Factor from a Euclidean distance of uint8 [N, C, R, R] images to their RMS pixel
    difference in [-1, 1] units (comparable across resolutions)."""
    return 1.0 / (127.5 * float(np.prod(images.shape[1:])) ** 0.5)


def audit_memorization(fakes: torch.Tensor | np.ndarray, train: Any, out_dir: Optional[str | os.PathLike] = None, *,
                       net: Optional[FeatureNetwork] = None, percentile: float = 1.0, calib_n: int = 2000,
                       grid_pairs: int = 16, seed: int = 0, chunk: int = 256, batch: int = 64,
                       reference: Optional[str] = None, progress: bool = False) -> AuditResult:
    """Audit fakes against training images.

    fakes: [N, C, R, R] float in [-1, 1] or uint8. train: an ImageDataset (uint8 `images`
        [M, C, R, R]) or such an array/tensor, same C and R as the fakes.
    net: a feature network for the feature-distance measure (pixels only when None).
    percentile: threshold = this percentile of real -> nearest-other-real distances, measured
        for `calib_n` seeded real images against all M.
    out_dir: where pairs.csv, closest_pairs.png (the `grid_pairs` closest by pixels) and
        summary.json go; nothing is written when None.
    """
    images = getattr(train, "images", train)
    train_t = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images)
    fakes_t = torch.as_tensor(fakes)
    if fakes_t.ndim != 4 or fakes_t.shape[1:] != train_t.shape[1:]:
        raise ValueError(f"fakes {list(fakes_t.shape)} and training images {list(train_t.shape)} must both be "
                         f"[N, C, R, R] with the same C and R")
    reference = reference or str(getattr(train, "source", "training images"))
    train_t, fakes_t = _as_uint8(train_t), _as_uint8(fakes_t)
    measures = []
    spaces = [("pixel", train_t, fakes_t, _pixel_scale(train_t))]
    if net is not None:
        real_f = extract_features(net, train_t, batch, progress=progress, desc="training features")
        fake_f = extract_features(net, fakes_t, batch, progress=progress, desc="fake features")
        spaces.append((f"feature:{net.name}", torch.from_numpy(real_f).float(), torch.from_numpy(fake_f).float(), 1.0))
    for name, real_v, fake_v, scale in spaces:
        threshold, calib = _calibrate(real_v, percentile, calib_n, seed, chunk)
        dist, idx = kth_nearest(fake_v, real_v, 1, chunk=chunk)
        measures.append(AuditMeasure(name, idx, dist * scale, threshold * scale,
                                     {k: v if k.startswith("fraction") else v * scale for k, v in calib.items()}))
    result = AuditResult(measures, fakes_t.shape[0], train_t.shape[0], percentile, reference)
    if out_dir is not None:
        write_audit(result, fakes_t, train_t, out_dir, grid_pairs)
    return result


def write_audit(result: AuditResult, fakes: torch.Tensor, train: torch.Tensor, out_dir: str | os.PathLike,
                grid_pairs: int = 16) -> None:
    """pairs.csv, closest_pairs.png and summary.json into out_dir (see the module docstring)."""
    out = fileio.make_dirs(out_dir)
    buf = io.StringIO()
    w = csv.writer(buf)
    header = ["fake_index"]
    for m in result.measures:
        header += [f"{m.name}_nearest_train", f"{m.name}_distance", f"{m.name}_flagged"]
    w.writerow(header)
    for i in range(result.num_fake):
        row: list[Any] = [i]
        for m in result.measures:
            row += [int(m.nearest[i]), f"{m.distance[i]:.6g}", int(m.flagged[i])]
        w.writerow(row)
    result.files["csv"] = str(fileio.atomic_write_text(out / "pairs.csv", buf.getvalue()))

    # The closest pairs by pixels, one row each: fake | nearest by pixels | nearest by features.
    pixel = result.measure("pixel")
    order = np.argsort(pixel.distance, kind="stable")[:grid_pairs]
    tiles = []
    for i in order:
        tiles += [_as_uint8(fakes[i]), _as_uint8(train[pixel.nearest[i]])]
        tiles += [_as_uint8(train[m.nearest[i]]) for m in result.measures[1:]]
    if tiles:
        grid = save_grid(torch.stack(tiles), out / "closest_pairs.png", cols=len(result.measures) + 1)
        result.files["grid"] = str(grid)
    result.files["summary"] = str(out / "summary.json")
    fileio.atomic_write_text(out / "summary.json", json.dumps(result.summary(), indent=2) + "\n")
