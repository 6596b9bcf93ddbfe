"""`python -m stylegan2 convert`, and generate / info reading NVlabs and rosinality files directly,
through click's CliRunner. The source files come from test_convert.py's fixture builders (NVlabs'
persistent-object pickle, rosinality's torch.save dict), so both suites test the same layouts."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner, Result
from PIL import Image

from stylegan2 import cli
from stylegan2.convert import adapt_channels, load_foreign_checkpoint
from stylegan2.training.checkpoint import load_checkpoint
from test_cli import FAST, write_images
from test_convert import RES, W, nvlabs_pickle, nvlabs_tensors, rosinality_tensors


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


def rosinality_file(path: Path, only_g_ema: bool = False) -> Path:
    g_ema, d = rosinality_tensors()
    torch.save({"g_ema": g_ema} if only_g_ema else {"g": g_ema, "g_ema": g_ema, "d": d, "latent_avg": torch.zeros(W)},
               path)
    return path


def one_line_error(r: Result, *fragments: str) -> None:
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    for f in fragments:
        assert f in lines[0], r.output


def test_convert_nvlabs_pickle_prints_the_report_and_writes_our_checkpoint(tmp_path):
    G, D = nvlabs_tensors(c_dim=3)
    src = nvlabs_pickle(tmp_path / "net.pkl", G, D, c_dim=3)
    r = invoke("convert", src, tmp_path / "out" / "ours.pt")
    assert r.exit_code == 0, r.output
    assert f"nvlabs-pickle checkpoint {src}" in r.output
    assert r.output.strip().endswith(f"wrote this project's checkpoint to {tmp_path / 'out' / 'ours.pt'}")
    ck = load_checkpoint(tmp_path / "out" / "ours.pt")
    assert ck["model_config"]["c_dim"] == 3 and ck["config"]["extra"]["source_format"] == "nvlabs-pickle"


def test_convert_to_grayscale_says_how(tmp_path):
    src = rosinality_file(tmp_path / "r.pt")
    r = invoke("convert", src, tmp_path / "gray.pt", "--channels", "1")
    assert r.exit_code == 0, r.output
    assert "luminance" in r.output
    assert load_checkpoint(tmp_path / "gray.pt")["model_config"]["channels"] == 1


def test_partial_sources_are_refused_in_one_line_unless_allowed(tmp_path):
    src = rosinality_file(tmp_path / "g_ema_only.pt", only_g_ema=True)
    dst = tmp_path / "sub" / "ours.pt"
    one_line_error(invoke("convert", src, dst), "no discriminator", "--allow-partial")
    assert not dst.exists() and not dst.parent.exists()  # nothing written, not even the folder
    r = invoke("convert", src, dst, "--allow-partial")
    assert r.exit_code == 0, r.output
    assert "not filled from the source: D" in r.output and dst.is_file()


def test_unreadable_and_code_running_sources_are_refused(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    one_line_error(invoke("convert", junk, tmp_path / "a.pt"), "neither a pickle nor a torch.save archive")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"G_ema": Payload()}))
    one_line_error(invoke("convert", evil, tmp_path / "b.pt"), "nothing in the file was run")
    assert not marker.exists() and not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()


def test_export_to_nvlabs_names(tmp_path):
    G, D = nvlabs_tensors()
    src = nvlabs_pickle(tmp_path / "net.pkl", G, D)
    r = invoke("convert", src, tmp_path / "nv.pt", "--to", "nvlabs-state-dict")
    assert r.exit_code == 0, r.output
    out = torch.load(tmp_path / "nv.pt", weights_only=True)
    assert set(out["G_ema"]) == set(G) and set(out["D"]) == set(D)
    r = invoke("convert", src, tmp_path / "nv2.pt", "--to", "nvlabs-state-dict", "--channels", "1")
    assert r.exit_code == 2 and "--channels and --resolution apply to --to ours" in r.output
    # Ours back out, from a run directory (its newest checkpoint).
    run = tmp_path / "run"
    assert invoke("convert", src, run / "checkpoints" / "ckpt-000000000.pt").exit_code == 0
    r = invoke("convert", run, tmp_path / "back.pt", "--to", "nvlabs-state-dict")
    assert r.exit_code == 0, r.output
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    for k, v in out["G_ema"].items():
        torch.testing.assert_close(back["G_ema"][k], v)
    r = invoke("convert", run, tmp_path / "again.pt")
    assert r.exit_code == 2 and "already in its format" in r.output


def _pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_generate_from_a_rosinality_file_equals_generating_from_its_conversion(tmp_path):
    src = rosinality_file(tmp_path / "g_ema_only.pt", only_g_ema=True)
    assert invoke("convert", src, tmp_path / "ours.pt", "--allow-partial").exit_code == 0
    common = ["--seeds", "0-2", "--device", "cpu", "--no-progress", "--trunc", "0.7"]
    direct = invoke("generate", "--ckpt", src, "--out", tmp_path / "direct", *common)
    assert direct.exit_code == 0, direct.output
    assert "converted in memory from a rosinality checkpoint" in direct.output
    via = invoke("generate", "--ckpt", tmp_path / "ours.pt", "--out", tmp_path / "via", *common)
    assert via.exit_code == 0, via.output
    a, b = _pixels(tmp_path / "direct"), _pixels(tmp_path / "via")
    assert set(a) == {"seed0000.png", "seed0001.png", "seed0002.png", "grid.png"} == set(b)
    assert a["seed0000.png"].shape[:2] == (RES, RES)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_generate_refuses_a_source_whose_generator_does_not_map(tmp_path):
    G, D = nvlabs_tensors()
    G_extra = dict(G, **{"synthesis.b8.extra": torch.zeros(3)})
    src = nvlabs_pickle(tmp_path / "partial.pkl", G_extra, D)
    r = invoke("generate", "--ckpt", src, "--out", tmp_path / "out", "--device", "cpu", "--no-progress")
    one_line_error(r, "synthesis.b8.extra", "could not be mapped")
    assert not (tmp_path / "out").exists()


def test_info_reads_an_nvlabs_pickle_and_keeps_json_clean(tmp_path):
    G, D = nvlabs_tensors(c_dim=3)
    src = nvlabs_pickle(tmp_path / "net.pkl", G, D, c_dim=3)
    r = invoke("info", "--ckpt", src)
    assert r.exit_code == 0, r.output
    assert "converted in memory from a nvlabs-pickle checkpoint" in r.output
    assert f"model        {RES}x{RES}x3" in r.output
    r = invoke("info", "--ckpt", src, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # the conversion notes went to stderr
    assert doc["model"]["c_dim"] == 3 and doc["path"] == str(src) and "converted in memory" in r.stderr


# ============================================================================================
# train --init-from: a fresh run from converted weights.

def test_train_init_from_an_rgb_rosinality_file_on_grayscale_slices(tmp_path, gen):
    src = rosinality_file(tmp_path / "r.pt")
    data = write_images(tmp_path / "slices", gen, 4)
    r = invoke("train", "--init-from", src, "--channels", "1", "--data", data, "--out", tmp_path / "runs",
               "--kimg", "0.004", *FAST)
    assert r.exit_code == 0, r.output
    assert "luminance" in r.output and f"networks initialised from {src}" in r.output
    run = tmp_path / "runs" / "00000-slices-tiny"
    ck = load_checkpoint(run)
    mc = ck["model_config"]
    assert (mc["resolution"], mc["channels"], mc["z_dim"], mc["w_dim"]) == (RES, 1, W, W)  # the source's sizes
    assert ck["config"]["extra"]["init_from"] == str(src) and ck["progress"]["cur_nimg"] == 4
    # Noise inputs are buffers training leaves alone: the run's are the source's, not fresh ones.
    expected = adapt_channels(load_foreign_checkpoint(src), channels=1).G_ema
    noise = [k for k in expected if k.endswith("noise_const")]
    assert noise
    for k in noise:
        torch.testing.assert_close(ck["G_ema"][k], expected[k])


def test_train_init_from_refuses_networks_the_run_cannot_build(tmp_path, gen):
    G, D = nvlabs_tensors(c_dim=3)
    src = nvlabs_pickle(tmp_path / "cond.pkl", G, D, c_dim=3)
    data = write_images(tmp_path / "slices", gen, 4)
    r = invoke("train", "--init-from", src, "--data", data, "--out", tmp_path / "runs", "--kimg", "0.004", *FAST)
    assert r.exit_code == 2 and "c_dim is 3 in the source, 0 in this run (--cond" in r.output, r.output
    assert not (tmp_path / "runs").exists()
    r = invoke("train", "--init-from", src, "--resume", src, "--out", tmp_path / "runs", *FAST)
    assert r.exit_code == 2 and "give one of them" in r.output


def test_train_init_from_refuses_a_width_option_its_weights_contradict(tmp_path, gen):
    src = rosinality_file(tmp_path / "r.pt")
    data = write_images(tmp_path / "slices", gen, 4)
    for opt in ("--channel-base", "--channel-max"):
        r = invoke("train", "--init-from", src, "--channels", "1", opt, "7", "--data", data,
                   "--out", tmp_path / "runs", "--kimg", "0.004", *FAST)
        assert r.exit_code == 2 and f"{opt} 7: the weights of --init-from" in r.output, r.output
    assert not (tmp_path / "runs").exists()


def test_a_conversion_our_loader_would_refuse_writes_nothing(tmp_path, monkeypatch):
    from stylegan2.training import checkpoint as ckpt_io

    def refuse(ckpt, path="checkpoint"):
        raise ckpt_io.CheckpointError(f"{path}: refused by the test")
    monkeypatch.setattr(ckpt_io, "validate_checkpoint", refuse)
    dst = tmp_path / "ours.pt"
    one_line_error(invoke("convert", rosinality_file(tmp_path / "r.pt"), dst), "refused by the test")
    assert not dst.exists()
