"""Compare candidate CPU presets at equal wall time (not equal kimg) on the built-in mni152 data.

    python -m benchmarks.cpu_preset_sweep speed --out DIR          # img/s of every candidate, one process
    python -m benchmarks.cpu_preset_sweep train NAME --minutes 5 --speed DIR/speed.json --out DIR
    python -m benchmarks.cpu_preset_sweep score DIR/NAME ... --ref DIR/base --out DIR/scores.json
    python -m benchmarks.cpu_preset_sweep sheet DIR/NAME ... --out docs/sheet.png
    python -m benchmarks.cpu_preset_sweep table DIR/scores.json    # the markdown table

Fairness on a shared machine: `speed` builds every candidate in ONE process and alternates a few
training steps of each, so whatever else runs on the machine slows all of them alike; their img/s
are then scaled so the current preset ("base") gets its known uncontended figure (--base-ips).
`train` runs a candidate for the kimg that scaled img/s reaches in --minutes, so every candidate
gets the same wall-time budget however busy the machine is while it trains. Seed 0, one thread.
Run again with a larger --minutes, it continues the run (a resumed run ends with the weights of
an uninterrupted one), so finalists extend their screening runs.

`score` measures the final G_ema of each run against the reals (all at 32x32):
- fid_pix: FID of 16x16 average-pooled pixels (256 features; no network, nothing to download);
- fid_d: FID in the features of a fixed reference run's discriminator (--ref; the same for all);
- variety: mean pairwise pixel distance of fakes / that of reals (1 = as varied as the data);
- rim: (mean intensity of the 2-px ring inside the head's boundary / mean of the interior) of
  the fakes, over the same ratio of the reals (1 = as the reals; above 1 = a bright rim, as the
  old preset's grids had and the reals do not).
- levels_w1, low_share: how the fakes' mix of slice levels compares with the reals', by the
  per-image head area (small at the cerebellum and the vertex, large at the ventricles): the
  Wasserstein distance of the two area distributions, and the share of fakes below the reals'
  first quartile of area (the reals: 0.25).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# Candidates: overrides of the cpu-small preset as it was before this sweep ("base").
BASE: dict[str, Any] = dict(resolution=32, z_dim=128, w_dim=128, mapping_layers=2, channel_base=2048,
                            channel_max=128, batch=32, lr=0.0025, pl_weight=2.0, pl_interval=4)
CANDIDATES: dict[str, dict[str, Any]] = {
    "base": {},
    "nopl": dict(pl_weight=0.0, pl_interval=0),                       # no path-length reg
    "nopl-lr5": dict(pl_weight=0.0, pl_interval=0, lr=0.005),         # + twice the lr
    "nopl-b16": dict(pl_weight=0.0, pl_interval=0, batch=16),         # + twice the steps
    "nopl-narrow": dict(pl_weight=0.0, pl_interval=0, channel_base=1024, channel_max=64),
    "nopl-64px": dict(pl_weight=0.0, pl_interval=0, resolution=64),
    # Second round, around the narrow network (the first round's fastest).
    "narrow-b16": dict(pl_weight=0.0, pl_interval=0, channel_base=1024, channel_max=64, batch=16),
    "narrow-lr5": dict(pl_weight=0.0, pl_interval=0, channel_base=1024, channel_max=64, lr=0.005),
}

SAME_SPEED = {"nopl-lr5": "nopl", "narrow-lr5": "nopl-narrow"}


def candidate_config(name: str, kimg: float, extra: dict[str, Any] | None = None) -> Any:
    from stylegan2.training.config import make_config
    over = dict(BASE, **CANDIDATES[name])
    over.update(kimg=kimg, seed=0, threads=1, device="cpu", snap_kimg=max(kimg, 0.001),
                tick_kimg=0.256)
    over.update(extra or {})
    cfg, _ = make_config("cpu-small", over)
    cfg.preset = f"sweep-{name}"
    return cfg


def _dataset(resolution: int) -> Any:
    from stylegan2.data import open_dataset
    return open_dataset("mni152", resolution, progress=False)


# --------------------------------------------------------------------------------------------
# speed

def cmd_speed(a: argparse.Namespace) -> None:
    from stylegan2.training.phases import train_step
    from stylegan2.training.state import setup_run
    from stylegan2.training.stats import StatsAccumulator
    torch.set_num_threads(1)
    # lr does not change the work per image: a candidate differing from another only in it
    # shares that one's measurement.
    same = {n: o for n, o in SAME_SPEED.items() if n in CANDIDATES}
    names = [n for n in (a.names or list(CANDIDATES)) if n not in same]
    runs = {}
    for n in names:
        cfg = candidate_config(n, 1.0)
        runs[n] = setup_run(cfg, _dataset(cfg.resolution), torch.device("cpu"))
        for _ in range(2):  # warm-up (allocator, first-call overheads), not timed
            train_step(runs[n], StatsAccumulator())
        runs[n].step = 0
    secs = {n: 0.0 for n in names}
    imgs = {n: 0 for n in names}
    # Rounds of 4 steps each (one PL step per round where PL is on; R1 every 16 = once in 4 rounds).
    for r in range(a.rounds):
        for n in names:
            run, acc = runs[n], StatsAccumulator()
            t0 = time.perf_counter()
            for _ in range(4):
                train_step(run, acc)
            acc.reduce()
            secs[n] += time.perf_counter() - t0
            imgs[n] += 4 * run.cfg.batch
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{n} {imgs[n] / secs[n]:.1f}" for n in names), flush=True)
    raw = {n: imgs[n] / secs[n] for n in names}
    raw.update({n: raw[o] for n, o in same.items() if o in raw})
    names = list(raw)
    scale = a.base_ips / raw["base"] if "base" in raw else 1.0
    # Measurements of other candidates in an earlier call stay (each call scales to its own base).
    path = Path(a.out) / "speed.json"
    out = json.loads(path.read_text()) if path.exists() else {"raw_ips": {}, "ips": {}}
    out.update(base_ips_uncontended=a.base_ips, rounds=a.rounds)
    out["raw_ips"].update(raw)
    out["ips"].update({n: raw[n] * scale for n in names})
    Path(a.out).mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    for n in names:
        print(f"{n:14s} raw {raw[n]:6.2f} img/s  scaled {out['ips'][n]:6.2f} img/s "
              f"({raw[n] / raw.get('base', raw[n]):.2f}x base)")


# --------------------------------------------------------------------------------------------
# train

def cmd_train(a: argparse.Namespace) -> None:
    from stylegan2.training.loop import train
    ips = json.loads(Path(a.speed).read_text())["ips"][a.name]
    kimg = a.kimg if a.kimg else round(ips * a.minutes * 60 / 1000, 3)
    cfg = candidate_config(a.name, kimg, {"snap_kimg": a.snap} if a.snap else None)
    run_dir = Path(a.out) / a.name
    print(f"{a.name}: {ips:.2f} img/s x {a.minutes} min -> {kimg} kimg into {run_dir}", flush=True)
    resume = None
    if (run_dir / "checkpoints").is_dir():  # a finalist: continue its screening run to the longer budget
        from stylegan2.training.checkpoint import load_checkpoint
        resume = load_checkpoint(run_dir)
        print(f"continuing from {resume['path']}", flush=True)
    t0 = time.perf_counter()
    train(cfg, run_dir, _dataset(cfg.resolution), resume=resume, progress=False,
          log=lambda s: print(s, flush=True))
    (run_dir / "sweep.json").write_text(json.dumps(
        {"name": a.name, "minutes_budget": a.minutes, "ips_scaled": ips, "kimg": kimg,
         "wall_s_contended": time.perf_counter() - t0, "overrides": CANDIDATES[a.name]}, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# score

def _to32(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, x.shape[-1] // 32) if x.shape[-1] > 32 else x


def _reals32() -> torch.Tensor:
    return torch.from_numpy(_dataset(32).images).float() / 127.5 - 1  # [-1, 1], as G's outputs


def _label(spec: str) -> tuple[str, Path]:
    """'NAME=PATH' or PATH (a run folder, its newest checkpoint; or a checkpoint file). NAME may
    be CANDIDATE@KIMG, a checkpoint of that candidate's run."""
    name, _, path = spec.rpartition("=")
    return (name or Path(path).name), Path(path)


@torch.no_grad()
def _fakes(run_dir: Path, n: int, psi: float = 1.0) -> torch.Tensor:
    from stylegan2.training.checkpoint import load_generator
    G = load_generator(run_dir)
    torch.manual_seed(0)
    z = torch.randn(n, G.z_dim if hasattr(G, "z_dim") else G.mapping.z_dim)
    out = [G(z[i:i + 100], None, truncation_psi=psi, noise_mode="const") for i in range(0, n, 100)]
    return _to32(torch.cat(out).clamp(-1, 1))


def _pairwise(x: torch.Tensor, n: int = 500) -> float:
    x = x[:n].flatten(1) * 0.5 + 0.5
    d = torch.cdist(x, x) / x.shape[1] ** 0.5
    return float(d.sum() / (len(x) * (len(x) - 1)))


def _rim(x: torch.Tensor) -> tuple[float, float]:
    """Mean intensity (0..1) of the 2-px ring inside the head mask, and of the interior."""
    v = x * 0.5 + 0.5
    mask = (v > 0.08).float()
    eroded = -F.max_pool2d(-mask, 5, 1, 2)          # 2-px erosion
    ring = mask - eroded
    return (float((v * ring).sum() / ring.sum().clamp(min=1)),
            float((v * eroded).sum() / eroded.sum().clamp(min=1)))


def _head_area(x: torch.Tensor) -> torch.Tensor:
    """Per-image fraction of the frame inside the head (the mask _rim() uses): small for the
    cerebellum's lobes and the vertex, large at the ventricles, so its spread tells how many
    slice levels a sample covers."""
    return ((x * 0.5 + 0.5) > 0.08).float().mean(dim=[1, 2, 3])


def _levels(fakes: torch.Tensor, reals: torch.Tensor) -> tuple[float, float]:
    """(levels_w1, low_share): the 1-D Wasserstein distance between the fakes' and the reals'
    head-area distributions (0 = the same mix of slice levels), and the share of fakes whose
    head area is below the reals' first quartile (the reals' own share is 0.25; a sample without
    the small lower slices scores near 0)."""
    f, r = _head_area(fakes).sort().values, _head_area(reals).sort().values
    q = torch.linspace(0, 1, 1001)
    w1 = float((torch.quantile(f, q) - torch.quantile(r, q)).abs().mean())
    return w1, float((f < torch.quantile(r, 0.25)).float().mean())


def _fid(a: np.ndarray, b: np.ndarray) -> float:
    from stylegan2.metrics.scores import frechet_distance, gaussian_stats
    return frechet_distance(gaussian_stats(a), gaussian_stats(b))


def cmd_score(a: argparse.Namespace) -> None:
    from stylegan2.metrics.features import discriminator_network, extract_features
    torch.set_num_threads(1)
    reals = _reals32()
    reals = reals[torch.randperm(len(reals), generator=torch.Generator().manual_seed(0))[:a.n_reals]]
    dnet = discriminator_network(a.ref, torch.device("cpu"))
    pix = lambda x: F.avg_pool2d(x, 2).flatten(1).numpy().astype(np.float64)
    feat = lambda x: extract_features(dnet, ((x[i:i + 256] * 0.5 + 0.5) for i in range(0, len(x), 256)))
    r_pix, r_d = pix(reals), np.asarray(feat(reals))
    r_var = _pairwise(reals)
    r_ring, r_in = _rim(reals)
    scores = json.loads(Path(a.out).read_text()) if Path(a.out).exists() else {}
    scores["_reals"] = {"variety_abs": r_var, "ring": r_ring, "interior": r_in, "ref": str(a.ref),
                        "fid_d_network": dnet.name}
    from stylegan2.training.checkpoint import load_checkpoint
    speed = json.loads(Path(a.speed).read_text())["ips"] if a.speed else {}
    for name, rd in map(_label, a.runs):
        fk = _fakes(rd, a.n)
        ring, inner = _rim(fk)
        kimg = load_checkpoint(rd)["progress"]["cur_nimg"] / 1000
        levels_w1, low_share = _levels(fk, reals)
        s = {"kimg": kimg, "ips": speed.get(name.split("@")[0]),
             "fid_pix": _fid(r_pix, pix(fk)), "fid_d": _fid(r_d, np.asarray(feat(fk))),
             "variety": _pairwise(fk) / r_var, "rim": (ring / inner) / (r_ring / r_in), "ring": ring, "interior": inner,
             "variety_t07": _pairwise(_fakes(rd, 200, 0.7)) / r_var,
             "levels_w1": levels_w1, "low_share": low_share}
        scores[name] = s
        print(f"{name:14s} " + " ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in s.items()), flush=True)
    Path(a.out).write_text(json.dumps(scores, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# sheet

@torch.no_grad()
def cmd_sheet(a: argparse.Namespace) -> None:
    """One row per run: the same 8 latents (seed 0) through each run's final G_ema, at 32x32,
    with the run's name to its left; reals in the last row."""
    from PIL import Image, ImageDraw
    rows, labels = [], []
    for name, rd in map(_label, a.runs):
        rows.append(_fakes(rd, a.cols))
        labels.append(name)
    reals = _reals32()
    rows.append(reals[torch.randperm(len(reals), generator=torch.Generator().manual_seed(0))[:a.cols]])
    labels.append("reals")
    s, pad, left = 32 * a.zoom, 2, 96
    sheet = Image.new("L", (left + a.cols * (s + pad), len(rows) * (s + pad)), 0)
    draw = ImageDraw.Draw(sheet)
    for r, (imgs, lab) in enumerate(zip(rows, labels)):
        draw.text((4, r * (s + pad) + s // 2 - 5), lab, fill=255)
        for c in range(a.cols):
            u8 = ((imgs[c, 0] * 0.5 + 0.5).clamp(0, 1) * 255).round().byte().numpy()
            tile = Image.fromarray(u8, "L").resize((s, s), Image.NEAREST)
            sheet.paste(tile, (left + c * (s + pad), r * (s + pad)))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(a.out, optimize=True)
    print(f"wrote {a.out}")


def cmd_table(a: argparse.Namespace) -> None:
    """scores.json -> a markdown table (one row per run, in the order given)."""
    scores = json.loads(Path(a.scores).read_text())
    print("| candidate | overrides | img/s | kimg | fid_pix | fid_d | variety | variety psi 0.7 | rim |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in a.names or [k for k in scores if not k.startswith("_")]:
        s = scores[n]
        over = ", ".join(f"{k}={v}" for k, v in CANDIDATES.get(n.split("@")[0], {}).items()) or "-"
        ips = f"{s['ips']:.1f}" if s.get("ips") else "-"
        print(f"| {n} | {over} | {ips} | {s['kimg']} | {s['fid_pix']:.1f} | {s['fid_d']:.2f} | "
              f"{s['variety']:.2f} | {s['variety_t07']:.2f} | {s['rim']:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--out", required=True)
    s.add_argument("--rounds", type=int, default=2)
    s.add_argument("--base-ips", type=float, default=20.0,
                   help="uncontended img/s of 'base' on one thread of the reference machine")
    s.add_argument("names", nargs="*")
    t = sub.add_parser("train")
    t.add_argument("name", choices=list(CANDIDATES))
    t.add_argument("--minutes", type=float, default=3.0)
    t.add_argument("--speed", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--kimg", type=float, help="instead of --minutes: for a candidate as fast as "
                   "another, stop at the kimg of that one's checkpoint")
    t.add_argument("--snap", type=float, help="also checkpoint every this many kimg")
    c = sub.add_parser("score")
    c.add_argument("runs", nargs="+", help="run folders or checkpoints, as PATH or NAME=PATH")
    c.add_argument("--ref", required=True, help="the run whose discriminator gives fid_d's features")
    c.add_argument("--n", type=int, default=1000, help="fakes per run")
    c.add_argument("--n-reals", type=int, default=2000, help="reals (a seeded random subset)")
    c.add_argument("--speed", help="speed.json, for the img/s column")
    c.add_argument("--out", required=True)
    h = sub.add_parser("sheet")
    h.add_argument("runs", nargs="+")
    h.add_argument("--cols", type=int, default=8)
    h.add_argument("--zoom", type=int, default=2)
    h.add_argument("--out", required=True)
    b = sub.add_parser("table")
    b.add_argument("scores")
    b.add_argument("names", nargs="*")
    a = p.parse_args()
    {"speed": cmd_speed, "train": cmd_train, "score": cmd_score, "sheet": cmd_sheet, "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    main()
