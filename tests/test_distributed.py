"""Training on several ranks (training/distributed.py, training/split.py), on the CPU with gloo.

One pair of worker processes (torch.multiprocessing spawn, the environment torchrun would give
them) drives the real command line through four scenarios in turn: a 2-rank run, a 2-rank run
accumulating over rounds (with channels_last and bf16 layers), a 2-rank resume of a 1-rank
checkpoint, and a rank that hangs. This process runs the 1-rank references and resumes a 2-rank
checkpoint on 1 rank. Starting processes is most of the cost (about 20 s to import torch twice on
a busy 2-core machine), so they are started once.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from stylegan2 import cli
from stylegan2.training import checkpoint as ckpt_io
from stylegan2.training.distributed import World, check_batch
from stylegan2.training.feed import BatchFeeder
from stylegan2.training.split import Split

# The workers' collective timeout: the hang scenario waits this long, and every pause of rank 0
# alone in the other scenarios (a grid, the plots; matplotlib is imported up front) stays well
# below it even on a busy machine.
TIMEOUT_S = 10.0
RUNTIME = ["--kimg", "0.032", "--snap", "0.016", "--tick", "0.016", "--threads", "1", "--device", "cpu",
           "--no-progress"]
FRESH = ["--preset", "tiny", "--batch", "8", "--seed", "3", *RUNTIME]


# --------------------------------------------------------------------------------------------
# In this process: the split's arithmetic, the shards, the running statistics.

def test_batch_must_split_into_whole_rounds():
    check_batch(8, None, 2)
    check_batch(8, 2, 2)
    for batch, batch_gpu, world, needle in ((8, 3, 2, "6 images per round"), (6, None, 4, "4 images per round"),
                                            (8, 4, 4, "16 images per round"), (8, 0, 1, "at least 1")):
        with pytest.raises(ValueError, match=needle):
            check_batch(batch, batch_gpu, world)
    sp = Split(12, 2, World(rank=1, size=3), torch.device("cpu"))
    assert (sp.batch_gpu, sp.rounds, sp.chunks, sp.local) == (2, 2, 6, slice(4, 8))
    assert list(sp.my_chunks()) == [2, 3] and sp.loss_scale == pytest.approx(1 / 6)


@pytest.mark.parametrize("n, batch, world", [(12, 4, 2), (10, 6, 3), (7, 4, 4)])
def test_ranks_see_disjoint_shards_that_cover_each_epoch(n, batch, world):
    """Image i holds the value i: the ranks' batches, step by step, are disjoint slices of the
    one-process batch, and over an epoch they cover every image exactly once."""
    images = np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(4, 2).repeat(4, 3)
    cpu = torch.device("cpu")

    def ids(x: torch.Tensor) -> list[int]:
        return [int(round(v)) for v in ((x[:, 0, 0, 0] + 1) * 127.5).tolist()]

    one = BatchFeeder(images, None, 0, batch, cpu, seed=5)
    feeders = [BatchFeeder(images, None, 0, batch, cpu, seed=5) for _ in range(world)]
    parts = [Split(batch, None, World(rank=r, size=world), cpu).local for r in range(world)]
    seen: list[int] = []
    for _ in range(3 * n):
        whole = ids(one.reals()[0])
        shards = [ids(f.reals(p)[0]) for f, p in zip(feeders, parts)]
        assert sum(shards, []) == whole  # disjoint slices of the one-process batch, in order
        seen += whole
    for start in range(0, len(seen) - n + 1, n):  # each epoch: every image once
        assert sorted(seen[start:start + n]) == list(range(n))


def test_rounds_average_running_statistics_to_the_global_batch_update():
    """A running mean updated by lerp in each round ends as the update with the global batch's
    mean (what one round over the whole batch gives), and each round starts from the old value."""
    gen = torch.Generator().manual_seed(0)
    for rounds in (2, 3, 4):
        sp = Split(2 * rounds, 2, World(), torch.device("cpu"))
        sp.start(0, 0)
        stat = torch.randn(5, generator=gen)
        old = stat.clone()
        batch_means = torch.randn(rounds, 5, generator=gen)
        starts = []
        for j, _ in enumerate(sp.run_rounds([stat])):
            starts.append(stat.clone())
            stat.copy_(stat.lerp(batch_means[j], 0.01))
        assert all(torch.equal(s, old) for s in starts)
        torch.testing.assert_close(stat, old.lerp(batch_means.mean(0), 0.01), rtol=1e-6, atol=1e-7)


def test_rounds_draw_from_their_own_streams_and_end_on_the_first():
    """Round j draws from chunk j's stream: the same numbers whether the chunks are rounds of one
    rank or rounds spread over ranks, and the global RNG is back on chunk 0 afterwards."""
    cpu = torch.device("cpu")
    torch.manual_seed(7)
    four = Split(8, 2, World(), cpu)
    four.start(7, 0)
    draws4 = [torch.randn(3) for _ in four.run_rounds()]
    after = torch.randn(3)
    for rank in range(2):
        torch.manual_seed(7)
        two = Split(8, 2, World(rank=rank, size=2), cpu)
        two.start(7, 0)
        draws2 = [torch.randn(3) for _ in two.run_rounds()]
        for got, want in zip(draws2, draws4[2 * rank:2 * rank + 2]):
            assert torch.equal(got, want)
        if rank == 0:
            assert torch.equal(torch.randn(3), after)
    assert not torch.equal(draws4[0], draws4[1])


def test_cache_can_memory_map_the_images(tmp_path):
    from stylegan2.data import ImageDataset, cache
    images = np.random.default_rng(0).integers(0, 255, (6, 1, 8, 8), dtype=np.uint8)
    state = cache.source_state("x.npz", [])
    header = {"format": cache.CACHE_FORMAT, "key": state.key, "fresh": {}, "source": "s", "labeled": False,
              "label_names": [], "skipped": 0, "notes": []}
    cache.save_cached(tmp_path / "x.npz", ImageDataset(images, source="s"), header)
    mapped = cache.load_cached(tmp_path / "x.npz", state, mmap=True)
    assert np.array_equal(mapped.images, images) and not mapped.images.flags.writeable
    assert isinstance(mapped.images.base, np.memmap) or isinstance(mapped.images, np.memmap)
    assert cache.load_cached(tmp_path / "x.npz", state).images.flags.writeable


# --------------------------------------------------------------------------------------------
# Two ranks through the command line.

def _write_pngs(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:16, 0:16]
    for i in range(n):
        cx, cy, r, v = rng.uniform(0.3, 0.7, 4)
        img = ((((xx / 16 - cx) ** 2 + (yy / 16 - cy) ** 2) < r * r / 4) * (80 + 170 * v)).astype(np.uint8)
        Image.fromarray(img, "L").save(folder / f"s{i:02d}.png")
    return folder


def _train(*args: object) -> None:
    """`train` on the command line, in this process: a fresh run, or a resume (runtime options only)."""
    resume = "--resume" in args
    cli.main(["train", *(RUNTIME if resume else FRESH), *(str(a) for a in args)], standalone_mode=False)


class _Wrote(AssertionError):
    pass


def _forbid_writes() -> None:
    """Make every file writer of the package fail on this rank."""
    from stylegan2 import fileio

    def refuse(name: str):
        def fn(*a, **k):
            raise _Wrote(f"rank 1 called fileio.{name}({a[0] if a else ''})")
        return fn
    for name in ("atomic_write", "atomic_write_text", "append_text", "make_dirs", "check_writable_dir",
                 "remove_stale_temporaries"):
        setattr(fileio, name, refuse(name))


def _collective_checks(rank: int) -> dict[str, object]:
    """The helpers under the loop, on values that differ by rank."""
    from stylegan2.training import distributed
    gen = torch.Generator().manual_seed(rank)
    # Gradients in channels_last and bf16 layouts: summed over ranks, layout and dtype kept.
    w = torch.nn.Parameter(torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last))
    v = torch.nn.Parameter(torch.zeros(7, dtype=torch.bfloat16))
    w.grad = torch.randn(2, 3, 4, 5, generator=gen).to(memory_format=torch.channels_last)
    v.grad = torch.randn(7, generator=gen).to(torch.bfloat16)
    mine = (w.grad.clone(), v.grad.clone())
    distributed.all_reduce_grads([w, v], limit=50)  # two buckets
    theirs = [torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(r)) for r in (0, 1)]
    ok_sum = torch.allclose(w.grad, theirs[0] + theirs[1], atol=1e-6) and v.grad.dtype == torch.bfloat16 \
        and w.grad.is_contiguous(memory_format=torch.channels_last) and not torch.equal(w.grad, mine[0])
    t = torch.full((3,), float(rank + 1))
    distributed.broadcast_tensors([t])
    differ = distributed.sync_tensors({"same": torch.ones(4), "differs": torch.tensor([float(rank)])})
    return {"grad_sum": bool(ok_sum), "broadcast": t.tolist(), "differ": differ,
            "any": distributed.any_across(rank == 1), "max": distributed.max_across(float(rank))}


def _worker(rank: int, port: int, tmp: str) -> None:
    """One rank: the four scenarios, in the order the test expects, results in tmp/rank<r>.json."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2", STYLEGAN2_CACHE=f"{tmp}/cache2")
    torch.set_num_threads(1)
    from stylegan2.training import distributed, loop
    tmp_p = Path(tmp)
    out = os.open(tmp_p / f"stdout{rank}.txt", os.O_WRONLY | os.O_CREAT)
    os.dup2(out, 1)  # what this rank prints, for the test to read
    result: dict[str, object] = {}
    try:
        # Imports of seconds, done before the group exists rather than while the other rank
        # waits in a collective: matplotlib (rank 0's first snapshot) and torch._dynamo (Adam).
        import stylegan2.training.plots  # noqa: F401
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])
        distributed.init_from_env(TIMEOUT_S, "cpu")
        if rank == 1:
            _forbid_writes()
        data = tmp_p / "pngs"
        _train("--data", data, "--out", tmp_p / "a2", "--aug", "ada")
        _train("--data", data, "--out", tmp_p / "b2", "--batch-gpu", 2, "--channels-last", "--precision", "bf16")
        _train("--data", data, "--resume", tmp_p / "h")
        result["scenarios"] = "done"
        result.update(_collective_checks(rank))
        (tmp_p / f"rank{rank}.json").write_text(json.dumps(result))  # rank 1 will not get further
        # A rank that hangs: rank 1 stops answering in its second step.
        real_step, calls = loop.train_step, []

        def hang(run, acc):
            calls.append(1)
            if rank == 1 and len(calls) == 2:
                time.sleep(600)
            return real_step(run, acc)
        loop.train_step = hang
        t0 = time.monotonic()
        try:
            _train("--data", data, "--out", tmp_p / "hang")
            result["hang"] = "no error"
        except Exception as e:  # ClickException on rank 0
            result["hang"] = str(getattr(e, "message", e))
            result["hang_s"] = time.monotonic() - t0
    except BaseException:
        result["error"] = traceback.format_exc()
    (tmp_p / f"rank{rank}.json").write_text(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # the group is broken after the hang: no orderly teardown


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _final(run_dir: Path) -> dict:
    return ckpt_io.load_checkpoint(run_dir)


def _assert_same_weights(a: dict, b: dict, tol: float) -> None:
    assert a["progress"]["cur_nimg"] == b["progress"]["cur_nimg"] == 32
    for key in ("G", "D", "G_ema"):
        for name, t in a[key].items():
            if t.is_floating_point():
                torch.testing.assert_close(b[key][name], t, rtol=tol, atol=tol, msg=lambda m: f"{key}.{name}: {m}")
    torch.testing.assert_close(b["loss"]["pl_mean"], a["loss"]["pl_mean"], rtol=tol, atol=tol)


def _only_dir(parent: Path) -> Path:
    dirs = [p for p in parent.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def _resume_copy(src_run: Path, name: str, dst: Path) -> Path:
    """A run directory holding only `src_run`'s checkpoint `name` (and its config)."""
    (dst / ckpt_io.CHECKPOINTS).mkdir(parents=True)
    shutil.copy(src_run / ckpt_io.CHECKPOINTS / name, dst / ckpt_io.CHECKPOINTS / name)
    return dst


def test_two_ranks_train_like_one_resume_across_world_sizes_and_fail_on_a_hang(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STYLEGAN2_CACHE", str(tmp_path / "cache1"))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    data = _write_pngs(tmp_path / "pngs", 12)
    half = ckpt_io.ckpt_name(16)

    # One process, the same global batch split in rounds as the ranks will split it.
    _train("--data", data, "--out", tmp_path / "a1", "--batch-gpu", 4, "--aug", "ada")
    _train("--data", data, "--out", tmp_path / "b1", "--batch-gpu", 2, "--channels-last", "--precision", "bf16")
    a1 = _only_dir(tmp_path / "a1")
    _resume_copy(a1, half, tmp_path / "h")  # a 1-rank checkpoint, for 2 ranks to resume

    ctx = mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=False,
                             start_method="spawn")
    p0, p1 = ctx.processes
    p0.join(240)
    alive0 = p0.is_alive()
    for p in (p0, p1):
        if p.is_alive():
            p.kill()
        p.join(10)
    assert not alive0, "rank 0 did not end within 240 s"
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) if (tmp_path / f"rank{r}.json").exists()
               else {"error": "no result"} for r in (0, 1)]
    assert "error" not in results[0], results[0].get("error")
    assert results[0].get("scenarios") == "done"
    assert results[1].get("scenarios") == "done" and "error" not in results[1]  # killed while it hangs
    # Only rank 0 printed: the run directories, the outputs (rank 1 wrote nothing to stdout).
    assert (tmp_path / "stdout1.txt").read_text() == ""
    assert (tmp_path / "stdout0.txt").read_text().count("run directory:") == 4  # a2, b2, h, hang
    for r in results:  # the helpers under the loop
        assert r["grad_sum"] and r["broadcast"] == [1.0, 1.0, 1.0] and r["differ"] == ["differs"]
        assert r["any"] is True and r["max"] == 1.0

    # 2 ranks x 4 images == 1 rank x 2 rounds x 4 images (with ADA); 2 ranks x 2 rounds x 2 == 1 x 4 x 2
    # (bf16 layers, channels_last): equal up to the order the float gradients are summed in.
    a2, b1, b2 = _only_dir(tmp_path / "a2"), _only_dir(tmp_path / "b1"), _only_dir(tmp_path / "b2")
    _assert_same_weights(_final(a1), _final(a2), 1e-6)
    _assert_same_weights(_final(b1), _final(b2), 1e-4)
    # ADA (augmenting every image D saw in a1 and a2): its one adjustment (4 steps) measured r_t over
    # both ranks' real logits, so r_t and p equal the one-process run's exactly; one rank's half
    # of the logits would give another r_t.
    ada1, ada2 = (_final(r)["augment"]["controller"] for r in (a1, a2))
    assert ada1["adjustments"] == ada2["adjustments"] == 1
    assert float(ada1["rt"]) == float(ada2["rt"]) and float(ada1["p"]) == float(ada2["p"])
    # Only rank 0 wrote (rank 1's writers raise): each run directory has one set of files.
    assert sorted(p.name for p in (a2 / "checkpoints").iterdir()) == [half, ckpt_io.ckpt_name(32)]
    assert {"config.json", "stats.jsonl", "reals.png", "fakes_init.png"} <= {p.name for p in a2.iterdir()}
    rows = [json.loads(line) for line in (a2 / "stats.jsonl").read_text().splitlines()]
    assert [r["nimg"] for r in rows] == [16, 32] and all(r["img_per_s"] > 0 for r in rows)
    assert json.loads((a2 / "config.json").read_text())["ranks"] == 2
    # The ranks decoded the dataset once: rank 1 read rank 0's cache file (its writers raise).
    assert len(list((tmp_path / "cache2" / "datasets").glob("*.npz"))) == 1

    # A 1-rank checkpoint resumed on 2 ranks, and a 2-rank one resumed here on 1 rank, continue
    # exactly (the same --batch-gpu, so the same chunks and streams).
    _assert_same_weights(_final(a1), _final(tmp_path / "h"), 1e-6)
    j = _resume_copy(a2, half, tmp_path / "j")
    _train("--data", data, "--resume", j, "--batch-gpu", 4)  # 2 ranks had 4 each
    _assert_same_weights(_final(a2), _final(j), 1e-6)
    out = capsys.readouterr().out
    assert "continue their random streams exactly" in out

    # The hung rank: rank 0 ended with one line naming itself, the cause and the timeout.
    msg = results[0]["hang"]
    assert "rank 0 of 2" in msg and "another rank died or hangs" in msg and "--dist-timeout 10" in msg, msg
    assert "\n" not in msg
