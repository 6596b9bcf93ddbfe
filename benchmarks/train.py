"""Training throughput: img/s of the project's own training step (stylegan2.training) on
the CUDA kernels and on the references, under the same precision policy on both sides.

One timed unit is a full regularization cycle (lcm of the path-length and R1 intervals steps),
so the lazy phases weigh in exactly as often as in a real run; the step time is the median
cycle time over the steps in it. Real images come from an in-memory synthetic uint8 dataset of
the right shape (the loop's feeder only needs the ImageDataset interface), so no data is read.
The implementation is switched with STYLEGAN2_OPS_IMPL (what impl='auto' means): 'auto' uses
every kernel the extension has, 'ref' none.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from . import flops as F
from .timing import Ceilings, median, synchronize

ENV = "STYLEGAN2_OPS_IMPL"


class SyntheticImages:
    """An ImageDataset stand-in: `count` random uint8 images [count, channels, res, res], no labels."""

    def __init__(self, count: int, channels: int, resolution: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        # Uniform random bytes, never constant images: zeros can run faster than real data.
        self.images = rng.integers(0, 256, size=(count, channels, resolution, resolution), dtype=np.uint8)
        self.labels = None
        self.label_names: list[str] = []
        self.skipped = 0
        self.source = f"synthetic uint8 {list(self.images.shape)} (benchmarks)"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.images[i]), -1

    def fingerprint(self) -> str:
        return hashlib.sha1(self.images[:4].tobytes() + str(self.images.shape).encode()).hexdigest()


@contextlib.contextmanager
def ops_impl(value: str) -> Iterator[None]:
    """STYLEGAN2_OPS_IMPL=value inside the block (read by the ops on every call)."""
    old = os.environ.get(ENV)
    os.environ[ENV] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


def kernels_status(device: torch.device) -> tuple[bool, str]:
    """(whether any CUDA kernel can run here, a sentence naming which ops have one)."""
    if device.type != "cuda":
        return False, f"the CUDA kernels need a CUDA device (this run: {device.type})"
    from stylegan2_ops import _dispatch, _loader
    if _loader.load() is None:
        return False, f"CUDA kernels unavailable: {_loader.state().reason}"
    have = [op for op, k in _dispatch.KERNEL_NAMES.items() if _loader.kernel(k) is not None]
    missing = [op for op in _dispatch.KERNEL_NAMES if op not in have]
    if not have:
        return False, "the compiled module has none of the op kernels"
    note = "kernels: " + ", ".join(have)
    if missing:
        note += "; reference for " + ", ".join(missing)
    return True, note


def training_api() -> Any:
    """stylegan2.training's step functions: setup_run, train_step, phase_g_main, phase_g_reg,
    phase_d_main, phase_d_reg, StatsAccumulator."""
    from types import SimpleNamespace

    from stylegan2.training import phases as steps
    from stylegan2.training.state import setup_run
    from stylegan2.training.stats import StatsAccumulator
    return SimpleNamespace(setup_run=setup_run, train_step=steps.train_step, phase_g_main=steps.phase_g_main,
                           phase_g_reg=steps.phase_g_reg, phase_d_main=steps.phase_d_main,
                           phase_d_reg=steps.phase_d_reg, StatsAccumulator=StatsAccumulator)


@dataclass
class TrainSetup:
    """What the training rows run: a TrainConfig (resolved) and the cycle length."""

    cfg: Any
    cycle: int  # steps per regularization cycle


def networks_fp16_res(cfg: Any) -> int:
    """The reduced-precision resolutions the networks of `cfg` run: ModelConfig fills them in when
    the training config leaves them None."""
    from stylegan2.networks import ModelConfig
    from stylegan2.training.state import model_config_dict
    return ModelConfig.from_dict(model_config_dict(cfg, 0)).num_fp16_res


def make_setup(quick: bool, precision: str, device: torch.device, channels_last: bool = False) -> TrainSetup:
    """The gpu256 preset (256x256, batch 32, ADA's recipe) or, quick, the tiny one at 16x16
    with both lazy intervals 2 so a cycle is two steps."""
    from stylegan2.training.config import make_config
    if quick:
        over = dict(precision=precision, batch=4, r1_interval=2, pl_interval=2, device=str(device),
                    channels_last=channels_last)
        cfg, _ = make_config("tiny", over)
    else:
        cfg, _ = make_config("gpu256", dict(precision=precision, device=str(device), channels_last=channels_last))
    cycle = math.lcm(max(cfg.pl_interval, 1), max(cfg.r1_interval, 1))
    return TrainSetup(cfg=cfg, cycle=cycle)


def _new_run(setup: TrainSetup, device: torch.device) -> Any:
    cfg = setup.cfg
    data = SyntheticImages(max(2 * cfg.batch, 8), cfg.channels, cfg.resolution)
    return training_api().setup_run(cfg, data, device)


def time_training(setup: TrainSetup, device: torch.device, *, warmup_cycles: int,
                  cycles: int) -> tuple[float, list[float]]:
    """Median ms per training step (whole cycles timed, then divided by the cycle length)."""
    api = training_api()
    train_step = api.train_step
    run = _new_run(setup, device)
    acc = api.StatsAccumulator()
    for _ in range(warmup_cycles * setup.cycle):
        train_step(run, acc)
    acc.reduce()  # the loop's tick-boundary sync, outside the timed cycles
    synchronize(device)
    samples = []
    for _ in range(cycles):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(setup.cycle):
                train_step(run, acc)
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
        else:
            import time
            t0 = time.perf_counter()
            for _ in range(setup.cycle):
                train_step(run, acc)
            ms = (time.perf_counter() - t0) * 1e3
        acc.reduce()
        samples.append(ms / setup.cycle)
    return median(samples), samples


def counted_phases(setup: TrainSetup, device: torch.device) -> dict[str, int]:
    """FlopCounterMode's count of each phase on the reference path (one call each)."""
    loop = training_api()
    with ops_impl("ref"):
        run = _new_run(setup, device)
        acc = loop.StatsAccumulator()
        real, _ = run.feeder.reals()
        return {
            "g_main": F.count_flops(lambda: loop.phase_g_main(run, acc)),
            "g_reg": F.count_flops(lambda: loop.phase_g_reg(run, acc)),
            "d_main": F.count_flops(lambda: loop.phase_d_main(run, acc, real, None)),
            "d_reg": F.count_flops(lambda: loop.phase_d_reg(run, acc, real, None), per_module=False),
        }


def flops_per_image(setup: TrainSetup) -> tuple[float, dict[str, int]]:
    cfg = setup.cfg
    arch = F.Arch(resolution=cfg.resolution, channels=cfg.channels, z_dim=cfg.z_dim, w_dim=cfg.w_dim,
                  c_dim=0, mapping_layers=cfg.mapping_layers, channel_base=cfg.channel_base,
                  channel_max=cfg.channel_max)
    phases = F.training_phases(arch, cfg.batch, style_mixing=cfg.style_mixing > 0)
    pl = cfg.pl_interval if cfg.pl_weight > 0 else 0
    return F.per_image(phases, cfg.batch, pl, cfg.r1_interval), phases


def train_rows(device: torch.device, ceilings: Ceilings, *, quick: bool, precisions: list[str],
               impls: list[str], warmup_cycles: int, cycles: int, count: bool = True,
               channels_last: bool = False) -> Iterator[dict[str, Any]]:
    """Rows for section 'train', one per (precision policy, impl); yields as they finish. With
    channels_last the rows read impl 'cuda+channels_last' / 'ref+channels_last' (their
    ratio_to_ref is against the plain NCHW reference row)."""
    ok, kernels_note = kernels_status(device)
    for precision in precisions:
        setup = make_setup(quick, precision, device, channels_last)
        cfg = setup.cfg
        per_img, phases = flops_per_image(setup)
        check_note, c_img = "", None
        if count:
            try:
                counted = counted_phases(setup, device)
            except Exception as e:  # a check of the count must not cost the timing rows
                check_note = f"FlopCounterMode check failed: {type(e).__name__}: {str(e)[:200]}"
            else:
                pl = cfg.pl_interval if cfg.pl_weight > 0 else 0
                c_img = F.per_image(counted, cfg.batch, pl, cfg.r1_interval)
                check_note = (f"FLOPs/img analytic {per_img / 1e9:.3g} G vs FlopCounterMode (ref) "
                              f"{c_img / 1e9:.3g} G ({F.relative_gap(per_img, c_img):+.1%})")
        shape = (f"{cfg.batch}x{cfg.channels}x{cfg.resolution}x{cfg.resolution} G+D step, cycle of "
                 f"{setup.cycle} (pl every {cfg.pl_interval}, R1 every {cfg.r1_interval})")
        policy = "fp32" if precision == "fp32" else f"{precision} in {networks_fp16_res(cfg)} top res"
        peak_dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision]
        peak, peak_name = ceilings.peak_for(peak_dtype)
        for impl in impls:
            base = dict(section="train", op="train_step", shape=shape, dtype=policy,
                        impl=f"{impl}+channels_last" if channels_last else impl,
                        flops_per_img=per_img, flops_per_img_counted=c_img)
            if impl == "cuda" and not ok:
                yield dict(base, note=f"skipped: {kernels_note}")
                continue
            with ops_impl("auto" if impl == "cuda" else "ref"):
                ms, samples = time_training(setup, device, warmup_cycles=warmup_cycles, cycles=cycles)
            img_s = cfg.batch / (ms * 1e-3)
            tflops = per_img * img_s / 1e12
            notes = [n for n in (kernels_note if impl == "cuda" else "", check_note,
                                 f"pct of {peak_name} matmul peak" if peak else "") if n]
            yield dict(base, ms=ms, img_per_s=img_s, tflops=tflops,
                       pct_of_peak=100 * tflops / peak if peak else None,
                       samples_ms=samples, note="; ".join(notes))
