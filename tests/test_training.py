"""Training layer: seeds parser, config presets, feeder, stats, atomic and weights_only
checkpoints, bit-exact resume, NaN stop, signal stop. Tiny networks (16x16, channel base 256,
max 32, z = w = 32, 2 mapping layers, batch 4) on small synthetic datasets."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal

import numpy as np
import pytest
import torch

from stylegan2.networks import ModelConfig
from stylegan2.training import checkpoint as ckpt_io
from stylegan2.training import loop, state
from stylegan2.training.config import PRESETS, TrainConfig, make_config
from stylegan2.training.feed import BatchFeeder
from stylegan2.images import grid_shape, make_grid, parse_seeds
from stylegan2.training.stats import StatsAccumulator, StatsWriter, non_finite

from helpers import (assert_same_state, assert_steps_never_wait, blob_dataset, sigterm_after_step, tiny, train_quietly,
                     whole_and_resumed)


# --------------------------------------------------------------------------------------------
# seeds

@pytest.mark.parametrize("text, expected", [
    ("0-7,12", [0, 1, 2, 3, 4, 5, 6, 7, 12]),
    ("5", [5]),
    (" 3 - 5 , 1 ", [3, 4, 5, 1]),
    ("2,2,1-3", [2, 1, 3]),
    ("9-9", [9]),
    ("4294967295", [4294967295]),
])
def test_parse_seeds(text, expected):
    assert parse_seeds(text) == expected


@pytest.mark.parametrize("text", ["", " ", "7-3", "a", "1,,2", "-1", "1-", "1.5", "4294967296"])
def test_parse_seeds_rejects(text):
    with pytest.raises(ValueError, match="seeds"):
        parse_seeds(text)


# --------------------------------------------------------------------------------------------
# config

def test_auto_preset_follows_the_device():
    cfg, why = make_config("auto", {}, cuda_available=False)
    assert cfg.preset == "cpu-small" and "cpu-small" in why and cfg.resolution >= 32
    cfg, why = make_config("auto", {}, cuda_available=True)
    assert cfg.preset == "gpu256" and "gpu256" in why
    assert (cfg.resolution, cfg.channel_base, cfg.channel_max, cfg.mapping_layers) == (256, 16384, 512, 8)
    assert (cfg.r1_interval, cfg.pl_interval, cfg.lr, cfg.beta1, cfg.beta2) == (16, 4, 0.0025, 0.0, 0.99)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_resolve_derived_fields(preset):
    cfg, _ = make_config(preset, {"batch": 12})
    assert math.isclose(cfg.gamma, 0.0002 * cfg.resolution**2 / 12)
    assert math.isclose(cfg.ema_kimg, 12 * 10 / 32)
    assert 12 % cfg.mbstd_group == 0 and cfg.mbstd_group <= 4
    # The precision pair passes through untouched; the networks' config fills it in.
    assert (cfg.num_fp16_res, cfg.conv_clamp) == (None, None)
    mc = ModelConfig.from_dict(state.model_config_dict(cfg, 0))
    assert (mc.num_fp16_res > 0) == (cfg.precision != "fp32")
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg


def test_explicit_values_win_and_bad_values_are_named():
    cfg, _ = make_config("tiny", {"gamma": 3.5, "ema_kimg": 0.5, "precision": "bf16", "batch": 6})
    assert (cfg.gamma, cfg.ema_kimg, cfg.num_fp16_res, cfg.conv_clamp, cfg.mbstd_group) == (3.5, 0.5, None, None, 3)
    mc = ModelConfig.from_dict(state.model_config_dict(cfg, 0))
    assert (mc.num_fp16_res, mc.conv_clamp) == (4, 256.0)
    cfg, _ = make_config("tiny", {"loss": "wgan-gp"})
    assert cfg.r1_interval == 1
    for bad, name in [({"resolution": 48}, "resolution"), ({"batch": 0}, "batch"),
                      ({"precision": "fp8"}, "precision"), ({"kimg": 0}, "kimg")]:
        with pytest.raises(ValueError, match=name):
            make_config("tiny", bad)
    with pytest.raises(ValueError, match="preset"):
        make_config("huge")
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"nonsense": 1})


def test_thread_choice():
    import os
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert state.pick_threads(tiny(threads=3), torch.device("cpu")) == 3
    unset = dataclasses.replace(tiny(), threads=None)  # the tests' tiny() fixes one thread
    assert state.pick_threads(unset, torch.device("cpu")) == cores
    assert state.pick_threads(unset, torch.device("cuda")) is None


# --------------------------------------------------------------------------------------------
# feeder, stats, grids

def test_feeder_visits_every_image_once_per_epoch_and_resumes(gen):
    ds = blob_dataset(gen, 10, labeled=True)
    f = BatchFeeder(ds.images, ds.labels, 3, 4, torch.device("cpu"), seed=5)
    seen = torch.cat([f._indices(4) for _ in range(5)])  # 20 = two epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    state = f.state_dict()
    a = [f.reals() for _ in range(3)] + [f.fake_labels(7)]
    f2 = BatchFeeder(ds.images, ds.labels, 3, 4, torch.device("cpu"), seed=99)
    f2.load_state_dict(state)
    b = [f2.reals() for _ in range(3)] + [f2.fake_labels(7)]
    for x, y in zip(a[:3], b[:3]):
        assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])
    assert torch.equal(a[3], b[3])
    img, c = a[0]
    assert img.dtype == torch.float32 and img.shape == (4, 1, 16, 16) and -1 <= img.min() and img.max() <= 1
    assert c.shape == (4, 3) and torch.equal(c.sum(1), torch.ones(4))


def test_feeder_mirror_flips_some_images(gen):
    ds = blob_dataset(gen, 8)
    plain = BatchFeeder(ds.images, None, 0, 8, torch.device("cpu"), seed=1)
    flipped = BatchFeeder(ds.images, None, 0, 8, torch.device("cpu"), seed=1, mirror=True)
    x, _ = plain.reals()
    y, _ = flipped.reals()
    same = [torch.equal(a, b) for a, b in zip(x, y)]
    mirrored = [torch.equal(a.flip(-1), b) for a, b in zip(x, y)]
    assert all(s or m for s, m in zip(same, mirrored)) and any(mirrored) and any(same)


def test_stats_reduce_and_files(tmp_path):
    acc = StatsAccumulator()
    for v in (1.0, 2.0, 4.5):
        acc.add("a", torch.tensor(v))
    acc.add("b", torch.tensor([1.0, float("nan")]))
    out = acc.reduce()
    assert out["a"] == pytest.approx(2.5) and math.isnan(out["b"]) and non_finite(out) == ["b"]
    assert acc.reduce() == {}
    w = StatsWriter(tmp_path)
    for i in range(1, 5):
        w.append({"tick": i, "kimg": i / 10, "nimg": i * 100, **({"x": 1.0} if i % 2 else {"y": 2.0})})
    w.truncate_after(250)
    assert [r["tick"] for r in w.rows()] == [1, 2]
    header = (tmp_path / "stats.csv").read_text().splitlines()[0].split(",")
    assert header == ["tick", "kimg", "nimg", "x", "y"]


def _csv_from_scratch(rows):
    """stats.csv as the rows alone define it: a header of every key in first-seen order."""
    columns = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    lines = [",".join(columns)] + [",".join(repr(r[k]) if k in r else "" for k in columns) for r in rows]
    return "".join(line + "\r\n" for line in lines)


def test_stats_writer_reads_its_files_once_and_keeps_them_as_a_rewrite_would(tmp_path, gen, monkeypatch):
    w = StatsWriter(tmp_path)
    written = []
    reads = []
    real_read = StatsWriter._read
    monkeypatch.setattr(StatsWriter, "_read", lambda self: reads.append(1) or real_read(self))
    keys = ["tick", "kimg", "nimg", "Loss/G", "Loss/D", "Aug/p"]
    for i in range(1, 41):
        # Random key subsets: new columns appear late, some ticks lack some keys.
        present = [k for k in keys if k in ("tick", "nimg") or torch.rand([], generator=gen) < 0.7]
        row = {k: (i if k in ("tick", "nimg") else round(float(torch.randn([], generator=gen)), 6)) for k in present}
        w.append(row)
        written.append(row)
        if i % 13 == 0:  # a snapshot's metrics merged into its tick
            w.add_to_last(i, {"fid": float(i)})
            written[-1] = {**written[-1], "fid": float(i)}
        assert (tmp_path / "stats.csv").read_bytes().decode() == _csv_from_scratch(written), i
    assert reads == [1]  # the first append read the (absent) file; nothing since
    assert w.rows() == written
    w.rows()[0]["tick"] = -1  # a copy: the writer's rows and files stay as they were
    assert w.rows() == written
    w.truncate_after(25)
    assert (tmp_path / "stats.csv").read_bytes().decode() == _csv_from_scratch(written[:25])
    # A fresh writer (a resumed run) reads the same rows back from stats.jsonl.
    assert StatsWriter(tmp_path).rows() == written[:25]
    w.append({"tick": 26, "nimg": 26, "new": 1.5})
    assert (tmp_path / "stats.csv").read_bytes().decode() == _csv_from_scratch(written[:25] + [{"tick": 26, "nimg": 26, "new": 1.5}])
    assert reads == [1, 1]


@pytest.mark.parametrize("n, shape", [(1, (1, 1)), (7, (3, 3)), (10, (2, 5)), (16, (4, 4)), (32, (4, 8)),
                                      (13, (4, 4))])
def test_grid_shape(n, shape):
    assert grid_shape(n) == shape


def test_make_grid_layout(gen):
    imgs = torch.rand(5, 3, 6, 7, generator=gen) * 2 - 1
    g = make_grid(imgs, cols=3, pad=1)
    assert g.shape == (2 * 7 - 1, 3 * 8 - 1, 3) and g.dtype == np.uint8
    expect = ((imgs[4] * 127.5 + 128).clamp(0, 255).to(torch.uint8)).permute(1, 2, 0).numpy()
    assert np.array_equal(g[7:13, 8:15], expect)
    assert (g[6] == 0).all() and (g[7:, 16:] == 0).all()


# --------------------------------------------------------------------------------------------
# checkpoints

@pytest.mark.parametrize("variant", [dict(), dict(cond=True, mirror=True, batch=6)])
def test_resume_is_bit_exact(tmp_path, gen, variant):
    """2k steps in one go == k steps, a checkpoint, a fresh process state, k more steps."""
    ds = blob_dataset(gen, 9, labeled=True)
    batch = variant.get("batch", 4)
    k = 5  # with intervals 2 and 3 both lazy penalties run in each half
    a, mid, b = whole_and_resumed(tmp_path, ds, lambda kimg: tiny(kimg=kimg, snap_kimg=1.0, **variant), k, batch)
    assert mid["progress"]["step"] == k and a["progress"]["step"] == 2 * k
    assert_same_state(a, b)
    rows = StatsWriter(tmp_path / "split").rows()
    assert [r["nimg"] for r in rows] == sorted(r["nimg"] for r in rows)


# The model_config the main branch wrote before ModelConfig filled in the precision defaults
# itself: only the fields the training config decides, with the numbers its config resolution
# chose written out in both config and model_config (typed here, not computed by the code).
_EARLIER_MODEL_KEYS = ("resolution", "channels", "c_dim", "z_dim", "w_dim", "mapping_layers", "channel_base",
                       "channel_max", "num_fp16_res", "precision", "conv_clamp", "mbstd_group")
_EARLIER_PRECISION = {"fp32": (0, None), "bf16": (4, 256.0)}


def _as_earlier_version(ck, precision):
    fp16, clamp = _EARLIER_PRECISION[precision]
    old = dict(ck, config=dict(ck["config"], num_fp16_res=fp16, conv_clamp=clamp))
    old["model_config"] = dict({k: ck["model_config"][k] for k in _EARLIER_MODEL_KEYS},
                               num_fp16_res=fp16, conv_clamp=clamp)
    old.pop("path", None)
    return old


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_checkpoint_of_the_earlier_form_loads_generates_and_resumes_bit_exactly(tmp_path, gen, precision):
    ds = blob_dataset(gen, 9)
    k = 3
    numbers = _EARLIER_PRECISION[precision]

    def as_earlier(new):
        # This version: the training config leaves the pair to the networks, which state the
        # numbers in the checkpoint and in config.json.
        assert (new["config"]["num_fp16_res"], new["config"]["conv_clamp"]) == (None, None)
        assert (new["model_config"]["num_fp16_res"], new["model_config"]["conv_clamp"]) == numbers
        doc = json.loads((tmp_path / "split" / "config.json").read_text())
        assert (doc["model"]["num_fp16_res"], doc["model"]["conv_clamp"]) == numbers
        ckpt_io.atomic_save(_as_earlier_version(new, precision), new["path"])
        old = ckpt_io.load_checkpoint(new["path"])  # validated: its config and model_config agree
        assert sorted(old["model_config"]) == sorted(_EARLIER_MODEL_KEYS)
        z = torch.randn(3, 32, generator=gen)
        images = [ckpt_io.load_generator(c)(z, noise_mode="const") for c in (old, new)]
        assert torch.equal(images[0], images[1])
        return old

    a, old, b = whole_and_resumed(tmp_path, ds, lambda kimg: tiny(kimg=kimg, snap_kimg=1.0, precision=precision),
                                  k, 4, before_resume=as_earlier)
    assert "mapping_lr_mult" not in old["model_config"] and b["progress"]["step"] == 2 * k
    assert_same_state(a, b)


def test_resume_refuses_a_checkpoint_of_other_networks(tmp_path, gen):
    ds = blob_dataset(gen, 6)
    train_quietly(tiny(kimg=0.004), tmp_path / "r", ds)
    ck = ckpt_io.load_checkpoint(tmp_path / "r")
    old = _as_earlier_version(ck, "fp32")
    for saved, change in [(ck, dict(channel_base=128)), (ck, dict(precision="bf16")),
                          (old, dict(channel_base=128)), (old, dict(mapping_layers=3))]:
        cfg = TrainConfig.from_dict(dict(saved["config"], kimg=0.008, **change))
        with pytest.raises(loop.ResumeError, match="differs"):
            train_quietly(cfg, tmp_path / "r", ds, resume=saved)
    # A field the training config does not decide still counts.
    other = dict(old, model_config=dict(old["model_config"], w_avg_beta=0.9))
    with pytest.raises(loop.ResumeError, match="differs"):
        train_quietly(TrainConfig.from_dict(dict(old["config"], kimg=0.008)), tmp_path / "r", ds, resume=other)
    assert ckpt_io.load_checkpoint(tmp_path / "r")["progress"]["cur_nimg"] == 4  # nothing written


def test_checkpoint_loads_with_weights_only_and_holds_everything(tmp_path, gen):
    ds = blob_dataset(gen, 6)
    res = train_quietly(tiny(kimg=0.008), tmp_path / "r", ds)
    raw = torch.load(res.checkpoint, map_location="cpu", weights_only=True)
    assert raw["format"] == ckpt_io.FORMAT
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "loss", "config", "model_config", "progress", "rng", "dataset"):
        assert key in raw, key
    assert raw["dataset"]["fingerprint"] == ds.fingerprint()
    # Only torch's generators and the feeder's: nothing draws from numpy's or Python's global RNG.
    assert set(raw["rng"]) == {"torch_cpu", "torch_cuda", "feeder"}
    assert raw["progress"]["cur_nimg"] == 8 and raw["progress"]["step"] == 2
    assert TrainConfig.from_dict(raw["config"]).resolution == 16

    def leaves(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from leaves(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                yield from leaves(v)
        else:
            yield x
    allowed = (torch.Tensor, int, float, str, bool, type(None))
    assert all(isinstance(v, allowed) for v in leaves(raw))


def test_restore_rng_round_trip():
    state = ckpt_io.capture_rng()
    a = torch.rand(3)
    ckpt_io.restore_rng(state)
    assert torch.equal(a, torch.rand(3))


def test_failing_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, gen):
    path = tmp_path / "checkpoints" / "ckpt-000001.pt"
    good = ckpt_io.new_checkpoint(w=torch.rand(5, generator=gen))
    ckpt_io.atomic_save(good, path)

    def broken_save(obj, f, *a, **kw):
        f.write(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt_io.atomic_save(ckpt_io.new_checkpoint(w=torch.zeros(5)), path)
    monkeypatch.undo()
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    assert torch.equal(ckpt_io.load_checkpoint(path, validate=False)["w"], good["w"])


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(ckpt_io.CheckpointError, match="not found"):
        ckpt_io.load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ckpt_io.CheckpointError, match="no checkpoints"):
        ckpt_io.load_checkpoint(tmp_path / "run")
    (tmp_path / "junk.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(ckpt_io.CheckpointError, match="not a readable checkpoint of this project: not a checkpoint"):
        ckpt_io.load_checkpoint(tmp_path / "junk.pt")
    torch.save({"a": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ckpt_io.CheckpointError, match="not a checkpoint of this project"):
        ckpt_io.load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_names_sort_by_progress(tmp_path):
    d = tmp_path / "checkpoints"
    d.mkdir()
    for nimg in (64, 1000, 2032, 12000, 999, 736):
        (d / ckpt_io.ckpt_name(nimg)).write_bytes(b"")
    (d / "notes.txt").write_bytes(b"")
    (d / "best.pt").write_bytes(b"")
    assert ckpt_io.ckpt_name(2032) == "ckpt-000002032.pt" and ckpt_io.ckpt_name(64) == "ckpt-000000064.pt"
    assert ckpt_io.ckpt_name(25_000_000) == "ckpt-025000000.pt"  # gpu256's 25000 kimg still 9 digits
    names = sorted(p.name for p in d.glob("ckpt-*.pt"))
    # Plain name order is training order: no fractions, fixed width.
    assert [ckpt_io.name_nimg(n) for n in names] == [64, 736, 999, 1000, 2032, 12000]
    assert [n for n, _ in ckpt_io.list_checkpoints(tmp_path)] == [64, 736, 999, 1000, 2032, 12000]
    assert ckpt_io.find_checkpoint(tmp_path).name == "ckpt-000012000.pt"
    ckpt_io.prune_checkpoints(tmp_path, keep=2)
    assert [n for n, _ in ckpt_io.list_checkpoints(tmp_path)] == [2032, 12000]
    assert (d / "best.pt").exists()


def test_checkpoint_names_of_earlier_versions_are_still_found_and_ordered(tmp_path):
    d = tmp_path / "checkpoints"
    d.mkdir()
    # Earlier versions: whole kimg from 1 kimg on, kimg.images below; mixed with new names, as a
    # run of an earlier version resumed by this one leaves them.
    for name in ("ckpt-000000.736.pt", "ckpt-000002.pt", "ckpt-000000.064.pt", "ckpt-000003500.pt", "ckpt-000010.pt"):
        (d / name).write_bytes(b"")
    assert [(n, p.name) for n, p in ckpt_io.list_checkpoints(tmp_path)] == [
        (64, "ckpt-000000.064.pt"), (736, "ckpt-000000.736.pt"), (2000, "ckpt-000002.pt"),
        (3500, "ckpt-000003500.pt"), (10000, "ckpt-000010.pt")]
    assert ckpt_io.name_nimg("best.pt") is None and ckpt_io.name_nimg("ckpt-12.pt") is None


def test_resume_on_other_data_is_refused(tmp_path, gen):
    ds = blob_dataset(gen, 6)
    train_quietly(tiny(kimg=0.004), tmp_path / "r", ds)
    ck = ckpt_io.load_checkpoint(tmp_path / "r")
    other = blob_dataset(gen, 6)
    cfg = TrainConfig.from_dict(dict(ck["config"], kimg=0.008))
    with pytest.raises(loop.ResumeError, match="dataset differs.*--allow-data-change"):
        train_quietly(cfg, tmp_path / "r", other, resume=ck)
    res = train_quietly(cfg, tmp_path / "r", other, resume=ck, allow_data_change=True)
    assert res.cur_nimg == 8


# --------------------------------------------------------------------------------------------
# stopping

def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, gen):
    ds = blob_dataset(gen, 8)
    real_build = state.build_loss
    calls = {"n": 0}

    def poisoned_build(G, D, cfg):
        loss = real_build(G, D, cfg)
        d_main = loss.d_main

        def d_main_nan(*a, **kw):
            calls["n"] += 1
            out = d_main(*a, **kw)
            return out * float("nan") if calls["n"] > 6 else out  # from step 7 on
        loss.d_main = d_main_nan
        return loss
    monkeypatch.setattr(state, "build_loss", poisoned_build)
    cfg = tiny(kimg=0.1, tick_kimg=0.008, snap_kimg=0.016)
    with pytest.raises(loop.TrainingDiverged) as err:
        train_quietly(cfg, tmp_path / "r", ds)
    msg = str(err.value)
    assert "Loss/D/main" in msg and "nan" in msg and "ckpt-000000016.pt" in msg
    found = ckpt_io.list_checkpoints(tmp_path / "r")
    assert [n for n, _ in found] == [16]
    ck = ckpt_io.load_checkpoint(found[-1][1])
    assert all(v.isfinite().all() for v in ck["G"].values() if v.is_floating_point())


def test_signal_saves_and_stops(tmp_path, monkeypatch, gen):
    ds = blob_dataset(gen, 8)
    sigterm_after_step(monkeypatch, 3)
    messages = []
    before = signal.getsignal(signal.SIGTERM)
    res = loop.train(tiny(kimg=0.1), tmp_path / "r", ds, progress=False, log=messages.append)
    assert res.status == "stopped" and res.cur_nimg == 12
    assert signal.getsignal(signal.SIGTERM) is before
    assert any("SIGTERM" in m and "--resume" in m for m in messages)
    assert ckpt_io.load_checkpoint(tmp_path / "r")["progress"]["step"] == 3


@pytest.mark.parametrize("interval", [0, 4, 16])
def test_optimizer_applies_the_lazy_regularization_correction(interval):
    cfg, _ = make_config("tiny")
    opt = state.make_optimizer(torch.nn.Linear(3, 2), cfg, interval)
    ratio = interval / (interval + 1) if interval > 1 else 1.0
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(cfg.lr * ratio)
    assert group["betas"] == pytest.approx((cfg.beta1 ** ratio, cfg.beta2 ** ratio))
    assert not group["fused"]  # CPU: the default implementation


@pytest.mark.cuda
def test_optimizer_is_fused_on_gpu():
    cfg, _ = make_config("tiny")
    opt = state.make_optimizer(torch.nn.Linear(3, 2).cuda(), cfg, 4)
    assert opt.param_groups[0]["fused"] is True


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_training_steps_never_wait_for_the_gpu(gen, precision):
    """Steps (every phase, lazy ones included), the EMA update and the stats stay on the device:
    with sync debug mode 'error', anything that makes the host wait for the GPU raises."""
    cfg = tiny(precision=precision, device="cuda", batch=4)  # R1 every 3, path length every 2
    assert_steps_never_wait(state.setup_run(cfg, blob_dataset(gen, 12), torch.device("cuda")), 6)
