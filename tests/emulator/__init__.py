"""A thread-level CPU emulator for the CUDA kernels in csrc/ (see README.md in this folder)."""
from .build import EmulatorBuildError, build_kernels, build_library
from .kernels import ORDERS, EmulatedKernels, EmulatorLaunchError, emulated_kernels, routed

__all__ = ["EmulatorBuildError", "build_kernels", "build_library", "ORDERS", "EmulatedKernels",
           "EmulatorLaunchError", "emulated_kernels", "routed"]
