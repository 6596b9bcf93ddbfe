"""Augmentation leak check (issue 16): do the fakes of runs trained with augmentation stay
un-augmented? Compares each run's G_ema fakes with the training reals by stylegan2.augment.leak's
placement statistics (centroid offset and spread, main-axis tilt and alignment, and the share of
heads turned from where they best match templates of the reals), next to two references: a
second sample of reals (the statistic's noise floor) and the reals put through ADA's bgc pipeline
at the highest p among the runs (what a full leak would look like).

    python -m stylegan2 train --aug none      --kimg 4 --out runs/p0
    python -m stylegan2 train --aug-p 0.8     --kimg 4 --out runs/p08
    python -m benchmarks.aug_leak_check runs/p0/00000-* runs/p08/00000-* --n 512

Each run is a checkpoint file or a run directory (its newest checkpoint); all must share one
dataset. Prints one table row per run; --json writes the numbers too.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from stylegan2 import data
from stylegan2.augment import leak_score, make_augment, reals_template
from stylegan2.augment.leak import TURNED_DEG
from stylegan2.training.checkpoint import CheckpointError, load_checkpoint, load_generator
from stylegan2.training.grids import render


def reals_of(ckpt: dict, n: int, seed: int, offset: int = 0) -> torch.Tensor:
    """n training images in [-1, 1] (float32, CPU), drawn without replacement by `seed`;
    `offset` picks the next n of the same permutation (a disjoint sample)."""
    cfg = ckpt["config"]
    ds = data.open_dataset(cfg["data"], cfg["resolution"], cfg["channels"], max_images=cfg.get("max_images"),
                           progress=False)
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[offset:offset + n]
    return torch.from_numpy(ds.images[idx.sort().values.numpy()]).float() / 127.5 - 1


def fakes_of(ckpt: dict, n: int, seed: int) -> torch.Tensor:
    G = load_generator(ckpt)
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    c = torch.zeros(n, G.c_dim)
    if G.c_dim:
        c[torch.arange(n), torch.arange(n) % G.c_dim] = 1
    return render(G, z, c, batch=64)


def row(label: str, score: dict[str, float]) -> str:
    return (f"| {label} | {score['centroid']:.4f} | {score['centroid_spread']:+.4f} | {score['angle_deg']:+.2f} "
            f"| {score['alignment']:+.3f} | {score['turned']:+.3f} | {score['template_deg']:+.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="checkpoint files or run directories")
    parser.add_argument("--n", type=int, default=512, help="images per sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error("--n: at least 2 images")
    try:
        ckpts = [load_checkpoint(p) for p in args.runs]
    except CheckpointError as e:
        parser.error(str(e))
    prints = {ck["dataset"]["fingerprint"] for ck in ckpts}
    if len(prints) > 1:
        parser.error("the runs were trained on different datasets; compare runs of one dataset")
    torch.set_grad_enabled(False)
    reals = reals_of(ckpts[0], args.n, args.seed)
    template = reals_template(reals)  # one set of templates for every row
    results: dict[str, dict[str, float]] = {
        "reals (second sample)": leak_score(reals_of(ckpts[0], args.n, args.seed, offset=args.n), reals, template)}
    ps = [ck["config"].get("aug_p") or 0.0 for ck in ckpts]
    p_ref = max(max(ps), 0.8)
    aug = make_augment("fixed", num_channels=reals.shape[1], p=p_ref)
    augmented = aug(reals, generator=torch.Generator().manual_seed(args.seed))
    results[f"reals augmented at p={p_ref:g}"] = leak_score(augmented, reals, template)
    for ck, path in tqdm(list(zip(ckpts, args.runs)), desc="fakes", unit="run"):
        cfg = ck["config"]
        kind = cfg.get("aug", "none")
        pipe = f" --aug-pipe {cfg['aug_pipe']}" if cfg.get("aug_pipe", "bgc") != "bgc" else ""
        label = f"fakes, --aug {kind}" + (f" p={cfg['aug_p']:g}" if kind == "fixed" else "") + pipe + \
            f", {ck['progress']['cur_nimg'] / 1000:g} kimg ({path})"
        results[label] = leak_score(fakes_of(ck, args.n, args.seed), reals, template)
    print(f"placement vs {args.n} reals (0 = alike): centroid distance and spread difference in "
          f"fractions of the image size, main-axis tilt difference in degrees, alignment difference "
          f"(negative: less upright; round images do not count), difference of the share of heads "
          f"turned more than {TURNED_DEG:g} degrees from their best match with the reals' templates "
          f"(positive: more turned) and of the mean such angle")
    print("| sample | centroid | centroid spread | tilt (deg) | alignment | turned | template angle (deg) |\n"
          "|---|---|---|---|---|---|---|")
    for label, score in results.items():
        print(row(label, score))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
