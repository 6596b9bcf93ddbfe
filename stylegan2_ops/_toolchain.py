"""Finds the CUDA toolkit and picks target architectures, for setup.py, the JIT loader and doctor.

Standard library only: setup.py loads this file by path, possibly in an environment where torch
is not importable, so nothing here may import torch or the rest of the package.

Why this exists: torch's build helper guesses CUDA_HOME from the `nvcc` on PATH by going two
folders up. When that nvcc is a wrapper script (/usr/local/bin/nvcc -> exec the real one), the
guess is /usr/local, which has no CUDA headers or libcudart, and linking fails with
"cannot find -lcudart". We ask nvcc itself where it lives instead.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

# Architectures built when no GPU is visible and TORCH_CUDA_ARCH_LIST is unset: Turing (T4),
# Ampere (A100, RTX 30xx), Ada (RTX 40xx, L4) and Hopper, plus PTX so newer GPUs can JIT.
# CUDA 13 dropped everything below compute capability 7.5.
DEFAULT_ARCH_LIST = "7.5;8.0;8.6;8.9;9.0+PTX"

# csrc/ sits beside the package in a source checkout (editable installs use it in place).
CSRC_DIR = Path(__file__).resolve().parent.parent / "csrc"

# Flags shared by setup.py and the JIT loader, so both compile the same module. No -std: torch
# adds the standard its headers need (C++17 up to 2.13, C++20 from 2.14).
CXX_FLAGS = ["-O3"]
NVCC_FLAGS = ["-O3", "--use_fast_math", "-lineinfo"]


def source_files() -> list[Path]:
    """Every kernel source and header; all of them feed the hash."""
    if not CSRC_DIR.is_dir():
        return []
    return sorted(p for p in CSRC_DIR.iterdir() if p.suffix in (".cpp", ".cu", ".h", ".cuh"))


def compiled_sources() -> list[Path]:
    """The translation units: one bindings .cpp and one .cu per op family."""
    return [p for p in source_files() if p.suffix in (".cpp", ".cu")]


def source_hash() -> str:
    """A hash of every source file's name and bytes and of the compiler flags.

    Both builds stamp it into the module (SG2_SOURCE_HASH), so the loader can tell a prebuilt
    module compiled from sources that have since been edited.
    """
    h = hashlib.sha256()
    for p in source_files():
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(" ".join(CXX_FLAGS + NVCC_FLAGS).encode())
    return h.hexdigest()[:16]


def _is_toolkit(folder: Path) -> bool:
    """A usable toolkit folder has nvcc, the runtime header and libcudart."""
    has_nvcc = (folder / "bin" / "nvcc").exists() or (folder / "bin" / "nvcc.exe").exists()
    has_header = (folder / "include" / "cuda_runtime.h").exists()
    has_lib = any(
        (folder / sub / name).exists()
        for sub in ("lib64", "lib", "lib/x64", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib")
        for name in ("libcudart.so", "cudart.lib")
    )
    return has_nvcc and has_header and has_lib


def _toolkit_from_nvcc(nvcc: str) -> Optional[Path]:
    """Asks nvcc (possibly a wrapper) where its toolkit is, via its dry-run variables."""
    direct = Path(nvcc).resolve().parent.parent
    if _is_toolkit(direct):
        return direct
    try:
        out = subprocess.run(
            [nvcc, "--dryrun", "-c", "probe.cu", "-o", os.devnull],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    # A dry run prints nvcc's variables, like "#$ _HERE_=/usr/local/cuda-13.0/bin"; the file
    # need not exist because nothing is compiled.
    for line in (out.stdout + out.stderr).splitlines():
        m = re.match(r"#\$\s*(TOP|_HERE_|_THE_PREFIX_)=(.+)", line.strip())
        if m:
            candidate = Path(m.group(2).strip())
            for folder in (candidate, candidate.parent):
                folder = folder.resolve()
                if _is_toolkit(folder):
                    return folder
    return None


def find_cuda_home() -> tuple[Optional[str], str]:
    """Returns (toolkit folder or None, how it was found or why not)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value:
            if _is_toolkit(Path(value)):
                return str(Path(value)), f"from ${var}"
            # A wrong CUDA_HOME is a user setting: say so rather than silently overriding it.
            return None, (
                f"${var}={value} is not a CUDA toolkit (it needs bin/nvcc, include/cuda_runtime.h "
                f"and lib64/libcudart.so); point {var} at the folder that holds them"
            )
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = _toolkit_from_nvcc(nvcc)
        if home is not None:
            return str(home), f"from the nvcc on PATH ({nvcc})"
    for candidate in [Path("/usr/local/cuda"), *sorted(Path("/usr/local").glob("cuda-*"), reverse=True)]:
        if _is_toolkit(candidate):
            return str(candidate.resolve()), f"found at {candidate}"
    if nvcc:
        return None, (
            f"nvcc is on PATH ({nvcc}) but no toolkit with headers and libcudart was found "
            "beside it; set CUDA_HOME to the CUDA toolkit folder"
        )
    return None, "nvcc not found: install the CUDA toolkit or set CUDA_HOME to it"


def nvcc_version(cuda_home: str) -> Optional[str]:
    """The release number nvcc reports, like '13.0', or None."""
    try:
        out = subprocess.run(
            [str(Path(cuda_home) / "bin" / "nvcc"), "--version"],
            capture_output=True, text=True, timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def supported_archs(cuda_home: str) -> Optional[set[str]]:
    """Compute capabilities this nvcc can target, like {'7.5', '9.0'}; None if unknown."""
    try:
        out = subprocess.run(
            [str(Path(cuda_home) / "bin" / "nvcc"), "--list-gpu-arch"],
            capture_output=True, text=True, timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    archs = set()
    for m in re.finditer(r"compute_(\d+)(\d)\b", out):
        archs.add(f"{m.group(1)}.{m.group(2)}")
    return archs or None


def default_arch_list(cuda_home: Optional[str]) -> str:
    """DEFAULT_ARCH_LIST without the entries this nvcc cannot build."""
    wanted = DEFAULT_ARCH_LIST.split(";")
    known = supported_archs(cuda_home) if cuda_home else None
    if not known:
        return DEFAULT_ARCH_LIST
    kept = [a for a in wanted if a.replace("+PTX", "") in known]
    if not kept:  # a toolkit newer than this list: build for the newest it knows, with PTX
        newest = max(known, key=lambda a: tuple(int(p) for p in a.split(".")))
        kept = [newest + "+PTX"]
    return ";".join(kept)


def prepare_build_env(visible_gpu: bool) -> tuple[Optional[str], list[str]]:
    """Sets CUDA_HOME and, where needed, TORCH_CUDA_ARCH_LIST in os.environ.

    Must run before torch.utils.cpp_extension is imported, which reads CUDA_HOME once at import.
    Returns (cuda_home or None, human-readable lines saying what was decided).
    """
    notes = []
    home, how = find_cuda_home()
    if home is None:
        return None, [how]
    os.environ["CUDA_HOME"] = home
    notes.append(f"CUDA toolkit: {home} ({how})")
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        if visible_gpu:
            notes.append("architectures: those of the visible GPUs (TORCH_CUDA_ARCH_LIST unset)")
        else:
            # torch's helper crashes with an IndexError when it has neither a GPU to ask nor a list.
            archs = default_arch_list(home)
            os.environ["TORCH_CUDA_ARCH_LIST"] = archs
            notes.append(f"architectures: {archs} (no GPU visible; set TORCH_CUDA_ARCH_LIST to change)")
    else:
        notes.append(f"architectures: {os.environ['TORCH_CUDA_ARCH_LIST']} (from TORCH_CUDA_ARCH_LIST)")
    return home, notes
