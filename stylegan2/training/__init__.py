"""Training layer: configuration and presets, the loop, checkpoints, stats, plots and grids.

    TrainConfig, make_config, PRESETS       config.py
    train, TrainResult, TrainingDiverged,
    TrainingWriteError                      loop.py      (ticks, snapshots, stopping)
    train_step and the four phases          phases.py
    setup_run, restore_run, ResumeError     state.py     (networks, optimizers, checkpoints)
    BatchFeeder                             feed.py      (seeded, resumable data order)
    load_checkpoint, find_checkpoint,
    load_newest_valid, validate_checkpoint  checkpoint.py
    parse_seeds                             seeds.py
"""
from .checkpoint import CheckpointError, find_checkpoint, load_checkpoint, load_newest_valid, validate_checkpoint
from .config import PRESET_NAMES, PRESETS, TrainConfig, make_config
from .loop import ResumeError, TrainingDiverged, TrainingWriteError, TrainResult, train
from .seeds import parse_seeds

__all__ = [
    "CheckpointError",
    "PRESETS",
    "PRESET_NAMES",
    "ResumeError",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "TrainingWriteError",
    "find_checkpoint",
    "load_checkpoint",
    "load_newest_valid",
    "make_config",
    "parse_seeds",
    "train",
    "validate_checkpoint",
]
