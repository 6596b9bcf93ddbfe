"""The upfirdn2d CUDA path against the float64 reference.

The kernel tests take the `kdev` fixture: each runs on a GPU (`cuda`, skipped without one) and
on the CPU emulator of the kernels (tests/emulator/) in two thread orders. Tests that need a real
GPU (int64 offsets past 2^31 elements, opcheck, dispatch of CUDA tensors) stay `cuda` only. The
autograd wiring of the CUDA path (its Functions with the kernel swapped for the reference, under
gradcheck/gradgradcheck) and the argument errors run everywhere. The kernels' index math is
also checked by tests/test_upfirdn2d_index_math.py.

Tolerances: the reference runs in float64 on the same (already rounded) inputs, and the kernel
accumulates in float32 and rounds once on store. So the error is one rounding of the result in
the storage dtype (float16: 2^-11 relative, bfloat16: 2^-8) plus float32 summation of at most
144 products (up to ~1e-5 of the largest term in the worst case); KTOL leaves about a factor 2
above either, relative to the output's largest magnitude.
"""
from __future__ import annotations

import pytest
import torch

import stylegan2_ops
from stylegan2_ops import _layout, _loader, _upfirdn2d, downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d

KERNEL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KTOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
    torch.bfloat16: dict(atol=8e-3, rtol=8e-3),
}
GENERAL_PATH, TILED_PATH = 1, 2
# (height, width), channels. On the emulator (False) the sizes that cross tile edges and channel
# groups stay, at a tenth of the elements (the float64 reference of 512 channels alone takes
# ~20 s on a CPU); `pytest --sweep` runs the GPU's sizes there too.
RESAMPLING_SHAPES = {
    True: [((4, 4), 512), ((17, 33), 3), ((64, 64), 32), ((35, 70), 17), ((128, 128), 1)],
    False: [((4, 4), 48), ((17, 33), 3), ((20, 24), 32), ((35, 70), 17), ((70, 66), 1)],
}


def poison_allocator(device: str, nbytes: int) -> None:
    """Fill and free a block so the next allocation of that size likely reuses NaN-filled
    memory: an output element the kernel forgets to write then shows up as NaN."""
    if device != "cuda":
        return  # the emulated kernels allocate their outputs NaN-filled
    torch.full((nbytes // 4 + 1024,), float("nan"), device="cuda").resize_(0)
    torch.cuda.synchronize()


def ri(gen: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def random_config(gen: torch.Generator, max_out: int = 900):
    """Factors 1..8 and taps 1..12 per axis, separable or 2-D, padding that pads or crops, flip,
    gain and odd sizes; resampled until the output is non-empty and at most max_out pixels."""
    while True:
        separable = ri(gen, 0, 3) == 0
        fw = ri(gen, 1, 12)
        fh = fw if separable else ri(gen, 1, 12)
        up, down = (ri(gen, 1, 8), ri(gen, 1, 8)), (ri(gen, 1, 8), ri(gen, 1, 8))
        h, w = ri(gen, 1, 13), ri(gen, 1, 13)
        pad = tuple(ri(gen, -(s * u) // 2, 12) for s, u in ((w, up[0]), (w, up[0]), (h, up[1]), (h, up[1])))
        pw, ph = w * up[0] + pad[0] + pad[1], h * up[1] + pad[2] + pad[3]
        if pw >= fw and ph >= fh and ((pw - fw) // down[0] + 1) * ((ph - fh) // down[1] + 1) <= max_out:
            f = torch.randn(fw, generator=gen) if separable else torch.randn(fh, fw, generator=gen)
            flip = ri(gen, 0, 1) == 1
            gain = float(torch.empty(1).uniform_(-2, 3, generator=gen))
            return (h, w), f, up, down, pad, flip, gain


def to_device(device: str, x: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    x = x.to(device, dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x.contiguous()


def assert_close_scaled(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, derivative: bool = False) -> None:
    """Close relative to want's largest magnitude. A derivative chains about four roundings in
    the storage dtype (tanh, the product, the kernel, the chain rule), hence 4x the tolerance."""
    scale = float(want.abs().max().clamp(min=1.0)) if want.numel() else 1.0
    tol = {k: v * (4 if derivative else 1) for k, v in KTOL[dtype].items()}
    torch.testing.assert_close(got.double() / scale, want.double() / scale, **tol)


def kernels():
    module = _loader.load()
    assert module is not None, "the CUDA extension did not load"
    return module


# ---------------------------------------------------------------------------------------------
# Everywhere: the CUDA path's autograd wiring, with the kernel swapped for the reference.


def fake_kernel(x, f, up, down, pad, flip, gain):
    """What the compiled kernel computes, from the reference (no autograd: a kernel has none),
    in x's layout as the binding writes it."""
    with torch.no_grad():
        y = _upfirdn2d.upfirdn2d_ref(x, f, up, down, pad, flip, gain)
    cl = x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return y.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


def test_cuda_path_autograd_wiring_first_and_second_order(gen, monkeypatch):
    """The Function's backward is upfirdn2d with the transposed configuration, applied through
    the same Function class: gradcheck and gradgradcheck of that chain (float64, CPU)."""
    monkeypatch.setattr(_upfirdn2d, "_run_kernel", fake_kernel)
    for case in range(4):
        (h, w), f, up, down, pad, flip, gain = random_config(gen, max_out=24)
        if case == 0:  # the StyleGAN2 up-2 case explicitly
            (h, w), f, up, down, pad, flip, gain = (5, 4), torch.randn(4, 4, generator=gen), (2, 2), (1, 1), \
                (2, 1, 2, 1), False, 4.0
        x = torch.randn(1, 2, min(h, 6), min(w, 6), generator=gen, dtype=torch.float64)
        if x.shape[3] * up[0] + pad[0] + pad[1] < f.shape[-1] or x.shape[2] * up[1] + pad[2] + pad[3] < f.shape[0]:
            x = torch.randn(1, 2, h, w, generator=gen, dtype=torch.float64)
        x.requires_grad_(True)
        fn = _upfirdn2d._cuda_function(up, down, pad, flip, gain)
        func = lambda t: fn.apply(t, f)  # noqa: E731
        want = _upfirdn2d.upfirdn2d_ref(x, f, up, down, pad, flip, gain)
        torch.testing.assert_close(func(x), want)
        assert torch.autograd.gradcheck(func, (x,))
        assert torch.autograd.gradgradcheck(func, (x,))


def test_cuda_path_keeps_channels_last_through_backward(gen, monkeypatch):
    monkeypatch.setattr(_upfirdn2d, "_run_kernel", fake_kernel)
    f = setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 3, 6, 5, generator=gen).to(memory_format=torch.channels_last).requires_grad_(True)
    fn = _upfirdn2d._cuda_function((2, 2), (1, 1), (2, 1, 2, 1), False, 4.0)
    y = fn.apply(x, f)
    assert y.is_contiguous(memory_format=torch.channels_last)
    dy = torch.randn(y.shape, generator=gen).to(memory_format=torch.channels_last)
    (dx,) = torch.autograd.grad(y, x, dy)
    assert dx.shape == x.shape and dx.is_contiguous(memory_format=torch.channels_last)


def test_registered_op_fake_gives_the_kernels_shape_and_format(gen):
    """The torch.library fake (what torch.compile traces with), run on meta tensors: the
    reference's output shape, in x's memory format (read from its strides, as the binding does)."""
    for case in range(8):
        (h, w), f, up, down, pad, flip, gain = random_config(gen)
        channels_last = case % 2 == 1
        x = torch.randn(2, 3, h, w, generator=gen)
        want = _upfirdn2d.upfirdn2d_ref(x, f, up, down, pad, flip, gain)
        x_meta = x.to("meta", memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        got = torch.ops.stylegan2_ops.upfirdn2d(x_meta, f.to("meta"), *up, *down, *pad, flip, gain)
        # A 1x1 image is contiguous in both layouts; the output is then plainly contiguous.
        fmt = torch.channels_last if channels_last and h * w > 1 else torch.contiguous_format
        assert got.shape == want.shape and got.dtype == x.dtype
        assert got.stride() == torch.empty(want.shape, memory_format=fmt).stride()


def test_impl_cuda_on_cpu_tensor_says_which():
    with pytest.raises(ValueError, match="CUDA tensors"):
        upfirdn2d(torch.randn(1, 1, 4, 4), setup_filter([1, 3, 3, 1]), impl="cuda")


# ---------------------------------------------------------------------------------------------
# GPU: the kernels themselves.


@pytest.mark.cuda
def test_module_limits_agree_with_python():
    k = kernels()
    assert k.UPFIRDN2D_MAX_TAPS == _upfirdn2d.KERNEL_MAX_TAPS
    assert k.UPFIRDN2D_MAX_FACTOR == _upfirdn2d.KERNEL_MAX_FACTOR


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_matches_reference_on_random_configs(kdev, gen, dtype, channels_last):
    for case in range(30):
        (h, w), f, up, down, pad, flip, gain = random_config(gen)
        n, c = ri(gen, 1, 3), [1, 3, 5, 16, 19][case % 5]
        x = to_device(kdev, torch.randn(n, c, h, w, generator=gen), dtype, channels_last)
        f = f.to(kdev)
        want = upfirdn2d(x.double(), f, up, down, pad, flip, gain, impl="ref")
        poison_allocator(kdev, want.numel() * x.element_size())
        got = upfirdn2d(x, f, up, down, pad, flip, gain, impl="cuda")
        assert got.dtype == dtype and got.shape == want.shape
        assert got.is_contiguous(memory_format=_layout.memory_format(x))  # x's memory format
        assert not got.isnan().any(), "unwritten output elements"
        assert_close_scaled(got, want, dtype)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_stylegan2_resampling_matches_reference(kdev, gen, dtype, channels_last, sweep):
    """The helpers as the model calls them (4-tap [1,3,3,1], 2-D and separable): the fast paths,
    at sizes across tile edges and with channel counts below, at and above a channel group."""
    for separable in (False, True):
        f = setup_filter([1, 3, 3, 1], device=kdev, separable=separable)
        for (h, w), c in RESAMPLING_SHAPES[kdev == "cuda" or sweep]:
            x = to_device(kdev, torch.randn(2, c, h, w, generator=gen), dtype, channels_last)
            for name, call in [
                ("up", lambda t, impl: upsample2d(t, f, up=2, impl=impl)),
                ("down", lambda t, impl: downsample2d(t, f, down=2, impl=impl)),
                ("filter", lambda t, impl: filter2d(t, f, padding=1, gain=4, impl=impl)),
                ("conv-up pad", lambda t, impl: upfirdn2d(t, f, padding=[2, 1, 2, 1], gain=4, impl=impl)),
            ]:
                want = call(x.double(), "ref")
                poison_allocator(kdev, want.numel() * x.element_size())
                got = call(x, "cuda")
                assert not got.isnan().any(), f"{name}: unwritten output elements"
                assert_close_scaled(got, want, dtype)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_tiled_path_matches_general_path(kdev, gen, dtype, channels_last):
    """Choosing the path changes nothing beyond float32 summation order (then one rounding)."""
    k = kernels()
    for case in range(12):
        up, down = [((1, 1), (1, 1)), ((2, 2), (1, 1)), ((1, 1), (2, 2))][case % 3]
        h, w, c = ri(gen, 1, 70), ri(gen, 1, 70), [1, 3, 8, 20][case % 4]
        pad = [ri(gen, -2, 4) for _ in range(4)]
        if w * up[0] + pad[0] + pad[1] < 4 or h * up[1] + pad[2] + pad[3] < 4:
            pad = [3, 2, 3, 2]
        f = (torch.randn(4, generator=gen) if case % 2 else torch.randn(4, 4, generator=gen)).to(kdev)
        x = to_device(kdev, torch.randn(2, c, h, w, generator=gen), dtype, channels_last)
        args = (x, f, up[0], up[1], down[0], down[1], *pad, case % 3 == 0, 1.7)
        poison_allocator(kdev, x.numel() * 4 * x.element_size())
        tiled = k.upfirdn2d(*args, TILED_PATH)
        poison_allocator(kdev, x.numel() * 4 * x.element_size())
        general = k.upfirdn2d(*args, GENERAL_PATH)
        assert not tiled.isnan().any() and not general.isnan().any()
        # The binding reads the layout from x's strides: the output keeps it on either path.
        fmt = torch.channels_last if channels_last and not x.is_contiguous() else torch.contiguous_format
        want_stride = torch.empty(tiled.shape, memory_format=fmt).stride()
        assert tiled.stride() == general.stride() == want_stride, (tiled.stride(), x.stride())
        if dtype == torch.float32:
            torch.testing.assert_close(tiled, general, atol=1e-5, rtol=1e-5)
        else:  # at most one unit in the last place of the storage dtype apart
            ulp = torch.finfo(dtype).eps * general.float().abs().clamp(min=1e-3)
            # (+1e-5: float32 summation-order differences show up at cancelling, tiny outputs)
            assert bool(((tiled.float() - general.float()).abs() <= ulp * 1.01 + 1e-5).all())
        want = upfirdn2d(x.double(), f, up, down, pad, case % 3 == 0, 1.7, impl="ref")
        assert_close_scaled(tiled, want, dtype)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_first_and_second_derivatives_match_reference(kdev, gen, dtype, channels_last):
    """d/dx of a nonlinear function of upfirdn2d, then the gradient of a random scalar of that
    first derivative (what R1 does); both through the kernel's backward Functions."""
    cases = [random_config(gen, max_out=300) for _ in range(6)]
    cases.append(((9, 7), setup_filter([1, 3, 3, 1]), (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0))
    cases.append(((10, 11), setup_filter([1, 3, 3, 1], separable=True), (1, 1), (2, 2), (1, 1, 1, 1), True, 1.0))
    for (h, w), f, up, down, pad, flip, gain in cases:
        f = f.to(kdev)
        x0 = to_device(kdev, torch.randn(2, 5, h, w, generator=gen), dtype, channels_last)
        r = torch.randn(2, 5, h, w, generator=gen)
        results = {}
        for impl in ("cuda", "ref"):
            x = (x0.double() if impl == "ref" else x0).clone().requires_grad_(True)
            y = upfirdn2d(torch.tanh(x), f, up, down, pad, flip, gain, impl=impl)
            wgt = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape).to(y)
            (gx,) = torch.autograd.grad((y * y * wgt).sum(), x, create_graph=True)
            (ggx,) = torch.autograd.grad((gx * r.to(gx)).sum(), x)
            results[impl] = (gx, ggx)
        for got, want in zip(results["cuda"], results["ref"]):
            assert got.shape == want.shape
            assert_close_scaled(got, want, dtype, derivative=True)


def test_gradient_of_the_gradient_is_the_forward_again(kdev, gen):
    """upfirdn2d is linear: differentiating dx = J^T dy with respect to dy gives J r again."""
    (h, w), f, up, down, pad, flip, gain = random_config(gen)
    f = f.to(kdev)
    x = torch.randn(2, 3, h, w, generator=gen).to(kdev).requires_grad_(True)
    y = upfirdn2d(x, f, up, down, pad, flip, gain, impl="cuda")
    dy = torch.randn(y.shape, generator=gen).to(kdev).requires_grad_(True)
    (dx,) = torch.autograd.grad(y, x, dy, create_graph=True)
    r = torch.randn(x.shape, generator=gen).to(kdev)
    (d_dy,) = torch.autograd.grad((dx * r).sum(), dy)
    want = upfirdn2d(r.double(), f, up, down, pad, flip, gain, impl="ref")
    assert_close_scaled(d_dy, want, torch.float32)


@pytest.mark.cuda
def test_int64_offsets(gen):
    """An input view whose offsets pass 2^31 takes the 64-bit general kernel (4 GiB of float16)."""
    big = torch.empty((1 << 31) + 64, dtype=torch.float16, device="cuda")
    x = big.as_strided([1, 2, 5, 7], [0, 1 << 31, 7, 1])
    x.copy_(torch.randn(1, 2, 5, 7, generator=gen).half())
    f = torch.randn(3, 3, generator=gen).cuda()
    got = upfirdn2d(x, f, up=2, padding=[2, 1, 0, 3], impl="cuda")
    want = upfirdn2d(x.double(), f, up=2, padding=[2, 1, 0, 3], impl="ref")
    assert_close_scaled(got, want, torch.float16)


@pytest.mark.cuda
def test_unsupported_configs_route_to_reference_under_auto_and_raise_under_cuda(gen):
    x = torch.randn(1, 2, 9, 9, generator=gen).cuda()
    for f, up, down in [(torch.randn(13, 3, generator=gen), 1, 1), (torch.randn(13, generator=gen), 1, 1),
                        (torch.randn(3, 3, generator=gen), 9, 1), (torch.randn(3, 3, generator=gen), 1, [1, 9])]:
        f = f.cuda()
        want = upfirdn2d(x, f, up, down, padding=6, impl="ref")
        assert torch.equal(upfirdn2d(x, f, up, down, padding=6), want)  # auto: the reference, bit for bit
        with pytest.raises(ValueError, match="impl='auto' uses the reference"):
            upfirdn2d(x, f, up, down, padding=6, impl="cuda")
    with pytest.raises(ValueError, match="float64"):
        upfirdn2d(x.double(), setup_filter([1, 3, 3, 1], device="cuda"), impl="cuda")


@pytest.mark.cuda
def test_bindings_reject_what_the_kernel_does_not_cover(gen):
    k = kernels()
    x = torch.randn(1, 2, 9, 9, generator=gen).cuda()
    f = torch.randn(3, 3, generator=gen).cuda()
    with pytest.raises(RuntimeError, match="tiled path"):
        k.upfirdn2d(x, f, 1, 1, 1, 1, 1, 1, 1, 1, False, 1.0, TILED_PATH)
    with pytest.raises(RuntimeError, match="taps"):
        k.upfirdn2d(x, torch.randn(13, 3, device="cuda"), 1, 1, 1, 1, 6, 6, 6, 6, False, 1.0, 0)
    with pytest.raises(RuntimeError, match="factors"):
        k.upfirdn2d(x, f, 9, 1, 1, 1, 1, 1, 1, 1, False, 1.0, 0)
    with pytest.raises(RuntimeError, match="float32"):
        k.upfirdn2d(x, f.half(), 1, 1, 1, 1, 1, 1, 1, 1, False, 1.0, 0)
    with pytest.raises(RuntimeError, match="empty"):
        k.upfirdn2d(x, f, 1, 1, 1, 1, -4, -4, 0, 0, False, 1.0, 0)
    with pytest.raises(RuntimeError, match="CUDA tensor"):
        k.upfirdn2d(x.cpu(), f, 1, 1, 1, 1, 1, 1, 1, 1, False, 1.0, 0)


@pytest.mark.cuda
def test_auto_takes_the_kernel_for_supported_cuda_tensors():
    x = torch.randn(1, 2, 8, 8, device="cuda")
    assert stylegan2_ops._dispatch.choose("upfirdn2d", "auto", "upfirdn2d", {"x": x}) == "cuda"


@pytest.mark.cuda
def test_registered_op_passes_opcheck(gen):
    """The torch.library registration (schema, fake implementation: shape and strides) that lets
    torch.compile trace the first-order path."""
    f = setup_filter([1, 3, 3, 1], device="cuda")
    for channels_last in (False, True):
        x = to_device(torch.randn(2, 3, 7, 6, generator=gen), torch.float32, channels_last)
        args = (x, f, 2, 2, 1, 1, 2, 1, 2, 1, False, 4.0, channels_last)
        torch.library.opcheck(torch.ops.stylegan2_ops.upfirdn2d.default, args,
                              test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_kernel_on_strided_views_with_storage_offsets(kdev, gen, dtype):
    """Inputs that are views: a storage offset (an odd element address), gaps between rows and
    planes, a permuted channel order and a broadcast (stride-0) batch, on the tiled and general
    paths, forward and input gradient (review R2)."""
    f4 = setup_filter([1, 3, 3, 1], device=kdev)
    f5 = torch.randn(5, 3, generator=gen).to(kdev)
    for f, up, down, pad in ((f4, 2, 1, [2, 1, 2, 1]), (f4, 1, 2, [1, 1, 1, 1]), (f4, 1, 1, [1, 2, 2, 1]),
                             (f5, [3, 1], [1, 2], [2, -1, 0, 3])):
        base = torch.randn(3, 21, 13, 17, generator=gen).to(kdev, dtype)
        views = [base[:, 1:20:2, 1:12, 3:16],  # offset, gaps
                 base.permute(0, 2, 3, 1)[:, 1:, 2:, 1:20].permute(0, 3, 1, 2),  # channels_last-like, offset
                 base[1:2, 3:12, 2:9, 1:14].expand(4, -1, -1, -1)]  # stride-0 batch
        for x in views:
            want = upfirdn2d(x.double(), f, up, down, pad, gain=1.5, impl="ref")
            poison_allocator(kdev, want.numel() * x.element_size())
            got = upfirdn2d(x, f, up, down, pad, gain=1.5, impl="cuda")
            assert not got.isnan().any(), "unwritten output elements"
            assert_close_scaled(got, want, dtype)
            dy = torch.randn(want.shape, generator=gen).to(kdev, dtype)
            xs = x.detach().clone().requires_grad_(True)
            (dx,) = torch.autograd.grad(upfirdn2d(xs, f, up, down, pad, gain=1.5, impl="cuda"), xs, dy)
            xr = x.detach().double().requires_grad_(True)
            (dxr,) = torch.autograd.grad(upfirdn2d(xr, f, up, down, pad, gain=1.5, impl="ref"), xr, dy.double())
            assert_close_scaled(dx, dxr, dtype)
