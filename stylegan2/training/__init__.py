"""Training layer, one module per job:

    config.py      TrainConfig, the named presets, resolve()
    loop.py        train(): ticks, snapshots, stopping; TrainResult, TrainingDiverged, TrainingWriteError
    phases.py      one training step as four small phases, and the G_ema update
    state.py       Run and setup_run(), which builds one
    grids.py       reals.png and the fixed-latent fakes_*.png of a run
    run_dir.py     numbered run directories (new_run_dir) and their dataset names
    feed.py        BatchFeeder (seeded, resumable data order)
    checkpoint.py  checkpoints: a Run saved and restored (ResumeError), files loaded, validated and
                   found, load_generator / load_discriminator
    losses.py      the StyleGAN2 loss (logistic, WGAN-GP) and its regularization defaults
    distributed.py torchrun's process group: joining it, the rank's device, the collectives
    split.py       a step's batch over ranks and rounds, and each chunk's RNG stream
    stats.py, plots.py, signals.py

Nothing is imported here: loading a checkpoint (generate, info) need not pull in the training
loop or matplotlib. Import the module you need.
"""
