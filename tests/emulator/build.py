"""Builds the CUDA emulator: csrc/*.cu compiled by the host C++ compiler into a shared library.

Each .cu file is copied with two rewrites that no macro can express (kernel launches and
__shared__ declarations, see emu.h), then compiled as C++17 with emu.h force-included and linked
with runtime.cpp (the fiber scheduler) and entry.cpp (the C entry points kernels.py calls).
A `#line` directive keeps compiler and AddressSanitizer messages pointing at the csrc/ lines.

Builds are cached under $STYLEGAN2_EMU_CACHE (default ~/.cache/stylegan2_ops/emulator), one
folder per hash of every input (sources, flags, compiler), built in a temporary folder and
renamed into place, so concurrent test processes never see half a library.

    python tests/emulator/build.py [--sanitize address]    # prints the library's path
"""
from __future__ import annotations

import argparse
import concurrent.futures
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CSRC = ROOT / "csrc"
KERNEL_SOURCES = ("bias_act.cu", "upfirdn2d.cu", "modulated_conv.cu")
ENV_CACHE = "STYLEGAN2_EMU_CACHE"
SANITIZERS = (None, "address")


class EmulatorBuildError(RuntimeError):
    """The host compiler or the CUDA headers are missing, or a source failed to compile."""


# `__shared__ float s[A][B];` -> `SG2_EMU_SHARED(float, s, [A][B]);`
_SHARED = re.compile(r"__shared__\s+(?P<type>[A-Za-z_][\w:<>, ]*?)\s+(?P<name>[A-Za-z_]\w*)\s*"
                     r"(?P<dims>(?:\[[^\]]*\]\s*)*);")


def _matching(src: str, start: int, open_c: str, close_c: str, step: int) -> int:
    """The index of the bracket that closes the one at `start`, scanning by `step` (+1 or -1)."""
    depth, i = 0, start
    while 0 <= i < len(src):
        if src[i] == open_c:
            depth += 1
        elif src[i] == close_c:
            depth -= 1
            if depth == 0:
                return i
        i += step
    raise EmulatorBuildError(f"unbalanced {open_c}{close_c} near: {src[max(0, start - 60):start + 60]!r}")


def rewrite(src: str) -> tuple[str, int, int]:
    """Returns (rewritten source, launches rewritten, __shared__ declarations rewritten)."""
    src, shared = _SHARED.subn(
        lambda m: f"SG2_EMU_SHARED({m['type'].strip()}, {m['name']}, {''.join(m['dims'].split())});", src)
    launches = 0
    while (i := src.find("<<<")) >= 0:
        j = src.find(">>>", i)
        if j < 0:
            raise EmulatorBuildError("a '<<<' without '>>>'")
        config = src[i + 3:j]
        # The kernel: an identifier, possibly qualified, possibly with template arguments.
        k = i
        while src[k - 1].isspace():
            k -= 1
        name_end = k
        if src[k - 1] == ">":
            k = _matching(src, k - 1, ">", "<", -1)
        while k > 0 and (src[k - 1].isalnum() or src[k - 1] in "_:"):
            k -= 1
        kernel = src[k:name_end]
        p = j + 3
        while src[p].isspace():
            p += 1
        if src[p] != "(":
            raise EmulatorBuildError(f"launch of {kernel} has no argument list")
        q = _matching(src, p, "(", ")", +1)
        args = src[p + 1:q]
        call = f"::sg2emu::launch(::sg2emu::LaunchConfig{{{config}}}, {kernel}"
        call += f", {args})" if args.strip() else ")"
        src = src[:k] + call + src[q + 1:]
        launches += 1
    return src, launches, shared


def _cuda_include() -> Path:
    sys_path = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = [Path(sys_path)] if sys_path else []
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(nvcc).resolve()
        candidates.append(real.parent.parent)
        # A wrapper script on PATH names the real toolkit (this project's machines have one).
        try:
            text = real.read_text(errors="ignore")[:4096]
            candidates += [Path(m).parent.parent for m in re.findall(r"(/\S+/bin/nvcc)", text)]
        except OSError:
            pass
    candidates += [Path("/usr/local/cuda")] + sorted(Path("/usr/local").glob("cuda-*"), reverse=True)
    for c in candidates:
        if (c / "include" / "cuda_fp16.h").exists() and (c / "include" / "cuda_runtime.h").exists():
            return c / "include"
    raise EmulatorBuildError("the CUDA headers (cuda_runtime.h, cuda_fp16.h) were not found; set CUDA_HOME")


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise EmulatorBuildError("no host C++ compiler (g++) found")
    return cxx


def _flags(sanitize: Optional[str]) -> list[str]:
    flags = ["-std=c++17", "-fPIC", "-O1", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function"]
    if sanitize == "address":
        flags += ["-g", "-fsanitize=address", "-fno-omit-frame-pointer"]
    return flags


def _key(sources: Sequence[Path], cxx: str, flags: list[str], include: Path) -> str:
    h = hashlib.sha256()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    h.update(version.encode())
    h.update(" ".join(flags).encode())
    h.update(str(include).encode())
    inputs = sorted(set(sources) | set(CSRC.glob("*.h")) | set(CSRC.glob("*.cuh")) | set(HERE.glob("*.h"))
                    | {HERE / "runtime.cpp", HERE / "build.py"})
    for f in inputs:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cache_root() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "stylegan2_ops" / "emulator"


def build_library(cu_sources: Sequence[Path], cpp_sources: Sequence[Path], name: str,
                  sanitize: Optional[str] = None) -> Path:
    """Compiles .cu files (rewritten, emu.h force-included) and plain .cpp files with the runtime
    into lib<name>.so; returns its path (cached)."""
    if sanitize not in SANITIZERS:
        raise ValueError(f"sanitize must be one of {SANITIZERS}, got {sanitize!r}")
    cxx, include, flags = _compiler(), _cuda_include(), _flags(sanitize)
    key = _key(list(cu_sources) + list(cpp_sources), cxx, flags, include)
    folder = cache_root() / f"{name}-{sanitize or 'plain'}-{key}"
    lib = folder / f"lib{name}.so"
    if lib.exists():
        return lib
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the OS if this process dies
        if lib.exists():
            return lib
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{name}-") as tmp:
            work = Path(tmp)
            jobs = []
            for cu in cu_sources:
                text, launches, _ = rewrite(cu.read_text())
                if "<<<" in cu.read_text() and launches == 0:
                    raise EmulatorBuildError(f"{cu}: no launch was rewritten")
                out = work / (cu.stem + ".emu.cpp")
                out.write_text(f'#line 1 "{cu}"\n' + text)
                jobs.append([cxx, *flags, "-include", str(HERE / "emu.h"), f"-I{cu.parent}", f"-I{CSRC}",
                             f"-I{HERE}", f"-I{include}", "-c", str(out), "-o", str(work / (cu.stem + ".o"))])
            for cpp in [HERE / "runtime.cpp", *cpp_sources]:
                jobs.append([cxx, *flags, f"-I{CSRC}", f"-I{HERE}", f"-I{include}", "-c", str(cpp), "-o",
                             str(work / (cpp.stem + ".o"))])
            with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
                results = list(pool.map(lambda cmd: subprocess.run(cmd, capture_output=True, text=True), jobs))
            for cmd, done in zip(jobs, results):
                if done.returncode != 0:
                    raise EmulatorBuildError(f"compiling {cmd[-3]} failed:\n{done.stderr[-6000:]}")
            # -Bsymbolic: the kernels call cudaGetLastError, which must be runtime.cpp's even when torch
            # has loaded the real libcudart into the process.
            objects = [str(o) for o in sorted(work.glob("*.o"))]
            link = [cxx, *flags, "-shared", "-Wl,-Bsymbolic", "-o", str(work / lib.name), *objects]
            done = subprocess.run(link, capture_output=True, text=True)
            if done.returncode != 0:
                raise EmulatorBuildError(f"linking {lib.name} failed:\n{done.stderr[-6000:]}")
            staged = folder.parent / f".{folder.name}.staged"
            shutil.rmtree(staged, ignore_errors=True)
            staged.mkdir()
            shutil.move(str(work / lib.name), str(staged / lib.name))
            os.replace(staged, folder)
        # Builds of earlier sources are never used again: keep the cache to one per variant. (A
        # process that still has an old library loaded keeps its mapping after the unlink.)
        for old in folder.parent.glob(f"{name}-{sanitize or 'plain'}-*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
    return lib


def build_kernels(sanitize: Optional[str] = None) -> Path:
    """The library of every kernel in csrc/, with entry.cpp's C entry points."""
    return build_library([CSRC / s for s in KERNEL_SOURCES], [HERE / "entry.cpp"], "sg2emu", sanitize)


def build_selftest(sanitize: Optional[str] = None) -> Path:
    """The library of selftest.cu: the emulator's own checks (test_emulator.py)."""
    return build_library([HERE / "selftest.cu"], [], "sg2emu_selftest", sanitize)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sanitize", choices=["address"], default=None)
    parser.add_argument("--selftest", action="store_true", help="build selftest.cu instead of csrc/")
    args = parser.parse_args()
    print(build_selftest(args.sanitize) if args.selftest else build_kernels(args.sanitize))


if __name__ == "__main__":
    main()
