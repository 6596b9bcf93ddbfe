"""Real-data features and statistics, computed once per dataset and feature network.

Files live in <cache>/metrics/ (<cache> = $STYLEGAN2_CACHE or ~/.cache/stylegan2, as for decoded
datasets), named <dataset fingerprint>-<network key>-<count>.pt. They hold plain tensors (loaded
with weights_only=True) and are written atomically, so two processes computing the same
statistics at once both end with a complete file.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .. import fileio
from .features import FeatureNetwork, extract_features
from .scores import GaussianStats, gaussian_stats

CACHE_VERSION = 1


@dataclass
class RealFeatures:
    """Features [N, D] (float32, enough for distances and KID), their Gaussian fit (computed in
    float64 from the unrounded features), and what they came from."""

    feats: np.ndarray
    stats: GaussianStats
    network: str
    reference: str
    network_key: str = ""  # FeatureNetwork.key: which weights (names repeat across runs)
    path: Optional[Path] = None  # the cache file, when there is one


def metrics_cache_dir(cache_dir: Optional[str | os.PathLike] = None) -> Path:
    from stylegan2.data import default_cache_dir
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / "metrics"


def cache_path(fingerprint: str, network_key: str, count: int, cache_dir: Optional[str | os.PathLike] = None) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", network_key)
    return metrics_cache_dir(cache_dir) / f"{fingerprint[:32]}-{safe}-{count}.pt"


def _load(path: Path, fingerprint: str, key: str) -> Optional[dict[str, Any]]:
    """The cache file's contents if it is intact and for these inputs, else None (recompute)."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file is only a cache miss
        return None
    ok = isinstance(d, dict) and d.get("version") == CACHE_VERSION and d.get("fingerprint") == fingerprint \
        and d.get("network_key") == key
    return d if ok else None


def real_features(dataset: Any, net: FeatureNetwork, *, max_images: Optional[int] = None,
                  reference: Optional[str] = None, cache_dir: Optional[str | os.PathLike] = None,
                  use_cache: bool = True, batch: int = 64, seed: int = 0,
                  progress: bool = False) -> RealFeatures:
    """Features of a dataset's images (an ImageDataset: uint8 `images` [N, C, R, R],
    `fingerprint()`, `source`), from the cache when present.

    max_images: use a seeded random subset of this many (all when None or larger than N).
    reference: how results name this set (default: the dataset's source).
    progress: a tqdm bar while features are computed (not when they come from the cache).
    """
    images = dataset.images
    n = len(images) if max_images is None else min(max_images, len(images))
    reference = reference or str(getattr(dataset, "source", "dataset"))
    fingerprint = dataset.fingerprint()
    # The subset depends on the seed, so the seed is part of the key whenever one is taken.
    key = net.key if n == len(images) else f"{net.key}-s{seed}"
    path = cache_path(fingerprint, key, n, cache_dir)
    if use_cache and path.is_file():
        d = _load(path, fingerprint, key)
        if d is not None:
            stats = GaussianStats(d["mu"].numpy(), d["sigma"].numpy(), n)
            return RealFeatures(d["feats"].numpy(), stats, net.name, reference, net.key, path)
    idx = np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False)) if n < len(images) else None
    chosen = images if idx is None else images[idx]
    feats = extract_features(net, torch.from_numpy(np.ascontiguousarray(chosen)), batch=batch,
                             progress=progress, desc="real features")
    stats = gaussian_stats(feats)
    out = RealFeatures(feats.astype(np.float32), stats, net.name, reference, net.key)
    if use_cache:
        fileio.make_dirs(path.parent)
        payload = {"version": CACHE_VERSION, "fingerprint": fingerprint, "network_key": key,
                   "network": net.name, "count": n, "feats": torch.from_numpy(out.feats),
                   "mu": torch.from_numpy(stats.mu), "sigma": torch.from_numpy(stats.sigma)}
        fileio.atomic_write(path, lambda f: torch.save(payload, f))
        out.path = path
    return out
