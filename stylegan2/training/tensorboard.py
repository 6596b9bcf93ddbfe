"""TensorBoard events of a training run, when the tensorboard package is installed.

    tb = open_tensorboard(run_dir, enabled=True)   # a no-op writer when disabled or not installed
    tb.tick(row, nimg); tb.snapshot(nimg, fakes, metric_values); tb.close()

Events go to <run>/tensorboard/ (`tensorboard --logdir runs`): every number of a stats row
(losses, timings, augmentation state...) as a scalar under its stats name, the metrics of each
snapshot, and each snapshot's fake grid as an image. The step is the number of real images shown
(an integer; StyleGAN's kimg divided by 1000 would lose the steps between ticks). The stats
files stay the source of truth: TensorBoard only shows them.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Optional

import torch

from ..images import make_grid

FOLDER = "tensorboard"
# Row fields that are positions, not measurements: they are the step, or count it.
_NOT_SCALARS = ("tick", "kimg", "nimg", "step")


def available() -> bool:
    """Whether torch.utils.tensorboard can write events (it needs the tensorboard package)."""
    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLog:
    """A SummaryWriter for a run folder, or nothing (every method a no-op) when `writer` is None."""

    def __init__(self, writer: Any = None) -> None:
        self.writer = writer

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def tick(self, row: dict[str, Any], nimg: int) -> None:
        """The numbers of one stats row."""
        if self.writer is None:
            return
        for key, value in row.items():
            if key not in _NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, nimg)
        self.writer.flush()

    def snapshot(self, nimg: int, fakes: Optional[torch.Tensor], values: dict[str, float]) -> None:
        """A snapshot's fake grid ([N, C, H, W] in [-1, 1]) and metric values."""
        if self.writer is None:
            return
        for key, value in values.items():
            self.writer.add_scalar(key, value, nimg)
        if fakes is not None:
            self.writer.add_image("fakes", make_grid(fakes), nimg, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def open_tensorboard(run_dir: str | Path, enabled: bool, resumed_at: Optional[int] = None) -> TensorBoardLog:
    """The run's TensorBoard log: events in <run_dir>/tensorboard when enabled and tensorboard is
    installed, else a log that writes nothing (training never depends on it). resumed_at: the
    image count a resumed run continues from; events after it (written before the run was
    stopped, and about to be written again) are hidden, as the stats files drop those rows."""
    if not enabled or not available():
        return TensorBoardLog(None)
    try:  # here: torch.utils.tensorboard imports the tensorboard package, which is optional
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # installed but unusable (e.g. a protobuf it cannot work with): train without it
        return TensorBoardLog(None)
    purge = None if resumed_at is None else resumed_at + 1
    return TensorBoardLog(SummaryWriter(log_dir=str(Path(run_dir) / FOLDER), purge_step=purge))
