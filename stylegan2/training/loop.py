"""The training loop: steps (phases.py) until kimg, with ticks and snapshots around them.

    train(cfg, run_dir, dataset)  ->  TrainResult

Losses stay on the device; they are read only at tick boundaries (`tick_kimg`),
where progress is shown, stats are written and a NaN/Inf stops the run. Snapshots (`snap_kimg`,
the end, a signal) write a checkpoint, a fixed-latent grid and the loss plots, and, when asked,
measure metrics (snapshot_metrics.py, keeping checkpoints/best.pt) and log to TensorBoard
(tensorboard.py). A wall-time budget (`minutes`) ends a run like reaching kimg does.

All randomness comes from the global torch RNG (latents, noise, style mixing) and the feeder's own
generator (data order, flips, fake labels); both are saved in checkpoints, and snapshots draw
nothing from either, so a resumed run ends with exactly the weights of an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import time
import warnings
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
from . import distributed
from .checkpoint import ResumeError, restore_run, save_checkpoint
from .config import TrainConfig
from .grids import grid_latents, render, save_reals
from .init_from import apply_init
from .phases import train_step
from .plots import plot_losses
from .signals import StopRequest
from .snapshot_metrics import (BestTracker, SnapshotMetrics, append_results, best_path, stats_values, summary,
                               truncate_results)
from .state import Run, pick_device, pick_threads, setup_run
from .stats import StatsAccumulator, StatsWriter, non_finite
from .tensorboard import TensorBoardLog, open_tensorboard

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
    ended_by: str = "kimg"          # "kimg" | "minutes" (the time budget) | "signal"
    best: dict[str, Any] | None = None  # train --metrics fid: the record of checkpoints/best.pt


@dataclass
class _Extras:
    """The optional parts of a run: metrics at snapshots, TensorBoard, a wall-time budget."""

    metrics: SnapshotMetrics | None = None
    best: BestTracker | None = None
    tb: TensorBoardLog = field(default_factory=TensorBoardLog)
    deadline: float | None = None   # time.perf_counter() by which the run must have ended
    budget_s: float | None = None


# --------------------------------------------------------------------------------------------
# The loop.

def _crossed(prev: int, cur: int, every_nimg: int) -> bool:
    return cur // every_nimg > prev // every_nimg


def train(cfg: TrainConfig, run_dir: str | Path, dataset: Any, *, resume: dict[str, Any] | None = None,
          allow_data_change: bool = False, progress: bool = True, keep: int = 0,
          log: Callable[[str], None] = print, stop: StopRequest | None = None,
          init: Converted | None = None, metrics: SnapshotMetrics | None = None,
          minutes: float | None = None, tensorboard: bool = False) -> TrainResult:
    """Train into `run_dir` (created if needed) until cfg.kimg, a signal, or divergence.

    dataset: an ImageDataset (uint8 images [N, C, R, R]). resume: a loaded checkpoint dict (its
    config must match `cfg` except for kimg and the bookkeeping fields). init: weights a fresh
    run starts from (init_from.load_init; ValueError if its networks differ from cfg's).
    metrics: measured at every snapshot (see snapshot_metrics.py). minutes: a wall-time budget
    from this call on; the run ends with a snapshot in time for it (status "done", ended_by
    "minutes") unless kimg comes first. tensorboard: also write events (when the package is
    installed; see tensorboard.py). Raises TrainingDiverged
    on a NaN/Inf loss, ResumeError for a checkpoint of another dataset or model,
    TrainingWriteError when a file cannot be written (the last good checkpoint stays usable).
    """
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"minutes must be a positive number, got {minutes!r}")
    extras = _Extras(metrics=metrics, budget_s=None if minutes is None else minutes * 60)
    if extras.budget_s is not None:
        extras.deadline = time.perf_counter() + extras.budget_s
    run_dir = Path(run_dir)
    # Under torchrun only rank 0 prints and writes files (distributed.py); every rank trains.
    world = distributed.current()
    if not world.is_main:
        log, progress = _quiet, False
    else:
        fileio.make_dirs(run_dir)
        # Temporaries of a writer killed mid-write (the run's own files; no one else writes here).
        stale = [p for d in (run_dir, run_dir / ckpt_io.CHECKPOINTS) for p in fileio.remove_stale_temporaries(d)]
        if stale:
            log(f"removed {len(stale)} temporary file(s) left by an interrupted write: "
                f"{', '.join(p.name for p in stale[:4])}{' ...' if len(stale) > 4 else ''}")
    device = distributed.rank_device(cfg.device, world) if world.active else pick_device(cfg)
    threads = pick_threads(cfg, device)
    if world.active and device.type == "cpu" and not cfg.threads:  # the node's cores shared by its ranks
        threads = max(1, (threads or 1) // world.local_size)
    # Thread count and cuDNN autotuning (same shapes every step) hold for this run only: a
    # notebook that trains gets its own settings back.
    with torch_settings(threads=threads, cudnn_benchmark=True if device.type == "cuda" else None):
        return _train(cfg, run_dir, dataset, device, resume, allow_data_change, progress, keep, log, stop, init,
                      extras, tensorboard)


def _train(cfg: TrainConfig, run_dir: Path, dataset: Any, device: torch.device, resume: dict[str, Any] | None,
           allow_data_change: bool, progress: bool, keep: int, log: Callable[[str], None],
           stop: StopRequest | None, init: Converted | None = None, extras: _Extras | None = None,
           tensorboard: bool = False) -> TrainResult:
    """train() with the process settings in place."""
    if resume is not None and init is not None:
        raise ValueError("resume continues a run, init starts one from other weights: give one of them")
    log(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                               else f", {torch.get_num_threads()} thread(s)")
        + (f" on each of {run_world().size} ranks" if run_world().active else ""))
    run = setup_run(cfg, dataset, device)
    log(_split_line(run))
    if run.aug.kind != "none":  # once per run; names what is skipped (colour on 1 channel) and why
        log(f"augmentation: {run.aug.describe()}")
        if run.aug.caution():
            log(f"warning: {run.aug.caution()}")
    if init is not None:
        apply_init(run, init)
        log(f"networks initialised from {init.report.source}")
    stats = StatsWriter(run_dir)
    files: dict[str, Path] = {"config": run_dir / "config.json"}
    if resume is not None:
        restore_run(run, resume, allow_data_change)
        # The file resumed from: newer ones may exist but failed validation (see load_newest_valid).
        run.last_checkpoint = Path(resume["path"]) if "path" in resume else None
        if run.split.note:
            log(f"resuming: {run.split.note}")
    else:
        found = ckpt_io.list_checkpoints(run_dir)
        run.last_checkpoint = found[-1][1] if found else None
    # Every rank starts from rank 0's weights, whatever each built or loaded, and knows rank 0's
    # newest checkpoint (a node without the run directory's files must still take the same path).
    run.last_checkpoint = distributed.broadcast_object(run.last_checkpoint)
    distributed.broadcast_tensors(_shared_state(run), "copying rank 0's networks to every rank")
    main = run_world().is_main
    extras = extras or _Extras()
    try:
        if resume is not None and main:
            stats.truncate_after(run.cur_nimg)
        if main and extras.metrics is not None:  # measured and kept by rank 0 only
            extras.metrics.prepare(progress)  # a no-op when the caller prepared them already
            extras.best = BestTracker(run_dir, extras.metrics.net.key, run.cur_nimg, log)
            if resume is not None:
                truncate_results(run_dir, run.cur_nimg)
        extras.tb = open_tensorboard(run_dir, tensorboard and main,
                                     resumed_at=run.cur_nimg if resume is not None else None)
        if extras.tb.enabled:
            files["tensorboard"] = run_dir / "tensorboard"
        grid_z, grid_c = grid_latents(run)
        if main:
            _write_config(run, files["config"])
            files["reals"] = save_reals(run, dataset, run_dir / "reals.png")
        if resume is None and main:
            save_grid(render(run.G_ema, grid_z, grid_c, cfg.batch), run_dir / "fakes_init.png")
        return _loop(run, run_dir, grid_z, grid_c, stats, files, keep, progress, log, stop, extras)
    except fileio.WriteError as e:
        kept = (f"the last good checkpoint is {run.last_checkpoint}" if run.last_checkpoint
                else "no checkpoint was written yet")
        raise TrainingWriteError(f"{e}; training stopped at {run.cur_nimg / 1000:.3f} kimg, {kept}") from None
    finally:
        extras.tb.close()


def _loop(run: Run, run_dir: Path, grid_z: torch.Tensor, grid_c: torch.Tensor, stats: StatsWriter,
          files: dict[str, Path], keep: int, progress: bool, log: Callable[[str], None],
          stop: StopRequest | None, extras: _Extras | None = None) -> TrainResult:
    """Steps, ticks and snapshots until kimg, the time budget or a stop; the body of train()."""
    cfg = run.cfg
    extras = extras or _Extras()
    total_nimg = int(math.ceil(cfg.kimg * 1000))
    tick_nimg = max(1, int(round(cfg.tick_kimg * 1000)))
    snap_nimg = max(1, int(round(cfg.snap_kimg * 1000)))
    acc = StatsAccumulator()
    tick_start = (time.perf_counter(), run.cur_nimg)
    bar = _progress_bar(run, total_nimg, extras, progress)
    status, ended_by = "done", "kimg"
    snap_s = 0.0  # how long the last snapshot took: the budget keeps time for the final one
    try:
        with (stop or StopRequest()) as stop:
            while run.cur_nimg < total_nimg:
                prev = run.cur_nimg
                train_step(run, acc)
                if run_world().active and distributed.any_across(stop.requested is not None) \
                        and stop.requested is None:  # all ranks stop after the same step
                    stop.request("stop requested on another rank")
                done = run.cur_nimg >= total_nimg
                if extras.deadline is not None:
                    out_of_time = not done and time.perf_counter() + snap_s >= extras.deadline
                    if run_world().active:  # every rank ends after the same step, or one would wait forever
                        out_of_time = distributed.any_across(out_of_time)
                    if out_of_time:
                        done, ended_by = True, "minutes"
                snap = done or stop.requested is not None or _crossed(prev, run.cur_nimg, snap_nimg)
                if snap or _crossed(prev, run.cur_nimg, tick_nimg):
                    tick_start = _end_tick(run, acc, stats, bar, tick_start, extras, bar.write if progress else log)
                if snap:
                    t0 = time.perf_counter()
                    _snapshot(run, run_dir, grid_z, grid_c, stats, keep, files, extras, bar.write if progress else log)
                    # Snapshot time counts in the run's total but not in the next tick's img/s.
                    snap_s = time.perf_counter() - t0
                    run.elapsed_s += snap_s
                    tick_start = (time.perf_counter(), run.cur_nimg)
                if done:
                    break
                if stop.requested is not None:
                    status, ended_by = "stopped", "signal"
                    break
    finally:
        bar.close()  # before any message, so it does not land on the bar's line
    if status == "stopped":
        log(f"{stop.requested}: saved {run.last_checkpoint} at {run.cur_nimg / 1000:.3f} kimg; "
            f"continue with --resume {run_dir}")
    elif ended_by == "minutes":
        log(f"time budget of {extras.budget_s / 60:g} min reached at {run.cur_nimg / 1000:.3f} kimg; "
            f"continue with --resume {run_dir}")
    if run.last_checkpoint is None:  # kimg already reached when resuming: still leave a complete directory
        _snapshot(run, run_dir, grid_z, grid_c, stats, keep, files, extras, log)
    files["checkpoint"] = run.last_checkpoint
    if extras.best is not None and extras.best.best is not None:
        files["best"] = best_path(run_dir)
    return TrainResult(run_dir=run_dir, cur_nimg=run.cur_nimg, status=status, checkpoint=run.last_checkpoint,
                       files=files, stop_signal=stop.signum if status == "stopped" else None,
                       ended_by=ended_by, best=extras.best.best if extras.best is not None else None)


def _progress_bar(run: Run, total_nimg: int, extras: _Extras, progress: bool) -> Any:
    """Images shown out of kimg; with a time budget, seconds out of the budget instead, so the
    bar shows the time left (the postfix still says kimg)."""
    if extras.budget_s is not None:
        return tqdm(total=round(extras.budget_s), unit="s", disable=not progress, dynamic_ncols=True,
                    desc="train", bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} s{postfix}")
    return tqdm(total=total_nimg, initial=min(run.cur_nimg, total_nimg), unit="img", unit_scale=True,
                disable=not progress, dynamic_ncols=True, desc="train")


def _write_config(run: Run, path: Path) -> None:
    doc = {"train": run.cfg.to_dict(), "model": run.model_cfg, "dataset": run.dataset_info,
           "device": str(run.device), "threads": torch.get_num_threads(), "torch": str(torch.__version__),
           "ranks": run.split.world.size, "batch_gpu": run.split.batch_gpu, "rounds": run.split.rounds}
    fileio.atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


def _end_tick(run: Run, acc: StatsAccumulator, stats: StatsWriter, bar: Any,
              tick_start: tuple[float, int], extras: _Extras | None = None,
              say: Callable[[str], None] = print) -> tuple[float, int]:
    """Read the tick's losses (the only host sync), stop on NaN/Inf, write a stats row."""
    values = acc.reduce(distributed.mean_across if run_world().active else None)  # means over ranks too
    now = time.perf_counter()
    # The slowest rank's time; cur_nimg counts every rank's images: a global img/s.
    dt, dn = distributed.max_across(now - tick_start[0]), run.cur_nimg - tick_start[1]
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
        row["gpu_mem_gb"] = distributed.max_across(torch.cuda.max_memory_allocated(run.device) / 2**30)
        torch.cuda.reset_peak_memory_stats(run.device)
    row.update(values)
    extras = extras or _Extras()
    if run_world().is_main:
        stats.append(row)
        extras.tb.tick(row, run.cur_nimg)
        caution = run.aug.tick_caution(values.get("Aug/p"))
        if caution:
            say(f"warning at {run.cur_nimg / 1000:.3f} kimg: {caution}")
    post = f"kimg {row['kimg']:.2f}"
    if extras.deadline is not None:
        left = max(0.0, extras.deadline - now)
        bar.update(min(round(extras.budget_s - left), bar.total) - bar.n)
        post += f" left {int(left // 60)}:{int(left % 60):02d}"
    else:
        bar.update(min(run.cur_nimg, bar.total) - bar.n)
    for key, short in (("Loss/G/main", "G"), ("Loss/D/main", "D"), ("Loss/D/reg", "R1"), ("Loss/G/reg", "PL")):
        if key in values:
            post += f" {short} {values[key]:.3f}"
    bar.set_postfix_str(post, refresh=True)
    return now, run.cur_nimg


def _snapshot(run: Run, run_dir: Path, grid_z: torch.Tensor, grid_c: torch.Tensor,
              stats: StatsWriter, keep: int, files: dict[str, Path], extras: _Extras | None = None,
              say: Callable[[str], None] = print) -> Path:
    """Checkpoint, fixed-latent grid, metrics (with best.pt) and plots, after checking the weights
    are still finite. `say` prints a line without breaking the progress bar."""
    extras = extras or _Extras()
    for name, module in (("G", run.G), ("D", run.D), ("G_ema", run.G_ema)):
        finite = torch.stack([p.detach().isfinite().all() for p in module.parameters()]).all()
        if not bool(finite):
            raise TrainingDiverged(f"{name} has NaN/Inf weights at {run.cur_nimg / 1000:.3f} kimg; "
                                   f"not saving them over the last good checkpoint")
    # Collectives first (every rank): the RNG streams for the checkpoint, and the check that
    # the ranks still hold the same G_ema, w_avg and path-length mean.
    run.split.gather()
    _check_ranks_agree(run)
    if not run_world().is_main:
        path = Path(run_dir) / ckpt_io.CHECKPOINTS / ckpt_io.ckpt_name(run.cur_nimg)  # rank 0 writes it
        run.last_checkpoint = path
        return path
    path = save_checkpoint(run, run_dir, keep)
    run.last_checkpoint = path  # before the grid and plots: their failure must name this one
    tag = ckpt_io.ckpt_tag(run.cur_nimg)
    fakes = render(run.G_ema, grid_z, grid_c, run.cfg.batch)
    files["fakes"] = save_grid(fakes, run_dir / f"fakes_{tag}.png")
    values: dict[str, float] = {}
    if extras.metrics is not None:
        results = extras.metrics.measure(run.G_ema)
        values = stats_values(results)
        best = extras.best.update(run, results) if extras.best is not None else None
        if best is not None:
            files["best"] = best
        files["metrics"] = append_results(run_dir, run.cur_nimg, results, best is not None)
        stats.add_to_last(run.cur_nimg, values)
        say(f"kimg {run.cur_nimg / 1000:.3f}: {summary(results)}{' (best so far)' if best is not None else ''}")
    extras.tb.snapshot(run.cur_nimg, fakes, values)
    rows = stats.rows()
    if rows:
        files["loss_G"], files["loss_D"], files["losses"] = plot_losses(rows, run_dir)
    files["stats_jsonl"], files["stats_csv"] = stats.jsonl, stats.csv
    return path


# --------------------------------------------------------------------------------------------
# Several ranks (distributed.py): what the loop adds around the steps.

def _quiet(message: str) -> None:
    """The log of ranks other than 0: they print nothing."""


def run_world() -> distributed.World:
    return distributed.current()


def _split_line(run: Run) -> str:
    sp = run.split
    if sp.trivial:
        return f"batch {sp.batch} in one round"
    return (f"batch {sp.batch} = {sp.world.size} rank(s) x {sp.rounds} round(s) x {sp.batch_gpu} images "
            f"(--batch-gpu); gradients summed over rounds and ranks")


def _shared_state(run: Run) -> list[torch.Tensor]:
    """What every rank must hold alike: the networks' weights and buffers, the path-length mean."""
    tensors = [t for m in (run.G, run.D, run.G_ema) for t in (*m.parameters(), *m.buffers())
               if t.is_floating_point()]
    pl_mean = getattr(run.loss, "pl_mean", None)
    return tensors + ([pl_mean] if torch.is_tensor(pl_mean) else [])


def _check_ranks_agree(run: Run) -> None:
    """At a snapshot: G_ema, w_avg and the path-length mean must be bit-identical on every rank
    (the reductions make them so). Should they differ, say so and continue from rank 0's."""
    if not run_world().active:
        return
    named = {f"G_ema.{k}": v for k, v in run.G_ema.state_dict().items() if v.is_floating_point()}
    named.update({f"G.{k}": v for k, v in run.G.named_buffers() if k.endswith("w_avg")})
    if torch.is_tensor(getattr(run.loss, "pl_mean", None)):
        named["pl_mean"] = run.loss.pl_mean
    if run.aug.controller is not None:
        named["ada_p"] = run.aug.controller.p
    differ = distributed.sync_tensors(named, "checking the ranks hold the same G_ema")
    if differ:
        if run_world().is_main:
            warnings.warn(f"ranks disagree at {run.cur_nimg / 1000:.3f} kimg on {', '.join(differ[:4])}"
                          f"{' ...' if len(differ) > 4 else ''}; continuing from rank 0's values",
                          RuntimeWarning, stacklevel=2)
        distributed.broadcast_tensors(_shared_state(run), "copying rank 0's networks to every rank")
        if "ada_p" in differ:  # float64, so not through the float32 buckets above
            ctrl = run.aug.controller
            ctrl.p = distributed.broadcast_object(ctrl.p.cpu(), "copying rank 0's ADA p").to(ctrl.p.device)
