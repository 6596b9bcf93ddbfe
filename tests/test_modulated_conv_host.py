"""The modulated_conv2d kernels' per-thread work, run on the CPU against float64 definitions.

tests/kernel_harness/modulated_conv_host.cpp compiles csrc/modulated_conv_math.cuh (what each GPU
thread of the modulation and epilogue kernels computes) with the host C++ compiler and runs every
block and thread of the launches the kernels make, in float32. It adds each thread's partial sums
into the index the kernel's shuffles / shared memory / atomics would add them to, fails on any
load outside the arrays, and reports how often each output element was stored (exactly once).

Checked here: tiling and offsets in both layouts (NCHW and NHWC), odd and tile-crossing sizes,
the epilogue's value and first derivative for every activation with and without clamp, noise
shared or per sample, bias, the per-(sample, channel) and per-pixel reductions, the modulation's
demodulation coefficients and its backward for weight and styles.
Not covered (needs a GPU, tests/test_modulated_conv_cuda.py): the __global__ wrappers, warp
shuffles and __syncthreads, atomics, half-precision loads and stores, launch errors.
"""
from __future__ import annotations

import math
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch


ROOT = Path(__file__).resolve().parent.parent
HARNESS_SRC = ROOT / "tests" / "kernel_harness" / "modulated_conv_host.cpp"

# name -> (id in csrc/bias_act.h, float64 definition)
SELU_SCALE = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717
ACTS = {
    "linear": (0, lambda v, a: v),
    "relu": (1, lambda v, a: torch.where(v > 0, v, torch.zeros_like(v))),
    "lrelu": (2, lambda v, a: torch.where(v > 0, v, a * v)),
    "tanh": (3, lambda v, a: torch.tanh(v)),
    "sigmoid": (4, lambda v, a: 1 / (1 + torch.exp(-v))),
    "elu": (5, lambda v, a: torch.where(v > 0, v, a * (torch.exp(v) - 1))),
    "selu": (6, lambda v, a: SELU_SCALE * torch.where(v > 0, v, SELU_ALPHA * (torch.exp(v) - 1))),
    "softplus": (7, lambda v, a: torch.log1p(torch.exp(v))),
    "swish": (8, lambda v, a: v / (1 + torch.exp(-v))),
}


@pytest.fixture(scope="module")
def harness(build_host_harness) -> Path:
    return build_host_harness(HARNESS_SRC, "-O1")


def run(exe: Path, tmp_path: Path, ints: list[int], floats64: list[float], arrays: list[torch.Tensor],
        out_sizes: list[int], count_sizes: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Writes the harness input, runs it, returns (float32 outputs, int32 store counts)."""
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    with open(src, "wb") as f:
        f.write(struct.pack(f"<{len(ints)}q", *ints))
        f.write(struct.pack(f"<{len(floats64)}d", *floats64))
        for a in arrays:
            f.write(a.detach().to(torch.float32).contiguous().numpy().tobytes())
    done = subprocess.run([str(exe), str(src), str(dst)], capture_output=True, text=True)
    assert done.returncode == 0, f"harness failed: {done.stderr}"
    raw = dst.read_bytes()
    assert len(raw) == 4 * (sum(out_sizes) + sum(count_sizes))
    outs, counts, pos = [], [], 0
    for n in out_sizes:
        outs.append(torch.from_numpy(np.frombuffer(raw, np.float32, n, pos).copy()))
        pos += 4 * n
    for n in count_sizes:
        counts.append(torch.from_numpy(np.frombuffer(raw, np.int32, n, pos).copy()))
        pos += 4 * n
    return outs, counts


def close(got: torch.Tensor, want: torch.Tensor, what: str, rtol: float = 2e-5) -> None:
    """float32 against float64: relative to the tensor's largest magnitude (sums of up to a few
    hundred float32 terms lose a few units of 6e-8 each)."""
    scale = max(want.abs().max().item(), 1e-3)
    err = (got.double() - want).abs().max().item() / scale
    assert err <= rtol, f"{what}: max error {err:.3g} of scale {scale:.3g}"


# ---------------------------------------------------------------------------------------------
# Modulation


def modulate_definition(weight, styles, demodulate, eps=1e-8):
    w = weight.unsqueeze(0) * styles.reshape(styles.shape[0], 1, -1, 1, 1)
    d = (w.square().sum(dim=[2, 3, 4]) + eps).rsqrt() if demodulate else torch.ones(w.shape[:2], dtype=w.dtype)
    return w * d.reshape(*d.shape, 1, 1, 1), d


@pytest.mark.parametrize("demodulate", [True, False])
def test_modulation_matches_definition(harness, tmp_path, gen, demodulate):
    for n, o, i, kh, kw in [(3, 5, 7, 3, 3), (2, 33, 40, 1, 1), (1, 3, 300, 3, 3), (4, 2, 3, 2, 1), (5, 17, 35, 3, 3)]:
        weight = torch.randn(o, i, kh, kw, generator=gen, dtype=torch.float64)
        styles = torch.randn(n, i, generator=gen, dtype=torch.float64) * 0.7 + 0.5
        grad = torch.randn(n, o, i, kh, kw, generator=gen, dtype=torch.float64)
        # The harness sees float32 inputs; the definition gets the same rounded values.
        weight, styles, grad = (t.float().double() for t in (weight, styles, grad))
        weight.requires_grad_(True)
        styles.requires_grad_(True)
        want, want_d = modulate_definition(weight, styles, demodulate)
        want_gw, want_gs = torch.autograd.grad(want, (weight, styles), grad)
        k = kh * kw
        (out, dcoefs, gw, gs), counts = run(
            harness, tmp_path, [0, n, o, i, k, int(demodulate)], [1e-8], [weight, styles, grad],
            [n * o * i * k, n * o, o * i * k, n * i], [n * o * i * k, o * i * k, n * i],
        )
        for c, what in zip(counts, ("out", "grad_weight", "grad_styles")):
            assert bool((c == 1).all()), f"{what}: elements stored {sorted(set(c.tolist()))} times"
        close(out.reshape(n, o, i, kh, kw), want.detach(), "modulated weights")
        close(dcoefs.reshape(n, o), want_d.detach(), "demodulation coefficients")
        close(gw.reshape(o, i, kh, kw), want_gw, "grad_weight", rtol=5e-5)
        close(gs.reshape(n, i), want_gs, "grad_styles", rtol=5e-5)


# ---------------------------------------------------------------------------------------------
# Epilogue

# (N, C, H, W): odd sizes, one channel, three channels, sizes that cross tile edges in both
# layouts (NCHW tiles: 32 channels x 128 pixels; NHWC: 32 pixels x 128 channels, fewer
# threads along a narrow channel axis: 3 channels -> 4 lanes x 64 rows, 256-pixel tiles; 1 channel
# -> 1 lane x 256 rows, 1024-pixel tiles, crossed by the last two shapes).
EPILOGUE_SHAPES = [(2, 5, 3, 7), (1, 1, 9, 11), (3, 3, 6, 5), (2, 70, 9, 11), (2, 33, 15, 20), (1, 130, 2, 3),
                   (2, 3, 20, 15), (1, 1, 37, 29)]


def epilogue_definition(x, scale, noise, bias, act, alpha, gain, clamp):
    v = x
    if scale is not None:
        v = v * scale.reshape(*scale.shape, 1, 1)
    if noise is not None:
        v = v + noise
    if bias is not None:
        v = v + bias.reshape(bias.shape[0], bias.shape[1], 1, 1)
    y = ACTS[act][1](v, alpha) * gain
    if clamp >= 0:
        y = y.clamp(-clamp, clamp)
    return y


def to_layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """[N, C, H, W] -> the flat storage order the kernel walks."""
    return (t.permute(0, 2, 3, 1) if channels_last else t).contiguous().reshape(-1)


def from_layout(flat: torch.Tensor, shape, channels_last: bool) -> torch.Tensor:
    n, c, h, w = shape
    if channels_last:
        return flat.reshape(n, h, w, c).permute(0, 3, 1, 2)
    return flat.reshape(n, c, h, w)


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("channels_last", [False, True])
def test_epilogue_matches_definition(harness, tmp_path, gen, act, channels_last):
    for case, shape in enumerate(EPILOGUE_SHAPES):
        n, c, h, w = shape
        p = h * w
        # Vary which operands are present from case to case; every one appears in several.
        has_scale, has_noise, has_bias = case % 3 != 1, case % 2 == 0, case != 2
        noise_rows = n if case % 4 == 0 else 1
        clamp = float(torch.rand((), generator=gen)) * 0.5 + 0.3 if case % 2 == 1 else -1.0
        alpha = float(torch.rand((), generator=gen)) * 0.4 + 0.05
        gain = float(torch.rand((), generator=gen)) * 1.5 + 0.3
        x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 1.5).float().double()
        dy = torch.randn(shape, generator=gen, dtype=torch.float64).float().double()
        scale = (torch.rand(n, c, generator=gen, dtype=torch.float64) + 0.5).float().double() if has_scale else None
        noise = torch.randn(noise_rows, 1, h, w, generator=gen, dtype=torch.float64).float().double() if has_noise else None
        bias = torch.randn(c, generator=gen, dtype=torch.float64).float().double() if has_bias else None
        # Leaves per sample, so their gradients are the kernel's per-sample reductions.
        xs = x.clone().requires_grad_(True)
        sc = scale.clone().requires_grad_(True) if has_scale else None
        nz = noise.expand(n, 1, h, w).clone().requires_grad_(True) if has_noise else None
        bs = bias.expand(n, c).clone().requires_grad_(True) if has_bias else None
        want = epilogue_definition(xs, sc, nz, bs, act, alpha, gain, clamp)
        leaves = [t for t in (xs, sc, nz, bs) if t is not None]
        grads = dict(zip([id(t) for t in leaves], torch.autograd.grad(want, leaves, dy)))

        arrays = [to_layout(x, channels_last), to_layout(dy, channels_last)]
        arrays += [t.reshape(-1) for t in (scale, noise, bias) if t is not None]
        ints = [1, n, c, p, int(channels_last), ACTS[act][0], int(has_scale), int(has_noise), noise_rows,
                int(has_bias), 1]
        numel = n * c * p
        (y, dx, gsc, gb, gn), counts = run(harness, tmp_path, ints, [alpha, gain, clamp], arrays,
                                           [numel, numel, n * c, n * c, n * p], [numel, numel])
        for cnt, what in zip(counts, ("y", "dx")):
            assert bool((cnt == 1).all()), f"{what}: elements stored {sorted(set(cnt.tolist()))} times"
        tag = f"{act} {shape} channels_last={channels_last} case {case}"
        close(from_layout(y, shape, channels_last), want.detach(), f"y ({tag})")
        close(from_layout(dx, shape, channels_last), grads[id(xs)], f"dx ({tag})")
        if has_scale:
            close(gsc.reshape(n, c), grads[id(sc)], f"grad_scale ({tag})", rtol=5e-5)
        if has_bias:
            close(gb.reshape(n, c), grads[id(bs)], f"grad_bias ({tag})", rtol=5e-5)
        if has_noise:
            close(gn.reshape(n, 1, h, w), grads[id(nz)], f"grad_noise ({tag})", rtol=5e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_epilogue_backward_without_x(harness, tmp_path, gen, channels_last):
    """Linear, unclamped, no scale gradient: the backward may run without x (dx = dy * gain * scale)."""
    n, c, h, w = 3, 9, 5, 13
    dy = torch.randn(n, c, h, w, generator=gen).double()
    scale = (torch.rand(n, c, generator=gen) + 0.5).double()
    gain = 1.7
    x = torch.full((n, c, h, w), float("nan"), dtype=torch.float64)  # must not be read
    ints = [1, n, c, h * w, int(channels_last), 0, 1, 0, 1, 0, 0]
    (_, dx, _, gb, _), _ = run(harness, tmp_path, ints, [0.2, gain, -1.0],
                               [to_layout(x, channels_last), to_layout(dy, channels_last), scale.reshape(-1)],
                               [n * c * h * w] * 2 + [n * c, n * c, n * h * w], [n * c * h * w] * 2)
    close(from_layout(dx, (n, c, h, w), channels_last), dy * gain * scale.reshape(n, c, 1, 1), "dx")
    assert not math.isnan(gb.sum().item())


def run_plain_epilogue(harness, tmp_path, x, dy, act, alpha, gain, clamp, channels_last):
    """The epilogue without scale, noise or bias: (y, dx) as [N, C, H, W]."""
    n, c, h, w = x.shape
    numel = x.numel()
    ints = [1, n, c, h * w, int(channels_last), ACTS[act][0], 0, 0, 1, 0, 1]
    (y, dx, _, _, _), counts = run(harness, tmp_path, ints, [alpha, gain, clamp],
                                   [to_layout(x, channels_last), to_layout(dy, channels_last)],
                                   [numel, numel, n * c, n * c, n * h * w], [numel, numel])
    for cnt, what in zip(counts, ("y", "dx")):
        assert bool((cnt == 1).all()), f"{what}: elements stored {sorted(set(cnt.tolist()))} times"
    return from_layout(y, x.shape, channels_last), from_layout(dx, x.shape, channels_last)


@pytest.mark.parametrize("channels_last", [False, True])
def test_epilogue_clamp_keeps_nan(harness, tmp_path, gen, channels_last):
    """torch.clamp keeps NaN (a diverging run must stay visible) and clamps +-inf; fminf/fmaxf
    would turn NaN into -clamp. A NaN or clamped element passes no gradient (torch.clamp's mask
    is false for NaN)."""
    n, c, h, w = 2, 5, 3, 7
    x = (torch.randn(n, c, h, w, generator=gen) * 2).double()
    flat = x.view(-1)
    flat[torch.randperm(flat.numel(), generator=gen)[:9]] = float("nan")
    flat[torch.randperm(flat.numel(), generator=gen)[:4]] = float("inf")
    flat[torch.randperm(flat.numel(), generator=gen)[:4]] = -float("inf")
    dy = torch.randn(n, c, h, w, generator=gen).double()
    for act in ("linear", "lrelu"):
        alpha, gain, clamp = 0.2, 1.3, 0.7
        xs = x.clone().requires_grad_(True)
        want = epilogue_definition(xs, None, None, None, act, alpha, gain, clamp)
        (want_dx,) = torch.autograd.grad(want, xs, dy)
        y, dx = run_plain_epilogue(harness, tmp_path, x, dy, act, alpha, gain, clamp, channels_last)
        assert bool(want.isnan().any())
        torch.testing.assert_close(y.double(), want.detach(), rtol=1e-6, atol=1e-6, equal_nan=True,
                                   msg=lambda m: f"y ({act}): {m}")
        torch.testing.assert_close(dx.double(), want_dx, rtol=1e-5, atol=1e-5, equal_nan=True,
                                   msg=lambda m: f"dx ({act}): {m}")


@pytest.mark.parametrize("act", ["lrelu", "elu"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_epilogue_negative_alpha(harness, tmp_path, gen, act, channels_last):
    """A negative alpha flips the sign of lrelu's and elu's output for v < 0, so the derivative's
    branch must follow v (as torch's does), not the output's sign."""
    for shape in [(2, 5, 3, 7), (1, 33, 4, 5)]:
        alpha = -(float(torch.rand((), generator=gen)) * 0.8 + 0.1)
        x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 1.5).float().double()
        dy = torch.randn(shape, generator=gen, dtype=torch.float64).float().double()
        xs = x.clone().requires_grad_(True)
        want = epilogue_definition(xs, None, None, None, act, alpha, 1.1, -1.0)
        (want_dx,) = torch.autograd.grad(want, xs, dy)
        y, dx = run_plain_epilogue(harness, tmp_path, x, dy, act, alpha, 1.1, -1.0, channels_last)
        close(y, want.detach(), f"y ({act} alpha={alpha:.3f} {shape})")
        close(dx, want_dx, f"dx ({act} alpha={alpha:.3f} {shape})")
