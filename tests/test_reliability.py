"""Issue 12: nothing lost, nothing unclear. Malformed checkpoints, full disks, signals, exit codes,
unwritable output folders and non-finite option values, each a one-line error (or the right exit
status) on the CPU with the tiny preset."""
from __future__ import annotations

import errno
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from stylegan2 import cli, fileio
from stylegan2.training import checkpoint as ckpt_io
from stylegan2.training import loop

from helpers import sigterm_after_step

FAST = ["--preset", "tiny", "--threads", "1", "--no-progress"]
REPO = Path(__file__).resolve().parent.parent


def write_images(folder: Path, n: int = 8, seed: int = 0) -> Path:
    """n grayscale 16x16 PNGs of noise (what they show does not matter here)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8), "L").save(folder / f"{i:02d}.png")
    return folder


def invoke(*args: object):
    return CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(output: str) -> str:
    """The single 'Error: ...' line a failing command printed (and it printed nothing else)."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    assert "Traceback" not in output and "weights_only" not in output, output
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data folder, run directory) of a tiny run with checkpoints at 8 and 16 images."""
    root = tmp_path_factory.mktemp("trained")
    data = write_images(root / "slices")
    r = invoke("train", "--data", data, "--out", root / "runs", "--kimg", "0.016", "--snap", "0.008", *FAST)
    assert r.exit_code == 0, r.output
    run = root / "runs" / "00000-slices-tiny"
    assert [n for n, _ in ckpt_io.list_checkpoints(run)] == [8, 16]
    return data, run


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


# --------------------------------------------------------------------------------------------
# Malformed checkpoints: each a one-line error through info, generate and --resume; nothing runs.

class _Payload:
    """Unpickling this would run `touch MARKER`: what a hostile checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _edited(good: dict, edit) -> dict:
    ck = {k: v for k, v in good.items() if k != "path"}
    edit(ck)
    return ck


def _bad_shape(ck: dict) -> None:
    ck["G"] = dict(ck["G"])
    ck["G"]["synthesis.blocks.b4.const"] = torch.zeros(7, 4, 4)


def _bad_resolution(ck: dict) -> None:
    ck["config"] = dict(ck["config"], resolution=17)


def _flip_a_weight_bit(good: dict, p: Path) -> None:
    """A copy of the checkpoint with one bit flipped inside its largest tensor record: torch.load
    alone reads it without complaint, as a wrong weight."""
    data = bytearray(Path(good["path"]).read_bytes())
    with zipfile.ZipFile(Path(good["path"])) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x10
    p.write_bytes(bytes(data))
    torch.load(p, weights_only=True)  # the point: torch's own loader does not notice


MALFORMED = {
    # name: (how to write it, what the one line must say)
    "missing model_config": (lambda good, p, m: torch.save(_edited(good, lambda c: c.pop("model_config")), p),
                             "missing 'model_config'"),
    "missing config": (lambda good, p, m: torch.save(_edited(good, lambda c: c.pop("config")), p),
                       "missing 'config'"),
    "wrong tensor shape": (lambda good, p, m: torch.save(_edited(good, _bad_shape), p),
                           "'synthesis.blocks.b4.const' has shape [7, 4, 4]"),
    "resolution 17": (lambda good, p, m: torch.save(_edited(good, _bad_resolution), p),
                      "invalid stored config: resolution"),
    "progress None": (lambda good, p, m: torch.save(_edited(good, lambda c: c.update(progress=None)), p),
                      "'progress' is a NoneType"),
    "truncated": (lambda good, p, m: p.write_bytes(Path(good["path"]).read_bytes()[:50000]),
                  "not a readable checkpoint of this project: truncated"),
    "empty": (lambda good, p, m: p.write_bytes(b""), "not a readable checkpoint of this project: the file is empty"),
    "flipped bit": (lambda good, p, m: _flip_a_weight_bit(good, p),
                    "not a readable checkpoint of this project: damaged (archive/data/"),
    "random bytes": (lambda good, p, m: p.write_bytes(np.random.default_rng(1).bytes(4000)),
                     "not a readable checkpoint of this project: not a checkpoint"),
    "not a checkpoint": (lambda good, p, m: torch.save({"weights": torch.ones(3)}, p),
                         "not a checkpoint of this project"),
    "pickle payload": (lambda good, p, m: torch.save(_edited(good, lambda c: c.update(G=_Payload(m))), p),
                       "refused because it contains code"),
    "plain pickle payload": (lambda good, p, m: p.write_bytes(pickle.dumps({"G": _Payload(m)})),
                             "refused because it contains code"),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_checkpoints_are_one_line_errors_and_run_nothing(trained, tmp_path, kind):
    data, run = trained
    good = ckpt_io.load_checkpoint(run)
    marker = tmp_path / "MARKER"
    make, expected = MALFORMED[kind]
    bad = tmp_path / "bad.pt"
    make(good, bad, marker)
    commands = {
        "info": ["info", "--ckpt", bad],
        "generate": ["generate", "--ckpt", bad, "--out", tmp_path / "gen", "--n", "2", "--no-progress"],
        "resume": ["train", "--resume", bad, "--data", data, *FAST],
    }
    for name, args in commands.items():
        r = invoke(*args)
        assert r.exit_code == 1, (name, r.output)
        line = one_line_error(r.output)
        assert str(bad) in line and expected in line, (name, line)
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "gen").exists()


def test_checkpoints_saved_without_checksums_load_and_are_refused_for_the_right_reason(trained, tmp_path):
    """torch.save with its CRC-32 option off stores 0 for every record: such a file cannot be
    checked, so it loads (not 'damaged'), and one refused for code says so."""
    _, run = trained
    good = ckpt_io.load_checkpoint(run)
    plain, hostile = tmp_path / "plain.pt", tmp_path / "hostile.pt"
    marker = tmp_path / "MARKER"
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(_edited(good, lambda c: None), plain)
        torch.save(_edited(good, lambda c: c.update(G=_Payload(marker))), hostile)
    finally:
        torch.serialization.set_crc32_options(True)
    with zipfile.ZipFile(plain) as z:
        assert all(i.CRC == 0 for i in z.infolist() if i.file_size)
    loaded = ckpt_io.load_checkpoint(plain)
    assert all(torch.equal(loaded["G"][k], good["G"][k]) for k in good["G"])
    with pytest.raises(ckpt_io.CheckpointError, match="refused because it contains code"):
        ckpt_io.load_checkpoint(hostile)
    assert not marker.exists()


def test_validate_names_each_problem(trained):
    _, run = trained
    good = ckpt_io.load_checkpoint(run)
    cases = [
        (lambda c: c["progress"].update(cur_nimg=-4), "progress: 'cur_nimg' is -4"),
        (lambda c: c["opt_G"]["state"][0].update(exp_avg=torch.zeros(3)), "opt_G: state 'exp_avg' of parameter 0"),
        (lambda c: c["D"].pop(next(iter(c["D"]))), "D: missing 1 tensor(s)"),
        (lambda c: c["rng"]["feeder"].update(perm=torch.arange(3)), "rng.feeder"),
        (lambda c: c["model_config"].update(z_dim=5), "config and model_config disagree on z_dim"),
        (lambda c: c.update(version=99), "format version 99"),
    ]
    for edit, expected in cases:
        ck = {k: (dict(v) if isinstance(v, dict) else v) for k, v in good.items()}
        ck["progress"], ck["rng"], ck["opt_G"] = dict(good["progress"]), dict(good["rng"]), dict(good["opt_G"])
        ck["rng"]["feeder"] = dict(good["rng"]["feeder"])
        ck["opt_G"]["state"] = {i: dict(s) for i, s in good["opt_G"]["state"].items()}
        edit(ck)
        with pytest.raises(ckpt_io.CheckpointError, match=expected.replace("(", r"\(").replace(")", r"\)")) as err:
            ckpt_io.validate_checkpoint(ck, "x.pt")
        assert "\n" not in str(err.value)
    ckpt_io.validate_checkpoint(good)  # what the current code writes is valid


def test_checkpoints_with_numpy_and_python_rng_states_still_load_and_resume(trained, tmp_path):
    """Earlier versions saved numpy's and Python's RNG states too: such files still validate and
    resume (the entries are ignored: nothing draws from those generators)."""
    data, run = trained
    run = copy_run(run, tmp_path / "run")
    path = ckpt_io.find_checkpoint(run)
    raw = torch.load(path, weights_only=True)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, pystate, gauss_next = random.getstate()
    raw["rng"]["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                           "has_gauss": int(has_gauss), "cached": float(cached)}
    raw["rng"]["python"] = {"version": version, "state": list(pystate), "gauss_next": gauss_next}
    torch.save(raw, path)
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    r = invoke("train", "--resume", run, "--data", data, "--kimg", "0.024", "--threads", "1", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "finished at 0.024 kimg" in r.output
    # Training drew nothing from numpy's or Python's global generators.
    assert np.array_equal(np.random.get_state()[1], np_before) and random.getstate() == py_before


# --------------------------------------------------------------------------------------------
# --resume falls back past a broken newest checkpoint; stale temporaries are removed.

def test_resume_skips_a_truncated_newest_checkpoint_and_removes_stale_temporaries(trained, tmp_path):
    data, run = trained
    run = copy_run(run, tmp_path / "run")
    newest = run / "checkpoints" / "ckpt-000000016.pt"
    newest.write_bytes(newest.read_bytes()[:30000])
    stale = [run / "checkpoints" / ".ckpt-000000024.pt.k2j4h5g_.tmp", run / ".stats.csv.a8d7f6s5.tmp"]
    for p in stale:
        p.write_bytes(b"half written")
    r = invoke("train", "--resume", run, "--data", data, "--kimg", "0.012", "--keep", "1", "--threads", "1",
               "--no-progress")
    assert r.exit_code == 0, r.output
    assert f"skipped {newest}: not a readable checkpoint: truncated" in r.output
    assert "resuming " + str(run / "checkpoints" / "ckpt-000000008.pt") in r.output
    assert "removed 2 temporary file(s)" in r.output
    assert not any(p.exists() for p in stale)
    assert "finished at 0.012 kimg" in r.output
    # --keep 1 kept the checkpoint just written, although the broken one is newer by name.
    assert [n for n, _ in ckpt_io.list_checkpoints(run)] == [12, 16]
    ckpt_io.load_checkpoint(run / "checkpoints" / "ckpt-000000012.pt")
    # Every checkpoint broken: one line, naming the newest and why.
    for _, p in ckpt_io.list_checkpoints(run):
        p.write_bytes(b"")
    r = invoke("train", "--resume", run, "--data", data, "--no-progress")
    assert r.exit_code == 1 and "no usable checkpoint" in one_line_error(r.output)


# --------------------------------------------------------------------------------------------
# Write failures: one line naming the file and the cause; the last good checkpoint stays.

def _disk_full_for(monkeypatch: pytest.MonkeyPatch, fragment: str, after: int = 0, per_call: bool = False) -> dict:
    """Make writes to files whose name contains `fragment` fail with ENOSPC, as a full disk does:
    at the write, deep inside the writer. The first `after` such files (or, per_call, write
    calls: one per stats append) still succeed."""
    seen: dict = {"files": set(), "calls": 0}
    real = fileio._write_chunk

    def write(f, data, target):
        if fragment in target.name:
            seen["files"].add(target.name)
            seen["calls"] += 1
            if (seen["calls"] if per_call else len(seen["files"])) > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(f, data, target)
    monkeypatch.setattr(fileio, "_write_chunk", write)
    return seen


def _leftover_temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]


@pytest.mark.parametrize("fragment, after", [("ckpt-", 1), ("loss_G", 0), ("stats.jsonl", 2), ("fakes_0", 0),
                                             ("config.json", 0)])
def test_disk_full_during_training_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, fragment,
                                                                             after):
    data = write_images(tmp_path / "slices")
    _disk_full_for(monkeypatch, fragment, after, per_call=fragment == "stats.jsonl")
    r = invoke("train", "--data", data, "--out", tmp_path / "runs", "--kimg", "0.032", "--snap", "0.008",
               "--tick", "0.004", *FAST)
    assert r.exit_code == 1, r.output
    error = r.output.strip().splitlines()[-1]
    assert error.startswith("Error: cannot write ") and "Traceback" not in r.output
    assert fragment in error and "[ENOSPC]" in error and "disk is full" in error, error
    assert "unexpected pos" not in r.output
    run = tmp_path / "runs" / "00000-slices-tiny"
    assert _leftover_temporaries(run) == []
    found = ckpt_io.list_checkpoints(run)
    if found:
        assert f"the last good checkpoint is {found[-1][1]}" in error
        monkeypatch.undo()
        ckpt_io.load_checkpoint(found[-1][1])  # still valid
    else:
        assert "no checkpoint was written yet" in error


def test_disk_full_in_generate_names_the_image(trained, tmp_path, monkeypatch):
    _, run = trained
    _disk_full_for(monkeypatch, "seed0003")
    out = tmp_path / "gen"
    r = invoke("generate", "--ckpt", run, "--out", out, "--n", "6", "--batch", "2", "--no-progress")
    assert r.exit_code == 1
    line = one_line_error(r.output)
    assert f"cannot write {out / 'seed0003.png'}: no space left" in line and "[ENOSPC]" in line
    assert _leftover_temporaries(out) == []


def test_failed_writes_through_each_writer_name_the_cause(tmp_path, monkeypatch):
    """torch.save reports a failed write as 'unexpected pos', Pillow and matplotlib as their own
    errors: fileio's guard still names ENOSPC, and removes the temporary."""
    import matplotlib.pyplot as plt

    from stylegan2.images import save_image
    from stylegan2.training.stats import StatsWriter
    _disk_full_for(monkeypatch, "")
    fig = plt.figure()
    writers = {
        "a.pt": lambda p: ckpt_io.atomic_save({"w": torch.zeros(1000)}, p),
        "b.png": lambda p: save_image(np.zeros((8, 8, 1), np.uint8), p),
        "c.png": lambda p: fileio.atomic_write(p, lambda f: fig.savefig(f, format="png")),
        "d.txt": lambda p: fileio.atomic_write_text(p, "x" * 100),
    }
    for name, write in writers.items():
        with pytest.raises(fileio.WriteError) as err:
            write(tmp_path / name)
        assert str(err.value) == f"cannot write {tmp_path / name}: no space left on the device (the disk is full) [ENOSPC]"
        assert err.value.errno == errno.ENOSPC
    plt.close(fig)
    assert os.listdir(tmp_path) == []
    # An append that fails leaves the log as it was (no half line).
    monkeypatch.undo()
    stats = StatsWriter(tmp_path)
    stats.append({"nimg": 4, "x": 1.0})
    before = stats.jsonl.read_bytes()
    _disk_full_for(monkeypatch, "stats.jsonl")
    with pytest.raises(fileio.WriteError, match="stats.jsonl.*ENOSPC"):
        stats.append({"nimg": 8, "x": 2.0})
    assert stats.jsonl.read_bytes() == before


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    return done.returncode == 0


def test_a_real_full_disk(tmp_path):
    """On a 400 KiB tmpfs the images and stats fit but a 1.4 MB tiny checkpoint does not."""
    data = write_images(tmp_path / "slices")
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "400k"):
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)")
    try:
        r = invoke("train", "--data", data, "--out", small, "--kimg", "0.016", "--snap", "0.008", *FAST)
        assert r.exit_code == 1, r.output
        error = r.output.strip().splitlines()[-1]
        assert error.startswith("Error: cannot write ") and "ckpt-000000008.pt" in error, error
        assert "[ENOSPC]" in error and "no checkpoint was written yet" in error
        assert _leftover_temporaries(small) == []
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


# --------------------------------------------------------------------------------------------
# Unwritable --out: found before any long work (the dataset load, the checkpoint load).

def test_unwritable_out_fails_before_the_dataset_loads(tmp_path, monkeypatch, trained):
    import stylegan2.data as data_mod

    def no_load(*a, **kw):
        raise AssertionError("the dataset was loaded")
    monkeypatch.setattr(data_mod, "open_dataset", no_load)
    a_file = tmp_path / "file"
    a_file.write_text("")
    for out in (Path("/proc/stylegan2-no-such/runs"), a_file, a_file / "runs"):
        r = invoke("train", "--data", tmp_path, "--out", out, *FAST)
        assert r.exit_code in (1, 2), r.output
        line = r.output.strip().splitlines()[-1]
        assert line.startswith("Error:") and "--out" in line and "Traceback" not in r.output, r.output
        r = invoke("generate", "--ckpt", trained[1], "--out", out, "--no-progress")
        assert r.exit_code in (1, 2) and "--out" in r.output.strip().splitlines()[-1], r.output
    # A folder the check had to create for nothing is removed again.
    r = invoke("train", "--data", tmp_path / "missing", "--out", tmp_path / "new" / "runs", *FAST)
    assert r.exit_code != 0 and not (tmp_path / "new").exists()


# --------------------------------------------------------------------------------------------
# Non-finite and out-of-range option values: refused at parse time, before any folder exists.

@pytest.mark.parametrize("option, value", [("--kimg", "inf"), ("--kimg", "nan"), ("--snap", "inf"),
                                           ("--tick", "nan"), ("--gamma", "inf"), ("--gamma", "nan"),
                                           ("--gamma", "-1"), ("--lr", "nan"), ("--lr", "inf"),
                                           ("--kimg", "1e12"), ("--kimg", "-inf")])
def test_non_finite_options_are_refused_before_a_run_folder_exists(tmp_path, option, value):
    r = CliRunner().invoke(cli.main, ["train", "--out", str(tmp_path / "runs"), option, value, *FAST])
    assert r.exit_code == 2, r.output
    assert option in r.output and "Traceback" not in r.output
    assert not (tmp_path / "runs").exists()


def test_non_finite_generate_options_are_refused(trained, tmp_path):
    r = CliRunner().invoke(cli.main, ["generate", "--ckpt", str(trained[1]), "--out", str(tmp_path / "g"),
                                      "--trunc", "nan"])
    assert r.exit_code == 2 and "--trunc" in r.output and not (tmp_path / "g").exists()


def test_config_refuses_non_finite_values():
    from stylegan2.training.config import make_config
    for field in ("kimg", "snap_kimg", "gamma", "lr", "pl_weight", "ema_kimg", "style_mixing"):
        for bad in (float("inf"), float("nan")):
            with pytest.raises(ValueError, match=f"{field}: must be a finite number"):
                make_config("tiny", {field: bad})


# --------------------------------------------------------------------------------------------
# Signals and exit codes.

def test_sigterm_exits_143_after_saving(tmp_path, monkeypatch):
    data = write_images(tmp_path / "slices")
    sigterm_after_step(monkeypatch, 2)
    r = invoke("train", "--data", data, "--out", tmp_path / "runs", "--kimg", "1", *FAST)
    assert r.exit_code == 143, r.output
    assert "stopped at 0.008 kimg" in r.output and "SIGTERM: saved" in r.output
    ck = ckpt_io.load_checkpoint(tmp_path / "runs" / "00000-slices-tiny")
    assert ck["progress"]["step"] == 2


def test_second_sigint_during_the_stop_checkpoint_is_ignored(tmp_path, monkeypatch, capfd):
    """A second Ctrl-C arriving while the stop checkpoint is being written: ignored, the file is
    complete and valid, and the run exits 130."""
    data = write_images(tmp_path / "slices")
    real_step, real_write = loop.train_step, fileio._write_chunk
    state = {"steps": 0, "sent": False}

    def step_then_signal(run, acc):
        real_step(run, acc)
        state["steps"] += 1
        if state["steps"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    def write(f, data, target):
        if "ckpt-" in target.name and not state["sent"]:
            state["sent"] = True
            os.kill(os.getpid(), signal.SIGINT)  # mid-checkpoint: torch.save is calling us
            time.sleep(0.05)
        return real_write(f, data, target)
    monkeypatch.setattr(loop, "train_step", step_then_signal)
    monkeypatch.setattr(fileio, "_write_chunk", write)
    r = invoke("train", "--data", data, "--out", tmp_path / "runs", "--kimg", "1", *FAST)
    assert state["sent"] and r.exit_code == 130, r.output
    assert "SIGINT again: ignored" in capfd.readouterr().err
    ck = ckpt_io.load_checkpoint(tmp_path / "runs" / "00000-slices-tiny")
    assert ck["progress"]["step"] == 1


def test_sigint_twice_in_a_row_in_a_real_process(tmp_path):
    """Ctrl-C Ctrl-C to a real `python -m stylegan2 train`: the second is ignored (and said so),
    the checkpoint is written, and the process exits 130."""
    data = write_images(tmp_path / "slices")
    runs = tmp_path / "runs"
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "stylegan2", "train", "--data", str(data), "--out", str(runs),
                             "--kimg", "100", "--tick", "0.004", *FAST], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stats = runs / "00000-slices-tiny" / "stats.jsonl"
        deadline = time.time() + 120
        while not (stats.exists() and stats.read_text().strip()) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        # A quick double press: far enough apart that the kernel does not merge the two (pending
        # signals of one kind are not queued), close enough to land during the stop.
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(out, err)  # shown with -s: what a user sees
    assert proc.returncode == 130, (out, err)
    assert "SIGINT again: ignored" in err and "Traceback" not in err, err
    assert "SIGINT: saved" in out and "stopped at" in out
    ckpt_io.load_checkpoint(runs / "00000-slices-tiny")


# --------------------------------------------------------------------------------------------
# fileio helpers.

def test_check_writable_dir_and_stale_temporaries(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    assert fileio.check_writable_dir(deep) == deep and not (tmp_path / "a").exists()
    fileio.check_writable_dir(deep, keep=True)
    assert deep.is_dir() and list(deep.iterdir()) == []
    for name in (".ckpt-000001.pt.abcd1234.tmp", ".loss_G.png.x_y1z2w3.tmp", "stats.csv.tmp", "keep.tmp",
                 "ckpt-000001.pt", ".hidden"):
        (deep / name).write_bytes(b"")
    removed = sorted(p.name for p in fileio.remove_stale_temporaries(deep))
    assert removed == [".ckpt-000001.pt.abcd1234.tmp", ".loss_G.png.x_y1z2w3.tmp", "stats.csv.tmp"]
    assert sorted(p.name for p in deep.iterdir()) == [".hidden", "ckpt-000001.pt", "keep.tmp"]


def test_written_files_get_the_usual_permissions(tmp_path):
    path = fileio.atomic_write_text(tmp_path / "x.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
