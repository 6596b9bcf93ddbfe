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


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)):
            xs.append(r["kimg"])
            ys.append(v)
    return xs, ys


def _plot(rows: list[dict[str, Any]], keys: tuple[str, ...], title: str, path: Path) -> None:
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
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


def _save(fig: Figure, path: str | os.PathLike) -> None:
    """PNG written atomically (fileio.WriteError names the file on failure)."""
    fileio.atomic_write(path, lambda f: fig.savefig(f, format="png"))


def plot_losses(rows: list[dict[str, Any]], run_dir: str | os.PathLike) -> list[Path]:
    """Write loss_G.png, loss_D.png and losses.png (both) from stats rows; returns the paths."""
    d = Path(run_dir)
    out = [d / "loss_G.png", d / "loss_D.png", d / "losses.png"]
    _plot(rows, G_KEYS, "Generator losses", out[0])
    _plot(rows, D_KEYS, "Discriminator losses", out[1])
    _plot(rows, G_KEYS + D_KEYS, "Generator and discriminator losses", out[2])
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
