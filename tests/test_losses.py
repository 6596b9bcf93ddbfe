"""Tests of stylegan2.training.losses against closed forms.

Most tests use toy networks whose gradients can be written down by hand:
    ToyG: ws = (z * s) broadcast to num_ws rows; img = tanh(sum_k ws_k A_k)  (no randomness)
    ToyD: D(x) = sum(a * x^2) + sum(b * x) + d, so grad_x D = 2 a x + b
The rest runs the real tiny networks to check that gradients reach the right parameters,
including the second-order path of the path-length penalty through the modulated convs.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from stylegan2.training.losses import (
    LossConfig,
    StyleGAN2Loss,
    default_r1_gamma,
    frozen,
    gradient_penalty,
    lazy_optimizer_settings,
    path_length,
    r1_penalty,
)
from stylegan2.networks import Discriminator, Generator, ModelConfig

C, H, W = 2, 5, 3  # odd image sizes on purpose


class ToyG(nn.Module):
    def __init__(self, gen: torch.Generator, z_dim: int = 4, num_ws: int = 3) -> None:
        super().__init__()
        self.z_dim, self.num_ws = z_dim, num_ws
        self.s = nn.Parameter(torch.rand(z_dim, generator=gen) + 0.5)
        self.A = nn.Parameter(torch.randn(num_ws, z_dim, C * H * W, generator=gen) * 0.3)

    def mapping(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None, update_emas=False):
        return (z * self.s).unsqueeze(1).repeat(1, self.num_ws, 1)

    def synthesis(self, ws, noise_mode="random"):
        return torch.tanh(torch.einsum("nkw,kwp->np", ws, self.A)).reshape(-1, C, H, W)


class ToyD(nn.Module):
    def __init__(self, gen: torch.Generator) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(C, H, W, generator=gen) * 0.5)
        self.b = nn.Parameter(torch.randn(C, H, W, generator=gen))
        self.d = nn.Parameter(torch.randn([], generator=gen))

    def forward(self, x, c=None):
        return ((self.a * x.square()).sum([1, 2, 3]) + (self.b * x).sum([1, 2, 3]) + self.d).unsqueeze(1)


def toy_d64(D: ToyD, x: torch.Tensor) -> torch.Tensor:
    """ToyD's logits [N] in float64."""
    x = x.double()
    return (D.a.double() * x.square()).sum([1, 2, 3]) + (D.b.double() * x).sum([1, 2, 3]) + D.d.double()


def toy_d_grad64(D: ToyD, x: torch.Tensor) -> torch.Tensor:
    """grad_x ToyD(x) = 2 a x + b, float64."""
    return 2 * D.a.double() * x.double() + D.b.double()


def toy_g64(G: ToyG, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, img) of ToyG in float64: u = sum_k ws_k A_k, img = tanh(u), both [N, C*H*W]."""
    w = z.double() * G.s.double()
    u = torch.einsum("nw,kwp->np", w, G.A.double())
    return u, torch.tanh(u)


def toy_path_lengths64(G: ToyG, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|J_ws^T y| of ToyG per sample: grad wrt ws_k = A_k (y * (1 - tanh(u)^2))."""
    u, _ = toy_g64(G, z)
    g = y.double().reshape(len(z), -1) * (1 - torch.tanh(u).square())  # [N, P]
    grads = torch.einsum("kwp,np->nkw", G.A.double(), g)
    return grads.square().sum(2).mean(1).sqrt()


def softplus64(x: torch.Tensor) -> torch.Tensor:
    return torch.log1p(torch.exp(x.double()))


def toy_loss(gen, **cfg):
    G, D = ToyG(gen), ToyD(gen)
    return G, D, StyleGAN2Loss(G, D, LossConfig(style_mixing_prob=0.0, **cfg))


def tiny_nets(c_dim: int = 0):
    cfg = ModelConfig(resolution=8, channel_base=128, channel_max=16, z_dim=16, w_dim=16, c_dim=c_dim)
    G, D = Generator(cfg), Discriminator(cfg)
    with torch.no_grad():  # non-zero noise strengths and biases, so every path is exercised
        for p in list(G.parameters()) + list(D.parameters()):
            if not p.abs().gt(0).any():
                p.normal_(0, 0.2)
    return G, D


# --- R1 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 4])
def test_r1_penalty_closed_form(gen, n):
    D = ToyD(gen)
    x = torch.randn(n, C, H, W, generator=gen).requires_grad_(True)
    got = r1_penalty(D(x), x)
    assert got.shape == (n,)
    assert torch.allclose(got.double(), toy_d_grad64(D, x).square().sum([1, 2, 3]), rtol=1e-5)


@pytest.mark.parametrize("gamma,interval", [(0.5, 16), (10.0, 1), (0.2048, 4)])
def test_d_reg_r1_value(gen, gamma, interval):
    G, D, loss = toy_loss(gen, r1_gamma=gamma, d_reg_interval=interval)
    real = torch.randn(5, C, H, W, generator=gen)
    got = loss.d_reg(real, None)
    want = gamma / 2 * interval * toy_d_grad64(D, real).square().sum([1, 2, 3]).mean()
    assert torch.allclose(got.double(), want, rtol=1e-5)
    assert torch.allclose(loss.stats["r1/penalty"].double(), want / (gamma / 2 * interval), rtol=1e-5)


def test_d_reg_r1_on_real_discriminator_matches_autograd(gen):
    """R1 through the real (tiny) discriminator equals |grad|^2 computed separately."""
    torch.manual_seed(gen.initial_seed())
    G, D = tiny_nets(c_dim=2)
    loss = StyleGAN2Loss(G, D, LossConfig(r1_gamma=3.0, d_reg_interval=16))
    real = torch.randn(4, 1, 8, 8, generator=gen)
    c = torch.tensor([0, 1, 1, 0])
    x = real.clone().requires_grad_(True)
    (grads,) = torch.autograd.grad(D(x, c).sum(), x)
    want = grads.double().square().sum([1, 2, 3]).mean() * 3.0 / 2 * 16
    got = loss.d_reg(real, c)
    assert torch.allclose(got.double(), want, rtol=1e-4)
    got.backward()
    conv_grads = [D.blocks["b8"].conv0.weight.grad, D.blocks["b8"].fromrgb.weight.grad]
    assert all(g is not None and g.abs().sum() > 0 for g in conv_grads)  # second order reaches D
    assert all(p.grad is None for p in G.parameters())


# --- path length -----------------------------------------------------------------------------


def test_path_length_closed_form(gen):
    G = ToyG(gen)
    z = torch.randn(6, G.z_dim, generator=gen)
    ws = G.mapping(z)
    img = G.synthesis(ws)
    y = torch.randn(img.shape, generator=gen) / math.sqrt(H * W)
    got = path_length(img, ws, y)
    assert got.shape == (6,)
    assert torch.allclose(got.double(), toy_path_lengths64(G, z, y), rtol=1e-5)


@pytest.mark.parametrize("shrink,decay,weight,interval", [(2, 0.01, 2.0, 4), (1, 0.5, 1.5, 1), (3, 1.0, 2.0, 8)])
def test_g_reg_penalty_and_pl_mean(gen, shrink, decay, weight, interval):
    G, D, loss = toy_loss(gen, pl_batch_shrink=shrink, pl_decay=decay, pl_weight=weight, g_reg_interval=interval)
    pl_mean = 0.3 + torch.rand([], generator=gen)
    loss.load_state_dict({"pl_mean": pl_mean})
    seed = int(torch.randint(0, 2**31, [], generator=gen))
    for step in range(2):  # the running mean accumulates over calls
        z = torch.randn(6, G.z_dim, generator=gen)
        torch.manual_seed(seed + step)
        got = loss.g_reg(z, None)
        # ToyG and style mixing off consume no random numbers: the only draw is the noise y.
        n = 6 // shrink
        torch.manual_seed(seed + step)
        y = torch.randn(n, C, H, W) / math.sqrt(H * W)
        lengths = toy_path_lengths64(G, z[:n], y)
        pl_mean = pl_mean.double() + decay * (lengths.mean() - pl_mean.double())
        want = (lengths - pl_mean).square().mean() * weight * interval
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-7)
        assert torch.allclose(loss.pl_mean.double(), pl_mean, rtol=1e-5)
        assert loss.state_dict()["pl_mean"].shape == ()


def test_path_length_second_order_through_modulated_convs(gen):
    torch.manual_seed(gen.initial_seed())
    G, D = tiny_nets()
    loss = StyleGAN2Loss(G, D, LossConfig())
    z = torch.randn(4, 16, generator=gen)
    out = loss.g_reg(z, None)
    out.backward()
    for name in ["synthesis.blocks.b8.conv0.weight", "synthesis.blocks.b8.conv1.affine.weight",
                 "synthesis.blocks.b4.const", "mapping.layers.0.weight"]:
        g = dict(G.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    assert all(p.grad is None for p in D.parameters())


# --- main losses -----------------------------------------------------------------------------


def test_logistic_losses(gen):
    G, D, loss = toy_loss(gen)
    z = torch.randn(5, G.z_dim, generator=gen)
    real = torch.randn(4, C, H, W, generator=gen)
    fake_logits = toy_d64(D, toy_g64(G, z)[1].reshape(-1, C, H, W))
    real_logits = toy_d64(D, real)
    assert fake_logits.std() > 0.1 and real_logits.std() > 0.1  # random logits, not a constant
    g = loss.g_main(z, None)
    assert torch.allclose(g.double(), softplus64(-fake_logits).mean(), rtol=1e-5)
    d = loss.d_main(real, None, z, None)
    want = softplus64(fake_logits).mean() + softplus64(-real_logits).mean()
    assert torch.allclose(d.double(), want, rtol=1e-5)
    assert torch.allclose(loss.stats["scores/real"].double(), real_logits.mean(), rtol=1e-5, atol=1e-6)


def test_wgan_gp_losses(gen):
    G, D, loss = toy_loss(gen, kind="wgan-gp", wgan_gp_lambda=10.0, wgan_drift=0.001)
    assert loss.cfg.d_reg_interval == 1
    z = torch.randn(4, G.z_dim, generator=gen)
    real = torch.randn(4, C, H, W, generator=gen)
    fake = toy_g64(G, z)[1].reshape(-1, C, H, W)
    fake_logits, real_logits = toy_d64(D, fake), toy_d64(D, real)
    assert torch.allclose(loss.g_main(z, None).double(), -fake_logits.mean(), rtol=1e-5)
    want = fake_logits.mean() - real_logits.mean() + 0.001 * real_logits.square().mean()
    assert torch.allclose(loss.d_main(real, None, z, None).double(), want, rtol=1e-5, atol=1e-6)

    def gp64(eps):
        x_hat = eps.double() * real.double() + (1 - eps.double()) * fake
        norms = toy_d_grad64(D, x_hat).flatten(1).norm(dim=1)
        return (norms - 1).square()

    eps = torch.rand(4, 1, 1, 1, generator=gen)
    got = gradient_penalty(D, real, fake.float(), None, eps)
    assert torch.allclose(got.double(), gp64(eps), rtol=1e-4)

    seed = int(torch.randint(0, 2**31, [], generator=gen))
    torch.manual_seed(seed)
    reg = loss.d_reg(real, None, z)
    torch.manual_seed(seed)
    eps = torch.rand(4, 1, 1, 1)  # the only random draw in d_reg once z is given
    assert torch.allclose(reg.double(), 10.0 * gp64(eps).mean(), rtol=1e-4)


# --- style mixing ----------------------------------------------------------------------------


def test_style_mixing_crossover(gen):
    G, D = ToyG(gen, num_ws=5), ToyD(gen)
    z = torch.randn(3, G.z_dim, generator=gen)
    base = G.mapping(z)
    torch.manual_seed(gen.initial_seed())
    mixed = StyleGAN2Loss(G, D, LossConfig(style_mixing_prob=1.0))
    cutoffs = set()
    for _ in range(24):
        _, ws = mixed.run_G(z, None)
        same = (ws == base).all(dim=2).all(dim=0)  # [num_ws]: rows still from z
        k = int(same.sum())
        assert 1 <= k < 5 and same[:k].all() and not same[k:].any()
        assert (ws[:, k:] == ws[:, k:k + 1]).all()  # the second latent fills every later row
        cutoffs.add(k)
    assert cutoffs == {1, 2, 3, 4}
    never = StyleGAN2Loss(G, D, LossConfig(style_mixing_prob=0.0))
    assert torch.equal(never.run_G(z, None)[1], base)
    sometimes = StyleGAN2Loss(G, D, LossConfig(style_mixing_prob=0.9))
    mixed_count = sum(not torch.equal(sometimes.run_G(z, None)[1], base) for _ in range(100))
    assert 78 <= mixed_count <= 98  # Binomial(100, 0.9): mean 90, sd 3


# --- gradient routing and bookkeeping --------------------------------------------------------


def test_each_phase_trains_only_its_network(gen):
    torch.manual_seed(gen.initial_seed())
    G, D = tiny_nets(c_dim=2)
    loss = StyleGAN2Loss(G, D, LossConfig())
    z = torch.randn(4, 16, generator=gen)
    c = torch.tensor([1, 0, 0, 1])
    real = torch.randn(4, 1, 8, 8, generator=gen)
    w_avg = G.w_avg.clone()

    def grads(module):
        return [p.grad for p in module.parameters()]

    for phase, args, trained, other in [
        (loss.g_main, (z, c), G, D),
        (loss.d_main, (real, c, z, c), D, G),
        (loss.d_reg, (real, c), D, G),
    ]:
        G.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)
        phase(*args).backward()
        assert all(g is None for g in grads(other)), phase.__name__
        got = [g for g in grads(trained) if g is not None]
        assert len(got) > 0.8 * len(grads(trained)) and all(torch.isfinite(g).all() for g in got)
        if phase == loss.g_main:  # G's loss does not move w_avg; D's fake pass does
            assert torch.equal(G.w_avg, w_avg)
    assert not torch.equal(G.w_avg, w_avg)
    assert all(p.requires_grad for p in list(G.parameters()) + list(D.parameters()))


def test_stats_are_detached_scalar_tensors(gen):
    G, D, loss = toy_loss(gen)
    z = torch.randn(4, G.z_dim, generator=gen)
    real = torch.randn(4, C, H, W, generator=gen)
    loss.g_main(z, None)
    loss.g_reg(z, None)
    loss.d_main(real, None, z, None)
    loss.d_reg(real, None)
    assert {"G/loss", "G/reg", "D/loss", "D/reg", "pl/mean", "r1/penalty", "scores/real"} <= set(loss.stats)
    for name, v in loss.stats.items():
        assert isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad, name


def test_frozen_restores_flags(gen):
    D = ToyD(gen)
    D.d.requires_grad_(False)
    with frozen(D):
        assert not any(p.requires_grad for p in D.parameters())
    assert D.a.requires_grad and D.b.requires_grad and not D.d.requires_grad


def test_config_defaults_and_helpers():
    assert LossConfig().d_reg_interval == 16 and LossConfig().g_reg_interval == 4
    assert LossConfig(kind="wgan-gp").d_reg_interval == 1
    assert LossConfig(d_reg_interval=8).d_reg_interval == 8
    for bad in [dict(kind="hinge"), dict(pl_decay=2.0), dict(g_reg_interval=0), dict(r1_gamma=-1.0)]:
        with pytest.raises(ValueError):
            LossConfig(**bad)
    assert default_r1_gamma(256, 64) == pytest.approx(0.2048)
    assert default_r1_gamma(32, 16) == pytest.approx(0.0128)
    lr, betas = lazy_optimizer_settings(0.0025, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.0025 * 16 / 17) and betas == pytest.approx((0.0, 0.99 ** (16 / 17)))
    assert lazy_optimizer_settings(0.002, (0.0, 0.99), 1) == (0.002, (0.0, 0.99))


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["logistic", "wgan-gp"])
def test_phases_never_synchronize_with_the_host(gen, kind):
    G, D = (m.cuda() for m in tiny_nets(c_dim=2))
    loss = StyleGAN2Loss(G, D, LossConfig(kind=kind))
    z = torch.randn(4, 16, generator=gen).cuda()
    c = torch.tensor([1, 0, 0, 1]).cuda()
    real = torch.randn(4, 1, 8, 8, generator=gen).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for phase, args in [(loss.g_main, (z, c)), (loss.g_reg, (z, c)),
                            (loss.d_main, (real, c, z, c)), (loss.d_reg, (real, c))]:
            phase(*args).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss.stats["D/reg"]).all()
