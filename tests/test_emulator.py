"""The CPU emulator of the CUDA kernels (tests/emulator/) tested on its own.

The kernel tests (test_*_cuda.py with `emu-` ids) trust the emulator to behave like a GPU where
it matters: barriers, shared memory, warp collectives, atomics, launch geometry. Here each
construct runs in kernels written for the purpose (emulator/selftest.cu): the correct uses give
the values a GPU gives (computed independently in Python), and each misuse the emulator promises
to report (a missing barrier, a shuffle half a warp never reaches, a lane read outside the mask,
a deadlock, an invalid launch, an out-of-bounds write under AddressSanitizer) is reported, in
every thread order.
"""
from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emulator import build
from emulator.kernels import MAX_FACTOR, MAX_TAPS, ORDERS

pytestmark = pytest.mark.emulator

HERE = Path(__file__).resolve().parent
ORDER_NAMES = list(ORDERS)


@pytest.fixture(scope="module")
def selftest() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(build.build_selftest()))
    except build.EmulatorBuildError as e:
        pytest.skip(f"the CPU emulator cannot be built here: {e}")
    lib.sg2emu_last_message.restype = ctypes.c_char_p
    lib.sg2emu_set_order.argtypes = [ctypes.c_int, ctypes.c_ulonglong]
    return lib


def ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)  # a bare int would pass as a 32-bit C int


def message(lib: ctypes.CDLL) -> str:
    text = lib.sg2emu_last_message().decode()
    lib.sg2emu_clear_error()
    return text


@pytest.mark.parametrize("order", ORDER_NAMES)
def test_barrier_orders_shared_memory_exchange(selftest, order, gen):
    selftest.sg2emu_set_order(ORDERS[order], 3)
    blocks = 3
    x = torch.randn(blocks * 64, generator=gen).numpy().astype(np.float32)
    out = np.full_like(x, np.nan)
    assert selftest.selftest_neighbour(ptr(x), ptr(out), blocks, 1) == 0, message(selftest)
    want = x.reshape(blocks, 64)[:, (np.arange(64) + 1) % 64].reshape(-1)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_missing_barrier_is_caught_in_each_order(selftest, order, gen):
    """Without __syncthreads some thread reads a neighbour's slot before it is written: the slot
    still holds the poison (NaN) the block started with."""
    selftest.sg2emu_set_order(ORDERS[order], 0)
    x = torch.randn(64, generator=gen).numpy().astype(np.float32)
    out = np.zeros_like(x)
    assert selftest.selftest_neighbour(ptr(x), ptr(out), 1, 0) == 0, message(selftest)
    assert np.isnan(out).any(), "the missing barrier went unnoticed"


def expected_collectives(v: np.ndarray) -> np.ndarray:
    """What a GPU gives for collectives_kernel, from the definitions of the intrinsics."""
    out = np.zeros((v.size, 8), dtype=np.int64)
    for i in range(v.size):
        lane, base = i % 32, i // 32 * 32
        warp = v[base:base + 32]
        out[i, 0] = warp[5]
        out[i, 1] = warp[lane - 3] if lane >= 3 else v[i]
        out[i, 2] = warp[lane + 3] if lane + 3 < 32 else v[i]
        out[i, 3] = warp[lane ^ 9]
        out[i, 4] = sum(1 << k for k in range(32) if warp[k] & 1)
        out[i, 5] = int((warp > 90).any())
        out[i, 6] = int((warp >= 0).all())
        out[i, 7] = warp[lane ^ 1] if lane < 16 else v[i]
    return out.astype(np.uint32).view(np.int32)


@pytest.mark.parametrize("order", ORDER_NAMES)
def test_warp_collectives_give_the_gpu_values(selftest, order, gen):
    selftest.sg2emu_set_order(ORDERS[order], 11)
    blocks = 2
    v = torch.randint(-5, 100, (blocks * 64,), generator=gen).numpy().astype(np.int32)
    out = np.zeros((blocks * 64, 8), dtype=np.int32)
    assert selftest.selftest_collectives(ptr(v), ptr(out), blocks) == 0, message(selftest)
    np.testing.assert_array_equal(out, expected_collectives(v.astype(np.int64)))


@pytest.mark.parametrize("order", ORDER_NAMES)
def test_shuffle_reached_by_half_a_warp_is_reported(selftest, order):
    selftest.sg2emu_set_order(ORDERS[order], 5)
    out = np.zeros(32, dtype=np.float32)
    assert selftest.selftest_half_warp(ptr(out)) != 0
    text = message(selftest)
    assert "__shfl_xor_sync" in text and "exited without reaching it" in text, text


@pytest.mark.parametrize("order", ORDER_NAMES)
def test_reading_a_lane_outside_the_mask_is_reported(selftest, order):
    selftest.sg2emu_set_order(ORDERS[order], 5)
    out = np.zeros(32, dtype=np.float32)
    assert selftest.selftest_outside_mask(ptr(out)) != 0
    assert "not in the mask" in message(selftest)


@pytest.mark.parametrize("order", ORDER_NAMES)
def test_deadlock_is_reported_not_hung(selftest, order):
    selftest.sg2emu_set_order(ORDERS[order], 5)
    out = np.zeros(32, dtype=np.float32)
    assert selftest.selftest_deadlock(ptr(out)) != 0
    text = message(selftest)
    assert "deadlock" in text and "__syncthreads" in text and "__shfl_xor_sync" in text, text


def test_atomics_add_every_contribution(selftest):
    counter = np.zeros(1, dtype=np.int32)
    total = np.zeros(1, dtype=np.float32)
    assert selftest.selftest_atomics(ptr(counter), ptr(total), 7, 96) == 0, message(selftest)
    assert counter[0] == 7 * 96 and total[0] == pytest.approx(7 * 96 * 0.5)


@pytest.mark.parametrize("grid,block", [((3, 2, 2), (4, 3, 2)), ((1, 1, 1), (33, 1, 1)), ((5, 1, 1), (8, 8, 1))])
def test_launch_geometry(selftest, grid, block):
    n = int(np.prod(grid)) * int(np.prod(block))
    out = np.full(n, -1, dtype=np.int32)
    assert selftest.selftest_geometry(ptr(out), *grid, *block) == 0, message(selftest)
    threads = int(np.prod(block))
    want = np.array([b * 1000 + t for b in range(int(np.prod(grid))) for t in range(threads)], dtype=np.int32)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("grid,block", [((1, 1, 1), (2048, 1, 1)), ((1, 70000, 1), (32, 1, 1)), ((0, 1, 1), (32, 1, 1))])
def test_invalid_launch_configuration_is_an_error(selftest, grid, block):
    out = np.zeros(64, dtype=np.int32)
    assert selftest.selftest_geometry(ptr(out), *grid, *block) == 9  # cudaErrorInvalidConfiguration
    assert "invalid launch configuration" in message(selftest)
    assert (out == 0).all(), "an invalid launch ran"


def test_rewrite_of_launches_and_shared_declarations():
    src = ("template <class T> __global__ void k(T* p) { __shared__ float a[4 * 2][3]; __shared__ int n; }\n"
           "void f(float* p, cudaStream_t s) {\n  k<float><<<dim3(2, 1), 64, 0, s>>>(\n      p);\n"
           "  ns::g<<<1, 32>>>();\n}\n")
    out, launches, shared = build.rewrite(src)
    assert (launches, shared) == (2, 2)
    assert "SG2_EMU_SHARED(float, a, [4*2][3]);" in out and "SG2_EMU_SHARED(int, n, );" in out
    assert "::sg2emu::launch(::sg2emu::LaunchConfig{dim3(2, 1), 64, 0, s}, k<float>, \n      p);" in out
    assert "::sg2emu::launch(::sg2emu::LaunchConfig{1, 32}, ns::g);" in out
    assert out.count("\n") == src.count("\n"), "line numbers must survive the rewrite"


def test_every_csrc_launch_and_shared_array_is_rewritten():
    for name in build.KERNEL_SOURCES:
        text = (build.CSRC / name).read_text()
        out, launches, shared = build.rewrite(text)
        assert launches == text.count("<<<") and "<<<" not in out
        assert shared == len(re.findall(r"__shared__", text)) and "__shared__" not in out


def test_python_limits_match_the_kernel_header():
    header = (build.CSRC / "upfirdn2d.h").read_text()
    assert f"kUpfirdn2dMaxTaps = {MAX_TAPS};" in header
    assert f"kUpfirdn2dMaxFactor = {MAX_FACTOR};" in header


# ---------------------------------------------------------------------------------------------
# AddressSanitizer: the emulated kernels built with -fsanitize=address, run in a subprocess that
# preloads the sanitizer runtime (the Python interpreter itself is not instrumented).


def asan_env() -> dict[str, str]:
    runtime = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not runtime or not Path(runtime).exists():
        pytest.skip("no AddressSanitizer runtime (libasan.so) for g++")
    env = dict(os.environ, LD_PRELOAD=runtime, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def asan_selftest() -> Path:
    try:
        return build.build_selftest("address")
    except build.EmulatorBuildError as e:
        pytest.skip(f"the AddressSanitizer build failed here: {e}")


@pytest.mark.parametrize("call,statement", [
    ("selftest_overflow(ctypes.c_void_p(out.ctypes.data), 5000)", "if (i <= n) out[i] = 1.f;"),  # global memory
    ("selftest_shared_overflow(ctypes.c_void_p(out.ctypes.data))", "s[threadIdx.x + 1] = 1.f;"),  # shared memory
])
def test_asan_build_reports_an_out_of_bounds_write_with_its_line(asan_selftest, call, statement):
    code = ("import ctypes, numpy as np, sys\n"
            f"lib = ctypes.CDLL({str(asan_selftest)!r})\n"
            "out = np.zeros(5000, dtype=np.float32)\n"
            f"lib.{call}\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=asan_env(), timeout=120)
    assert done.returncode != 0
    assert "heap-buffer-overflow" in done.stderr and "WRITE of size 4" in done.stderr, done.stderr[-3000:]
    line = next(i for i, t in enumerate((HERE / "emulator" / "selftest.cu").read_text().splitlines(), 1)
                if statement in t)
    assert f"selftest.cu:{line}" in done.stderr, done.stderr[-3000:]


def test_asan_build_runs_every_kernel_cleanly():
    """A subset of every kernel entry point (emulator/asan_subset.py) under AddressSanitizer: no
    out-of-bounds access in global or shared memory, results still match the references."""
    try:
        build.build_kernels("address")
    except build.EmulatorBuildError as e:
        pytest.skip(f"the AddressSanitizer build failed here: {e}")
    done = subprocess.run([sys.executable, str(HERE / "emulator" / "asan_subset.py")], capture_output=True,
                          text=True, env=asan_env(), timeout=900, cwd=str(HERE.parent))
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "ok:" in done.stdout, done.stdout[-2000:]


# ---------------------------------------------------------------------------------------------
# The test-only switch in stylegan2_ops.


def test_switch_reaches_impl_cuda_only_and_is_undone(emulator_library, gen):
    from emulator import emulated_kernels, routed
    from stylegan2_ops import _dispatch, _loader, bias_act

    x = torch.randn(2, 3, 4, 4, generator=gen)
    kernels = emulated_kernels("forward")
    with routed(kernels):
        # auto keeps CPU tensors on the references even while the emulator is routed in.
        assert _dispatch.choose("bias_act", "auto", "bias_act_forward", {"x": x}) == "ref"
        assert _dispatch.choose("bias_act", "cuda", "bias_act_forward", {"x": x}) == "cuda"
        assert _loader.load() is kernels
        y = bias_act(x, act="lrelu", impl="cuda")
        torch.testing.assert_close(y, bias_act(x, act="lrelu", impl="ref"))
    assert _loader.load() is not kernels
    with pytest.raises(ValueError, match="CUDA tensors"):
        bias_act(x, act="lrelu", impl="cuda")
