"""Train-time metrics (train --metrics: stats rows, metrics.jsonl, checkpoints/best.pt), held-out
reference splits of OASIS/ADNI layouts, TensorBoard events, the --minutes budget and checkpoint
names old and new. Tiny networks (preset tiny) on small synthetic data; feature networks small
enough to build here."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner, Result
from PIL import Image

from stylegan2 import cli
from stylegan2.data import (DatasetError, ImageDataset, dataset_splits, describe_split, held_out_split,
                            open_dataset, resolve_split)
from stylegan2.metrics import INCEPTION_WEIGHTS_ENV, FeatureNetwork, get_feature_network, real_features
from stylegan2.training import checkpoint as ckpt_io
from stylegan2.training import snapshot_metrics as sm_mod
from stylegan2.training import tensorboard as tb_mod
from stylegan2.training.snapshot_metrics import SnapshotMetrics
from stylegan2.training.stats import StatsWriter

from helpers import ellipse_slices, tiny, train_quietly


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Caches in tmp_path, no Inception weights anywhere (one thread: conftest's one_thread)."""
    monkeypatch.setenv("STYLEGAN2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)


def blobs(n: int, seed: int, res: int = 16) -> np.ndarray:
    """uint8 [n, 1, res, res]: bright ellipses of random size and position on faint noise."""
    return ellipse_slices(np.random.default_rng(seed), n, res)


def pooled_net() -> FeatureNetwork:
    """16 features: 4x4 average pools of a 16x16 image (small, fixed, no weights to fetch)."""
    return FeatureNetwork("pool4", 16, lambda x: F.adaptive_avg_pool2d(x, 4).flatten(1), torch.device("cpu"))


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli.main, [str(a) for a in args])


# --------------------------------------------------------------------------------------------
# metrics at snapshots and best.pt

def test_snapshot_metrics_join_the_stats_rows_and_metrics_jsonl(tmp_path):
    ds = ImageDataset(blobs(12, 0), source="blobs (12)")
    ref = ImageDataset(blobs(10, 1), source="held-out blobs (10)")
    sm = SnapshotMetrics(["fid", "kid", "pr"], 8, pooled_net(), ref, "held-out blobs (10 images)", batch=4)
    res = train_quietly(tiny(kimg=0.032, snap_kimg=0.016), tmp_path / "r", ds, metrics=sm)
    rows = StatsWriter(tmp_path / "r").rows()
    measured = [r for r in rows if "Metrics/fid" in r]
    # One measured row per snapshot (16, 32 images), the row of the tick that ended there.
    assert [r["nimg"] for r in measured] == [16, 32]
    assert all(set(r) >= {"Metrics/fid", "Metrics/kid", "Metrics/precision", "Metrics/recall", "Loss/G/main"}
               for r in measured)
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [x["nimg"] for x in lines] == [16, 32]
    for line, row in zip(lines, measured):
        by = {r["metric"]: r for r in line["results"]}
        assert by["fid"]["value"] == row["Metrics/fid"] and by["fid"]["network"] == "pool4"
        assert by["fid"]["reference"] == "held-out blobs (10 images)"
        assert by["fid"]["num_fake"] == 8 and by["fid"]["num_real"] == 10
        assert 0 <= row["Metrics/precision"] <= 1 and math.isfinite(row["Metrics/fid"])
    # The same numbers from the checkpoint of each snapshot, measured again on their own.
    real = real_features(ref, pooled_net(), reference="x")
    for nimg, row in ((16, measured[0]), (32, measured[1])):
        G = ckpt_io.load_generator(tmp_path / "r" / "checkpoints" / ckpt_io.ckpt_name(nimg))
        again = SnapshotMetrics(["fid"], 8, pooled_net(), ref, "x", batch=4, real=real).measure(G)
        assert again[0].value == pytest.approx(row["Metrics/fid"], rel=1e-9)
    assert res.best is not None and res.best["fid"] == min(r["Metrics/fid"] for r in measured)


def test_metrics_do_not_change_what_training_computes(tmp_path):
    """Fakes for the metrics draw noise from torch's global RNG; it is restored around them."""
    ds = ImageDataset(blobs(8, 2), source="blobs (8)")
    cfg = tiny(kimg=0.016, snap_kimg=0.008)
    train_quietly(cfg, tmp_path / "plain", ds)
    sm = SnapshotMetrics(["fid"], 6, pooled_net(), ds, "blobs", batch=3)
    train_quietly(cfg, tmp_path / "measured", ds, metrics=sm)
    a, b = (ckpt_io.load_checkpoint(tmp_path / d) for d in ("plain", "measured"))
    for key in ("G", "D", "G_ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"


class ScriptedMetrics(SnapshotMetrics):
    """Real metrics, but FIDs from a script, so best.pt's rule is tested on a known sequence."""

    def __init__(self, fids, **kw):
        super().__init__(["fid"], 4, pooled_net(), **kw)
        self.fids = list(fids)

    def measure(self, G):
        results = super().measure(G)
        results[0].value = self.fids.pop(0)
        return results


def test_best_checkpoint_tracks_the_minimum_fid_and_keep_never_deletes_it(tmp_path):
    ds = ImageDataset(blobs(8, 3), source="blobs (8)")
    fids = [5.0, 3.0, 4.0, 2.5, 2.7]
    sm = ScriptedMetrics(fids, reference=ds, reference_name="blobs", batch=4)
    res = train_quietly(tiny(kimg=0.040, snap_kimg=0.008), tmp_path / "r", ds, metrics=sm, keep=1)
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    running = [v < min(fids[:i], default=math.inf) for i, v in enumerate(fids)]
    assert [x["best"] for x in lines] == running == [True, True, False, True, False]
    best = ckpt_io.load_checkpoint(tmp_path / "r" / "checkpoints" / "best.pt")  # validates as ours
    assert best["best"]["fid"] == 2.5 and best["best"]["nimg"] == 32 and best["best"]["kimg"] == 0.032
    assert best["progress"]["cur_nimg"] == 32 and best["best"]["checkpoint"] == ckpt_io.ckpt_name(32)
    assert res.best["fid"] == 2.5
    # --keep 1 pruned every numbered checkpoint but the newest, and left best.pt alone.
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == ["best.pt", ckpt_io.ckpt_name(40)]
    assert ckpt_io.find_checkpoint(tmp_path / "r").name == ckpt_io.ckpt_name(40)  # the latest, never best.pt


def test_best_from_an_abandoned_continuation_or_another_network_is_not_trusted(tmp_path):
    ds = ImageDataset(blobs(8, 4), source="blobs (8)")
    train_quietly(tiny(kimg=0.016, snap_kimg=0.008), tmp_path / "r", ds,
              metrics=ScriptedMetrics([1.0, 0.5], reference=ds, reference_name="blobs", batch=4))
    ck = ckpt_io.load_checkpoint(tmp_path / "r" / "checkpoints" / ckpt_io.ckpt_name(8))
    cfg = tiny(kimg=0.024, snap_kimg=0.008)
    # Resumed from 8 images: best.pt (16 images, FID 0.5) lies after it and is replaced by the
    # first new measurement even though that is worse.
    train_quietly(cfg, tmp_path / "r", ds, resume=ck,
              metrics=ScriptedMetrics([2.0, 3.0], reference=ds, reference_name="blobs", batch=4))
    best = sm_mod.read_best(tmp_path / "r")
    assert best["fid"] == 2.0 and best["nimg"] == 16
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [x["nimg"] for x in lines] == [8, 16, 24]  # the abandoned 16 dropped, measured again


def test_missing_inception_weights_fail_before_training(tmp_path):
    out = tmp_path / "runs"
    r = invoke("train", "--preset", "tiny", "--out", out, "--metrics", "fid", "--feature-net", "inception",
               "--no-progress")
    assert r.exit_code != 0
    error = r.output.strip().splitlines()[-1]
    assert error.startswith("Error: ") and "Inception" in error and "never downloaded" in error
    assert "pt_inception-2015-12-05-6726825d.pth" in error
    assert not out.exists()  # nothing loaded, no run folder
    r = invoke("train", "--preset", "tiny", "--out", out, "--metrics", "fid", "--feature-net", "discriminator")
    assert r.exit_code == 2 and "compare across snapshots" in r.output and not out.exists()
    r = invoke("train", "--preset", "tiny", "--out", out, "--metrics", "fid,is")
    assert r.exit_code == 2 and "unknown metric(s) is" in r.output and not out.exists()


def test_random_feature_network_is_fixed_by_its_seed():
    x = torch.from_numpy(blobs(5, 5, res=32))
    a, b, c = (get_feature_network(n) for n in ("random", "random:0", "random:1"))
    assert a.key == b.key != c.key and a.name == "random:0" and a.dim == 512
    fa, fc = a(x), c(x)
    assert fa.shape == (5, 512) and torch.equal(fa, b(x)) and not torch.allclose(fa, fc)
    # Resolution-independent: a 16 px and a 64 px copy of the same image land close together.
    small = F.interpolate(x.float(), size=16, mode="area").round().to(torch.uint8)
    assert a(small).shape == (5, 512)


# --------------------------------------------------------------------------------------------
# held-out splits

def write_png(path: Path, value: int, size: tuple[int, int] = (16, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(value)
    img = np.clip(value + 20 * g.random((size[1], size[0])), 0, 255).astype(np.uint8)
    Image.fromarray(img, "L").save(path)


def oasis_folder(root: Path, counts=(6, 4, 3)) -> Path:
    """keras_png_slices_data with train/validate/test image folders and a seg folder never read;
    each split's pixels sit in its own grey band, so a test can tell which split it got."""
    base = root / "keras_png_slices_data"
    for split, n, level in zip(("train", "validate", "test"), counts, (40, 120, 200)):
        for i in range(n):
            write_png(base / f"keras_png_slices_{split}" / f"case_{i:03d}_slice_0.nii.png", level + i)
    for i in range(2):
        write_png(base / "keras_png_slices_seg_train" / f"seg_{i:03d}.nii.png", 250)
    return base


def adni_folder(root: Path) -> Path:
    base = root / "AD_NC"
    for split, level in (("train", 40), ("test", 160)):
        for cls, n in (("AD", 3), ("NC", 2)):
            for i in range(n):
                write_png(base / split / cls / f"{cls}_{i}.jpeg", level + i)
    return base


def test_oasis_splits_are_selected_and_cached_apart(tmp_path):
    base = oasis_folder(tmp_path / "data")
    cache = str(tmp_path / "c")
    assert dataset_splits(str(base)) == ("train", "validate", "test")
    sets = {s: open_dataset(str(base), 16, split=s, cache_dir=cache, progress=False)
            for s in (None, "auto", "train", "validate", "test")}
    assert {s: len(d) for s, d in sets.items()} == {None: 13, "auto": 6, "train": 6, "validate": 4, "test": 3}
    means = {s: float(d.images.mean()) for s, d in sets.items() if s}
    assert 40 <= means["train"] < 80 and 120 <= means["validate"] < 160 and 200 <= means["test"] < 240
    assert np.array_equal(sets["auto"].images, sets["train"].images)
    assert "(validate split)" in sets["validate"].source
    # Read back from the cache, each split is still itself (its own slot, its own fingerprint).
    again = open_dataset(str(base), 16, split="validate", cache_dir=cache, progress=False)
    assert np.array_equal(again.images, sets["validate"].images)
    assert len({d.fingerprint() for d in sets.values()}) == 4  # auto == train
    assert held_out_split(str(base), "train") == "validate" and held_out_split(str(base), "validate") == "test"
    assert held_out_split(str(base), None) is None
    assert describe_split(str(base), "validate", 4) == "OASIS validate (4 images)"
    with pytest.raises(DatasetError, match="no 'holdout' split .*its splits are train, validate, test"):
        open_dataset(str(base), 16, split="holdout", cache_dir=cache, progress=False)


def test_adni_splits_and_layouts_without_splits(tmp_path):
    base = adni_folder(tmp_path / "data")
    cache = str(tmp_path / "c")
    train = open_dataset(str(base), 16, split="auto", cache_dir=cache, progress=False)
    test = open_dataset(str(base), 16, split="test", cache_dir=cache, progress=False)
    assert len(train) == 5 and len(test) == 5 and train.images.mean() < 100 < test.images.mean()
    assert list(train.labels) == [0, 0, 0, 1, 1] and train.label_names == ["AD", "NC"]
    assert held_out_split(str(base), "train") == "test"
    assert describe_split(str(base), "test", 5) == "ADNI test (5 images)"
    folder = tmp_path / "plain"
    for i in range(3):
        write_png(folder / f"{i}.png", 30 * i)
    assert resolve_split(str(folder), "auto") is None and held_out_split(str(folder), "train") is None
    assert resolve_split("mni152", "auto") is None
    with pytest.raises(DatasetError, match="has no splits"):
        open_dataset(str(folder), 16, split="train", cache_dir=cache, progress=False)
    with pytest.raises(DatasetError, match="its splits are train, test"):
        resolve_split(str(base), "validate")


@pytest.mark.parametrize("layout, reference", [("oasis", "OASIS validate (4 images)"), ("adni", "ADNI test (5 images)")])
def test_train_uses_the_training_split_and_metrics_the_held_out_one(tmp_path, layout, reference):
    base = oasis_folder(tmp_path / "data") if layout == "oasis" else adni_folder(tmp_path / "data")
    out = tmp_path / "runs"
    r = invoke("train", "--data", base, "--preset", "tiny", "--kimg", "0.008", "--snap", "0.008", "--out", out,
               "--metrics", "fid,kid", "--metrics-n", "6", "--feature-net", "random", "--no-tensorboard",
               "--no-progress", "--threads", "1")
    assert r.exit_code == 0, r.output
    assert f"reference: {reference}" in r.output and "(train split)" in r.output
    run = next(out.iterdir())
    assert json.loads((run / "config.json").read_text())["train"]["data_split"] == "train"
    assert ckpt_io.load_checkpoint(run)["dataset"]["num_images"] == (6 if layout == "oasis" else 5)
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["results"][0]["reference"] == reference
    r = invoke("metrics", "--ckpt", run, "--metrics", "fid", "--n", "6", "--feature-net", "random", "--no-progress")
    assert r.exit_code == 0, r.output
    assert f"reference: {reference}" in r.output
    assert json.loads((run / f"metrics-{ckpt_io.ckpt_name(8)[:-3]}.json").read_text())["reference"] == reference
    # The audit looks for copies of what training saw: the training split, not the held-out one.
    r = invoke("audit", "--ckpt", run, "--n", "4", "--feature-net", "random", "--out", tmp_path / "audit",
               "--no-progress")
    assert r.exit_code == 0, r.output
    assert f"vs {6 if layout == 'oasis' else 5} training images" in r.output
    # --split all trains on everything: nothing is held out, and the report says so.
    r = invoke("train", "--data", base, "--preset", "tiny", "--kimg", "0.004", "--out", out, "--split", "all",
               "--metrics", "fid", "--metrics-n", "4", "--feature-net", "random", "--no-progress", "--threads", "1")
    assert r.exit_code == 0, r.output
    assert "all splits" in r.output and "no held-out split" in r.output


# --------------------------------------------------------------------------------------------
# TensorBoard

def test_tensorboard_events_hold_the_scalars_and_the_grids(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ds = ImageDataset(blobs(8, 6), source="blobs (8)")
    sm = SnapshotMetrics(["fid", "kid"], 6, pooled_net(), ds, "blobs", batch=3)
    res = train_quietly(tiny(kimg=0.032, snap_kimg=0.016), tmp_path / "r", ds, metrics=sm, tensorboard=True)
    assert res.files["tensorboard"] == tmp_path / "r" / "tensorboard"
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"Loss/G/main", "Loss/D/main", "img_per_s", "sec_per_kimg", "Metrics/fid", "Metrics/kid"} <= set(tags["scalars"])
    assert "fakes" in tags["images"] and [e.step for e in acc.Images("fakes")] == [16, 32]
    rows = StatsWriter(tmp_path / "r").rows()
    # The events hold the stats rows' numbers (the stats files are the source of truth).
    assert [(e.step, e.value) for e in acc.Scalars("Loss/G/main")] == \
        [(r["nimg"], pytest.approx(r["Loss/G/main"], rel=1e-6)) for r in rows]
    assert [(e.step, e.value) for e in acc.Scalars("Metrics/fid")] == \
        [(r["nimg"], pytest.approx(r["Metrics/fid"], rel=1e-6)) for r in rows if "Metrics/fid" in r]


def test_training_without_the_tensorboard_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now fails
    assert not tb_mod.available()
    ds = ImageDataset(blobs(6, 7), source="blobs (6)")
    res = train_quietly(tiny(kimg=0.008), tmp_path / "r", ds, tensorboard=True)
    assert res.status == "done" and not (tmp_path / "r" / "tensorboard").exists()
    r = invoke("train", "--preset", "tiny", "--kimg", "0.004", "--max-images", "8", "--out", tmp_path / "runs",
               "--tensorboard", "--no-progress", "--threads", "1")
    assert r.exit_code == 0, r.output
    assert "--tensorboard needs the tensorboard package" in r.output
    assert not any((tmp_path / "runs").glob("*/tensorboard"))


# --------------------------------------------------------------------------------------------
# --minutes

def test_minutes_end_the_run_by_the_budget_with_a_final_snapshot(tmp_path):
    ds = ImageDataset(blobs(6, 8), source="blobs (6)")
    # A budget of a fraction of a second and a kimg no tiny run reaches in it.
    res = train_quietly(tiny(kimg=1000, snap_kimg=500, tick_kimg=500), tmp_path / "r", ds, minutes=0.0001)
    assert res.status == "done" and res.ended_by == "minutes" and res.stop_signal is None
    assert 0 < res.cur_nimg < 1_000_000
    assert [n for n, _ in ckpt_io.list_checkpoints(tmp_path / "r")] == [res.cur_nimg]
    assert (tmp_path / "r" / f"fakes_{ckpt_io.ckpt_tag(res.cur_nimg)}.png").is_file()
    rows = StatsWriter(tmp_path / "r").rows()
    assert rows[-1]["nimg"] == res.cur_nimg  # the final tick's row is written too
    # Without a budget the same run ends by kimg.
    res = train_quietly(tiny(kimg=0.008), tmp_path / "k", ds)
    assert res.ended_by == "kimg" and res.cur_nimg == 8
    with pytest.raises(ValueError, match="minutes"):
        train_quietly(tiny(kimg=0.008), tmp_path / "x", ds, minutes=0.0)


def test_minutes_on_the_command_line_lift_the_image_limit(tmp_path):
    out = tmp_path / "runs"
    r = invoke("train", "--preset", "tiny", "--max-images", "8", "--minutes", "0.0001", "--out", out,
               "--no-progress", "--threads", "1")
    assert r.exit_code == 0, r.output
    assert "time budget of 0.0001 min reached" in r.output and "(time budget reached)" in r.output
    run = next(out.iterdir())
    assert json.loads((run / "config.json").read_text())["train"]["kimg"] == 1e9


# --------------------------------------------------------------------------------------------
# file names

def test_a_run_with_old_names_resumes_and_continues_with_new_ones(tmp_path):
    ds = ImageDataset(blobs(6, 9), source="blobs (6)")
    train_quietly(tiny(kimg=0.016, snap_kimg=0.008), tmp_path / "r", ds)
    d = tmp_path / "r" / "checkpoints"
    # As an earlier version named them: kimg with the images below 1 kimg after a dot.
    for nimg in (8, 16):
        (d / ckpt_io.ckpt_name(nimg)).rename(d / f"ckpt-000000.{nimg:03d}.pt")
    assert [(n, p.name) for n, p in ckpt_io.list_checkpoints(tmp_path / "r")] == \
        [(8, "ckpt-000000.008.pt"), (16, "ckpt-000000.016.pt")]
    ck, skipped = ckpt_io.load_newest_valid(tmp_path / "r")
    assert ck["progress"]["cur_nimg"] == 16 and not skipped
    res = train_quietly(tiny(kimg=0.024, snap_kimg=0.008), tmp_path / "r", ds, resume=ck)
    assert res.cur_nimg == 24 and res.checkpoint.name == "ckpt-000000024.pt"
    assert [p.name for _, p in ckpt_io.list_checkpoints(tmp_path / "r")] == \
        ["ckpt-000000.008.pt", "ckpt-000000.016.pt", "ckpt-000000024.pt"]
    assert ckpt_io.find_checkpoint(tmp_path / "r").name == "ckpt-000000024.pt"


def test_a_resumed_run_hides_the_tensorboard_events_it_writes_again(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ds = ImageDataset(blobs(6, 10), source="blobs (6)")
    train_quietly(tiny(kimg=0.024, snap_kimg=0.008, tick_kimg=0.008), tmp_path / "r", ds, tensorboard=True)
    ck = ckpt_io.load_checkpoint(tmp_path / "r" / "checkpoints" / ckpt_io.ckpt_name(8))
    train_quietly(tiny(kimg=0.024, snap_kimg=0.008, tick_kimg=0.008), tmp_path / "r", ds, resume=ck, tensorboard=True)
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    rows = StatsWriter(tmp_path / "r").rows()
    # One value per step, the resumed run's (as in the stats files), not both runs' 16 and 24.
    assert [(e.step, e.value) for e in acc.Scalars("Loss/G/main")] == \
        [(r["nimg"], pytest.approx(r["Loss/G/main"], rel=1e-6)) for r in rows]
    assert [r["nimg"] for r in rows] == [8, 16, 24]
