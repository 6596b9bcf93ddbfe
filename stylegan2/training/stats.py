"""Training statistics: device-side accumulation between ticks, JSONL + CSV on disk.

The training step only adds detached device tensors into `StatsAccumulator`; nothing is read back
to the host until `reduce()` at a tick boundary, so the GPU never waits on Python.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from .. import fileio


class StatsAccumulator:
    """Running sums of scalar device tensors, keyed by name, reduced to floats once per tick."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def add(self, name: str, value: torch.Tensor) -> None:
        """Add a (detached) tensor's mean; a NaN or Inf anywhere makes the tick's mean NaN/Inf."""
        v = value.detach().float().mean()
        if name in self._sums:
            self._sums[name] = self._sums[name] + v
            self._counts[name] += 1
        else:
            self._sums[name] = v
            self._counts[name] = 1

    def add_all(self, prefix: str, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            if torch.is_tensor(v):
                self.add(f"{prefix}{k}", v)

    def reduce(self, across: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """Means since the last reduce (one host sync for all of them), then reset.

        across: combines the stacked means of every rank (distributed.mean_across); all ranks
        must call it together, having added the same names in the same order."""
        if not self._sums:
            return {}
        names = list(self._sums)
        if across is not None:
            means = torch.stack([self._sums[n] / self._counts[n] for n in names])
            out = dict(zip(names, across(means).cpu().tolist()))
            self._sums.clear()
            self._counts.clear()
            return out
        stacked = torch.stack([self._sums[n] for n in names]).cpu().tolist()
        out = {n: s / self._counts[n] for n, s in zip(names, stacked)}
        self._sums.clear()
        self._counts.clear()
        return out


def non_finite(values: dict[str, float]) -> list[str]:
    """Names whose value is NaN or infinite."""
    return [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]


class StatsWriter:
    """Appends one JSON object per tick to stats.jsonl and keeps stats.csv in step with it.

    The rows are read from disk once (a resumed run's earlier ticks) and then kept in memory,
    and a tick whose keys the CSV header already has is appended to the CSV as one line: a tick
    costs the same at the end of a 25,000-kimg run as at its start (rereading and rewriting both
    files every tick made the run's stats cost grow with the square of its length). The CSV is
    rewritten whole only when a new column appears, when rows change (truncate_after,
    add_to_last), or after a CSV write failed. Only one writer per run directory: the rows of a
    file changed by anything else are not seen.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.jsonl = Path(run_dir) / "stats.jsonl"
        self.csv = Path(run_dir) / "stats.csv"
        self._rows: list[dict[str, Any]] | None = None  # None: not read from disk yet
        self._columns: list[str] | None = None  # the CSV's header as last written; None: rewrite it

    def rows(self) -> list[dict[str, Any]]:
        """Every row so far, oldest first (copies: changing them changes nothing on disk)."""
        return [dict(r) for r in self._cached()]

    def _cached(self) -> list[dict[str, Any]]:
        if self._rows is None:
            self._rows = self._read()
        return self._rows

    def _read(self) -> list[dict[str, Any]]:
        if not self.jsonl.exists():
            return []
        rows = []
        for line in self.jsonl.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line torn by a kill; the rest is still good
                    continue
        return rows

    def truncate_after(self, cur_nimg: int) -> None:
        """Drop rows written after a checkpoint (a run killed and resumed from it repeats them)."""
        self._rewrite([r for r in self._cached() if r.get("nimg", 0) <= cur_nimg])

    def append(self, row: dict[str, Any]) -> None:
        """Add a row to both files; a failed write (fileio.WriteError) leaves no half line."""
        rows = self._cached()
        fileio.append_text(self.jsonl, json.dumps(row) + "\n")
        rows.append(dict(row))
        if self._columns is not None and all(k in self._columns for k in row):
            self._columns, columns = None, self._columns  # a failure below leaves a rewrite owed
            fileio.append_text(self.csv, _csv_text([row], columns, header=False))
            self._columns = columns
        else:
            self._write_csv(rows)

    def add_to_last(self, nimg: int, values: dict[str, Any]) -> None:
        """Merge `values` (a snapshot's metrics) into the row of the tick that ended at `nimg`,
        or append a row of their own when there is none (a run resumed at its end)."""
        if not values:
            return
        rows = [dict(r) for r in self._cached()]
        if rows and rows[-1].get("nimg") == nimg:
            rows[-1].update(values)
            self._rewrite(rows)
        else:
            self.append({"kimg": nimg / 1000, "nimg": nimg, **values})

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        fileio.atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        self._rows = rows
        self._write_csv(rows)

    def _write_csv(self, rows: list[dict[str, Any]]) -> None:
        columns: list[str] = []
        for r in rows:  # union of keys in first-seen order: a phase absent from a tick is blank
            columns += [k for k in r if k not in columns]
        self._columns = None
        fileio.atomic_write_text(self.csv, _csv_text(rows, columns, header=True))
        self._columns = columns


def _csv_text(rows: Iterable[dict[str, Any]], columns: list[str], header: bool) -> str:
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=columns)
    if header:
        w.writeheader()
    w.writerows(rows)
    return text.getvalue()
