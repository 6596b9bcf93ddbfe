"""modulated_conv2d against a float64 definition written from scratch here.

The definition loops over the samples; each gets an ordinary convolution with its own modulated
(and demodulated) weight, and up/down sampling is done the long way: zero insertion, padding,
an FIR filter summed tap by tap, F.conv2d, then filter and decimate. It shares nothing with the
library's upfirdn2d or with its transposed/strided-convolution routes.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stylegan2_ops import modulated_conv2d, setup_filter

F64 = torch.float64
MEMORY_FORMATS = [torch.contiguous_format, torch.channels_last]
# eps of each dtype: the tolerances below are multiples of it (see test_low_precision).
EPS = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


# ---------------------------------------------------------------------------------------------
# The definition (float64).


def parse_padding(padding):
    if isinstance(padding, int):
        return [padding] * 4
    if len(padding) == 2:
        return [padding[0], padding[0], padding[1], padding[1]]
    return list(padding)


def filter_2d(f):
    """The resampling filter as a float64 2-D array [fh, fw]; None is the 1x1 identity."""
    if f is None:
        return torch.ones(1, 1, dtype=F64)
    f = f.to(F64)
    return torch.outer(f, f) if f.ndim == 1 else f


def adjusted_padding(padding, fw, fh, up, down):
    """NVlabs' conv2d_resample: padding is relative to the upsampled image; the filter's
    centring adds (taps + up - 1) // 2, (taps - up) // 2 on up, (taps - down + 1) // 2,
    (taps - down) // 2 on down."""
    x0, x1, y0, y1 = parse_padding(padding)
    if up > 1:
        x0, x1 = x0 + (fw + up - 1) // 2, x1 + (fw - up) // 2
        y0, y1 = y0 + (fh + up - 1) // 2, y1 + (fh - up) // 2
    if down > 1:
        x0, x1 = x0 + (fw - down + 1) // 2, x1 + (fw - down) // 2
        y0, y1 = y0 + (fh - down + 1) // 2, y1 + (fh - down) // 2
    return x0, x1, y0, y1


def out_size(size, k, taps, up, down, p0, p1):
    n = size * up + p0 + p1 - (taps - 1 if up > 1 else 0) - (k - 1)
    if down > 1:
        n = (n - taps) // down + 1 if n >= taps else 0
    return n


def fir(x, f2, gain):
    """Valid true convolution of every channel with f2, summed tap by tap."""
    fh, fw = f2.shape
    oh, ow = x.shape[2] - fh + 1, x.shape[3] - fw + 1
    out = torch.zeros(*x.shape[:2], oh, ow, dtype=x.dtype)
    for a in range(fh):
        for b in range(fw):
            out += f2[fh - 1 - a, fw - 1 - b] * x[:, :, a:a + oh, b:b + ow]
    return out * gain


def zero_insert(x, up):
    z = torch.zeros(*x.shape[:2], x.shape[2] * up, x.shape[3] * up, dtype=x.dtype)
    z[:, :, ::up, ::up] = x
    return z


def resample_conv_def(x, w, f, up, down, padding):
    """conv2d_resample the long way; w is already in correlation form."""
    f2 = filter_2d(f)
    fh, fw = f2.shape
    x0, x1, y0, y1 = adjusted_padding(padding, fw, fh, up, down)
    if up > 1:
        x = fir(F.pad(zero_insert(x, up), [x0, x1, y0, y1]), f2, up * up)
    else:
        x = F.pad(x, [x0, x1, y0, y1])
    x = F.conv2d(x, w)
    if down > 1:
        x = fir(x, f2, 1)[:, :, ::down, ::down]
    return x


def definition(x, weight, styles, noise=None, up=1, down=1, padding=0, f=None,
               demodulate=True, flip_weight=True):
    x, weight, styles = x.to(F64), weight.to(F64), styles.to(F64)
    outs = []
    for n in range(x.shape[0]):
        w = weight * styles[n].reshape(1, -1, 1, 1)
        if demodulate:
            w = w / (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        if not flip_weight:
            w = w.flip([2, 3])
        outs.append(resample_conv_def(x[n:n + 1], w, f, up, down, padding))
    y = torch.cat(outs)
    if noise is not None:
        y = y + noise.to(F64)
    return y


def act_def(y, act, alpha, gain, clamp):
    """bias_act's activations, written out; defaults as in NVlabs."""
    funcs = {
        "linear": (lambda v, a: v, 0.0, 1.0),
        "relu": (lambda v, a: torch.where(v > 0, v, torch.zeros_like(v)), 0.0, math.sqrt(2)),
        "lrelu": (lambda v, a: torch.where(v >= 0, v, a * v), 0.2, math.sqrt(2)),
        "tanh": (lambda v, a: (torch.exp(2 * v) - 1) / (torch.exp(2 * v) + 1), 0.0, 1.0),
        "swish": (lambda v, a: v / (1 + torch.exp(-v)), 0.0, math.sqrt(2)),
        "elu": (lambda v, a: torch.where(v >= 0, v, a * (torch.exp(v) - 1)), 1.0, 1.0),
    }
    func, def_alpha, def_gain = funcs[act]
    y = func(y, def_alpha if alpha is None else alpha) * (def_gain if gain is None else gain)
    if clamp is not None:
        y = torch.minimum(torch.maximum(y, torch.full_like(y, -clamp)), torch.full_like(y, clamp))
    return y


# ---------------------------------------------------------------------------------------------
# Random configurations.


def pick(gen, options):
    return options[int(torch.randint(len(options), (1,), generator=gen))]


def randn(gen, *shape, dtype=F64, lo=None):
    t = torch.randn(*shape, generator=gen, dtype=F64)
    if lo is not None:  # keep magnitudes away from zero (styles: demodulation divides by them)
        t = t.sign() * (t.abs() + lo)
    return t.to(dtype)


def filter_options(gen):
    """None (identity), NVlabs' default 2-D [1,3,3,1], its separable form, an odd 3-tap filter
    and a random asymmetric non-square one (a wrong flip or an x/y swap shows there)."""
    asym = (torch.rand(3, 4, generator=gen) + 0.2).to(torch.float32)
    return [
        None,
        setup_filter([1, 3, 3, 1]),
        setup_filter([1, 3, 3, 1], separable=True),
        setup_filter([1, 2, 1]),
        asym,
    ]


def draw_case(gen, up, down, k, f):
    """Shapes, padding and noise for one call whose output is not empty."""
    while True:
        n = pick(gen, [1, 2, 3])
        cin, cout = pick(gen, [1, 3, 5]), pick(gen, [1, 2, 5])
        h, w = pick(gen, [3, 4, 5, 7]), pick(gen, [3, 5, 6, 8])
        padding = pick(gen, [0, 1, 2, -1, [1, 0], [2, 1], [0, 1, 2, -1], [1, 2, 0, 1],
                             [-1, 1, 1, 0]])
        f2 = filter_2d(f)
        x0, x1, y0, y1 = adjusted_padding(padding, f2.shape[1], f2.shape[0], up, down)
        oh = out_size(h, k, f2.shape[0], up, down, y0, y1)
        ow = out_size(w, k, f2.shape[1], up, down, x0, x1)
        if oh >= 1 and ow >= 1:
            break
    noise_shape = pick(gen, [None, [n, 1, oh, ow], [1, 1, oh, ow], [n, cout, oh, ow],
                             [1, cout, 1, 1]])
    return n, cin, cout, h, w, padding, noise_shape


def make_inputs(gen, n, cin, cout, h, w, k, noise_shape, dtype=F64):
    x = randn(gen, n, cin, h, w)
    weight = randn(gen, cout, cin, k, k)
    styles = randn(gen, n, cin, lo=0.3)
    noise = randn(gen, *noise_shape) if noise_shape is not None else None
    return x, weight, styles, noise


# ---------------------------------------------------------------------------------------------
# float64 against the definition.


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS, ids=["contig", "chlast"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("flip_weight", [True, False], ids=["corr", "conv"])
@pytest.mark.parametrize("demodulate", [True, False], ids=["demod", "nodemod"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_matches_definition(gen, up, down, k, demodulate, flip_weight, fused, memory_format):
    filters = filter_options(gen) if (up, down) != (1, 1) else [None, setup_filter([1, 3, 3, 1])]
    for f in filters:
        n, cin, cout, h, w, padding, noise_shape = draw_case(gen, up, down, k, f)
        x, weight, styles, noise = make_inputs(gen, n, cin, cout, h, w, k, noise_shape)
        x = x.contiguous(memory_format=memory_format)
        got = modulated_conv2d(
            x, weight, styles, noise, up=up, down=down, padding=padding, resample_filter=f,
            demodulate=demodulate, flip_weight=flip_weight, fused_modconv=fused, impl="ref",
        )
        want = definition(x, weight, styles, noise, up, down, padding, f, demodulate, flip_weight)
        assert got.dtype == F64
        assert got.shape == want.shape, (got.shape, want.shape, padding, f)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k,up,down,padding,size,want",
                         [(3, 1, 1, 1, 7, 7), (3, 2, 1, 1, 5, 10), (3, 1, 2, 1, 8, 4),
                          (1, 2, 1, 0, 5, 10), (1, 1, 2, 0, 6, 3), (3, 1, 1, 0, 7, 5)])
def test_output_sizes(gen, k, up, down, padding, size, want):
    """NVlabs' layer sizes: padding k // 2 keeps, doubles or halves the resolution."""
    x = randn(gen, 2, 3, size, size + 1)
    weight = randn(gen, 4, 3, k, k)
    styles = randn(gen, 2, 3, lo=0.3)
    y = modulated_conv2d(x, weight, styles, up=up, down=down, padding=padding,
                         resample_filter=setup_filter([1, 3, 3, 1]))
    assert y.shape[:3] == (2, 4, want)
    assert y.shape[3] == out_size(size + 1, k, 4, up, down,
                                  *adjusted_padding(padding, 4, 4, up, down)[:2])


@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2)])
def test_mirror_equivariant(gen, up, down):
    """With symmetric weights and filter and padding k // 2, mirroring x mirrors the result:
    the filter is centred (an off-by-one in the padding arithmetic breaks this)."""
    x = randn(gen, 2, 3, 6, 8)
    weight = randn(gen, 4, 3, 3, 3)
    weight = weight + weight.flip([2, 3])
    styles = randn(gen, 2, 3, lo=0.3)
    kw = dict(up=up, down=down, padding=1, resample_filter=setup_filter([1, 3, 3, 1]))
    y = modulated_conv2d(x, weight, styles, **kw)
    y_mirror = modulated_conv2d(x.flip([2, 3]), weight, styles, **kw)
    torch.testing.assert_close(y_mirror, y.flip([2, 3]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("act,alpha,gain,clamp,with_bias", [
    ("linear", None, None, None, True),
    ("lrelu", None, None, 0.6, True),
    ("lrelu", 0.1, 1.5, None, False),
    ("tanh", None, 2.0, None, True),
    ("swish", None, None, 0.8, True),
    ("relu", None, None, None, False),
    ("elu", 0.7, None, None, True),
    ("linear", None, 0.5, 0.3, False),
])
def test_extras(gen, fused, act, alpha, gain, clamp, with_bias):
    up, down, k = pick(gen, [(1, 1), (2, 1), (1, 2)]) + (3,)
    f = setup_filter([1, 3, 3, 1])
    n, cin, cout, h, w, padding, noise_shape = draw_case(gen, up, down, k, f)
    x, weight, styles, noise = make_inputs(gen, n, cin, cout, h, w, k, noise_shape)
    bias = randn(gen, cout) if with_bias else None
    got = modulated_conv2d(x, weight, styles, noise, up=up, down=down, padding=padding,
                           resample_filter=f, fused_modconv=fused, bias=bias, act=act,
                           alpha=alpha, gain=gain, clamp=clamp)
    want = definition(x, weight, styles, noise, up, down, padding, f)
    if bias is not None:
        want = want + bias.reshape(1, -1, 1, 1)
    want = act_def(want, act, alpha, gain, clamp)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    if clamp is not None:
        assert (want.abs() >= clamp).any()  # the clamp was exercised


# ---------------------------------------------------------------------------------------------
# Lower precisions.


@pytest.mark.parametrize("memory_format", MEMORY_FORMATS, ids=["contig", "chlast"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("param_dtype", ["same", torch.float32], ids=["params_same", "params_f32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2)])
def test_low_precision(gen, up, down, dtype, param_dtype, fused, memory_format):
    """Against the float64 definition of the inputs as rounded to their dtypes.

    The output of a demodulated layer is O(1). Each element passes through a handful of
    roundings in `dtype` (x * styles, the convolution's result, the filter, the demodulation
    scale, the noise add), each within eps/2 relative, plus sums of ~C*k*k terms that PyTorch
    accumulates in float32 on CPU and GPU. So the error stays within a few eps of the output's
    magnitude (measured: at most about 1 eps in float16 and bfloat16, 4 eps in float32, whose
    longer sums count for more against its tiny eps); 16 eps is a bound with margin that a
    wrong route (an error of order 1) cannot meet.
    """
    pdtype = dtype if param_dtype == "same" else param_dtype
    f = setup_filter([1, 3, 3, 1])
    for demodulate in (True, False):
        n, cin, cout, h, w, padding, noise_shape = draw_case(gen, up, down, 3, f)
        x, weight, styles, noise = make_inputs(gen, n, cin, cout, h, w, 3, noise_shape)
        if not demodulate:  # keep the output O(1) without demodulation too
            weight = weight / math.sqrt(cin * 9)
        x = x.to(dtype).contiguous(memory_format=memory_format)
        weight, styles = weight.to(pdtype), styles.to(pdtype)
        noise = noise.to(pdtype) if noise is not None else None
        got = modulated_conv2d(x, weight, styles, noise, up=up, down=down, padding=padding,
                               resample_filter=f, demodulate=demodulate, fused_modconv=fused)
        assert got.dtype == dtype
        want = definition(x, weight, styles, noise, up, down, padding, f, demodulate)
        scale = max(want.abs().max().item(), 1.0)
        err = (got.to(F64) - want).abs().max().item()
        tol = 16 * EPS[dtype] * scale
        assert err <= tol, (err, tol, demodulate)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_float16_prenormalization(gen, fused):
    """Large weights and styles: without NVlabs' pre-normalization float16 overflows to inf
    (x * styles ~ 1e3, conv sums ~ 1e7); demodulation makes the true result O(1)."""
    f = setup_filter([1, 3, 3, 1])
    x = randn(gen, 2, 8, 6, 5)
    weight = randn(gen, 4, 8, 3, 3) * 3000
    styles = randn(gen, 2, 8, lo=0.3) * 3000
    got = modulated_conv2d(x.half(), weight.half() if not fused else weight.float(),
                           styles.half() if not fused else styles.float(), up=2, padding=1,
                           resample_filter=f, fused_modconv=fused)
    want = definition(x.half(), weight.half() if not fused else weight.float(),
                      styles.half() if not fused else styles.float(), up=2, padding=1, f=f)
    assert torch.isfinite(got).all()
    assert (got.double() - want).abs().max() <= 16 * EPS[torch.float16] * want.abs().max()


# ---------------------------------------------------------------------------------------------
# Gradients (float64, tiny sizes).


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("up,down,k", [(1, 1, 3), (2, 1, 3), (1, 2, 3), (2, 1, 1)])
def test_gradcheck(gen, up, down, k, fused):
    f = setup_filter([1, 3, 3, 1])
    x = randn(gen, 2, 2, 3, 4).requires_grad_()
    weight = randn(gen, 2, 2, k, k).requires_grad_()
    styles = randn(gen, 2, 2, lo=0.3).requires_grad_()
    noise = randn(gen, 2, 1, 1, 1)

    def fn(x, weight, styles):
        return modulated_conv2d(x, weight, styles, noise, up=up, down=down, padding=k // 2,
                                resample_filter=f, fused_modconv=fused, impl="ref")

    assert torch.autograd.gradcheck(fn, (x, weight, styles))
    assert torch.autograd.gradgradcheck(fn, (x, weight, styles))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_gradcheck_extras_channels_last_no_demod(gen, fused):
    """Bias, a smooth activation, gain; channels_last x; demodulation off; flip_weight off."""
    f = setup_filter([1, 2, 1])
    x = randn(gen, 2, 3, 4, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = randn(gen, 2, 3, 3, 3).requires_grad_()
    styles = randn(gen, 2, 3, lo=0.3).requires_grad_()
    bias = randn(gen, 2).requires_grad_()

    def fn(x, weight, styles, bias):
        return modulated_conv2d(x, weight, styles, up=2, padding=[1, 0], resample_filter=f,
                                demodulate=False, flip_weight=False, fused_modconv=fused,
                                bias=bias, act="tanh", gain=1.5, impl="ref")

    assert torch.autograd.gradcheck(fn, (x, weight, styles, bias))
    assert torch.autograd.gradgradcheck(fn, (x, weight, styles, bias))


# ---------------------------------------------------------------------------------------------
# Arguments.


def _good(gen):
    return dict(
        x=randn(gen, 2, 3, 5, 5), weight=randn(gen, 4, 3, 3, 3), styles=randn(gen, 2, 3, lo=0.3)
    )


@pytest.mark.parametrize("change,name", [
    (lambda a: a.update(x=a["x"][0]), "x"),
    (lambda a: a.update(x=a["x"].to(torch.int32)), "x"),
    (lambda a: a.update(weight=a["weight"][0]), "weight"),
    (lambda a: a.update(weight=a["weight"][:, :2]), "weight"),
    (lambda a: a.update(styles=a["styles"][:1]), "styles"),
    (lambda a: a.update(styles=a["styles"][:, :2]), "styles"),
    (lambda a: a.update(styles=a["styles"].float()), "styles"),
    (lambda a: a.update(styles=a["styles"].to("meta")), "styles"),
    (lambda a: a.update(noise=torch.ones(2, 2, 5, 5, dtype=F64)), "noise"),
    (lambda a: a.update(noise=torch.ones(1, 1, 1, 5, 5, dtype=F64)), "noise"),
    (lambda a: a.update(noise=torch.ones(2, 1, 5, 5, dtype=F64).to("meta")), "noise"),
    (lambda a: a.update(bias=torch.ones(3, dtype=F64)), "bias"),
    (lambda a: a.update(bias=torch.ones(4, 1, dtype=F64)), "bias"),
    (lambda a: a.update(up=0), "up"),
    (lambda a: a.update(down=1.5), "down"),
    (lambda a: a.update(padding=[1, 1, 1]), "padding"),
    (lambda a: a.update(padding=-3), "empty"),
    (lambda a: a.update(resample_filter=torch.ones(2, 2, 2)), "resample_filter"),
    (lambda a: a.update(resample_filter=torch.ones(4, dtype=F64)), "resample_filter"),
    (lambda a: a.update(resample_filter=torch.ones(4, requires_grad=True)), "resample_filter"),
    (lambda a: a.update(demodulate=1), "demodulate"),
    (lambda a: a.update(act="gelu"), "act"),
    (lambda a: a.update(gain=float("nan")), "gain"),
    (lambda a: a.update(impl="fast"), "impl"),
])
def test_bad_arguments(gen, change, name):
    args = _good(gen)
    change(args)
    with pytest.raises(ValueError, match=name):
        modulated_conv2d(**args)


def test_cuda_impl_on_cpu_raises(gen):
    with pytest.raises(ValueError, match="cuda"):
        modulated_conv2d(**_good(gen), impl="cuda")


def test_noise_shape_checked_against_resampled_size(gen):
    """The noise check uses the resampled output size: [.., 10, 10] fits up=2, [.., 5, 5] not."""
    args = _good(gen)
    f = setup_filter([1, 3, 3, 1])
    y = modulated_conv2d(**args, noise=randn(gen, 2, 1, 10, 10), up=2, padding=1, resample_filter=f)
    assert y.shape == (2, 4, 10, 10)
    with pytest.raises(ValueError, match="noise"):
        modulated_conv2d(**args, noise=randn(gen, 2, 1, 5, 5), up=2, padding=1, resample_filter=f)


# ---------------------------------------------------------------------------------------------
# GPU (skipped without one).


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_cuda_device(gen, up, down, dtype):
    """Whatever 'auto' picks for CUDA tensors (the kernels where they cover the case, else the
    reference) against the float64 definition."""
    f = setup_filter([1, 3, 3, 1])
    for fused in (True, False):
        n, cin, cout, h, w, padding, noise_shape = draw_case(gen, up, down, 3, f)
        x, weight, styles, noise = make_inputs(gen, n, cin, cout, h, w, 3, noise_shape)
        x = x.to(dtype)
        dev = torch.device("cuda")
        got = modulated_conv2d(
            x.to(dev).contiguous(memory_format=torch.channels_last), weight.float().to(dev),
            styles.float().to(dev), noise.to(dev) if noise is not None else None, up=up,
            down=down, padding=padding, resample_filter=f.to(dev), fused_modconv=fused,
        )
        want = definition(x, weight.float(), styles.float(), noise, up, down, padding, f)
        # TF32 may be on for float32 convolutions on the GPU: allow its 10-bit mantissa.
        eps = {torch.float64: 1e-12, torch.float32: 2.0**-10}.get(dtype, EPS.get(dtype))
        scale = max(want.abs().max().item(), 1.0)
        assert (got.cpu().to(F64) - want).abs().max().item() <= 16 * eps * scale
