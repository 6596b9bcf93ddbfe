"""Metrics at snapshots (`train --metrics fid,kid,pr`), and the best checkpoint by FID.

    sm = SnapshotMetrics(["fid", "kid"], 5000, net, reference_dataset, "OASIS validate (1120 images)")
    train(cfg, run_dir, dataset, metrics=sm)

At each snapshot the run's G_ema makes `num_fakes` images (fake i from seed i, as the `metrics`
command draws them, and noise from the global generator seeded alike, so a snapshot's numbers
can be reproduced from its checkpoint with SnapshotMetrics.measure) and the
metrics library compares them with the reference set's features, computed once before training
and cached per dataset and network. The numbers join the snapshot's stats row ("Metrics/fid",
"Metrics/kid", "Metrics/precision", "Metrics/recall"); metrics.jsonl keeps every full result
(network, image counts, reference). When FID is measured, checkpoints/best.pt holds the snapshot
with the lowest FID so far, its "best" entry saying which (nimg, kimg, fid, network, reference).

The fakes' per-layer noise is seeded and drawn inside a fork of torch's random state
(metrics.fake_batches), so a snapshot's numbers depend only on its weights and a run with
metrics trains exactly as one without.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .. import fileio
from ..metrics import FeatureNetwork, MetricResult, RealFeatures, compute_metrics, fake_batches, real_features
from . import checkpoint as ckpt_io

# Precision/recall's neighbourhood size, as the `metrics` command uses.
PR_K = 3
STATS_PREFIX = "Metrics/"


@dataclass
class SnapshotMetrics:
    """What to measure at snapshots and against what.

    names: metric names from stylegan2.metrics.METRICS. num_fakes: fakes per snapshot.
    net: the feature network (one for the whole run, so snapshots compare).
    reference: the real images (an ImageDataset: the held-out split where the data has one).
    reference_name: how reports name it, e.g. "OASIS validate (1120 images)".
    """

    names: list[str]
    num_fakes: int
    net: FeatureNetwork
    reference: Any
    reference_name: str
    batch: int = 32
    seed: int = 0
    cache_dir: Optional[str] = None
    real: Optional[RealFeatures] = field(default=None, repr=False)

    def prepare(self, progress: bool = False) -> RealFeatures:
        """The reference set's features (from the cache when there); before training starts, so
        a problem shows at once and the first snapshot is not slower than the others."""
        if self.real is None:
            self.real = real_features(self.reference, self.net, reference=self.reference_name,
                                      batch=self.batch, cache_dir=self.cache_dir, progress=progress)
        return self.real

    def measure(self, G: torch.nn.Module) -> list[MetricResult]:
        """The metrics of generator G (G_ema), with torch's RNG state left as it was (the fakes'
        noise is seeded and forked inside fake_batches)."""
        real = self.prepare()
        fakes = fake_batches(G, self.num_fakes, batch=self.batch, seed=self.seed)
        return compute_metrics(fakes, real, self.net, self.names, k=PR_K, seed=self.seed, batch=self.batch)


def stats_values(results: list[MetricResult]) -> dict[str, float]:
    """{"Metrics/fid": ..., "Metrics/kid": ..., ...} for a stats row."""
    return {f"{STATS_PREFIX}{r.metric}": float(r.value) for r in results}


def fid_of(results: list[MetricResult]) -> Optional[float]:
    return next((r.value for r in results if r.metric == "fid"), None)


def best_path(run_dir: Path) -> Path:
    return Path(run_dir) / ckpt_io.CHECKPOINTS / ckpt_io.BEST


def read_best(run_dir: Path) -> Optional[dict[str, Any]]:
    """The "best" record of a run's best.pt, or None when there is none (or it is unreadable:
    the next measured snapshot then replaces it)."""
    p = best_path(run_dir)
    if not p.is_file():
        return None
    try:
        ck = ckpt_io.read_checkpoint_file(p)
    except ckpt_io.CheckpointError:
        return None
    best = ck.get("best") if isinstance(ck, dict) else None
    return best if isinstance(best, dict) and isinstance(best.get("fid"), float) else None


class BestTracker:
    """Keeps checkpoints/best.pt at the snapshot of lowest FID measured with one network.

    A best.pt from a later point than the run resumed at (an abandoned continuation), or measured
    with another feature network (numbers that do not compare), is replaced by the next
    measurement rather than trusted.
    """

    def __init__(self, run_dir: Path, network_key: str, cur_nimg: int, log: Callable[[str], None]) -> None:
        self.run_dir = Path(run_dir)
        self.network_key = network_key
        self.best = read_best(self.run_dir)
        if self.best is not None and (self.best.get("network_key") != network_key
                                      or int(self.best.get("nimg", 0)) > cur_nimg):
            log(f"note: {best_path(self.run_dir)} ({self.best.get('network')}, {self.best.get('kimg')} kimg) does "
                f"not compare with this run's measurements; the next snapshot replaces it")
            self.best = None

    def update(self, run: Any, results: list[MetricResult]) -> Optional[Path]:
        """Write best.pt when this snapshot's FID is the lowest so far; returns its path then."""
        value = fid_of(results)
        if value is None or not math.isfinite(value):
            return None
        if self.best is not None and value >= self.best["fid"]:
            return None
        r = next(r for r in results if r.metric == "fid")
        record = {"nimg": int(run.cur_nimg), "kimg": run.cur_nimg / 1000, "fid": float(value), "network": r.network,
                  "network_key": self.network_key, "reference": r.reference, "num_fake": r.num_fake,
                  "num_real": r.num_real,
                  "checkpoint": run.last_checkpoint.name if run.last_checkpoint else None}
        ck = ckpt_io.checkpoint_dict(run)
        ck["best"] = record
        path = ckpt_io.atomic_save(ck, best_path(self.run_dir))
        self.best = record
        return path


def append_results(run_dir: Path, cur_nimg: int, results: list[MetricResult], best: bool) -> Path:
    """One line of metrics.jsonl: every result in full, for the snapshot at cur_nimg."""
    path = Path(run_dir) / "metrics.jsonl"
    row = {"nimg": int(cur_nimg), "kimg": cur_nimg / 1000, "best": best, "results": [r.to_dict() for r in results]}
    fileio.append_text(path, json.dumps(row) + "\n")
    return path


def summary(results: list[MetricResult]) -> str:
    """"fid 12.3, kid 0.004, precision 0.61, recall 0.42 (random:0 features, 500 fakes vs OASIS
    validate (1120 images))", for the log line of a snapshot."""
    if not results:
        return ""
    r = results[0]
    values = ", ".join(f"{x.metric} {x.value:.4g}" for x in results)
    return f"{values} ({r.network} features, {r.num_fake} fakes vs {r.reference})"


def truncate_results(run_dir: Path, cur_nimg: int) -> None:
    """Drop metrics.jsonl lines after cur_nimg (a run resumed from an earlier checkpoint measures
    those snapshots again), as the stats files do."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("nimg", 0) <= cur_nimg:
                kept.append(line + "\n")
        except (json.JSONDecodeError, AttributeError):  # a line torn by a kill
            continue
    fileio.atomic_write_text(path, "".join(kept))
