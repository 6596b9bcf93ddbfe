"""Kernel rows: each op at the model's layer shapes, forward and forward+backward, per impl.

Impls (the row's `impl` says which one actually ran):
    cuda      the op with impl='cuda'. If that raises (no GPU, no extension, no kernel for this
              op or configuration) the row is kept with no timing and the reason as its note:
              the reference is never timed under the kernel's name.
    ref       the op with impl='ref' (pure PyTorch).
    compile   torch.compile of the reference, first order only. A compile failure becomes the
              row's note; the run goes on.

Metrics: memory-bound ops (bias_act, upsample2d, downsample2d, filter2d) report GB/s over the
ideal bytes (each input read once, each output written once; forward+backward adds the output
gradient read and the input gradients written); modulated_conv2d reports TFLOP/s over its matrix
FLOPs (see flops.py; backward = 2x forward: input and weight gradients).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

from . import flops as F
from . import shapes as S
from .timing import Ceilings, rotation_count, time_calls

SQRT2 = math.sqrt(2.0)
CLAMP = 256.0  # the model's conv_clamp under mixed precision
IMPLS = ("cuda", "ref", "compile")
PASSES = ("fwd", "fwd+bwd")
OPS = ("bias_act", "upsample2d", "downsample2d", "filter2d", "modulated_conv2d")


@dataclass
class Case:
    """One op at one shape and dtype.

    make(device) -> the op's tensor arguments (fresh random values every call);
    op(impl) -> a function of those tensors that returns the op's output;
    grads: which tensor arguments get gradients in forward+backward (as the model needs them).
    """

    op: str
    shape: str
    dtype: torch.dtype
    make: Callable[[torch.device], list[torch.Tensor]]
    op_fn: Callable[[str], Callable[..., torch.Tensor]]
    grads: list[bool]
    flops_fwd: int = 0     # matrix FLOPs (0: a memory-bound op, reported in GB/s)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def model_clamp(dtype: torch.dtype, mixed_policy: bool) -> float | None:
    """The conv_clamp a layer of this dtype gets: the mixed-precision model clamps every layer
    (float32 ones too, as NVlabs' configs do); a float32 model clamps none."""
    return CLAMP if mixed_policy or dtype != torch.float32 else None


def bias_act_case(a: S.ActShape, dtype: torch.dtype, clamp: float | None) -> Case:
    """bias + lrelu (gain sqrt 2, the model's clamp): the synthesis layers' epilogue."""
    import stylegan2_ops as ops

    def make(device: torch.device) -> list[torch.Tensor]:
        x = torch.randn(a.size, device=device, dtype=dtype)
        b = 0.1 * torch.randn(a.channels, device=device, dtype=dtype)
        return [x, b]

    return Case("bias_act", a.describe() + " lrelu" + (f" clamp{clamp:g}" if clamp else ""), dtype, make,
                lambda impl: (lambda x, b: ops.bias_act(x, b, act="lrelu", clamp=clamp, impl=impl)),
                grads=[True, True])


def resample_case(kind: str, a: S.ActShape, dtype: torch.dtype) -> Case:
    """upsample2d ([C, res/2] -> res), downsample2d ([C, res] -> res/2) or filter2d ([C, res])
    with setup_filter([1, 3, 3, 1]); `a` is the activation at res."""
    import stylegan2_ops as ops
    size = list(a.size)
    if kind == "upsample2d":
        size[2] = size[3] = a.res // 2
        desc = f"{a.batch}x{a.channels}x{a.res // 2}x{a.res // 2}->{a.res}x{a.res}"
    elif kind == "downsample2d":
        desc = f"{a.describe()}->{a.res // 2}x{a.res // 2}"
    else:
        desc = a.describe()
    fn = getattr(ops, kind)
    filters: dict[torch.device, torch.Tensor] = {}

    def make(device: torch.device) -> list[torch.Tensor]:
        x = torch.randn(size, device=device, dtype=dtype)
        # Keyed by the tensor's own device ('cuda:0', never a bare 'cuda'), as op_fn looks it up.
        filters.setdefault(x.device, ops.setup_filter([1, 3, 3, 1], device=x.device))
        return [x]

    def op_fn(impl: str) -> Callable[..., torch.Tensor]:
        return lambda x: fn(x, filters[x.device], impl=impl)

    return Case(kind, desc + " f[1,3,3,1]", dtype, make, op_fn, grads=[True])


def modconv_case(c: S.ConvShape, dtype: torch.dtype, fused: bool, clamp: float | None) -> Case:
    """A synthesis conv as SynthesisLayer calls it: 3x3, demodulated, noise [N, 1, res, res],
    bias + lrelu (gain sqrt 2, the model's clamp); float32 weight and styles with x in `dtype`;
    up=2 with the [1, 3, 3, 1] filter and flip_weight=False."""
    import stylegan2_ops as ops
    filters: dict[torch.device, torch.Tensor] = {}

    def make(device: torch.device) -> list[torch.Tensor]:
        x = torch.randn(c.batch, c.cin, c.in_res, c.in_res, device=device, dtype=dtype)
        filters.setdefault(x.device, ops.setup_filter([1, 3, 3, 1], device=x.device))
        w = torch.randn(c.cout, c.cin, c.kernel, c.kernel, device=device)
        s = 1 + 0.2 * torch.randn(c.batch, c.cin, device=device)  # affine outputs start near 1
        noise = 0.1 * torch.randn(c.batch, 1, c.res, c.res, device=device, dtype=dtype)
        b = 0.1 * torch.randn(c.cout, device=device, dtype=dtype)
        return [x, w, s, noise, b]

    def op_fn(impl: str) -> Callable[..., torch.Tensor]:
        def run(x, w, s, noise, b):
            return ops.modulated_conv2d(
                x, w, s, noise=noise, up=c.up, padding=c.kernel // 2, resample_filter=filters[x.device],
                flip_weight=c.up == 1, fused_modconv=fused, impl=impl, bias=b, act="lrelu",
                gain=SQRT2, clamp=clamp)
        return run

    flops = F.modconv_flops(c.batch, c.cin, c.cout, c.kernel, c.res, c.up)
    shape = c.describe() + (" fused" if fused else "") + (f" clamp{clamp:g}" if clamp else "")
    return Case("modulated_conv2d", shape, dtype, make, op_fn, grads=[True, True, True, True, True],
                flops_fwd=flops)


def build_cases(m: S.ModelShape, dtypes: Sequence[torch.dtype] | None, pass_: str,
                ops_wanted: Sequence[str]) -> list[Case]:
    """Every case at the model's shapes. dtypes None = the mixed-precision policy's dtype of each
    layer (float32 below 32x32 at 256, float16 above), clamped as that model clamps; otherwise
    every listed dtype, clamped only in half precision (float32 rows as in a float32 model)."""
    mixed = dtypes is None

    def each(res: int) -> list[torch.dtype]:
        return [m.policy_dtype(res)] if dtypes is None else list(dtypes)

    cases: list[Case] = []
    acts = S.act_shapes(m)
    if "bias_act" in ops_wanted:
        cases += [bias_act_case(a, dt, model_clamp(dt, mixed)) for a in acts for dt in each(a.res)]
    for kind in ("upsample2d", "downsample2d", "filter2d"):
        if kind in ops_wanted:
            cases += [resample_case(kind, a, dt) for a in acts if kind == "filter2d" or a.res > 4
                      for dt in each(a.res)]
    if "modulated_conv2d" in ops_wanted:
        for c in S.conv_shapes(m):
            for dt in each(c.res):
                # The model's rule: grouped (fused) in float32 inference, activation scaling in
                # training and in half precision.
                fused = pass_ == "fwd" and dt == torch.float32
                cases.append(modconv_case(c, dt, fused, model_clamp(dt, mixed)))
    return cases


# ---------------------------------------------------------------------------------------------
# Running one row


@dataclass
class Settings:
    device: torch.device
    warmup: int
    repeat: int
    compile_backend: str = "inductor"


def _prepared_sets(case: Case, pass_: str, device: torch.device) -> list[list[torch.Tensor]]:
    """Input sets to rotate among; for forward+backward each set ends with an output gradient."""
    first = case.make(device)
    fn = case.op_fn("ref")
    with torch.no_grad():
        out_like = fn(*first)
    set_bytes = F.bytes_of(*first, out_like)
    sets = [first] + [case.make(device) for _ in range(rotation_count(set_bytes, device) - 1)]
    if pass_ == "fwd+bwd":
        for s in sets:
            for t, g in zip(s, case.grads):
                t.requires_grad_(g)
            s.append(torch.randn_like(out_like))
    return sets


def _runner(case: Case, fn: Callable[..., torch.Tensor], pass_: str) -> Callable[..., Any]:
    if pass_ == "fwd":
        def fwd(*ts: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return fn(*ts)
        return fwd

    def fwd_bwd(*ts: torch.Tensor) -> Any:
        *args, dy = ts
        y = fn(*args)
        return torch.autograd.grad(y, [t for t, g in zip(args, case.grads) if g], dy)
    return fwd_bwd


def ideal_bytes(case: Case, pass_: str, sets: list[list[torch.Tensor]]) -> int:
    args = sets[0][:len(case.grads)]
    out_b = F.bytes_of(sets[0][-1]) if pass_ == "fwd+bwd" else None
    if out_b is None:
        with torch.no_grad():
            out_b = F.bytes_of(case.op_fn("ref")(*args))
    n = F.bytes_of(*args) + out_b
    if pass_ == "fwd+bwd":
        n += out_b + F.bytes_of(*[t for t, g in zip(args, case.grads) if g])
    return n


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y64, r64 = y.detach().double(), ref.detach().double()
    den = r64.norm().item()
    return (y64 - r64).norm().item() / den if den > 0 else (y64 - r64).norm().item()


def _first_call(case: Case, fn: Callable[..., torch.Tensor], pass_: str,
                first: list[torch.Tensor]) -> torch.Tensor:
    """One untimed call in the row's own mode (so a compiled function compiles the graph that is
    then timed, and nothing else); returns the detached output."""
    nargs = len(case.grads)
    if pass_ == "fwd":
        with torch.no_grad():
            return fn(*first[:nargs])
    y = fn(*first[:nargs])
    torch.autograd.grad(y, [t for t, g in zip(first, case.grads) if g], first[-1])
    return y.detach()


def _error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def run_case(case: Case, pass_: str, impl: str, s: Settings, ceilings: Ceilings,
             compile_this: bool = True) -> dict[str, Any]:
    """Time one (case, pass, impl) and return its row; never raises for an unavailable impl or
    a failed compile (the row's note says what happened)."""
    row: dict[str, Any] = {"section": "kernels", "op": case.op, "pass": pass_, "shape": case.shape,
                           "dtype": dtype_name(case.dtype), "impl": impl}
    if impl == "cuda" and s.device.type != "cuda":
        return dict(row, note=f"skipped: impl='cuda' needs a CUDA device (this run: {s.device.type})")
    if impl == "compile" and not compile_this:
        return dict(row, note="skipped: --quick compiles only the first shape of each op")
    notes: list[str] = []
    sets = _prepared_sets(case, pass_, s.device)
    nargs = len(case.grads)
    ref_fn = case.op_fn("ref")
    fn = ref_fn
    if impl == "cuda":
        fn = case.op_fn("cuda")
        try:
            y = _first_call(case, fn, pass_, sets[0])
        except Exception as e:  # the op's own message says why the kernel cannot run
            return dict(row, note=f"skipped: {_error(e)}")
        from stylegan2_ops import _loader
        notes.append(f"{_loader.state().source or 'compiled'} kernel module")
    elif impl == "compile":
        # A fresh dynamo cache per row: after 8 shapes of one function its recompile limit
        # would otherwise fall back to eager without a word.
        torch.compiler.reset()
        try:
            fn = torch.compile(ref_fn, backend=s.compile_backend, dynamic=False)
            t0 = time.perf_counter()
            y = _first_call(case, fn, pass_, sets[0])
            if s.device.type == "cuda":
                torch.cuda.synchronize(s.device)
            notes.append(f"{s.compile_backend} compile {time.perf_counter() - t0:.1f} s")
        except Exception as e:
            return dict(row, note=f"torch.compile failed: {_error(e)}")
    if impl != "ref":
        with torch.no_grad():
            notes.append(f"rel err vs ref {_rel_err(y, ref_fn(*sets[0][:nargs])):.1e}")

    runner = _runner(case, fn, pass_)
    try:
        t = time_calls(runner, sets, s.device, warmup=s.warmup, repeat=s.repeat)
    except Exception as e:
        if impl != "compile":
            raise  # a kernel or reference bug: run.py turns it into an error row
        return dict(row, note=f"torch.compile failed while timing: {_error(e)}; " + "; ".join(notes))
    row.update(ms=t.ms, spread=t.spread)
    if case.flops_fwd:
        fl = case.flops_fwd * (3 if pass_ == "fwd+bwd" else 1)
        tflops = fl / (t.ms * 1e-3) / 1e12
        peak, name = ceilings.peak_for(row["dtype"])
        row.update(tflops=tflops, pct_of_peak=100 * tflops / peak if peak else None)
        if name and name != row["dtype"]:
            notes.append(f"pct of {name} peak")
    else:
        gbps = ideal_bytes(case, pass_, sets) / (t.ms * 1e-3) / 1e9
        row.update(gbps=gbps, pct_of_peak=100 * gbps / ceilings.copy_gbps)
    if notes:
        row["note"] = "; ".join(notes)
    return row


def kernel_tasks(m: S.ModelShape, dtypes: Sequence[torch.dtype] | None, impls: Sequence[str],
                 ops_wanted: Sequence[str], passes: Sequence[str], s: Settings, ceilings: Ceilings,
                 compile_first_only: bool = False) -> Iterator[tuple[str, Callable[[], dict[str, Any]]]]:
    """(label, thunk) per row, in table order: op, shape, pass, impl ('ref' before the others,
    so a row's ratio can be filled in as soon as it exists)."""
    order = [i for i in ("ref", "cuda", "compile") if i in impls]
    for pass_ in passes:
        seen: set[str] = set()
        for case in build_cases(m, dtypes, pass_, ops_wanted):
            first = case.op not in seen
            seen.add(case.op)
            for impl in order:
                label = f"{case.op} {pass_} {case.shape} {dtype_name(case.dtype)} {impl}"
                yield label, (lambda c=case, p=pass_, i=impl, f=first:
                              run_case(c, p, i, s, ceilings, compile_this=f or not compile_first_only))
