"""The CUDA path's Python side (routes, autograd Functions, second derivatives) on the CPU.

The compiled kernels cannot run without a GPU, so these tests put stand-in kernels behind the
loader: float64 PyTorch code with the kernels' exact contracts (argument layouts asserted as the
bindings check them; the modulation's backward written in the closed form the kernel uses, not by
autograd). modulated_conv2d is then forced onto its CUDA route with float64 CPU tensors and
compared with the reference, and gradcheck / gradgradcheck run through the custom Functions.
What the kernels themselves compute is tested by tests/test_modulated_conv_host.py (CPU) and
tests/test_modulated_conv_cuda.py (GPU).
"""
from __future__ import annotations

import pytest
import torch

import stylegan2_ops
from stylegan2_ops import _dispatch, _loader, _modulated_conv_cuda, modulated_conv2d, setup_filter
from stylegan2_ops._bias_act import ACTIVATIONS

F64 = torch.float64
DTYPES = {0: torch.float32, 1: torch.float16, 2: torch.bfloat16, 3: F64}
ACT_BY_ID = {spec.cuda_id: spec for spec in ACTIVATIONS.values()}


def _layout_ok(t: torch.Tensor) -> bool:
    return t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)


class StandInKernels:
    """The compiled module's modulated_conv functions, in float64 PyTorch, with their contracts."""

    calls: dict[str, int]

    def __init__(self) -> None:
        self.calls = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def modulate_weights(self, weight, styles, out_dtype, demodulate, eps):
        self._count("modulate_weights")
        assert weight.is_contiguous() and styles.is_contiguous() and weight.dtype == styles.dtype
        w = weight.unsqueeze(0) * styles[:, None, :, None, None]
        d = (w.square().sum(dim=[2, 3, 4]) + eps).rsqrt() if demodulate else torch.ones(w.shape[:2], dtype=w.dtype)
        return (w * d[:, :, None, None, None]).to(DTYPES[out_dtype]), d

    def modulate_weights_grad(self, grad, weight, styles, dcoefs, demodulate, eps):
        self._count("modulate_weights_grad")
        assert grad.is_contiguous() and dcoefs.shape == grad.shape[:2]
        s = styles[:, None, :, None, None]
        d = dcoefs[:, :, None, None, None]
        w = weight.unsqueeze(0) * s * d
        if demodulate:  # dm = d * (g - q * w), q = sum g * w (the kernel's closed form)
            dm = d * (grad - (grad * w).sum(dim=[2, 3, 4], keepdim=True) * w)
        else:
            dm = grad
        return (dm * s).sum(dim=0), (dm * weight.unsqueeze(0)).sum(dim=[1, 3, 4])

    @staticmethod
    def _check_operands(x, scale, noise, bias):
        assert x.ndim == 4 and _layout_ok(x)
        n, c, h, w = x.shape
        if scale is not None:
            assert scale.shape == (n, c) and scale.is_contiguous()
        if noise is not None:
            assert noise.shape[0] in (1, n) and noise.shape[1:] == (1, h, w) and noise.is_contiguous()
            assert noise.dtype == x.dtype
        if bias is not None:
            assert bias.shape == (c,) and bias.is_contiguous() and bias.dtype == x.dtype

    @staticmethod
    def _preact(x, scale, noise, bias):
        v = x
        if scale is not None:
            v = v * scale[:, :, None, None]
        if noise is not None:
            v = v + noise
        if bias is not None:
            v = v + bias[None, :, None, None]
        return v

    @staticmethod
    def _post(v, act, alpha, gain, clamp):
        y = ACT_BY_ID[act].func(v, alpha) * gain
        return y.clamp(-clamp, clamp) if clamp >= 0 else y

    def modconv_epilogue(self, x, scale, noise, bias, act, alpha, gain, clamp):
        self._count("modconv_epilogue")
        self._check_operands(x, scale, noise, bias)
        y = self._post(self._preact(x, scale, noise, bias), act, alpha, gain, clamp)
        return torch.empty_like(x).copy_(y)

    def modconv_epilogue_grad(self, dy, x, scale, noise, bias, act, alpha, gain, clamp, want_scale, want_bias,
                              want_noise):
        self._count("modconv_epilogue_grad")
        self._check_operands(dy, scale, noise, bias)
        assert x.stride() == dy.stride(), "x and dy must share one memory layout"
        with torch.enable_grad():
            v = self._preact(x, scale, noise, bias).detach().requires_grad_(True)
            (dv,) = torch.autograd.grad(self._post(v, act, alpha, gain, clamp), v, dy)
        n, c, h, w = dy.shape
        dx = torch.empty_like(dy).copy_(dv * scale[:, :, None, None] if scale is not None else dv)
        empty = torch.empty(0, dtype=dy.dtype)
        gs = (dv * x).sum(dim=[2, 3]) if want_scale else empty
        gb = dv.sum(dim=[2, 3]) if want_bias else empty
        gn = dv.sum(dim=1).reshape(n, h * w) if want_noise else empty
        return dx, gs, gb, gn


@pytest.fixture
def stand_in(monkeypatch) -> StandInKernels:
    """Routes modulated_conv2d (only) to its CUDA path, onto the stand-in kernels."""
    kernels = StandInKernels()
    monkeypatch.setattr(_loader, "load", lambda *a, **k: kernels)
    monkeypatch.setitem(_modulated_conv_cuda._DTYPE_IDS, F64, 3)
    original = _dispatch.choose

    def choose(op, impl, kernel_name, tensors, unsupported=None):
        if op == "modulated_conv2d" and impl == "cuda":
            return "cuda"
        return original(op, "ref", kernel_name, tensors, unsupported)

    monkeypatch.setattr(_dispatch, "choose", choose)
    return kernels


def randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=F64)


def draw(gen, up, down, fused, demodulate, noise_kind, channels_last, extras, small=False):
    """One random call: (args, kwargs) for modulated_conv2d; small ones for gradgradcheck."""
    n = int(torch.randint(1, 3 if small else 4, (), generator=gen))
    cin, cout = (int(v) for v in torch.randint(1, 4 if small else 6, (2,), generator=gen))
    k = 1 if int(torch.randint(0, 3, (), generator=gen)) == 0 else 3
    h, w = (int(v) for v in torch.randint(3 if small else 4, 6 if small else 8, (2,), generator=gen))
    if down > 1:
        h, w = 2 * h, 2 * w
    x = randn(gen, n, cin, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = randn(gen, cout, cin, k, k)
    styles = randn(gen, n, cin) * 0.5 + 1
    f = setup_filter([1, 3, 3, 1]) if (up > 1 or down > 1) else None  # filters stay float32
    kwargs = dict(up=up, down=down, padding=k // 2, resample_filter=f, demodulate=demodulate,
                  flip_weight=up == 1, fused_modconv=fused)
    oh, ow = h * up // down, w * up // down
    noise = {
        "none": None,
        "per_sample": randn(gen, n, 1, oh, ow),
        "shared": randn(gen, 1, 1, oh, ow),
        "2d": randn(gen, oh, ow),
        "per_channel": randn(gen, n, cout, oh, ow),  # not the kernel's shape: added separately
    }[noise_kind]
    if extras:
        kwargs.update(bias=randn(gen, cout), act=extras[0], gain=extras[1], clamp=extras[2])
    return [x, weight, styles, noise], kwargs


NOISE_KINDS = ["none", "per_sample", "shared", "2d", "per_channel"]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2)])
def test_cuda_route_matches_reference(stand_in, gen, fused, up, down):
    for case in range(6):
        demodulate = case != 3
        extras = [None, ("lrelu", 1.4, None), ("tanh", 0.8, 0.6), ("linear", None, 0.9), ("swish", None, None),
                  ("softplus", 1.0, None)][case]
        args, kwargs = draw(gen, up, down, fused, demodulate, NOISE_KINDS[case % 5], case % 2 == 1, extras)
        want = modulated_conv2d(*args, **kwargs, impl="ref")
        before = dict(stand_in.calls)
        got = modulated_conv2d(*args, **kwargs, impl="cuda")
        assert stand_in.calls.get("modconv_epilogue", 0) > before.get("modconv_epilogue", 0)
        if fused:
            assert stand_in.calls.get("modulate_weights", 0) > before.get("modulate_weights", 0)
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _check_derivatives(stand_in, gen, fused, up, down, act, clamp, channels_last):
    args, kwargs = draw(gen, up, down, fused, True, "per_sample", channels_last, (act, 1.3, clamp), small=True)
    x, weight, styles, noise = args
    bias = kwargs.pop("bias")
    inputs = [t.detach().clone().requires_grad_(True) for t in (x, weight, styles, noise, bias)]

    def f(x_, w_, s_, n_, b_):
        return modulated_conv2d(x_, w_, s_, n_, **kwargs, bias=b_, impl="cuda")

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(f, inputs, eps=1e-6, atol=1e-5)
    assert stand_in.calls.get("modconv_epilogue_grad", 0) > 0
    if fused:
        assert stand_in.calls.get("modulate_weights_grad", 0) > 0


@pytest.mark.parametrize("fused", [True, False])
def test_derivatives_smooth_activation(stand_in, gen, fused):
    """First and second derivatives w.r.t. x, weight, styles, noise and bias (tanh: act'' != 0)."""
    _check_derivatives(stand_in, gen, fused, 1, 1, "tanh", None, channels_last=False)


@pytest.mark.parametrize("fused", [True, False])
def test_derivatives_resampling_clamp_channels_last(stand_in, gen, fused):
    """up=2 with a clamp that cuts some outputs (softplus, gain 1.3), channels_last input."""
    _check_derivatives(stand_in, gen, fused, 2, 1, "softplus", 1.2, channels_last=True)


def test_derivatives_down(stand_in, gen):
    _check_derivatives(stand_in, gen, False, 1, 2, "sigmoid", None, channels_last=False)


def test_second_derivatives_match_reference(stand_in, gen):
    """A path-length style double backward through the non-fused route, against the reference."""
    args, kwargs = draw(gen, 2, 1, False, True, "per_sample", False, ("lrelu", None, None))
    results = {}
    for impl in ("cuda", "ref"):
        x, weight, styles, noise = (t.detach().clone().requires_grad_(True) for t in args)
        y = modulated_conv2d(x, weight, styles, noise, **kwargs, impl=impl)
        probe = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
        (g_styles,) = torch.autograd.grad((y * probe).sum(), styles, create_graph=True)
        loss = g_styles.square().sum()
        results[impl] = torch.autograd.grad(loss, (x, weight, styles, noise), allow_unused=True)
    for got, want in zip(results["cuda"], results["ref"]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_public_api_is_unchanged():
    assert stylegan2_ops.modulated_conv2d is modulated_conv2d


def test_int32_limits_fall_back_and_match_the_header():
    """Sizes past the kernels' int32 head room go to the reference under 'auto' (a binding error
    otherwise): the weight's element count and the input's or output's height * width. The
    Python limit is the header's (csrc/modulated_conv.h)."""
    import re
    from pathlib import Path

    header = (Path(__file__).resolve().parent.parent / "csrc" / "modulated_conv.h").read_text()
    headroom = int(re.search(r"kModconvIndexHeadroom = (\d+);", header).group(1))
    limit = _modulated_conv_cuda.MAX_INT32_SIZE
    assert limit == 2**31 - 1 - headroom
    reason = _modulated_conv_cuda.unsupported_reason

    def meta(*shape, dtype=torch.float32):
        return torch.empty(*shape, device="meta", dtype=dtype)

    w = meta(4, 3, 3, 3)
    assert reason(meta(2, 3, 1, limit), w, [2, 4, 1, limit]) is None
    assert "pixels" in reason(meta(2, 3, 1, limit + 1), w, [2, 4, 1, limit + 1])
    assert "pixels" in reason(meta(2, 3, 1, limit // 2), w, [2, 4, 2, limit // 2 + 1])  # up=2 output
    assert reason(meta(2, 1, 5, 5), meta(1, 1, 1, limit), [2, 1, 5, 5]) is None
    assert "weight" in reason(meta(2, 1, 5, 5), meta(1, 1, 1, limit + 1), [2, 1, 5, 5])
    assert "65535" in reason(meta(65536, 3, 5, 5), w, [65536, 4, 5, 5])
    assert "dtype" in reason(meta(2, 3, 5, 5), meta(4, 3, 3, 3, dtype=torch.float64), [2, 4, 5, 5])


@pytest.mark.parametrize("fused,up,down", [(True, 1, 1), (False, 2, 1), (False, 1, 2)])
def test_cuda_route_traces_as_one_graph(stand_in, gen, fused, up, down):
    """torch.compile must see the kernel route whole (fullgraph=True raises on any graph break):
    the custom ops through their fakes and the cached autograd Functions without re-creating
    them. Inference, as the compiled generator runs it. (The stand-ins replace the loader and the
    dispatch; test_loader traces the real settled load().)"""
    torch.compiler.reset()
    args, kwargs = draw(gen, up, down, fused, True, "per_sample", False, ("lrelu", 1.4, 0.9))
    eager = modulated_conv2d(*args, **kwargs, impl="cuda")  # the Functions exist after one call

    def run(*a):
        return modulated_conv2d(*a, **kwargs, impl="cuda")
    with torch.no_grad():
        got = torch.compile(run, backend="aot_eager", fullgraph=True)(*args)
    torch.testing.assert_close(got, eager, rtol=1e-10, atol=1e-10)

