"""bias_act: the reference against float64 formulas, its derivatives, argument errors, and the CUDA
kernels against the reference, on a GPU and on the CPU emulator (tests/emulator/; `kdev` fixture)."""
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
        # Nudge elements off the boundary until none is near it (one nudge can land near it again
        # where the activation is flat, e.g. lrelu's negative side).
        for _ in range(50):
            y = definition(x, b, dim, act, alpha, gain, None)
            near = (y.abs() - clamp).abs() < 0.05
            if not near.any():
                break
            x = torch.where(near, x + 0.2, x)
        assert not near.any(), "could not move the inputs off the clamp boundary"
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


def poison_allocator(device: str, nbytes: int) -> None:
    """Fill and free a block so the next allocation of that size likely reuses NaN-filled memory:
    an element the kernel forgets to write then shows up as NaN. (The emulated kernels allocate
    their outputs NaN-filled: nothing to do on the CPU.)"""
    if device != "cuda":
        return
    torch.full((nbytes // 4 + 1024,), float("nan"), device="cuda").resize_(0)
    torch.cuda.synchronize()


@pytest.mark.parametrize("act", list(DEFINITIONS))
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_forward_matches_reference(kdev, gen, act, dtype, channels_last):
    for shape, use_bias, clamp in [((3, 5, 7, 9), True, None), ((4, 64, 17, 16), True, 1.7), ((2, 3, 1, 33), False, 0.5)]:
        x, b, alpha, gain = random_case(gen, shape, 1, use_bias)
        x = x.to(kdev, dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        b = b.to(kdev, dtype) if b is not None else None
        want = bias_act(x.double(), b.double() if b is not None else None, act=act, alpha=alpha, gain=gain,
                        clamp=clamp, impl="ref")
        poison_allocator(kdev, x.numel() * x.element_size())
        got = bias_act(x, b, act=act, alpha=alpha, gain=gain, clamp=clamp, impl="cuda")
        assert got.dtype == dtype and got.stride() == x.stride()
        assert not got.isnan().any(), "unwritten output elements"
        scale = want.abs().max().clamp(min=1.0)
        torch.testing.assert_close(got.double() / scale, want / scale, **KTOL[dtype])


@pytest.mark.parametrize("act", list(DEFINITIONS))
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_first_and_second_derivatives_match_reference(kdev, gen, act, dtype, channels_last):
    clamp = 1.1 if act in ("lrelu", "swish", "tanh") else None
    x, b, alpha, gain = away_from_kinks(gen, (3, 6, 5, 7), 1, act, clamp)
    x, b = x.detach().to(kdev, dtype), b.detach().to(kdev, dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    dy = torch.randn(x.shape, generator=gen).to(kdev, dtype)
    results = {}
    for impl in ("cuda", "ref"):
        xi = (x.double() if impl == "ref" else x).clone().requires_grad_(True)
        bi = (b.double() if impl == "ref" else b).clone().requires_grad_(True)
        y = bias_act(xi, bi, act=act, alpha=alpha, gain=gain, clamp=clamp, impl=impl)
        dx, db = torch.autograd.grad(y, (xi, bi), dy.to(y.dtype), create_graph=True)
        # A scalar of the first derivatives, differentiated again (what R1 does).
        # (For linear, dx = dy * gain depends on neither x nor b: no graph, a zero second derivative.)
        gx = gb = None
        if dx.requires_grad:
            gx, gb = torch.autograd.grad((dx.float() ** 2).sum() + (db.float() * 0.5).sum(), (xi, bi),
                                         allow_unused=True)
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


# ---------------------------------------------------------------------------------------------
# Review additions (R2): what the kernels' contract needs from the Python layer, checked on the
# CPU, and the cases that differed from the reference, checked on a GPU.

HARNESS_SRC = __import__("pathlib").Path(__file__).resolve().parent / "kernel_harness" / "bias_act_host.cpp"


def test_int32_path_leaves_room_for_the_grid_stride(build_host_harness):
    """bias_act_fits_int32 must leave a whole grid of head room: with a 4096-element margin the
    loop counters of tensors just under 2^31 elements wrapped negative and wrote out of bounds."""
    import subprocess

    exe = build_host_harness(HARNESS_SRC, "-O2")
    done = subprocess.run([str(exe)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


def _emulated_grad_kernel(g, h, x, b, y, dim, act_id, alpha, gain, clamp, order):
    """What csrc/bias_act.cu computes (element()), in float64 on the CPU: the first derivative
    from the saved y whenever the kernel is given one for an output-based activation (it then
    never sees x), else from x + b; the second derivative from x + b."""
    name = next(n for n, a in ACTIVATIONS.items() if a.cuda_id == act_id)
    for t in (h, x, y):  # the bindings' check_like
        assert t is None or (t.shape == g.shape and t.stride() == g.stride()), "operands differ in layout"
    assert b is None or b.is_contiguous()
    v = None
    if x is not None:
        v = x if b is None else x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    use_y = order == 1 and name != "swish" and y is not None
    if use_y:
        scaled, u = y, y * (1 / gain if gain != 0 else 0.0)
        vv = torch.full_like(y, float("nan"))  # the kernel has no input here
        clamped = (scaled.abs() >= clamp) if clamp >= 0 else torch.zeros_like(y, dtype=torch.bool)
    else:
        vv = v
        u = ACTIVATIONS[name].func(v, alpha)
        clamped = ((u * gain).abs() > clamp) if clamp >= 0 else torch.zeros_like(v, dtype=torch.bool)
    if order == 2:
        with torch.enable_grad():
            t = vv.detach().requires_grad_(True)
            (d1,) = torch.autograd.grad(ACTIVATIONS[name].func(t, alpha).sum(), t, create_graph=True)
            (d2,) = torch.autograd.grad(d1.sum(), t)
        out = g * h * gain * d2
    else:
        one, s = torch.ones_like(u), torch.sigmoid(vv)
        branch_pos = (u > 0) if alpha >= 0 else (vv > 0)  # activations.cuh: lrelu and elu
        deriv = {
            "linear": one, "relu": (u > 0).to(u.dtype), "lrelu": torch.where(branch_pos, one, alpha * one),
            "tanh": 1 - u * u, "sigmoid": u * (1 - u), "elu": torch.where(branch_pos, one, u + alpha),
            "selu": torch.where(u > 0, SELU_SCALE * one, u + SELU_SCALE * SELU_ALPHA),
            "softplus": 1 - torch.exp(-u), "swish": s * (1 + vv * (1 - s)),
        }[name]
        out = g * gain * deriv
    return torch.where(clamped, torch.zeros_like(out), out)


@pytest.mark.parametrize(
    "act,alpha,clamp,channels_last",
    [("lrelu", -0.3, None, False), ("elu", -0.7, 2.5, True), ("lrelu", 0.2, 1.3, True), ("tanh", None, 0.8, True),
     ("selu", None, None, False), ("swish", None, 1.4, True), ("softplus", None, None, True)],
)
def test_cuda_autograd_functions_with_emulated_kernels(gen, monkeypatch, act, alpha, clamp, channels_last):
    """The CUDA path's autograd Functions (what they save, which kernel gets which tensors, double
    backward routing, the bias reduction) with the kernels replaced by a float64 emulation of
    their contract: gradcheck and gradgradcheck against finite differences. Catches, e.g., a saved
    y handed to the kernel where y cannot determine the derivative (lrelu/elu with alpha < 0)."""
    from stylegan2_ops import _bias_act

    monkeypatch.setattr(_bias_act, "_forward_kernel", _emulated_forward_kernel)
    monkeypatch.setattr(_bias_act, "_grad_kernel", _emulated_grad_kernel)
    x, b, _, gain = away_from_kinks(gen, (2, 3, 4, 3), 1, act, clamp)
    alpha = ACTIVATIONS[act].def_alpha if alpha is None else alpha
    x = x.detach()
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    fn = _bias_act._cuda_function(1, act, float(alpha), float(gain), float(clamp if clamp is not None else -1))

    def f(x, b):
        return fn.apply(x, b)

    torch.testing.assert_close(f(x, b), bias_act(x, b, act=act, alpha=alpha, gain=gain, clamp=clamp, impl="ref"))
    assert torch.autograd.gradcheck(f, (x, b))
    assert torch.autograd.gradgradcheck(f, (x, b))


def _emulated_forward_kernel(x, b, dim, act_id, alpha, gain, clamp):
    """csrc/bind_bias_act.h's checks, then the reference."""
    from stylegan2_ops import _bias_act

    assert x.ndim >= 1 and x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
    assert b is None or b.is_contiguous(), "b must be contiguous"
    name = next(n for n, a in ACTIVATIONS.items() if a.cuda_id == act_id)
    return _bias_act.bias_act_ref(x, b, dim, name, alpha, gain, clamp)


def test_cuda_path_hands_the_bindings_what_they_accept(gen, monkeypatch):
    """A strided bias view, a permuted x and a broadcast incoming gradient, through the CUDA path
    with emulated kernels that check what the bindings check."""
    from stylegan2_ops import _bias_act, _dispatch

    monkeypatch.setattr(_dispatch, "choose", lambda *args, **kwargs: "cuda")
    monkeypatch.setattr(_bias_act, "_forward_kernel", _emulated_forward_kernel)
    monkeypatch.setattr(_bias_act, "_grad_kernel", _emulated_grad_kernel)
    w = torch.randn(10, generator=gen, dtype=torch.float64)
    b = w[::2].clone().requires_grad_(True)  # the leaf; the op gets a strided view of it
    xs = torch.randn(3, 4, 6, 5, generator=gen, dtype=torch.float64)
    x = xs.permute(0, 3, 1, 2).requires_grad_(True)  # [3, 5, 4, 6], neither layout
    bview = torch.stack([b, b], 1).reshape(-1)[::2]
    y = bias_act(x, bview, act="tanh", clamp=0.9)
    want = bias_act(x, bview, act="tanh", clamp=0.9, impl="ref")
    torch.testing.assert_close(y, want)
    got = torch.autograd.grad(y.sum(), (x, b))  # sum: a stride-0 incoming gradient
    ref = torch.autograd.grad(want.sum(), (x, b))
    for g_, r_ in zip(got, ref):
        torch.testing.assert_close(g_, r_)


def test_zero_dim_input_never_reaches_the_kernel(monkeypatch):
    """A 0-d x is outside the kernel's bindings (they need a bias dimension): 'auto' must pick the
    reference for it instead of raising from the extension."""
    from stylegan2_ops import _dispatch

    seen = {}

    def fake_choose(op, impl, kernel_name, tensors, unsupported=None):
        seen["unsupported"] = unsupported
        return "ref"

    monkeypatch.setattr(_dispatch, "choose", fake_choose)
    bias_act(torch.tensor(0.3), dim=0, act="tanh")
    assert seen["unsupported"] is not None
    bias_act(torch.randn(3), act="tanh", dim=0)
    assert seen["unsupported"] is None


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_kernel_keeps_nan_like_the_reference(kdev, dtype):
    """torch.clamp and torch.relu keep NaN; fminf/fmaxf clamping turned it into -clamp, and
    `v > 0 ? v : 0` into 0, which would hide a diverging run."""
    x = torch.tensor([[float("nan"), 1.0, -2.0, 300.0, float("inf"), -float("inf")]], device=kdev, dtype=dtype)
    for act in ("relu", "lrelu", "linear", "tanh"):
        for clamp in (None, 0.5, 256.0):
            got = bias_act(x, None, act=act, clamp=clamp, impl="cuda")
            want = bias_act(x.double(), None, act=act, clamp=clamp, impl="ref")
            assert torch.equal(got.isnan(), want.isnan()), (act, clamp, got, want)
            torch.testing.assert_close(got.double(), want.to(dtype).double(), equal_nan=True, **KTOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_clamp_mask_with_a_clamp_the_dtype_rounds(kdev, gen, dtype):
    """A clamped element of a saved y holds the clamp rounded to the dtype (0.1 is 0.09998 in
    float16; 257 is 256 in bfloat16); the mask must still see it as clamped."""
    for act, clamp in (("lrelu", 0.1), ("tanh", 0.3), ("linear", 257.0), ("sigmoid", 0.7)):
        scale = 400.0 if clamp > 100 else 2.0
        x = (torch.randn(3, 8, 5, 6, generator=gen) * scale).to(kdev, dtype)
        y0 = bias_act(x.double(), None, act=act, impl="ref")
        # Where the output rounds to the clamp itself, a saved y cannot tell clamped from not:
        # those elements (within 2% of the clamp) are left out of the comparison.
        far = (y0.abs() - clamp).abs() >= 0.02 * clamp
        assert (y0.abs() > clamp * 1.02).any() and (y0.abs() < clamp * 0.98).any()
        dy = torch.randn(x.shape, generator=gen).to(kdev, dtype)
        grads = []
        for impl, xi in (("cuda", x), ("ref", x.double())):
            xi = xi.clone().requires_grad_(True)
            (dx,) = torch.autograd.grad(bias_act(xi, None, act=act, clamp=clamp, impl=impl), xi, dy.to(xi.dtype))
            grads.append(torch.where(far, dx.double(), 0.0))
        torch.testing.assert_close(grads[0], grads[1], rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_kernel_on_views_with_storage_offsets(kdev, gen, dtype):
    """Views whose data pointer is not 16-byte aligned, and sizes that are no multiple of the pack
    width: the vector path must not be taken for them, the tails must be covered."""
    for act, offset, shape, dim in (("lrelu", 1, (3, 7, 5, 3), 1), ("swish", 3, (2, 9, 11), 2), ("tanh", 5, (1, 13, 1, 9), 1)):
        numel = math.prod(shape)
        base = torch.randn(numel + offset, generator=gen).to(kdev, dtype)
        x = base[offset:].view(shape)
        b = torch.randn(shape[dim], generator=gen).to(kdev, dtype)
        dy = torch.randn(numel + offset, generator=gen).to(kdev, dtype)[offset:].view(shape)
        outs = []
        for impl in ("cuda", "ref"):
            xi = (x if impl == "cuda" else x.double()).detach().requires_grad_(True)
            bi = (b if impl == "cuda" else b.double()).detach().requires_grad_(True)
            poison_allocator(kdev, numel * x.element_size())
            y = bias_act(xi, bi, dim=dim, act=act, clamp=1.5, impl=impl)
            dx, db = torch.autograd.grad(y, (xi, bi), dy.to(y.dtype))
            outs.append([t.double() for t in (y, dx, db)])
        for got, want in zip(*outs):
            scale = want.abs().max().clamp(min=1.0)
            torch.testing.assert_close(got / scale, want / scale, rtol=KTOL[dtype]["rtol"] * 4, atol=KTOL[dtype]["atol"] * 4)


def test_kernel_negative_alpha(kdev, gen):
    """lrelu / elu with alpha < 0: the derivative must come from x (y cannot tell the branch)."""
    for act in ("lrelu", "elu"):
        x = (torch.randn(2, 4, 5, 5, generator=gen, dtype=torch.float64) + 0.3).to(kdev)
        x = torch.where(x.abs() < 0.1, x + 0.3, x).float()
        dy = torch.randn(x.shape, generator=gen).to(kdev)
        grads = []
        for impl in ("cuda", "ref"):
            xi = x.clone().requires_grad_(True)
            (dx,) = torch.autograd.grad(bias_act(xi, None, act=act, alpha=-0.4, clamp=3.0, impl=impl), xi, dy)
            grads.append(dx)
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)


def test_grad_binding_refuses_swish_without_x(kdev, gen):
    """swish's first derivative is computed from x; given only y the kernel would dereference a
    null x, so the binding must refuse the call (review R2)."""
    x = torch.randn(2, 3, 4, 4, generator=gen).to(kdev)
    y = bias_act(x, None, act="swish", impl="cuda")
    with pytest.raises(RuntimeError, match="swish's derivative needs the saved input x"):
        stylegan2_ops._loader.load().bias_act_grad(torch.ones_like(x), None, None, None, y, 1,
                                                   ACTIVATIONS["swish"].cuda_id, 0.0, 1.0, -1.0, 1)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_kernel_size_one_bias_dim_with_an_odd_stride(kdev, gen, dtype):
    """A size-1 bias dimension may carry any stride (here 2^33 and 3): the layout is still dense,
    and the one bias value applies everywhere (review R2: the 32-bit kernels truncated the stride)."""
    for stride in (1 << 33, 3):
        x = torch.empty_strided((4, 1, 37), (37, stride, 1), device=kdev, dtype=dtype)
        x.copy_(torch.randn(4, 1, 37, generator=gen))
        b = torch.randn(1, generator=gen).to(kdev, dtype)
        got = bias_act(x, b, dim=1, act="lrelu", impl="cuda")
        want = bias_act(x.double(), b.double(), dim=1, act="lrelu", impl="ref")
        torch.testing.assert_close(got.double(), want.to(dtype).double(), **KTOL[dtype])


@pytest.mark.parametrize("act,clamp", [("lrelu", 1.3), ("tanh", None)])
def test_cuda_function_lookup_traces_as_one_graph(gen, monkeypatch, act, clamp):
    """Under torch.compile (fullgraph=True raises on any graph break) the cached autograd
    Function of a configuration is looked up, not re-created (dynamo cannot trace a class
    definition), and forward and first-order backward match the eager route."""
    from stylegan2_ops import _bias_act

    monkeypatch.setattr(_bias_act, "_forward_kernel", _emulated_forward_kernel)
    monkeypatch.setattr(_bias_act, "_grad_kernel", _emulated_grad_kernel)
    torch.compiler.reset()
    x, b, _, gain = away_from_kinks(gen, (3, 5, 4, 2), 1, act, clamp)
    key = (1, act, float(ACTIVATIONS[act].def_alpha), float(gain), float(clamp if clamp is not None else -1))

    def f(x, b):
        return _bias_act._cuda_function(*key).apply(x, b)
    x, b = x.detach().requires_grad_(True), b.detach().requires_grad_(True)
    want = f(x, b)  # eager: builds and caches the class
    dy = torch.randn(want.shape, generator=gen, dtype=want.dtype)
    want_grads = torch.autograd.grad(want, (x, b), dy)
    got = torch.compile(f, backend="aot_eager", fullgraph=True)(x, b)
    got_grads = torch.autograd.grad(got, (x, b), dy)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)
    assert key in _bias_act._cuda_function.cache
