"""Loss curves as PNG files.

Figures are matplotlib `Figure` objects drawn straight to PNG, never through pyplot: no backend
is chosen for the process (a notebook keeps its own), no display is needed, and no global figure
list holds on to them after the write.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from .. import fileio

G_KEYS = ("Loss/G/main", "Loss/G/reg")
D_KEYS = ("Loss/D/main", "Loss/D/reg")
AUG_KEYS = ("Aug/p", "Aug/rt")  # augmentation probability and ADA's overfitting heuristic


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)):
            xs.append(r["kimg"])
            ys.append(v)
    return xs, ys


def _plot(rows: list[dict[str, Any]], keys: tuple[str, ...], title: str, path: Path,
          with_aug: bool = False) -> None:
    """One panel of the loss curves; with_aug adds a panel of p and r_t to its right when the
    run logged them (an augmented run)."""
    aug = with_aug and any(key in r for r in rows for key in AUG_KEYS)
    fig = Figure(figsize=(12, 4) if aug else (7, 4), dpi=100)
    axes = fig.subplots(1, 2) if aug else [fig.subplots()]
    ax = axes[0]
    if aug:
        _plot_aug(axes[1], rows)
    for key in keys:
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, label=key, linewidth=1.2, marker="." if len(xs) < 30 else None)
    ax.set_xlabel("kimg (thousands of real images shown)")
    ax.set_ylabel("loss (mean over tick)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _plot_aug(ax: Any, rows: list[dict[str, Any]]) -> None:
    for key, label in (("Aug/p", "p (augmentation probability)"), ("Aug/rt", "r_t = E[sign D(real)]")):
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, label=label, linewidth=1.2, marker="." if len(xs) < 30 else None)
    ax.set_xlabel("kimg (thousands of real images shown)")
    ax.set_title("Augmentation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig: Figure, path: str | os.PathLike) -> None:
    """PNG written atomically (fileio.WriteError names the file on failure)."""
    fileio.atomic_write(path, lambda f: fig.savefig(f, format="png"))


def plot_losses(rows: list[dict[str, Any]], run_dir: str | os.PathLike) -> list[Path]:
    """Write loss_G.png, loss_D.png and losses.png (both, and beside them augmentation's p and
    r_t when the run logged them) from stats rows; returns the paths."""
    d = Path(run_dir)
    out = [d / "loss_G.png", d / "loss_D.png", d / "losses.png"]
    _plot(rows, G_KEYS, "Generator losses", out[0])
    _plot(rows, D_KEYS, "Discriminator losses", out[1])
    _plot(rows, G_KEYS + D_KEYS, "Generator and discriminator losses", out[2], with_aug=True)
    return out


def plot_runs_overlay(
    runs: dict[str, list[dict[str, Any]]],
    path: str | os.PathLike,
    keys: tuple[str, ...] = ("Loss/G/main", "Loss/D/main"),
) -> list[tuple[str, str]]:
    """Overlay the same loss terms of several runs in one PNG, e.g. fp32 against mixed precision
    on the same seed and data, to show a precision policy trains alike.

    runs: label -> that run's stats rows (StatsWriter(run_dir).rows()). Returns the (label, key)
    pairs that had data and were drawn.
    """
    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.subplots()
    drawn = []
    styles = ["-", "--", ":", "-."]
    for i, (label, rows) in enumerate(runs.items()):
        for key in keys:
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, styles[i % len(styles)], label=f"{label}: {key}", linewidth=1.2)
                drawn.append((label, key))
    ax.set_xlabel("kimg (thousands of real images shown)")
    ax.set_ylabel("loss (mean over tick)")
    ax.set_title(" vs ".join(runs))
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, Path(path))
    return drawn
