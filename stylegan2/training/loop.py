"""The training loop: steps (phases.py) until kimg, with ticks and snapshots around them.

    train(cfg, run_dir, dataset)  ->  TrainResult

Losses stay on the device; they are read only at tick boundaries (`tick_kimg`),
where progress is shown, stats are written and a NaN/Inf stops the run. Snapshots (`snap_kimg`,
the end, a signal) write a checkpoint, a fixed-latent grid and the loss plots.

All randomness comes from the global torch RNG (latents, noise, style mixing) and the feeder's own
generator (data order, flips, fake labels); both are saved in checkpoints, and snapshots draw
nothing from either, so a resumed run ends with exactly the weights of an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from .. import fileio
from ..convert import Converted
from ..images import save_grid
from ..torch_settings import torch_settings
from . import checkpoint as ckpt_io
from .checkpoint import ResumeError, restore_run, save_checkpoint
from .config import TrainConfig
from .grids import grid_latents, render, save_reals
from .init_from import apply_init
from .phases import train_step
from .plots import plot_losses
from .signals import StopRequest
from .state import Run, pick_device, pick_threads, setup_run
from .stats import StatsAccumulator, StatsWriter, non_finite

__all__ = ["ResumeError", "TrainResult", "TrainingDiverged", "TrainingWriteError", "train"]


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; the message names it and the last good checkpoint."""


class TrainingWriteError(RuntimeError):
    """A file of the run could not be written (full disk, lost mount...). One line: the file, the
    cause, and the last good checkpoint to resume from."""


@dataclass
class TrainResult:
    """Where a run's outputs went and how it ended."""

    run_dir: Path
    cur_nimg: int
    status: str                    # "done" | "stopped" (signal or request)
    checkpoint: Path | None
    files: dict[str, Path] = field(default_factory=dict)
    stop_signal: int | None = None  # the signal that stopped the run (exit status 128 + it)


# --------------------------------------------------------------------------------------------
# The loop.

def _crossed(prev: int, cur: int, every_nimg: int) -> bool:
    return cur // every_nimg > prev // every_nimg


def train(cfg: TrainConfig, run_dir: str | Path, dataset: Any, *, resume: dict[str, Any] | None = None,
          allow_data_change: bool = False, progress: bool = True, keep: int = 0,
          log: Callable[[str], None] = print, stop: StopRequest | None = None,
          init: Converted | None = None) -> TrainResult:
    """Train into `run_dir` (created if needed) until cfg.kimg, a signal, or divergence.

    dataset: an ImageDataset (uint8 images [N, C, R, R]). resume: a loaded checkpoint dict (its
    config must match `cfg` except for kimg and the bookkeeping fields). init: weights a fresh
    run starts from (init_from.load_init; ValueError if its networks differ from cfg's). Raises TrainingDiverged
    on a NaN/Inf loss, ResumeError for a checkpoint of another dataset or model,
    TrainingWriteError when a file cannot be written (the last good checkpoint stays usable).
    """
    run_dir = Path(run_dir)
    fileio.make_dirs(run_dir)
    # Temporaries of a writer killed mid-write (the run's own files; no one else writes here).
    stale = [p for d in (run_dir, run_dir / ckpt_io.CHECKPOINTS) for p in fileio.remove_stale_temporaries(d)]
    if stale:
        log(f"removed {len(stale)} temporary file(s) left by an interrupted write: "
            f"{', '.join(p.name for p in stale[:4])}{' ...' if len(stale) > 4 else ''}")
    device = pick_device(cfg)
    # Thread count and cuDNN autotuning (same shapes every step) hold for this run only: a
    # notebook that trains gets its own settings back.
    with torch_settings(threads=pick_threads(cfg, device), cudnn_benchmark=True if device.type == "cuda" else None):
        return _train(cfg, run_dir, dataset, device, resume, allow_data_change, progress, keep, log, stop, init)


def _train(cfg: TrainConfig, run_dir: Path, dataset: Any, device: torch.device, resume: dict[str, Any] | None,
           allow_data_change: bool, progress: bool, keep: int, log: Callable[[str], None],
           stop: StopRequest | None, init: Converted | None = None) -> TrainResult:
    """train() with the process settings in place."""
    if resume is not None and init is not None:
        raise ValueError("resume continues a run, init starts one from other weights: give one of them")
    log(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                               else f", {torch.get_num_threads()} thread(s)"))
    run = setup_run(cfg, dataset, device)
    if run.aug.kind != "none":  # once per run; names what is skipped (colour on 1 channel) and why
        log(f"augmentation: {run.aug.describe()}")
    if init is not None:
        apply_init(run, init)
        log(f"networks initialised from {init.report.source}")
    stats = StatsWriter(run_dir)
    files: dict[str, Path] = {"config": run_dir / "config.json"}
    if resume is not None:
        restore_run(run, resume, allow_data_change)
        # The file resumed from: newer ones may exist but failed validation (see load_newest_valid).
        run.last_checkpoint = Path(resume["path"]) if "path" in resume else None
    else:
        found = ckpt_io.list_checkpoints(run_dir)
        run.last_checkpoint = found[-1][1] if found else None
    try:
        if resume is not None:
            stats.truncate_after(run.cur_nimg)
        _write_config(run, files["config"])
        files["reals"] = save_reals(run, dataset, run_dir / "reals.png")
        grid_z, grid_c = grid_latents(run)
        if resume is None:
            save_grid(render(run.G_ema, grid_z, grid_c, cfg.batch), run_dir / "fakes_init.png")
        return _loop(run, run_dir, grid_z, grid_c, stats, files, keep, progress, log, stop)
    except fileio.WriteError as e:
        kept = (f"the last good checkpoint is {run.last_checkpoint}" if run.last_checkpoint
                else "no checkpoint was written yet")
        raise TrainingWriteError(f"{e}; training stopped at {run.cur_nimg / 1000:.3f} kimg, {kept}") from None


def _loop(run: Run, run_dir: Path, grid_z: torch.Tensor, grid_c: torch.Tensor, stats: StatsWriter,
          files: dict[str, Path], keep: int, progress: bool, log: Callable[[str], None],
          stop: StopRequest | None) -> TrainResult:
    """Steps, ticks and snapshots until kimg or a stop; the body of train()."""
    cfg = run.cfg
    total_nimg = int(math.ceil(cfg.kimg * 1000))
    tick_nimg = max(1, int(round(cfg.tick_kimg * 1000)))
    snap_nimg = max(1, int(round(cfg.snap_kimg * 1000)))
    acc = StatsAccumulator()
    tick_start = (time.perf_counter(), run.cur_nimg)
    bar = tqdm(total=total_nimg, initial=min(run.cur_nimg, total_nimg), unit="img", unit_scale=True,
               disable=not progress, dynamic_ncols=True, desc="train")
    status = "done"
    try:
        with (stop or StopRequest()) as stop:
            while run.cur_nimg < total_nimg:
                prev = run.cur_nimg
                train_step(run, acc)
                done = run.cur_nimg >= total_nimg
                snap = done or stop.requested is not None or _crossed(prev, run.cur_nimg, snap_nimg)
                if snap or _crossed(prev, run.cur_nimg, tick_nimg):
                    tick_start = _end_tick(run, acc, stats, bar, tick_start)
                if snap:
                    t0 = time.perf_counter()
                    _snapshot(run, run_dir, grid_z, grid_c, stats, keep, files)
                    # Snapshot time counts in the run's total but not in the next tick's img/s.
                    run.elapsed_s += time.perf_counter() - t0
                    tick_start = (time.perf_counter(), run.cur_nimg)
                if stop.requested is not None and not done:
                    status = "stopped"
                    break
    finally:
        bar.close()  # before any message, so it does not land on the bar's line
    if status == "stopped":
        log(f"{stop.requested}: saved {run.last_checkpoint} at {run.cur_nimg / 1000:.3f} kimg; "
            f"continue with --resume {run_dir}")
    if run.last_checkpoint is None:  # kimg already reached when resuming: still leave a complete directory
        _snapshot(run, run_dir, grid_z, grid_c, stats, keep, files)
    files["checkpoint"] = run.last_checkpoint
    return TrainResult(run_dir=run_dir, cur_nimg=run.cur_nimg, status=status, checkpoint=run.last_checkpoint,
                       files=files,
                       stop_signal=stop.signum if status == "stopped" else None)


def _write_config(run: Run, path: Path) -> None:
    doc = {"train": run.cfg.to_dict(), "model": run.model_cfg, "dataset": run.dataset_info,
           "device": str(run.device), "threads": torch.get_num_threads(), "torch": str(torch.__version__)}
    fileio.atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


def _end_tick(run: Run, acc: StatsAccumulator, stats: StatsWriter, bar: Any,
              tick_start: tuple[float, int]) -> tuple[float, int]:
    """Read the tick's losses (the only host sync), stop on NaN/Inf, write a stats row."""
    values = acc.reduce()
    now = time.perf_counter()
    dt, dn = now - tick_start[0], run.cur_nimg - tick_start[1]
    run.elapsed_s += dt
    bad = non_finite(values)
    if bad:
        kept = (f"the last good checkpoint is {run.last_checkpoint}" if run.last_checkpoint
                else "no checkpoint was written yet")
        raise TrainingDiverged(
            f"training diverged at {run.cur_nimg / 1000:.3f} kimg (step {run.step}): "
            f"{', '.join(f'{k} = {values[k]}' for k in bad)}; stopped, {kept}. Try a lower --lr "
            f"or a larger --gamma, or --precision fp32.")
    run.tick += 1
    row = {"tick": run.tick, "kimg": run.cur_nimg / 1000, "nimg": run.cur_nimg, "step": run.step,
           "time_s": round(run.elapsed_s, 3), "img_per_s": dn / max(dt, 1e-9),
           "sec_per_kimg": dt / max(dn, 1) * 1000}
    if run.device.type == "cuda":
        row["gpu_mem_gb"] = torch.cuda.max_memory_allocated(run.device) / 2**30
        torch.cuda.reset_peak_memory_stats(run.device)
    row.update(values)
    stats.append(row)
    bar.update(min(run.cur_nimg, bar.total) - bar.n)
    post = f"kimg {row['kimg']:.2f}"
    for key, short in (("Loss/G/main", "G"), ("Loss/D/main", "D"), ("Loss/D/reg", "R1"), ("Loss/G/reg", "PL")):
        if key in values:
            post += f" {short} {values[key]:.3f}"
    bar.set_postfix_str(post, refresh=True)
    return now, run.cur_nimg


def _snapshot(run: Run, run_dir: Path, grid_z: torch.Tensor, grid_c: torch.Tensor,
              stats: StatsWriter, keep: int, files: dict[str, Path]) -> Path:
    """Checkpoint, fixed-latent grid and plots, after checking the weights are still finite."""
    for name, module in (("G", run.G), ("D", run.D), ("G_ema", run.G_ema)):
        finite = torch.stack([p.detach().isfinite().all() for p in module.parameters()]).all()
        if not bool(finite):
            raise TrainingDiverged(f"{name} has NaN/Inf weights at {run.cur_nimg / 1000:.3f} kimg; "
                                   f"not saving them over the last good checkpoint")
    path = save_checkpoint(run, run_dir, keep)
    run.last_checkpoint = path  # before the grid and plots: their failure must name this one
    tag = ckpt_io.ckpt_tag(run.cur_nimg)
    files["fakes"] = save_grid(render(run.G_ema, grid_z, grid_c, run.cfg.batch), run_dir / f"fakes_{tag}.png")
    rows = stats.rows()
    if rows:
        files["loss_G"], files["loss_D"], files["losses"] = plot_losses(rows, run_dir)
    files["stats_jsonl"], files["stats_csv"] = stats.jsonl, stats.csv
    return path
