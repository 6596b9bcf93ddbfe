"""benchmarks/run.py: the quick mode end to end (schema of the JSON, the markdown twin), the
analytic FLOP counts against torch's FlopCounterMode, and the timing helpers."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import flops as F  # noqa: E402
from benchmarks import report as R  # noqa: E402
from benchmarks import shapes as S  # noqa: E402
from benchmarks.timing import Timing, median, rotation_count, time_calls  # noqa: E402

NUMBERS = ("ms", "gbps", "tflops", "pct_of_peak", "ratio_to_ref", "img_per_s")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, str]:
    """The CI command, run once: (JSON document, markdown file, stdout)."""
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if k != "STYLEGAN2_OPS_IMPL"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jsons, mds = sorted(out.glob("*.json")), sorted(out.glob("*.md"))
    assert len(jsons) == 1 and len(mds) == 1, list(out.iterdir())
    assert jsons[0].stem == mds[0].stem
    return json.loads(jsons[0].read_text()), mds[0].read_text(), proc.stdout


def test_quick_json_schema(quick_run: tuple[dict, str, str]) -> None:
    doc, _, _ = quick_run
    for key in ("date", "device", "torch", "cuda", "commit", "ceilings", "rows"):
        assert key in doc
    assert doc["commit"] and doc["commit"] != ""
    c = doc["ceilings"]
    assert c["copy_gbps"] > 0 and math.isfinite(c["copy_gbps"])
    assert c["matmul_tflops"] and all(v > 0 and math.isfinite(v) for v in c["matmul_tflops"].values())
    rows = doc["rows"]
    assert {r["section"] for r in rows} == {"kernels", "train", "generate"}
    order = [R.SECTIONS.index(r["section"]) for r in rows]
    assert order == sorted(order)  # listed kernels, train, generate whatever order they ran in
    timed = 0
    for r in rows:
        for key in R.ROW_KEYS:
            assert key in r, (key, r)
        assert "gbps" in r or "tflops" in r, r
        for key in NUMBERS:
            v = r.get(key)
            assert v is None or (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)), (key, r)
        if r["ms"] is None:
            assert r["note"], f"a row without a timing must say why: {r}"
        else:
            timed += 1
            assert (r.get("gbps") or r.get("tflops")) and r["pct_of_peak"] and r["ratio_to_ref"], r
        if r["impl"] == "ref" and r["ms"] is not None:
            assert r["ratio_to_ref"] == pytest.approx(1.0)
    assert timed >= len(rows) // 3


def test_quick_covers_every_op_pass_and_impl(quick_run: tuple[dict, str, str]) -> None:
    doc, _, _ = quick_run
    kernels = [r for r in doc["rows"] if r["section"] == "kernels"]
    assert {r["op"] for r in kernels} == {"bias_act", "upsample2d", "downsample2d", "filter2d", "modulated_conv2d"}
    assert {r["pass"] for r in kernels} == {"fwd", "fwd+bwd"}
    assert {r["impl"] for r in kernels} == {"cuda", "ref", "compile"}
    # The compile path really ran (first shape of each op) in both passes.
    compiled = [r for r in kernels if r["impl"] == "compile" and r["ms"] is not None]
    assert {(r["op"], r["pass"]) for r in compiled} == {(o, p) for o in {r["op"] for r in kernels}
                                                       for p in ("fwd", "fwd+bwd")}
    # Both precision policies in training and generation.
    assert len({r["dtype"] for r in doc["rows"] if r["section"] == "train"}) == 2
    assert len({r["dtype"] for r in doc["rows"] if r["section"] == "generate"}) == 2
    # The speed variants ran on the reference path and compare against its plain eager rows.
    for section, variants in (("train", {"ref+channels_last"}),
                              ("generate", {"ref+channels_last", "ref+unfused", "ref+compile"})):
        rows = [r for r in doc["rows"] if r["section"] == section and r["impl"] in variants]
        assert {r["impl"] for r in rows} == variants
        assert all(r["ms"] and r["ratio_to_ref"] for r in rows), rows


def test_generation_variant_names() -> None:
    from benchmarks.generate import parse_variant
    assert parse_variant("eager") == dict(channels_last=False, fused_modconv=None, speedup="none")
    assert parse_variant("channels_last+cudagraph") == dict(channels_last=True, fused_modconv=None,
                                                            speedup="cudagraph")
    assert parse_variant("unfused+compile") == dict(channels_last=False, fused_modconv=False, speedup="compile")
    assert parse_variant("fused")["fused_modconv"] is True
    for bad in ("cudagraph+compile", "fused+unfused", "nhwc", "compile+compile", ""):
        with pytest.raises(ValueError, match="generation variant"):
            parse_variant(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the rows a GPU-less run must skip")
def test_quick_cuda_rows_are_skipped_not_faked(quick_run: tuple[dict, str, str]) -> None:
    doc, _, _ = quick_run
    cuda_rows = [r for r in doc["rows"] if r["impl"].split("+")[0] == "cuda"]
    assert cuda_rows
    for r in cuda_rows:
        assert r["ms"] is None and r["note"].startswith("skipped:"), r


def test_quick_markdown_one_line_per_row_that_ran_and_one_per_skipped_group(quick_run: tuple[dict, str, str]) -> None:
    doc, md, stdout = quick_run
    table = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| section")]
    ran = [r for r in doc["rows"] if not (r["ms"] is None and (r["note"] or "").startswith("skipped:"))]
    assert ran and len(table) == len(ran)
    for line, r in zip(table, ran):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 13
        assert cells[0] == r["section"] and cells[1] == r["op"] and cells[5] == r["impl"]
    # The skipped rows (the CUDA ones on this CPU run): one line per (section, reason), counting them.
    groups: dict[tuple[str, str], int] = {}
    for r in doc["rows"]:
        if r not in ran:
            groups[(r["section"], r["note"])] = groups.get((r["section"], r["note"]), 0) + 1
    assert groups, "a CPU run skips the cuda rows"
    listed = [line for line in md.splitlines() if line.startswith("- ") and "skipped:" in line]
    assert len(listed) == len(groups)
    for (section, note), n in groups.items():
        assert f"- {section}: {n} row{'s' if n != 1 else ''} {note}" in listed
    assert md in stdout.replace("\r", "") or table[-1] in stdout
    assert "wrote " in stdout


def test_finish_rows_ratio_is_like_for_like() -> None:
    def row(pass_: str, dtype: str, impl: str, **kw: object) -> dict:
        return dict(section="kernels", op="bias_act", shape="s", dtype=dtype, impl=impl, **{"pass": pass_}, **kw)

    rows = [
        row("fwd", "float16", "ref", ms=4.0, gbps=1.0),
        row("fwd", "float16", "cuda", ms=1.0, gbps=4.0),
        row("fwd", "float32", "cuda", ms=2.0, gbps=2.0),   # no float32 ref: no ratio
        row("fwd+bwd", "float16", "cuda", ms=3.0),          # no fwd+bwd ref: no ratio
        row("fwd", "float16", "compile", note="torch.compile failed: x"),
        row("fwd", "float16", "cuda", ms=2.0, gbps=float("inf")),
    ]
    out = R.finish_rows(rows)
    assert [r["ratio_to_ref"] for r in out] == [1.0, 4.0, None, None, None, 2.0]
    assert out[5]["gbps"] is None and "non-finite gbps" in out[5]["note"]
    assert all(set(R.ROW_KEYS) <= set(r) for r in out)
    assert out[4]["ms"] is None and out[4]["note"]


def test_markdown_and_json_round_trip(tmp_path: Path) -> None:
    rows = [dict(section="train", op="train_step", shape="4x1x16x16 | odd", dtype="fp32", impl="ref",
                 ms=12.5, tflops=0.5, pct_of_peak=3.0, img_per_s=320.0)]
    doc = R.document(rows, torch.device("cpu"), {"copy_gbps": 10.0, "matmul_tflops": {"float32": 1.0}},
                     "abc1234+dirty", {"quick": True})
    jpath, mpath = R.write(doc, tmp_path)
    assert jpath.name.endswith("-abc1234+dirty.json") and jpath.name.startswith(doc["date"])
    back = json.loads(jpath.read_text())
    assert back["rows"][0]["ratio_to_ref"] == 1.0 and back["commit"] == "abc1234+dirty"
    lines = [x for x in mpath.read_text().splitlines() if x.startswith("| train")]
    assert len(lines) == 1 and "4x1x16x16 / odd" in lines[0]  # a '|' in a cell cannot split the row


# ---------------------------------------------------------------------------------------------
# FLOP counts: analytic (flops.py) against FlopCounterMode on the reference path.


TOL = 1e-3  # the forward counts are exact by construction; 0.1% leaves room for nothing else


@pytest.mark.parametrize("kw", [
    dict(resolution=16, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32),
    dict(resolution=32, channels=3, z_dim=16, w_dim=24, mapping_layers=3, channel_base=512, channel_max=48),
    dict(resolution=8, z_dim=8, w_dim=8, mapping_layers=1, channel_base=64, channel_max=16, c_dim=3),
])
@pytest.mark.parametrize("training", [True, False])
def test_generator_and_discriminator_flops_match_counter(kw: dict, training: bool, gen: torch.Generator,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from stylegan2.networks import Discriminator, Generator, ModelConfig
    monkeypatch.setenv("STYLEGAN2_OPS_IMPL", "ref")
    cfg = ModelConfig(**kw)
    G, D = Generator(cfg).train(training), Discriminator(cfg).train(training)
    n = 3
    z = torch.randn(n, cfg.z_dim, generator=gen)
    c = torch.randint(0, cfg.c_dim, [n], generator=gen) if cfg.c_dim else None
    img = torch.randn(n, cfg.channels, cfg.resolution, cfg.resolution, generator=gen)
    arch = F.Arch.of(cfg)
    with torch.no_grad():
        g_counted = F.count_flops(lambda: G(z, c))
        d_counted = F.count_flops(lambda: D(img, c))
    g_analytic = F.total(F.generator_layers(arch, n))
    d_analytic = F.total(F.discriminator_layers(arch, n))
    assert g_counted > 0 and d_counted > 0
    assert abs(F.relative_gap(g_analytic, g_counted)) < TOL, (g_analytic, g_counted)
    assert abs(F.relative_gap(d_analytic, d_counted)) < TOL, (d_analytic, d_counted)


@pytest.mark.parametrize("up,cin,cout,res", [(1, 8, 12, 5), (2, 6, 4, 8), (1, 3, 3, 7)])
def test_modconv_flops_match_counter(up: int, cin: int, cout: int, res: int, gen: torch.Generator) -> None:
    import stylegan2_ops as ops
    n = 2
    x = torch.randn(n, cin, res // up, res // up, generator=gen)
    w = torch.randn(cout, cin, 3, 3, generator=gen)
    s = 1 + 0.2 * torch.randn(n, cin, generator=gen)
    f = ops.setup_filter([1, 3, 3, 1])
    for fused in (True, False):
        counted = F.count_flops(lambda: ops.modulated_conv2d(
            x, w, s, up=up, padding=1, resample_filter=f, flip_weight=up == 1, fused_modconv=fused, impl="ref"))
        conv = F.modconv_flops(n, cin, cout, 3, res, up)
        filt = F.fir("f", n, cout, res).flops if up == 2 else 0
        assert counted == conv + filt, (fused, counted, conv, filt)


def test_training_flop_estimate_tracks_counter() -> None:
    """Main phases exactly; the lazy phases' double-backward estimate within 5%."""
    from benchmarks import train as T
    setup = T.make_setup(True, "fp32", torch.device("cpu"))
    _, analytic = T.flops_per_image(setup)
    counted = T.counted_phases(setup, torch.device("cpu"))
    assert analytic["g_main"] == counted["g_main"] and analytic["d_main"] == counted["d_main"]
    for phase in ("g_reg", "d_reg"):
        assert abs(F.relative_gap(analytic[phase], counted[phase])) < 0.05, (phase, analytic, counted)


# ---------------------------------------------------------------------------------------------
# Timing helpers and shapes.


@pytest.mark.parametrize("values,expected", [([3.0], 3.0), ([5, 1, 3], 3.0), ([4, 1, 3, 2], 2.5),
                                             ([9, 9, 1, 1, 5], 5.0), ([2.5, -1.0], 0.75)])
def test_median(values: list[float], expected: float) -> None:
    assert median(values) == expected
    with pytest.raises(ValueError):
        median([])


def test_time_calls_reports_median_and_rotates_inputs() -> None:
    seen = []
    t = time_calls(lambda a: seen.append(a), [(0,), (1,), (2,)], torch.device("cpu"), warmup=2, repeat=7)
    assert isinstance(t, Timing) and len(t.samples) == 7
    assert t.ms == median(t.samples)
    assert seen == [i % 3 for i in range(9)]  # warm-up calls, then timed ones, rotating
    with pytest.raises(ValueError):
        time_calls(lambda: None, [()], torch.device("cpu"), warmup=0, repeat=0)


def test_rotation_count_overflows_cache() -> None:
    cache = 50 * 2**20
    assert rotation_count(10 * 2**30, torch.device("cpu"), cache_bytes=cache) == 2
    assert rotation_count(2**20, torch.device("cpu"), cache_bytes=cache) == 32
    n = rotation_count(8 * 2**20, torch.device("cpu"), cache_bytes=cache)
    assert n * 8 * 2**20 >= 2 * cache and (n - 1) * 8 * 2**20 < 2 * cache


def test_stylegan2_256_shapes() -> None:
    convs = S.conv_shapes(S.FULL)
    got = [(c.res, c.cin, c.cout, c.up) for c in convs]
    assert got[:2] == [(4, 512, 512, 1), (8, 512, 512, 2)]
    assert (64, 512, 256, 2) in got and (128, 256, 128, 2) in got and (256, 128, 64, 2) in got
    assert got[-1] == (256, 64, 64, 1) and len(got) == 13 and all(c.batch == 32 for c in convs)
    acts = [(a.channels, a.res) for a in S.act_shapes(S.FULL)]
    assert acts == [(512, 4), (512, 8), (512, 16), (512, 32), (256, 64), (128, 128), (64, 256)]
    assert [S.FULL.policy_dtype(r) for r in (4, 16, 32, 256)] == [torch.float32] * 2 + [torch.float16] * 2


# ---------------------------------------------------------------------------------------------
# run.py's driver: error rows, the time limit, merging split runs.


def _args(**kw: object) -> object:
    from types import SimpleNamespace
    base = dict(no_progress=True, time_limit=None, not_run=0, device=torch.device("cpu"))
    return SimpleNamespace(**{**base, **kw})


def test_a_failing_task_becomes_an_error_row(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import run

    def boom() -> dict:
        raise RuntimeError("CUDA out of memory\nmore lines")

    ok = dict(section="train", op="train_step", shape="s", dtype="fp32", impl="ref", ms=1.0, tflops=1.0)
    monkeypatch.setattr(run, "tasks", lambda args, ceilings: iter([
        ("bias_act fwd 2x3 float32 ref", boom), ("train fp32", lambda: [ok, dict(ok, impl="cuda")])]))
    seen = []
    rows = run.run_tasks(_args(), None, lambda rs: seen.append(len(rs)))
    assert seen == [1, 3]  # the partial report is rewritten after every task
    assert rows[0]["section"] == "kernels" and rows[0]["op"] == "bias_act"
    assert rows[0]["note"] == "error: RuntimeError: CUDA out of memory" and "ms" not in rows[0]
    assert rows[1:] == [ok, dict(ok, impl="cuda")]
    assert all(set(R.ROW_KEYS) <= set(r) for r in R.finish_rows(rows))


def test_time_limit_stops_starting_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import run
    calls = []
    monkeypatch.setattr(run, "tasks", lambda args, ceilings: iter(
        [(f"t{i}", lambda i=i: calls.append(i) or dict(section="kernels", op="x", shape="s", dtype="d",
                                                        impl="ref", ms=1.0)) for i in range(4)]))
    args = _args(time_limit=-1.0)
    assert run.run_tasks(args, None, lambda rs: None) == [] and calls == [] and args.not_run == 4
    args = _args(time_limit=1e9)
    assert len(run.run_tasks(args, None, lambda rs: None)) == 4 and calls == [0, 1, 2, 3] and args.not_run == 0


def test_merge_recomputes_ratios_across_runs(tmp_path: Path) -> None:
    from benchmarks import run
    ceil = {"copy_gbps": 10.0, "matmul_tflops": {"float32": 1.0}}
    base = dict(section="kernels", op="bias_act", shape="s", dtype="float16", **{"pass": "fwd"})
    a = R.document([dict(base, impl="ref", ms=6.0, gbps=1.0)], torch.device("cpu"), ceil, "abc", {"n": 1})
    b = R.document([dict(base, impl="compile", ms=2.0, gbps=3.0)], torch.device("cpu"), ceil, "abc", {"n": 2})
    pa, _ = R.write(a, tmp_path / "a")
    pb, _ = R.write(b, tmp_path / "b")
    assert json.loads(pb.read_text())["rows"][0]["ratio_to_ref"] is None  # no ref in run b alone
    assert run.merge([pa, pb], tmp_path / "m") == 0
    (merged,) = (tmp_path / "m").glob("*.json")
    rows = json.loads(merged.read_text())["rows"]
    assert [(r["impl"], r["ratio_to_ref"]) for r in rows] == [("ref", 1.0), ("compile", 3.0)]
    other = dict(b, device="another device")
    (tmp_path / "o.json").write_text(json.dumps(other))
    assert run.merge([pa, tmp_path / "o.json"], tmp_path / "m2") == 2  # unlike devices: refused
    assert not (tmp_path / "m2").exists()


def _fake_run(root, name, precision, losses):
    run = root / name
    run.mkdir(parents=True)
    # config.json as the training loop writes it (see loop._write_config).
    (run / "config.json").write_text(json.dumps({"train": {"precision": precision}, "model": {}}))
    rows = [{"kimg": 0.5 * (i + 1), "Loss/G/main": g, "Loss/D/main": d} for i, (g, d) in enumerate(losses)]
    (run / "stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_overlay_losses_draws_every_run_and_flags_non_finite(tmp_path, capsys):
    from benchmarks import overlay_losses

    gen = torch.Generator().manual_seed(7)
    vals = (torch.rand(6, 2, generator=gen) + 0.5).tolist()
    a = _fake_run(tmp_path, "00000-a", "fp32", vals)
    b = _fake_run(tmp_path, "00001-b", "fp16", vals[:3])
    out = tmp_path / "overlay.png"
    assert overlay_losses.main([str(a), str(b), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "4 curves from 2 runs" in capsys.readouterr().out
    # Two runs numbered alike in separate --out folders stay two runs, labelled by precision.
    same_a = _fake_run(tmp_path / "fp32", "00000-mni152", "fp32", vals)
    same_b = _fake_run(tmp_path / "bf16", "00000-mni152", "bf16", vals[:4])
    assert overlay_losses.main([str(same_a), str(same_b), "--out", str(out)]) == 0
    assert "4 curves from 2 runs" in capsys.readouterr().out
    assert overlay_losses.unique_labels([same_a, same_b]) == ["fp32 (00000-mni152)", "bf16 (00000-mni152)"]
    assert overlay_losses.unique_labels([same_a, same_a]) == ["fp32 (00000-mni152) in fp32 #1",
                                                              "fp32 (00000-mni152) in fp32 #2"]
    c = _fake_run(tmp_path, "00002-c", "bf16", [(1.0, float("nan")), (1.0, 1.0)])
    assert overlay_losses.main([str(a), str(c), "--out", str(out)]) == 1
    assert "Loss/D/main=nan at 0.5 kimg" in capsys.readouterr().out


def test_profile_steps_quick_reports_every_phase(tmp_path: Path) -> None:
    """benchmarks/profile_steps.py --quick: a report per section, the training phases labelled by
    the step (all six, in the profiled cycle) and an operator table."""
    env = {k: v for k, v in os.environ.items() if k != "STYLEGAN2_OPS_IMPL"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_steps.py"), "--quick", "--out",
                           str(tmp_path), "--impl", "ref"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = (tmp_path / "profile-train-ref-fp32.txt").read_text()
    phases = train[train.index("## Phases"):train.index("## Top")]
    for name in ("Loss/G/main", "Loss/G/reg", "Loss/D/main", "Loss/D/reg", "G_ema", "data"):
        assert f"\n{name} " in phases, (name, phases)
    assert "convolution" in train and "# of Calls" in train
    generate = (tmp_path / "profile-generate-ref-fp32.txt").read_text()
    assert "variant eager" in generate and "convolution" in generate
    assert f"wrote {tmp_path / 'profile-train-ref-fp32.txt'}" in proc.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_steps.py"), "--sections", "fit"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--sections: choose from train, generate" in bad.stderr
