"""Command line: `python -m stylegan2 train | generate | info | metrics | audit | convert | cache`.

    python -m stylegan2 train                        # mni152, preset auto, into runs/<n>-mni152-<preset>
    python -m stylegan2 train --data /data/oasis --preset gpu256 --kimg 5000
    python -m stylegan2 train --resume runs/00003-mni152-cpu-small --kimg 20
    python -m stylegan2 generate --ckpt runs/00003-mni152-cpu-small --seeds 0-7,12 --out out/
    python -m stylegan2 info --ckpt runs/00003-mni152-cpu-small/checkpoints/ckpt-000006016.pt
    python -m stylegan2 metrics --ckpt runs/00003-mni152-cpu-small --metrics fid,kid,pr --n 10000
    python -m stylegan2 audit --ckpt runs/00003-mni152-cpu-small --n 5000
    python -m stylegan2 convert stylegan2-ffhq-256.pkl ffhq-gray.pt --channels 1
    python -m stylegan2 generate --ckpt 550000.pt --seeds 0-3 --out out/   # rosinality / NVlabs directly
    python -m stylegan2 cache --list                 # decoded datasets cached on disk; --clear removes them
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import click
import torch
from tqdm.auto import tqdm

from . import data, fileio
from .augment import KINDS as AUG_KINDS
from .augment import PIPES as AUG_PIPES
from .cli_common import (FiniteFloatRange, check_data_path, check_out, checkpoint_data, pick_device,
                         run_folder)
from .cli_explore import add_explore_commands, render_saved_ws
from .convert import ConversionError, RefusedPickle, convert as convert_checkpoint, export_nvlabs, load_as_checkpoint
from .data import (BUILTIN, KINDS, DatasetError, clear_cache, datasets_dir, format_entries, format_size,
                   is_builtin, list_cache)
from .images import parse_seeds
from .metrics import (INCEPTION_FILE, INCEPTION_WEIGHTS_ENV, METRICS, FeatureNetwork, FeatureNetworkError,
                      audit_memorization, compute_metrics, fake_batches, generator_from_checkpoint,
                      get_feature_network, inception_weights_path, real_features, reference_set)
from .networks import count_parameters
from .sampling import SPEEDUPS, Sampler, class_vector, generate_images
from .torch_settings import torch_settings
from .training.checkpoint import (CheckpointError, load_checkpoint, load_discriminator, load_generator,
                                  load_newest_valid, run_dir_of)
from .training.config import (LOSSES, MAX_KIMG, PRECISIONS, PRESET_NAMES, TrainConfig, make_config,
                              preset_defaults_text, resolve)
from .training.loop import ResumeError, TrainingDiverged, TrainingWriteError
from .training.init_from import config_overrides, init_mismatch, load_init
from .training.loop import train as train_loop
from .training.run_dir import dataset_name, new_run_dir
from .training import distributed
from .training.distributed import DEFAULT_TIMEOUT_S, CollectiveError
from .training.signals import StopRequest
from .training.snapshot_metrics import SnapshotMetrics
from .training.tensorboard import available as tensorboard_available
from .training.state import condition_dim, model_config_dict


# Options that change what the networks are or what data they see: fixed by a checkpoint when
# resuming. The others (how long, how often, where, with how many threads) may change.
_MODEL_OPTIONS = ("preset", "resolution", "batch", "cond", "mirror", "gamma", "lr", "loss", "seed",
                  "precision", "channels", "channel_base", "channel_max", "max_images", "split", "aug", "aug_p",
                  "aug_pipe", "target", "ada_kimg")
_RUNTIME_FIELDS = {"kimg": "kimg", "snap": "snap_kimg", "tick": "tick_kimg", "threads": "threads",
                   "device": "device", "channels_last": "channels_last", "batch_gpu": "batch_gpu"}


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _given(ctx: click.Context, name: str) -> bool:
    """Whether the user typed the option (rather than click filling in its default)."""
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """StyleGAN2 for brain MRI: train, generate, inspect checkpoints, measure them."""


# --------------------------------------------------------------------------------------------
# train

@main.command(short_help="Train a model (default: mni152, preset auto).")
@click.option("--data", default=None, show_default=BUILTIN,
              help=f"Dataset: '{BUILTIN}' (built in) or a path (OASIS, ADNI AD_NC, NIfTI, image folder).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              help="Parent folder of the numbered run directories.")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="auto",
              help="auto: gpu256 with a CUDA GPU, else cpu-small.")
@click.option("--resolution", type=click.IntRange(4, 1024), default=None, show_default="from preset")
@click.option("--batch", type=click.IntRange(1, 4096), default=None, show_default="from preset",
              help="Images per step, over all ranks when started by torchrun.")
@click.option("--batch-gpu", type=click.IntRange(1, 4096), default=None, show_default="batch / ranks",
              help="Images per rank and round; a smaller value accumulates gradients over rounds.")
@click.option("--kimg", type=FiniteFloatRange(0, MAX_KIMG, min_open=True), default=None, show_default="from preset",
              help="Train until this many thousand real images have been shown.")
@click.option("--snap", type=FiniteFloatRange(0, MAX_KIMG, min_open=True), default=None, show_default="from preset",
              help="Checkpoint and fake grid every this many kimg.")
@click.option("--tick", type=FiniteFloatRange(0, MAX_KIMG, min_open=True), default=None, show_default="from preset",
              help="Progress, stats and the NaN check every this many kimg.")
@click.option("--cond/--no-cond", default=False, help="Condition on the dataset's labels.")
@click.option("--mirror/--no-mirror", default=False, help="Random x-flips of the real images.")
@click.option("--gamma", type=FiniteFloatRange(0), default=None, show_default="0.0002*res^2/batch",
              help="R1 weight.")
@click.option("--lr", type=FiniteFloatRange(0, 1, min_open=True), default=None, show_default="0.0025")
@click.option("--loss", type=click.Choice(LOSSES), default=None, show_default="logistic")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None, show_default="from preset",
              help="fp16/bf16 run the 4 highest resolutions in reduced precision (clamped convs).")
@click.option("--channels", type=click.Choice(["1", "3"]), default=None, show_default="1")
@click.option("--channel-base", type=click.IntRange(1, 1 << 20), default=None,
              show_default=preset_defaults_text("channel_base"),
              help="Network width: a block at resolution r has min(base // r, --channel-max) channels.")
@click.option("--channel-max", type=click.IntRange(1, 4096), default=None,
              show_default=preset_defaults_text("channel_max"),
              help="The most channels of any block.")
@click.option("--max-images", type=click.IntRange(1), default=None, help="Use at most this many images.")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=None, show_default="0")
@click.option("--aug", type=click.Choice(AUG_KINDS), default=None, show_default=preset_defaults_text("aug"),
              help="Augment every image D sees: ada (p adapted to D's overfitting), diffaugment, "
                   "fixed (p from --aug-p) or none.")
@click.option("--aug-p", type=FiniteFloatRange(0, 1), default=None,
              help="Fix the augmentation probability p (implies --aug fixed).")
@click.option("--aug-pipe", type=click.Choice(AUG_PIPES), default=None, show_default="bgc",
              help="ada/fixed: which of ADA's groups run: b(lit: flips, quarter turns, integer shifts), "
                   "g(eometry: scaling, rotation, fractional shifts), c(olour).")
@click.option("--target", type=FiniteFloatRange(0, 1), default=None, show_default="0.6",
              help="ADA: the r_t = E[sign D(real)] that p steers toward.")
@click.option("--ada-kimg", type=FiniteFloatRange(0, MAX_KIMG, min_open=True), default=None, show_default="500",
              help="ADA: kimg for p to go from 0 to 1 at the fastest.")
@click.option("--threads", type=click.IntRange(1, 512), default=None, show_default="every core on a CPU",
              help="CPU threads (torch.set_num_threads); on a machine other jobs keep busy, 1 can beat 2.")
@click.option("--device", default=None, show_default="cuda if available, else cpu")
@click.option("--channels-last/--no-channels-last", default=None, show_default="off",
              help="NHWC activations in G and D (speed only: same weights, same numbers up to rounding).")
@click.option("--resume", type=click.Path(exists=True, path_type=Path), default=None,
              help="Continue from a checkpoint file or a run directory (its newest checkpoint).")
@click.option("--allow-data-change", is_flag=True, help="Resume even if the dataset differs.")
@click.option("--init-from", type=click.Path(exists=True, path_type=Path), default=None,
              help="Start a fresh run from these weights: ours, an NVlabs pickle or a rosinality .pt "
                   "(its network sizes; --channels / --resolution adapt them).")
@click.option("--dist-timeout", type=FiniteFloatRange(0, min_open=True), default=DEFAULT_TIMEOUT_S,
              help="Under torchrun: seconds a rank waits in a collective before the job fails.")
@click.option("--split", type=click.Choice(["auto", "all", "train", "validate", "test"]), default="auto",
              help="Split of OASIS/ADNI to train on; auto: train, keeping the others for --metrics.")
@click.option("--minutes", type=FiniteFloatRange(0, 1e7, min_open=True), default=None,
              help="Wall-time budget: end with a snapshot in time (no image limit unless --kimg).")
@click.option("--metrics", "metric_names", default=None, help=f"Measure at snapshots, comma-separated from "
              f"{', '.join(METRICS)}; best FID kept as checkpoints/best.pt.")
@click.option("--metrics-n", type=click.IntRange(4, 1_000_000), default=5000, help="Fakes per snapshot for --metrics.")
@click.option("--feature-net", default=None, show_default="inception if its weights are here, else random",
              help="For --metrics: 'inception', 'random[:SEED]', 'torchscript:PATH' or 'exported:PATH'.")
@click.option("--inception-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              show_default=f"${INCEPTION_WEIGHTS_ENV}, else torch.hub's cache", help=f"The file {INCEPTION_FILE}.")
@click.option("--tensorboard/--no-tensorboard", default=None, show_default="on when tensorboard is installed",
              help="Also write TensorBoard events into <run>/tensorboard.")
@click.option("--keep", type=click.IntRange(0), default=0,
              help="Keep only the newest N checkpoints (0: all); best.pt is always kept.")
@click.option("--progress/--no-progress", default=True, help="tqdm progress bars.")
@click.option("--dry-run", is_flag=True, help="Print the resolved configuration and exit.")
@click.pass_context
def train(ctx: click.Context, **opts: Any) -> None:
    """Train a StyleGAN2 (defaults: the built-in mni152 data, preset auto)."""
    _quiet_unless_rank0()
    # The metrics and their feature network before anything is loaded: a missing Inception file
    # is one line now, not a traceback at the first snapshot.
    metric_names = _train_metric_names(opts)
    net = _train_feature_net(opts) if metric_names else None
    ckpt = init = None
    if opts["resume"] is not None:
        if opts["init_from"] is not None:
            raise click.UsageError("--resume continues a run of ours, --init-from starts a fresh one from "
                                   "other weights: give one of them")
        ckpt = _load_for_resume(opts["resume"])
        cfg, run_dir, why = _resume_config(ctx, opts, ckpt)
    else:
        if opts["init_from"] is not None:
            init = _load_init(opts)
        cfg, why = _fresh_config(opts, config_overrides(init) if init is not None else {})
        run_dir = None
    # Under torchrun: join the process group; only rank 0 prints and writes from here on.
    world = _start_world(opts, cfg)
    check_data_path(cfg.data)
    if run_dir is None:  # a resumed run keeps the split of its checkpoint
        cfg = _with_split(cfg, opts["split"])
    click.echo(why)
    if opts["dry_run"]:
        click.echo(cfg.to_json())
        distributed.shutdown()
        return
    if cfg.precision == "fp16" and not _cuda_available() and not (cfg.device or "").startswith("cuda"):
        raise click.BadParameter("fp16 needs a CUDA GPU; use fp32 (or bf16) on a CPU", param_hint="--precision")
    # Before the dataset loads (minutes for a large one): can the run's files be written at all?
    if not world.is_main:
        pass
    elif run_dir is None:
        check_out(opts["out"], keep=False)
    else:  # resuming writes into the checkpoint's run directory, whatever --out says
        check_out(run_dir, keep=True, option="--resume")

    # Decoded once (rank 0 first), read back from the cache and shared memory-mapped by the others.
    dataset = distributed.main_first(lambda: _open_data(cfg, opts["progress"] and world.is_main, mmap=world.active))
    try:  # before a run directory is made for a run that cannot start
        c_dim = condition_dim(cfg, dataset)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if init is not None:
        bad = init_mismatch(model_config_dict(cfg, c_dim), init)
        if bad:
            raise click.UsageError(f"--init-from {opts['init_from']}: its networks differ from this run's: "
                                   f"{'; '.join(bad)}")
    snap_metrics = None
    if metric_names and world.is_main:  # reference features (cached) before a run directory exists
        snap_metrics = _snapshot_metrics(cfg, dataset, metric_names, net, opts)
    if run_dir is None and world.is_main:
        try:
            run_dir = new_run_dir(opts["out"], f"{dataset_name(cfg.data)}-{cfg.preset}")
        except fileio.WriteError as e:
            raise click.ClickException(str(e)) from None
    run_dir = distributed.broadcast_object(run_dir, "learning rank 0's run directory")
    click.echo(f"data: {dataset.source}" + (f" ({dataset.skipped} unreadable files skipped)" if dataset.skipped else ""))
    click.echo(f"run directory: {run_dir}")
    # Held until the outputs are listed: a second Ctrl-C stays ignored after the loop returned.
    with StopRequest() as stop:
        result = _run_training(cfg, run_dir, dataset, ckpt, opts, stop, init, snap_metrics)
        _print_outputs(result)
    distributed.shutdown()
    if result.stop_signal is not None:
        # 128 + signal, as a shell reports a process the signal ended (130 SIGINT, 143 SIGTERM):
        # a scheduler can tell a preempted run, to be resumed, from a finished one.
        ctx.exit(128 + result.stop_signal)


def _start_world(opts: dict[str, Any], cfg: TrainConfig) -> distributed.World:
    """The process group when torchrun started this process (a world of one otherwise), the
    batch split checked first, one line."""
    size = int(os.environ.get("WORLD_SIZE", 1)) if distributed.launched_by_torchrun() else 1
    try:
        distributed.check_batch(cfg.batch, cfg.batch_gpu, size)
        world, _ = distributed.init_from_env(opts["dist_timeout"], cfg.device)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    return world


def _quiet_unless_rank0() -> None:
    """Under torchrun, ranks other than 0 print nothing on stdout (errors still reach stderr from
    every rank) and show no warnings (rank 0 shows the dataset's and the run's once)."""
    if distributed.launched_by_torchrun() and os.environ["RANK"] != "0":
        sys.stdout = open(os.devnull, "w")
        warnings.simplefilter("ignore")


def _train_metric_names(opts: dict[str, Any]) -> list[str]:
    if opts["metric_names"] is None:
        return []
    names = [m.strip() for m in opts["metric_names"].split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise click.BadParameter(f"unknown metric(s) {', '.join(unknown) or '(none given)'}: choose from "
                                 f"{', '.join(METRICS)}", param_hint="--metrics")
    return names


def _train_feature_net(opts: dict[str, Any]) -> FeatureNetwork:
    """--feature-net for train --metrics: one network for the whole run, so snapshots compare.
    Default: Inception when its weights are here, else the fixed random network, with a note."""
    name = opts["feature_net"]
    if name == "discriminator":
        raise click.BadParameter("the discriminator changes at every step, so its features would not compare "
                                 "across snapshots: use 'inception', 'random', 'torchscript:PATH' or "
                                 "'exported:PATH'",
                                 param_hint="--feature-net")
    if name is None:
        name = _default_feature_net(opts["inception_weights"], "random",
                                    "--metrics use the fixed random feature network 'random' (numbers compare "
                                    "across snapshots and runs, not with Inception FIDs)")
    try:
        return get_feature_network(name, device=pick_device(opts["device"]), inception_weights=opts["inception_weights"])
    except FeatureNetworkError as e:
        raise click.ClickException(str(e)) from None


def _with_split(cfg: TrainConfig, split: str) -> TrainConfig:
    """The config with its --split made concrete for the data (see stylegan2.data.splits)."""
    try:  # an empty or unusable folder is a --data problem, said as the dataset loader says it
        layout = None if is_builtin(cfg.data) else data.detect_layout(Path(cfg.data).expanduser())
    except DatasetError as e:
        raise click.ClickException(f"cannot use --data {cfg.data}: {e}") from e
    try:
        chosen = data.choose_split(layout, None if split == "all" else split)
    except DatasetError as e:
        raise click.BadParameter(str(e), param_hint="--split") from None
    cfg.data_split = chosen
    return cfg


def _snapshot_metrics(cfg: TrainConfig, dataset: Any, names: list[str], net: FeatureNetwork,
                      opts: dict[str, Any]) -> SnapshotMetrics:
    """What train --metrics measures against: the held-out split where there is one, its features
    computed (or read from the cache) now."""
    try:
        ref = reference_set(cfg.data, cfg.resolution, cfg.channels, cfg.data_split, training=dataset,
                            progress=opts["progress"])
    except DatasetError as e:
        raise click.ClickException(f"cannot open the reference set of --data {cfg.data}: {e}") from None
    need = 4 if "pr" in names else 2  # precision/recall's k = 3 neighbours, FID's covariance
    if len(ref.dataset) < need:
        raise click.ClickException(f"the reference set {ref.name} has {len(ref.dataset)} images; "
                                   f"{', '.join(names)} need at least {need}")
    click.echo(f"metrics: {', '.join(names)} of {opts['metrics_n']} fakes at each snapshot, {net.name} features, "
               f"reference: {ref.name}")
    sm = SnapshotMetrics(names, opts["metrics_n"], net, ref.dataset, ref.name, batch=min(cfg.batch * 2, 64))
    try:
        sm.prepare(progress=opts["progress"])
    except fileio.WriteError as e:  # the real-feature cache
        raise click.ClickException(str(e)) from None
    return sm


def _load_for_resume(path: Path) -> dict[str, Any]:
    """A checkpoint file as named, or a run directory's newest checkpoint that validates (each
    newer one that does not is named, with why, and left in place)."""
    try:
        if not path.is_dir():
            try:
                return load_checkpoint(path)
            except CheckpointError as e:
                run_dir = run_dir_of(path)
                hint = f"; --resume {run_dir} resumes from the newest checkpoint that loads" if run_dir is not None else ""
                raise CheckpointError(f"{e}{hint}") from None
        ckpt, skipped = load_newest_valid(path)
    except CheckpointError as e:
        raise click.ClickException(str(e)) from None
    for p, reason in skipped:
        click.echo(f"skipped {p}: {reason}; the file is left in place")
    return ckpt


def _load_init(opts: dict[str, Any]) -> Any:
    """--init-from: the weights, adapted to --channels / --resolution where those differ; the
    conversion report (colour transfer, fresh blocks) printed before anything else happens."""
    channels = int(opts["channels"]) if opts["channels"] else None
    try:
        init = load_init(opts["init_from"], channels=channels, resolution=opts["resolution"])
    except (CheckpointError, ConversionError, RefusedPickle) as e:
        raise click.ClickException(str(e)) from None
    except ValueError as e:  # a channels / resolution combination our networks refuse
        raise click.UsageError(f"--init-from {opts['init_from']}: {e}") from None
    for line in init.report.lines():
        click.echo(line)
    return init


def _fresh_config(opts: dict[str, Any], source: dict[str, Any]) -> tuple[TrainConfig, str]:
    """The preset with the options given; `source` (network sizes of --init-from) wins over the
    preset, and equals the options where both say something (load_init adapted to them)."""
    overrides = dict(data=opts["data"] or BUILTIN, resolution=opts["resolution"], batch=opts["batch"],
                     batch_gpu=opts["batch_gpu"],
                     kimg=_kimg_option(opts), snap_kimg=opts["snap"], tick_kimg=opts["tick"], cond=opts["cond"],
                     mirror=opts["mirror"], gamma=opts["gamma"], lr=opts["lr"], loss=opts["loss"],
                     precision=opts["precision"], max_images=opts["max_images"], seed=opts["seed"],
                     threads=opts["threads"], device=opts["device"], channels_last=opts["channels_last"],
                     channels=int(opts["channels"]) if opts["channels"] else None,
                     channel_base=opts["channel_base"], channel_max=opts["channel_max"])
    for name in ("channel_base", "channel_max"):
        if opts[name] is not None and name in source and opts[name] != source[name]:
            raise click.UsageError(f"--{name.replace('_', '-')} {opts[name]}: the weights of --init-from "
                                   f"{opts['init_from']} have {name} {source[name]}")
    overrides.update(source)
    overrides.update(_aug_overrides(opts))
    if opts["init_from"] is not None:
        overrides["extra"] = {"init_from": str(opts["init_from"])}
    try:
        cfg, why = make_config(opts["preset"], overrides, _cuda_available())
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    for name in ("target", "ada_kimg"):
        if opts[name] is not None and cfg.aug != "ada":
            raise click.UsageError(f"--{name.replace('_', '-')} tunes ADA; this run uses --aug {cfg.aug}")
    cfg.extra["command"] = " ".join(["python -m stylegan2", *sys.argv[1:]])
    if opts["init_from"] is not None:
        why += f"; network sizes ({', '.join(source)}) from {opts['init_from']}"
    return cfg, why


def _aug_overrides(opts: dict[str, Any]) -> dict[str, Any]:
    """The augmentation fields the options set: --aug-p alone means --aug fixed."""
    kind, p = opts["aug"], opts["aug_p"]
    if p is not None and kind is None:
        kind = "fixed"
    if p is not None and kind != "fixed":
        raise click.UsageError(f"--aug-p fixes p: give it alone or with --aug fixed, not with --aug {kind}")
    if kind == "fixed" and p is None:
        raise click.UsageError("--aug fixed needs the probability: --aug-p P (0 to 1)")
    return dict(aug=kind, aug_p=p, aug_pipe=opts["aug_pipe"], ada_target=opts["target"], ada_kimg=opts["ada_kimg"])


def _resume_config(ctx: click.Context, opts: dict[str, Any], ckpt: dict[str, Any]) -> tuple[TrainConfig, Path, str]:
    fixed = [f"--{n.replace('_', '-')}" for n in _MODEL_OPTIONS if _given(ctx, n)]
    if fixed:
        raise click.UsageError(f"{', '.join(fixed)}: fixed by the checkpoint when resuming "
                               "(only --kimg, --snap, --tick, --threads, --device, --channels-last, --batch-gpu "
                               "and --data may change)")
    values = dict(ckpt["config"])
    for opt, fieldname in _RUNTIME_FIELDS.items():
        if opts[opt] is not None:
            values[fieldname] = opts[opt]
    values["kimg"] = _kimg_option(opts) or values["kimg"]
    if opts["data"] is not None:
        values["data"] = opts["data"]
    try:
        cfg = resolve(TrainConfig.from_dict(values))
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    path = Path(ckpt["path"])
    run_dir = run_dir_of(path) or path.parent
    kimg = ckpt["progress"]["cur_nimg"] / 1000
    return cfg, run_dir, f"resuming {path} at {kimg:.3f} kimg (preset {cfg.preset}), until {cfg.kimg:g} kimg"


def _kimg_option(opts: dict[str, Any]) -> float | None:
    """--kimg; with --minutes and no --kimg, no image limit (the budget ends the run)."""
    if opts["kimg"] is None and opts["minutes"] is not None:
        return MAX_KIMG
    return opts["kimg"]


def _open_data(cfg: TrainConfig, progress: bool, mmap: bool = False) -> Any:
    try:
        return data.open_dataset(cfg.data, cfg.resolution, cfg.channels, max_images=cfg.max_images,
                                 progress=progress, mmap=mmap, split=cfg.data_split)
    except DatasetError as e:
        raise click.ClickException(f"cannot use --data {cfg.data}: {e}") from e


def _run_training(cfg: TrainConfig, run_dir: Path, dataset: Any, ckpt: dict[str, Any] | None,
                  opts: dict[str, Any], stop: Any = None, init: Any = None, metrics: Any = None) -> Any:
    tensorboard = tensorboard_available() if opts["tensorboard"] is None else opts["tensorboard"]
    if opts["tensorboard"] and not tensorboard_available():
        click.echo("note: --tensorboard needs the tensorboard package (pip install -e \".[tensorboard]\"); "
                   "training without it, the stats files have everything")
    try:
        return train_loop(cfg, run_dir, dataset, resume=ckpt, allow_data_change=opts["allow_data_change"],
                          progress=opts["progress"], keep=opts["keep"], log=click.echo, stop=stop, init=init,
                          metrics=metrics, minutes=opts["minutes"], tensorboard=tensorboard)
    except (TrainingDiverged, ResumeError, TrainingWriteError, fileio.WriteError, CollectiveError) as e:
        raise click.ClickException(str(e)) from None
    except ValueError as e:  # a configuration the networks or the loss refuse
        raise click.ClickException(str(e)) from e


def _print_outputs(result: Any) -> None:
    verb = "finished" if result.status == "done" else "stopped"
    why = " (time budget reached)" if result.ended_by == "minutes" else ""
    click.echo(f"\n{verb} at {result.cur_nimg / 1000:.3f} kimg{why}. Outputs in {result.run_dir}:")
    labels = [("config", "resolved config"), ("stats_jsonl", "stats (JSONL)"), ("stats_csv", "stats (CSV)"),
              ("losses", "loss plot (G and D)"), ("loss_G", "loss plot (G)"), ("loss_D", "loss plot (D)"),
              ("reals", "training images"), ("fakes", "latest fake grid"), ("metrics", "metrics (JSONL)"),
              ("tensorboard", "TensorBoard events"), ("checkpoint", "latest checkpoint"),
              ("best", "best checkpoint (FID)")]
    for key, label in labels:
        if key in result.files:
            click.echo(f"  {label:22s} {result.files[key]}")
    if result.best is not None:
        click.echo(f"  best FID {result.best['fid']:.4g} at {result.best['kimg']:.3f} kimg ({result.best['network']} "
                   f"features, reference {result.best['reference']})")


def _load_ckpt_option(path: Path, quiet: bool = False) -> dict[str, Any]:
    """--ckpt of generate and info: our checkpoint, or an NVlabs / rosinality file converted in
    memory (their generators only, so a file without a usable D still loads), said first.
    `quiet` keeps the notes off stdout where it must hold JSON alone (they go to stderr)."""
    try:
        ck, report = load_as_checkpoint(path, generator_only=True)
    except (CheckpointError, ConversionError, RefusedPickle) as e:
        raise click.ClickException(str(e)) from None
    if report is not None:
        for line in report.lines():
            click.echo(line, err=quiet)
    return ck


# --------------------------------------------------------------------------------------------
# generate

@main.command(short_help="Render images from a checkpoint.")
@click.option("--ckpt", type=click.Path(exists=True, path_type=Path), required=True,
              help="Checkpoint file, or a run directory (its newest checkpoint); NVlabs pickles and "
                   "rosinality .pt files are converted in memory.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for seedNNNN.png files and grid.png.")
@click.option("--seeds", default=None, show_default="0..n-1", help="Seeds, e.g. '0-7,12'.")
@click.option("--ws", "ws_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Render saved latents instead of seeds (.npy [N, num_ws, w_dim] or [N, w_dim], e.g. project's).")
@click.option("--n", "count", type=click.IntRange(1, 100000), default=16, help="Number of images when --seeds is not given.")
@click.option("--trunc", type=FiniteFloatRange(0, 2), default=1.0, help="Truncation psi (1: off).")
@click.option("--class", "class_", default=None, help="Class label name or index (conditional models).")
@click.option("--noise-mode", type=click.Choice(["const", "random", "none"]), default="const")
@click.option("--batch", type=click.IntRange(1, 1024), default=16, help="Images per forward pass.")
@click.option("--raw", is_flag=True, help="Use the raw generator instead of its EMA.")
@click.option("--device", default=None, show_default="cuda if available, else cpu")
@click.option("--speedup", type=click.Choice(SPEEDUPS), default="none",
              help="cudagraph: replay one captured CUDA graph per batch size (GPU only); "
                   "compile: torch.compile the generator. Same images either way.")
@click.option("--channels-last/--no-channels-last", default=False, help="NHWC activations in the generator.")
@click.option("--progress/--no-progress", default=True)
def generate(ckpt: Path, out: Path, seeds: str | None, ws_file: Path | None, count: int, trunc: float,
             class_: str | None, noise_mode: str, batch: int, raw: bool, device: str | None, speedup: str,
             channels_last: bool, progress: bool) -> None:
    """Generate images from a checkpoint: one PNG per seed (or per saved latent, --ws) and a grid."""
    if ws_file is not None:
        render_saved_ws(ckpt, out, ws_file, seeds, class_, trunc, noise_mode, batch, raw, device, progress)
        return
    try:
        seed_list = parse_seeds(seeds) if seeds is not None else list(range(count))
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--seeds") from e
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if speedup == "cudagraph" and dev.type != "cuda":
        raise click.BadParameter(f"cudagraph needs a CUDA device (this run: {dev.type})", param_hint="--speedup")
    if speedup != "none" and noise_mode == "random":
        # Graph replays cannot reseed per image, and compiled code draws other random numbers
        # than eager code: the same seed would no longer give the same picture.
        raise click.BadParameter(f"{speedup} cannot draw each image's noise from its own seed as eager "
                                 "calls do; use --noise-mode const or none, or --speedup none",
                                 param_hint="--speedup")
    check_out(out, keep=False)
    ck = _load_ckpt_option(ckpt)
    G = load_generator(ck, raw=raw, device=dev)
    try:
        c = class_vector(class_, G.c_dim, ck["dataset"].get("label_names", []), dev)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--class") from None
    # Reduced-precision layers of a GPU-trained model run in float32 on a CPU.
    sampler = Sampler(G, speedup=speedup, channels_last=channels_last, truncation_psi=trunc,
                      noise_mode=noise_mode, force_fp32=dev.type != "cuda")
    try:
        # Every batch has the same shapes: let cuDNN autotune once (a process-wide setting, so
        # the command sets it, not the library).
        with torch_settings(cudnn_benchmark=True if dev.type == "cuda" else None):
            done = generate_images(sampler, seed_list, out, c=c, batch=batch, progress=progress)
    except fileio.WriteError as e:
        raise click.ClickException(str(e)) from None
    shown = "" if done.count <= done.grid_count else f" of the first {done.grid_count}"
    click.echo(f"wrote {done.count} images (seed{seed_list[0]:04d}.png ...) and {done.grid.name}{shown} to {out}")


# --------------------------------------------------------------------------------------------
# info

@main.command(short_help="Show a checkpoint's config and progress.")
@click.option("--ckpt", type=click.Path(exists=True, path_type=Path), required=True,
              help="Checkpoint file, or a run directory (its newest checkpoint); NVlabs pickles and "
                   "rosinality .pt files are converted in memory.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info(ckpt: Path, as_json: bool) -> None:
    """Show a checkpoint's metadata: config, progress, dataset, parameter counts."""
    ck = _load_ckpt_option(ckpt, quiet=as_json)
    counts = {"G": count_parameters(load_generator(ck, raw=True)), "D": count_parameters(load_discriminator(ck))}
    doc = {"path": ck["path"], "created": ck.get("created"), "torch": ck.get("torch"),
           "kimg": ck["progress"]["cur_nimg"] / 1000, "step": ck["progress"]["step"],
           "training_time_s": ck["progress"].get("elapsed_s"), "dataset": ck["dataset"],
           "parameters": counts, "model": ck["model_config"], "train": ck["config"]}
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    d = ck["dataset"]
    click.echo(f"checkpoint   {doc['path']}")
    click.echo(f"created      {doc['created']} (torch {doc['torch']})")
    click.echo(f"progress     {doc['kimg']:.3f} kimg, {doc['step']} steps, "
               f"{(doc['training_time_s'] or 0) / 60:.1f} min of training")
    click.echo(f"dataset      {d.get('source')} ({d.get('num_images')} images)")
    click.echo(f"fingerprint  {d.get('fingerprint')}")
    if d.get("label_names"):
        click.echo(f"labels       {', '.join(d['label_names'])}")
    click.echo(f"parameters   G {counts['G']:,}  D {counts['D']:,}")
    m = ck["model_config"]
    click.echo(f"model        {m['resolution']}x{m['resolution']}x{m['channels']}, z {m['z_dim']}, "
               f"w {m['w_dim']}, mapping {m['mapping_layers']}, channels {m['channel_base']}/{m['channel_max']}, "
               f"c_dim {m['c_dim']}, {m['precision']}")
    click.echo("training config:")
    for k, v in ck["config"].items():
        click.echo(f"  {k:14s} {v}")


# --------------------------------------------------------------------------------------------
# metrics and audit

def _load_ckpt(path: Path) -> dict[str, Any]:
    try:
        return load_checkpoint(path)
    except CheckpointError as e:
        raise click.ClickException(str(e)) from None


def _feature_net(name: str | None, ck: dict[str, Any], weights: Path | None, dev: torch.device) -> FeatureNetwork:
    """The named feature network; without a name, Inception when pytorch-fid and its weights are
    here (the network published numbers use), else the checkpoint's discriminator, with a note:
    its numbers compare only with others measured with the same checkpoint's D."""
    if name is None:
        name = _default_feature_net(weights, "discriminator", "features come from the checkpoint's discriminator "
                                    "(numbers compare only with this D)")
    try:
        return get_feature_network(name, ckpt=ck, device=dev, inception_weights=weights)
    except FeatureNetworkError as e:
        raise click.ClickException(str(e)) from None


def _default_feature_net(weights: Path | None, fallback: str, consequence: str) -> str:
    """Inception when its weights were named or are where pytorch-fid looks (the network published
    numbers use), else `fallback`, saying once why and what `consequence` that has."""
    if weights is not None or (_pytorch_fid_installed() and inception_weights_path().is_file()):
        return "inception"
    why = (f"no FID Inception weights at {inception_weights_path()}" if _pytorch_fid_installed()
           else "pytorch-fid is not installed")
    click.echo(f"note: {why}, so {consequence}; the README says how to get Inception")
    return fallback


def _pytorch_fid_installed() -> bool:
    return importlib.util.find_spec("pytorch_fid") is not None


# Precision/recall's neighbourhood size (Kynkaanniemi et al.): each side needs more than this
# many images, FID's covariance at least 2.
_PR_K = 3


def _too_few(names: list[str], n: int, side: str) -> str | None:
    need = _PR_K + 1 if "pr" in names else 2
    return f"{side}: {n} images, but {', '.join(names)} need at least {need}" if n < need else None


def _evaluation_options(command: Any) -> Any:
    """The options metrics and audit share: the feature network, its weights, the fakes' seeds,
    the batch, the device and the progress bar."""
    for option in reversed([
        click.option("--feature-net", default=None, show_default="inception if its weights are here, else discriminator",
                     help="'discriminator', 'inception', 'random[:SEED]', 'torchscript:PATH' or "
                          "'exported:PATH' (torch.export)."),
        click.option("--inception-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     show_default=f"${INCEPTION_WEIGHTS_ENV}, else torch.hub's cache", help=f"The file {INCEPTION_FILE}."),
        click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, help="Fake i uses the latent of seed+i."),
        click.option("--batch", type=click.IntRange(1, 1024), default=32, help="Images per forward pass."),
        click.option("--device", default=None, show_default="cuda if available, else cpu"),
        click.option("--progress/--no-progress", default=True),
    ]):
        command = option(command)
    return command


@main.command(short_help="FID, KID, precision/recall of a model.")
@click.option("--ckpt", type=click.Path(exists=True, path_type=Path), required=True,
              help="Checkpoint file, or a run directory (its newest checkpoint).")
@click.option("--metrics", "metric_names", default="fid,kid,pr", help=f"Comma-separated, from {', '.join(METRICS)}.")
@click.option("--data", default=None, show_default="the checkpoint's dataset", help="Real images to compare with.")
@click.option("--n", "count", type=click.IntRange(2, 1_000_000), default=10000, help="Number of fakes.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              show_default="the run folder", help="Folder for the metrics JSON.")
@click.option("--kid-subsets", type=click.IntRange(1, 100_000), default=100,
              help="KID: the number of random subsets it averages over.")
@click.option("--kid-subset-size", type=click.IntRange(2, 1_000_000), default=1000,
              help="KID: images per subset and side (capped at the smaller set).")
@_evaluation_options
def metrics(ckpt: Path, metric_names: str, data: str | None, count: int, feature_net: str | None,
            inception_weights: Path | None, out: Path | None, kid_subsets: int, kid_subset_size: int, seed: int,
            batch: int, device: str | None, progress: bool) -> None:
    """FID, KID and precision/recall ("pr") of a checkpoint's generator against real images."""
    names = [m.strip() for m in metric_names.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise click.BadParameter(f"unknown metric(s) {', '.join(unknown) or '(none given)'}: choose from "
                                 f"{', '.join(METRICS)}", param_hint="--metrics")
    few = _too_few(names, count, "fakes")
    if few:
        raise click.BadParameter(few, param_hint="--n")
    # Everything that can fail in a second is checked before features take minutes.
    ck = _load_ckpt(ckpt)
    dev = pick_device(device)
    net = _feature_net(feature_net, ck, inception_weights, dev)
    folder = out if out is not None else run_folder(ck)
    # keep=False for --out: a run that fails later leaves no empty folder (the run folder exists).
    check_out(folder, keep=out is None)
    dataset, reference = checkpoint_data(ck, data, progress, held_out=True)
    few = _too_few(names, len(dataset), f"the real set {dataset.source}")
    if few:
        raise click.ClickException(few)
    click.echo(f"reference: {reference}")
    try:
        real = real_features(dataset, net, batch=batch, progress=progress, reference=reference)
        G = generator_from_checkpoint(ck, device=dev)
        # The bar wraps the generator here, where the count is known (the library sees only an
        # iterator); each batch is generated and passed through the network before the next.
        fakes = tqdm(fake_batches(G, count, batch=batch, seed=seed), total=-(-count // batch), desc="fakes",
                     unit="batch", disable=not progress, leave=False)
        results = compute_metrics(fakes, real, net, names, k=_PR_K, seed=seed, batch=batch, kid_subsets=kid_subsets,
                                  kid_subset_size=kid_subset_size)
    except fileio.WriteError as e:  # the real-feature cache
        raise click.ClickException(str(e)) from None
    except ValueError as e:  # what the checks above did not foresee, still in one line
        raise click.ClickException(str(e)) from None
    for r in results:
        click.echo(str(r))
    doc = {"checkpoint": ck["path"], "kimg": ck["progress"]["cur_nimg"] / 1000, "data": str(dataset.source),
           "reference": reference,
           "feature_network": net.name, "feature_network_key": net.key, "num_fake": count, "seed": seed,
           "results": [r.to_dict() for r in results]}
    path = folder / f"metrics-{Path(ck['path']).stem}.json"
    try:
        fileio.make_dirs(folder)
        fileio.atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    except fileio.WriteError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {path}")


@main.command(short_help="Memorization audit: nearest training images.")
@click.option("--ckpt", type=click.Path(exists=True, path_type=Path), required=True,
              help="Checkpoint file, or a run directory (its newest checkpoint).")
@click.option("--n", "count", type=click.IntRange(1, 1_000_000), default=5000, help="Number of fakes.")
@click.option("--data", default=None, show_default="the checkpoint's dataset", help="The training images.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              show_default="<run>/audit-<checkpoint>", help="Folder for pairs.csv, closest_pairs.png, summary.json.")
@_evaluation_options
def audit(ckpt: Path, count: int, data: str | None, feature_net: str | None, inception_weights: Path | None,
          out: Path | None, seed: int, batch: int, device: str | None, progress: bool) -> None:
    """Memorization audit: each fake's nearest training image, by pixels and by features."""
    ck = _load_ckpt(ckpt)
    dev = pick_device(device)
    net = _feature_net(feature_net, ck, inception_weights, dev)
    folder = out if out is not None else run_folder(ck) / f"audit-{Path(ck['path']).stem}"
    # keep=False: a run that fails later (a dataset that will not load) leaves no empty folder.
    check_out(folder, keep=False)
    dataset, _ = checkpoint_data(ck, data, progress)
    if len(dataset) < 2:  # the threshold is a distance between two distinct real images
        raise click.ClickException(f"the audit needs at least 2 training images; {dataset.source} has {len(dataset)}")
    G = generator_from_checkpoint(ck, device=dev)
    # uint8 as they would be saved: a quarter of float32's memory for 5000 fakes at 256x256, and
    # the audit compares pixels in uint8 anyway.
    batches = tqdm(fake_batches(G, count, batch=batch, seed=seed), total=-(-count // batch), desc="generate",
                   unit="batch", disable=not progress, leave=False)
    fakes = torch.cat([_to_uint8(b) for b in batches])
    try:
        res = audit_memorization(fakes, dataset, folder, net=net, seed=seed, batch=batch, progress=progress)
    except ValueError as e:  # fewer than 2 training images, or shapes that differ
        raise click.ClickException(str(e)) from None
    except fileio.WriteError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{res.num_fake} fakes vs {res.num_train} training images of {res.reference}; flagged: closer "
               f"than percentile {res.percentile:g} of the distances from real images to their nearest other one")
    width = max(len(m.name) for m in res.measures)
    for m in res.measures:
        click.echo(f"  {m.name:{width}s}  threshold {m.threshold:.4g}   flagged {m.fraction_flagged:.2%} "
                   f"({int(m.flagged.sum())} of {res.num_fake})   closest fake {m.distance.min():.4g}")
    click.echo(f"wrote {res.files['csv']}, {res.files.get('grid', '(no grid)')} and {res.files['summary']}")


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float in [-1, 1] -> uint8 [N, C, R, R], the values images.to_uint8 gives a saved PNG
    (round((x + 1) * 127.5) is its floor(x * 127.5 + 128)), kept as a tensor in NCHW."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


# --------------------------------------------------------------------------------------------
# convert

@main.command("convert", short_help="Import an NVlabs or rosinality checkpoint.")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--allow-partial", is_flag=True,
              help="Keep what maps when something does not (listed); the rest starts fresh.")
@click.option("--channels", type=click.Choice(["1", "3"]), default=None, show_default="the source's",
              help="Image channels: 1 from RGB combines ToRGB rows by luminance and sums D's FromRGB columns.")
@click.option("--resolution", type=click.IntRange(4, 1024), default=None, show_default="the source's",
              help="Reuse the blocks both sizes have, initialise the others fresh (listed).")
@click.option("--to", "to", type=click.Choice(["ours", "nvlabs-state-dict"]), default="ours",
              help="ours: this project's checkpoint; nvlabs-state-dict: NVlabs' parameter names and init_kwargs.")
def convert(src: Path, dst: Path, allow_partial: bool, channels: str | None, resolution: int | None, to: str) -> None:
    """Convert an NVlabs network pickle or a rosinality checkpoint into this project's checkpoint
    (or any of those, or ours, a file or run directory, into NVlabs' names with --to
    nvlabs-state-dict). No code from SRC ever runs."""
    if to == "nvlabs-state-dict" and (channels is not None or resolution is not None):
        raise click.UsageError("--channels and --resolution apply to --to ours; convert first, then export")
    if src.is_dir() and to == "ours":  # only our run directories hold checkpoints
        raise click.BadParameter(f"{src} is a run directory of this project, already in its format "
                                 "(--to nvlabs-state-dict exports its newest checkpoint)", param_hint="SRC")
    if dst.resolve() == src.resolve():
        raise click.BadParameter("DST is SRC; give another file", param_hint="DST")
    check_out(dst.parent, keep=False, option="DST")
    try:
        if to == "ours":
            report = convert_checkpoint(src, dst, allow_partial=allow_partial,
                                        channels=int(channels) if channels else None, resolution=resolution)
        else:
            report = export_nvlabs(src, dst, allow_partial=allow_partial)
    except (ConversionError, RefusedPickle, CheckpointError, fileio.WriteError) as e:
        raise click.ClickException(str(e)) from None
    except ValueError as e:  # a channels / resolution combination our networks refuse
        raise click.ClickException(f"cannot adapt {src}: {e}") from None
    for line in report.lines():
        click.echo(line)
    what = "this project's checkpoint" if to == "ours" else "NVlabs-named state dicts"
    click.echo(f"wrote {what} to {dst}")


# --------------------------------------------------------------------------------------------
# cache

@main.command(short_help="List or clear the cached decoded datasets.")
@click.option("--list", "list_", is_flag=True, help="Show the cached datasets (the default).")
@click.option("--clear", is_flag=True, help="Remove cached datasets: all, or those --kind and --unused-days select.")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(KINDS), help="Only datasets of this kind (repeatable).")
@click.option("--unused-days", type=click.FloatRange(0), default=None, help="Only datasets not used for this many days.")
@click.option("--dir", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              show_default="$STYLEGAN2_CACHE, else ~/.cache/stylegan2", help="The cache folder.")
def cache(list_: bool, clear: bool, kinds: tuple[str, ...], unused_days: float | None, cache_dir: Path | None) -> None:
    """List or clear the decoded datasets cached on disk (every dataset is decoded once, then read back)."""
    if list_ and clear:
        raise click.UsageError("give --list or --clear, not both")
    folder = datasets_dir(cache_dir)
    if clear:
        try:
            removed = clear_cache(cache_dir, kinds=kinds, unused_days=unused_days)
        except OSError as e:
            raise click.ClickException(f"cannot remove {e.filename}: {e.strerror}") from e
        for entry in removed:
            click.echo(f"removed {entry.path.name} ({entry.kind}, {format_size(entry.size)})")
        click.echo(f"removed {_files(len(removed))} ({format_size(sum(e.size for e in removed))}) from {folder}")
        return
    entries = list_cache(cache_dir, kinds=kinds, unused_days=unused_days)
    for line in format_entries(entries) if entries else []:
        click.echo(line)
    click.echo(f"{_files(len(entries))} ({format_size(sum(e.size for e in entries))}) in {folder}")


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


add_explore_commands(main)  # embed, mix, interpolate, project (cli_explore.py)

if __name__ == "__main__":
    main()
