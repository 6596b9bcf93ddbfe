"""benchmarks/cpu_preset_sweep.py: its candidates resolve, and the rim and variety measures
agree with direct computations on synthetic images."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from benchmarks import cpu_preset_sweep as S
from stylegan2.training.config import make_config


@pytest.mark.parametrize("name", list(S.CANDIDATES))
def test_candidates_resolve_with_their_overrides(name):
    cfg = S.candidate_config(name, 1.5)
    want = dict(S.BASE, **S.CANDIDATES[name])
    assert {k: getattr(cfg, k) for k in want} == want
    assert (cfg.kimg, cfg.seed, cfg.threads) == (1.5, 0, 1)
    # Derived fields follow the candidate's batch and resolution, as the preset's would.
    assert math.isclose(cfg.gamma, 0.0002 * cfg.resolution**2 / cfg.batch)


def test_nopl_narrow_is_the_shipped_preset():
    cfg, _ = make_config("cpu-small")
    narrow = S.candidate_config("nopl-narrow", cfg.kimg)
    for k in ("resolution", "channel_base", "channel_max", "batch", "lr", "pl_weight", "pl_interval",
              "mapping_layers", "z_dim", "w_dim", "gamma", "ema_kimg", "r1_interval"):
        assert getattr(cfg, k) == getattr(narrow, k), k


def _disc(size: int, radius: float, ring_value: float, inner_value: float) -> torch.Tensor:
    """A [1, 1, size, size] image in [-1, 1]: a disc of inner_value with its outer 2 px at ring_value."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2).sqrt()
    v = torch.zeros(size, size)
    v[r <= radius] = inner_value
    v[(r <= radius) & (r > radius - 2.5)] = ring_value
    return (v * 2 - 1)[None, None]


def test_rim_sees_a_bright_ring_and_not_a_flat_disc():
    flat_ring, flat_in = S._rim(_disc(32, 12, 0.5, 0.5))
    assert flat_ring == pytest.approx(0.5, abs=1e-6) and flat_in == pytest.approx(0.5, abs=1e-6)
    ring, inner = S._rim(_disc(32, 12, 0.9, 0.4))
    assert inner == pytest.approx(0.4, abs=0.02)  # the erosion's ring is about the drawn one
    assert ring / inner > 1.8


def test_pairwise_distance_matches_a_direct_loop():
    g = torch.Generator().manual_seed(3)
    for n, size in ((5, 8), (7, 16)):
        x = torch.rand(n, 1, size, size, generator=g) * 2 - 1
        u = (x * 0.5 + 0.5).flatten(1)
        pairs = [float((u[i] - u[j]).norm()) / size for i, j in itertools.permutations(range(n), 2)]
        assert S._pairwise(x) == pytest.approx(sum(pairs) / len(pairs), rel=1e-5)
        assert S._pairwise(x[:1].repeat(3, 1, 1, 1)) == pytest.approx(0.0, abs=1e-6)


def test_levels_compare_the_mix_of_head_sizes():
    # Heads of 12 distinct radii: their areas are counted pixels, checked against a direct count.
    reals = torch.cat([_disc(32, r, 0.5, 0.5) for r in range(3, 15)])
    direct = torch.tensor([float((_disc(32, r, 0.5, 0.5) > -0.84).sum()) / 32**2 for r in range(3, 15)])
    assert torch.allclose(S._head_area(reals), direct)
    w1, low = S._levels(reals, reals)
    assert w1 == pytest.approx(0.0, abs=1e-9) and low == pytest.approx(3 / 12)  # radii 3-5: below the quartile
    w1, low = S._levels(reals[6:], reals)  # only the larger half: none of the smallest quarter
    assert low == 0.0 and w1 > 0.05
    # The same sample shifted: W1 is the mean absolute difference of matched quantiles.
    bigger = torch.cat([_disc(32, r + 1, 0.5, 0.5) for r in range(3, 15)])
    w1, _ = S._levels(bigger, reals)
    assert w1 == pytest.approx(float((S._head_area(bigger) - S._head_area(reals)).mean()), rel=0.05)
