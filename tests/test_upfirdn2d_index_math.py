"""The upfirdn2d kernels' index math, run on the CPU against the reference.

tests/kernel_harness/upfirdn2d_host.cpp compiles csrc/upfirdn2d_math.cuh (what each GPU thread
runs) with the host C++ compiler and runs every block and thread of the launch the kernels would
make, in float32. Besides the values it fails on any load outside x's storage, any shared-memory
read outside the tile or of an element the load phase did not write (NaN-filled), and reports how
often each output element was stored, which must be exactly once. This covers the general
kernel and the tiled fast paths, both traversal orders, int32 and int64 offsets, the channel-
group loop, and the transposed configuration the backward pass runs.

Not covered here (needs a GPU): the __global__ wrappers, __syncthreads placement, half-precision
loads and stores, launch errors; tests/test_upfirdn2d_cuda.py covers those on a GPU.
"""
from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest
import torch

from stylegan2_ops import _upfirdn2d, upfirdn2d

ROOT = Path(__file__).resolve().parent.parent
HARNESS_SRC = ROOT / "tests" / "kernel_harness" / "upfirdn2d_host.cpp"

# Kernel ids: enum class Kernel in csrc/upfirdn2d_math.cuh.
GENERAL, FILTER_ROWS, UP2_ROWS, DOWN2_ROWS, FILTER_CH, UP2_CH, DOWN2_CH = range(7)
AUTO, FORCE_GENERAL, FORCE_TILED = 0, 1, 2


@pytest.fixture(scope="module")
def harness(build_host_harness) -> Path:
    return build_host_harness(HARNESS_SRC, "-O2")


def dense_strides(shape: list[int], order: list[int]) -> list[int]:
    """Strides of a dense tensor whose dimensions are laid out in `order` (outermost first)."""
    strides = [0] * 4
    step = 1
    for d in reversed(order):
        strides[d] = step
        step *= shape[d]
    return strides


def strided_input(gen: torch.Generator, shape: list[int], layout: str) -> torch.Tensor:
    """A float32 tensor of `shape` with the given memory layout: 'contiguous', 'channels_last',
    or 'gappy' (a permuted order with unused elements between rows, columns and planes)."""
    if layout == "contiguous":
        order = [0, 1, 2, 3]
        strides = dense_strides(shape, order)
    elif layout == "channels_last":
        strides = dense_strides(shape, [0, 2, 3, 1])
    else:
        order = [0, 1, 2, 3]
        if torch.rand(1, generator=gen).item() < 0.5:
            order = [0, 2, 3, 1]
        padded = [s + int(torch.randint(0, 3, (1,), generator=gen)) for s in shape]
        strides = dense_strides(padded, order)
    span = 1 + sum((s - 1) * st for s, st in zip(shape, strides) if s > 0)
    storage = torch.randn(max(span, 1), generator=gen)
    return storage.as_strided(shape, strides)


def run_harness(
    exe: Path,
    tmp_path: Path,
    x: torch.Tensor,
    f: torch.Tensor,
    up: tuple[int, int],
    down: tuple[int, int],
    pad: tuple[int, int, int, int],
    flip: bool,
    gain: float,
    path: int = AUTO,
    y_channels_last: bool = False,
    index64: bool = False,
    grid_y_cap: int = 0,
) -> tuple[int, torch.Tensor]:
    """Runs the kernels' per-thread code on the CPU; returns (kernel id, y)."""
    n, c, h, w = x.shape
    fw, fh = int(f.shape[-1]), int(f.shape[0])
    out_w = (w * up[0] + pad[0] + pad[1] - fw) // down[0] + 1
    out_h = (h * up[1] + pad[2] + pad[3] - fh) // down[1] + 1
    yshape = [n, c, out_h, out_w]
    ystrides = dense_strides(yshape, [0, 2, 3, 1] if y_channels_last else [0, 1, 2, 3])
    ylen = n * c * out_h * out_w
    # x's whole storage (from offset 0), so loads are bounds-checked against what really exists.
    storage = torch.tensor([], dtype=torch.float32).set_(x.untyped_storage())
    assert x.storage_offset() == 0
    header = [n, c, h, w, out_h, out_w, up[0], up[1], down[0], down[1], pad[0], pad[2], fw, fh,
              int(f.ndim == 1), int(flip), path, *x.stride(), *ystrides, storage.numel(), ylen,
              int(index64) | (grid_y_cap << 8)]
    blob = struct.pack(f"<{len(header)}qd", *header, gain)
    blob += storage.numpy().astype("<f4").tobytes() + f.contiguous().numpy().astype("<f4").tobytes()
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    src.write_bytes(blob)
    done = subprocess.run([str(exe), str(src), str(dst)], capture_output=True, text=True)
    assert done.returncode == 0, f"harness failed: {done.stderr.strip()}"
    raw = dst.read_bytes()
    kernel, _ = struct.unpack_from("<2q", raw)
    ydata = torch.frombuffer(bytearray(raw[16 : 16 + 4 * ylen]), dtype=torch.float32)
    writes = torch.frombuffer(bytearray(raw[16 + 4 * ylen :]), dtype=torch.int32)
    assert writes.numel() == ylen
    assert bool((writes == 1).all()), f"{int((writes == 0).sum())} outputs never written, " \
        f"{int((writes > 1).sum())} written more than once"
    return kernel, ydata.as_strided(yshape, ystrides)


def reference(x, f, up, down, pad, flip, gain) -> torch.Tensor:
    return upfirdn2d(x.double(), f, list(up), list(down), list(pad), flip, gain, impl="ref")


def assert_matches(got: torch.Tensor, want: torch.Tensor, taps: int) -> None:
    # float32 sums of at most `taps` products of O(1) numbers against float64: a few ulp each.
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    assert not got.isnan().any()
    torch.testing.assert_close(got.double(), want, atol=1e-5 * scale * taps ** 0.5, rtol=1e-5)


def random_filter(gen: torch.Generator, fw: int, fh: int, separable: bool) -> torch.Tensor:
    if separable:
        return torch.randn(fw, generator=gen)
    return torch.randn(fh, fw, generator=gen)


def random_general_config(gen: torch.Generator):
    """Factors 1..8 and taps 1..12 per axis (independently), paddings that crop or pad, odd
    sizes; resampled until the output is non-empty and small."""
    ri = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
    while True:
        separable = ri(0, 3) == 0
        fw = ri(1, 12)
        fh = fw if separable else ri(1, 12)
        up, down = (ri(1, 8), ri(1, 8)), (ri(1, 8), ri(1, 8))
        if ri(0, 2) == 0:  # the corners: the largest factors and filters
            up = (8, ri(1, 8)) if ri(0, 1) else (ri(1, 8), 8)
            down = (ri(1, 8), 8) if ri(0, 1) else (8, ri(1, 8))
        h, w = ri(1, 9), ri(1, 9)
        pad = tuple(ri(-(size * u) // 2, 12) for size, u in ((w, up[0]), (w, up[0]), (h, up[1]), (h, up[1])))
        out_w = (w * up[0] + pad[0] + pad[1] - fw) // down[0] + 1
        out_h = (h * up[1] + pad[2] + pad[3] - fh) // down[1] + 1
        if w * up[0] + pad[0] + pad[1] >= fw and h * up[1] + pad[2] + pad[3] >= fh and out_w * out_h <= 600:
            return separable, fw, fh, up, down, pad, (h, w)


def test_index_helpers_match_python_floor_division(harness, gen):
    """floor_div/floor_mod/ceil_div/tap_run are exercised through every case below; this one
    pins tap_run's meaning directly on a 1-row problem: each output sees exactly the samples the
    definition puts under its taps (a one-hot input reveals them)."""
    for case in range(40):
        up, down, fw = int(torch.randint(1, 9, (1,), generator=gen)), int(torch.randint(1, 9, (1,), generator=gen)), \
            int(torch.randint(1, 13, (1,), generator=gen))
        w = int(torch.randint(1, 8, (1,), generator=gen))
        pad0 = int(torch.randint(-w * up + 1, 10, (1,), generator=gen))
        pad1 = max(fw - w * up - pad0, int(torch.randint(-3, 6, (1,), generator=gen)))
        f = torch.arange(1.0, fw + 1.0)[None, :]  # distinct taps: the value says which tap
        for j in range(w):
            x = torch.zeros(1, 1, 1, w)
            x[0, 0, 0, j] = 1.0
            _, got = run_harness(harness, harness.parent, x, f, (up, 1), (down, 1), (pad0, pad1, 0, 0), False, 1.0,
                                 path=FORCE_GENERAL)
            want = reference(x, f, (up, 1), (down, 1), (pad0, pad1, 0, 0), False, 1.0)
            assert torch.equal(got.double(), want), (case, j)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "gappy"])
def test_general_kernel_matches_reference_on_random_configs(harness, gen, layout):
    for _ in range(45):
        separable, fw, fh, up, down, pad, (h, w) = random_general_config(gen)
        n, c = int(torch.randint(1, 3, (1,), generator=gen)), int(torch.randint(1, 4, (1,), generator=gen))
        if torch.rand(1, generator=gen).item() < 0.2:
            c = 9  # channels_last output then traverses channel-fastest
        x = strided_input(gen, [n, c, h, w], layout)
        f = random_filter(gen, fw, fh, separable)
        flip = bool(torch.rand(1, generator=gen).item() < 0.5)
        gain = float(torch.empty(1).uniform_(-2, 3, generator=gen))
        index64 = bool(torch.rand(1, generator=gen).item() < 0.3)
        kernel, got = run_harness(harness, harness.parent, x, f, up, down, pad, flip, gain, path=AUTO,
                                  y_channels_last=layout == "channels_last", index64=index64)
        assert kernel == GENERAL or (fw == fh == 4)
        assert_matches(got, reference(x, f, up, down, pad, flip, gain), fw * fh)


FAST_CASES = [((1, 1), (1, 1), FILTER_ROWS, FILTER_CH), ((2, 2), (1, 1), UP2_ROWS, UP2_CH),
              ((1, 1), (2, 2), DOWN2_ROWS, DOWN2_CH)]


@pytest.mark.parametrize("up,down,rows_kernel,ch_kernel", FAST_CASES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "gappy"])
def test_tiled_paths_match_reference_and_general_path(harness, gen, up, down, rows_kernel, ch_kernel, layout):
    ri = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
    for case in range(8):
        # Sizes below, at and across tile edges (tiles are 8 to 64 outputs wide).
        h, w = ri(1, 40), ri(1, 75)
        c = [1, 3, 8, 17, 20][case % 5]
        n = ri(1, 2)
        pad = tuple(ri(-3, 4) for _ in range(4))
        if w * up[0] + pad[0] + pad[1] < 4 or h * up[1] + pad[2] + pad[3] < 4:
            pad = (ri(2, 4), ri(1, 3), ri(2, 4), ri(1, 3))
        x = strided_input(gen, [n, c, h, w], layout)
        f = random_filter(gen, 4, 4, separable=case % 2 == 1)
        flip, gain = case % 3 == 0, float(torch.empty(1).uniform_(-2, 3, generator=gen))
        want = reference(x, f, up, down, pad, flip, gain)
        grid_cap = 2 if case == 3 else 0  # a grid smaller than the channel groups: blocks loop
        kernel, tiled = run_harness(harness, harness.parent, x, f, up, down, pad, flip, gain, path=AUTO,
                                    y_channels_last=layout == "channels_last", grid_y_cap=grid_cap)
        channel_inner = x.stride(1) == 1 and c >= 8
        assert kernel == (ch_kernel if channel_inner else rows_kernel)
        assert_matches(tiled, want, 16)
        kernel, general = run_harness(harness, harness.parent, x, f, up, down, pad, flip, gain, path=FORCE_GENERAL,
                                      y_channels_last=layout == "channels_last")
        assert kernel == GENERAL
        # Same products, different summation order: float32 rounding apart at most.
        torch.testing.assert_close(tiled, general, atol=1e-5 * max(1.0, float(want.abs().max())), rtol=1e-5)


def test_tiled_path_is_not_taken_outside_its_cover(harness, gen):
    """4x4 filters with other factors, other filter sizes, mixed per-axis factors: general."""
    for up, down, fw, fh in [((2, 1), (1, 1), 4, 4), ((1, 1), (2, 1), 4, 4), ((2, 2), (2, 2), 4, 4),
                             ((3, 3), (1, 1), 4, 4), ((2, 2), (1, 1), 3, 4), ((1, 1), (1, 1), 5, 5)]:
        x = strided_input(gen, [1, 2, 7, 9], "contiguous")
        f = random_filter(gen, fw, fh, separable=False)
        pad = (fw, fw, fh, fh)
        kernel, got = run_harness(harness, harness.parent, x, f, up, down, pad, False, 1.0)
        assert kernel == GENERAL
        assert_matches(got, reference(x, f, up, down, pad, False, 1.0), fw * fh)


def test_backward_configuration_gives_the_input_gradient(harness, gen):
    """The backward pass runs upfirdn2d with the transposed configuration (_upfirdn2d's
    _transposed_config): swap up and down, flip the filter, transform the padding so the result
    has x's shape. Checked against autograd of the reference, and through the kernels' math."""
    for _ in range(40):
        separable, fw, fh, up, down, pad, (h, w) = random_general_config(gen)
        x = torch.randn(1, 2, h, w, generator=gen, dtype=torch.float64, requires_grad=True)
        f = random_filter(gen, fw, fh, separable)
        flip = bool(torch.rand(1, generator=gen).item() < 0.5)
        gain = float(torch.empty(1).uniform_(-2, 3, generator=gen))
        y = upfirdn2d(x, f, list(up), list(down), list(pad), flip, gain, impl="ref")
        dy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        (want,) = torch.autograd.grad(y, x, dy)
        t_up, t_down, t_pad, t_flip = _upfirdn2d._transposed_config(up, down, pad, flip, (fw, fh), (w, h),
                                                                  (y.shape[3], y.shape[2]))
        got = upfirdn2d(dy, f, list(t_up), list(t_down), list(t_pad), t_flip, gain, impl="ref")
        assert got.shape == x.shape
        torch.testing.assert_close(got, want)
        _, kern = run_harness(harness, harness.parent, dy.float(), f, t_up, t_down, t_pad, t_flip, gain)
        assert_matches(kern, want, fw * fh)


def test_stylegan2_backward_passes_also_take_the_tiled_paths(harness, gen):
    """upsample2d / downsample2d / the conv-side filter with [1,3,3,1]: their transposed
    configurations (the backward passes) are again tiled cases: up2 <-> down2, filter <-> filter."""
    f = torch.randn(4, 4, generator=gen)
    for up, down, pad, fwd_kernel, bwd_kernel in [((2, 2), (1, 1), (2, 1, 2, 1), UP2_ROWS, DOWN2_ROWS),
                                                  ((1, 1), (2, 2), (1, 1, 1, 1), DOWN2_ROWS, UP2_ROWS),
                                                  ((1, 1), (1, 1), (2, 1, 2, 1), FILTER_ROWS, FILTER_ROWS)]:
        x = strided_input(gen, [1, 2, 16, 16], "contiguous")
        kernel, y = run_harness(harness, harness.parent, x, f, up, down, pad, False, 4.0)
        assert kernel == fwd_kernel
        t_up, t_down, t_pad, t_flip = _upfirdn2d._transposed_config(up, down, pad, False, (4, 4), (16, 16),
                                                                  (y.shape[3], y.shape[2]))
        kernel, dx = run_harness(harness, harness.parent, y.contiguous(), f, t_up, t_down, t_pad, t_flip, 4.0)
        assert kernel == bwd_kernel and dx.shape == x.shape


def test_python_limits_match_the_kernel_header():
    """KERNEL_MAX_TAPS / KERNEL_MAX_FACTOR decide what 'auto' sends to the kernel; the kernel's
    own limits are in csrc/upfirdn2d.h (a GPU test also compares the compiled module's)."""
    header = (ROOT / "csrc" / "upfirdn2d.h").read_text()
    taps = int(re.search(r"kUpfirdn2dMaxTaps = (\d+);", header).group(1))
    factor = int(re.search(r"kUpfirdn2dMaxFactor = (\d+);", header).group(1))
    assert (taps, factor) == (_upfirdn2d.KERNEL_MAX_TAPS, _upfirdn2d.KERNEL_MAX_FACTOR)


@pytest.mark.parametrize("path", [FORCE_GENERAL, AUTO])
def test_crops_and_paddings_that_leave_no_sample_under_any_tap(harness, gen, path):
    """Negative padding that crops away every input sample along an axis (or padding so large
    that whole rows of outputs see only zeros): the kernels must write zeros there and never read
    outside x (review R2; the random configurations keep at least half of each axis)."""
    f = torch.randn(4, 4, generator=gen)  # 4x4: AUTO takes the tiled paths
    for up, down in (((1, 1), (1, 1)), ((2, 2), (1, 1)), ((1, 1), (2, 2)), ((3, 1), (2, 3))):
        for layout in ("contiguous", "channels_last"):
            h, w = int(torch.randint(2, 7, (1,), generator=gen)), int(torch.randint(2, 7, (1,), generator=gen))
            x = strided_input(gen, [2, 9, h, w], layout)
            # x: everything cropped before (pad0 <= -w*up), the output lives in pad1;
            # y: a huge pad0 so the first outputs see only zeros, a crop at the end.
            all_cropped = (-w * up[0] - int(torch.randint(0, 3, (1,), generator=gen)), w * up[0] + 9, 1, 2)
            far_padded = (1, 2, 2 * h * up[1] + 5, -1)
            for pad in (all_cropped, far_padded):
                _, got = run_harness(harness, harness.parent, x, f, up, down, pad, False, 1.5, path=path,
                                     y_channels_last=layout == "channels_last")
                want = reference(x, f, up, down, pad, False, 1.5)
                assert got.shape == want.shape
                assert_matches(got, want, 16)
                assert (want.abs().max() == 0) == (pad is all_cropped)
