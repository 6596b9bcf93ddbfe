"""FID, KID and precision/recall from feature arrays, each returned with what produced it.

    fid(real_stats, fake_stats)          Frechet distance of two Gaussian fits (Heusel et al. 2017)
    kid(real_feats, fake_feats)          unbiased cubic-polynomial-kernel MMD^2 over random subsets
                                         (Binkowski et al. 2018)
    precision_recall(real, fake, k=3)    k-NN manifold precision and recall (Kynkaanniemi et al. 2019)

Features are float [N, D] arrays from one feature network (see features.py). Each function
returns a MetricResult that names the network, the image counts and the reference set, so a
number never travels without them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .neighbors import kth_nearest, within_any_ball


@dataclass
class MetricResult:
    """One reported number and everything needed to read it.

    metric: "fid", "kid", "precision" or "recall". value: the number (KID: mean over subsets).
    network: the feature network's name. num_real, num_fake: images behind each side.
    reference: the real set the fakes were compared with (dataset source and split).
    details: metric-specific extras (KID's std over subsets, k of precision/recall, ...).
    """

    metric: str
    value: float
    network: str
    num_real: int
    num_fake: int
    reference: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.metric} {self.value:.4g} ({self.network} features, {self.num_fake} fakes vs "
                f"{self.num_real} reals of {self.reference})")


@dataclass
class GaussianStats:
    """Mean [D] and covariance [D, D] (float64) of n feature vectors."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


def gaussian_stats(feats: np.ndarray) -> GaussianStats:
    """feats [N, D] -> their mean and unbiased covariance (N - 1 denominator, as numpy's np.cov and
    the reference FID code use). Needs N >= 2."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {list(feats.shape)}")
    mu = feats.mean(axis=0)
    centred = feats - mu
    return GaussianStats(mu, centred.T @ centred / (feats.shape[0] - 1), feats.shape[0])


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)).

    The trace of the matrix square root is computed as the sum of square roots of the
    eigenvalues of S_a^(1/2) S_b S_a^(1/2), a symmetric positive semi-definite matrix with the
    same eigenvalues as S_a S_b: symmetric eigensolvers are stable where a general sqrtm of the
    non-symmetric product needs the usual epsilon-on-the-diagonal repair for singular
    covariances (fewer images than feature dimensions). Rounding below zero is clipped.
    """
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature lengths differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    w, v = np.linalg.eigh(a.sigma)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root_a @ b.sigma @ root_a
    tr_root = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = a.mu - b.mu
    return float(max(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr_root, 0.0))


def fid(real: GaussianStats | np.ndarray, fake: GaussianStats | np.ndarray, *, network: str,
        reference: str) -> MetricResult:
    """FID between real and fake features (arrays [N, D] or their GaussianStats)."""
    r = real if isinstance(real, GaussianStats) else gaussian_stats(real)
    f = fake if isinstance(fake, GaussianStats) else gaussian_stats(fake)
    return MetricResult("fid", frechet_distance(r, f), network, r.n, f.n, reference)


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / D + 1)^3, the KID paper's default kernel."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of samples x [m, D] and y [n, D] under the cubic kernel: the within-set
    means leave out the diagonal (k(x_i, x_i)), which is what makes its expectation 0 when both
    come from one distribution."""
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(real: np.ndarray, fake: np.ndarray, *, network: str, reference: str, num_subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> MetricResult:
    """KID: the mean over `num_subsets` random subsets (drawn without replacement within a
    subset, independently across subsets) of unbiased MMD^2, with subset_size capped at the
    smaller set. real [Nr, D], fake [Nf, D]. details: std over subsets, subset size and count."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    m = min(subset_size, real.shape[0], fake.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 images on each side, got {real.shape[0]} and {fake.shape[0]}")
    rng = np.random.default_rng(seed)
    values = np.array([mmd2_unbiased(fake[rng.choice(fake.shape[0], m, replace=False)],
                                     real[rng.choice(real.shape[0], m, replace=False)])
                       for _ in range(num_subsets)])
    return MetricResult("kid", float(values.mean()), network, real.shape[0], fake.shape[0], reference,
                        {"std": float(values.std()), "subset_size": m, "num_subsets": num_subsets, "seed": seed})


def precision_recall(real: np.ndarray, fake: np.ndarray, *, network: str, reference: str, k: int = 3,
                     chunk: int = 1024) -> tuple[MetricResult, MetricResult]:
    """Improved precision and recall. Each set's manifold is the union of balls around its points,
    each ball reaching that point's k-th nearest other point of the same set. Precision: the
    fraction of fakes inside the real manifold (fidelity); recall: the fraction of reals inside the
    fake manifold (coverage). real [Nr, D], fake [Nf, D]; exact search in chunks."""
    real, fake = np.asarray(real), np.asarray(fake)
    r_radii, _ = kth_nearest(real, real, k, exclude_self=True, chunk=chunk)
    f_radii, _ = kth_nearest(fake, fake, k, exclude_self=True, chunk=chunk)
    precision = float(within_any_ball(fake, real, r_radii, chunk=chunk).mean())
    recall = float(within_any_ball(real, fake, f_radii, chunk=chunk).mean())
    details = {"k": k}
    return (MetricResult("precision", precision, network, real.shape[0], fake.shape[0], reference, dict(details)),
            MetricResult("recall", recall, network, real.shape[0], fake.shape[0], reference, dict(details)))
