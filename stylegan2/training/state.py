"""Building a run: the Run it trains (networks, loss, optimizers, feeder) and the function that
sets one up. Checkpoints of a run are written and read back by checkpoint.py.

The builders are module-level functions so tests can swap the networks or the loss.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..augment import Augment, make_augment
from ..networks import Discriminator, Generator, ModelConfig, use_channels_last
from . import distributed
from .config import TrainConfig
from .feed import BatchFeeder
from .losses import LossConfig, StyleGAN2Loss, lazy_optimizer_settings
from .split import Split


@dataclass
class Run:
    """Everything a training run changes as it goes: networks, loss, optimizers, data order and
    progress. setup_run builds one; checkpoint.py saves and restores it."""

    cfg: TrainConfig
    device: torch.device
    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module
    loss: Any
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    feeder: BatchFeeder
    model_cfg: dict[str, Any]  # the networks' ModelConfig.to_dict(): precision defaults filled in
    dataset_info: dict[str, Any]
    cur_nimg: int = 0
    step: int = 0
    tick: int = 0
    elapsed_s: float = 0.0
    last_checkpoint: Path | None = None  # newest checkpoint written (or resumed from)
    split: Any = None  # split.Split: the batch over ranks and rounds, and their RNG streams
    # The augmentation of every image D sees; the loss applies it, the step advances it.
    aug: Augment = field(default_factory=lambda: make_augment("none"))


def model_config_dict(cfg: TrainConfig, c_dim: int) -> dict[str, Any]:
    """The networks' ModelConfig fields this training config decides, as it states them: the
    precision pair may be None, which ModelConfig fills in when it is built."""
    d = dict(resolution=cfg.resolution, channels=cfg.channels, c_dim=c_dim, z_dim=cfg.z_dim,
             w_dim=cfg.w_dim, mapping_layers=cfg.mapping_layers, channel_base=cfg.channel_base,
             channel_max=cfg.channel_max, num_fp16_res=cfg.num_fp16_res, precision=cfg.precision,
             conv_clamp=cfg.conv_clamp, mbstd_group=cfg.mbstd_group)
    return d


def build_networks(model_cfg: ModelConfig | dict[str, Any],
                   device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(G, D) on `device` from a ModelConfig or its dict (as a checkpoint stores it; unknown keys
    are an error from ModelConfig)."""
    mc = model_cfg if isinstance(model_cfg, ModelConfig) else ModelConfig.from_dict(model_cfg)
    return Generator(mc).to(device), Discriminator(mc).to(device)


def build_loss(G: torch.nn.Module, D: torch.nn.Module, cfg: TrainConfig) -> Any:
    """The StyleGAN2 loss. It weights each lazy penalty by its interval itself; an interval of 0
    (off) is passed as 1 because the phase is then never run."""
    lc = LossConfig(kind=cfg.loss, r1_gamma=cfg.gamma, pl_weight=cfg.pl_weight if cfg.pl_interval else 0.0,
                    style_mixing_prob=cfg.style_mixing, g_reg_interval=max(cfg.pl_interval, 1),
                    d_reg_interval=max(cfg.r1_interval, 1))
    return StyleGAN2Loss(G, D, lc)


def make_optimizer(module: torch.nn.Module, cfg: TrainConfig, interval: int) -> torch.optim.Adam:
    """Adam with the lazy-regularization correction: with a penalty every `interval` steps the
    effective step count grows by (interval + 1) / interval, so lr and betas are scaled back.
    Intervals 0 (off) and 1 (penalty inside the main step) need no correction."""
    lr, betas = lazy_optimizer_settings(cfg.lr, (float(cfg.beta1), float(cfg.beta2)), interval)
    params = list(module.parameters())
    # On a GPU one fused kernel updates every parameter (instead of several launches per tensor);
    # the CPU keeps the default implementation, whose results the resume tests pin down.
    on_gpu = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=cfg.eps, fused=True if on_gpu else None)


def build_augment(cfg: TrainConfig, device: torch.device) -> Augment:
    """The augmentation cfg.aug asks for (ADA's p on `device`, where D's logits are)."""
    if cfg.aug in ("none", "diffaugment"):
        return make_augment(cfg.aug, num_channels=cfg.channels, device=device)
    aug = make_augment(cfg.aug, num_channels=cfg.channels, p=cfg.aug_p, target=cfg.ada_target,
                       ada_kimg=cfg.ada_kimg, pipe=cfg.aug_pipe, device=device)
    if aug.controller is not None and distributed.current().active:
        # r_t over every rank's real logits: p then moves alike everywhere (the loop also copies
        # and checks it with the networks' shared state).
        aug.controller.reduce_sum = lambda t: distributed.sum_across_(t, "summing ADA's r_t counts")
    return aug


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.device:
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_threads(cfg: TrainConfig, device: torch.device) -> int | None:
    """CPU threads for torch: cfg.threads, else on a CPU run every core this process may use.
    Measured on an idle 2-core machine (cpu-small, DiffAugment): 2 threads 51 img/s, 1 thread 38.
    On a machine that other jobs keep busy, 1 thread can be much faster than 2 (OpenMP threads
    wait on each other when a core is taken): --threads 1 there."""
    if cfg.threads:
        return cfg.threads
    if device.type != "cpu":
        return None
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def dataset_info(dataset: Any) -> dict[str, Any]:
    return {"fingerprint": str(dataset.fingerprint()), "source": str(getattr(dataset, "source", "")),
            "num_images": int(len(dataset)), "label_names": [str(n) for n in dataset.label_names],
            "skipped": int(getattr(dataset, "skipped", 0))}


def condition_dim(cfg: TrainConfig, dataset: Any) -> int:
    """The networks' c_dim for this config and dataset: its number of classes with cfg.cond, else
    0. Raises ValueError when cfg.cond asks for labels the dataset does not have."""
    if not cfg.cond:
        return 0
    if dataset.labels is None or not dataset.label_names:
        raise ValueError(f"--cond: the dataset ({dataset.source}) has no labels to condition on")
    return len(dataset.label_names)


def setup_run(cfg: TrainConfig, dataset: Any, device: torch.device) -> Run:
    """Fresh networks, optimizers and feeder, seeded from cfg.seed."""
    c_dim = condition_dim(cfg, dataset)
    torch.manual_seed(cfg.seed)
    # Built once: ModelConfig fills in the precision defaults the training config left None, and
    # the run keeps (and checkpoints, and config.json report) the numbers it chose.
    mc = ModelConfig.from_dict(model_config_dict(cfg, c_dim))
    G, D = build_networks(mc, device)
    if cfg.channels_last:
        use_channels_last(G)
        use_channels_last(D)
    G.train()
    D.train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    feeder = BatchFeeder(dataset.images, dataset.labels if c_dim else None, c_dim, cfg.batch, device,
                         seed=cfg.seed, mirror=cfg.mirror)
    # In this process's world (distributed.current(): one process unless torchrun started it).
    split = Split(cfg.batch, cfg.batch_gpu, distributed.current(), device)
    split.start(cfg.seed, 0)
    aug = build_augment(cfg, device)
    loss = build_loss(G, D, cfg)
    loss.augment = aug  # after building, so a loss swapped in by a test needs no new argument
    return Run(cfg=cfg, device=device, G=G, D=D, G_ema=G_ema, loss=loss,
               opt_G=make_optimizer(G, cfg, cfg.pl_interval if cfg.pl_weight > 0 else 0),
               opt_D=make_optimizer(D, cfg, cfg.r1_interval), feeder=feeder, model_cfg=mc.to_dict(),
               dataset_info=dataset_info(dataset), split=split, aug=aug)
