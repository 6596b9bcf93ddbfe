"""StyleGAN2's custom ops: CUDA kernels with pure-PyTorch references beside them.

Public API (signatures and semantics follow NVlabs' stylegan2-ada-pytorch, so switching is a
change of import):

    bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None, impl='auto')
    upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl='auto')
    setup_filter, filter2d, upsample2d, downsample2d
    modulated_conv2d(x, weight, styles, noise=None, up=1, down=1, padding=0, ...)

impl: 'auto' (kernel for CUDA tensors when available, else reference), 'ref' or 'cuda'.
STYLEGAN2_OPS_IMPL sets what 'auto' means. `python -m stylegan2_ops doctor` explains which
implementation each op will use and why. Importing this package never builds anything.
"""
from ._bias_act import ACTIVATIONS, bias_act
from ._dispatch import KernelUnavailableError
from ._modulated_conv import modulated_conv2d
from ._upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d

__all__ = [
    "ACTIVATIONS",
    "KernelUnavailableError",
    "bias_act",
    "downsample2d",
    "filter2d",
    "modulated_conv2d",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
]

__version__ = "0.1.0"
