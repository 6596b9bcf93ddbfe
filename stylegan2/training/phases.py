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

from typing import Callable, Sequence

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
              acc: StatsAccumulator, terms: dict[str, Callable[..., torch.Tensor]],
              inputs: Callable[[slice], tuple], averaged: Sequence[torch.Tensor] = ()) -> None:
    """One phase: gradients only for `module`, the sum of the named loss terms backpropagated,
    one optimizer step. Each term and the loss object's per-term stats go to `acc`.

    With a split batch (split.py) the terms run once per round on that round's `inputs(slice)`
    (drawn inside the round, from its RNG stream), each round's loss scaled by its share of the
    global batch; the ranks' gradients are then summed before the step. `averaged`: running
    statistics the terms update (see Split.run_rounds)."""
    # Labelled for torch.profiler (benchmarks/profile_steps.py groups device time by phase); a label
    # costs about a microsecond when no profiler is running.
    split = run.split
    with torch.profiler.record_function("phase " + "+".join(terms)):
        module.requires_grad_(True)
        other.requires_grad_(False)
        opt.zero_grad(set_to_none=True)
        for part in split.run_rounds(averaged):
            args = inputs(part)
            total = None
            for name, compute in terms.items():
                loss = compute(*args)
                _collect(run, acc, name, loss.detach())
                total = loss if total is None else total + loss
            (total if split.trivial else total * split.loss_scale).backward()
        split.reduce_grads(module, "G" if module is run.G else "D")
        _sanitize_grads(module)
        opt.step()


def _latents(run: Run, c_all: torch.Tensor | None, part: slice) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z for one round (from its RNG stream) and its slice of the phase's fake labels."""
    z = torch.randn(part.stop - part.start, run.cfg.z_dim, device=run.device)
    return z, (c_all[part] if c_all is not None else None)


def _fake_labels(run: Run) -> torch.Tensor | None:
    """The phase's fake labels: drawn for the global batch (the feeder's generator stays the same
    on every rank), this rank's part kept."""
    return run.feeder.fake_labels(run.cfg.batch)[run.split.local] if run.feeder.c_dim else None


def _pl_mean(run: Run) -> list[torch.Tensor]:
    return [run.loss.pl_mean] if torch.is_tensor(getattr(run.loss, "pl_mean", None)) else []


def _w_avg(run: Run) -> list[torch.Tensor]:
    w_avg = getattr(getattr(run.G, "mapping", None), "w_avg", None)
    return [w_avg] if torch.is_tensor(w_avg) else []


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
    c_all = _fake_labels(run)
    terms = {"Loss/G/main": lambda z, c: run.loss.g_main(z, c)}
    if with_reg:
        terms["Loss/G/reg"] = lambda z, c: run.loss.g_reg(z, c)
    _optimize(run, run.G, run.D, run.opt_G, acc, terms, lambda part: _latents(run, c_all, part),
              _pl_mean(run) if with_reg else ())


def phase_g_reg(run: Run, acc: StatsAccumulator) -> None:
    """Lazy path-length regularization, its own optimizer step (weighted by the interval)."""
    c_all = _fake_labels(run)
    _optimize(run, run.G, run.D, run.opt_G, acc, {"Loss/G/reg": lambda z, c: run.loss.g_reg(z, c)},
              lambda part: _latents(run, c_all, part), _pl_mean(run))


def phase_d_main(run: Run, acc: StatsAccumulator, real: torch.Tensor, real_c: torch.Tensor | None,
                 with_reg: bool = False) -> None:
    """Discriminator loss on reals and fakes (+ R1/GP in the same step when it runs every step)."""
    c_all = _fake_labels(run)
    terms = {"Loss/D/main": lambda r, rc, z, c: run.loss.d_main(r, rc, z, c)}
    if with_reg:
        terms["Loss/D/reg"] = lambda r, rc, z, c: run.loss.d_reg(r, rc)

    def inputs(part: slice) -> tuple:
        return (real[part], real_c[part] if real_c is not None else None, *_latents(run, c_all, part))
    # Generating the fakes moves G's w_avg (StyleGAN2Loss.d_main).
    _optimize(run, run.D, run.G, run.opt_D, acc, terms, inputs, _w_avg(run))


def phase_d_reg(run: Run, acc: StatsAccumulator, real: torch.Tensor, real_c: torch.Tensor | None) -> None:
    """Lazy R1 (or the WGAN-GP penalty), its own optimizer step (weighted by the interval)."""
    _optimize(run, run.D, run.G, run.opt_D, acc, {"Loss/D/reg": lambda r, rc: run.loss.d_reg(r, rc)},
              lambda part: (real[part], real_c[part] if real_c is not None else None))


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
        real, real_c = run.feeder.reals(None if run.split.trivial else run.split.local)
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
