"""The explore commands: `python -m stylegan2 embed | mix | interpolate | project`, thin wrappers
over stylegan2.explore (the library a notebook calls). Registered on the main group by cli.py.

    python -m stylegan2 embed --ckpt runs/00000-mni152-cpu-small --n 2000
    python -m stylegan2 mix --ckpt runs/00000-mni152-cpu-small --rows 0-3 --cols 10-15 --styles coarse
    python -m stylegan2 interpolate --ckpt runs/00000-mni152-cpu-small --seeds 0,5,9 --space z --steps 60
    python -m stylegan2 project --ckpt runs/00000-mni152-cpu-small --target slice.png --steps 1000
    python -m stylegan2 project --ckpt runs/00000-mni152-cpu-small --real 17   # a training image

Every check that can fail in a second (checkpoint, seeds, layers, target, label field, output
folder) runs before the long work; outputs are written all or none (explore.publish).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import click
import torch

from . import fileio
from .cli_common import FiniteFloatRange, check_out, checkpoint_data, pick_device, run_folder
from .convert import ConversionError, RefusedPickle, load_as_checkpoint
from .explore import (COMPILE_NOTE, LABEL_FIELDS, SPACES, ExploreError, dataset_labels, embed as embed_images,
                      interpolation_frames, lpips_features, mixing_grid, parse_styles, project as project_image,
                      read_target, strip_indices, write_embedding, write_interpolation, write_mixing, write_projection)
from .images import parse_seeds
from .metrics import INCEPTION_FILE, INCEPTION_WEIGHTS_ENV, FeatureNetworkError, get_feature_network
from .sampling import class_vector, generate_from_ws, load_ws
from .training.checkpoint import CheckpointError, load_discriminator, load_generator


def _checkpoint(path: Path, need_d: bool) -> dict[str, Any]:
    """--ckpt: ours, or an NVlabs / rosinality file converted in memory (then its conversion
    notes first). need_d: the command uses the discriminator, so a file without one is refused."""
    try:
        ck, report = load_as_checkpoint(path, generator_only=not need_d)
    except (CheckpointError, ConversionError, RefusedPickle) as e:
        raise click.ClickException(str(e)) from None
    if report is not None:
        for line in report.lines():
            click.echo(line)
    return ck


def _seeds(text: str, option: str, at_least: int = 1) -> list[int]:
    try:
        seeds = parse_seeds(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=option) from None
    if len(seeds) < at_least:
        raise click.BadParameter(f"give at least {at_least} different seeds, got {len(seeds)}", param_hint=option)
    return seeds


def _class(ck: dict[str, Any], G: torch.nn.Module, class_: Optional[str], dev: torch.device) -> Optional[torch.Tensor]:
    try:
        return class_vector(class_, G.c_dim, ck["dataset"].get("label_names", []), dev)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--class") from None


def _out_folder(out: Optional[Path], ck: dict[str, Any], name: str) -> Path:
    """--out, else <run folder>/<name>; checked writable now (a folder it had to create is
    removed again, so a command that fails later leaves nothing)."""
    folder = out if out is not None else run_folder(ck) / name
    check_out(folder, keep=False)
    return folder


def _explore_errors(fn: Callable[[], Any]) -> Any:
    """Runs fn; its ExploreError / WriteError become one-line click errors."""
    try:
        return fn()
    except ExploreError as e:
        raise click.ClickException(str(e)) from None
    except fileio.WriteError as e:
        raise click.ClickException(str(e)) from None


def _common(command: Any) -> Any:
    """--ckpt, --out, --device and --progress, shared by all four commands."""
    for option in reversed([
        click.option("--ckpt", type=click.Path(exists=True, path_type=Path), required=True,
                     help="Checkpoint file, or a run directory (its newest checkpoint); NVlabs pickles and "
                          "rosinality .pt files are converted in memory."),
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
                     show_default="<run>/<command>-<checkpoint> (project: <run>/project-<target>)",
                     help="Output folder."),
        click.option("--device", default=None, show_default="cuda if available, else cpu"),
        click.option("--progress/--no-progress", default=True),
    ]):
        command = option(command)
    return command


def _sampling(command: Any) -> Any:
    """--trunc, --class, --noise-mode, --raw: how mix and interpolate draw images (as generate)."""
    for option in reversed([
        click.option("--trunc", type=FiniteFloatRange(0, 2), default=1.0, help="Truncation psi (1: off)."),
        click.option("--class", "class_", default=None, help="Class label name or index (conditional models)."),
        click.option("--noise-mode", type=click.Choice(["const", "none"]), default="const"),
        click.option("--raw", is_flag=True, help="Use the raw generator instead of its EMA."),
    ]):
        command = option(command)
    return command


def _stem(ck: dict[str, Any]) -> str:
    return Path(ck["path"]).stem


# --------------------------------------------------------------------------------------------

@click.command(short_help="Style-mixing grid of row and column seeds.")
@_common
@click.option("--rows", required=True, help="Row seeds (left column), e.g. '0-3': every style not taken from a column.")
@click.option("--cols", required=True, help="Column seeds (top row), e.g. '10-15': the --styles layers.")
@click.option("--styles", default="coarse", help="Layers taken from the column seed: coarse, middle, fine, or "
                                                 "ws indices like '0-6' (an error lists the model's layers).")
@_sampling
def mix(ckpt: Path, out: Optional[Path], device: Optional[str], progress: bool, rows: str, cols: str, styles: str,
        trunc: float, class_: Optional[str], noise_mode: str, raw: bool) -> None:
    """Style-mixing grid: each cell takes --styles from its column seed and the rest from its row seed."""
    row_seeds, col_seeds = _seeds(rows, "--rows"), _seeds(cols, "--cols")
    dev = pick_device(device)
    ck = _checkpoint(ckpt, need_d=False)
    G = load_generator(ck, raw=raw, device=dev)
    try:
        layers = parse_styles(styles, G)
    except ExploreError as e:
        raise click.BadParameter(str(e).removeprefix("styles: "), param_hint="--styles") from None
    c = _class(ck, G, class_, dev)
    folder = _out_folder(out, ck, f"mix-{_stem(ck)}")
    grid = mixing_grid(G, row_seeds, col_seeds, layers, c=c, truncation_psi=trunc, noise_mode=noise_mode,
                       progress=progress)
    name = f"mix-{styles.replace(',', '_')}.png"
    path = _explore_errors(lambda: write_mixing(grid, len(col_seeds), folder, name))
    click.echo(f"mixed layers {','.join(map(str, layers))} of {len(col_seeds)} column seeds into {len(row_seeds)} "
               f"row seeds; wrote {path}")


@click.command(short_help="Interpolate between seeds: PNG strip and GIF.")
@_common
@click.option("--seeds", required=True, help="Seeds to pass through in order, at least 2, e.g. '0,5,9'.")
@click.option("--space", type=click.Choice(SPACES), default="z", help="z: spherical interpolation; w: linear.")
@click.option("--steps", type=click.IntRange(1, 10000), default=60, help="Frames from each seed to the next.")
@click.option("--loop/--no-loop", default=False, help="Return to the first seed at the end.")
@click.option("--fps", type=FiniteFloatRange(1, 50), default=20, help="GIF frame rate.")
@click.option("--strip", "strip_count", type=click.IntRange(1, 100), default=4,
              help="PNG strip: frames per seed-to-seed segment (each seed's frame and evenly spaced ones between).")
@_sampling
def interpolate(ckpt: Path, out: Optional[Path], device: Optional[str], progress: bool, seeds: str, space: str,
                steps: int, loop: bool, fps: float, strip_count: int, trunc: float, class_: Optional[str],
                noise_mode: str, raw: bool) -> None:
    """Interpolation between seeds: a PNG strip and an animated GIF."""
    seed_list = _seeds(seeds, "--seeds", at_least=2)
    dev = pick_device(device)
    ck = _checkpoint(ckpt, need_d=False)
    G = load_generator(ck, raw=raw, device=dev)
    c = _class(ck, G, class_, dev)
    folder = _out_folder(out, ck, f"interpolate-{_stem(ck)}")
    frames = interpolation_frames(G, seed_list, space=space, steps=steps, loop=loop, c=c, truncation_psi=trunc,
                                  noise_mode=noise_mode, progress=progress)
    stem = f"interpolate-{space}-" + "_".join(map(str, seed_list[:8])) + ("-loop" if loop else "")
    strip = strip_indices(len(seed_list), steps, loop, strip_count)
    files = _explore_errors(lambda: write_interpolation(frames, folder, strip, fps=fps, stem=stem))
    click.echo(f"{len(frames)} frames through seeds {seeds} in {space}; wrote "
               + " and ".join(map(str, files.values())))


@click.command(short_help="Fit a latent that reproduces a real slice.")
@_common
@click.option("--target", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The slice to fit: a PNG of the model's size and channels (grayscale for 1 channel).")
@click.option("--real", "real_index", type=click.IntRange(0), default=None,
              help="Instead of --target: fit image INDEX of the checkpoint's dataset (or --data).")
@click.option("--data", default=None, show_default="the checkpoint's dataset", help="The dataset --real indexes.")
@click.option("--steps", type=click.IntRange(1, 100000), default=1000, help="Optimisation steps.")
@click.option("--w-plus", is_flag=True, help="Fit one w per layer (W+) instead of one w for all (W).")
@click.option("--noise/--no-noise", "fit_noise", default=False,
              help="Also fit the noise maps (regularised as in the paper; saved to projected_noise.npz). "
                   "generate --ws draws with the model's own noise, so it then redraws the projection only roughly.")
@click.option("--lr", type=FiniteFloatRange(0, 10, min_open=True), default=0.1, help="Peak learning rate (Adam).")
@click.option("--pixel-weight", type=FiniteFloatRange(0), default=1.0, help="Weight of the mean squared pixel distance.")
@click.option("--feature-weight", type=FiniteFloatRange(0), default=1.0,
              help="Weight of the discriminator's feature distance (0: pixels only).")
@click.option("--lpips", "use_lpips", is_flag=True, help="Add LPIPS (NVlabs' VGG16 file, local only).")
@click.option("--lpips-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              show_default="$STYLEGAN2_LPIPS_WEIGHTS, else torch.hub's cache/vgg16.pt")
@click.option("--class", "class_", default=None, help="The target's class (conditional models).")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0)
def project(ckpt: Path, out: Optional[Path], device: Optional[str], progress: bool, target: Optional[Path],
            real_index: Optional[int], data: Optional[str], steps: int, w_plus: bool, fit_noise: bool, lr: float,
            pixel_weight: float, feature_weight: float, use_lpips: bool, lpips_weights: Optional[Path],
            class_: Optional[str], seed: int) -> None:
    """Fit a latent (W or W+, optionally noise) so the generator draws a real slice."""
    if (target is None) == (real_index is None):
        raise click.UsageError("give the slice to fit: --target FILE or --real INDEX (one of them)")
    if data is not None and real_index is None:
        raise click.UsageError("--data names the dataset --real indexes; with --target it does not apply")
    if pixel_weight == 0 and feature_weight == 0 and not use_lpips:
        raise click.UsageError("nothing to fit: --pixel-weight and --feature-weight are 0 and --lpips is off")
    dev = pick_device(device)
    ck = _checkpoint(ckpt, need_d=feature_weight > 0)
    G = load_generator(ck, device=dev)
    c = _class(ck, G, class_, dev)
    if target is not None:
        try:
            tgt = read_target(target, G.img_resolution, G.img_channels)
        except ExploreError as e:
            raise click.BadParameter(str(e), param_hint="--target") from None
    lpips = _explore_errors(lambda: lpips_features(lpips_weights, dev)) if use_lpips else None
    folder = _out_folder(out, ck, f"project-{target.stem if target is not None else f'real{real_index:05d}'}")
    if real_index is not None:
        dataset, _ = checkpoint_data(ck, data, progress)  # decoded at the model's size and channels
        if real_index >= len(dataset):
            raise click.BadParameter(f"{real_index} is past the last image of {dataset.source} ({len(dataset)} images)",
                                     param_hint="--real")
        tgt = torch.from_numpy(dataset.images[real_index:real_index + 1]).float() / 127.5 - 1
    D = load_discriminator(ck, device=dev) if feature_weight > 0 else None
    result = _explore_errors(lambda: project_image(
        G, tgt, D=D, steps=steps, w_plus=w_plus, fit_noise=fit_noise, lr=lr, pixel_weight=pixel_weight,
        feature_weight=feature_weight, lpips=lpips, c=c, seed=seed, progress=progress))
    files = _explore_errors(lambda: write_projection(result, tgt, folder))
    pix = float((result.image - tgt).square().mean())
    click.echo(f"{'W+' if w_plus else 'W'}{' and noise' if fit_noise else ''} after {steps} steps: loss "
               f"{result.losses[0]:.4g} -> {result.losses[-1]:.4g}, mean squared pixel distance {pix:.4g}")
    click.echo(f"wrote {', '.join(files)} to {folder} (python -m stylegan2 generate --ws {files['projected_w.npy']} "
               f"renders the latent)")


@click.command(short_help="UMAP of real and generated images.")
@_common
@click.option("--data", default=None, show_default="the checkpoint's dataset", help="The real images.")
@click.option("--n", "count", type=click.IntRange(2, 1_000_000), default=2000,
              help="Generated images, and at most this many real ones.")
@click.option("--label", "label_field", type=click.Choice(LABEL_FIELDS), default="auto",
              help="Ground truth to colour by: class (AD/NC for ADNI, slice band for mni152), split (OASIS, "
                   "ADNI), none; auto: class if the dataset has labels, else split, else none.")
@click.option("--feature-net", default="discriminator",
              help="'discriminator' (its last hidden layer), 'inception', 'torchscript:PATH' or 'exported:PATH' "
                   "(as metrics).")
@click.option("--inception-weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              show_default=f"${INCEPTION_WEIGHTS_ENV}, else torch.hub's cache", help=f"The file {INCEPTION_FILE}.")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0,
              help="Fakes use seeds seed..seed+n-1; also the real subset and UMAP's random state.")
@click.option("--neighbors", type=click.IntRange(2, 200), default=15, help="UMAP n_neighbors.")
@click.option("--min-dist", type=FiniteFloatRange(0, 1), default=0.1, help="UMAP min_dist.")
@click.option("--trunc", type=FiniteFloatRange(0, 2), default=1.0, help="Truncation psi of the fakes (1: off).")
@click.option("--batch", type=click.IntRange(1, 1024), default=32, help="Images per forward pass.")
def embed(ckpt: Path, out: Optional[Path], device: Optional[str], progress: bool, data: Optional[str], count: int,
          label_field: str, feature_net: str, inception_weights: Optional[Path], seed: int, neighbors: int,
          min_dist: float, trunc: float, batch: int) -> None:
    """UMAP of real and generated images (features) and of the generated W latents, by ground truth."""
    dev = pick_device(device)
    ck = _checkpoint(ckpt, need_d=feature_net == "discriminator")
    try:
        net = get_feature_network(feature_net, ckpt=ck, device=dev, inception_weights=inception_weights)
    except FeatureNetworkError as e:
        raise click.ClickException(str(e)) from None
    folder = _out_folder(out, ck, f"embed-{_stem(ck)}")
    dataset, _ = checkpoint_data(ck, data, progress)  # (dataset, report name) since the trainmetrics merge
    spec = data if data is not None else ck["config"]["data"]
    max_images = None if data is not None else ck["config"].get("max_images")
    try:
        title, labels = dataset_labels(dataset, spec, label_field, max_images=max_images)
    except ExploreError as e:
        raise click.BadParameter(str(e), param_hint="--label") from None
    G = load_generator(ck, device=dev)
    click.echo(f"embedding {min(count, len(dataset))} real images of {dataset.source} and {count} generated; "
               f"features: {net.name}; colour: {title}")
    click.echo(COMPILE_NOTE)
    result = _explore_errors(lambda: embed_images(
        G, dataset, net, n=count, labels=labels, label_title=title, class_names=ck["dataset"].get("label_names", []),
        seed=seed, batch=batch, n_neighbors=neighbors, min_dist=min_dist, truncation_psi=trunc, progress=progress))
    files = _explore_errors(lambda: write_embedding(result, folder, title=f"{_stem(ck)}: real vs generated"))
    click.echo(f"wrote {', '.join(files)} to {folder}")


def render_saved_ws(ckpt: Path, out: Path, ws_file: Path, seeds: Optional[str], class_: Optional[str], trunc: float,
                    noise_mode: str, batch: int, raw: bool, device: Optional[str], progress: bool) -> None:
    """`generate --ws`: saved latents through the synthesis network (no mapping, so seeds, class
    and truncation do not apply)."""
    if seeds is not None or class_ is not None or trunc != 1.0:
        raise click.UsageError("--ws renders saved latents: --seeds, --class and --trunc do not apply")
    dev = pick_device(device)
    check_out(out, keep=False)
    G = load_generator(_checkpoint(ckpt, need_d=False), raw=raw, device=dev)
    try:
        ws = load_ws(ws_file, G.num_ws, G.w_dim)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--ws") from None
    done = _explore_errors(lambda: generate_from_ws(G, ws, out, noise_mode=noise_mode, batch=batch, progress=progress))
    click.echo(f"wrote {done.count} images (ws0000.png ...) and {done.grid.name} to {out}")


COMMANDS = (embed, mix, interpolate, project)


def add_explore_commands(group: click.Group) -> None:
    """Register embed, mix, interpolate and project on the main command group."""
    for command in COMMANDS:
        group.add_command(command)
