"""modulated_conv2d's CUDA path against the reference, on a GPU (`cuda` ids, skipped without one)
and on the CPU emulator of the kernels (tests/emulator/, `emu-` ids) in two thread orders.

Ground truth is the reference (impl='ref', itself tested against a from-scratch float64
definition in test_modulated_conv.py) evaluated in float64 on the very values the kernels see
(inputs rounded to their dtype first). Every kernel output is poisoned with NaN beforehand
(poison_allocator), so an element a kernel forgets to write fails the comparison.

Tolerances are relative to the largest magnitude of the expected tensor, per dtype:
- float32: TF32 is switched off for these tests (fixture), so the convolutions are true float32;
  cuDNN's Winograd / FFT algorithms still lose a few bits over a few hundred products, and the
  kernels use fast-math exp: 1e-4 is ~1000 float32 ulps, far below the O(1) error of any wrong
  index, flag or formula.
- float16 / bfloat16: the activations (x * styles, the convolution's output, the weights cast
  to the activation dtype) are rounded to the dtype at each of ~3 steps, each worth half an ulp
  relative (eps = 2^-10 / 2^-7), and the convolution sums hundreds of such terms with random
  signs: 8 eps of the output's scale, 16 eps for gradients (two more rounded convolutions).
"""
from __future__ import annotations

import math

import pytest
import torch

from stylegan2_ops import _dispatch, _loader, _modulated_conv_cuda, modulated_conv2d, setup_filter
from stylegan2_ops._bias_act import ACTIVATIONS

F64 = torch.float64
KERNEL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
EPS = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
OUT_TOL = {torch.float32: 1e-4, torch.float16: 8 * EPS[torch.float16], torch.bfloat16: 8 * EPS[torch.bfloat16]}
GRAD_TOL = {torch.float32: 2e-4, torch.float16: 16 * EPS[torch.float16], torch.bfloat16: 16 * EPS[torch.bfloat16]}
# A case can be ill-conditioned in a 16-bit dtype (demodulation of one input channel, gradients
# that cancel to ~0), and the convolutions around the kernels are the platform's (cuDNN, or
# oneDNN on the CPU emulator, whose 16-bit convolutions round partial sums to the storage dtype).
# So the composite tests also run the reference in the kernels' own dtype and accept three times
# the error it makes (the unfused route rounds x * styles once more than the reference does) (STYLE.md: tolerances relative to what PyTorch itself achieves in that dtype).
# Measured on the emulator: a bfloat16 second derivative the kernels got within 125x the floor,
# the bfloat16 reference within 425x; a float32 one 2.9e-3 vs 3.9e-3.
# A baseline error above this (relative to scale) means the dtype cannot resolve the quantity at
# all (seen with bfloat16 weight gradients through up/down on the CPU: the reference was off by
# 7x its scale); such a comparison is skipped rather than passed with a meaningless tolerance.
UNINFORMATIVE = 0.25


def tol(table: dict, dtype: torch.dtype, dev: str) -> float:
    return table[dtype]
SMOOTH_ACTS = ["linear", "tanh", "sigmoid", "softplus", "swish"]
MEMORY_FORMATS = [torch.contiguous_format, torch.channels_last]


@pytest.fixture(autouse=True)
def _true_float32():
    """TF32 off: float32 results are then comparable to float64 within float32 rounding."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def poison_allocator(device: str, nbytes: int) -> None:
    """Fill and free a block so the next allocation of that size likely reuses NaN-filled memory:
    an element a kernel forgets to write then shows up as NaN. (The emulated kernels allocate
    their outputs NaN-filled.)"""
    if device != "cuda":
        return
    torch.full((nbytes // 4 + 1024,), float("nan"), device="cuda").resize_(0)
    torch.cuda.synchronize()


def kernels():
    module = _loader.load()
    assert module is not None, f"the CUDA kernels did not load: {_loader.state().reason}"
    return module


def assert_close_rel(got: torch.Tensor, want: torch.Tensor, tol: float, what: str, floor: float = 1e-3,
                     baseline: torch.Tensor | None = None) -> None:
    """max |got - want| <= tol * max(max |want|, floor). With `baseline` (the reference computed in
    the kernels' dtype), tol widens to three times the baseline's own error, and elements where the
    baseline overflowed to inf/NaN are left out (the dtype cannot represent them either)."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    got, want = got.detach().to(F64), want.detach()
    scale = max(want.abs().max().item(), floor)
    keep = torch.ones_like(want, dtype=torch.bool)
    if baseline is not None:
        base = baseline.detach().to(F64)
        keep = torch.isfinite(base)
        base_err = (base - want).abs()[keep].max().item() / scale if keep.any() else math.inf
        if base_err > UNINFORMATIVE:
            return  # the dtype itself cannot resolve this quantity: nothing to learn from it
        tol = max(tol, 3 * base_err)
    assert not got[keep].isnan().any(), f"{what}: NaN (an element was not written?)"
    err = (got - want).abs()[keep].max().item() / scale if keep.any() else 0.0
    assert err <= tol, f"{what}: max error {err:.3g} of scale {scale:.3g} > {tol:.3g}"


def pick(gen, options):
    return options[int(torch.randint(len(options), (), generator=gen))]


def randn(gen, *shape, lo=None):
    t = torch.randn(*shape, generator=gen, dtype=F64)
    if lo is not None:  # away from zero (styles: the demodulation divides by them)
        t = t.sign() * (t.abs() + lo)
    return t


# ---------------------------------------------------------------------------------------------
# Random calls of the public op.


def random_call(dev, gen, dtype, up, down, fused, memory_format, *, acts=None, param_dtype=None, clamps=None):
    """(tensors, kwargs): tensors = [x, weight, styles, noise, bias] on the GPU, already rounded
    to their dtypes (x, noise, bias: dtype; weight, styles: param_dtype, float32 or dtype)."""
    n = pick(gen, [1, 2, 3, 4])
    cin, cout = pick(gen, [1, 3, 5, 16, 33]), pick(gen, [1, 2, 5, 17, 32])
    k = pick(gen, [1, 3, 3])
    h, w = pick(gen, [4, 5, 7, 8]), pick(gen, [4, 6, 9])
    padding = pick(gen, [k // 2, k // 2, [k // 2, k // 2 + 1], 0])
    act = pick(gen, acts or list(ACTIVATIONS))
    f = setup_filter(pick(gen, [[1, 3, 3, 1], [1, 2, 1]])) if up > 1 or down > 1 else None
    kwargs = dict(
        up=up, down=down, padding=padding, resample_filter=f.to(dev) if f is not None else None,
        demodulate=pick(gen, [True, True, False]), flip_weight=pick(gen, [True, False]),
        fused_modconv=fused, act=act, alpha=pick(gen, [None, 0.1, 0.7]), gain=pick(gen, [None, 0.6, 1.9]),
        clamp=pick(gen, clamps or [None, None, 0.8, 256.0]),
    )
    pd = param_dtype or pick(gen, [torch.float32, dtype])
    x = randn(gen, n, cin, h, w).to(dev, dtype).contiguous(memory_format=memory_format)
    weight = randn(gen, cout, cin, k, k).to(dev, pd)
    styles = randn(gen, n, cin, lo=0.3).to(dev, pd)
    with torch.no_grad():
        out_shape = modulated_conv2d(x.double(), weight.double(), styles.double(), **kwargs, impl="ref").shape
    oh, ow = out_shape[2:]
    noise = pick(gen, [None, (n, 1, oh, ow), (1, 1, oh, ow), (oh, ow), (n, cout, oh, ow)])
    noise = randn(gen, *noise).to(dev, dtype) if noise is not None else None
    bias = randn(gen, cout).to(dev, dtype) if pick(gen, [True, True, False]) else None
    return [x, weight, styles, noise, bias], kwargs


def call(tensors, kwargs, impl):
    x, weight, styles, noise, bias = tensors
    return modulated_conv2d(x, weight, styles, noise, **kwargs, bias=bias, impl=impl)


def gradient_floor(grads) -> float:
    """The scale below which a gradient is compared absolutely: 5 % of the largest gradient of
    the call (at least 1e-3). Demodulation makes the output invariant to each sample's common style scale, so
    sum_i styles[n, i] * d/dstyles[n, i] = 0 and, with one input channel, d/dstyles is exactly 0:
    such a cancelling sum keeps the absolute rounding error of its O(1) terms."""
    return max(0.05 * max((g.abs().max().item() for g in grads if g is not None), default=1.0), 1e-3)


def as_f64(tensors, requires_grad=False):
    return [t.detach().double().requires_grad_(requires_grad) if t is not None else None for t in tensors]


UP_DOWN = [(1, 1), (2, 1), (1, 2)]


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("up,down", UP_DOWN)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS, ids=["contig", "chlast"])
def test_forward_matches_reference(kdev, gen, dtype, fused, up, down, memory_format):
    for _ in range(4):
        tensors, kwargs = random_call(kdev, gen, dtype, up, down, fused, memory_format)
        want = call(as_f64(tensors), kwargs, "ref")
        poison_allocator(kdev, want.numel() * tensors[0].element_size())
        got = call(tensors, kwargs, "cuda")
        assert got.dtype == dtype
        assert_close_rel(got, want, tol(OUT_TOL, dtype, kdev), f"y {kwargs}", baseline=call(tensors, kwargs, "ref"))


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("up,down", UP_DOWN)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS, ids=["contig", "chlast"])
def test_first_derivatives_match_reference(kdev, gen, dtype, fused, up, down, memory_format):
    """d/dx, d/dweight, d/dstyles, d/dnoise, d/dbias. Low precision uses smooth activations: at a
    kink a rounding that flips the sign of the pre-activation changes act' by O(1)."""
    acts = list(ACTIVATIONS) if dtype == torch.float32 else SMOOTH_ACTS
    # Likewise the clamp's edge is a kink: in 16 bits, paths that round differently (unfused vs the
    # reference's modulated weights) put different elements past it. Only the far clamp there.
    clamps = None if dtype == torch.float32 else [None, 256.0]
    for _ in range(3):
        tensors, kwargs = random_call(kdev, gen, dtype, up, down, fused, memory_format, acts=acts, clamps=clamps)
        present = [k for k, t in enumerate(tensors) if t is not None]
        ref_in = as_f64(tensors, requires_grad=True)
        want_y = call(ref_in, kwargs, "ref")
        dy = randn(gen, *want_y.shape)
        wants = torch.autograd.grad(want_y, [ref_in[k] for k in present], dy)
        ins = [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]
        got_y = call(ins, kwargs, "cuda")
        poison_allocator(kdev, got_y.numel() * got_y.element_size())
        gots = torch.autograd.grad(got_y, [ins[k] for k in present], dy.to(kdev, dtype))
        base_in = [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]
        bases = torch.autograd.grad(call(base_in, kwargs, "ref"), [base_in[k] for k in present], dy.to(kdev, dtype))
        names = ["x", "weight", "styles", "noise", "bias"]
        floor = gradient_floor(wants)
        for k, got, want, base in zip(present, gots, wants, bases):
            assert got.dtype == tensors[k].dtype
            assert_close_rel(got, want, tol(GRAD_TOL, dtype, kdev), f"d/d{names[k]} {kwargs}", floor, base)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("up,down", [(1, 1), (2, 1)])
def test_second_derivatives_match_reference(kdev, gen, dtype, fused, up, down):
    """Path-length style: the gradient w.r.t. the styles (or x, R1 style), squared and summed,
    differentiated again w.r.t. everything."""
    second_tol = 2 * tol(GRAD_TOL, dtype, kdev)
    for wrt in (2, 0):  # styles, x
        tensors, kwargs = random_call(kdev, gen, dtype, up, down, fused, pick(gen, MEMORY_FORMATS), acts=SMOOTH_ACTS)
        present = [k for k, t in enumerate(tensors) if t is not None]
        results = []
        same_dtype = lambda: [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]
        for impl, ins in (("ref", as_f64(tensors, requires_grad=True)), ("cuda", same_dtype()),
                          ("ref", same_dtype())):  # the last: the baseline in the kernels' dtype
            y = call(ins, kwargs, impl)
            probe = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=F64).to(kdev, y.dtype)
            (g,) = torch.autograd.grad((y * probe).sum(), ins[wrt], create_graph=True)
            loss = g.float().square().sum() if g.dtype != F64 else g.square().sum()
            results.append(torch.autograd.grad(loss, [ins[k] for k in present], allow_unused=True))
        floor = gradient_floor(results[0])
        for k, want, got, base in zip(present, *results):
            if want is None:
                assert got is None or got.abs().max().item() == 0
                continue
            assert got is not None, f"no second derivative for input {k}"
            assert_close_rel(got, want, second_tol, f"second derivative w.r.t. input {k} (first w.r.t. {wrt}) {kwargs}",
                             floor, base)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS, ids=["contig", "chlast"])
def test_stylegan2_layers(kdev, gen, dtype, memory_format):
    """The model's calls at a few StyleGAN2-256 layer shapes (channel counts cut to keep the test
    quick): 3x3 lrelu with noise, up=2 with flip_weight=False, toRGB 1x1 without demodulation;
    float32 parameters, clamp 256 in low precision; fused and not."""
    f = setup_filter([1, 3, 3, 1]).to(kdev)
    clamp = 256.0 * math.sqrt(2) if dtype != torch.float32 else None
    for cin, cout, res, up, demod, k in [(64, 64, 32, 1, True, 3), (64, 32, 64, 2, True, 3), (32, 1, 64, 1, False, 1)]:
        n = 4
        x = randn(gen, n, cin, res // up, res // up).to(kdev, dtype).contiguous(memory_format=memory_format)
        weight = randn(gen, cout, cin, k, k).to(kdev, torch.float32)
        styles = (randn(gen, n, cin) * 0.3 + 1).to(kdev, torch.float32)
        noise = (randn(gen, n, 1, res, res) * 0.1).to(kdev, dtype) if demod else None
        bias = randn(gen, cout).to(kdev, dtype)
        kwargs = dict(up=up, padding=k // 2, resample_filter=f, demodulate=demod, flip_weight=up == 1,
                      act="lrelu" if demod else "linear", clamp=clamp)
        for fused in (True, False):
            want = modulated_conv2d(x.double(), weight.double(), styles.double(),
                                    noise.double() if noise is not None else None, **kwargs,
                                    fused_modconv=fused, bias=bias.double(), impl="ref")
            poison_allocator(kdev, want.numel() * x.element_size())
            got = modulated_conv2d(x, weight, styles, noise, **kwargs, fused_modconv=fused, bias=bias, impl="cuda")
            assert_close_rel(got, want, tol(OUT_TOL, dtype, kdev), f"layer {cin}->{cout} at {res}, fused={fused}")


# ---------------------------------------------------------------------------------------------
# The raw kernels.


def modulate_def(weight, styles, demodulate):
    w = weight.unsqueeze(0) * styles[:, None, :, None, None]
    d = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() if demodulate else torch.ones(w.shape[:2], dtype=w.dtype,
                                                                                      device=w.device)
    return w * d[:, :, None, None, None], d


@pytest.mark.parametrize("param_dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("out_dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulate_kernel(kdev, gen, param_dtype, out_dtype, demodulate):
    for n, o, i, kh, kw in [(3, 5, 7, 3, 3), (2, 33, 40, 1, 1), (1, 3, 300, 3, 3), (5, 1, 1, 1, 1), (4, 64, 513, 3, 3)]:
        weight = randn(gen, o, i, kh, kw).to(kdev, param_dtype)
        styles = randn(gen, n, i, lo=0.2).to(kdev, param_dtype)
        grad = randn(gen, n, o, i, kh, kw).to(kdev, out_dtype)
        w64, s64 = weight.double().requires_grad_(True), styles.double().requires_grad_(True)
        want, want_d = modulate_def(w64, s64, demodulate)
        want_gw, want_gs = torch.autograd.grad(want, (w64, s64), grad.double())
        poison_allocator(kdev, want.numel() * grad.element_size())
        got, dcoefs = kernels().modulate_weights(weight, styles, DTYPE_IDS[out_dtype], demodulate, 1e-8)
        assert got.dtype == out_dtype and dcoefs.dtype == torch.float32
        # Computed in float32 from the same inputs, rounded once to out_dtype.
        assert_close_rel(got, want, max(2 * EPS[out_dtype], 1e-5), "modulated weights")
        assert_close_rel(dcoefs, want_d, 1e-5, "dcoefs")
        poison_allocator(kdev, weight.numel() * weight.element_size())
        gw, gs = kernels().modulate_weights_grad(grad, weight, styles, dcoefs, demodulate, 1e-8)
        assert gw.dtype == param_dtype and gs.dtype == param_dtype
        # float32 sums of up to a few thousand terms, rounded once to param_dtype. With
        # demodulation the sums cancel (the output does not change with a common scale of a
        # sample's styles), so the error is relative to the sum of the terms' magnitudes.
        with torch.no_grad():
            d = want_d[:, :, None, None, None].abs()
            mag_gw = (grad.double().abs() * s64.abs()[:, None, :, None, None] * d).sum(dim=0).max().item()
            mag_gs = (grad.double().abs() * w64.abs().unsqueeze(0) * d).sum(dim=[1, 3, 4]).max().item()
        assert_close_rel(gw, want_gw, max(2 * EPS[param_dtype], 1e-4), "grad_weight", mag_gw)
        assert_close_rel(gs, want_gs, max(2 * EPS[param_dtype], 1e-4), "grad_styles", mag_gs)


EPILOGUE_SHAPES = [(2, 5, 3, 7), (1, 1, 9, 11), (3, 3, 6, 5), (2, 70, 9, 11), (2, 33, 15, 20), (1, 130, 2, 3),
                   (4, 64, 32, 32), (2, 512, 4, 4)]


@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS, ids=["contig", "chlast"])
def test_epilogue_kernels(kdev, gen, act, dtype, memory_format):
    """Forward and one-pass backward against epilogue_ref in float64 on the same stored values;
    the reductions (grad_scale, grad_bias per sample, grad_noise per pixel) included."""
    spec = ACTIVATIONS[act]
    for case, (n, c, h, w) in enumerate(EPILOGUE_SHAPES):
        has_scale, has_noise, has_bias = case % 3 != 1, case % 2 == 0, case != 2
        noise_rows = n if case % 4 == 0 else 1
        clamp = 0.4 + float(torch.rand((), generator=gen)) if case % 2 == 1 else -1.0
        alpha = spec.def_alpha if case % 3 else 0.3
        gain = spec.def_gain if case % 2 else 1.3
        x = (randn(gen, n, c, h, w) * 1.5).to(kdev, dtype).contiguous(memory_format=memory_format)
        dy = randn(gen, n, c, h, w).to(kdev, dtype).contiguous(memory_format=memory_format)
        scale = (torch.rand(n, c, generator=gen, dtype=F64) + 0.5).to(kdev, torch.float32) if has_scale else None
        noise = randn(gen, noise_rows, 1, h, w).to(kdev, dtype) if has_noise else None
        bias = randn(gen, c).to(kdev, dtype) if has_bias else None

        x64 = x.double().requires_grad_(True)
        sc64 = scale.double().requires_grad_(True) if has_scale else None
        nz64 = noise.double().expand(n, 1, h, w).clone().requires_grad_(True) if has_noise else None
        bs64 = bias.double().expand(n, c).clone().requires_grad_(True) if has_bias else None
        v = x64 * (sc64[:, :, None, None] if has_scale else 1)
        v = v + (nz64 if has_noise else 0) + (bs64[:, :, None, None] if has_bias else 0)
        want = _modulated_conv_cuda.epilogue_ref(v, None, None, None, act, alpha, gain, clamp)
        leaves = [t for t in (x64, sc64, nz64, bs64) if t is not None]
        grads = dict(zip(map(id, leaves), torch.autograd.grad(want, leaves, dy.double())))

        tag = f"{act} {dtype} {(n, c, h, w)} case {case}"
        poison_allocator(kdev, x.numel() * x.element_size())
        y = kernels().modconv_epilogue(x, scale, noise, bias, spec.cuda_id, alpha, gain, clamp)
        assert y.stride() == x.stride()
        assert_close_rel(y, want, max(2 * EPS[dtype], 1e-5), f"y ({tag})")
        poison_allocator(kdev, x.numel() * x.element_size())
        dx, gs, gb, gn = kernels().modconv_epilogue_grad(dy, x, scale, noise, bias, spec.cuda_id, alpha, gain, clamp,
                                                         has_scale, has_bias, has_noise)
        assert dx.stride() == x.stride()
        assert_close_rel(dx, grads[id(x64)], max(2 * EPS[dtype], 1e-5), f"dx ({tag})")
        # float32 sums (atomics in any order) of values computed from the same stored inputs.
        if has_scale:
            assert_close_rel(gs, grads[id(sc64)], 1e-4, f"grad_scale ({tag})")
        if has_bias:
            assert_close_rel(gb, grads[id(bs64)], 1e-4, f"grad_bias ({tag})")
        if has_noise:
            assert_close_rel(gn.reshape(n, 1, h, w), grads[id(nz64)], 1e-4, f"grad_noise ({tag})")


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("memory_format", MEMORY_FORMATS, ids=["contig", "chlast"])
def test_epilogue_clamp_keeps_nan(kdev, gen, dtype, memory_format):
    """torch.clamp keeps NaN and clamps +-inf; fminf/fmaxf would make NaN -clamp. Clamped and NaN
    elements pass no gradient (torch.clamp's mask is false for both)."""
    n, c, h, w = 2, 37, 5, 9
    x = randn(gen, n, c, h, w) * 2
    flat = x.view(-1)
    flat[torch.randperm(flat.numel(), generator=gen)[:40]] = float("nan")
    flat[torch.randperm(flat.numel(), generator=gen)[:20]] = float("inf")
    flat[torch.randperm(flat.numel(), generator=gen)[:20]] = -float("inf")
    x = x.to(kdev, dtype).contiguous(memory_format=memory_format)
    dy = randn(gen, n, c, h, w).to(kdev, dtype).contiguous(memory_format=memory_format)
    spec = ACTIVATIONS["lrelu"]
    x64 = x.double().requires_grad_(True)
    want = _modulated_conv_cuda.epilogue_ref(x64, None, None, None, "lrelu", 0.2, spec.def_gain, 0.9)
    (want_dx,) = torch.autograd.grad(want, x64, dy.double())
    y = kernels().modconv_epilogue(x, None, None, None, spec.cuda_id, 0.2, spec.def_gain, 0.9)
    dx = kernels().modconv_epilogue_grad(dy, x, None, None, None, spec.cuda_id, 0.2, spec.def_gain, 0.9,
                                         False, False, False)[0]
    tol = max(2 * EPS[dtype], 1e-5)
    torch.testing.assert_close(y.double(), want.detach(), rtol=tol, atol=tol, equal_nan=True)
    torch.testing.assert_close(dx.double(), want_dx, rtol=tol, atol=tol * 4, equal_nan=True)


@pytest.mark.cuda
def test_torch_library_ops(gen):
    """The registered ops' schemas and fake implementations agree with the kernels."""
    n, c, h, w = 2, 5, 6, 7
    x = randn(gen, n, c, h, w).to("cuda", torch.float32)
    scale = torch.rand(n, c, generator=gen).to("cuda")
    noise = randn(gen, 1, 1, h, w).to("cuda", torch.float32)
    bias = randn(gen, c).to("cuda", torch.float32)
    weight = randn(gen, 4, c, 3, 3).to("cuda", torch.float32)
    styles = randn(gen, n, c, lo=0.3).to("cuda", torch.float32)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(_modulated_conv_cuda._epilogue_op, (x, scale, noise, bias, 2, 0.2, 1.4, -1.0),
                          test_utils=utils)
    torch.library.opcheck(_modulated_conv_cuda._epilogue_grad_op,
                          (x, x, scale, noise, bias, 2, 0.2, 1.4, -1.0, True, True, True), test_utils=utils)
    torch.library.opcheck(_modulated_conv_cuda._modulate_op, (weight, styles, 1, True, 1e-8), test_utils=utils)
    wm, d = kernels().modulate_weights(weight, styles, 0, True, 1e-8)
    torch.library.opcheck(_modulated_conv_cuda._modulate_grad_op, (wm, weight, styles, d, True, 1e-8),
                          test_utils=utils)


@pytest.mark.cuda
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_torch_compile_first_order(gen, fused):
    """Under torch.compile the kernels run as the registered ops; forward and first derivatives
    match eager (second derivatives are eager-only: torch.compile does not do double backward)."""
    tensors, kwargs = random_call(gen, torch.float32, 1, 1, fused, torch.contiguous_format, acts=["lrelu"])
    present = [k for k, t in enumerate(tensors) if t is not None]

    def f(*ts):
        return call(list(ts), kwargs, "cuda")

    results = []
    for fn in (f, torch.compile(f)):
        ins = [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]
        y = fn(*ins)
        results.append([y] + list(torch.autograd.grad(y.square().sum(), [ins[k] for k in present])))
    # Inductor fuses and reorders the PyTorch ops around the kernels: float32 rounding only.
    floor = gradient_floor(results[0])
    for got, want in zip(results[1], results[0]):
        assert_close_rel(got, want.double(), 1e-4, "compiled vs eager", floor)


# ---------------------------------------------------------------------------------------------
# Dispatch.


@pytest.mark.cuda
def test_auto_takes_the_kernel_and_matches_cuda(gen):
    tensors, kwargs = random_call(gen, torch.float32, 1, 1, False, torch.contiguous_format)
    x, weight, styles = tensors[:3]
    assert _dispatch.choose("modulated_conv2d", "auto", "modconv_epilogue",
                            {"x": x, "weight": weight, "styles": styles}) == "cuda"
    torch.testing.assert_close(call(tensors, kwargs, "auto"), call(tensors, kwargs, "cuda"), rtol=1e-6, atol=1e-6)


@pytest.mark.cuda
def test_float64_parameters_fall_back_or_raise(gen):
    """Parameters the kernels do not take: the reference under 'auto', an error under 'cuda'."""
    x = randn(gen, 2, 3, 5, 5).to("cuda", torch.float32)
    weight = randn(gen, 4, 3, 3, 3).to("cuda")
    styles = randn(gen, 2, 3, lo=0.3).to("cuda")
    want = modulated_conv2d(x, weight, styles, padding=1, impl="ref")
    torch.testing.assert_close(modulated_conv2d(x, weight, styles, padding=1, impl="auto"), want)
    with pytest.raises(ValueError, match="weight"):
        modulated_conv2d(x, weight, styles, padding=1, impl="cuda")
