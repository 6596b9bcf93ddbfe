"""bias_act: the reference against float64 formulas, its derivatives, argument errors, and (on a GPU)
the CUDA kernels against the reference."""
from __future__ import annotations

import math

import pytest
import torch

import stylegan2_ops
from stylegan2_ops import bias_act
from stylegan2_ops._bias_act import ACTIVATIONS

SELU_SCALE = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717

# Written from the definitions (and NVlabs' documented defaults), independently of ACTIVATIONS:
# name -> (formula on float64, default alpha, default gain).
DEFINITIONS = {
    "linear": (lambda v, a: v, 0.0, 1.0),
    "relu": (lambda v, a: torch.where(v > 0, v, torch.zeros_like(v)), 0.0, math.sqrt(2)),
    "lrelu": (lambda v, a: torch.where(v > 0, v, a * v), 0.2, math.sqrt(2)),
    "tanh": (lambda v, a: (torch.exp(v) - torch.exp(-v)) / (torch.exp(v) + torch.exp(-v)), 0.0, 1.0),
    "sigmoid": (lambda v, a: 1 / (1 + torch.exp(-v)), 0.0, 1.0),
    "elu": (lambda v, a: torch.where(v > 0, v, a * (torch.exp(v) - 1)), 1.0, 1.0),
    "selu": (lambda v, a: SELU_SCALE * torch.where(v > 0, v, SELU_ALPHA * (torch.exp(v) - 1)), 0.0, 1.0),
    "softplus": (lambda v, a: torch.log(1 + torch.exp(v)), 0.0, 1.0),
    "swish": (lambda v, a: v / (1 + torch.exp(-v)), 0.0, math.sqrt(2)),
}
KINKED = {"relu", "lrelu", "elu", "selu"}  # derivative jumps at 0

# Tolerances relative to the output's scale. float32: a few ulp of float32 through exp/log.
# float16 / bfloat16: the input is rounded to the dtype, the result computed in float32 (kernel)
# or in the dtype (CPU reference), then rounded once more: a couple of units of the format's
# epsilon (float16 eps 9.8e-4, bfloat16 eps 7.8e-3), as torch's own elementwise ops achieve.
TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=4e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=3e-2, atol=2e-2),
}


def definition(x64, b64, dim, act, alpha, gain, clamp):
    """float64 bias_act from DEFINITIONS; alpha/gain None = the activation's default."""
    func, def_alpha, def_gain = DEFINITIONS[act]
    alpha = def_alpha if alpha is None else alpha
    gain = def_gain if gain is None else gain
    v = x64
    if b64 is not None:
        shape = [1] * x64.ndim
        shape[dim] = -1
        v = v + b64.reshape(shape)
    y = func(v, alpha) * gain
    if clamp is not None:
        y = torch.minimum(torch.maximum(y, torch.full_like(y, -clamp)), torch.full_like(y, clamp))
    return y


def random_case(gen: torch.Generator, shape, dim, with_bias: bool):
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    b = torch.randn(shape[dim], generator=gen, dtype=torch.float64) if with_bias else None
    alpha = float(torch.rand((), generator=gen)) * 0.5 + 0.05
    gain = float(torch.rand((), generator=gen)) * 1.5 + 0.25
    return x, b, alpha, gain


SHAPES = [((3, 5, 7, 9), 1), ((2, 16, 4, 4), 1), ((4, 33), 1), ((5, 3, 6), 2), ((7,), 0), ((2, 3, 5, 1), 3)]


@pytest.mark.parametrize("act", list(DEFINITIONS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,dim", SHAPES)
def test_reference_matches_definition(gen, act, dtype, shape, dim):
    for with_bias, explicit, use_clamp in [(True, True, False), (True, False, True), (False, True, True)]:
        x, b, alpha, gain = random_case(gen, shape, dim, with_bias)
        clamp = float(torch.rand((), generator=gen)) + 0.5 if use_clamp else None
        a = alpha if explicit else None
        g = gain if explicit else None
        # The low-precision input is what the op sees; the definition gets that same value.
        xd, bd = x.to(dtype), (b.to(dtype) if b is not None else None)
        want = definition(xd.double(), bd.double() if bd is not None else None, dim, act, a, g, clamp)
        got = bias_act(xd, bd, dim=dim, act=act, alpha=a, gain=g, clamp=clamp, impl="ref")
        assert got.dtype == dtype and got.shape == x.shape
        scale = want.abs().max().clamp(min=1.0)
        tol = TOL[dtype]
        torch.testing.assert_close(got.double() / scale, want / scale, rtol=tol["rtol"], atol=tol["atol"])


@pytest.mark.parametrize("act", ["lrelu", "swish", "tanh"])
def test_channels_last_keeps_layout_and_values(gen, act):
    x = torch.randn(2, 6, 5, 7, generator=gen).to(memory_format=torch.channels_last)
    b = torch.randn(6, generator=gen)
    got = bias_act(x, b, act=act, clamp=1.5)
    want = definition(x.double(), b.double(), 1, act, None, None, 1.5)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.double(), want, **TOL[torch.float32])


def test_table_defaults_match_nvlabs_semantics():
    for name, (_, alpha, gain) in DEFINITIONS.items():
        assert ACTIVATIONS[name].def_alpha == pytest.approx(alpha), name
        assert ACTIVATIONS[name].def_gain == pytest.approx(gain), name
    assert sorted(a.cuda_id for a in ACTIVATIONS.values()) == list(range(len(ACTIVATIONS)))


def away_from_kinks(gen, shape, dim, act, clamp):
    """float64 inputs whose x + b stays >= 0.1 away from 0 (kinks) and whose output stays away
    from the clamp boundary, so finite differences see a smooth function."""
    x, b, alpha, gain = random_case(gen, shape, dim, True)
    v = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    if act in KINKED:
        v = torch.where(v.abs() < 0.1, v.sign() * 0.1 + v, v)
    x = v - b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    if clamp is not None:
        y = definition(x, b, dim, act, alpha, gain, None)
        near = ((y.abs() - clamp).abs() < 0.05)
        x = torch.where(near, x + 0.2, x)  # nudge off the boundary; re-check below
        y = definition(x, b, dim, act, alpha, gain, None)
        assert ((y.abs() - clamp).abs() >= 0.01).all() or act == "linear"
    return x.requires_grad_(True), b.requires_grad_(True), alpha, gain


@pytest.mark.parametrize("act", list(DEFINITIONS))
def test_reference_gradcheck_and_gradgradcheck(gen, act):
    clamp = 1.3 if act in ("swish", "tanh", "lrelu") else None
    x, b, alpha, gain = away_from_kinks(gen, (2, 3, 3, 2), 1, act, clamp)

    def f(x, b):
        return bias_act(x, b, act=act, alpha=alpha, gain=gain, clamp=clamp, impl="ref")

    assert torch.autograd.gradcheck(f, (x, b))
    assert torch.autograd.gradgradcheck(f, (x, b))


def test_second_derivative_is_the_formula(gen):
    """d2/dx2 of swish from autograd against the closed form s(1-s)(2 + x(1-2s))."""
    x = torch.randn(50, generator=gen, dtype=torch.float64, requires_grad=True)
    y = bias_act(x, None, dim=0, act="swish", gain=1.0, impl="ref")
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    s = torch.sigmoid(x.detach())
    torch.testing.assert_close(h, s * (1 - s) * (2 + x.detach() * (1 - 2 * s)))


# ---------------------------------------------------------------------------------------------
# Argument errors


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(act="gelu"), "unknown act"),
        (dict(dim=4), "dim=4 is out of range"),
        (dict(b=torch.zeros(5)), "b has 5 elements"),
        (dict(b=torch.zeros(3, 1)), "b must have 1 dimensions"),
        (dict(b=torch.zeros(3, dtype=torch.float64)), "b has dtype torch.float64 but x has torch.float32"),
        (dict(impl="fast"), "impl must be one of"),
        (dict(gain=float("inf")), "must be finite"),
    ],
)
def test_argument_errors(kwargs, match):
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=match):
        bias_act(x, **kwargs)


def test_integer_input_is_refused():
    with pytest.raises(ValueError, match="x has dtype torch.int64"):
        bias_act(torch.arange(6).reshape(2, 3))


def test_cuda_impl_on_cpu_tensor_says_which():
    with pytest.raises(ValueError, match="x is on cpu; the CUDA kernels need CUDA tensors"):
        bias_act(torch.randn(2, 3), impl="cuda")


def test_env_override(monkeypatch):
    x = torch.randn(2, 3)
    monkeypatch.setenv("STYLEGAN2_OPS_IMPL", "cuda")
    with pytest.raises(ValueError, match="need CUDA tensors"):
        bias_act(x)  # 'auto' now means 'cuda'
    torch.testing.assert_close(bias_act(x, impl="ref"), x)  # an explicit impl wins
    monkeypatch.setenv("STYLEGAN2_OPS_IMPL", "fastest")
    with pytest.raises(ValueError, match="STYLEGAN2_OPS_IMPL='fastest'"):
        bias_act(x)


# ---------------------------------------------------------------------------------------------
# CUDA kernels against the reference (skipped without a GPU)

KERNEL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Kernel vs reference, both from the same rounded input: the kernel computes in float32 and rounds
# once; the CPU-free reference on the GPU computes in the dtype. Allow two units of eps.
KTOL = {
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def poison_allocator(nbytes: int) -> None:
    """Fill and free a block so the next allocation of that size likely reuses NaN-filled memory:
    an element the kernel forgets to write then shows up as NaN."""
    torch.full((nbytes // 4 + 1024,), float("nan"), device="cuda").resize_(0)
    torch.cuda.synchronize()


@pytest.mark.cuda
@pytest.mark.parametrize("act", list(DEFINITIONS))
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_forward_matches_reference(gen, act, dtype, channels_last):
    for shape, use_bias, clamp in [((3, 5, 7, 9), True, None), ((4, 64, 17, 16), True, 1.7), ((2, 3, 1, 33), False, 0.5)]:
        x, b, alpha, gain = random_case(gen, shape, 1, use_bias)
        x = x.to("cuda", dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        b = b.to("cuda", dtype) if b is not None else None
        want = bias_act(x.double(), b.double() if b is not None else None, act=act, alpha=alpha, gain=gain,
                        clamp=clamp, impl="ref")
        poison_allocator(x.numel() * x.element_size())
        got = bias_act(x, b, act=act, alpha=alpha, gain=gain, clamp=clamp, impl="cuda")
        assert got.dtype == dtype and got.stride() == x.stride()
        assert not got.isnan().any(), "unwritten output elements"
        scale = want.abs().max().clamp(min=1.0)
        torch.testing.assert_close(got.double() / scale, want / scale, **KTOL[dtype])


@pytest.mark.cuda
@pytest.mark.parametrize("act", list(DEFINITIONS))
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_first_and_second_derivatives_match_reference(gen, act, dtype, channels_last):
    clamp = 1.1 if act in ("lrelu", "swish", "tanh") else None
    x, b, alpha, gain = away_from_kinks(gen, (3, 6, 5, 7), 1, act, clamp)
    x, b = x.detach().to("cuda", dtype), b.detach().to("cuda", dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    dy = torch.randn(x.shape, generator=gen).to("cuda", dtype)
    results = {}
    for impl in ("cuda", "ref"):
        xi = (x.double() if impl == "ref" else x).clone().requires_grad_(True)
        bi = (b.double() if impl == "ref" else b).clone().requires_grad_(True)
        y = bias_act(xi, bi, act=act, alpha=alpha, gain=gain, clamp=clamp, impl=impl)
        dx, db = torch.autograd.grad(y, (xi, bi), dy.to(y.dtype), create_graph=True)
        # A scalar of the first derivatives, differentiated again (what R1 does).
        gx, gb = torch.autograd.grad((dx.float() ** 2).sum() + (db.float() * 0.5).sum(), (xi, bi), allow_unused=True)
        results[impl] = [t.double() if t is not None else torch.zeros(()) for t in (dx, db, gx, gb)]
    for got, want in zip(results["cuda"], results["ref"]):
        scale = want.abs().max().clamp(min=1.0)
        torch.testing.assert_close(got / scale, want / scale, rtol=KTOL[dtype]["rtol"] * 4, atol=KTOL[dtype]["atol"] * 4)


@pytest.mark.cuda
def test_auto_picks_kernel_on_gpu():
    x = torch.randn(2, 3, 4, 4, device="cuda")
    assert stylegan2_ops._loader.load() is not None, stylegan2_ops._loader.state().reason
    assert stylegan2_ops._dispatch.choose("bias_act", "auto", "bias_act_forward", {"x": x}) == "cuda"


@pytest.mark.cuda
def test_registered_ops_pass_opcheck(gen):
    x = torch.randn(2, 5, 6, 7, generator=gen).cuda()
    b = torch.randn(5, generator=gen).cuda()
    fwd = torch.ops.stylegan2_ops.bias_act_forward.default
    torch.library.opcheck(fwd, (x, b, 1, ACTIVATIONS["lrelu"].cuda_id, 0.2, 1.4, 0.9))
    y = fwd(x, b, 1, ACTIVATIONS["tanh"].cuda_id, 0.0, 1.0, -1.0)
    dy = torch.randn(x.shape, generator=gen).cuda()
    grad = torch.ops.stylegan2_ops.bias_act_grad.default
    torch.library.opcheck(grad, (dy, None, x, b, y, 1, ACTIVATIONS["tanh"].cuda_id, 0.0, 1.0, -1.0, 1))


@pytest.mark.cuda
def test_first_order_path_compiles(gen):
    x = torch.randn(3, 8, 5, 5, generator=gen).cuda().requires_grad_(True)
    b = torch.randn(8, generator=gen).cuda().requires_grad_(True)

    def step(x, b):
        return bias_act(x, b, act="lrelu", clamp=2.0, impl="cuda").square().sum()

    compiled = torch.compile(step, fullgraph=False)
    want = torch.autograd.grad(step(x, b), (x, b))
    got = torch.autograd.grad(compiled(x, b), (x, b))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
