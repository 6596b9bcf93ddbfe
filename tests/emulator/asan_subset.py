"""Every kernel entry point of csrc/ on a few small cases, under the AddressSanitizer build.

Run by tests/test_emulator.py in a subprocess with libasan preloaded (the interpreter is not
instrumented, the emulated kernels are): an out-of-bounds access in global or shared memory
aborts with a report naming the csrc/ line. Each result is also compared with the reference,
loosely (the point here is memory safety; the tolerances are the kernel tests' business).
Prints "ok: N cases" and exits 0 when all pass.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parents[2])]

from emulator import emulated_kernels, routed  # noqa: E402
from stylegan2_ops import bias_act, modulated_conv2d, setup_filter, upfirdn2d  # noqa: E402

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LOOSE = {torch.float32: 1e-3, torch.float16: 3e-2, torch.bfloat16: 1.5e-1}


def check(what: str, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    got, want = got.detach().double(), want.detach().double()
    err = ((got - want).abs().max() / want.abs().max().clamp(min=1.0)).item()
    if not err <= LOOSE[dtype]:
        raise SystemExit(f"{what} ({dtype}): error {err:.3g}")


def main() -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(20261201)
    kernels = emulated_kernels("random", seed=1, sanitize="address")
    cases = 0
    with routed(kernels):
        for dtype in DTYPES:
            for channels_last in (False, True):
                x = torch.randn(2, 7, 5, 9, generator=gen).to(dtype)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                b = torch.randn(7, generator=gen).to(dtype)
                for act in ("lrelu", "tanh", "swish"):  # order 1 from y, from x; order 2
                    xi, bi = x.clone().requires_grad_(True), b.clone().requires_grad_(True)
                    xr, br = x.double().requires_grad_(True), b.double().requires_grad_(True)
                    outs = []
                    for impl, xx, bb in (("cuda", xi, bi), ("ref", xr, br)):
                        # A clamp only in float32: in 16 bits, rounding at its edge flips the mask.
                        y = bias_act(xx, bb, act=act, clamp=2.0 if dtype == torch.float32 else None, impl=impl)
                        (dx,) = torch.autograd.grad(y.float().square().sum(), xx, create_graph=True)
                        (ddx,) = torch.autograd.grad(dx.float().sum(), xx, allow_unused=True)
                        outs.append((y, dx, ddx if ddx is not None else torch.zeros_like(xx)))
                    for what, got, want in zip(("y", "dx", "ddx"), *outs):
                        check(f"bias_act {act} {what}", got, want, dtype)
                    cases += 1
                for f, up, down, pad in ((setup_filter([1, 3, 3, 1]), 2, 1, (2, 1, 2, 1)),
                                         (setup_filter([1, 3, 3, 1]), 1, 2, (1, 1, 1, 1)),
                                         (torch.randn(5, 3, generator=gen), 3, 2, (1, 2, 0, 3))):
                    for path in (1, 2):
                        if path == 2 and f.shape[-1] != 4:
                            continue
                        got = kernels.upfirdn2d(x, f, up, up, down, down, *pad, False, 1.5, path)  # layout: x's strides
                        want = upfirdn2d(x.double(), f, up, down, pad, gain=1.5, impl="ref")
                        check(f"upfirdn2d up={up} down={down} path={path}", got, want, dtype)
                        cases += 1
                w = torch.randn(6, 7, 3, 3, generator=gen)
                s = torch.randn(2, 7, generator=gen) * 0.3 + 1
                noise = torch.randn(2, 1, 5, 9, generator=gen).to(dtype)
                for fused in (True, False):
                    xi = x.clone().requires_grad_(True)
                    ws, ss = w.clone().requires_grad_(True), s.clone().requires_grad_(True)
                    xr, wr, sr = x.double().requires_grad_(True), w.double().requires_grad_(True), \
                        s.double().requires_grad_(True)
                    outs = []
                    for impl, a, ww, sss, nn in (("cuda", xi, ws, ss, noise), ("ref", xr, wr, sr, noise.double())):
                        y = modulated_conv2d(a, ww, sss, nn, padding=1, fused_modconv=fused, impl=impl,
                                             bias=torch.zeros(6, dtype=a.dtype), act="lrelu", clamp=256.0)
                        grads = torch.autograd.grad(y.float().square().sum(), (a, ww, sss))
                        outs.append((y, *grads))
                    for what, got, want in zip(("y", "dx", "dw", "ds"), *outs):
                        check(f"modulated_conv2d fused={fused} {what}", got, want, dtype)
                    cases += 1
    print(f"ok: {cases} cases")


if __name__ == "__main__":
    main()
