"""Installs stylegan2_ops and stylegan2; compiles the CUDA kernels ahead of time where it can.

    pip install --no-build-isolation -e .

--no-build-isolation makes the build use the torch that is already installed (the extension's ABI
must match it; an isolated build would also download a second multi-GB torch). When the build
cannot see torch, a CUDA build of torch or nvcc, it installs pure Python and says why: the
kernels then JIT-compile at first use, and `python -m stylegan2_ops doctor` explains.

Environment switches:
    STYLEGAN2_OPS_SKIP_BUILD=1     do not compile the kernels (pure Python install)
    STYLEGAN2_OPS_REQUIRE_BUILD=1  a kernel build that cannot run or fails is an error (CI uses it)
    TORCH_CUDA_ARCH_LIST           target architectures (default: the visible GPU, else
                                   7.5;8.0;8.6;8.9;9.0+PTX minus what this nvcc cannot build)
    MAX_JOBS                       parallel compile jobs (ninja)
    CUDA_HOME                      the CUDA toolkit, when it is not found from nvcc
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
REQUIRE = os.environ.get("STYLEGAN2_OPS_REQUIRE_BUILD") == "1"
SKIP = os.environ.get("STYLEGAN2_OPS_SKIP_BUILD") == "1"


def say(msg: str) -> None:
    print(f"[stylegan2_ops setup] {msg}", file=sys.stderr, flush=True)


def load_toolchain():
    """stylegan2_ops/_toolchain.py by path: importing the package would need torch."""
    spec = importlib.util.spec_from_file_location("_sg2_toolchain", ROOT / "stylegan2_ops" / "_toolchain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cannot_build(reason: str) -> tuple[list, dict]:
    if REQUIRE:
        raise SystemExit(f"[stylegan2_ops setup] STYLEGAN2_OPS_REQUIRE_BUILD=1 but the kernels cannot be built: {reason}")
    say(f"installing pure Python, without compiled kernels: {reason}")
    say("the ops will JIT-compile their kernels at first use on a GPU, or run the PyTorch references; "
        "`python -m stylegan2_ops doctor` explains")
    return [], {}


def extension_plan() -> tuple[list, dict]:
    """(ext_modules, cmdclass) for setup(): the CUDA extension, or nothing and the reason."""
    if SKIP:
        return cannot_build("STYLEGAN2_OPS_SKIP_BUILD=1")
    try:
        import torch
    except ImportError:
        return cannot_build(
            "torch is not importable in the build environment (pip builds in isolation unless given "
            "--no-build-isolation); install torch first, then `pip install --no-build-isolation -e .`"
        )
    if torch.version.cuda is None:
        return cannot_build(f"torch {torch.__version__} is a CPU-only build")
    toolchain = load_toolchain()
    # Must happen before torch.utils.cpp_extension is imported: it reads CUDA_HOME at import.
    home, notes = toolchain.prepare_build_env(visible_gpu=torch.cuda.is_available())
    if home is None:
        return cannot_build(notes[0])
    for note in notes:
        say(note)
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    sources = [str(p.relative_to(ROOT)) for p in toolchain.compiled_sources()]
    source_hash = toolchain.source_hash()
    ext = CUDAExtension(
        name="stylegan2_ops._kernels",
        sources=sources,
        include_dirs=[str(ROOT / "csrc")],
        extra_compile_args={
            "cxx": toolchain.CXX_FLAGS + [f"-DSG2_SOURCE_HASH={source_hash}"],
            "nvcc": toolchain.NVCC_FLAGS,
        },
    )

    class BuildKernels(BuildExtension):
        """Compiles the kernels; a failure falls back to a pure Python install unless REQUIRE."""

        def run(self) -> None:
            say(f"compiling the CUDA kernels (torch {torch.__version__}, CUDA {torch.version.cuda}, "
                f"sources {source_hash}); this takes a few minutes on a small machine")
            try:
                super().run()
            except Exception as e:  # compile or link error
                if REQUIRE:
                    raise
                say(f"the kernel build FAILED ({type(e).__name__}: {str(e)[:300]}); installing without "
                    "compiled kernels. `python -m stylegan2_ops doctor --build` shows the compiler's error")
                return
            say("compiled kernels: stylegan2_ops._kernels")

    return [ext], {"build_ext": BuildKernels.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_plan()

setup(
    name="stylegan2-mri",
    version="0.1.0",
    description="StyleGAN2 with hand-written CUDA kernels, for synthesizing brain MRI slices",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["stylegan2_ops", "stylegan2_ops.*", "stylegan2", "stylegan2.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        "torch>=2.4",
        "ninja",
        "numpy",
        "click>=8",
        "tqdm",
        "pillow>=9.1",
        "matplotlib",
        "nibabel",
        "nilearn>=0.8.1",  # only for the MNI152 template file it ships; never imported at run time
        "umap-learn",  # the embed command (imported only there: numba compiles it on first use)
    ],
    extras_require={
        # pytorch-fid: the FID Inception-v3 feature network (its weights are a separate local file).
        "metrics": ["pytorch-fid>=0.3"],
        # tensorboard: train also writes TensorBoard events (torch.utils.tensorboard needs it).
        "tensorboard": ["tensorboard>=2.10"],
        "test": ["pytest>=7", "scipy", "pytorch-fid>=0.3", "tensorboard>=2.10"],
    },
    entry_points={"console_scripts": ["stylegan2=stylegan2.cli:main"]},
    zip_safe=False,
)
