"""Discriminator augmentation for small datasets (issue 16): ADA's `bgc` pipeline with its
adaptive p, DiffAugment, and leak checks.

    from stylegan2.augment import make_augment
    aug = make_augment("ada", num_channels=1, device=device)   # 'ada'|'diffaugment'|'fixed'|'none'
    logits = D(aug(images), c)

Everything here is differentiable any number of times with respect to the images (R1 through
the augmentation), runs its resampling through stylegan2_ops.upfirdn2d, and never reads a value
back from the device inside a training step. See factory.py for how the loop plugs it in.
"""
from .ada import COLOUR, GEOMETRIC, GROUPS, NEEDS_RGB, PIPES, AdaPipeline, pipe_strengths
from .controller import AdaController
from .diffaugment import DiffAugment
from .factory import KINDS, Augment, make_augment
from .leak import alignment, leak_score, orientation_stats, reals_template, same_bits, template_angles
from .warp import SYM6, affine_warp, blit, make_filter

__all__ = [
    "COLOUR", "GEOMETRIC", "GROUPS", "KINDS", "NEEDS_RGB", "PIPES", "SYM6",
    "AdaController", "AdaPipeline", "Augment", "DiffAugment",
    "affine_warp", "alignment", "blit", "leak_score", "make_augment", "make_filter", "orientation_stats", "pipe_strengths",
    "reals_template", "same_bits", "template_angles",
]
