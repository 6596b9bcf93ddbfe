"""`python -m stylegan2 train | generate | info` end to end through click's CliRunner, on the tiny
preset and small image folders made in tmp_path."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from stylegan2 import cli
from stylegan2.training import checkpoint as ckpt_io
from stylegan2.training import state
from stylegan2.training.run_dir import dataset_name, new_run_dir

FAST = ["--preset", "tiny", "--threads", "1", "--no-progress"]


def write_images(folder: Path, gen: torch.Generator, n: int, size: tuple[int, int] = (20, 18)) -> Path:
    """n grayscale PNGs (non-square, so the loader pads) of bright ellipses on a dark ground."""
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        cx, cy, rx, ry, v = torch.rand(5, generator=gen).tolist()
        inside = ((xx - w * (0.4 + 0.2 * cx)) / (w * (0.2 + 0.2 * rx))) ** 2 + \
                 ((yy - h * (0.4 + 0.2 * cy)) / (h * (0.2 + 0.2 * ry))) ** 2 < 1
        img = (inside * (110 + 140 * v)).astype(np.uint8)
        Image.fromarray(img, "L").save(folder / f"slice_{i:03d}.png")
    return folder


def invoke(*args: str):
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


def test_dry_run_prints_the_resolved_config_and_says_which_preset(monkeypatch, tmp_path):
    for cuda, preset, res in ((False, "cpu-small", 32), (True, "gpu256", 256)):
        monkeypatch.setattr(cli, "_cuda_available", lambda: cuda)
        r = invoke("train", "--dry-run", "--out", tmp_path / "runs")
        assert r.exit_code == 0, r.output
        assert f"preset auto -> {preset}" in r.output
        cfg = json.loads(r.output[r.output.index("{"):])
        assert cfg["preset"] == preset and cfg["resolution"] == res and cfg["data"] == "mni152"
        assert cfg["gamma"] == pytest.approx(0.0002 * res**2 / cfg["batch"])
    r = invoke("train", "--dry-run", "--preset", "tiny", "--batch", "8", "--gamma", "2", "--resolution", "32",
               "--kimg", "3", "--precision", "bf16")
    cfg = json.loads(r.output[r.output.index("{"):])
    assert (cfg["batch"], cfg["gamma"], cfg["resolution"], cfg["kimg"], cfg["precision"]) == (8, 2.0, 32, 3.0, "bf16")
    assert not (tmp_path / "runs").exists()  # a dry run creates nothing


def test_help_defaults_come_from_the_presets():
    from stylegan2.training.config import PRESETS
    text = invoke("train", "--help").output
    # One entry per option, its wrapped lines joined.
    entries = [" ".join(e.split()) for e in re.split(r"\n  (?=-)", text)]
    for option, field in (("--aug", "aug"), ("--channel-base", "channel_base"), ("--channel-max", "channel_max")):
        line = next(e for e in entries if e.startswith(option + " "))
        for name, values in PRESETS.items():
            value = values.get(field, getattr(cli.TrainConfig, field))
            assert re.search(rf"\b{re.escape(str(value))} on [^;)]*\b{re.escape(name)}\b", line), (option, name, line)


def test_channel_width_options_build_the_networks_they_name(tmp_path, gen):
    r = invoke("train", "--dry-run", "--preset", "tiny", "--channel-base", "96", "--channel-max", "24")
    cfg = json.loads(r.output[r.output.index("{"):])
    assert (cfg["channel_base"], cfg["channel_max"]) == (96, 24)
    data = write_images(tmp_path / "slices", gen, 4)
    run = tmp_path / "runs" / "00000-slices-tiny"
    r = invoke("train", "--preset", "tiny", "--data", data, "--out", tmp_path / "runs", "--channel-base", "96",
               "--channel-max", "24", "--kimg", "0.004", "--threads", "1", "--no-progress")
    assert r.exit_code == 0, r.output
    ck = ckpt_io.load_checkpoint(run)
    assert (ck["model_config"]["channel_base"], ck["model_config"]["channel_max"]) == (96, 24)
    G = state.build_networks(ck["model_config"], torch.device("cpu"))[0]
    # A block at resolution r has min(base / r, max) channels: 96/4 -> 24 (capped), 96/16 -> 6.
    widths = {p.shape[0] for n, p in G.synthesis.named_parameters() if n.endswith("conv1.weight")}
    assert widths == {24, 12, 6}, widths
    for opt in ("--channel-base", "--channel-max"):
        r = CliRunner().invoke(cli.main, ["train", "--resume", str(run), opt, "64", "--no-progress"])
        assert r.exit_code == 2 and opt in r.output and "fixed by the checkpoint" in r.output, r.output


def test_out_of_range_options_are_rejected():
    for args in (["--batch", "0"], ["--resolution", "2"], ["--kimg", "0"], ["--preset", "huge"],
                 ["--resolution", "48"], ["--channel-base", "0"], ["--channel-max", "0"],
                 ["--preset", "tiny", "--channel-base", "8"]):  # 8 // 16 = no channels at 16x16
        r = CliRunner().invoke(cli.main, ["train", "--dry-run", *args])
        assert r.exit_code == 2, (args, r.output)
        assert "Error" in r.output


def test_bad_data_path_fails_before_any_model_is_built(tmp_path, monkeypatch):
    def no_networks(*a, **kw):
        raise AssertionError("a model was built")
    monkeypatch.setattr(state, "build_networks", no_networks)
    r = CliRunner().invoke(cli.main, ["train", "--data", tmp_path / "missing", "--out", tmp_path / "runs", *FAST])
    assert r.exit_code != 0 and "missing" in r.output and "does not exist" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(cli.main, ["train", "--data", str(empty), "--out", str(tmp_path / "runs"), *FAST])
    assert r.exit_code == 1 and "cannot use --data" in r.output and "empty" in r.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_train_generate_info_resume_end_to_end(tmp_path, gen):
    data = write_images(tmp_path / "slices", gen, 10)
    runs = tmp_path / "runs"
    r = invoke("train", "--data", data, "--out", runs, "--kimg", "0.024", "--snap", "0.012", "--tick", "0.008",
               "--mirror", *FAST)
    assert r.exit_code == 0, r.output
    run = runs / "00000-slices-tiny"
    assert f"run directory: {run}" in r.output and "finished at 0.024 kimg" in r.output
    for name in ("config.json", "stats.jsonl", "stats.csv", "loss_G.png", "loss_D.png", "losses.png",
                 "reals.png", "fakes_init.png", "fakes_000000012.png", "fakes_000000024.png"):
        assert (run / name).is_file(), name
        assert str(run / name) in r.output or name in ("fakes_init.png", "fakes_000000012.png")
    assert [n for n, _ in ckpt_io.list_checkpoints(run)] == [12, 24]
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["mirror"] is True and config["dataset"]["num_images"] == 10
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [row["nimg"] for row in rows] == [8, 12, 16, 24]
    assert all(np.isfinite(row["Loss/G/main"]) and np.isfinite(row["Loss/D/main"]) for row in rows)
    assert (run / "stats.csv").read_text().splitlines()[0].startswith("tick,kimg,nimg,step")
    # 16 fakes (4 x 4) but only the dataset's 10 reals (2 x 5), both enlarged to 64 px tiles.
    assert Image.open(run / "fakes_000000024.png").size == (4 * 66 - 2, 4 * 66 - 2)
    assert Image.open(run / "reals.png").size == (5 * 66 - 2, 2 * 66 - 2)

    # A second run never overwrites the first.
    r = invoke("train", "--data", data, "--out", runs, "--kimg", "0.004", *FAST)
    assert r.exit_code == 0 and (runs / "00001-slices-tiny").is_dir()

    out = tmp_path / "gen"
    r = invoke("generate", "--ckpt", run, "--out", out, "--seeds", "0-2,7", "--trunc", "0.7", "--no-progress")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "seed0000.png", "seed0001.png", "seed0002.png",
                                                     "seed0007.png"]
    assert str(out) in r.output and Image.open(out / "seed0007.png").size == (16, 16)
    # The speed switches change how, not what: NHWC activations give the same pixels (+-1 grey
    # level of rounding); a CUDA graph is refused on a CPU before any file is written.
    nhwc = tmp_path / "gen-nhwc"
    r = invoke("generate", "--ckpt", run, "--out", nhwc, "--seeds", "0-2,7", "--trunc", "0.7", "--no-progress",
               "--channels-last", "--batch", "3")
    assert r.exit_code == 0, r.output
    for name in ("seed0000.png", "seed0007.png", "grid.png"):
        a, b = (np.asarray(Image.open(d / name)).astype(int) for d in (out, nhwc))
        assert np.abs(a - b).max() <= 1, name
    # Many images: every PNG written (in background threads), the grid capped at the first 64.
    many = tmp_path / "gen-many"
    r = invoke("generate", "--ckpt", run, "--out", many, "--n", "70", "--batch", "32", "--no-progress")
    assert r.exit_code == 0, r.output
    assert len(list(many.glob("seed*.png"))) == 70 and "grid.png of the first 64" in r.output
    assert Image.open(many / "grid.png").size == (8 * 66 - 2, 8 * 66 - 2)
    assert np.asarray(Image.open(many / "seed0069.png")).shape == (16, 16)
    r = CliRunner().invoke(cli.main, ["generate", "--ckpt", str(run), "--out", str(tmp_path / "g-graph"),
                                      "--speedup", "cudagraph", "--device", "cpu"])
    assert r.exit_code == 2 and "cudagraph needs a CUDA device" in r.output
    assert not (tmp_path / "g-graph").exists()
    r = CliRunner().invoke(cli.main, ["generate", "--ckpt", str(run), "--out", str(tmp_path / "g-graph"),
                                      "--speedup", "compile", "--noise-mode", "random"])
    assert r.exit_code == 2 and "compile cannot draw each image's noise from its own seed" in r.output
    again = tmp_path / "gen2"
    invoke("generate", "--ckpt", run / "checkpoints" / "ckpt-000000024.pt", "--out", again, "--n", "3",
           "--noise-mode", "random", "--no-progress")
    a, b = (np.asarray(Image.open(d / "seed0001.png")) for d in (out, again))
    assert a.shape == b.shape and not np.array_equal(a, b)  # other truncation and noise mode

    r = invoke("info", "--ckpt", run)
    assert r.exit_code == 0, r.output
    ck = ckpt_io.load_checkpoint(run)
    assert "0.024 kimg" in r.output and ck["dataset"]["fingerprint"] in r.output
    g_params = sum(p.numel() for p in state.build_networks(ck["model_config"], torch.device("cpu"))[0].parameters())
    assert f"G {g_params:,}" in r.output
    doc = json.loads(invoke("info", "--ckpt", run, "--json").output)
    assert doc["kimg"] == 0.024 and doc["parameters"]["G"] == g_params and doc["train"]["preset"] == "tiny"

    # Resume the run for a few more images: same directory, continues from 0.024 kimg.
    r = invoke("train", "--resume", run, "--kimg", "0.032", "--threads", "1", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "resuming" in r.output and "finished at 0.032 kimg" in r.output
    assert [n for n, _ in ckpt_io.list_checkpoints(run)] == [12, 24, 32]
    r = CliRunner().invoke(cli.main, ["train", "--resume", str(run), "--batch", "8", "--no-progress"])
    assert r.exit_code == 2 and "--batch" in r.output and "fixed by the checkpoint" in r.output
    other = write_images(tmp_path / "other", gen, 10)
    r = CliRunner().invoke(cli.main, ["train", "--resume", str(run), "--data", str(other), "--kimg", "0.04",
                                      "--no-progress"])
    assert r.exit_code == 1 and "dataset differs" in r.output


def test_conditional_training_and_class_choice(tmp_path, gen):
    root = tmp_path / "AD_NC"
    for split in ("train", "test"):
        for cls in ("AD", "NC"):
            write_images(root / split / cls, gen, 2, size=(16, 15))
    runs = tmp_path / "runs"
    r = invoke("train", "--data", root, "--out", runs, "--cond", "--kimg", "0.008", "--batch", "4", *FAST)
    assert r.exit_code == 0, r.output
    run = next(runs.iterdir())
    assert ckpt_io.load_checkpoint(run)["model_config"]["c_dim"] == 2
    for cls in ("NC", "0"):
        out = tmp_path / f"gen-{cls}"
        r = invoke("generate", "--ckpt", run, "--out", out, "--n", "2", "--class", cls, "--no-progress")
        assert r.exit_code == 0, r.output
        assert (out / "seed0001.png").is_file()
    for bad, why in ((None, "conditional"), ("XY", "not a class"), ("5", "not a class")):
        args = ["generate", "--ckpt", str(run), "--out", str(tmp_path / "g"), "--no-progress"]
        r = CliRunner().invoke(cli.main, args + ([] if bad is None else ["--class", bad]))
        assert r.exit_code == 2 and why in r.output, r.output


def test_cond_without_labels_and_bad_seeds_are_clear_errors(tmp_path, gen):
    data = write_images(tmp_path / "plain", gen, 4)
    r = CliRunner().invoke(cli.main, ["train", "--data", str(data), "--out", str(tmp_path / "runs"), "--cond",
                                      *FAST])
    assert r.exit_code == 2 and "no labels" in r.output and not (tmp_path / "runs").exists()
    r = CliRunner().invoke(cli.main, ["generate", "--ckpt", str(tmp_path), "--out", str(tmp_path / "g"),
                                      "--seeds", "9-3"])
    assert r.exit_code == 2 and "backwards" in r.output
    r = CliRunner().invoke(cli.main, ["info", "--ckpt", str(tmp_path)])
    assert r.exit_code == 1 and "no checkpoints" in r.output


def test_run_directories_are_numbered(tmp_path):
    (tmp_path / "00007-old").mkdir()
    (tmp_path / "notes").mkdir()
    assert new_run_dir(tmp_path, "mni152-tiny").name == "00008-mni152-tiny"
    assert new_run_dir(tmp_path, "mni152-tiny").name == "00009-mni152-tiny"
    assert re.fullmatch(r"[\w.-]+", dataset_name("/data/my scans/brain.nii.gz")) and \
        dataset_name("/data/my scans/brain.nii.gz") == "brain"
    assert dataset_name("MNI152") == "mni152"


def test_top_level_help_shows_each_command_with_a_whole_summary():
    """click cuts a command's summary with '...' when it does not fit; every one must fit."""
    from click.testing import CliRunner

    from stylegan2.cli import main

    out = CliRunner().invoke(main, ["--help"]).output
    listed = out.split("Commands:")[1]  # (the usage line above ends in "[ARGS]...")
    assert "..." not in listed, listed
    for name, command in main.commands.items():
        line = next(l for l in listed.splitlines() if l.split()[:1] == [name])
        assert command.short_help and command.short_help in line, (name, line)
