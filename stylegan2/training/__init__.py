"""Training layer, one module per job:

    config.py      TrainConfig, the named presets, resolve()
    loop.py        train(): ticks, snapshots, stopping; TrainResult, TrainingDiverged, TrainingWriteError
    phases.py      Run, one training step as four small phases, and the G_ema update
    state.py       setup_run(), restore_run(), ResumeError
    feed.py        BatchFeeder (seeded, resumable data order)
    checkpoint.py  checkpoint files: save, load, validate, find
    losses.py      the StyleGAN2 loss (logistic, WGAN-GP) and its regularization defaults
    stats.py, plots.py, signals.py

Nothing is imported here: loading a checkpoint (generate, info) must not pull in the training
loop, matplotlib or the data package. Import the module you need.
"""
