"""Overlay the loss curves of training runs in one PNG (e.g. fp32 against fp16 on the same seed).

    python -m stylegan2 train --preset gpu128 --precision fp32 --kimg 200 --seed 0 --out runs
    python -m stylegan2 train --preset gpu128 --precision fp16 --kimg 200 --seed 0 --out runs
    python benchmarks/overlay_losses.py runs/00000-* runs/00001-* --out benchmarks/results/fp32-vs-fp16.png

Each run is labelled with its precision from config.json (or its folder name), and the script
says whether any logged loss was NaN or Inf.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from stylegan2.training.plots import plot_runs_overlay
from stylegan2.training.stats import StatsWriter


def label_of(run_dir: Path) -> str:
    """'<precision> (<run folder>)', the precision read from the run's config.json as the
    training loop writes it ({"train": {...}}); the folder name alone if there is none."""
    try:
        doc = json.loads((run_dir / "config.json").read_text())
        precision = doc.get("train", {}).get("precision")
    except (OSError, ValueError, AttributeError):
        precision = None
    return f"{precision} ({run_dir.name})" if precision else run_dir.name


def unique_labels(run_dirs: list[Path]) -> list[str]:
    """One label per run; runs whose labels clash (say two 00000-... folders under runs/fp32 and
    runs/fp16 without a config) are told apart by their parent folders."""
    first = [label_of(d) for d in run_dirs]
    labels = [f"{label} in {d.resolve().parent.name}" if first.count(label) > 1 else label
              for label, d in zip(first, run_dirs)]
    if len(set(labels)) < len(labels):  # still equal: the same directory given twice
        labels = [f"{label} #{i + 1}" for i, label in enumerate(labels)]
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (each with stats.jsonl)")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    runs, bad = {}, []
    for run_dir, label in zip(args.runs, unique_labels(args.runs)):
        if not (run_dir / "stats.jsonl").exists():
            parser.error(f"{run_dir} has no stats.jsonl: is it a training run directory?")
        rows = StatsWriter(run_dir).rows()
        runs[label] = rows
        for row in rows:
            for key, value in row.items():
                if key.startswith("Loss/") and isinstance(value, float) and not math.isfinite(value):
                    bad.append(f"{run_dir.name}: {key}={value} at {row.get('kimg')} kimg")
    drawn = plot_runs_overlay(runs, args.out)
    print(f"wrote {args.out} ({len(drawn)} curves from {len(runs)} runs)")
    if bad:
        print("non-finite losses:\n  " + "\n  ".join(bad))
        return 1
    print("no NaN or Inf in any logged loss")
    return 0


if __name__ == "__main__":
    sys.exit(main())
