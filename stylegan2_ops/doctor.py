"""`python -m stylegan2_ops doctor`: what the kernels need, what was found, what each op will use.

Every problem found is printed with its fix. `--build` forces a JIT build of the kernels (ignoring
a remembered failure) and shows the compiler's error if it fails.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from typing import Optional

import torch

from . import _dispatch, _loader, _toolchain


def _first_line(cmd: list[str]) -> Optional[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def _gpu_lines() -> tuple[list[str], bool]:
    if not torch.cuda.is_available():
        return ["GPU:           none visible"], False
    lines = []
    for i in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(i)
        lines.append(f"GPU {i}:         {torch.cuda.get_device_name(i)} (compute capability {major}.{minor})")
    return lines, True


def _op_plan(module_ok: bool, has_gpu: bool, module) -> list[str]:
    """Which implementation each op takes for a float32 CUDA tensor under impl='auto'."""
    try:
        mode = _dispatch.requested_impl("auto")
    except ValueError as e:
        return [f"  (cannot tell: {e})"]
    lines = []
    for op, kernel_name in _dispatch.KERNEL_NAMES.items():
        if mode == "ref":
            use = f"reference ({_dispatch.ENV_IMPL}=ref)"
        elif not module_ok:
            use = "reference (no compiled kernels)"
        elif not hasattr(module, kernel_name):
            use = "reference (no CUDA kernel for this op in this build yet)"
        elif not has_gpu:
            use = "CUDA kernel on CUDA tensors; there is no GPU here, so the reference"
        else:
            use = "CUDA kernel"
        lines.append(f"  {op:18s} {use}")
    lines.append("  (CPU tensors and float64 always take the reference)")
    return lines


def run(build: bool = False) -> int:
    """Prints the report. Returns 0 when the kernels are usable or no GPU needs them, else 1."""
    problems: list[tuple[str, str]] = []  # (problem, fix)
    print("stylegan2_ops doctor")
    print("=" * 60)
    print(f"Python:        {platform.python_version()} ({sys.executable})")
    print(f"torch:         {torch.__version__} (CUDA {torch.version.cuda or 'none: CPU-only build'})")
    if torch.version.cuda is None:
        problems.append((
            "torch is a CPU-only build, so no CUDA kernels can be built or run",
            "install a CUDA build of torch (e.g. `pip install torch` from the index for your CUDA version)",
        ))
    if torch.backends.cudnn.is_available():
        print(f"cuDNN:         {torch.backends.cudnn.version()}")

    home, how = _toolchain.find_cuda_home()
    nvcc_on_path = shutil.which("nvcc")
    print(f"nvcc on PATH:  {nvcc_on_path or 'not found'}")
    if home:
        version = _toolchain.nvcc_version(home)
        print(f"CUDA_HOME:     {home} ({how}); nvcc {version or '?'}")
        if version and torch.version.cuda and version.split(".")[0] != torch.version.cuda.split(".")[0]:
            problems.append((
                f"nvcc {version} and torch's CUDA {torch.version.cuda} differ in major version; builds will fail",
                f"install CUDA toolkit {torch.version.cuda.split('.')[0]}.x or a torch built for CUDA {version}",
            ))
    else:
        print(f"CUDA_HOME:     not found: {how}")
        problems.append((how, "install the CUDA toolkit or set CUDA_HOME to the folder that holds bin/nvcc"))
    cxx = os.environ.get("CXX", "c++")
    print(f"C++ compiler:  {_first_line([cxx, '--version']) or f'{cxx} not found'}")
    if not shutil.which(cxx):
        problems.append((f"no C++ compiler ({cxx})", "install g++ (e.g. `apt-get install g++`) or set CXX"))
    ninja = shutil.which("ninja")
    print(f"ninja:         {ninja or 'not found'}")
    if not ninja:
        problems.append(("ninja not found; JIT builds need it", "pip install ninja"))
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    print(f"arch list:     {archs or f'unset (visible GPU, else {_toolchain.default_arch_list(home)})'}")

    gpu_lines, has_gpu = _gpu_lines()
    for line in gpu_lines:
        print(line)
    print(f"impl default:  {os.environ.get(_dispatch.ENV_IMPL, 'auto')} ({_dispatch.ENV_IMPL})")
    print()

    print("Kernels")
    if build:
        print("  forcing a JIT build now (this can take a few minutes)...")
    module = _loader.load(force_build=build)
    st = _loader.state()
    for line in st.log:
        print(f"  {line}")
    if st.source == "prebuilt":
        print("  JIT cache:     not used (the prebuilt module is current)")
    else:
        print(f"  JIT cache:     {_loader.jit_status()}")
    if module is not None:
        kernels = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
        print(f"  loaded from:   {st.source}: {getattr(module, '__file__', '?')}")
        print(f"  functions:     {', '.join(kernels)}")
    else:
        problems.append((
            f"no usable kernels: {st.reason}",
            "reinstall with `pip install --no-build-isolation -e .` (shows the reason), or run "
            "`python -m stylegan2_ops doctor --build` to see the compiler's error",
        ))
    if st.compiler_output:
        print("\nCompiler output (last 60 lines):")
        for line in st.compiler_output.splitlines()[-60:]:
            print(f"  | {line}")
    print()

    print("Each op on a CUDA tensor (impl='auto')")
    for line in _op_plan(module is not None, has_gpu, module):
        print(line)
    print()

    if module is not None and not has_gpu:
        summary = ("kernels built, no GPU present: the ops run their PyTorch references here. "
                   "That is right for a login node that installs for GPU nodes; on a machine that will "
                   "never have a GPU, `STYLEGAN2_OPS_SKIP_BUILD=1 pip install --no-build-isolation -e .` "
                   "installs in seconds without compiling them")
    elif module is not None:
        summary = "kernels built and a GPU is present: CUDA tensors use the kernels"
    elif not has_gpu:
        summary = "no kernels and no GPU: the ops run their PyTorch references"
    else:
        summary = "a GPU is present but the kernels are unavailable: the ops run their slower references"
    print(f"Summary: {summary}")
    if problems:
        print("\nProblems and fixes")
        for problem, fix in problems:
            print(f"  - {problem}\n    fix: {fix}")
    return 0 if module is not None or not has_gpu else 1
