"""stylegan2.augment: each transform against an independent computation, gradients of the whole
pipeline to second order, the ADA controller's rate and state, the p = 0 identity, channels and
memory formats."""
from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from stylegan2.augment import (
    GROUPS, PIPES, SYM6, AdaController, AdaPipeline, DiffAugment, affine_warp, alignment, blit, leak_score,
    make_augment,
    make_filter, orientation_stats, pipe_strengths, reals_template, same_bits, template_angles,
)
from stylegan2.augment import matrices as M
from stylegan2.augment.warp import filter_delay

ONLY = {k: 0 for k in ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac",
                       "brightness", "contrast", "lumaflip", "hue", "saturation")}


def only(**on: float) -> dict[str, float]:
    """Pipeline strengths with every transform off except the named ones."""
    return {**ONLY, **on}


def noise(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def smooth(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Band-limited images (bicubic from 1/4 size): the filtered warp's phase error is small."""
    return F.interpolate(noise(n, c, size // 4, size // 4, seed=seed), size=(size, size), mode="bicubic",
                         align_corners=False)


def consts(n: int, v: float) -> torch.Tensor:
    return torch.full([n], float(v), dtype=torch.float64)


def reflect_shift(x: torch.Tensor, tx: int, ty: int) -> torch.Tensor:
    """Content moved by (tx, ty) pixels with reflection padding, via F.pad (independent of the
    gather code under test)."""
    pad = max(abs(tx), abs(ty))
    xp = F.pad(x, [pad] * 4, mode="reflect") if pad else x
    h, w = x.shape[2], x.shape[3]
    return xp[:, :, pad - ty:pad - ty + h, pad - tx:pad - tx + w]


# --- the filter ------------------------------------------------------------------------------


def test_sym6_is_an_orthogonal_wavelet_with_six_vanishing_moments():
    h = torch.tensor(SYM6, dtype=torch.float64)
    assert float(h.sum()) == pytest.approx(math.sqrt(2), abs=1e-12)
    for shift in range(0, 6):  # orthonormal to its even shifts: up then down is the identity
        dot = float((h[: 12 - 2 * shift] * h[2 * shift:]).sum())
        assert dot == pytest.approx(1.0 if shift == 0 else 0.0, abs=1e-12)
    k = torch.arange(12, dtype=torch.float64)
    sign = (-1.0) ** k
    for m in range(6):  # the high-pass twin kills polynomials of degree < 6
        assert float((sign * k**m * h).sum()) == pytest.approx(0.0, abs=1e-7 * 11**m)


# --- exact transforms (blit) ------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_quarter_turns_equal_rot90(k):
    x = noise(2, 3, 8, 8)
    y = blit(x, M.quarter_turns_inv(consts(2, k)))
    # Positive angles turn x towards y (down): clockwise on screen, torch.rot90's negative k.
    assert same_bits(y, torch.rot90(x, -k, dims=(2, 3)))


def test_xflip_equals_flip():
    x = noise(2, 1, 8, 8)
    assert same_bits(blit(x, M.scale_inv(consts(2, -1), consts(2, 1))), torch.flip(x, dims=[3]))


@pytest.mark.parametrize("tx,ty", [(1, 0), (0, -2), (3, 2), (-7, 5), (12, -11)])
def test_integer_translation_equals_reflect_roll(tx, ty):
    x = noise(2, 1, 16, 16)
    y = blit(x, M.translate_inv(consts(2, tx), consts(2, ty)))
    assert same_bits(y, reflect_shift(x, tx, ty))


# --- the filtered warp -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["scale1", "rotate0", "aniso1", "translate0"])
def test_identity_transforms_are_identity_within_filter_error(name):
    x = noise(2, 1, 16, 16)
    one, zero = consts(2, 1), consts(2, 0)
    g = {"scale1": M.scale_inv(one, one), "rotate0": M.rotate_inv(torch.cos(zero), torch.sin(zero)),
         "aniso1": M.scale_inv(one, 1 / one), "translate0": M.translate_inv(zero, zero)}[name]
    y = affine_warp(x, g, make_filter())
    # The filter is float32 (setup_filter), so up-then-down is the identity to ~1e-7 relative.
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("tx,ty", [(1, 0), (-2, 1), (2, -2)])
def test_warp_integer_translation_equals_reflect_roll(tx, ty):
    x = noise(2, 1, 16, 16)
    y = affine_warp(x, M.translate_inv(consts(2, tx), consts(2, ty)), make_filter())
    torch.testing.assert_close(y, reflect_shift(x, tx, ty), atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_warp_quarter_turns_match_rot90_on_smooth_images(k):
    # Through the filtered path the only error left is sym6's phase nonlinearity (its delay is
    # compensated): small on band-limited content, as augmenting real images needs.
    x = smooth(2, 1, 32)
    y = affine_warp(x, M.quarter_turns_inv(consts(2, k)), make_filter())
    err = (y - torch.rot90(x, -k, dims=(2, 3))).abs().max() / x.abs().max()
    assert err < 0.02


@pytest.mark.parametrize("t", [9, 14, 20])
def test_warp_far_translation_reflects_beyond_the_padded_band(t):
    # Past the fixed padding the position itself is reflected: F.pad's reflection within the
    # filter's phase error on smooth images.
    x = smooth(2, 1, 32)
    y = affine_warp(x, M.translate_inv(consts(2, t), consts(2, 0)), make_filter())
    ref = F.pad(x, [t, t, 0, 0], mode="reflect")[:, :, :, :32]
    assert (y - ref).abs().max() / x.abs().max() < 0.02


def test_warp_rotation_is_about_the_centre():
    # A rotationally symmetric blob at the centre stays put under any rotation (inside the
    # inscribed disc: the corners read the reflection beyond the edges, as they should).
    r = torch.arange(32, dtype=torch.float64) + 0.5 - 16
    radius2 = r[None, :] ** 2 + r[:, None] ** 2
    blob = torch.exp(-radius2 / 30)[None, None].expand(1, 1, 32, 32).contiguous()
    theta = consts(1, 0.7)
    y = affine_warp(blob, M.rotate_inv(torch.cos(theta), torch.sin(theta)), make_filter())
    inside = radius2 < 15**2
    torch.testing.assert_close(y[0, 0][inside], blob[0, 0][inside], atol=3e-3, rtol=0)


def test_filter_delay_is_half_the_taps_off_centre():
    centre = sum(k * v for k, v in enumerate(SYM6)) / sum(SYM6)
    assert filter_delay() == pytest.approx(-(centre - 5.5) / 2)


# --- the pipeline ------------------------------------------------------------------------------


def test_pipeline_rotate90_gives_one_of_the_four_turns():
    x = noise(8, 1, 8, 8)
    y = AdaPipeline(1, **only(rotate90=1))(x, 1.0, generator=torch.Generator().manual_seed(1))
    seen = set()
    for i in range(8):
        hits = [k for k in range(4) if same_bits(y[i], torch.rot90(x[i], k, dims=(1, 2)))]
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) > 1


def test_pipeline_xflip_flips_half_the_time():
    x = noise(64, 1, 4, 4)
    y = AdaPipeline(1, **only(xflip=1))(x, 1.0, generator=torch.Generator().manual_seed(2))
    flipped = [same_bits(y[i], x[i].flip(-1)) for i in range(64)]
    kept = [same_bits(y[i], x[i]) for i in range(64)]
    assert all(a or b for a, b in zip(flipped, kept))
    assert 16 < sum(flipped) < 48


def test_pipeline_xint_shifts_by_whole_pixels_within_an_eighth():
    x = noise(8, 1, 16, 16)
    y = AdaPipeline(1, **only(xint=1))(x, 1.0, generator=torch.Generator().manual_seed(3))
    for i in range(8):
        hits = [(tx, ty) for tx in range(-2, 3) for ty in range(-2, 3)
                if same_bits(y[i:i + 1], reflect_shift(x[i:i + 1], tx, ty))]
        assert hits


def test_pipeline_brightness_contrast_on_grayscale():
    x = noise(16, 1, 4, 4)
    y = AdaPipeline(1, **only(brightness=1, contrast=1))(x, 1.0, generator=torch.Generator().manual_seed(4))
    # Each image is an affine function of itself: y = a * x + b per image, some with a != 1.
    a = ((y[:, 0, 0, 1] - y[:, 0, 0, 0]) / (x[:, 0, 0, 1] - x[:, 0, 0, 0]))
    b = y[:, 0, 0, 0] - a * x[:, 0, 0, 0]
    torch.testing.assert_close(y, a[:, None, None, None] * x + b[:, None, None, None])
    assert (a - 1).abs().max() > 0.05 and b.abs().max() > 0.01


def test_p_zero_is_identity_bit_for_bit():
    x = noise(4, 1, 16, 16, dtype=torch.float32)
    x[0, 0, 0, 0] = -0.0  # x * 1 + 0 would lose this sign
    pipe = AdaPipeline(1)
    assert pipe(x, 0.0) is x
    assert pipe(x, 0) is x
    assert same_bits(pipe(x, torch.tensor(0.0)), x)  # a device p: no shortcut, still exact
    for kind in ("none", "fixed", "ada"):
        aug = make_augment(kind, p=0.0 if kind == "fixed" else None)
        out = aug(x)
        assert same_bits(out, x), kind


def test_untouched_images_keep_their_bits_at_moderate_p():
    x = noise(64, 1, 8, 8, dtype=torch.float32)
    pipe = AdaPipeline(1)
    y = pipe(x, 0.1, generator=torch.Generator().manual_seed(5))
    same = sum(same_bits(y[i], x[i]) for i in range(64))
    assert 10 < same < 64  # (1 - 0.1)^~9 of them untouched, the rest changed


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_and_memory_formats(channels, channels_last):
    x = noise(3, channels, 16, 16, dtype=torch.float32)
    xin = x.to(memory_format=torch.channels_last) if channels_last else x
    pipe = AdaPipeline(channels)
    y = pipe(xin, 0.9, generator=torch.Generator().manual_seed(6))
    ref = pipe(x, 0.9, generator=torch.Generator().manual_seed(6))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    assert (y - x).abs().max() > 0.1
    if channels == 1:
        assert set(pipe.skipped) == {"lumaflip", "hue", "saturation"}
        assert "skipped" in pipe.describe()
    else:
        assert pipe.skipped == {} and "hue" in pipe.enabled


def test_rgb_colour_transforms_keep_grey_on_the_luma_axis():
    # Hue and saturation turn and scale about the grey axis, so a grey image stays grey.
    grey = noise(8, 1, 4, 4).expand(8, 3, 4, 4).contiguous()
    y = AdaPipeline(3, **only(hue=1, saturation=1))(grey, 1.0, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(y, grey)
    y = AdaPipeline(3, **only(lumaflip=1))(grey, 1.0, generator=torch.Generator().manual_seed(7))
    for i in range(8):  # a luma flip negates grey
        assert torch.allclose(y[i], grey[i]) or torch.allclose(y[i], -grey[i])


@pytest.mark.parametrize("shape", [(2, 1, 16, 24), (2, 1, 4, 4), (1, 1, 1, 1)])
def test_odd_shapes(shape):
    x = noise(*shape, dtype=torch.float32)
    y = AdaPipeline(1)(x, 1.0, generator=torch.Generator().manual_seed(9))
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_p_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="p must be in"):
        AdaPipeline(1)(noise(1, 1, 4, 4), 1.5)


def test_half_precision_in_and_out():
    x = noise(2, 1, 16, 16, dtype=torch.float32).to(torch.bfloat16)
    y = AdaPipeline(1)(x, 1.0, generator=torch.Generator().manual_seed(8))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


# --- gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.5, 1.0])
def test_pipeline_gradcheck_and_gradgradcheck(p):
    # Fixed p and seed: the same transforms every call, so the pipeline is a fixed linear map of
    # the images. fast_mode compares random projections of the analytic and numerical
    # Jacobians (and of the second derivatives); the full Jacobians take minutes on 2 cores.
    x = noise(2, 1, 16, 16).requires_grad_(True)
    pipe = AdaPipeline(1, impl="ref")

    def fn(inp: torch.Tensor) -> torch.Tensor:
        return pipe(inp, p, generator=torch.Generator().manual_seed(11))

    assert (fn(x) - x).abs().max() > 0.1  # something happens
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_pipeline_full_jacobian_gradcheck_and_gradgradcheck():
    # Every entry of the Jacobians, on an image small enough for that to take seconds.
    x = noise(1, 1, 8, 8).requires_grad_(True)
    pipe = AdaPipeline(1, impl="ref")

    def fn(inp: torch.Tensor) -> torch.Tensor:
        return pipe(inp, 1.0, generator=torch.Generator().manual_seed(10))

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-5)


def test_diffaugment_gradcheck_and_gradgradcheck():
    x = noise(2, 1, 8, 8).requires_grad_(True)
    aug = DiffAugment()

    def fn(inp: torch.Tensor) -> torch.Tensor:
        return aug(inp, generator=torch.Generator().manual_seed(12))

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-5)


def test_r1_through_the_augmentation_backpropagates_into_d():
    # The real use: R1 = |d D(aug(x)) / dx|^2 needs the augmentation's double backward.
    torch.manual_seed(0)
    D = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Softplus(), torch.nn.Flatten(),
                            torch.nn.Linear(4 * 16 * 16, 1))
    x = noise(2, 1, 16, 16, dtype=torch.float32).requires_grad_(True)
    logits = D(AdaPipeline(1)(x, 1.0, generator=torch.Generator().manual_seed(13)))
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    grad.square().sum().backward()
    # (the last bias does not change the gradient with respect to the image: it gets none)
    for p in (D[0].weight, D[0].bias, D[3].weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["ada", "diffaugment"])
def test_r1_through_the_augmentation_with_the_projects_discriminator(kind):
    # How the loss will use it: r1_penalty of D(aug(x)) with respect to the un-augmented x.
    from stylegan2.training.losses import r1_penalty
    from stylegan2.networks import Discriminator, ModelConfig

    torch.manual_seed(0)
    D = Discriminator(ModelConfig(resolution=16, channels=1, channel_base=512, channel_max=16, z_dim=8,
                                  w_dim=8, mapping_layers=1))
    aug = make_augment(kind, p=0.8 if kind == "ada" else None)  # ADA's initial p
    x = noise(4, 1, 16, 16, dtype=torch.float32).requires_grad_(True)
    logits = D(aug(x, generator=torch.Generator().manual_seed(16)))
    penalty = r1_penalty(logits, x)
    penalty.mean().backward()
    assert torch.isfinite(penalty).all() and float(penalty.detach().mean()) > 0
    grads = [p.grad for p in D.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    aug.accumulate(logits)  # and the controller takes the same logits
    aug.step(4)


# --- the controller ----------------------------------------------------------------------------


def run_controller(ctrl: AdaController, steps: int, sign: float, batch: int = 32) -> None:
    for _ in range(steps):
        ctrl.accumulate(torch.full([batch, 1], sign))
        ctrl.step(batch)


def test_controller_rises_at_the_papers_rate_when_d_is_overconfident():
    ctrl = AdaController(target=0.6, interval=4, ada_kimg=500)
    run_controller(ctrl, 4 * 10 + 3, +1.0)  # r_t = 1 > 0.6; 10 adjustments, 3 steps pending
    expected = 0.0
    for _ in range(10):
        expected = min(1.0, expected + 32 * 4 / (500 * 1000))
    assert float(ctrl.p) == expected  # float64 on both sides, same sums: exact
    assert float(ctrl.p) == pytest.approx(10 * 128 / 500_000)
    assert ctrl.adjustments == 10 and float(ctrl.stats()["Aug/rt"]) == 1.0


def test_controller_falls_at_the_same_rate_and_clamps():
    ctrl = AdaController(target=0.6, ada_kimg=500, p=0.01)
    run_controller(ctrl, 4 * 7, -1.0)  # r_t = -1 < 0.6
    expected = 0.01
    for _ in range(7):
        expected = max(0.0, expected - 128 / 500_000)
    assert float(ctrl.p) == expected
    run_controller(ctrl, 4 * 100, -1.0)
    assert float(ctrl.p) == 0.0
    fast = AdaController(ada_kimg=0.256, p=0.9)  # 128 images of 256 per adjustment: +0.5
    run_controller(fast, 8, +1.0)
    assert float(fast.p) == 1.0


def test_controller_reads_r_t_over_the_interval_only():
    # Mostly positive over the interval: r_t = (3 * 32 - 32) / 128 = 0.5 < 0.6, so p falls
    # (from 0.5), although three of the four steps alone would push it up.
    ctrl = AdaController(p=0.5)
    for s in (+1.0, +1.0, +1.0, -1.0):
        ctrl.accumulate(torch.full([32], s))
        ctrl.step(32)
    assert float(ctrl.stats()["Aug/rt"]) == 0.5
    assert float(ctrl.p) == 0.5 - 128 / 500_000


def test_controller_state_dict_round_trip_is_exact():
    a = AdaController(p=0.3)
    run_controller(a, 4 * 5 + 2, +1.0)
    a.accumulate(torch.tensor([-0.5, 2.0, 0.0]))  # a pending, partial interval
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = AdaController(p=0.0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert same_bits(b.p, a.p) and same_bits(b.rt, a.rt)
    assert b.state_dict().keys() == a.state_dict().keys()
    for k, v in a.state_dict().items():
        other = b.state_dict()[k]
        assert same_bits(other, v) if isinstance(v, torch.Tensor) else other == v, k
    for ctrl in (a, b):  # and they go on identically
        run_controller(ctrl, 9, -1.0)
    assert same_bits(a.p, b.p)


def test_augment_state_and_stats():
    aug = make_augment("ada", num_channels=1)
    assert aug.kind == "ada" and set(aug.stats()) == {"Aug/p"}
    for _ in range(4):
        aug.accumulate(torch.ones(8))
        aug.step(8)
    assert set(aug.stats()) == {"Aug/p", "Aug/rt"} and float(aug.p) > 0
    other = make_augment("ada", num_channels=1)
    other.load_state_dict(aug.state_dict())
    assert same_bits(other.p, aug.p)
    with pytest.raises(ValueError, match="'fixed'"):
        make_augment("fixed", p=0.5).load_state_dict(aug.state_dict())


# --- the factory and leak helpers --------------------------------------------------------------


def test_make_augment_kinds_and_errors():
    x = noise(2, 1, 16, 16, dtype=torch.float32)
    assert make_augment("none")(x) is x
    assert make_augment("fixed", p=0.7).stats()["Aug/p"] == pytest.approx(0.7)
    d = make_augment("diffaugment")
    y = d(x)
    assert y.shape == x.shape and not same_bits(y, x) and d.stats() == {}
    assert "saturation" in d.skipped
    with pytest.raises(ValueError, match="one of"):
        make_augment("bogus")
    with pytest.raises(ValueError, match="needs a p"):
        make_augment("fixed")
    with pytest.raises(ValueError, match="takes no p"):
        make_augment("none", p=0.5)


def test_diffaugment_translation_and_cutout_are_what_they_say():
    x = noise(16, 1, 16, 16) + 5  # no zeros of its own
    y = DiffAugment("cutout")(x, generator=torch.Generator().manual_seed(14))
    zeroed = (y == 0).flatten(1).sum(1)
    assert ((zeroed > 0) & (zeroed <= 64)).all()  # at most an 8x8 square, at least a sliver
    y = DiffAugment("translation")(x, generator=torch.Generator().manual_seed(15))
    for i in range(16):  # a shift of at most 1 pixel each way (16 * 0.125 / 2), zero fill
        hits = []
        for tx in (-1, 0, 1):
            for ty in (-1, 0, 1):
                ref = F.pad(x[i:i + 1], [1, 1, 1, 1])[:, :, 1 + ty:17 + ty, 1 + tx:17 + tx]
                hits.append(torch.equal(y[i:i + 1], ref))
        assert any(hits)


def test_leak_statistics_see_rotation_and_shift():
    # An upright ellipse (a brain slice's silhouette) against its rotated and shifted copies.
    r = torch.arange(32, dtype=torch.float64) + 0.5 - 16
    ellipse = ((r[None, :] / 5) ** 2 + (r[:, None] / 8) ** 2 < 1).double() * 2 - 1
    reals = ellipse[None, None].expand(8, 1, 32, 32).contiguous()
    stats = orientation_stats(reals)
    assert stats["angle"].abs().max() < 1e-9 and stats["elongation"].min() > 1.3
    theta = consts(8, 0.6)
    turned = affine_warp(reals, M.rotate_inv(torch.cos(theta), torch.sin(theta)), make_filter())
    assert leak_score(turned, reals)["angle_deg"] == pytest.approx(0.6 * 180 / math.pi, abs=3)
    # Alignment: cos(2 x 0.6) for all turned by 0.6; -1 lying sideways; round blobs do not count.
    assert alignment(orientation_stats(reals)) == pytest.approx(1.0, abs=1e-9)
    assert leak_score(turned, reals)["alignment"] == pytest.approx(math.cos(1.2) - 1, abs=0.03)
    sideways = torch.rot90(reals, 1, dims=(2, 3))
    assert alignment(orientation_stats(sideways)) == pytest.approx(-1.0, abs=1e-9)
    disc = ((r[None, :] / 6) ** 2 + (r[:, None] / 6) ** 2 < 1).double() * 2 - 1
    blobs_and_brains = torch.cat([reals[:2], disc[None, None].expand(6, 1, 32, 32)])
    assert alignment(orientation_stats(blobs_and_brains)) == pytest.approx(1.0, abs=1e-6)
    shifted = blit(reals, M.translate_inv(consts(8, 4), consts(8, 0)))
    assert leak_score(shifted, reals)["centroid"] == pytest.approx(4 / 32, abs=0.01)
    assert leak_score(reals, reals) == {"centroid": 0.0, "centroid_spread": 0.0, "angle_deg": 0.0,
                                        "alignment": 0.0, "turned": 0.0, "template_deg": 0.0}


def _round_heads(gen, n, size=32):
    """n round 'heads' of random radius with a dark midline and a bright frontal spot, upright:
    the outline says nothing about which way they point, the inside does."""
    r = torch.arange(size, dtype=torch.float64) + 0.5 - size / 2
    yy, xx = r[:, None], r[None, :]
    radius = 9 + 3 * torch.rand(n, 1, 1, generator=gen, dtype=torch.float64)
    head = ((xx ** 2 + yy ** 2)[None] < radius ** 2).double()
    head = head * (1 - 0.8 * (xx.abs() < 1.0)[None] * (yy.abs() < radius * 0.8))  # the midline
    head = head + 0.5 * ((xx ** 2 + (yy + radius * 0.5) ** 2) < 4).double()
    return (head.clamp(0, 1) * 2 - 1)[:, None].float()


@pytest.mark.parametrize("degrees, turned", [(0, False), (35, True), (90, True), (-60, True), (180, False)])
def test_template_registration_sees_turned_round_heads(gen, degrees, turned):
    reals, others = _round_heads(gen, 64), _round_heads(gen, 64)
    a = math.radians(degrees)
    moved = affine_warp(others.double(), M.rotate_inv(consts(64, math.cos(a)), consts(64, math.sin(a))),
                        make_filter()).float()
    score = leak_score(moved, reals)
    # Registration against the reals' templates: a half turn is folded (it looks the same).
    folded = abs((degrees + 90) % 180 - 90)
    assert score["turned"] == pytest.approx(1.0 if turned else 0.0, abs=0.05)
    assert score["template_deg"] == pytest.approx(folded, abs=6)
    angles = template_angles(moved, reals_template(reals))
    assert angles.abs().sub(folded).abs().max() <= 10


@pytest.mark.parametrize("pipe", PIPES)
def test_a_pipe_runs_its_groups_with_the_random_numbers_of_the_full_pipeline(pipe):
    """--aug-pipe: the groups a pipe names draw the same transforms as in 'bgc' (same generator),
    the others are the identity; so an ablation changes one thing only."""
    strengths = pipe_strengths(pipe)
    assert set(strengths) == {k for g, names in GROUPS.items() if g not in pipe for k in names}
    sizes = (7, 24, 20)
    full = AdaPipeline(3).sample(*sizes, 0.6, torch.device("cpu"), torch.Generator().manual_seed(11))
    part = AdaPipeline(3, **strengths).sample(*sizes, 0.6, torch.device("cpu"), torch.Generator().manual_seed(11))
    eye3, eye4 = torch.eye(3, dtype=torch.float64).expand(7, 3, 3), torch.eye(4, dtype=torch.float64).expand(7, 4, 4)
    for group, f, p, eye in zip("bgc", full, part, (eye3, eye3, eye4)):
        assert torch.equal(p, f if group in pipe else eye), group
    assert not torch.equal(full[0], eye3) and not torch.equal(full[1], eye3) and not torch.equal(full[2], eye4)


def test_pipe_names_and_errors():
    assert pipe_strengths("bgc") == {}
    assert make_augment("fixed", num_channels=1, p=0.5, pipe="b").describe().startswith("ada b: xflip, rotate90, xint;")
    assert make_augment("ada", num_channels=1, pipe="gc").pipeline.enabled == (
        "scale", "rotate", "aniso", "xfrac", "brightness", "contrast")
    with pytest.raises(ValueError, match="pipeline must be one of"):
        pipe_strengths("bgcf")
    with pytest.raises(ValueError, match="takes no p or ADA pipeline settings"):
        make_augment("diffaugment", pipe="b")


def test_a_fixed_p_known_to_leak_gets_a_caution():
    assert make_augment("fixed", num_channels=1, p=0.8).caution().startswith("fixed p = 0.8 with geometric")
    assert make_augment("fixed", num_channels=1, p=0.95, pipe="g").caution().startswith("fixed p = 0.95 with")
    assert make_augment("fixed", num_channels=1, p=0.6).caution().startswith("fixed p = 0.6 with geometric")
    assert make_augment("fixed", num_channels=1, p=0.55).caution() is None
    assert make_augment("fixed", num_channels=1, p=0.8, pipe="c").caution() is None  # colour only
    assert make_augment("ada", num_channels=1, p=0.9).caution() is None  # ADA moves p itself
    assert make_augment("diffaugment").caution() is None and make_augment("none").caution() is None


def test_ada_cautions_once_when_its_p_reaches_the_leaky_range():
    ada = make_augment("ada", num_channels=1)
    assert [ada.tick_caution(p) for p in (None, 0.0, 0.5, 0.79)] == [None] * 4
    first = ada.tick_caution(0.81)
    assert first.startswith("ADA's p reached 0.81: from p = 0.8 the ADA paper saw leaks")
    assert ada.tick_caution(0.9) is None and ada.tick_caution(0.81) is None  # once per run
    assert make_augment("ada", num_channels=1, pipe="c").tick_caution(0.95) is None  # colour only
    assert make_augment("fixed", num_channels=1, p=0.9).tick_caution(0.9) is None  # caution() covers it
    # Resumed: a state past the range has warned already; one below it has not.
    for p, expected in ((0.85, None), (0.5, "ADA's p reached 0.90")):
        resumed = make_augment("ada", num_channels=1, p=p)
        resumed.load_state_dict(make_augment("ada", num_channels=1, p=p).state_dict())
        message = resumed.tick_caution(0.9)
        assert (message if message is None else message[:len(expected)]) == expected
