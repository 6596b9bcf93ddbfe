"""Tests of the StyleGAN2 networks (stylegan2.networks).

The yardstick: NVlabs' stylegan2-ada-pytorch at 256x256, 1 channel, channel base 16384, channel
max 512, mapping depth 8, z = w = 512, unconditional has 24,762,452 generator and 24,000,961
discriminator parameters. Everything else runs on tiny configurations, layers against float64
computations written from the definitions.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from stylegan2.networks import (
    Discriminator,
    Generator,
    MappingNetwork,
    ModelConfig,
    count_parameters,
    ema_beta,
    ema_update,
)
from stylegan2.networks.layers import (
    Conv2dLayer,
    FullyConnected,
    MinibatchStd,
    SynthesisLayer,
    ToRGB,
    mbstd_group_size,
)

TINY = dict(channel_base=256, channel_max=32, z_dim=32, w_dim=32)


def tiny(**kw) -> ModelConfig:
    return ModelConfig(**{**TINY, "resolution": 16, **kw})


def randn(gen: torch.Generator, *shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=dtype)


def seed_params(module: torch.nn.Module, gen: torch.Generator, scale: float = 0.3) -> None:
    """Replaces every zero-initialized parameter (biases, noise strengths) with random values,
    so a test cannot pass because a term happened to be multiplied by zero."""
    with torch.no_grad():
        for p in module.parameters():
            if not p.abs().gt(0).any():
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def lrelu64(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x, 0.2 * x) * math.sqrt(2)


def blur_kernel64(channels: int) -> torch.Tensor:
    """The [1, 3, 3, 1] low-pass filter as a depthwise float64 conv weight, normalized to sum 1."""
    f = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    f2 = torch.outer(f, f)
    f2 = f2 / f2.sum()
    return f2.expand(channels, 1, 4, 4).contiguous()


# --- the yardstick ---------------------------------------------------------------------------


def test_parameter_counts_match_nvlabs_256():
    cfg = ModelConfig(resolution=256, channels=1, channel_base=16384, channel_max=512,
                      mapping_layers=8, z_dim=512, w_dim=512, c_dim=0)
    G, D = Generator(cfg), Discriminator(cfg)
    assert count_parameters(G) == 24_762_452
    assert count_parameters(D) == 24_000_961
    assert G.num_ws == 14
    # Buffers are not parameters: w_avg and the const noise maps exist but are not counted.
    assert G.mapping.w_avg.shape == (512,)
    assert sum(b.numel() for b in G.buffers()) > 0


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(resolution=48), dict(resolution=2), dict(resolution=2048), dict(channels=2),
        dict(precision="fp8"), dict(precision="fp16", num_fp16_res=0), dict(num_fp16_res=2),
        dict(conv_clamp=-1.0), dict(z_dim=0), dict(c_dim=-1), dict(mapping_lr_mult=0.0),
        dict(resolution=32, channel_base=16),  # 16 // 32: no channels at 32x32
    ],
)
def test_config_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        ModelConfig(**{**TINY, **kw})


def test_config_round_trip_and_derived_values():
    cfg = ModelConfig(resolution=256, precision="bf16", num_fp16_res=4, c_dim=2)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    assert cfg.fp16_resolution == 32
    assert [cfg.block_dtype(r) for r in (16, 32, 256)] == [torch.float32, torch.bfloat16, torch.bfloat16]
    assert cfg.conv_clamp == 256.0
    assert ModelConfig().conv_clamp is None
    assert [cfg.channels_at(r) for r in (4, 32, 64, 256)] == [512, 512, 256, 64]
    big = ModelConfig(resolution=1024, channel_base=32768, precision="fp16", num_fp16_res=4)
    assert big.num_ws == 18 and big.block_resolutions[-1] == 1024 and big.fp16_resolution == 128
    assert ModelConfig(resolution=4).num_ws == 2 and ModelConfig(resolution=4, num_fp16_res=1, precision="fp16").fp16_resolution == 8


@pytest.mark.parametrize("precision, given, filled", [
    ("fp32", {}, (0, None)),
    ("fp16", {}, (4, 256.0)),
    ("bf16", {}, (4, 256.0)),
    ("bf16", dict(num_fp16_res=2), (2, 256.0)),
    ("fp16", dict(conv_clamp=8), (4, 8.0)),
    ("fp32", dict(conv_clamp=64.0), (0, 64.0)),
])
def test_config_fills_in_the_precision_defaults_once(precision, given, filled):
    """None -> NVlabs' mixed-precision numbers, filled in on construction (the one place the rule
    lives), so to_dict states them and a dict of an earlier version (which stated them) or of this
    one builds an equal config."""
    cfg = ModelConfig(**{**TINY, "resolution": 64, "precision": precision, **given})
    assert (cfg.num_fp16_res, cfg.conv_clamp) == filled
    d = cfg.to_dict()
    assert (d["num_fp16_res"], d["conv_clamp"]) == filled
    assert ModelConfig.from_dict(d) == cfg
    assert ModelConfig.from_dict({**d, "num_fp16_res": None, "conv_clamp": None}) == \
        ModelConfig(**{**TINY, "resolution": 64, "precision": precision})
    # The blocks get exactly these: dtype from num_fp16_res, the clamp in every conv layer.
    G = Generator(cfg)
    reduced = [b.resolution for b in G.synthesis.blocks.values() if b.dtype != torch.float32]
    assert reduced == ([] if filled[0] == 0 else [64 // 2**i for i in range(filled[0])][::-1])
    clamps = {m.conv_clamp for m in G.modules() if hasattr(m, "conv_clamp") and m is not G}
    assert clamps == {filled[1]}


# --- layers against the definitions -----------------------------------------------------------


@pytest.mark.parametrize("act,lr_mult,bias_init", [("linear", 1.0, 0.0), ("lrelu", 0.01, 0.0), ("linear", 1.0, 1.0)])
def test_fully_connected_equalized_lr(gen, act, lr_mult, bias_init):
    fc = FullyConnected(7, 5, act=act, lr_mult=lr_mult, bias_init=bias_init)
    # Stored as N(0, 1) / lr_mult; bias stored as bias_init / lr_mult.
    assert torch.allclose(fc.bias * lr_mult, torch.full([5], bias_init))
    seed_params(fc, gen)
    x = randn(gen, 6, 7)
    w64 = fc.weight.double() * lr_mult / math.sqrt(7)
    y64 = x.double() @ w64.t() + fc.bias.double() * lr_mult
    if act == "lrelu":
        y64 = lrelu64(y64)
    assert torch.allclose(fc(x).double(), y64, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("k,down,size", [(3, 1, 7), (3, 2, 8), (1, 2, 10), (1, 1, 5), (3, 2, 6)])
def test_conv2d_layer_matches_definition(gen, k, down, size, channels_last):
    layer = Conv2dLayer(3, 4, k, act="lrelu", down=down)
    seed_params(layer, gen)
    x = randn(gen, 2, 3, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w64 = layer.weight.double() / math.sqrt(3 * k * k)
    x64 = x.double()
    if down == 1:
        y64 = F.conv2d(x64, w64, padding=k // 2)
    elif k == 1:  # blur (pad 1, 1) and decimate, then the pointwise conv
        x64 = F.conv2d(F.pad(x64, [1, 1, 1, 1]), blur_kernel64(3), groups=3)[:, :, ::2, ::2]
        y64 = F.conv2d(x64, w64)
    else:  # blur (pad k//2 + 1 each side, i.e. 2 + 1 - 1 for the filter), then stride-2 conv
        x64 = F.conv2d(F.pad(x64, [2, 2, 2, 2]), blur_kernel64(3), groups=3)
        y64 = F.conv2d(x64, w64, stride=2)
    y64 = lrelu64(y64 + layer.bias.double().reshape(1, -1, 1, 1))
    y = layer(x)
    assert y.shape == (2, 4, size // down, size // down)
    assert torch.allclose(y.double(), y64, rtol=1e-4, atol=1e-5)
    # The gain scales the output and the clamp range (the residual blocks pass sqrt(0.5)).
    assert torch.allclose(layer(x, gain=0.5).double(), y64 * 0.5, rtol=1e-4, atol=1e-5)


def modconv64(x, weight, styles, demodulate):
    """Per-sample modulated conv in float64, straight from the StyleGAN2 paper (eqs. 1-3)."""
    out = []
    k = weight.shape[-1]
    for n in range(x.shape[0]):
        w = weight.double() * styles[n].double().reshape(1, -1, 1, 1)
        if demodulate:
            w = w / (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        out.append(F.conv2d(x[n : n + 1].double(), w, padding=k // 2))
    return torch.cat(out)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("noise_mode", ["const", "none"])
def test_synthesis_layer_matches_definition(gen, fused, noise_mode):
    layer = SynthesisLayer(5, 6, 8, resolution=7, conv_clamp=None)
    seed_params(layer, gen)
    x, w = randn(gen, 3, 5, 7, 7), randn(gen, 3, 8)
    styles = layer.affine(w)
    y64 = modconv64(x, layer.weight, styles, demodulate=True)
    if noise_mode == "const":
        y64 = y64 + layer.noise_const.double() * layer.noise_strength.double()
    y64 = lrelu64(y64 + layer.bias.double().reshape(1, -1, 1, 1))
    y = layer(x, w, noise_mode=noise_mode, fused_modconv=fused)
    assert torch.allclose(y.double(), y64, rtol=1e-4, atol=1e-4)


def test_synthesis_layer_affine_starts_at_one(gen):
    layer = SynthesisLayer(5, 6, 8, resolution=4)
    # bias_init 1: at initialization the styles are 1 + (a zero-mean projection of w).
    assert torch.allclose(layer.affine.bias, torch.ones(5))
    assert layer.noise_strength.item() == 0.0


def test_synthesis_layer_up2_shape_and_clamp(gen):
    layer = SynthesisLayer(4, 3, 8, resolution=10, up=2, conv_clamp=0.05)
    seed_params(layer, gen)
    y = layer(randn(gen, 2, 4, 5, 5), randn(gen, 2, 8))
    assert y.shape == (2, 3, 10, 10)
    assert y.abs().max() <= 0.05 + 1e-7 and y.abs().max() > 0.04


def test_torgb_matches_definition(gen):
    layer = ToRGB(6, 3, 8)
    seed_params(layer, gen)
    x, w = randn(gen, 2, 6, 5, 5), randn(gen, 2, 8)
    styles = layer.affine(w) / math.sqrt(6)  # no demodulation: equalized lr on the styles
    y64 = modconv64(x, layer.weight, styles, demodulate=False) + layer.bias.double().reshape(1, -1, 1, 1)
    assert torch.allclose(layer(x, w).double(), y64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n,group,f,c", [(8, 4, 1, 6), (6, 4, 2, 4), (5, 4, 1, 3), (3, 4, 1, 2)])
def test_minibatch_std_matches_definition(gen, n, group, f, c):
    x = randn(gen, n, c, 3, 2)
    y = MinibatchStd(group, f)(x)
    g = mbstd_group_size(n, group)
    assert n % g == 0 and g <= group
    assert y.shape == (n, c + f, 3, 2)
    assert torch.equal(y[:, :c], x)
    x64 = x.double()
    for i in range(n):
        members = [j for j in range(n) if j % (n // g) == i % (n // g)]
        grp = x64[members]  # [g, c, h, w]
        std = (grp.var(dim=0, unbiased=False) + 1e-8).sqrt()  # [c, h, w]
        for k in range(f):
            want = std[k * (c // f) : (k + 1) * (c // f)].mean()
            assert torch.allclose(y[i, c + k].double(), want.expand(3, 2), rtol=1e-5, atol=1e-6)


# --- the mapping network ---------------------------------------------------------------------


def test_mapping_normalizes_z_and_accepts_labels(gen):
    m = MappingNetwork(6, 3, 8, num_ws=4, num_layers=2)
    seed_params(m, gen)
    z = randn(gen, 5, 6)
    labels = torch.tensor([0, 2, 1, 1, 0])
    ws = m(z, labels)
    assert ws.shape == (5, 4, 8)
    assert torch.equal(ws[:, 0], ws[:, 3])  # broadcast to every layer
    assert torch.allclose(ws, m(z, F.one_hot(labels, 3).float()))
    # Scaling z does not change w: it is normalized to unit second moment first.
    assert torch.allclose(ws, m(z * 7.5, labels), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        m(z)  # conditional network without c
    with pytest.raises(ValueError):
        m(z, torch.zeros(5, 2))


def test_w_avg_tracking(gen):
    m = MappingNetwork(6, 0, 8, num_ws=3, num_layers=2, w_avg_beta=0.9)
    seed_params(m, gen)
    with torch.no_grad():
        m.w_avg.copy_(randn(gen, 8))
    old = m.w_avg.clone()
    z = randn(gen, 4, 6)
    w = m(z, update_emas=True)[:, 0]
    assert torch.allclose(m.w_avg, 0.9 * old + 0.1 * w.mean(0), rtol=1e-6, atol=1e-6)
    m(z)  # update_emas=False leaves it alone
    assert torch.allclose(m.w_avg, 0.9 * old + 0.1 * w.mean(0), rtol=1e-6, atol=1e-6)


def test_truncation(gen):
    G = Generator(tiny())
    seed_params(G, gen)
    with torch.no_grad():
        G.mapping.w_avg.copy_(randn(gen, 32))
    z = randn(gen, 5, 32)
    ws = G.mapping(z)
    ws0 = G.mapping(z, truncation_psi=0.0)
    assert torch.allclose(ws0, G.w_avg.expand_as(ws0))
    assert torch.equal(G.mapping(z, truncation_psi=1.0), ws)
    half = G.mapping(z, truncation_psi=0.5)
    assert torch.allclose(half, G.w_avg + 0.5 * (ws - G.w_avg), rtol=1e-5, atol=1e-6)
    cut = G.mapping(z, truncation_psi=0.0, truncation_cutoff=2)
    assert torch.allclose(cut[:, :2], G.w_avg.expand(5, 2, 32))
    assert torch.equal(cut[:, 2:], ws[:, 2:])


# --- whole networks --------------------------------------------------------------------------


@pytest.mark.parametrize("resolution", [4, 8, 16, 32])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("c_dim", [0, 3])
def test_shapes(gen, resolution, channels, c_dim):
    cfg = tiny(resolution=resolution, channels=channels, c_dim=c_dim)
    G, D = Generator(cfg), Discriminator(cfg)
    n = 2 + resolution % 5  # 6, 5, 3, 4: different batch sizes, not all multiples of 4
    assert G.num_ws == 2 * int(math.log2(resolution)) - 2 == cfg.num_ws
    z = randn(gen, n, 32)
    c = torch.randint(0, 3, [n], generator=gen) if c_dim else None
    ws = G.mapping(z, c)
    assert ws.shape == (n, G.num_ws, 32)
    img = G.synthesis(ws, noise_mode="random")
    assert img.shape == (n, channels, resolution, resolution) and img.dtype == torch.float32
    assert torch.isfinite(img).all() and img.std() > 0
    logits = D(img, c)
    assert logits.shape == (n, 1) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    logits_cl = D(img.contiguous(memory_format=torch.channels_last), c)
    assert torch.allclose(logits_cl, logits, rtol=1e-4, atol=1e-5)
    if c_dim:  # labels and one-hot rows are the same condition; another class changes the output
        assert torch.allclose(D(img, F.one_hot(c, 3).float()), logits, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(D(img, (c + 1) % 3), logits)


def test_noise_modes(gen):
    G = Generator(tiny())
    seed_params(G, gen)  # noise strengths non-zero
    ws = G.mapping(randn(gen, 3, 32))
    const1, const2 = G.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const")
    none1, none2 = G.synthesis(ws, noise_mode="none"), G.synthesis(ws, noise_mode="none")
    rand1, rand2 = G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random")
    assert torch.equal(const1, const2) and torch.equal(none1, none2)
    assert not torch.allclose(rand1, rand2)
    assert not torch.allclose(none1, rand1) and not torch.allclose(none1, const1)
    with pytest.raises(ValueError):
        G.synthesis(ws, noise_mode="fixed")


def test_train_and_eval_paths_agree(gen):
    """Training uses the non-fused modulated conv, eval the fused one: same function."""
    G = Generator(tiny(c_dim=2))
    seed_params(G, gen)
    z, c = randn(gen, 4, 32), torch.tensor([0, 1, 1, 0])
    G.train()
    a = G(z, c, noise_mode="const")
    G.eval()
    b = G(z, c, noise_mode="const")
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_skip_generator_sums_torgb_outputs(gen):
    """The image is the sum over blocks of each ToRGB output, upsampled to full size."""
    G = Generator(tiny(resolution=8))
    seed_params(G, gen)
    ws = G.mapping(randn(gen, 2, 32))
    img = G.synthesis(ws, noise_mode="const")
    b4, b8 = G.synthesis.blocks["b4"], G.synthesis.blocks["b8"]
    x4, img4 = b4(None, None, ws[:, 0:2], noise_mode="const")
    x8, _ = b8(x4, None, ws[:, 1:4], noise_mode="const")
    rgb8 = b8.torgb(x8, ws[:, 3])
    # Upsample by zero insertion + the [1,3,3,1] filter (gain 4), written out in float64.
    up = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    up[:, :, ::2, ::2] = img4.double() * 4
    up = F.conv2d(F.pad(up, [2, 1, 2, 1]), blur_kernel64(1))
    assert torch.allclose(img.double(), up + rgb8.double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_forward(gen, precision):
    cfg32 = tiny(resolution=32)
    cfg = tiny(resolution=32, precision=precision, num_fp16_res=2)
    G32, D32 = Generator(cfg32), Discriminator(cfg32)
    seed_params(G32, gen, scale=0.1)
    G, D = Generator(cfg), Discriminator(cfg)
    G.load_state_dict(G32.state_dict())
    D.load_state_dict(D32.state_dict())
    seen = {}
    for name, m in G.synthesis.blocks.items():
        m.conv1.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, out.dtype))
    z = randn(gen, 4, 32)
    img, img32 = G(z, noise_mode="const"), G32(z, noise_mode="const")
    reduced = cfg.reduced_dtype
    assert seen == {"b4": torch.float32, "b8": torch.float32, "b16": reduced, "b32": reduced}
    assert img.dtype == torch.float32 and torch.isfinite(img).all()
    rel = (img - img32).norm() / img32.norm()
    assert rel < (0.05 if precision == "bf16" else 0.01)
    logits, logits32 = D(img32), D32(img32)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, logits32, rtol=0.05, atol=0.05)
    # force_fp32 runs the same weights entirely in float32.
    assert torch.allclose(G(z, noise_mode="const", force_fp32=True), img32, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_cuda_forward_backward(gen, precision):
    cfg = ModelConfig(**{**TINY, "resolution": 32, "precision": precision, "num_fp16_res": 2})
    G, D = Generator(cfg).cuda(), Discriminator(cfg).cuda()
    z = randn(gen, 4, 32).cuda()
    img = G(z)
    logits = D(img)
    logits.sum().backward()
    assert torch.isfinite(img).all() and torch.isfinite(logits).all()
    assert all(torch.isfinite(p.grad).all() for p in G.parameters() if p.grad is not None)


def test_conv_clamp_bounds_block_outputs(gen):
    cfg = tiny(conv_clamp=0.2)
    G = Generator(cfg)
    seed_params(G, gen)
    outs = []
    G.synthesis.blocks["b16"].conv0.register_forward_hook(lambda m, i, o: outs.append(o))
    G(randn(gen, 2, 32))
    assert outs[0].abs().max() <= 0.2 + 1e-6


# --- EMA -------------------------------------------------------------------------------------


def test_ema_update_is_a_lerp_of_parameters_and_copies_buffers(gen):
    G = Generator(tiny(resolution=8))
    G_ema = copy.deepcopy(G)
    seed_params(G, gen)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
        G.mapping.w_avg.copy_(randn(gen, 32))
    before = {n: p.detach().clone() for n, p in G_ema.named_parameters()}
    ema_update(G_ema, G, beta=0.75)
    for n, p in G.named_parameters():
        want = 0.75 * before[n].double() + 0.25 * p.detach().double()
        assert torch.allclose(dict(G_ema.named_parameters())[n].double(), want, rtol=1e-6, atol=1e-6), n
    for n, b in G.named_buffers():
        assert torch.equal(dict(G_ema.named_buffers())[n], b), n
    assert ema_beta(32, 10.0) == pytest.approx(0.5 ** (32 / 10000))
    assert ema_beta(32, 10.0, rampup=0.05, cur_nimg=1000) == pytest.approx(0.5 ** (32 / 50))
