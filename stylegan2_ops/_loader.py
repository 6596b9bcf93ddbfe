"""Finds the compiled CUDA kernels: prebuilt module -> JIT build in a per-user cache -> none.

The order, and why:
1. `stylegan2_ops._kernels`, built by `pip install --no-build-isolation -e .`. Used when it imports
   and was built from the sources that are in the tree now (an edited .cu makes it stale).
2. A JIT build with torch.utils.cpp_extension.load and ninja, into
   `$STYLEGAN2_OPS_CACHE/<torch>-cu<cuda>-<source hash>/`. An exclusive flock guards the build, so
   two processes never build at once; the kernel releases a flock when its holder dies, so a
   killed build never leaves a lock that hangs the next process (torch's own lock file would).
3. Nothing: the ops run their PyTorch references, and ONE warning says why.

A failed JIT build is not retried in this process, and is remembered on disk (keyed by torch,
CUDA, sources, architectures and Python) so later processes skip it too, until the sources or
toolchain change or STYLEGAN2_OPS_REBUILD=1 / `python -m stylegan2_ops doctor --build` asks again.

Nothing here runs at import: the first op that meets a CUDA tensor asks for the kernels.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import platform
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Optional

import torch

from . import _toolchain

CSRC_DIR = _toolchain.CSRC_DIR
PREBUILT_MODULE = "stylegan2_ops._kernels"

ENV_CACHE = "STYLEGAN2_OPS_CACHE"
ENV_REBUILD = "STYLEGAN2_OPS_REBUILD"
ENV_NO_JIT = "STYLEGAN2_OPS_NO_JIT"
ENV_VERBOSE = "STYLEGAN2_OPS_VERBOSE"

source_files = _toolchain.source_files
compiled_sources = _toolchain.compiled_sources
source_hash = _toolchain.source_hash


def cache_root() -> Path:
    """$STYLEGAN2_OPS_CACHE, else $XDG_CACHE_HOME/stylegan2_ops, else ~/.cache/stylegan2_ops."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stylegan2_ops"


def build_key() -> str:
    """Names the JIT build folder: one per torch version, CUDA version and source hash."""
    return f"torch{torch.__version__.replace('+', '_')}-cu{torch.version.cuda}-{source_hash()}"


def failure_key() -> str:
    """A failed build is remembered per build key, architecture list and Python version."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible-gpus")
    arch_hash = hashlib.sha256(archs.encode()).hexdigest()[:8]
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    return f"failed-{arch_hash}-{py}.json"


@dataclass
class LoadState:
    """What the loader found; filled once per process."""

    tried: bool = False
    module: Optional[ModuleType] = None
    source: str = ""  # 'prebuilt' or 'jit'
    reason: str = ""  # why there is no module (when module is None)
    log: list[str] = field(default_factory=list)  # each step, for doctor
    compiler_output: str = ""  # the build error, when a build failed
    warned: bool = False


_state = LoadState()
_lock = threading.Lock()


def state() -> LoadState:
    return _state


def _prebuilt() -> tuple[Optional[ModuleType], str]:
    try:
        module = importlib.import_module(PREBUILT_MODULE)
    except ImportError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, ModuleNotFoundError) and e.name == PREBUILT_MODULE:
            return None, "no prebuilt module (the package was installed without compiling kernels)"
        return None, f"the prebuilt module does not import ({msg}); was torch changed since the build?"
    built_from = getattr(module, "SOURCE_HASH", None)
    if source_files() and built_from != source_hash():
        return None, "the prebuilt module was compiled from other sources than those in csrc/ now"
    return module, "prebuilt module imported"


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock, released by the OS if this process dies."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        if os.name == "nt":  # pragma: no cover - Windows
            import msvcrt

            while True:
                try:
                    msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    time.sleep(1)
            try:
                yield
            finally:
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"stylegan2_ops: waiting for another process to finish building the kernels ({lock_path})",
                      file=sys.stderr, flush=True)
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _jit(force: bool) -> tuple[Optional[ModuleType], str, str]:
    """Builds (or reuses) the JIT module. Returns (module, message, compiler output)."""
    if torch.version.cuda is None:
        return None, f"torch {torch.__version__} is a CPU-only build; install a CUDA build of torch", ""
    if not compiled_sources():
        return None, f"no kernel sources at {CSRC_DIR} to build from", ""
    if os.environ.get(ENV_NO_JIT) == "1" and not force:
        return None, f"JIT builds are disabled by {ENV_NO_JIT}=1", ""
    home, notes = _toolchain.prepare_build_env(visible_gpu=torch.cuda.is_available())
    if home is None:
        return None, notes[0], ""
    from torch.utils import cpp_extension

    # cpp_extension read CUDA_HOME when it was first imported; if that was before us (another
    # library imported it), it may hold torch's wrong guess. Tell it what we found.
    if cpp_extension.CUDA_HOME != home:
        cpp_extension.CUDA_HOME = home

    key = build_key()
    root = cache_root()
    build_dir = root / key
    failed_marker = build_dir / failure_key()
    rebuild = force or os.environ.get(ENV_REBUILD) == "1"
    if failed_marker.exists() and not rebuild:
        try:
            info = json.loads(failed_marker.read_text())
        except (OSError, ValueError):
            info = {}
        return None, (
            f"an earlier JIT build of these sources failed ({info.get('error', 'see the log')}); "
            f"not retrying until the sources or toolchain change or {ENV_REBUILD}=1"
        ), info.get("output", "")

    name = f"stylegan2_ops_kernels_{source_hash()}"
    with _exclusive(root / f"{key}.lock"):
        build_dir.mkdir(parents=True, exist_ok=True)
        # torch's own baton file: a process killed mid-build leaves it behind and every later
        # load() would wait on it forever. We hold the real lock, so any such file is stale.
        with contextlib.suppress(FileNotFoundError):
            (build_dir / "lock").unlink()
        if rebuild:
            with contextlib.suppress(FileNotFoundError):
                failed_marker.unlink()
        already = (build_dir / f"{name}.so").exists() or (build_dir / f"{name}.pyd").exists()
        if not already:
            print(
                f"stylegan2_ops: compiling the CUDA kernels into {build_dir} "
                "(first use only; a few minutes)...",
                file=sys.stderr, flush=True,
            )
        try:
            module = cpp_extension.load(
                name=name,
                sources=[str(p) for p in compiled_sources()],
                extra_cflags=_toolchain.CXX_FLAGS + [f"-DSG2_SOURCE_HASH={source_hash()}"],
                extra_cuda_cflags=_toolchain.NVCC_FLAGS,
                extra_include_paths=[str(CSRC_DIR)],
                build_directory=str(build_dir),
                verbose=os.environ.get(ENV_VERBOSE) == "1",
            )
        except Exception as e:  # a compile or link error: remember it, fall back
            output = str(e)
            first = next((ln for ln in output.splitlines() if "error" in ln.lower()), output[:200])
            failed_marker.write_text(json.dumps({
                "error": first.strip()[:300],
                "output": output[-20000:],
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "archs": os.environ.get("TORCH_CUDA_ARCH_LIST", ""),
                "python": platform.python_version(),
                "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            }, indent=1))
            return None, f"the JIT build failed: {first.strip()[:300]}", output
    return module, f"JIT module from {build_dir}", ""


def jit_status() -> str:
    """What the JIT cache holds for the current sources and toolchain; builds nothing."""
    if torch.version.cuda is None:
        return "not applicable (CPU-only torch)"
    build_dir = cache_root() / build_key()
    name = f"stylegan2_ops_kernels_{source_hash()}"
    if (build_dir / f"{name}.so").exists() or (build_dir / f"{name}.pyd").exists():
        return f"built, at {build_dir}"
    marker = build_dir / failure_key()
    if marker.exists():
        try:
            error = json.loads(marker.read_text()).get("error", "")
        except (OSError, ValueError):
            error = ""
        return f"a previous build FAILED ({error}); remembered at {marker}"
    return f"not built yet (would build into {build_dir})"


# Test-only: a stand-in for the kernel module (the CPU emulator of csrc/ under tests/emulator/).
# Set only by kernel_module_override(); nothing in the package sets it.
_override: Optional[object] = None


@contextlib.contextmanager
def kernel_module_override(module: object) -> Iterator[object]:
    """Test-only switch: within the block, load() returns `module` instead of the compiled kernels.

    A module with RUNS_ON_CPU = True (the emulator) also lets impl='cuda' take CPU tensors
    (_dispatch.choose), so the autograd Functions run the real kernel code end to end on the CPU.
    impl='auto' never routes CPU tensors to it.
    """
    global _override
    previous, _override = _override, module
    try:
        yield module
    finally:
        _override = previous


def emulated_on_cpu() -> bool:
    """Whether impl='cuda' may take CPU tensors: only inside kernel_module_override(emulator)."""
    return _override is not None and bool(getattr(_override, "RUNS_ON_CPU", False))


def load(force_build: bool = False) -> Optional[ModuleType]:
    """Returns the kernel module, or None. Tries at most once per process unless force_build."""
    if _override is not None:
        return _override  # type: ignore[return-value]
    if _state.tried and not force_build:
        # Settled: no lock needed (and torch.compile cannot trace one, so the kernel route
        # would break the graph at every op call). `tried` is set only after everything else,
        # so a thread that sees it also sees the module and the reason.
        return _state.module
    with _lock:
        if _state.tried and not force_build:
            return _state.module
        log: list[str] = []
        output = ""
        try:
            module, msg = _prebuilt()
            log.append(f"prebuilt: {msg}")
            if module is not None and not force_build:
                source, reason = "prebuilt", ""
            else:
                try:
                    module, msg, output = _jit(force=force_build)
                except Exception as e:  # never let a loader bug take the ops down: fall back loudly
                    module, msg, output = None, f"the JIT loader failed: {e!r}", traceback.format_exc()
                log.append(f"jit: {msg}")
                source, reason = ("jit", "") if module is not None else ("", msg)
        except Exception as e:  # the prebuilt probe itself failed (not just an ImportError)
            module, source, reason = None, "", f"the kernel loader failed: {e!r}"
            output = traceback.format_exc()
            log.append(f"loader: {reason}")
        _state.log[:] = log
        _state.module, _state.source, _state.reason, _state.compiler_output = module, source, reason, output
        _state.tried = True  # last: publishes the fields above to the lock-free fast path
        return module


def warn_fallback_once(op: str) -> None:
    """The single warning a process gets when CUDA tensors run on the references."""
    if _state.warned:
        return
    _state.warned = True
    warnings.warn(
        f"stylegan2_ops: CUDA kernels unavailable ({_state.reason}); {op} and the other ops run "
        "their slower PyTorch references. Run `python -m stylegan2_ops doctor` for details.",
        RuntimeWarning,
        stacklevel=4,
    )


def kernel_call(registered_op: Callable, name: str, module_tail: tuple[Any, ...] = ()) -> Callable:
    """A caller of compiled function `name`: through its torch.library op while torch.compile
    traces (the op's fake implementation gives shapes), straight to the module otherwise, since
    at StyleGAN2's small layers the dispatcher's overhead would rival the kernel itself.
    module_tail: trailing arguments the compiled function takes and the registered op does not
    expose (the op passes the same values itself)."""

    def call(*args):
        if torch.compiler.is_compiling():
            return registered_op(*args)
        return getattr(load(), name)(*args, *module_tail)

    return call


def kernel(name: str) -> Optional[object]:
    """The compiled function `name`, or None if the module or that function is missing."""
    module = load()
    return getattr(module, name, None) if module is not None else None
