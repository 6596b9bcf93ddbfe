"""One training step as four small phases (G main, G reg, D main, D reg) and the G_ema update.

Per step, as in StyleGAN2-ADA: G main every step, G path-length reg every `pl_interval` steps, D
main every step, D R1 every `r1_interval` steps, then the G_ema update. The loss multiplies each
lazy penalty by its interval; the optimizers carry Adam's lazy-regularization correction (see
state.make_optimizer). Nothing here reads a value back to the host: losses and the loss object's
per-term stats go into a StatsAccumulator as device tensors.

The loss augments every image D sees (run.aug, see losses.py); the step ends by advancing the
augmentation (ADA adjusts p every few steps, on the device) and adding Aug/p and Aug/rt to the
stats.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..networks import ema_beta, ema_update
from .state import Run
from .stats import StatsAccumulator


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
    # Labelled for torch.profiler (benchmarks/profile_steps.py groups device time by phase); a label
    # costs about a microsecond when no profiler is running.
    with torch.profiler.record_function("phase " + "+".join(terms)):
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
    cfg = run.cfg
    with torch.profiler.record_function("phase G_ema"):
        ema_update(run.G_ema, run.G, ema_beta(cfg.batch, cfg.ema_kimg, rampup=cfg.ema_rampup, cur_nimg=run.cur_nimg))


def train_step(run: Run, acc: StatsAccumulator) -> None:
    """One minibatch: the four phases, the EMA update, the counters. A regularizer with interval
    1 joins its main phase (one optimizer step); a larger interval makes it a lazy phase."""
    cfg = run.cfg
    with torch.profiler.record_function("phase data"):
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
    run.aug.step(cfg.batch)
    acc.add_all("", run.aug.stats())
    run.cur_nimg += cfg.batch
    run.step += 1
