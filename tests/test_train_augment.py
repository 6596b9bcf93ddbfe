"""Augmentation inside training (issue 16): config and CLI options, the loss augmenting every image
D sees (a spy pipeline), ADA's r_t and p inside a run, ADA state in checkpoints and exact resume,
old checkpoints without it, and p = 0 being the identity bit for bit inside the loop. The pipeline
itself (transforms, gradcheck, the controller's rate) is tested in test_augment.py."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from stylegan2 import cli
from stylegan2.augment import same_bits
from stylegan2.data import ImageDataset
from stylegan2.training import checkpoint as ckpt_io
from stylegan2.training import state
from stylegan2.training.config import PRESETS, TrainConfig, make_config, resolve
from stylegan2.training.phases import train_step
from stylegan2.training.stats import StatsAccumulator, StatsWriter

from helpers import assert_same_weights, assert_steps_never_wait, blob_dataset, tiny, train_quietly, whole_and_resumed


def blobs(gen: torch.Generator, n: int, res: int = 16) -> ImageDataset:
    """This file's images: helpers.blob_dataset's ellipses, a little smaller."""
    return blob_dataset(gen, n, res, spread=0.4)


def train(cfg, run_dir, ds, **kw):
    """(loop.train's result, the lines it logged)."""
    lines = []
    return train_quietly(cfg, run_dir, ds, log=lines.append, **kw), lines


# --------------------------------------------------------------------------------------------
# config

def test_config_fields_presets_and_derived_p():
    assert [PRESETS[p].get("aug", "none") for p in ("gpu256", "gpu128", "cpu-small", "tiny")] == \
        ["ada", "ada", "diffaugment", "none"]
    cfg, _ = make_config("gpu128")
    assert (cfg.aug, cfg.aug_p, cfg.ada_target, cfg.ada_kimg) == ("ada", 0.0, 0.6, 500.0)
    cfg, _ = make_config("tiny", dict(aug="fixed", aug_p=0.25))
    assert (cfg.aug, cfg.aug_p) == ("fixed", 0.25)
    assert make_config("tiny", dict(aug="diffaugment"))[0].aug_p is None
    # The JSON round trip keeps them.
    again = TrainConfig.from_dict(json.loads(cfg.to_json()))
    assert (again.aug, again.aug_p) == ("fixed", 0.25)


def test_config_saved_before_augmentation_loads_as_none():
    d = tiny().to_dict()
    for k in ("aug", "aug_p", "ada_target", "ada_kimg", "aug_pipe"):
        del d[k]
    cfg = resolve(TrainConfig.from_dict(d))
    assert cfg.aug == "none" and cfg.aug_p is None and cfg.aug_pipe == "bgc"


@pytest.mark.parametrize("bad, words", [
    (dict(aug="adaptive"), "aug: must be one of"),
    (dict(aug="fixed"), "aug_p: aug 'fixed' needs"),
    (dict(aug="none", aug_p=0.5), "aug_p: aug 'none' has no"),
    (dict(aug="diffaugment", aug_p=0.5), "aug_p: aug 'diffaugment' has no"),
    (dict(aug="fixed", aug_p=1.5), "aug_p: must lie in [0, 1]"),
    (dict(aug="ada", aug_p=float("nan")), "aug_p: must be a finite number"),
    (dict(aug="ada", ada_target=-0.1), "ada_target: must lie in [0, 1]"),
    (dict(aug="ada", ada_kimg=0.0), "ada_kimg: must be positive"),
    (dict(aug="ada", ada_kimg=float("inf")), "ada_kimg: must be a finite number"),
    (dict(aug="ada", aug_pipe="bgcf"), "aug_pipe: must be one of"),
    (dict(aug="diffaugment", aug_pipe="b"), "aug_pipe: aug 'diffaugment' has no ADA pipeline"),
])
def test_config_rejects_bad_augmentation_settings(bad, words):
    with pytest.raises(ValueError) as err:
        make_config("tiny", bad)
    assert words in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------
# CLI

def dry_run(*args: str):
    r = CliRunner().invoke(cli.main, ["train", "--dry-run", "--preset", "tiny", *args])
    return r, (json.loads(r.output[r.output.index("{"):]) if r.exit_code == 0 else None)


def test_cli_options_reach_the_config(monkeypatch):
    _, cfg = dry_run()
    assert cfg["aug"] == "none" and cfg["aug_p"] is None
    _, cfg = dry_run("--aug", "ada", "--target", "0.7", "--ada-kimg", "100")
    assert (cfg["aug"], cfg["aug_p"], cfg["ada_target"], cfg["ada_kimg"]) == ("ada", 0.0, 0.7, 100.0)
    _, cfg = dry_run("--aug-p", "0.8")  # alone: implies fixed
    assert (cfg["aug"], cfg["aug_p"]) == ("fixed", 0.8)
    _, cfg = dry_run("--aug", "fixed", "--aug-p", "0")
    assert (cfg["aug"], cfg["aug_p"]) == ("fixed", 0.0)
    _, cfg = dry_run("--aug", "diffaugment")
    assert cfg["aug"] == "diffaugment" and cfg["aug_pipe"] == "bgc"
    _, cfg = dry_run("--aug-p", "0.8", "--aug-pipe", "bg")
    assert (cfg["aug"], cfg["aug_p"], cfg["aug_pipe"]) == ("fixed", 0.8, "bg")
    monkeypatch.setattr(cli, "_cuda_available", lambda: True)
    r = CliRunner().invoke(cli.main, ["train", "--dry-run"])
    assert json.loads(r.output[r.output.index("{"):])["aug"] == "ada"  # the GPU preset's default


@pytest.mark.parametrize("args, words", [
    (["--aug", "fixed"], "--aug fixed needs the probability"),
    (["--aug", "ada", "--aug-p", "0.5"], "--aug-p fixes p"),
    (["--aug", "none", "--aug-p", "0.5"], "--aug-p fixes p"),
    (["--target", "0.5"], "--target tunes ADA; this run uses --aug none"),
    (["--aug", "diffaugment", "--ada-kimg", "50"], "--ada-kimg tunes ADA"),
    (["--aug-p", "1.5"], "'--aug-p'"),
    (["--target", "nan", "--aug", "ada"], "'--target'"),
    (["--ada-kimg", "0", "--aug", "ada"], "'--ada-kimg'"),
    (["--aug", "sometimes"], "'--aug'"),
    (["--aug-pipe", "b"], "aug_pipe: aug 'none' has no ADA pipeline"),
    (["--aug-pipe", "x", "--aug", "ada"], "'--aug-pipe'"),
])
def test_cli_rejects_bad_combinations_in_one_line(args, words, tmp_path):
    r = CliRunner().invoke(cli.main, ["train", "--dry-run", "--preset", "tiny", "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and words in errors[0], r.output
    assert not (tmp_path / "o").exists()


def test_cli_resume_keeps_the_checkpoints_augmentation(tmp_path, gen):
    data = tmp_path / "pngs"
    data.mkdir()
    ds = blobs(gen, 12, res=20)
    for i, img in enumerate(ds.images):
        Image.fromarray(img[0], "L").save(data / f"{i:02d}.png")
    fast = ["--preset", "tiny", "--threads", "1", "--no-progress", "--data", str(data)]
    r = CliRunner().invoke(cli.main, ["train", *fast, "--out", str(tmp_path / "runs"), "--aug", "ada",
                                      "--ada-kimg", "0.05", "--kimg", "0.024", "--snap", "0.012"])
    assert r.exit_code == 0, r.output
    # Said once, with why: the colour transforms that need RGB are skipped on grayscale.
    assert r.output.count("skipped: lumaflip, hue, saturation: needs 3 channels, the images have 1") == 1
    run = next((tmp_path / "runs").iterdir())
    for opt in (["--aug", "none"], ["--aug-p", "0.3"], ["--target", "0.5"], ["--ada-kimg", "9"], ["--aug-pipe", "b"]):
        r = CliRunner().invoke(cli.main, ["train", "--resume", str(run), "--no-progress", *opt])
        assert r.exit_code == 2 and opt[0] in r.output and "fixed by the checkpoint" in r.output, r.output
    r = CliRunner().invoke(cli.main, ["train", "--resume", str(run), "--kimg", "0.032", "--threads", "1",
                                      "--no-progress"])
    assert r.exit_code == 0, r.output
    ck = ckpt_io.load_checkpoint(run)
    assert ck["config"]["aug"] == "ada" and ck["augment"]["kind"] == "ada"


# --------------------------------------------------------------------------------------------
# the loss: every image D sees goes through the augmentation

class Spy:
    """A pipeline that flips left-right and halves (a change D's input must show), and records
    what it was given and the real logits fed to accumulate."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []

    @staticmethod
    def transform(x: torch.Tensor) -> torch.Tensor:
        return x.flip(3) * 0.5

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x)
        return self.transform(x)

    def accumulate(self, real_logits: torch.Tensor) -> None:
        self.logits.append(real_logits)


class RecordingD(torch.nn.Module):
    def __init__(self, D: torch.nn.Module) -> None:
        super().__init__()
        self.D, self.inputs = D, []

    def forward(self, img, c):
        self.inputs.append(img.detach().clone())
        return self.D(img, c)


def spied_loss(gen, **cfg_kw):
    run = state.setup_run(tiny(**cfg_kw), blobs(gen, 8), torch.device("cpu"))
    loss, spy = run.loss, Spy()
    loss.augment = spy
    loss.D = RecordingD(run.D)
    real = torch.rand(4, 1, 16, 16, generator=gen) * 2 - 1
    z = torch.randn(4, run.cfg.z_dim, generator=gen)
    return run, loss, spy, real, z


def test_loss_augments_fakes_and_reals_in_g_main_and_d_main(gen):
    run, loss, spy, real, z = spied_loss(gen)
    loss.g_main(z, None)
    assert len(spy.seen) == 1 and spy.seen[0].shape == real.shape and spy.seen[0].requires_grad  # G's output
    assert same_bits(loss.D.inputs[0], Spy.transform(spy.seen[0]).detach())

    spy.seen.clear()
    loss.D.inputs.clear()
    loss.d_main(real, None, z, None)
    fake_seen, real_seen = spy.seen
    assert same_bits(real_seen, real) and not same_bits(fake_seen, real)
    assert [same_bits(i, Spy.transform(s)) for i, s in zip(loss.D.inputs, spy.seen)] == [True, True]
    # accumulate got D's logits of the augmented reals (independently recomputed).
    (logits,) = spy.logits
    with torch.no_grad():
        expected = run.D(Spy.transform(real), None)
    assert torch.allclose(logits, expected, atol=1e-6) and not logits.requires_grad


def test_r1_is_taken_at_the_unaugmented_reals_through_the_augmentation(gen):
    run, loss, spy, real, _ = spied_loss(gen)
    out = loss.d_reg(real, None)
    assert len(spy.seen) == 1 and spy.seen[0].requires_grad
    # Independently: d D(0.5 * flip(x)) / dx = 0.5 * flip(D'(y)), so the penalty is 0.25 |D'(y)|^2.
    y = Spy.transform(real).requires_grad_(True)
    (g,) = torch.autograd.grad(run.D(y, None).sum(), y)
    expected = 0.25 * g.square().sum(dim=[1, 2, 3]).mean()
    assert torch.allclose(loss.stats["r1/penalty"], expected, rtol=1e-5)
    cfg = loss.cfg
    assert torch.allclose(out, expected * cfg.r1_gamma / 2 * cfg.d_reg_interval, rtol=1e-5)
    # R1 backpropagates into every weight of D through the augmentation (some biases move no
    # gradient with respect to the image, so they get none).
    out.backward()
    weights = [(n, p) for n, p in run.D.named_parameters() if n.endswith("weight")]
    assert len(weights) > 5 and all(p.grad is not None and bool(p.grad.abs().sum() > 0) for _, p in weights)


def test_wgan_gp_penalty_sees_augmented_images(gen):
    _, loss, spy, real, _ = spied_loss(gen, loss="wgan-gp")
    loss.d_reg(real, None)
    assert len(spy.seen) == 1 and spy.seen[0].requires_grad  # the interpolates, before augmentation
    assert same_bits(loss.D.inputs[0], Spy.transform(spy.seen[0]).detach())


# --------------------------------------------------------------------------------------------
# ADA inside a run

def test_ada_r_t_and_p_follow_the_real_logits_inside_a_run(gen):
    """p after each adjustment, recomputed from the real logits D gave (the paper's rule:
    p += sign(r_t - target) * images / (ada_kimg * 1000), every 4 steps, clamped to [0, 1])."""
    cfg = tiny(aug="ada", ada_kimg=0.1, ada_target=0.6)
    run = state.setup_run(cfg, blobs(gen, 200), torch.device("cpu"))
    ctrl = run.aug.controller
    seen = []
    real_accumulate = ctrl.accumulate
    ctrl.accumulate = lambda logits: (seen.append(logits.clone()), real_accumulate(logits))
    acc, expected_p, ps, rts = StatsAccumulator(), 0.0, [], []
    for step in range(1, 17):
        train_step(run, acc)
        if step % 4 == 0:
            signs = torch.cat(seen[-4:]).sign()
            assert len(seen) == step  # one real pass per step (d_main)
            rt = float(signs.double().mean())
            expected_p = min(max(expected_p + math.copysign(1, rt - 0.6) * (4 * cfg.batch) / 100, 0.0), 1.0) \
                if rt != 0.6 else expected_p
            assert float(ctrl.p) == pytest.approx(expected_p, abs=1e-12)
            assert float(ctrl.rt) == pytest.approx(rt, abs=1e-12)
            ps.append(float(ctrl.p))
            rts.append(rt)
    values = acc.reduce()
    assert "Aug/p" in values and "Aug/rt" in values
    assert any(p > 0 for p in ps)  # it moved (an untrained D calls most reals real)


def test_ada_stats_and_plot_land_in_the_run_directory(tmp_path, gen):
    cfg = tiny(aug="ada", ada_kimg=0.05, kimg=0.048, tick_kimg=0.004)  # a row per step
    res, lines = train(cfg, tmp_path / "r", blobs(gen, 64))
    rows = StatsWriter(tmp_path / "r").rows()
    assert all("Aug/p" in r for r in rows) and "Aug/rt" in rows[-1]
    assert all(0 <= r["Aug/p"] <= 1 for r in rows) and -1 <= rows[-1]["Aug/rt"] <= 1
    assert "Aug/p" in (tmp_path / "r" / "stats.csv").read_text().splitlines()[0]
    # losses.png gains a panel for p and r_t beside the losses (wider than a run without it).
    assert Image.open(res.files["losses"]).size[0] > Image.open(res.files["loss_G"]).size[0]
    assert sum("augmentation: ada bgc" in line for line in lines) == 1
    ck = ckpt_io.load_checkpoint(res.checkpoint)
    assert float(ck["augment"]["controller"]["p"]) == pytest.approx(rows[-1]["Aug/p"], abs=1e-6)
    assert len({r["Aug/p"] for r in rows}) > 1  # it moved


# --------------------------------------------------------------------------------------------
# p = 0 is the identity inside the loop

def test_fixed_p_zero_trains_exactly_as_no_augmentation(tmp_path, gen):
    ds = blobs(gen, 300)
    train(tiny(kimg=0.024), tmp_path / "none", ds)
    _, lines = train(tiny(kimg=0.024, aug="fixed", aug_p=0.0), tmp_path / "p0", ds)
    assert not any(line.startswith("warning:") for line in lines)
    a, b = ckpt_io.load_checkpoint(tmp_path / "none"), ckpt_io.load_checkpoint(tmp_path / "p0")
    for key in ("G", "D", "G_ema"):
        assert all(same_bits(a[key][k], b[key][k]) for k in a[key]), key


def test_a_leaky_fixed_p_is_warned_about_once(tmp_path, gen):
    _, lines = train(tiny(kimg=0.008, aug="fixed", aug_p=0.8), tmp_path / "p08", blobs(gen, 64))
    warnings = [line for line in lines if line.startswith("warning: fixed p = 0.8")]
    assert len(warnings) == 1 and "--aug ada" in warnings[0]


def test_ada_warns_once_when_its_p_reaches_the_leaky_range(tmp_path, gen):
    # Started at p = 0.79 and adjusted every step at 0 -> 1 in 0.05 kimg: an untrained D calls
    # most reals real, so p rises past 0.8 within the first ticks (a tick per 2 steps).
    cfg = tiny(aug="ada", aug_p=0.79, ada_kimg=0.05, kimg=0.048, tick_kimg=0.008)
    _, lines = train(cfg, tmp_path / "r", blobs(gen, 64))
    rows = StatsWriter(tmp_path / "r").rows()
    first = next(r for r in rows if r["Aug/p"] >= 0.8)
    warnings = [line for line in lines if "ADA's p reached" in line]
    assert warnings == [f"warning at {first['kimg']:.3f} kimg: ADA's p reached {first['Aug/p']:.2f}: from p = 0.8 "
                        f"the ADA paper saw leaks, and the leak check's runs drew turned or off-centre heads "
                        f"(README, leak check); watch the fake grids, and compare them with python -m "
                        f"benchmarks.aug_leak_check"]
    # Below the range, or without geometric transforms, it stays silent.
    _, lines = train(tiny(aug="ada", kimg=0.016), tmp_path / "low", blobs(gen, 64))
    assert not any("ADA's p reached" in line for line in lines)


def test_ada_at_p_zero_leaves_every_image_bit_for_bit(tmp_path, gen):
    """With ADA's p a device tensor held at 0 (target 1: r_t can never exceed it), the pipeline
    still draws its transforms, but every image D sees keeps its bits."""
    cfg = tiny(aug="ada", ada_target=1.0, kimg=0.032)
    run = state.setup_run(cfg, blobs(gen, 300), torch.device("cpu"))
    pipe, calls = run.aug.pipeline, []
    real_call = pipe.__call__

    class Check:
        def __call__(self, x, p, generator=None):
            out = real_call(x, p, generator)
            calls.append(same_bits(out, x) and torch.is_tensor(p))
            return out
    run.aug.pipeline = Check()
    acc = StatsAccumulator()
    for _ in range(8):
        train_step(run, acc)
    assert len(calls) >= 8 * 3 and all(calls)
    assert float(run.aug.p) == 0.0


# --------------------------------------------------------------------------------------------
# checkpoints

def test_ada_resume_is_exact(tmp_path, gen):
    """2k steps in one go == k steps, a checkpoint, another process state, k more: the same p,
    accumulators and weights. k = 5 stops between two adjustments (every 4 steps)."""
    a, mid, b = whole_and_resumed(tmp_path, blobs(gen, 40),
                                  lambda kimg: tiny(kimg=kimg, aug="ada", ada_kimg=0.1, snap_kimg=1.0), 5, 4)
    assert mid["augment"]["controller"]["steps"] == 1 and mid["augment"]["controller"]["count"] > 0
    ca, cb = a["augment"]["controller"], b["augment"]["controller"]
    assert float(ca["p"]) > 0
    for key in ("p", "rt", "sign_sum"):
        assert same_bits(ca[key], cb[key]), key
    assert (ca["count"], ca["steps"], ca["nimg"], ca["adjustments"]) == \
        (cb["count"], cb["steps"], cb["nimg"], cb["adjustments"])
    assert_same_weights(a, b)


def test_checkpoint_without_augment_entry_still_resumes(tmp_path, gen):
    """A checkpoint written before augmentation existed: no 'augment' entry, no aug fields in its
    config. It validates and resumes (as aug none); the same file claiming ADA is refused."""
    ds = blobs(gen, 12)
    res, _ = train(tiny(kimg=0.008), tmp_path / "old", ds)
    ck = torch.load(res.checkpoint, weights_only=True)
    del ck["augment"]
    for key in ("aug", "aug_p", "ada_target", "ada_kimg"):
        del ck["config"][key]
    torch.save(ck, res.checkpoint)
    old = ckpt_io.load_checkpoint(res.checkpoint)
    cfg = resolve(TrainConfig.from_dict(dict(old["config"], kimg=0.016)))
    assert cfg.aug == "none"
    done, _ = train(cfg, tmp_path / "old", ds, resume=old)
    assert done.cur_nimg == 16 and ckpt_io.load_checkpoint(done.checkpoint)["augment"] == {"kind": "none"}

    ck["config"].update(aug="ada")
    torch.save(ck, res.checkpoint)
    ada = ckpt_io.load_checkpoint(res.checkpoint)
    with pytest.raises(ckpt_io.ResumeError, match="no augmentation state"):
        train(resolve(TrainConfig.from_dict(dict(ada["config"], kimg=0.016))), tmp_path / "old", ds, resume=ada)


@pytest.fixture(scope="module")
def ada_checkpoint(tmp_path_factory) -> dict:
    """The raw checkpoint of a two-step ADA run (trained once for the tests that damage it)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res, _ = train(tiny(kimg=0.008, aug="ada"), tmp_path_factory.mktemp("ada") / "r",
                       blobs(torch.Generator().manual_seed(16), 8))
    finally:
        torch.set_num_threads(old)
    return torch.load(res.checkpoint, weights_only=True)


@pytest.mark.parametrize("damage, words", [
    (lambda ck: ck["augment"].update(kind="diffaugment"), "state of kind 'diffaugment'"),
    (lambda ck: ck["augment"].pop("controller"), "missing ADA's controller"),
    (lambda ck: ck["augment"]["controller"].update(p=torch.tensor(1.5, dtype=torch.float64)), "outside [0, 1]"),
    (lambda ck: ck["augment"]["controller"].update(rt=[0.5]), "'rt' is not a one-element"),
    (lambda ck: ck["augment"]["controller"].update(count=-1), "'count' is -1"),
])
def test_damaged_augment_state_is_named(tmp_path, ada_checkpoint, damage, words):
    ck = copy.deepcopy(ada_checkpoint)
    damage(ck)
    path = tmp_path / "ckpt-000000.008.pt"
    torch.save(ck, path)
    with pytest.raises(ckpt_io.CheckpointError) as err:
        ckpt_io.load_checkpoint(path)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["ada", "fixed", "diffaugment"])
def test_augmented_steps_never_wait_for_the_gpu(gen, kind):
    """Augmentation in every phase, ADA's accumulate/step and the Aug/* stats stay on the device:
    with sync debug mode 'error', anything that makes the host wait for the GPU raises."""
    extra = dict(ada=dict(ada_kimg=0.05), fixed=dict(aug_p=0.8), diffaugment={})[kind]
    cfg = tiny(aug=kind, device="cuda", **extra)  # R1 every 3, path length every 2, ADA every 4
    values = assert_steps_never_wait(state.setup_run(cfg, blobs(gen, 12), torch.device("cuda")), 8)
    assert ("Aug/p" in values) == (kind != "diffaugment")
