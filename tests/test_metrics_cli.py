"""`python -m stylegan2 metrics | audit` through click's CliRunner, on a tiny checkpoint and an
image folder the tests write (the library's numbers are tested in test_metrics.py)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from stylegan2 import cli
from stylegan2.metrics import INCEPTION_FILE, INCEPTION_WEIGHTS_ENV

from helpers import ellipse_slices, untrained_run, write_pngs


def write_slices(folder: Path, n: int, seed: int = 0) -> Path:
    """n 16x16 grayscale PNGs: bright ellipses of random size and position on noise."""
    return write_pngs(folder, ellipse_slices(np.random.default_rng(seed), n), "slice_")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with one untrained checkpoint of the tiny preset, whose config names the
    slices folder as its data (so the commands find it without --data)."""
    root = tmp_path_factory.mktemp("metrics_cli")
    return untrained_run(root, write_slices(root / "slices", 24), "00000-slices-tiny")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Caches in tmp_path, and no Inception weights anywhere (so the default is the discriminator)."""
    monkeypatch.setenv("STYLEGAN2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)


def invoke(*args: object) -> Result:
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def test_metrics_writes_finite_numbers_named_with_network_counts_and_reference(run: Path, tmp_path: Path):
    r = invoke("metrics", "--ckpt", run, "--n", 10, "--batch", 4, "--no-progress")
    assert r.exit_code == 0, r.output
    # No Inception weights: the discriminator, and a note that says so.
    assert "note: no FID Inception weights" in r.output or "pytorch-fid is not installed" in r.output
    ckpt_name = next((run / "checkpoints").iterdir()).name
    for metric in ("fid", "kid", "precision", "recall"):
        assert f"{metric} " in r.output
    assert f"discriminator:{ckpt_name} features, 10 fakes vs 24 reals of" in r.output
    out = run / f"metrics-{Path(ckpt_name).stem}.json"
    assert f"wrote {out}" in r.output.splitlines()[-1]
    doc = json.loads(out.read_text())
    assert [x["metric"] for x in doc["results"]] == ["fid", "kid", "precision", "recall"]
    assert all(math.isfinite(x["value"]) and x["num_fake"] == 10 and x["num_real"] == 24 for x in doc["results"])
    assert doc["feature_network"] == f"discriminator:{ckpt_name}" and doc["num_fake"] == 10

    # --data and --out elsewhere, one metric; the real features now come from the cache.
    other = write_slices(tmp_path / "other", 12, seed=5)
    r = invoke("metrics", "--ckpt", run, "--metrics", "fid", "--n", 6, "--data", other,
               "--feature-net", "discriminator", "--out", tmp_path / "res", "--no-progress")
    assert r.exit_code == 0, r.output
    doc = json.loads(next((tmp_path / "res").glob("metrics-*.json")).read_text())
    assert len(doc["results"]) == 1 and doc["results"][0]["num_real"] == 12 and "note:" not in r.output


def _noisy(run) -> None:
    """Noise strengths of a trained G (an untrained one's are 0: its noise would not show)."""
    with torch.no_grad():
        for G in (run.G, run.G_ema):
            for name, param in G.named_parameters():
                if name.endswith("noise_strength"):
                    param.fill_(0.5)


def test_metrics_repeat_exactly_and_take_the_kid_subsets_asked_for(tmp_path: Path):
    noisy = untrained_run(tmp_path, write_slices(tmp_path / "slices", 24), "00000-slices-tiny", prepare=_noisy)
    docs = []
    for out in ("a", "b"):
        r = invoke("metrics", "--ckpt", noisy, "--metrics", "fid,kid", "--n", 9, "--batch", 4, "--kid-subsets", 7,
                   "--kid-subset-size", 5, "--seed", 3, "--out", tmp_path / out, "--no-progress")
        assert r.exit_code == 0, r.output
        docs.append(json.loads(next((tmp_path / out).glob("metrics-*.json")).read_text()))
    assert docs[0]["results"] == docs[1]["results"]  # the same fakes, noise included, and subsets
    kid = docs[0]["results"][1]
    assert kid["metric"] == "kid" and (kid["details"]["num_subsets"], kid["details"]["subset_size"]) == (7, 5)
    r = invoke("metrics", "--ckpt", noisy, "--metrics", "kid", "--n", 9, "--kid-subset-size", 1, "--no-progress")
    assert r.exit_code == 2 and "--kid-subset-size" in r.output


def test_metrics_bad_inputs_are_one_line_errors_that_write_nothing(run: Path, tmp_path: Path):
    before = files_under(run)
    out = tmp_path / "res"
    bad_ckpt = tmp_path / "broken.pt"
    bad_ckpt.write_bytes(b"not a checkpoint")
    cases = [
        (["--metrics", "fid,is"], "unknown metric(s) is"),
        (["--feature-net", "inception"], INCEPTION_FILE),
        (["--inception-weights", tmp_path / "nowhere.pth"], "nowhere.pth"),
        (["--feature-net", "vgg"], "unknown feature network"),
        (["--data", tmp_path / "missing"], "does not exist"),
        (["--n", 3], "need at least 4"),  # precision/recall's k = 3
        (["--data", write_slices(tmp_path / "three", 3)], "need at least 4"),
    ]
    for extra, expected in cases:
        r = invoke("metrics", "--ckpt", run, "--out", out, "--n", 4, "--no-progress", *extra)
        assert r.exit_code != 0 and expected in r.output, (extra, r.output)
        assert len([line for line in r.output.splitlines() if line.startswith("Error")]) == 1
        assert "Traceback" not in r.output
    r = invoke("metrics", "--ckpt", bad_ckpt, "--out", out, "--no-progress")
    assert r.exit_code == 1 and "broken.pt" in r.output and "Traceback" not in r.output
    assert not out.exists() and files_under(run) == before
    assert not (tmp_path / "cache" / "metrics").exists()


def test_metrics_default_network_is_inception_when_a_weights_file_is_there(run: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("pytorch_fid")
    # Not the published file: its checksum refusal shows Inception was chosen, before any work.
    weights = tmp_path / INCEPTION_FILE
    weights.write_bytes(b"not the weights")
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(weights))
    r = invoke("metrics", "--ckpt", run, "--out", tmp_path / "res", "--no-progress")
    assert r.exit_code == 1 and "SHA-256" in r.output and "note:" not in r.output
    assert not (tmp_path / "res").exists()


def test_audit_reports_thresholds_and_writes_its_files(run: Path, tmp_path: Path):
    r = invoke("audit", "--ckpt", run, "--n", 8, "--batch", 4, "--out", tmp_path / "audit", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "8 fakes vs 24 training images" in r.output and "percentile 1 of" in r.output
    assert "pixel" in r.output and "feature:discriminator:" in r.output and "flagged" in r.output
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert summary["num_fake"] == 8 and summary["num_train"] == 24
    pixel, feature = summary["measures"]
    assert pixel == "pixel" and feature.startswith("feature:discriminator:ckpt-")
    for m in summary["measures"].values():
        assert math.isfinite(m["threshold"]) and 0 <= m["fraction_flagged"] <= 1
    rows = list(csv.DictReader(open(tmp_path / "audit" / "pairs.csv")))
    assert len(rows) == 8
    Image.open(tmp_path / "audit" / "closest_pairs.png").verify()
    assert str(tmp_path / "audit" / "pairs.csv") in r.output.splitlines()[-1]

    # Defaults: into <run>/audit-<checkpoint>/, removed again after the check.
    r = invoke("audit", "--ckpt", run, "--n", 4, "--no-progress")
    assert r.exit_code == 0, r.output
    folder = next(run.glob("audit-ckpt-*"))
    assert (folder / "summary.json").is_file()
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()


def test_audit_bad_inputs_are_one_line_errors_that_write_nothing(run: Path, tmp_path: Path):
    before = files_under(run)
    for extra, expected in [(["--feature-net", "torchscript:" + str(tmp_path / "no.pt")], "no file"),
                            (["--data", tmp_path / "missing"], "does not exist"),
                            (["--ckpt", tmp_path], "no checkpoints"),
                            (["--device", "gpu0"], "--device"),
                            (["--data", write_slices(tmp_path / "one", 1)], "at least 2 training images")]:
        r = invoke("audit", "--ckpt", run, "--n", 4, "--no-progress", *extra)
        assert r.exit_code != 0 and expected in r.output and "Traceback" not in r.output, r.output
    assert files_under(run) == before and not list(run.glob("audit-*"))
