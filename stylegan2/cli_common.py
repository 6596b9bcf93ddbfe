"""What the command modules share (cli.py and cli_explore.py): option types, the checks every
command makes before long work, and the dataset a checkpoint was trained on. Kept apart so the
command modules import it at module level instead of from each other.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import click
import torch

from . import data, fileio
from .data import BUILTIN, DatasetError, is_builtin
from .metrics import reference_set
from .training.checkpoint import run_dir_of


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses inf and nan, which pass its comparisons (nan compares
    false with everything, inf has no upper bound by default) and would reach the training loop
    as `--kimg inf` or `--gamma nan`. Checked while the command line is parsed, before any folder
    exists."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


def check_data_path(spec: str) -> None:
    if not is_builtin(spec) and not os.path.exists(spec):
        raise click.BadParameter(f"'{spec}' does not exist (give a dataset folder or file, or '{BUILTIN}' "
                                 "for the built-in set)", param_hint="--data")


def check_out(folder: Path, keep: bool, option: str = "--out") -> None:
    """Fail in one line, naming the option, if files cannot be created in `folder`."""
    try:
        fileio.check_writable_dir(folder, keep=keep)
    except fileio.WriteError as e:
        raise click.ClickException(f"{option}: {e}") from None


def checkpoint_data(ck: dict[str, Any], spec: str | None, progress: bool, held_out: bool = False) -> tuple[Any, str]:
    """(dataset, how reports name it): --data, else the dataset the checkpoint was trained on,
    decoded at the model's resolution and channels (its split and max_images, as training saw
    it; with `held_out`, the split training did not use where the data has one)."""
    given = spec is not None
    spec = spec if given else ck["config"]["data"]
    try:
        check_data_path(spec)
    except click.BadParameter:
        if given:
            raise
        raise click.ClickException(f"the checkpoint's dataset {spec} is gone: name one with --data") from None
    m = ck["model_config"]
    split = None if given else ck["config"].get("data_split")
    try:
        if held_out and not given:
            ref = reference_set(spec, m["resolution"], m["channels"], split,
                                max_images=ck["config"].get("max_images"), progress=progress)
            if ref.held_out:
                return ref.dataset, ref.name
            ds = ref.dataset
        else:
            ds = data.open_dataset(spec, m["resolution"], m["channels"], split=split,
                                   max_images=None if given else ck["config"].get("max_images"), progress=progress)
    except DatasetError as e:
        raise click.ClickException(f"cannot use --data {spec}: {e}") from e
    if not given and ds.fingerprint() != ck["dataset"]["fingerprint"]:
        click.echo(f"note: {spec} has changed since training (its fingerprint differs from the checkpoint's)")
    name = str(ds.source) if given else ref.name if held_out else data.describe_split(spec, split, len(ds))
    return ds, name


def run_folder(ck: dict[str, Any]) -> Path:
    """The checkpoint's run folder (its own folder for a checkpoint kept elsewhere)."""
    path = Path(ck["path"])
    return run_dir_of(path) or path.parent


def pick_device(device: str | None) -> torch.device:
    try:
        return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:  # torch's message for 'gpu0' and the like is one line already
        raise click.BadParameter(str(e), param_hint="--device") from None
