"""upfirdn2d and its helpers against an explicit float64 definition.

The definition below follows the op's four steps literally (zero insertion, padding/cropping by
index arithmetic, a 2-D FIR as an explicit sum over taps, decimation of the full result), so it
shares no code path with the reference, which stuffs, pads and crops in one copy and lets a
strided depthwise conv2d do the filtering and decimation.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stylegan2_ops import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d
from stylegan2_ops import _upfirdn2d

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
CPU_AND_CUDA = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


# ---------------------------------------------------------------------------------------------
# The definition


def definition(x, f, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0), flip_filter=False, gain=1.0):
    """float64 upfirdn2d from the definition. x: [N, C, H, W]; f: [fh, fw] or [taps] (separable:
    its outer product with itself); up/down: (x, y); pad: (x0, x1, y0, y1)."""
    x = x.detach().cpu().double()
    f = f.detach().cpu().double()
    f2 = f[:, None] * f[None, :] if f.ndim == 1 else f
    fh, fw = f2.shape
    (ux, uy), (dx, dy), (x0, x1, y0, y1) = up, down, pad
    n, c, h, w = x.shape

    # 1. Insert up-1 zeros after each sample.
    u = torch.zeros(n, c, h * uy, w * ux, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            u[:, :, i * uy, j * ux] = x[:, :, i, j]

    # 2. Pad / crop: padded position r holds upsampled sample r - pad0 (zero outside).
    ph, pw = h * uy + y0 + y1, w * ux + x0 + x1
    p = torch.zeros(n, c, ph, pw, dtype=torch.float64)
    for r in range(ph):
        for s in range(pw):
            if 0 <= r - y0 < h * uy and 0 <= s - x0 < w * ux:
                p[:, :, r, s] = u[:, :, r - y0, s - x0]

    # 3. FIR: a true convolution correlates with the flipped filter; flip_filter correlates with f.
    g = f2 if flip_filter else f2.flip([0, 1])
    oh, ow = ph - fh + 1, pw - fw + 1
    full = torch.zeros(n, c, oh, ow, dtype=torch.float64)
    for a in range(fh):
        for b in range(fw):
            full += g[a, b] * p[:, :, a : a + oh, b : b + ow]

    # 4. Keep every down-th sample; then the gain.
    return full[:, :, ::dy, ::dx] * gain


def random_filter(gen, taps_y, taps_x, separable):
    """A random asymmetric float32 filter (so flipping matters), mostly positive."""
    if separable:
        return torch.rand(taps_x, generator=gen) + 0.2
    return torch.rand(taps_y, taps_x, generator=gen) + 0.2 * torch.randn(taps_y, taps_x, generator=gen)


def random_input(gen, shape, dtype, channels_last, device="cpu"):
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def assert_close_to_definition(y, ref, x, f, cfg, dtype):
    """Tight for float64/float32; for float16/bfloat16, relative to the magnitude of the sum.

    In a half type the taps are rounded once to the dtype, a separable filter's intermediate
    result is rounded once more, and the output is rounded; each costs at most eps/2 relative
    to M = the same sum over |terms|. PyTorch's half convolutions accumulate in float32 (a
    plain float16 depthwise conv2d with float16 weights stays within 0.35 eps * M), so about
    2 eps * M in all. Below the smallest normal number the spacing is eps * tiny, hence
    max(M, tiny). Over 900 random configurations the worst seen was 1.6 eps (float16) and
    1.5 eps (bfloat16); 4 eps leaves room for other accumulation orders (CUDA) and is still
    far below what a wrong tap or a shifted sample costs (O(1) relative error).
    """
    assert y.shape == ref.shape, (y.shape, ref.shape)
    assert y.dtype == dtype
    y64 = y.detach().cpu().double()
    if dtype in (torch.float64, torch.float32):
        tol = 1e-12 if dtype == torch.float64 else 2e-6
        scale = definition(x.abs(), f.abs(), *cfg[:3], cfg[3], abs(cfg[4]))
        torch.testing.assert_close(y64, ref, rtol=0, atol=tol * (1 + float(scale.max())))
        return
    eps = torch.finfo(dtype).eps
    magnitude = definition(x.abs(), f.abs(), *cfg[:3], cfg[3], abs(cfg[4]))
    err = (y64 - ref).abs()
    bound = 4 * eps * magnitude.clamp(min=torch.finfo(dtype).tiny)
    worst = float((err / bound).max()) if err.numel() else 0.0
    assert worst <= 1, f"error {worst:.2f}x the {dtype} bound"


# ---------------------------------------------------------------------------------------------
# Random configurations against the definition


def random_config(gen):
    """A random, valid configuration: ((up, down, pad, flip, gain), filter kind, sizes)."""
    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    while True:
        up = (pick([1, 2, 4]), pick([1, 2, 4]))
        down = (pick([1, 2, 4]), pick([1, 2, 4]))
        separable = bool(torch.randint(2, (1,), generator=gen))
        tx = int(torch.randint(1, 7, (1,), generator=gen))
        ty = tx if separable else int(torch.randint(1, 7, (1,), generator=gen))
        h, w = (int(v) for v in torch.randint(1, 10, (2,), generator=gen))
        pad = tuple(int(v) for v in torch.randint(-3, 5, (4,), generator=gen))
        flip = bool(torch.randint(2, (1,), generator=gen))
        gain = pick([1.0, math.sqrt(2), -0.7, 2.5])
        if w * up[0] + pad[0] + pad[1] >= tx and h * up[1] + pad[2] + pad[3] >= ty:
            return (up, down, pad, flip, gain), separable, (ty, tx), (h, w)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", range(12))
def test_matches_definition(gen, case, dtype, channels_last):
    cfg, separable, (ty, tx), (h, w) = random_config(gen)
    up, down, pad, flip, gain = cfg
    n, c = int(torch.randint(1, 3, (1,), generator=gen)), int(torch.randint(2, 4, (1,), generator=gen))
    x = random_input(gen, (n, c, h, w), dtype, channels_last)
    f = random_filter(gen, ty, tx, separable)
    # The public argument forms: scalars where both axes agree, 2-element padding where it can.
    up_arg = up[0] if up[0] == up[1] else list(up)
    pad_arg = list(pad[::2]) if pad[0] == pad[1] and pad[2] == pad[3] else list(pad)
    y = upfirdn2d(x, f, up=up_arg, down=list(down), padding=pad_arg, flip_filter=flip, gain=gain)
    ref = definition(x, f, up, down, pad, flip, gain)
    assert_close_to_definition(y, ref, x, f, cfg, dtype)
    expected_h = (h * up[1] + pad[2] + pad[3] - ty) // down[1] + 1
    expected_w = (w * up[0] + pad[0] + pad[1] - tx) // down[0] + 1
    assert y.shape == (n, c, expected_h, expected_w)
    if channels_last and x.is_contiguous():
        return  # a 1x1 image: both layouts at once, so either output layout is right
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("device", CPU_AND_CUDA)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fixed_configs(gen, device, dtype):
    """Hand-picked corners: pure crop, asymmetric factors, a 1-tap filter, a crop that removes
    every input sample, 1-pixel images, and f=None."""
    configs = [
        # (shape, up, down, pad, taps (ty, tx), separable)
        ((2, 3, 7, 5), (1, 1), (1, 1), (-2, -1, -1, -3), (1, 1), False),
        ((1, 2, 5, 6), (4, 1), (1, 4), (3, 0, -1, 6), (4, 4), True),
        ((2, 2, 1, 1), (2, 2), (1, 1), (2, 2, 1, 1), (3, 2), False),
        ((1, 2, 3, 3), (1, 1), (2, 2), (-5, 8, -4, 7), (2, 2), False),  # nothing survives the crop
        ((1, 3, 6, 9), (2, 4), (4, 2), (0, 5, 5, 0), (6, 6), True),
    ]
    for shape, up, down, pad, (ty, tx), separable in configs:
        x = random_input(gen, shape, dtype, False, device)
        f = random_filter(gen, ty, tx, separable).to(device)
        y = upfirdn2d(x, f, up=list(up), down=list(down), padding=list(pad), gain=1.5)
        assert y.device == x.device
        assert_close_to_definition(y, definition(x, f, up, down, pad, False, 1.5), x, f,
                                   (up, down, pad, False, 1.5), dtype)
    x = random_input(gen, (2, 3, 4, 5), dtype, True, device)
    torch.testing.assert_close(upfirdn2d(x, None), x, rtol=0, atol=0)
    one = torch.ones(1, 1, device=device)
    y = upfirdn2d(x, None, up=2, padding=[0, -1, 0, -1], gain=3)
    assert_close_to_definition(y, definition(x, one, (2, 2), (1, 1), (0, -1, 0, -1), False, 3.0),
                               x, one, ((2, 2), (1, 1), (0, -1, 0, -1), False, 3.0), dtype)


def test_separable_equals_outer_product(gen):
    x = random_input(gen, (2, 3, 7, 6), torch.float64, False)
    taps = torch.rand(5, generator=gen) + 0.1
    kwargs = dict(up=[2, 1], down=[1, 2], padding=[3, 2, -1, 4], flip_filter=True, gain=-2.0)
    y1 = upfirdn2d(x, setup_filter(taps, separable=True), **kwargs)
    y2 = upfirdn2d(x, setup_filter(taps, separable=False), **kwargs)
    # The two filters round to float32 separately (taps / sum vs taps**2 / sum**2): ~1e-7 apart.
    torch.testing.assert_close(y1, y2, rtol=1e-6, atol=1e-6 * float(y2.abs().max()))


def test_empty_batch_and_channels(gen):
    f = setup_filter([1, 2, 1])
    for shape in [(0, 3, 5, 4), (2, 0, 5, 4)]:
        y = upfirdn2d(torch.randn(shape, generator=gen), f, up=2, down=[1, 2], padding=1)
        assert y.shape == (shape[0], shape[1], (10 + 2 - 3) // 2 + 1, 8 + 2 - 3 + 1)


# ---------------------------------------------------------------------------------------------
# setup_filter


def test_setup_filter_defaults():
    f = setup_filter([1, 3, 3, 1])
    # Fewer than 8 taps: 2-D outer product by default, as in NVlabs.
    expect = torch.tensor([1.0, 3, 3, 1])
    expect = expect[:, None] * expect[None, :] / 64
    assert f.dtype == torch.float32 and f.device.type == "cpu"
    torch.testing.assert_close(f, expect, rtol=0, atol=0)
    eight = setup_filter(np.arange(1, 9))
    assert eight.shape == (8,)  # 8 taps or more: separable
    torch.testing.assert_close(eight, torch.arange(1.0, 9) / 36, rtol=1e-7, atol=0)
    torch.testing.assert_close(setup_filter(None), torch.ones(1, 1), rtol=0, atol=0)
    torch.testing.assert_close(setup_filter(5.0), torch.ones(1, 1), rtol=0, atol=0)
    # A scalar is a 1-tap 1-D filter, so its 2-D form is its square.
    torch.testing.assert_close(setup_filter(5.0, normalize=False), torch.full((1, 1), 25.0))


def test_setup_filter_options(gen):
    taps = torch.rand(5, generator=gen, dtype=torch.float64) + 0.1
    sep = setup_filter(taps, separable=True, normalize=False)
    torch.testing.assert_close(sep, taps.float(), rtol=0, atol=0)
    two_d = setup_filter(taps, separable=False)
    torch.testing.assert_close(two_d.double(), torch.outer(taps, taps) / taps.sum() ** 2, rtol=1e-6, atol=0)
    # Gain: all of it on a 2-D filter, its square root on a separable one (applied per axis).
    torch.testing.assert_close(setup_filter(taps, separable=False, gain=3), two_d * 3, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        setup_filter(taps, separable=True, gain=3), setup_filter(taps, separable=True) * math.sqrt(3),
        rtol=1e-6, atol=0,
    )
    # Flip: every axis.
    m = torch.rand(3, 4, generator=gen)
    torch.testing.assert_close(setup_filter(m, flip_filter=True), setup_filter(m).flip([0, 1]))
    torch.testing.assert_close(setup_filter(taps, separable=True, flip_filter=True),
                               setup_filter(taps, separable=True).flip(0))
    assert setup_filter(m.tolist()).shape == (3, 4)
    assert not setup_filter(m.requires_grad_()).requires_grad


@pytest.mark.parametrize(
    "f, kwargs, match",
    [
        (torch.ones(2, 2, 2), {}, "dimensions"),
        ([], {}, "dimensions"),
        ([1.0, -1.0], {}, "sums to zero"),
        ([1.0, 2.0], {"separable": True, "gain": -1}, "negative gain"),
        (torch.ones(2, 2), {"separable": True}, "1-D"),
        ([1.0, float("nan")], {}, "non-finite"),
        ("abc", {}, "f must"),
        ([1.0], {"gain": float("inf")}, "gain"),
    ],
)
def test_setup_filter_errors(f, kwargs, match):
    with pytest.raises(ValueError, match=match):
        setup_filter(f, **kwargs)


# ---------------------------------------------------------------------------------------------
# filter2d / upsample2d / downsample2d: sizes from NVlabs' padding rules, values from the definition


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_helpers(gen, dtype, channels_last):
    for (h, w), (ty, tx), separable, extra in [
        ((6, 8), (4, 4), True, (0, 0, 0, 0)),
        ((7, 5), (3, 2), False, (1, -1, 0, 2)),
        ((5, 9), (5, 5), True, (-1, 2, 3, 0)),
        ((4, 4), (1, 1), False, (0, 0, 0, 0)),
    ]:
        x = random_input(gen, (2, 3, h, w), dtype, channels_last)
        f = random_filter(gen, ty, tx, separable)
        x0, x1, y0, y1 = extra

        y = filter2d(x, f, padding=list(extra), gain=1.3)
        assert y.shape == (2, 3, h + y0 + y1, w + x0 + x1)
        pad = (x0 + tx // 2, x1 + (tx - 1) // 2, y0 + ty // 2, y1 + (ty - 1) // 2)
        cfg = ((1, 1), (1, 1), pad, False, 1.3)
        assert_close_to_definition(y, definition(x, f, *cfg), x, f, cfg, dtype)

        y = upsample2d(x, f, up=[2, 3], padding=list(extra), flip_filter=True)
        assert y.shape == (2, 3, h * 3 + y0 + y1, w * 2 + x0 + x1)
        pad = (x0 + (tx + 1) // 2, x1 + (tx - 2) // 2, y0 + (ty + 2) // 2, y1 + (ty - 3) // 2)
        cfg = ((2, 3), (1, 1), pad, True, 6.0)
        assert_close_to_definition(y, definition(x, f, *cfg), x, f, cfg, dtype)

        y = downsample2d(x, f, down=2, padding=list(extra), gain=0.5)
        pad = (x0 + (tx - 1) // 2, x1 + (tx - 2) // 2, y0 + (ty - 1) // 2, y1 + (ty - 2) // 2)
        cfg = ((1, 1), (2, 2), pad, False, 0.5)
        assert_close_to_definition(y, definition(x, f, *cfg), x, f, cfg, dtype)
        if extra == (0, 0, 0, 0) and h % 2 == 0 and w % 2 == 0:
            assert y.shape == (2, 3, h // 2, w // 2)

        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert y.is_contiguous(memory_format=fmt)


def test_helpers_match_familiar_resamplers(gen):
    """Box filters make upsample2d nearest-neighbour and downsample2d average pooling; a
    normalized filter keeps a constant image constant (the up_x * up_y gain)."""
    x = torch.randn(2, 3, 6, 4, generator=gen, dtype=torch.float64)
    box = setup_filter([1, 1])
    torch.testing.assert_close(upsample2d(x, box), F.interpolate(x, scale_factor=2, mode="nearest"))
    torch.testing.assert_close(downsample2d(x, box), F.avg_pool2d(x, 2))
    ones = torch.ones(1, 2, 5, 5, dtype=torch.float64)
    y = upsample2d(ones, setup_filter([1, 3, 3, 1]))
    torch.testing.assert_close(y[:, :, 2:-2, 2:-2], torch.ones_like(y[:, :, 2:-2, 2:-2]))
    y = filter2d(ones, setup_filter([1, 2, 1]))
    torch.testing.assert_close(y[:, :, 1:-1, 1:-1], torch.ones_like(y[:, :, 1:-1, 1:-1]))


# ---------------------------------------------------------------------------------------------
# Gradients


GRAD_CASES = [
    # (shape, taps, separable, up, down, pad, flip, gain)
    ((1, 2, 3, 2), (3, 3), True, (2, 2), (1, 1), (1, 2, 2, 1), False, 1.7),
    ((2, 2, 4, 3), (2, 3), False, (1, 2), (2, 1), (-1, 2, 3, -2), True, -0.8),
    ((1, 2, 5, 5), (4, 4), True, (1, 1), (2, 2), (1, 1, 1, 1), False, 1.0),
]


@pytest.mark.parametrize("case", range(len(GRAD_CASES)))
def test_gradcheck_and_gradgradcheck(gen, case):
    shape, (ty, tx), separable, up, down, pad, flip, gain = GRAD_CASES[case]
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    f = random_filter(gen, ty, tx, separable)

    def fn(x):
        return upfirdn2d(x, f, up=list(up), down=list(down), padding=list(pad),
                         flip_filter=flip, gain=gain)

    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_gradient_is_the_adjoint(gen):
    """<upfirdn2d(x), g> = <x, dx>: the gradient is the exact transpose of the forward map."""
    x = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    f = random_filter(gen, 3, 4, False)
    y = upfirdn2d(x, f, up=[2, 3], down=[3, 2], padding=[2, -1, 0, 3])
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    (dx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close((y * g).sum(), (x * dx).sum())


# ---------------------------------------------------------------------------------------------
# Argument errors and dispatch


def _x(gen):
    return torch.randn(1, 2, 5, 5, generator=gen)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"x": torch.ones(2, 5, 5)}, "x must have 4 dimensions"),
        ({"x": torch.ones(1, 2, 5, 5, dtype=torch.int32)}, "x has dtype"),
        ({"x": [[1.0]]}, "x must be a torch.Tensor"),
        ({"f": torch.ones(2, 2, 2)}, "f must have 1 or 2 dimensions"),
        ({"f": torch.ones(3, dtype=torch.float64)}, "f has dtype"),
        ({"f": torch.ones(0)}, "f must have at least one tap"),
        ({"f": torch.ones(3, requires_grad=True)}, "f requires grad"),
        ({"f": [1.0, 2.0]}, "f must be a torch.Tensor"),
        ({"up": 0}, "up must be >= 1"),
        ({"down": [1, 0]}, "down must be >= 1"),
        ({"up": [1, 2, 3]}, "up must be an int or a pair"),
        ({"down": 1.5}, "down must be an int or a pair"),
        ({"padding": [1, 2, 3]}, "padding must be"),
        ({"padding": 0.5}, "padding must be"),
        ({"padding": True}, "padding must be"),
        ({"gain": float("nan")}, "gain must be a finite number"),
        ({"gain": "2"}, "gain must be a finite number"),
        ({"flip_filter": 1}, "flip_filter must be True or False"),
        ({"padding": [-3, -2, 0, 0]}, "empty along width: input 5 \\* up 1 \\+ padding \\(-3, -2\\)"),
        ({"f": torch.ones(7, 1), "padding": [0, 0, 1, 0]}, "empty along height.*6 samples.*7 taps"),
        ({"impl": "bogus"}, "impl must be one of"),
        ({"impl": "cuda"}, "x is on cpu"),
    ],
)
def test_argument_errors(gen, kwargs, match):
    args = {"x": _x(gen), "f": setup_filter([1, 2, 1]), **kwargs}
    with pytest.raises(ValueError, match=match):
        upfirdn2d(**args)


@pytest.mark.parametrize(
    "fn, kwargs, match",
    [
        (filter2d, {"padding": [1, 2, 3]}, "filter2d: padding"),
        (filter2d, {"f": torch.ones(3, dtype=torch.float16)}, "filter2d: f has dtype"),
        (upsample2d, {"up": 0}, "upsample2d: up must be >= 1"),
        (upsample2d, {"gain": None}, "upsample2d: gain"),
        (downsample2d, {"down": (2, 2, 2)}, "downsample2d: down must be"),
        (downsample2d, {"x": torch.ones(1, 1, 1, 1), "f": torch.ones(1, 5)}, "downsample2d: the output would be empty"),
        (downsample2d, {"x": torch.ones(5, 5)}, "downsample2d: x must have 4"),
        (upsample2d, {"impl": "cuda"}, "upsample2d\\(impl='cuda'\\)"),
    ],
)
def test_helper_argument_errors(gen, fn, kwargs, match):
    args = {"x": _x(gen), "f": setup_filter([1, 3, 3, 1]), **kwargs}
    with pytest.raises(ValueError, match=match):
        fn(**args)


def test_kernel_coverage_reasons(gen):
    """Configurations beyond the kernel's limits carry a reason (so 'auto' takes the reference
    and 'cuda' explains); they still run under 'auto'."""
    ok = _upfirdn2d._kernel_unsupported(torch.ones(12, 12), (8, 8), (8, 8))
    assert ok is None
    assert "13x4 filter" in _upfirdn2d._kernel_unsupported(torch.ones(13, 4), (1, 1), (1, 1))
    assert "13x13 filter" in _upfirdn2d._kernel_unsupported(torch.ones(13), (1, 1), (1, 1))
    assert "factor" in _upfirdn2d._kernel_unsupported(torch.ones(3), (9, 1), (1, 1))
    assert "factor" in _upfirdn2d._kernel_unsupported(None, (1, 1), (1, 9))
    x = torch.randn(1, 2, 3, 3, generator=gen, dtype=torch.float64)
    f = torch.rand(13, generator=gen)
    y = upfirdn2d(x, f, up=9, down=2, padding=3)
    cfg = ((9, 9), (2, 2), (3, 3, 3, 3), False, 1.0)
    assert_close_to_definition(y, definition(x, f, *cfg), x, f, cfg, torch.float64)


def test_environment_variable(gen, monkeypatch):
    x, f = _x(gen), setup_filter([1, 2, 1])
    monkeypatch.setenv("STYLEGAN2_OPS_IMPL", "ref")
    expect = upfirdn2d(x, f, impl="ref")
    torch.testing.assert_close(upfirdn2d(x, f), expect, rtol=0, atol=0)
    monkeypatch.setenv("STYLEGAN2_OPS_IMPL", "cuda")
    with pytest.raises(ValueError, match="cuda"):
        upfirdn2d(x, f)
    torch.testing.assert_close(upfirdn2d(x, f, impl="ref"), expect, rtol=0, atol=0)


@pytest.mark.cuda
def test_device_mismatch(gen):
    x = _x(gen)
    with pytest.raises(ValueError, match="f is on cuda"):
        upfirdn2d(x, setup_filter([1, 2, 1], device="cuda"))
    with pytest.raises(ValueError, match="f is on cpu"):
        filter2d(x.cuda(), setup_filter([1, 2, 1]))


def test_kernel_coverage_includes_the_bindings_spatial_range():
    """The bindings refuse |padding| or an upsampled size past kUpfirdn2dMaxSpatial; 'auto' must
    take the reference for those rather than raise from the extension (review R2)."""
    import re
    from pathlib import Path

    header = (Path(__file__).resolve().parent.parent / "csrc" / "bind_upfirdn2d.h").read_text()
    shift = int(re.search(r"kUpfirdn2dMaxSpatial = int64_t\{1\} << (\d+);", header).group(1))
    assert _upfirdn2d.KERNEL_MAX_SPATIAL == 1 << shift
    big = _upfirdn2d.KERNEL_MAX_SPATIAL
    f = torch.ones(4, 4)
    assert _upfirdn2d._kernel_unsupported(f, (1, 1), (1, 1), (big, 0, 0, 0), (8, 8)) is None
    assert _upfirdn2d._kernel_unsupported(f, (1, 1), (1, 1), (0, 0, -big - 1, 0), (8, 8)) is not None
    assert _upfirdn2d._kernel_unsupported(f, (2, 1), (1, 1), (0, 0, 0, 0), (big // 2, 8)) is None
    assert _upfirdn2d._kernel_unsupported(f, (2, 1), (1, 1), (0, 0, 0, 0), (big // 2 + 1, 8)) is not None
