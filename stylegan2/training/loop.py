"""The training loop: a flat sequence of small phases (G main, G reg, D main, D reg, EMA).

    train(cfg, run_dir)  ->  TrainResult

Per step, as in StyleGAN2-ADA: G main every step, G path-length reg every `pl_interval` steps, D
main every step, D R1 every `r1_interval` steps, then the G_ema update. Lazy regularization uses
Adam's correction (lr and betas scaled by interval / (interval + 1)) and multiplies the penalty by
its interval. Losses stay on the device; they are read only at tick boundaries (`tick_kimg`),
where progress is shown, stats are written and a NaN/Inf stops the run. Snapshots (`snap_kimg`,
the end, a signal) write a checkpoint, a fixed-latent grid and the loss plots.

All randomness comes from the global torch RNG (latents, noise, style mixing) and the feeder's own
generator (data order, flips, fake labels); both are saved in checkpoints, and snapshots draw
nothing from either, so a resumed run ends with exactly the weights of an uninterrupted one.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt_io
from .config import TrainConfig
from .feed import BatchFeeder
from .grids import save_grid
from .plots import plot_losses
from .signals import StopRequest
from .stats import StatsAccumulator, StatsWriter, non_finite


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; the message names it and the last good checkpoint."""


class ResumeError(RuntimeError):
    """A checkpoint that cannot continue this run (other dataset, other model)."""


@dataclass
class TrainResult:
    run_dir: Path
    cur_nimg: int
    status: str                    # "done" | "stopped" (signal or request)
    checkpoint: Path | None
    files: dict[str, Path] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Building blocks (module level, so tests can swap the networks for stand-ins).

def model_config_dict(cfg: TrainConfig, c_dim: int) -> dict[str, Any]:
    """The networks' ModelConfig fields this training config decides."""
    d = dict(resolution=cfg.resolution, channels=cfg.channels, c_dim=c_dim, z_dim=cfg.z_dim,
             w_dim=cfg.w_dim, mapping_layers=cfg.mapping_layers, channel_base=cfg.channel_base,
             channel_max=cfg.channel_max, num_fp16_res=cfg.num_fp16_res, precision=cfg.precision,
             conv_clamp=cfg.conv_clamp, mbstd_group=cfg.mbstd_group)
    return d


def build_networks(model_cfg: dict[str, Any], device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(G, D) on `device` from a ModelConfig dict (unknown keys are an error from ModelConfig)."""
    from stylegan2.networks import Discriminator, Generator, ModelConfig
    mc = ModelConfig.from_dict(model_cfg)
    return Generator(mc).to(device), Discriminator(mc).to(device)


def build_loss(G: torch.nn.Module, D: torch.nn.Module, cfg: TrainConfig) -> Any:
    """The StyleGAN2 loss. It weights each lazy penalty by its interval itself; an interval of 0
    (off) is passed as 1 because the phase is then never run."""
    from stylegan2.losses import LossConfig, StyleGAN2Loss
    lc = LossConfig(kind=cfg.loss, r1_gamma=cfg.gamma, pl_weight=cfg.pl_weight if cfg.pl_interval else 0.0,
                    style_mixing_prob=cfg.style_mixing, g_reg_interval=max(cfg.pl_interval, 1),
                    d_reg_interval=max(cfg.r1_interval, 1))
    return StyleGAN2Loss(G, D, lc)


def make_optimizer(module: torch.nn.Module, cfg: TrainConfig, interval: int) -> torch.optim.Adam:
    """Adam with the lazy-regularization correction: with a penalty every `interval` steps the
    effective step count grows by (interval + 1) / interval, so lr and betas are scaled back.
    Intervals 0 (off) and 1 (penalty inside the main step) need no correction."""
    ratio = interval / (interval + 1) if interval > 1 else 1.0
    return torch.optim.Adam(module.parameters(), lr=cfg.lr * ratio,
                            betas=(float(cfg.beta1) ** ratio, float(cfg.beta2) ** ratio),
                            eps=cfg.eps)


def loss_state(loss: Any) -> dict[str, Any]:
    """The loss's own persistent state (the path-length running mean)."""
    if hasattr(loss, "state_dict"):
        return dict(loss.state_dict())
    return {"pl_mean": loss.pl_mean.detach().clone()} if torch.is_tensor(getattr(loss, "pl_mean", None)) else {}


def load_loss_state(loss: Any, state: dict[str, Any]) -> None:
    if hasattr(loss, "load_state_dict"):
        loss.load_state_dict(state)
    elif "pl_mean" in state:
        loss.pl_mean.copy_(state["pl_mean"])


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.device:
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------------------------
# The state of a run and its phases.

@dataclass
class Run:
    cfg: TrainConfig
    device: torch.device
    G: torch.nn.Module
    D: torch.nn.Module
    G_ema: torch.nn.Module
    loss: Any
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    feeder: BatchFeeder
    model_cfg: dict[str, Any]
    dataset_info: dict[str, Any]
    cur_nimg: int = 0
    step: int = 0
    tick: int = 0
    elapsed_s: float = 0.0


def _sanitize_grads(module: torch.nn.Module) -> None:
    # A rare inf in one gradient should not poison Adam's moments; a persistent NaN still shows up
    # in the losses and stops the run at the next tick.
    for p in module.parameters():
        if p.grad is not None:
            torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)


def _optimize(run: Run, module: torch.nn.Module, other: torch.nn.Module, opt: torch.optim.Optimizer,
              acc: StatsAccumulator, terms: dict[str, Callable[[], torch.Tensor]]) -> None:
    """One phase: gradients only for `module`, the sum of the named loss terms backpropagated,
    one optimizer step. Each term and the loss object's per-term stats go to `acc`."""
    module.requires_grad_(True)
    other.requires_grad_(False)
    opt.zero_grad(set_to_none=True)
    total = None
    for name, compute in terms.items():
        loss = compute()
        _collect(run, acc, name, loss.detach())
        total = loss if total is None else total + loss
    total.backward()
    _sanitize_grads(module)
    opt.step()


def _latents(run: Run) -> tuple[torch.Tensor, torch.Tensor | None]:
    z = torch.randn(run.cfg.batch, run.cfg.z_dim, device=run.device)
    return z, (run.feeder.fake_labels(run.cfg.batch) if run.feeder.c_dim else None)


_SAME_AS_PHASE = {"G/loss", "G/reg", "D/loss", "D/reg"}  # the loss's copies of our Loss/* entries


def _collect(run: Run, acc: StatsAccumulator, name: str, value: torch.Tensor) -> None:
    """Add a phase's loss and the loss object's per-term stats (as Loss/<name>)."""
    acc.add(name, value)
    stats = getattr(run.loss, "stats", None)
    if isinstance(stats, dict):
        acc.add_all("Loss/", {k: v for k, v in stats.items() if k not in _SAME_AS_PHASE})
        stats.clear()


def phase_g_main(run: Run, acc: StatsAccumulator, with_reg: bool = False) -> None:
    """Generator loss (+ the path-length penalty in the same step when it runs every step)."""
    z, c = _latents(run)
    terms = {"Loss/G/main": lambda: run.loss.g_main(z, c)}
    if with_reg:
        terms["Loss/G/reg"] = lambda: run.loss.g_reg(z, c)
    _optimize(run, run.G, run.D, run.opt_G, acc, terms)


def phase_g_reg(run: Run, acc: StatsAccumulator) -> None:
    """Lazy path-length regularization, its own optimizer step (weighted by the interval)."""
    z, c = _latents(run)
    _optimize(run, run.G, run.D, run.opt_G, acc, {"Loss/G/reg": lambda: run.loss.g_reg(z, c)})


def phase_d_main(run: Run, acc: StatsAccumulator, real: torch.Tensor, real_c: torch.Tensor | None,
                 with_reg: bool = False) -> None:
    """Discriminator loss on reals and fakes (+ R1/GP in the same step when it runs every step)."""
    z, c = _latents(run)
    terms = {"Loss/D/main": lambda: run.loss.d_main(real, real_c, z, c)}
    if with_reg:
        terms["Loss/D/reg"] = lambda: run.loss.d_reg(real, real_c)
    _optimize(run, run.D, run.G, run.opt_D, acc, terms)


def phase_d_reg(run: Run, acc: StatsAccumulator, real: torch.Tensor, real_c: torch.Tensor | None) -> None:
    """Lazy R1 (or the WGAN-GP penalty), its own optimizer step (weighted by the interval)."""
    _optimize(run, run.D, run.G, run.opt_D, acc, {"Loss/D/reg": lambda: run.loss.d_reg(real, real_c)})


def update_ema(run: Run) -> None:
    """G_ema <- lerp towards G with half-life ema_kimg (shortened early on by ema_rampup)."""
    from stylegan2.networks import ema_beta, ema_update
    cfg = run.cfg
    ema_update(run.G_ema, run.G, ema_beta(cfg.batch, cfg.ema_kimg, rampup=cfg.ema_rampup, cur_nimg=run.cur_nimg))


def train_step(run: Run, acc: StatsAccumulator) -> None:
    """One minibatch: the four phases, the EMA update, the counters. A regularizer with interval
    1 joins its main phase (one optimizer step); a larger interval makes it a lazy phase."""
    cfg = run.cfg
    real, real_c = run.feeder.reals()
    real_c = real_c if run.feeder.c_dim else None
    pl_on, r1_on = cfg.pl_interval > 0 and cfg.pl_weight > 0, cfg.r1_interval > 0
    phase_g_main(run, acc, with_reg=pl_on and cfg.pl_interval == 1)
    if pl_on and cfg.pl_interval > 1 and run.step % cfg.pl_interval == 0:
        phase_g_reg(run, acc)
    phase_d_main(run, acc, real, real_c, with_reg=r1_on and cfg.r1_interval == 1)
    if r1_on and cfg.r1_interval > 1 and run.step % cfg.r1_interval == 0:
        phase_d_reg(run, acc, real, real_c)
    update_ema(run)
    run.cur_nimg += cfg.batch
    run.step += 1


# --------------------------------------------------------------------------------------------
# Setting up, saving, resuming.

def dataset_info(dataset: Any) -> dict[str, Any]:
    return {"fingerprint": str(dataset.fingerprint()), "source": str(getattr(dataset, "source", "")),
            "num_images": int(len(dataset)), "label_names": [str(n) for n in dataset.label_names],
            "skipped": int(getattr(dataset, "skipped", 0))}


def setup_run(cfg: TrainConfig, dataset: Any, device: torch.device) -> Run:
    """Fresh networks, optimizers and feeder, seeded from cfg.seed."""
    c_dim = len(dataset.label_names) if cfg.cond else 0
    if cfg.cond and (c_dim == 0 or dataset.labels is None):
        raise ValueError(f"--cond: the dataset ({dataset.source}) has no labels to condition on")
    torch.manual_seed(cfg.seed)
    model_cfg = model_config_dict(cfg, c_dim)
    G, D = build_networks(model_cfg, device)
    G.train()
    D.train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    feeder = BatchFeeder(dataset.images, dataset.labels if c_dim else None, c_dim, cfg.batch, device,
                         seed=cfg.seed, mirror=cfg.mirror)
    return Run(cfg=cfg, device=device, G=G, D=D, G_ema=G_ema, loss=build_loss(G, D, cfg),
               opt_G=make_optimizer(G, cfg, cfg.pl_interval if cfg.pl_weight > 0 else 0),
               opt_D=make_optimizer(D, cfg, cfg.r1_interval), feeder=feeder, model_cfg=model_cfg,
               dataset_info=dataset_info(dataset))


def checkpoint_dict(run: Run) -> dict[str, Any]:
    rng = ckpt_io.capture_rng()
    rng["feeder"] = run.feeder.state_dict()
    return ckpt_io.new_checkpoint(
        G=run.G.state_dict(), D=run.D.state_dict(), G_ema=run.G_ema.state_dict(),
        opt_G=run.opt_G.state_dict(), opt_D=run.opt_D.state_dict(), loss=loss_state(run.loss),
        config=run.cfg.to_dict(), model_config=dict(run.model_cfg),
        progress={"cur_nimg": run.cur_nimg, "step": run.step, "tick": run.tick,
                  "elapsed_s": float(run.elapsed_s)},
        rng=rng, dataset=dict(run.dataset_info))


def save_checkpoint(run: Run, run_dir: Path, keep: int = 0) -> Path:
    path = ckpt_io.atomic_save(checkpoint_dict(run), Path(run_dir) / "checkpoints" / ckpt_io.ckpt_name(run.cur_nimg))
    ckpt_io.prune_checkpoints(run_dir, keep)
    return path


def restore_run(run: Run, ckpt: dict[str, Any], allow_data_change: bool = False) -> None:
    """Load everything a checkpoint holds into a freshly set-up run (same config)."""
    saved_fp = ckpt["dataset"]["fingerprint"]
    if saved_fp != run.dataset_info["fingerprint"]:
        if not allow_data_change:
            raise ResumeError(
                f"the dataset differs from the one this checkpoint was trained on "
                f"(checkpoint: {ckpt['dataset']['source']!r}, fingerprint {saved_fp[:12]}; now: "
                f"{run.dataset_info['source']!r}, fingerprint {run.dataset_info['fingerprint'][:12]}). "
                f"Pass --allow-data-change to continue on the new data anyway.")
    if ckpt["model_config"] != run.model_cfg:
        raise ResumeError(f"checkpoint model {ckpt['model_config']} differs from {run.model_cfg}")
    run.G.load_state_dict(ckpt["G"])
    run.D.load_state_dict(ckpt["D"])
    run.G_ema.load_state_dict(ckpt["G_ema"])
    run.opt_G.load_state_dict(ckpt["opt_G"])
    run.opt_D.load_state_dict(ckpt["opt_D"])
    load_loss_state(run.loss, ckpt.get("loss", {}))
    p = ckpt["progress"]
    run.cur_nimg, run.step, run.tick = int(p["cur_nimg"]), int(p["step"]), int(p["tick"])
    run.elapsed_s = float(p["elapsed_s"])
    if saved_fp == run.dataset_info["fingerprint"]:
        run.feeder.load_state_dict(ckpt["rng"]["feeder"])
    ckpt_io.restore_rng(ckpt["rng"])


# --------------------------------------------------------------------------------------------
# Grids.

def grid_latents(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed z [grid_images, z_dim] and labels (classes in turn) for the fake grids. Drawn from a
    private generator so snapshots never disturb the training RNG."""
    n = run.cfg.grid_images
    z = torch.randn(n, run.cfg.z_dim, generator=torch.Generator().manual_seed(run.cfg.seed))
    c_dim = run.feeder.c_dim
    c = torch.nn.functional.one_hot(torch.arange(n) % c_dim, c_dim).float() if c_dim else torch.zeros(n, 0)
    return z.to(run.device), c.to(run.device)


@torch.no_grad()
def render(G: torch.nn.Module, z: torch.Tensor, c: torch.Tensor, batch: int,
           truncation_psi: float = 1.0, noise_mode: str = "const") -> torch.Tensor:
    """G(z, c) in chunks of `batch` -> float32 [N, C, R, R] on the CPU."""
    out = []
    for i in range(0, len(z), batch):
        cc = c[i:i + batch] if c.shape[1] else None
        out.append(G(z[i:i + batch], cc, truncation_psi=truncation_psi, noise_mode=noise_mode).float().cpu())
    return torch.cat(out)


def save_reals(run: Run, dataset: Any, path: Path) -> Path:
    g = torch.Generator().manual_seed(run.cfg.seed)
    idx = torch.randperm(len(dataset), generator=g)[:run.cfg.grid_images].sort().values
    return save_grid(torch.from_numpy(dataset.images[idx.numpy()]), path)


# --------------------------------------------------------------------------------------------
# The loop.

def _crossed(prev: int, cur: int, every_nimg: int) -> bool:
    return cur // every_nimg > prev // every_nimg


def train(cfg: TrainConfig, run_dir: str | Path, dataset: Any, *, resume: dict[str, Any] | None = None,
          allow_data_change: bool = False, progress: bool = True, keep: int = 0,
          log: Callable[[str], None] = print, stop: StopRequest | None = None) -> TrainResult:
    """Train into `run_dir` (created if needed) until cfg.kimg, a signal, or divergence.

    dataset: an ImageDataset (uint8 images [N, C, R, R]). resume: a loaded checkpoint dict (its
    config must match `cfg` except for kimg and the bookkeeping fields). Raises TrainingDiverged
    on a NaN/Inf loss, ResumeError for a checkpoint of another dataset or model.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    run = setup_run(cfg, dataset, device)
    stats = StatsWriter(run_dir)
    files: dict[str, Path] = {"config": run_dir / "config.json"}
    if resume is not None:
        restore_run(run, resume, allow_data_change)
        stats.truncate_after(run.cur_nimg)
        log(f"resumed from {resume.get('path', 'checkpoint')} at {run.cur_nimg / 1000:.3f} kimg")
    _write_config(run, files["config"])
    files["reals"] = save_reals(run, dataset, run_dir / "reals.png")
    grid_z, grid_c = grid_latents(run)
    if resume is None:
        save_grid(render(run.G_ema, grid_z, grid_c, cfg.batch), run_dir / "fakes_init.png")

    total_nimg = int(math.ceil(cfg.kimg * 1000))
    tick_nimg = max(1, int(round(cfg.tick_kimg * 1000)))
    snap_nimg = max(1, int(round(cfg.snap_kimg * 1000)))
    acc = StatsAccumulator()
    last_ckpt = ckpt_io.list_checkpoints(run_dir)[-1][1] if ckpt_io.list_checkpoints(run_dir) else None
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
                    tick_start = _end_tick(run, acc, stats, bar, tick_start, last_ckpt)
                if snap:
                    t0 = time.perf_counter()
                    last_ckpt = _snapshot(run, run_dir, grid_z, grid_c, stats, keep, files)
                    # Snapshot time counts in the run's total but not in the next tick's img/s.
                    run.elapsed_s += time.perf_counter() - t0
                    tick_start = (time.perf_counter(), run.cur_nimg)
                if stop.requested is not None and not done:
                    status = "stopped"
                    log(f"{stop.requested}: saved {last_ckpt} at {run.cur_nimg / 1000:.3f} kimg; "
                        f"continue with --resume {run_dir}")
                    break
    finally:
        bar.close()
    if last_ckpt is None:  # kimg already reached when resuming: still leave a complete directory
        last_ckpt = _snapshot(run, run_dir, grid_z, grid_c, stats, keep, files)
    files["checkpoint"] = last_ckpt
    return TrainResult(run_dir=run_dir, cur_nimg=run.cur_nimg, status=status, checkpoint=last_ckpt, files=files)


def _write_config(run: Run, path: Path) -> None:
    doc = {"train": run.cfg.to_dict(), "model": run.model_cfg, "dataset": run.dataset_info,
           "device": str(run.device), "torch": str(torch.__version__)}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)


def _end_tick(run: Run, acc: StatsAccumulator, stats: StatsWriter, bar: Any,
              tick_start: tuple[float, int], last_ckpt: Path | None) -> tuple[float, int]:
    """Read the tick's losses (the only host sync), stop on NaN/Inf, write a stats row."""
    values = acc.reduce()
    now = time.perf_counter()
    dt, dn = now - tick_start[0], run.cur_nimg - tick_start[1]
    run.elapsed_s += dt
    bad = non_finite(values)
    if bad:
        kept = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
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
    tag = ckpt_io.ckpt_tag(run.cur_nimg)
    files["fakes"] = save_grid(render(run.G_ema, grid_z, grid_c, run.cfg.batch), run_dir / f"fakes_{tag}.png")
    rows = stats.rows()
    if rows:
        files["loss_G"], files["loss_D"], files["losses"] = plot_losses(rows, run_dir)
    files["stats_jsonl"], files["stats_csv"] = stats.jsonl, stats.csv
    return path
