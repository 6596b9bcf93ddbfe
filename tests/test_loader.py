"""The kernel loader and dispatch: prebuilt -> JIT -> reference, one warning, remembered failures,
locks that a killed process cannot leave behind, and finding CUDA behind a wrapper nvcc."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from stylegan2_ops import _dispatch, _loader, _toolchain


class FakeTensor(SimpleNamespace):
    """Stands in for a CUDA tensor in dispatch tests: choose() reads only is_cuda, dtype, device."""


def fake_cuda(dtype=torch.float32):
    return FakeTensor(is_cuda=True, dtype=dtype, device=torch.device("cuda", 0))


@pytest.fixture
def fresh_state(monkeypatch):
    """A loader that has tried nothing yet, as in a new process."""
    monkeypatch.setattr(_loader, "_state", _loader.LoadState())
    return _loader._state


def test_auto_falls_back_with_one_warning(fresh_state, monkeypatch):
    def no_kernels(force_build=False):
        fresh_state.tried, fresh_state.reason = True, "no prebuilt module; nvcc not found"
        return None

    monkeypatch.setattr(_loader, "load", no_kernels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            assert _dispatch.choose("bias_act", "auto", "bias_act_forward", {"x": fake_cuda()}) == "ref"
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert "nvcc not found" in messages[0] and "python -m stylegan2_ops doctor" in messages[0]


def test_cuda_mode_names_the_missing_piece(fresh_state, monkeypatch):
    monkeypatch.setattr(_loader, "load", lambda force_build=False: None)
    fresh_state.reason = "torch is a CPU-only build"
    with pytest.raises(_dispatch.KernelUnavailableError, match="CPU-only build.*doctor"):
        _dispatch.choose("bias_act", "cuda", "bias_act_forward", {"x": fake_cuda()})
    with pytest.raises(ValueError, match="dtype torch.float64"):
        _dispatch.choose("bias_act", "cuda", "bias_act_forward", {"x": fake_cuda(torch.float64)})
    with pytest.raises(ValueError, match="filter has 13 taps"):
        _dispatch.choose("upfirdn2d", "cuda", "upfirdn2d", {"x": fake_cuda()}, unsupported="filter has 13 taps")
    cpu = torch.zeros(1)
    with pytest.raises(ValueError, match="b is on cpu"):
        _dispatch.choose("bias_act", "cuda", "bias_act_forward", {"x": fake_cuda(), "b": cpu})


def test_auto_routes_uncovered_configs_and_missing_kernels_to_ref(fresh_state, monkeypatch):
    monkeypatch.setenv("STYLEGAN2_OPS_SELFCHECK", "0")  # tested in test_selfcheck.py
    module = SimpleNamespace(bias_act_forward=object())
    monkeypatch.setattr(_loader, "load", lambda force_build=False: module)
    monkeypatch.setattr(_loader, "kernel", lambda name: getattr(module, name, None))
    x = fake_cuda()
    assert _dispatch.choose("bias_act", "auto", "bias_act_forward", {"x": x}) == "cuda"
    assert _dispatch.choose("upfirdn2d", "auto", "upfirdn2d", {"x": x}) == "ref"  # no such kernel
    assert _dispatch.choose("bias_act", "auto", "bias_act_forward", {"x": x}, unsupported="too big") == "ref"
    assert _dispatch.choose("bias_act", "auto", "bias_act_forward", {"x": fake_cuda(torch.float64)}) == "ref"
    assert _dispatch.choose("bias_act", "ref", "bias_act_forward", {"x": x}) == "ref"
    with pytest.raises(_dispatch.KernelUnavailableError, match="no 'upfirdn2d' kernel"):
        _dispatch.choose("upfirdn2d", "cuda", "upfirdn2d", {"x": x})


# ---------------------------------------------------------------------------------------------
# JIT builds: run against a throwaway source tree whose build fails at once (no compiler time).


@pytest.fixture
def broken_sources(tmp_path, monkeypatch, fresh_state):
    """A csrc/ with one translation unit that cannot compile, and a private cache folder."""
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    (csrc / "bindings.cpp").write_text('#error "this source is broken on purpose"\n')
    monkeypatch.setattr(_toolchain, "CSRC_DIR", csrc)
    monkeypatch.setattr(_loader, "CSRC_DIR", csrc)
    monkeypatch.setenv("STYLEGAN2_OPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STYLEGAN2_OPS_REBUILD", raising=False)
    monkeypatch.delenv("STYLEGAN2_OPS_NO_JIT", raising=False)
    monkeypatch.setattr(_loader, "_prebuilt", lambda: (None, "no prebuilt module (test)"))
    for var in ("CUDA_HOME", "TORCH_CUDA_ARCH_LIST"):  # the loader sets them; undo after the test
        if var in os.environ:
            monkeypatch.setenv(var, os.environ[var])
        else:
            monkeypatch.delenv(var, raising=False)
    return csrc


def counting_build(monkeypatch, fail: bool = True):
    """Replaces cpp_extension.load; records calls and what the build folder held at the time."""
    from torch.utils import cpp_extension

    calls = []

    def fake_load(name, sources, build_directory, **kwargs):
        calls.append({"dir": build_directory, "lock_present": (Path(build_directory) / "lock").exists()})
        if fail:
            raise RuntimeError("Error building extension: bindings.cpp:1:2: error: #error this source is broken")
        return SimpleNamespace(__name__=name)

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    return calls


needs_cuda_torch = pytest.mark.skipif(
    torch.version.cuda is None or _toolchain.find_cuda_home()[0] is None,
    reason="needs a CUDA build of torch and a CUDA toolkit",
)


@needs_cuda_torch
def test_failed_build_is_remembered_and_not_retried(broken_sources, monkeypatch, fresh_state):
    calls = counting_build(monkeypatch)
    assert _loader.load() is None
    assert "JIT build failed" in fresh_state.reason and "#error" in fresh_state.reason
    assert _loader.load() is None  # same process: no second attempt
    assert len(calls) == 1
    marker = Path(calls[0]["dir"]) / _loader.failure_key()
    info = json.loads(marker.read_text())
    assert info["torch"] == torch.__version__ and "broken" in info["output"]

    monkeypatch.setattr(_loader, "_state", _loader.LoadState())  # a later process
    assert _loader.load() is None
    assert len(calls) == 1, "a remembered failure must not be rebuilt"
    assert "earlier JIT build of these sources failed" in _loader.state().reason

    monkeypatch.setattr(_loader, "_state", _loader.LoadState())
    monkeypatch.setenv("STYLEGAN2_OPS_REBUILD", "1")
    assert _loader.load() is None
    assert len(calls) == 2, "STYLEGAN2_OPS_REBUILD=1 asks again"


@needs_cuda_torch
def test_changed_sources_get_a_new_build(broken_sources, monkeypatch, fresh_state):
    calls = counting_build(monkeypatch)
    _loader.load()
    (broken_sources / "bindings.cpp").write_text('#error "broken differently"\n')
    monkeypatch.setattr(_loader, "_state", _loader.LoadState())
    _loader.load()
    assert len(calls) == 2 and calls[0]["dir"] != calls[1]["dir"]


@needs_cuda_torch
def test_stale_torch_lock_file_is_cleared(broken_sources, monkeypatch, fresh_state):
    calls = counting_build(monkeypatch, fail=False)
    build_dir = _loader.cache_root() / _loader.build_key()
    build_dir.mkdir(parents=True)
    (build_dir / "lock").write_text("left by a killed process")
    assert _loader.load() is not None
    assert calls[0]["lock_present"] is False
    assert _loader.state().source == "jit"


def test_lock_of_a_killed_process_does_not_hang(tmp_path):
    lock = tmp_path / "build.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, time
            f = open({str(lock)!r}, "a+")
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            print("held", flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        start = time.monotonic()
        with _loader._exclusive(lock):
            pass
        assert time.monotonic() - start < 10
    finally:
        if holder.poll() is None:
            holder.kill()


def test_no_jit_when_torch_has_no_cuda(monkeypatch, fresh_state):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(_loader, "_prebuilt", lambda: (None, "no prebuilt module (test)"))
    assert _loader.load() is None
    assert "CPU-only build" in fresh_state.reason


def test_source_hash_tracks_content(tmp_path, monkeypatch):
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    (csrc / "a.cu").write_text("int a;\n")
    monkeypatch.setattr(_toolchain, "CSRC_DIR", csrc)
    first = _toolchain.source_hash()
    (csrc / "a.cu").write_text("int b;\n")
    assert _toolchain.source_hash() != first
    assert [p.name for p in _toolchain.compiled_sources()] == ["a.cu"]


def test_import_builds_nothing():
    """Importing the package must not try to load or build kernels (CPU commands stay cheap)."""
    code = "import stylegan2_ops, stylegan2_ops._loader as L; print(L.state().tried)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# Finding the toolkit behind a wrapper nvcc


def make_toolkit(root: Path) -> Path:
    """A fake CUDA toolkit whose nvcc answers a dry run the way the real one does."""
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "lib64").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("")
    (root / "lib64" / "libcudart.so").write_text("")
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        case "$*" in
          *--list-gpu-arch*) echo compute_80; echo compute_90; echo compute_100 ;;
          *--dryrun*) echo '#$ _HERE_={root}/bin' >&2 ;;
          *) echo 'Cuda compilation tools, release 13.0, V13.0.1' ;;
        esac
    """))
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return root


def test_toolkit_found_behind_wrapper(tmp_path, monkeypatch):
    toolkit = make_toolkit(tmp_path / "opt" / "cuda-13.0")
    wrappers = tmp_path / "wrappers"
    wrappers.mkdir()
    wrapper = wrappers / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{wrappers}{os.pathsep}/usr/bin{os.pathsep}/bin")
    home, how = _toolchain.find_cuda_home()
    # The wrapper's own parent (tmp_path) has no headers; the dry run names the real toolkit.
    assert home is not None and Path(home) == toolkit.resolve(), how
    assert _toolchain.nvcc_version(home) == "13.0"
    assert _toolchain.default_arch_list(home) == "8.0;9.0+PTX"


def test_wrong_cuda_home_is_reported_not_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    home, how = _toolchain.find_cuda_home()
    assert home is None and "is not a CUDA toolkit" in how and str(tmp_path) in how


def test_arch_list_default_set_only_without_gpu(tmp_path, monkeypatch):
    toolkit = make_toolkit(tmp_path / "cuda")
    monkeypatch.setenv("CUDA_HOME", str(toolkit))
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    home, notes = _toolchain.prepare_build_env(visible_gpu=False)
    assert home == str(toolkit) and os.environ["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0+PTX"
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    _toolchain.prepare_build_env(visible_gpu=True)
    assert "TORCH_CUDA_ARCH_LIST" not in os.environ


def test_settled_load_traces_without_the_lock(fresh_state):
    """Once the loader has decided, load() returns without taking its lock: torch.compile cannot
    trace a lock (fullgraph=True would raise), and the kernel route calls load() per op."""
    import types

    module = types.ModuleType("fake_kernels")
    module.scale = lambda t: t * 3
    fresh_state.tried, fresh_state.module = True, module

    def f(x):
        return _loader.load().scale(x) + 1
    x = torch.randn(5, generator=torch.Generator().manual_seed(11))
    torch.compiler.reset()
    torch.testing.assert_close(torch.compile(f, backend="aot_eager", fullgraph=True)(x), x * 3 + 1)
    assert _loader.load() is module


def test_a_second_thread_waits_for_a_load_in_progress(fresh_state, monkeypatch):
    """While one thread is still loading (a JIT build can take minutes), another must wait for
    the result, not read a half-filled state through the lock-free path and fall back."""
    import threading
    import types

    module = types.ModuleType("fake_kernels")
    started = threading.Event()

    def slow_prebuilt():
        started.set()
        time.sleep(0.3)
        return module, "imported (test)"
    monkeypatch.setattr(_loader, "_prebuilt", slow_prebuilt)
    results = {}
    first = threading.Thread(target=lambda: results.setdefault("first", _loader.load()))
    first.start()
    assert started.wait(5)
    second = _loader.load()  # arrives mid-load
    first.join(5)
    assert results["first"] is module and second is module
    assert fresh_state.tried and fresh_state.source == "prebuilt" and fresh_state.reason == ""
