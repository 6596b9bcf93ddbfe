"""Typed training configuration and the named presets it starts from.

A run is described by one `TrainConfig`; presets fill it in, command-line options override single
fields, and `resolve()` turns the remaining "derived" fields (None) into numbers, so the JSON saved
with every run and printed by `--dry-run` holds no hidden defaults. The exception is the precision
pair num_fp16_res / conv_clamp: the networks' ModelConfig fills those in, the one place that rule
lives, and the numbers it chose are the "model" entry of config.json and a checkpoint's model_config.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..augment.ada import PIPES as AUG_PIPES
from ..augment.factory import KINDS as AUG_KINDS
from ..data.detect import BUILTIN
from ..networks.config import DEFAULT_MBSTD_GROUP
from ..networks.config import PRECISIONS as _DTYPES
from ..networks.layers import mbstd_group_size
from ..plain_dict import PlainDict
from .losses import KINDS as LOSSES
from .losses import default_d_reg_interval, default_r1_gamma

PRECISIONS = tuple(_DTYPES)  # the names the networks accept, in their order


@dataclass
class TrainConfig(PlainDict):
    """Everything that decides what a training run computes. None means "derive it" (see resolve)."""

    preset: str = "custom"
    # Data.
    data: str = BUILTIN             # the built-in set or a path; see stylegan2.data.open_dataset
    resolution: int = 32
    channels: int = 1
    cond: bool = False              # condition G and D on the dataset's labels
    mirror: bool = False            # random x-flips of the real images
    max_images: int | None = None   # use at most this many images of the dataset
    data_split: str | None = None   # the dataset split trained on (None: all; see data/splits.py)
    # Model (turned into stylegan2's ModelConfig by model_kwargs()).
    z_dim: int = 128
    w_dim: int = 128
    mapping_layers: int = 2
    channel_base: int = 2048
    channel_max: int = 128
    mbstd_group: int | None = None  # None: min(4, batch), reduced until it divides the batch
    precision: str = "fp32"         # "fp32" | "fp16" | "bf16"
    num_fp16_res: int | None = None  # None: the networks' default for the precision (ModelConfig)
    conv_clamp: float | None = None  # None: likewise (ModelConfig: 256 under mixed precision)
    channels_last: bool = False     # NHWC activations in G and D (a speed choice; same numbers)
    # Optimisation.
    batch: int = 32                 # images per step over all ranks (the global batch)
    batch_gpu: int | None = None    # images per rank and round; None: batch / ranks (see split.py)
    kimg: float = 10.0              # stop after this many thousand real images shown to D
    lr: float = 0.0025
    beta1: float = 0.0
    beta2: float = 0.99
    eps: float = 1e-8
    loss: str = "logistic"          # "logistic" | "wgan-gp"
    gamma: float | None = None      # R1 weight; None: 0.0002 * resolution**2 / batch (ADA's heuristic)
    r1_interval: int | None = None  # lazy R1 every this many D steps (0: off); None: 16, or 1 for wgan-gp
    pl_weight: float = 2.0
    pl_interval: int = 4            # lazy path-length: every this many G steps (0 disables)
    style_mixing: float = 0.9
    ema_kimg: float | None = None   # G_ema half-life in kimg; None: batch * 10 / 32
    ema_rampup: float | None = 0.05  # half-life at most this fraction of the images seen so far
    # Augmentation of every image D sees (stylegan2.augment). Absent from configs saved before
    # it existed, which therefore load as "none".
    aug: str = "none"               # "ada" | "diffaugment" | "fixed" | "none"
    aug_p: float | None = None      # fixed: the p (required); ada: the initial p (None: 0)
    ada_target: float = 0.6         # ADA: the r_t = E[sign(D(real))] that p steers toward
    ada_kimg: float = 500.0         # ADA: kimg for p to go from 0 to 1 at the fastest
    aug_pipe: str = "bgc"           # ada/fixed: ADA's groups (b blit, g geometry, c colour)
    # Bookkeeping.
    tick_kimg: float = 0.5          # read losses, update progress and stats this often
    snap_kimg: float = 2.0          # checkpoint + fake grid + plots this often
    grid_images: int = 32           # images in reals.png / fakes_*.png
    seed: int = 0
    threads: int | None = None      # torch.set_num_threads; None: every core on a CPU run
    device: str | None = None       # None: cuda if available, else cpu
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (e.g. the CLI line)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


# The named presets: only what differs from the TrainConfig defaults.
PRESETS: dict[str, dict[str, Any]] = {
    # StyleGAN2-ADA's single-GPU "auto" recipe at 256x256 (fmaps 0.5 -> channel base 16384, max
    # 512; lr 0.0025; gamma 0.0002 * res^2 / batch; EMA batch * 10 / 32 kimg, ramp-up 0.05) with
    # the paper's 8 mapping layers. Batch 32 rather than ADA's 16 for one GPU: an 80 GB card holds
    # it easily and the larger batch keeps the GPU busier; gamma and EMA follow the batch.
    "gpu256": dict(
        resolution=256, z_dim=512, w_dim=512, mapping_layers=8, channel_base=16384, channel_max=512,
        batch=32, kimg=25000.0, precision="fp16", tick_kimg=4.0, snap_kimg=100.0, aug="ada",
    ),
    # The same recipe at 128x128 (a quicker GPU run).
    "gpu128": dict(
        resolution=128, z_dim=512, w_dim=512, mapping_layers=8, channel_base=16384, channel_max=512,
        batch=32, kimg=10000.0, precision="fp16", tick_kimg=4.0, snap_kimg=100.0, aug="ada",
    ),
    # A CPU run of about ten minutes on 2 cores (both threads), chosen at equal wall time by
    # benchmarks/cpu_preset_sweep.py (docs/cpu-preset-sweep.md). Half the channels of the earlier
    # preset (base 1024, max 64: 32 channels at 32x32, 64 below) and no path-length penalty make
    # ~3x the images per second (about 60 img/s vs 20 scaled to one uncontended thread: 2.6x and
    # 3.4x in two side-by-side measurements), so ten minutes reach 30 kimg instead of 10. At 3
    # minutes its grid showed head-shaped ovals where the old preset's showed blobs; at 30 kimg it
    # shows brain slices with a midline and no bright rim (the old 10-kimg grid: rings). lr 0.005
    # gave speckled grids and worse FIDs at equal kimg; batch 16 costs 17% of the img/s on a net
    # this small; 64x64 runs at 0.64x. Snapshots every 3 kimg: ten grids in a run.
    # DiffAugment: at 30 kimg (same seed) it more than halved both FIDs of --aug none (pixel 6.3
    # vs 14.8, D-feature 0.31 vs 2.20), raised variety from 0.74 to 0.92 of the reals' and
    # brought back the small lower slices (16% of fakes below the reals' first quartile of head
    # area, against 0.4%). ADA is no help this early: in 10-kimg runs its p stayed below 0.002
    # (D does not overfit 4096 slices that soon), so D saw the images almost as they are.
    "cpu-small": dict(
        resolution=32, z_dim=128, w_dim=128, mapping_layers=2, channel_base=1024, channel_max=64,
        batch=32, kimg=30.0, precision="fp32", pl_weight=0.0, pl_interval=0,
        tick_kimg=0.512, snap_kimg=3.0, aug="diffaugment",
    ),
    # Unit-test size: under 0.1 s a step on a CPU.
    "tiny": dict(
        resolution=16, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32,
        batch=4, kimg=0.064, precision="fp32", tick_kimg=0.016, snap_kimg=0.032, grid_images=16,
    ),
}
PRESET_NAMES = ("auto", *PRESETS)


def preset_defaults_text(field: str) -> str:
    """What each preset sets `field` to, for --help: e.g. 'ada on gpu256, gpu128; diffaugment on
    cpu-small; none on tiny'. Built from PRESETS, so the help cannot go stale when a preset changes."""
    by_value: dict[Any, list[str]] = {}
    for name, values in PRESETS.items():
        by_value.setdefault(values.get(field, getattr(TrainConfig, field)), []).append(name)
    return "; ".join(f"{value} on {', '.join(names)}" for value, names in by_value.items())


def pick_preset(name: str, cuda_available: bool) -> tuple[str, str]:
    """Map a preset name (possibly "auto") to a concrete one, with a sentence saying why."""
    if name == "auto":
        if cuda_available:
            return "gpu256", "preset auto -> gpu256 (a CUDA GPU is visible)"
        return "cpu-small", ("preset auto -> cpu-small (no CUDA GPU visible: a 32x32 model for "
                             "about ten minutes on a CPU; use --preset gpu256 on a GPU machine)")
    if name not in PRESETS:
        raise ValueError(f"preset: unknown '{name}'; choose one of {', '.join(PRESET_NAMES)}")
    return name, f"preset {name}"


def make_config(preset: str, overrides: dict[str, Any] | None = None,
                cuda_available: bool = False) -> tuple[TrainConfig, str]:
    """Preset + overrides (None values ignored), resolved. Returns (config, sentence about preset)."""
    name, why = pick_preset(preset, cuda_available)
    values: dict[str, Any] = dict(PRESETS[name], preset=name)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return resolve(TrainConfig(**values)), why


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill the derived (None) fields and check the combination. Returns a new config."""
    _check(cfg)
    c = dataclasses.replace(cfg, extra=dict(cfg.extra))
    if c.gamma is None:
        c.gamma = default_r1_gamma(c.resolution, c.batch)
    if c.ema_kimg is None:
        c.ema_kimg = c.batch * 10 / 32
    if c.r1_interval is None:
        c.r1_interval = default_d_reg_interval(c.loss)
    wanted = DEFAULT_MBSTD_GROUP if c.mbstd_group is None else max(1, c.mbstd_group)
    c.mbstd_group = mbstd_group_size(c.batch, wanted)
    if c.aug == "ada" and c.aug_p is None:
        c.aug_p = 0.0  # ADA starts un-augmented and lets D's overfitting raise p
    return c


# Float fields and whether None is allowed. Every one must be a finite number: inf and nan pass
# range comparisons, and then `kimg = inf` overflows the loop's counters and `gamma = inf` diverges.
_FLOATS = {"kimg": False, "lr": False, "beta1": False, "beta2": False, "eps": False, "gamma": True,
           "pl_weight": False, "style_mixing": False, "ema_kimg": True, "ema_rampup": True,
           "tick_kimg": False, "snap_kimg": False, "conv_clamp": True, "aug_p": True, "ada_target": False,
           "ada_kimg": False}
# Upper limits where a larger value can only be a typo (and would overflow image counters).
MAX_KIMG = 1e9


def _check(c: TrainConfig) -> None:
    for name, optional in _FLOATS.items():
        v = getattr(c, name)
        if v is None and optional:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name}: must be a finite number, got {v!r}")
    for name in ("kimg", "tick_kimg", "snap_kimg"):
        if getattr(c, name) > MAX_KIMG:
            raise ValueError(f"{name}: must be at most {MAX_KIMG:g}, got {getattr(c, name)}")
    res = c.resolution
    if res < 4 or res > 1024 or res & (res - 1):
        raise ValueError(f"resolution: must be a power of two from 4 to 1024, got {res}")
    if c.channels not in (1, 3):
        raise ValueError(f"channels: must be 1 or 3, got {c.channels}")
    if c.precision not in PRECISIONS:
        raise ValueError(f"precision: must be one of {PRECISIONS}, got {c.precision!r}")
    if c.loss not in LOSSES:
        raise ValueError(f"loss: must be one of {LOSSES}, got {c.loss!r}")
    for name in ("batch", "z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max",
                 "grid_images"):
        if getattr(c, name) < 1:
            raise ValueError(f"{name}: must be at least 1, got {getattr(c, name)}")
    if c.channel_base // res < 1:
        raise ValueError(f"channel_base: {c.channel_base} gives no channels at resolution {res} (a block at "
                         f"resolution r has channel_base // r): use at least {res}")
    for name in ("kimg", "tick_kimg", "snap_kimg", "lr", "eps"):
        if not getattr(c, name) > 0:
            raise ValueError(f"{name}: must be positive, got {getattr(c, name)}")
    for name in ("r1_interval", "pl_interval"):
        if getattr(c, name) is not None and getattr(c, name) < 0:
            raise ValueError(f"{name}: must be 0 (off) or positive, got {getattr(c, name)}")
    if not (0.0 <= c.beta1 < 1.0 and 0.0 <= c.beta2 < 1.0):
        raise ValueError(f"beta1/beta2: must lie in [0, 1), got {c.beta1}, {c.beta2}")
    if c.gamma is not None and c.gamma < 0:
        raise ValueError(f"gamma: must be >= 0, got {c.gamma}")
    if c.batch_gpu is not None and (c.batch_gpu < 1 or c.batch % c.batch_gpu):
        raise ValueError(f"batch_gpu: must be at least 1 and divide batch ({c.batch}), got {c.batch_gpu}")
    if c.threads is not None and c.threads < 1:
        raise ValueError(f"threads: must be at least 1, got {c.threads}")
    if not 0.0 <= c.style_mixing <= 1.0:
        raise ValueError(f"style_mixing: must lie in [0, 1], got {c.style_mixing}")
    if c.pl_weight < 0:
        raise ValueError(f"pl_weight: must be >= 0, got {c.pl_weight}")
    _check_aug(c)


def _check_aug(c: TrainConfig) -> None:
    if c.aug not in AUG_KINDS:
        raise ValueError(f"aug: must be one of {AUG_KINDS}, got {c.aug!r}")
    if c.aug_pipe not in AUG_PIPES:
        raise ValueError(f"aug_pipe: must be one of {AUG_PIPES}, got {c.aug_pipe!r}")
    if c.aug in ("diffaugment", "none") and c.aug_pipe != "bgc":
        raise ValueError(f"aug_pipe: aug {c.aug!r} has no ADA pipeline, got {c.aug_pipe!r}")
    if c.aug_p is not None and not 0.0 <= c.aug_p <= 1.0:
        raise ValueError(f"aug_p: must lie in [0, 1], got {c.aug_p}")
    if c.aug == "fixed" and c.aug_p is None:
        raise ValueError("aug_p: aug 'fixed' needs the probability p (--aug-p)")
    if c.aug in ("diffaugment", "none") and c.aug_p is not None:
        raise ValueError(f"aug_p: aug {c.aug!r} has no probability p, got {c.aug_p}")
    if not 0.0 <= c.ada_target <= 1.0:
        raise ValueError(f"ada_target: must lie in [0, 1], got {c.ada_target}")
    if not 0.0 < c.ada_kimg <= MAX_KIMG:
        raise ValueError(f"ada_kimg: must be positive and at most {MAX_KIMG:g}, got {c.ada_kimg}")
