"""Python helpers of `bash tools/gpu_round.sh first` (tools/gpu_round_first.sh).

    python3 tools/gpu_round.py arch                       # "9.0": the visible GPU's capability
    python3 tools/gpu_round.py selfcheck --json F [--cpu-stand-in]
    python3 tools/gpu_round.py opstep [--cpu-stand-in]    # one short fwd+bwd per op (sanitizer)
    python3 tools/gpu_round.py sanitize-verdict LOG RC    # status and note of a memcheck run
    python3 tools/gpu_round.py test-summary XML [--log LOG]
    python3 tools/gpu_round.py bench-note DIR
    python3 tools/gpu_round.py report --work DIR --out DIR [--dry-run]

The shell script owns the time limits; every subcommand here does one bounded job and prints
what it found, so a part cut off by its limit still leaves readable lines in its log.
"--cpu-stand-in" is the dry run's CPU form: where a step would call a kernel (impl='cuda'), the
PyTorch reference stands in, so the same code path runs without a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: import this checkout's packages
    sys.path.insert(0, str(ROOT))

# Every part of the round, in run order; the shell script keeps the same list.
PARTS = ("preflight", "build", "doctor", "tests", "selfcheck", "sanitize", "bench-kernels", "bench-train",
         "bench-gen")
STATUSES = ("ok", "failed", "timeout", "refused", "skipped", "interrupted")
# What comes back from a lent machine: at most 8 files of at most 16 MiB, plain names.
MAX_FILE_BYTES = 16 * 2**20
LOG_CAP_BYTES = 1 * 2**20  # per part inside round.log: ten parts stay far under 16 MiB
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
SELFCHECK_DTYPES = ("float32", "float16", "bfloat16")


# ---------------------------------------------------------------------------------------------
# arch, selfcheck, opstep: the GPU steps (each with a CPU form for the dry run)


def gpu_arch() -> str | None:
    """'major.minor' of the visible GPU (what TORCH_CUDA_ARCH_LIST takes), or None without one."""
    import torch
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return f"{major}.{minor}"


@contextlib.contextmanager
def reference_stands_in() -> Iterator[None]:
    """Every op call that asks for the kernel takes the reference instead (dry run on a CPU).
    Patches the ops' dispatcher for the block only; the self-check tests do the same."""
    from stylegan2_ops import _dispatch
    real = _dispatch.choose
    _dispatch.choose = lambda op, impl, name, tensors, unsupported=None: "ref"
    try:
        yield
    finally:
        _dispatch.choose = real


def run_selfchecks(device: Any, dtypes: Sequence[str]) -> list[dict[str, Any]]:
    """Every registered kernel check (stylegan2_ops._selfcheck) in every dtype, each timed; a
    check that raises is a failure with its first line as the error."""
    import torch

    import stylegan2_ops  # noqa: F401 - importing the ops registers their checks
    from stylegan2_ops import _selfcheck
    results = []
    for kernel in sorted(_selfcheck._CHECKS):
        for name in dtypes:
            t0 = time.perf_counter()
            error = None
            try:
                with torch.inference_mode(False), torch.enable_grad():
                    _selfcheck._CHECKS[kernel](device, getattr(torch, name))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            except Exception as e:  # noqa: BLE001 - every failure is a result to report
                error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            ms = (time.perf_counter() - t0) * 1e3
            results.append({"kernel": kernel, "dtype": name, "ok": error is None, "ms": round(ms, 1),
                            "error": error})
            print(f"selfcheck: {kernel:18s} {name:9s} {'pass' if error is None else 'FAIL'} {ms:8.1f} ms"
                  + (f"  {error}" if error else ""), flush=True)
    return results


def cmd_selfcheck(args: argparse.Namespace) -> int:
    import torch
    device = torch.device("cpu" if args.cpu_stand_in else "cuda")
    if args.cpu_stand_in:
        torch.set_num_threads(1)  # tiny tensors: thread wake-ups cost more than they save on a small VM
    if device.type == "cuda" and not torch.cuda.is_available():
        print("selfcheck: no CUDA GPU visible (the dry run passes --cpu-stand-in)", file=sys.stderr)
        return 2
    with reference_stands_in() if args.cpu_stand_in else contextlib.nullcontext():
        results = run_selfchecks(device, SELFCHECK_DTYPES)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "stand_in": args.cpu_stand_in,
                                               "results": results}, indent=1) + "\n")
    bad = [r for r in results if not r["ok"]]
    print(f"selfcheck: {len(results) - len(bad)}/{len(results)} passed"
          + (" (CPU stand-in: reference vs reference)" if args.cpu_stand_in else ""))
    return 1 if bad else 0


def op_steps(device: Any, dtype: Any, impl: str) -> Iterator[tuple[str, Any]]:
    """(label, thunk) per short forward+backward: every kernel route once (bias_act plain and
    channels_last, the tiled 4-tap up/down/filter paths, the general upfirdn2d kernel, and the
    training and generation routes of modulated_conv2d). Odd sizes reach the tails."""
    import torch

    import stylegan2_ops as ops
    gen = torch.Generator().manual_seed(19)

    def rand(*size: int, dt: Any = dtype) -> Any:
        return torch.randn(*size, generator=gen).to(device, dt)

    def fwd_bwd(fn: Any, *inputs: Any) -> None:
        leaves = [t.detach().requires_grad_(True) for t in inputs]
        y = fn(*leaves)
        grads = torch.autograd.grad(y, leaves, torch.randn(y.shape, generator=gen).to(device, y.dtype))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        for t in (y, *grads):
            if not torch.isfinite(t).all():
                raise AssertionError("non-finite values in the output or a gradient")

    f4 = ops.setup_filter([1, 3, 3, 1], device=device)
    f5 = ops.setup_filter([1, 4, 6, 4, 1], device=device)
    x = rand(3, 13, 7, 9)
    yield "bias_act lrelu clamp", lambda: fwd_bwd(
        lambda a, b: ops.bias_act(a, b, act="lrelu", clamp=256.0, impl=impl), x, rand(13))
    yield "bias_act channels_last swish", lambda: fwd_bwd(
        lambda a, b: ops.bias_act(a, b, act="swish", impl=impl), x.to(memory_format=torch.channels_last), rand(13))
    img = rand(2, 5, 9, 11)
    yield "upsample2d", lambda: fwd_bwd(lambda a: ops.upsample2d(a, f4, impl=impl), img)
    yield "downsample2d", lambda: fwd_bwd(lambda a: ops.downsample2d(a, f4, impl=impl), img)
    yield "filter2d", lambda: fwd_bwd(lambda a: ops.filter2d(a, f4, impl=impl), img)
    yield "upfirdn2d general", lambda: fwd_bwd(
        lambda a: ops.upfirdn2d(a, f5, up=3, down=2, padding=[2, -1, 0, 3], impl=impl), img)
    w, s, b = rand(6, 5, 3, 3, dt=torch.float32), rand(2, 5, dt=torch.float32) + 1, rand(6)
    for up in (1, 2):
        for fused in (False, True):
            noise = rand(2, 1, 9 * up, 11 * up)
            yield f"modulated_conv2d up={up} fused={fused}", lambda up=up, fused=fused, noise=noise: fwd_bwd(
                lambda a, ww, ss: ops.modulated_conv2d(
                    a, ww, ss, noise=noise, up=up, padding=1, resample_filter=f4, flip_weight=(up == 1),
                    fused_modconv=fused, impl=impl, bias=b, act="lrelu", clamp=256.0), img, w, s)


def cmd_opstep(args: argparse.Namespace) -> int:
    import torch
    if args.cpu_stand_in:
        # bfloat16, not float16: CPU half convolutions are erratic (see benchmarks/shapes.py).
        device, impl, dtypes = torch.device("cpu"), "ref", (torch.float32, torch.bfloat16)
        torch.set_num_threads(1)  # tiny tensors: see cmd_selfcheck
    else:
        if not torch.cuda.is_available():
            print("opstep: no CUDA GPU visible (the dry run passes --cpu-stand-in)", file=sys.stderr)
            return 2
        device, impl, dtypes = torch.device("cuda"), "cuda", (torch.float32, torch.float16)
    failed = 0
    for dtype in dtypes:
        for label, thunk in op_steps(device, dtype, impl):
            try:
                thunk()
                print(f"opstep: {label} {dtype} ok", flush=True)
            except Exception as e:  # noqa: BLE001 - report every op, not only the first failure
                failed += 1
                print(f"opstep: {label} {dtype} FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
    print(f"opstep: {'all ops ran' if not failed else f'{failed} steps failed'} (impl={impl}, {device})")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# sanitize-verdict


def sanitize_verdict(log: str, rc: int) -> tuple[str, str]:
    """(status, note) of a `compute-sanitizer --tool memcheck --error-exitcode 99` run over opstep.
    'refused': the tool could not run on this machine (seen on gVisor: "Device not supported")."""
    summary = re.search(r"ERROR SUMMARY: (\d+) errors?", log)
    steps = len(re.findall(r"^opstep: .* ok$", log, flags=re.M))
    refusal = re.search(r"(Device not supported|Target application terminated before first instrumented API call"
                        r"|unrecognized option|Permission denied|error 999)[^\n]*", log)
    if summary is None and (refusal or rc not in (0, 99)):
        why = refusal.group(0) if refusal else f"exit code {rc} before any report"
        return "refused", f"compute-sanitizer could not run here: {why.strip()[:200]}"
    errors = int(summary.group(1)) if summary else 0
    if errors or rc == 99:
        return "failed", f"memcheck: {errors} errors (see round.log); {steps} steps ran"
    if rc != 0:
        return "failed", f"memcheck clean but the op steps failed (exit code {rc}); {steps} steps ran"
    if "no memory checker ran" in log:  # the dry run's stand-in (tools/gpu_round_first.sh)
        return "ok", f"dry run: no memory checker; {steps} op steps ran on the CPU references"
    return "ok", f"memcheck: 0 errors over {steps} op steps"


def cmd_sanitize_verdict(args: argparse.Namespace) -> int:
    status, note = sanitize_verdict(Path(args.log).read_text(errors="replace"), args.rc)
    print(f"{status}\t{note}")
    return 0


# ---------------------------------------------------------------------------------------------
# test-summary


def _file_of(classname: str) -> str:
    """'tests.test_x.TestY' -> 'tests/test_x.py' (the module is the first 'test_*' component)."""
    parts = classname.split(".")
    for i, p in enumerate(parts):
        if p.startswith("test_") or p.endswith("_test"):
            return "/".join(parts[: i + 1]) + ".py"
    return classname or "(collection)"


def results_from_xml(path: Path) -> dict[str, Counter]:
    """Per test file: passed / failed / errors / skipped counts and seconds, from JUnit XML."""
    per: dict[str, Counter] = defaultdict(Counter)
    for case in ET.parse(path).getroot().iter("testcase"):
        c = per[_file_of(case.get("classname", ""))]
        kinds = {child.tag for child in case}
        if "failure" in kinds:
            c["failed"] += 1
        elif "error" in kinds:
            c["errors"] += 1
        elif "skipped" in kinds:
            c["skipped"] += 1
        else:
            c["passed"] += 1
        c["ms"] += int(float(case.get("time", "0") or 0) * 1e3)
    return per


_LOG_WORDS = {"PASSED": "passed", "FAILED": "failed", "ERROR": "errors", "SKIPPED": "skipped",
              "XFAIL": "skipped", "XPASS": "passed"}


def results_from_log(text: str) -> dict[str, Counter]:
    """The same counts from pytest -v lines (plain or pytest-xdist), for a run killed before it
    wrote its XML."""
    per: dict[str, Counter] = defaultdict(Counter)
    plain = re.compile(r"^(tests/\S+?\.py)::\S.*? (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", re.M)
    xdist = re.compile(r"^\[gw\d+\] \[\s*\d+%\] (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (tests/\S+?\.py)::", re.M)
    for m in plain.finditer(text):
        per[m.group(1)][_LOG_WORDS[m.group(2)]] += 1
    for m in xdist.finditer(text):
        per[m.group(2)][_LOG_WORDS[m.group(1)]] += 1
    return per


def selected_count(text: str) -> int | None:
    """How many tests the run selected, from pytest's header (plain or pytest-xdist)."""
    m = re.search(r"(\d+) selected", text) or re.search(r"workers? \[(\d+) items?\]", text) \
        or re.search(r"collected (\d+) items?\s*$", text, flags=re.M)
    return int(m.group(1)) if m else None


def per_file_lines(xml: Path | None, log_text: str) -> tuple[list[str], str]:
    """(one line per test file, a one-line total) from the XML, else from the log."""
    source = "XML"
    if xml is not None and xml.exists() and xml.stat().st_size:
        try:
            per = results_from_xml(xml)
        except ET.ParseError:
            per, source = results_from_log(log_text), "log (the XML did not parse)"
    else:
        per, source = results_from_log(log_text), "log (no XML: the run was cut off)"
    lines, total = [], Counter()
    for name in sorted(per):
        c = per[name]
        total.update(c)
        secs = f" in {c['ms'] / 1e3:.1f} s" if source == "XML" else ""
        lines.append(f"{name}: {c['passed']} passed, {c['failed']} failed, {c['errors']} errors, "
                     f"{c['skipped']} skipped{secs}")
    done = sum(total[k] for k in ("passed", "failed", "errors", "skipped"))
    want = selected_count(log_text)
    missing = f", {want - done} not run" if want is not None and want > done else ""
    summary = (f"{total['passed']} passed, {total['failed']} failed, {total['errors']} errors, "
               f"{total['skipped']} skipped{missing} (from the {source})")
    return lines, summary


def cmd_test_summary(args: argparse.Namespace) -> int:
    log_text = Path(args.log).read_text(errors="replace") if args.log and Path(args.log).exists() else ""
    lines, summary = per_file_lines(Path(args.xml), log_text)
    for line in lines:
        print(line)
    print(f"total: {summary}")
    return 0


# ---------------------------------------------------------------------------------------------
# bench-note


def bench_note(folder: Path) -> str:
    docs = sorted(folder.glob("*.json"))
    if not docs:
        return "no results file (cut off before its first row was written)"
    doc = json.loads(docs[-1].read_text())
    rows = doc.get("rows", [])
    timed = sum(1 for r in rows if r.get("ms") is not None)
    errors = sum(1 for r in rows if str(r.get("note", "")).startswith("error"))
    not_run = doc.get("settings", {}).get("not_run") or 0
    note = f"{len(rows)} rows, {timed} timed"
    if errors:
        note += f", {errors} error rows"
    if not_run:
        note += f"; --time-limit left {not_run} tasks not run"
    return note


def cmd_bench_note(args: argparse.Namespace) -> int:
    print(bench_note(Path(args.folder)))
    return 0


# ---------------------------------------------------------------------------------------------
# report


def read_parts(path: Path) -> dict[str, dict[str, Any]]:
    """parts.tsv (name, status, rc, seconds, limit, note per line) -> by name; later lines win."""
    parts: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            cells = line.split("\t")
            if len(cells) >= 6:
                name, status, rc, secs, limit, note = cells[:6]
                parts[name] = {"status": status, "rc": rc, "seconds": secs, "limit": limit, "note": note}
    return parts


def capped(text: str, cap: int = LOG_CAP_BYTES) -> str:
    """Head and tail of a long log: the start says what ran, the end how it finished."""
    data = text.encode(errors="replace")
    if len(data) <= cap:
        return text
    head, tail = data[: cap // 4], data[-(cap - cap // 4):]
    return (head.decode(errors="replace") + f"\n[... {len(data) - cap} bytes cut by the round ...]\n"
            + tail.decode(errors="replace"))


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.0f}" if abs(v) >= 10 ** digits else f"{v:.{digits}g}"  # 2560 img/s, not 2.56e+03
    return str(v)


def headline(doc: dict[str, Any]) -> list[str]:
    """The numbers the round is for, in a few lines: train and generate img/s kernels vs
    references, and per op how the kernels compare with the references."""
    rows = doc.get("rows", [])
    lines = []
    for r in rows:
        if r.get("section") == "train" and r.get("img_per_s") is not None:
            lines.append(f"- train {r['dtype']}, impl {r['impl']}: {_fmt(r['img_per_s'])} img/s "
                         f"({_fmt(r.get('ms'))} ms/step), vs ref {_fmt(r.get('ratio_to_ref'))}x")
    gen = [r for r in rows if r.get("section") == "generate" and r.get("img_per_s") is not None]
    for policy, shape in sorted({(r["dtype"], r["shape"]) for r in gen}):
        group = [r for r in gen if r["dtype"] == policy and r["shape"] == shape]
        picks = [("eager", next((r for r in group if r["impl"] == name), None)) for name in ("cuda", "ref")]
        speedups = [r for r in group if r["impl"].startswith("cuda+")]
        picks.append(("best speedup", max(speedups, key=lambda r: r["img_per_s"], default=None)))
        for label, r in picks:
            if r is not None:
                lines.append(f"- generate {shape.split(' ')[0]} {policy}, {label} ({r['impl']}): "
                             f"{_fmt(r['img_per_s'])} img/s, vs eager ref {_fmt(r.get('ratio_to_ref'))}x")
    by_op: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r.get("section") == "kernels" and r.get("impl") == "cuda" and r.get("ratio_to_ref"):
            by_op[f"{r['op']} {r.get('pass') or ''}".strip()].append(r["ratio_to_ref"])
    for op, ratios in by_op.items():
        gm = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        lines.append(f"- kernels {op}: cuda vs ref over {len(ratios)} shapes: geometric mean {gm:.3g}x, "
                     f"worst {min(ratios):.3g}x, best {max(ratios):.3g}x")
    return lines or ["- no timed rows (see the parts above)"]


def stub_results(out: Path, work: Path, sections_missing: str) -> Path:
    """A results JSON in the SPEC's format with no rows, when no benchmark part wrote one: the
    round's JSON always exists and says why it is empty."""
    try:
        import torch
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        versions = {"torch": torch.__version__, "cuda": torch.version.cuda if torch.cuda.is_available() else None}
    except Exception:  # noqa: BLE001 - the stub must be written even when torch is broken
        device, versions = "unknown", {"torch": None, "cuda": None}
    from benchmarks import report as R
    now = _dt.datetime.now(_dt.timezone.utc)
    commit = (work / "commit").read_text().strip() if (work / "commit").exists() else "unknown"
    doc = {"date": now.strftime("%Y-%m-%d"), "time_utc": now.strftime("%H:%M:%S"), "device": device, **versions,
           "commit": commit or "unknown", "ceilings": {}, "settings": {"note": sections_missing}, "rows": []}
    jpath, _ = R.write(doc, out)
    return jpath


def safe_names(out: Path) -> list[str]:
    """Renames files whose names the device tool would not bring back (only letters, digits, '.',
    '_' and '-' travel; a '+dirty' commit in a results name would not); returns the notes."""
    notes = []
    for p in sorted(out.iterdir()):
        if p.is_file() and SAFE_NAME.search(p.name):
            new = p.with_name(SAFE_NAME.sub("-", p.name))
            p.rename(new)
            notes.append(f"renamed {p.name} -> {new.name}")
    return notes


def size_guard(out: Path) -> list[str]:
    """Cuts any file over the device tool's 16 MiB to its head and tail (text) so it still comes back."""
    notes = []
    for p in sorted(out.iterdir()):
        if p.is_file() and p.stat().st_size > MAX_FILE_BYTES:
            p.write_text(capped(p.read_text(errors="replace"), MAX_FILE_BYTES - 2**20))
            notes.append(f"cut {p.name} to {p.stat().st_size} bytes")
    return notes


def write_report(work: Path, out: Path, dry_run: bool, total_limit: str = "",
                 start_ms: int | None = None) -> tuple[Path, int]:
    """round-summary.md and round.log in `out` (plus a stub results JSON if the benchmarks wrote
    none); returns the summary's path and the exit code the round should end with."""
    parts = read_parts(work / "parts.tsv")
    logs = work / "logs"
    fixes = safe_names(out)  # first, so the summary names the files as they come back
    results = sorted(p for p in out.glob("*.json"))
    if not results:
        states = ", ".join(f"{n} {parts.get(n, {}).get('status', 'not reached')}"
                           for n in ("bench-kernels", "bench-train", "bench-gen"))
        results = [stub_results(out, work, f"no benchmark rows ({states})")]
    doc = json.loads(results[0].read_text())

    # round.log: the progress lines, then every part's log under a header, each capped.
    chunks = []
    if (work / "progress.log").exists():
        chunks.append("===== progress =====\n" + (work / "progress.log").read_text(errors="replace"))
    for name in (*PARTS, "merge"):
        path = logs / f"{name}.log"
        if path.exists():
            p = parts.get(name, {})
            chunks.append(f"===== {name}: {p.get('status', '-')} ({p.get('seconds', '-')} s of "
                          f"{p.get('limit', '-')} s) =====\n" + capped(path.read_text(errors="replace")))
    (out / "round.log").write_text("\n".join(chunks) + "\n")

    tests_log = (logs / "tests.log").read_text(errors="replace") if (logs / "tests.log").exists() else ""
    xml = out / "cuda-tests.xml"
    now = _dt.datetime.now(_dt.timezone.utc)
    wall = f"{time.time() - start_ms / 1e3:.1f}" if start_ms else "-"
    bad = [n for n in PARTS if parts.get(n, {}).get("status") in ("failed", "timeout", "interrupted")]
    lines = [
        f"# GPU round 'first': {now:%Y-%m-%d %H:%M} UTC",
        "",
        f"- mode: {'dry run on the CPU (tiny shapes, 30 s per part)' if dry_run else 'GPU'}",
        f"- device: {doc.get('device')}; torch {doc.get('torch')}, CUDA {doc.get('cuda') or '-'}; "
        f"commit {doc.get('commit')}",
        f"- wall time: {wall} s (limit {total_limit or '-'} s)",
        f"- result: {'every part ok or skipped' if not bad else 'not ok: ' + ', '.join(bad)}",
        "",
        "## Parts",
        "",
        "| part | status | seconds | limit | note |",
        "|---|---|---|---|---|",
    ]
    for name in PARTS:
        p = parts.get(name, {"status": "skipped", "seconds": "-", "limit": "-", "note": "never reached"})
        lines.append(f"| {name} | {p['status']} | {p['seconds']} | {p['limit']} | {p['note'].replace('|', '/')} |")

    lines += ["", "## Tests (`cuda` marker), per file", ""]
    if "tests" in parts and parts["tests"]["status"] != "skipped":
        per_file, total = per_file_lines(xml, tests_log)
        lines += [f"- {t}" for t in per_file] + [f"- total: {total}"]
    else:
        lines.append("- not run")

    lines += ["", "## Kernel self-check", ""]
    sc = work / "selfcheck.json"
    if sc.exists():
        got = json.loads(sc.read_text())
        if got.get("stand_in"):
            lines.append("(dry run: the reference stood in for the kernels)")
            lines.append("")
        lines += ["| kernel | " + " | ".join(SELFCHECK_DTYPES) + " |", "|---|" + "---|" * len(SELFCHECK_DTYPES)]
        table: dict[str, dict[str, str]] = defaultdict(dict)
        for r in got["results"]:
            table[r["kernel"]][r["dtype"]] = "pass" if r["ok"] else f"FAIL: {r['error']}"
        for kernel, cells in sorted(table.items()):
            lines.append(f"| {kernel} | " + " | ".join(cells.get(d, "-").replace("|", "/") for d in SELFCHECK_DTYPES) + " |")
    else:
        lines.append("- no results (see the selfcheck part)")

    lines += ["", "## Headline numbers", ""] + headline(doc)
    lines += ["", "## Files", "",
              f"- `{results[0].name}` (+ `.md` twin): the benchmark rows in the SPEC's format; commit both "
              "under benchmarks/results/",
              "- `cuda-tests.xml`: JUnit XML of the `cuda` tests" + ("" if xml.exists() else " (not written)"),
              "- `round.log`: every part's log (each capped at 1 MiB, head and tail)",
              "- `round-summary.md`: this file"]

    failing = [n for n in bad if (logs / f"{n}.log").exists()]
    if failing:
        lines += ["", "## Last lines of the parts that did not pass"]
        for name in failing:
            tail = [t[:300] for t in (logs / f"{name}.log").read_text(errors="replace").splitlines()[-15:]]
            lines += ["", f"### {name}", "", "```", *tail, "```"]
    notes = fixes + size_guard(out)
    if notes:
        lines += ["", "## Output fixes", ""] + [f"- {n}" for n in notes]
    summary = out / "round-summary.md"
    summary.write_text("\n".join(lines) + "\n")
    return summary, 1 if bad else 0


def cmd_report(args: argparse.Namespace) -> int:
    summary, code = write_report(Path(args.work), Path(args.out), args.dry_run, args.total_limit, args.start_ms)
    print(summary.read_text())
    return code


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/gpu_round.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("arch", help="print the visible GPU's compute capability (exit 1 without a GPU)")
    s = sub.add_parser("selfcheck", help="every kernel's self-check in float32, float16 and bfloat16")
    s.add_argument("--json", help="write the results here")
    s.add_argument("--cpu-stand-in", action="store_true", help="run on the CPU, the reference in the kernels' place")
    s = sub.add_parser("opstep", help="one short forward+backward per op route (for compute-sanitizer)")
    s.add_argument("--cpu-stand-in", action="store_true", help="run on the CPU with the references")
    s = sub.add_parser("sanitize-verdict", help="status<TAB>note of a compute-sanitizer log")
    s.add_argument("log")
    s.add_argument("rc", type=int)
    s = sub.add_parser("test-summary", help="one line per test file from JUnit XML (or the -v log)")
    s.add_argument("xml")
    s.add_argument("--log", help="the pytest -v output, for counts when the XML is missing")
    s = sub.add_parser("bench-note", help="a one-line note on a benchmarks/run.py output folder")
    s.add_argument("folder")
    s = sub.add_parser("report", help="round-summary.md, round.log and the exit code of the round")
    s.add_argument("--work", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--total-limit", default="")
    s.add_argument("--start-ms", type=int, default=None, help="the round's start, ms since the epoch")
    args = p.parse_args(argv)
    if args.command == "arch":
        arch = gpu_arch()
        if arch is None:
            print("arch: no CUDA GPU visible", file=sys.stderr)
            return 1
        print(arch)
        return 0
    return {"selfcheck": cmd_selfcheck, "opstep": cmd_opstep, "sanitize-verdict": cmd_sanitize_verdict,
            "test-summary": cmd_test_summary, "bench-note": cmd_bench_note, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
