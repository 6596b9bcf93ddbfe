"""One call from a checkpoint (or any fakes) to reported numbers: what `metrics` and
`train --metrics` will wrap.

    G = generator_from_checkpoint(RUN)
    results = compute_metrics(fake_batches(G, 10000), real_features(dataset, net), net,
                              ["fid", "kid", "pr"])
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..torch_settings import seeded_rng
from ..training.checkpoint import load_generator
from .cache import RealFeatures
from .features import FeatureNetwork, extract_features
from .scores import MetricResult, fid, kid, precision_recall

METRICS = ("fid", "kid", "pr")


def generator_from_checkpoint(ckpt: str | os.PathLike | dict[str, Any], device: str | torch.device = "cpu"
                              ) -> torch.nn.Module:
    """The EMA generator of a checkpoint (file, run folder or loaded dict), in eval mode: the one
    every published StyleGAN2 number is measured on."""
    return load_generator(ckpt, device=device)


@torch.no_grad()
def fake_batches(G: torch.nn.Module, n: int, batch: int = 32, seed: int = 0, *, truncation_psi: float = 1.0,
                 noise_mode: str = "random") -> Iterator[torch.Tensor]:
    """n fakes from G, `batch` at a time: float32 [b, C, R, R] in about [-1, 1].

    Fake i has the latent of seed `seed + i` as `generate --seeds` draws it (torch.randn(z_dim)
    from a generator seeded with it), so the latents (and labels) do not depend on `batch`; a
    conditional G gets a label drawn uniformly from its classes by the same per-seed generator.
    Truncation 1 (none) is the convention for FID/KID; CPU runs use float32 throughout.

    The per-layer noise (noise_mode 'random') is drawn from a stream seeded by `seed` and the
    batch's first index, inside a fork of the global random state: the same call gives the same
    fakes (on one device, with the same `batch`: the noise of fake i depends on its batch), and
    the caller's random stream is left as it was (a training run with snapshot metrics draws the
    same numbers as one without). This holds on CPUs and CUDA GPUs; on other devices (mps, xpu)
    the noise comes from that device's own unseeded generator.
    """
    device = next(G.parameters()).device
    c_dim = getattr(G, "c_dim", 0) or 0
    for start in range(0, n, batch):
        gens = [torch.Generator().manual_seed(seed + i) for i in range(start, min(start + batch, n))]
        z = torch.stack([torch.randn(G.z_dim, generator=g) for g in gens]).to(device)
        c = None
        if c_dim > 0:
            labels = torch.cat([torch.randint(0, c_dim, (1,), generator=g) for g in gens])
            c = torch.nn.functional.one_hot(labels, c_dim).float().to(device)
        with seeded_rng(device, noise_stream_seed(seed, start)):
            img = G(z, c, truncation_psi=truncation_psi, noise_mode=noise_mode, force_fp32=device.type == "cpu")
        yield img


def noise_stream_seed(seed: int, start: int) -> int:
    """The seed of the noise of the batch that begins at fake `start`: a mix of both numbers (a
    plain seed + start would restart the latent stream of fake `start` as its noise)."""
    x = (seed * 0x9E3779B97F4A7C15 + start * 0xBF58476D1CE4E5B9 + 0x6E6F697365) & ((1 << 64) - 1)
    x ^= x >> 31
    return x & ((1 << 63) - 1)


def compute_metrics(fakes: torch.Tensor | np.ndarray | Iterable[torch.Tensor], real: RealFeatures,
                    net: FeatureNetwork, metrics: Sequence[str] = METRICS, *, k: int = 3,
                    kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0,
                    batch: int = 64, progress: bool = False) -> list[MetricResult]:
    """FID, KID and/or precision/recall ("pr") of fakes against real features from the same net.

    fakes: images [N, C, R, R] (float in [-1, 1] or uint8) or an iterable of such batches
        (fake_batches), passed through `net` once for all metrics.
    progress: a tqdm bar while the fakes are generated and passed through `net`.
    Returns one MetricResult per number, in the order asked (pr gives precision then recall).
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}: choose from {', '.join(METRICS)}")
    # Keys, not names: two runs' discriminators share a name ("discriminator:ckpt-...pt").
    if real.network != net.name or (real.network_key and real.network_key != net.key):
        raise ValueError(f"real features come from {real.network!r} ({real.network_key}), fakes would come "
                         f"from {net.name!r} ({net.key}): compute both with the same feature network")
    feats = extract_features(net, fakes, batch=batch, progress=progress, desc="fake features")
    out: list[MetricResult] = []
    names = dict(network=net.name, reference=real.reference)
    for m in metrics:
        if m == "fid":
            out.append(fid(real.stats, feats, **names))
        elif m == "kid":
            out.append(kid(real.feats, feats, num_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed,
                           **names))
        else:
            out.extend(precision_recall(real.feats, feats, k=k, **names))
    return out
