"""`bash tools/gpu_round.sh first`: the dry run on the CPU leaves every file a lent GPU's call
would bring back, a part past its limit is recorded as timed out while the round goes on, and
the helpers read pytest's and compute-sanitizer's output right."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_round.sh"
SPEC_KEYS = {"date", "device", "torch", "cuda", "commit", "rows"}
ROW_KEYS = {"section", "op", "shape", "dtype", "impl", "ms", "pct_of_peak", "ratio_to_ref"}

needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def load_helpers():
    spec = importlib.util.spec_from_file_location("gpu_round_helpers", ROOT / "tools" / "gpu_round.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


H = load_helpers()


def round_env(**extra: str) -> dict[str, str]:
    """This process's environment without the round's own switches, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_ROUND_") and k != "OUT"}
    env.update(extra)
    return env


def first(out: Path, *args: str, timeout: float = 200, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "first", "--dry-run-cpu", "--out", str(out), *args],
                          cwd=ROOT, env=round_env(**env), capture_output=True, text=True, timeout=timeout)


def part_table(summary: str) -> dict[str, tuple[str, str]]:
    """round-summary.md's parts table: part -> (status, note)."""
    rows = re.findall(r"^\| ([a-z-]+) \| ([a-z]+) \| [^|]* \| [^|]* \| (.*) \|$", summary, flags=re.M)
    return {name: (status, note) for name, status, note in rows if name != "part"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run of the parts that cost little on 2 cores (the whole round is CI's job: about
    80 s here): the build command, the cuda test selection (all skip) and the kernel rows."""
    out = tmp_path_factory.mktemp("round")
    # The tests part gets 60 s instead of 30: collecting the suite took 22 s here while other jobs
    # shared the 2 cores, and this test is about the files, not the budget.
    done = first(out, "--only", "build,tests,bench-kernels", GPU_ROUND_LIMIT_TESTS="60")
    return out, done


@pytest.mark.slow
@needs_bash
def test_dry_run_leaves_every_file(dry_run):
    out, done = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert len(names) <= 8, "the device tool brings back at most 8 files"
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names), names
    assert all((out / n).stat().st_size <= 16 * 2**20 for n in names)
    for name in ("round-summary.md", "round.log", "cuda-tests.xml"):
        assert name in names
    (result,) = [n for n in names if n.endswith(".json")]
    assert result.replace(".json", ".md") in names, "the results' markdown twin"

    doc = json.loads((out / result).read_text())
    assert SPEC_KEYS <= set(doc)
    assert doc["rows"] and {r["section"] for r in doc["rows"]} == {"kernels"}
    for row in doc["rows"]:
        assert ROW_KEYS <= set(row) and ("gbps" in row or "tflops" in row), row
    assert any(r["impl"] == "ref" and r["ms"] for r in doc["rows"])
    assert any(r["impl"] == "cuda" and r["ms"] is None and "skipped" in r["note"] for r in doc["rows"])


@pytest.mark.slow
@needs_bash
def test_dry_run_summary_lists_every_part(dry_run):
    out, _ = dry_run
    summary = (out / "round-summary.md").read_text()
    parts = part_table(summary)
    assert list(parts) == list(H.PARTS)
    assert all(status in H.STATUSES for status, _ in parts.values())
    for name in ("build", "tests", "bench-kernels"):
        assert parts[name][0] == "ok", (name, parts[name])
    assert parts["doctor"] == ("skipped", "not selected (--only/--skip)")
    assert "pip --dry-run ok" in parts["build"][1]
    # One line per test file: every cuda test skips on the CPU.
    assert re.search(r"^- tests/test_bias_act\.py: 0 passed, 0 failed, 0 errors, \d+ skipped", summary, flags=re.M)
    assert "- kernels " not in summary or "cuda vs ref" in summary
    log = (out / "round.log").read_text()
    for name in ("build", "tests", "bench-kernels"):
        assert f"===== {name}: ok" in log
    xml = (out / "cuda-tests.xml").read_text()
    assert "<testcase" in xml and "skipped" in xml


@pytest.mark.slow
@needs_bash
def test_part_past_its_limit_is_timed_out_and_the_round_goes_on(tmp_path):
    """The op steps under the sanitizer's stand-in run after the cut-off tests."""
    done = first(tmp_path, "--only", "tests,sanitize", GPU_ROUND_LIMIT_TESTS="2")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    parts = part_table((tmp_path / "round-summary.md").read_text())
    assert parts["tests"][0] == "timeout" and "cut off at its 2 s limit" in parts["tests"][1]
    assert parts["sanitize"] == ("ok", "dry run: no memory checker; 20 op steps ran on the CPU references")
    assert "result: not ok: tests" in (tmp_path / "round-summary.md").read_text()
    # No benchmark ran, yet the results JSON exists, in the SPEC's format, with no rows.
    (result,) = tmp_path.glob("*.json")
    doc = json.loads(result.read_text())
    assert SPEC_KEYS <= set(doc) and doc["rows"] == []
    log = (tmp_path / "round.log").read_text()
    assert "===== tests: timeout" in log
    assert "opstep: modulated_conv2d up=2 fused=True torch.bfloat16 ok" in log


@needs_bash
def test_a_part_without_enough_time_left_is_skipped(tmp_path):
    """40 s in all is what the merge and the report keep: no part may start, each says why."""
    done = first(tmp_path, "--only", "build,selfcheck", GPU_ROUND_TOTAL="40")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    parts = part_table((tmp_path / "round-summary.md").read_text())
    for name in ("build", "selfcheck"):
        assert parts[name][0] == "skipped" and parts[name][1].startswith("not enough time left"), parts[name]
    assert (tmp_path / "round.log").exists() and list(tmp_path.glob("*.json"))


@needs_bash
@pytest.mark.parametrize("args, env, message", [
    (["--only", "bench"], {}, "no part named 'bench'"),
    (["--frobnicate"], {}, "unknown argument '--frobnicate'"),
    (["--out"], {}, "--out needs a folder"),
    ([], {"GPU_ROUND_LIMIT_BUILD": "soon"}, "GPU_ROUND_LIMIT_BUILD must be a whole number of seconds"),
    ([], {"GPU_ROUND_TOTAL": "0"}, "GPU_ROUND_TOTAL must be a whole number of seconds"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, args, env, message):
    done = first(tmp_path / "o", *args, timeout=30, **env)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "o").exists(), "nothing is written for bad arguments"


@needs_bash
def test_without_a_gpu_the_real_round_refuses_at_once(tmp_path):
    if subprocess.run("nvidia-smi -L", shell=True, capture_output=True).returncode == 0:
        pytest.skip("a GPU is visible here")
    done = subprocess.run(["bash", str(SCRIPT), "first", "--out", str(tmp_path)], cwd=ROOT, env=round_env(),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--dry-run-cpu" in done.stderr and done.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# The helpers, on canned output


def test_sanitize_verdicts():
    steps = "opstep: bias_act lrelu clamp torch.float32 ok\nopstep: filter2d torch.float16 ok\n"
    assert H.sanitize_verdict(steps + "========= ERROR SUMMARY: 0 errors\n", 0) == (
        "ok", "memcheck: 0 errors over 2 op steps")
    status, note = H.sanitize_verdict(steps + "========= Invalid __global__ read of size 16 bytes\n"
                                      "========= ERROR SUMMARY: 3 errors\n", 99)
    assert status == "failed" and "3 errors" in note
    status, note = H.sanitize_verdict("========= Error: Device not supported\n", 1)
    assert status == "refused" and "Device not supported" in note
    status, note = H.sanitize_verdict(steps + "Traceback ...\n========= ERROR SUMMARY: 0 errors\n", 1)
    assert status == "failed" and "op steps failed" in note


def test_counts_from_the_log_when_the_xml_is_missing(tmp_path):
    log = "\n".join([
        "collected 1354 items / 988 deselected / 366 selected",
        "tests/test_bias_act.py::test_a[float16] PASSED                   [  1%]",
        "tests/test_bias_act.py::test_b SKIPPED (no CUDA GPU visible)     [  2%]",
        "[gw3] [ 40%] FAILED tests/test_upfirdn2d_cuda.py::test_c[2-1] ",
        "[gw0] [ 41%] PASSED tests/test_upfirdn2d_cuda.py::TestX::test_d ",
    ])
    lines, total = H.per_file_lines(tmp_path / "missing.xml", log)
    assert lines == ["tests/test_bias_act.py: 1 passed, 0 failed, 0 errors, 1 skipped",
                     "tests/test_upfirdn2d_cuda.py: 1 passed, 1 failed, 0 errors, 0 skipped"]
    assert total.startswith("2 passed, 1 failed, 0 errors, 1 skipped, 362 not run")
    assert H.selected_count("8 workers [366 items]") == 366


def test_counts_from_junit_xml(tmp_path):
    xml = tmp_path / "t.xml"
    xml.write_text(
        '<testsuites><testsuite name="cuda-tests">'
        '<testcase classname="tests.test_bias_act" name="a" time="0.5"/>'
        '<testcase classname="tests.test_bias_act" name="b" time="0.25"><skipped message="x"/></testcase>'
        '<testcase classname="tests.test_upfirdn2d_cuda.TestTiles" name="c" time="1"><failure message="y"/></testcase>'
        '<testcase classname="tests.test_sampling" name="d" time="2"><error message="z"/></testcase>'
        "</testsuite></testsuites>")
    lines, total = H.per_file_lines(xml, "")
    assert lines == ["tests/test_bias_act.py: 1 passed, 0 failed, 0 errors, 1 skipped in 0.8 s",
                     "tests/test_sampling.py: 0 passed, 0 failed, 1 errors, 0 skipped in 2.0 s",
                     "tests/test_upfirdn2d_cuda.py: 0 passed, 1 failed, 0 errors, 0 skipped in 1.0 s"]
    assert total == "1 passed, 1 failed, 1 errors, 1 skipped (from the XML)"


def test_outputs_are_made_fit_to_travel(tmp_path):
    (tmp_path / "2026-12-01-nvidia-h200-abc1234+dirty.json").write_text("{}")
    big = tmp_path / "round.log"
    big.write_text("start\n" + "x" * (17 * 2**20) + "\nend\n")
    assert H.safe_names(tmp_path) == ["renamed 2026-12-01-nvidia-h200-abc1234+dirty.json -> "
                                      "2026-12-01-nvidia-h200-abc1234-dirty.json"]
    assert H.size_guard(tmp_path) and big.stat().st_size <= H.MAX_FILE_BYTES
    text = big.read_text()
    assert text.startswith("start") and text.endswith("end\n") and "bytes cut by the round" in text


def test_headline_numbers():
    rows = [
        {"section": "train", "op": "train_step", "shape": "32x1x256x256 G+D step", "dtype": "fp16 in 4 top res",
         "impl": "cuda", "ms": 100.0, "img_per_s": 320.0, "ratio_to_ref": 2.5},
        {"section": "generate", "op": "G.forward", "shape": "256x1x256x256 G forward", "dtype": "fp16",
         "impl": "ref", "ms": 400.0, "img_per_s": 640.0, "ratio_to_ref": 1.0},
        {"section": "generate", "op": "G.forward", "shape": "256x1x256x256 G forward", "dtype": "fp16",
         "impl": "cuda", "ms": 200.0, "img_per_s": 1280.0, "ratio_to_ref": 2.0},
        {"section": "generate", "op": "G.forward", "shape": "256x1x256x256 G forward", "dtype": "fp16",
         "impl": "cuda+cudagraph", "ms": 100.0, "img_per_s": 2560.0, "ratio_to_ref": 4.0},
        {"section": "kernels", "op": "bias_act", "pass": "fwd", "impl": "cuda", "ratio_to_ref": 2.0},
        {"section": "kernels", "op": "bias_act", "pass": "fwd", "impl": "cuda", "ratio_to_ref": 8.0},
    ]
    lines = H.headline({"rows": rows})
    assert "- train fp16 in 4 top res, impl cuda: 320 img/s (100 ms/step), vs ref 2.5x" in lines
    assert "- generate 256x1x256x256 fp16, best speedup (cuda+cudagraph): 2560 img/s, vs eager ref 4x" in lines
    assert "- kernels bias_act fwd: cuda vs ref over 2 shapes: geometric mean 4x, worst 2x, best 8x" in lines
    assert H.headline({"rows": []}) == ["- no timed rows (see the parts above)"]
