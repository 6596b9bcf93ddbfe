"""Where the time goes: torch.profiler over whole training steps and generation batches.

    python benchmarks/profile_steps.py                          # GPU: gpu256 training cycle + generation
    python benchmarks/profile_steps.py --quick --out /tmp/prof  # toy sizes on a CPU (what the tests run)
    python benchmarks/profile_steps.py --impl ref --precision fp32 --sections train

run.py says how fast; this says why. For each section it writes a text report with
  - the training phases (G main, path length, D main, R1, G_ema, data), by device time: the
    training step labels them with torch.profiler.record_function;
  - the top operators and kernels by self device time (self CPU time on a CPU), with call counts,
    which show what dominates: cuDNN convolutions, the project's kernels, copies, launches.
Warm-up steps run first (kernel loading, self-checks, cuDNN autotuning), then the profiled ones.
--trace also writes a Chrome trace per section (chrome://tracing or Perfetto).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from benchmarks import generate as G  # noqa: E402
from benchmarks import train as T  # noqa: E402
from benchmarks.report import device_name  # noqa: E402
from benchmarks.timing import synchronize  # noqa: E402

SECTIONS = ("train", "generate")


def _device_key(device: torch.device) -> str:
    return "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"


def run_profiled(fn: Callable[[], Any], device: torch.device, *, warmup: int, steps: int) -> Any:
    """`warmup` untimed calls of fn, then `steps` calls under the profiler; returns the profile."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        synchronize(device)
    return prof


def phase_table(prof: Any, device: torch.device, steps: int) -> str:
    """One line per labelled phase: calls, total ms, ms per step (device time on a GPU)."""
    rows = []
    for e in prof.key_averages():
        if not e.key.startswith("phase "):
            continue
        total_us = e.device_time_total if device.type == "cuda" else e.cpu_time_total
        # A label shows up once on the host side and once as a GPU annotation; keep the larger.
        rows.append((e.key, e.count, total_us))
    merged: dict[str, tuple[int, float]] = {}
    for key, count, us in rows:
        c0, u0 = merged.get(key, (0, 0.0))
        merged[key] = (max(c0, count), max(u0, us))
    if not merged:
        return "(no labelled phases)\n"
    lines = [f"{'phase':40s} {'calls':>6s} {'total ms':>10s} {'ms/step':>9s} {'share':>6s}"]
    whole = sum(us for _, us in merged.values()) or 1.0
    for key, (count, us) in sorted(merged.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"{key[6:][:40]:40s} {count:6d} {us / 1e3:10.2f} {us / 1e3 / steps:9.2f} {us / whole:6.1%}")
    return "\n".join(lines) + "\n"


def report(title: str, prof: Any, device: torch.device, steps: int, rows: int) -> str:
    table = prof.key_averages().table(sort_by=_device_key(device), row_limit=rows, max_name_column_width=70)
    timing = "device" if device.type == "cuda" else "CPU"
    return (f"# {title}\n\n## Phases ({timing} time, {steps} profiled steps)\n\n{phase_table(prof, device, steps)}\n"
            f"## Top {rows} operators and kernels by self {timing} time\n\n{table}\n")


def profile_train(args: argparse.Namespace) -> tuple[str, Any]:
    setup = T.make_setup(args.quick, args.precision, args.device, args.channels_last)
    api = T.training_api()
    with T.ops_impl("auto" if args.impl == "cuda" else "ref"):
        run = T._new_run(setup, args.device)
        acc = api.StatsAccumulator()
        steps = args.steps or setup.cycle
        prof = run_profiled(lambda: api.train_step(run, acc), args.device, warmup=setup.cycle, steps=steps)
    cfg = setup.cfg
    title = (f"train_step, {cfg.batch}x{cfg.channels}x{cfg.resolution}x{cfg.resolution}, precision {args.precision}, "
             f"impl {args.impl}{', channels_last' if args.channels_last else ''}, on {device_name(args.device)}")
    return report(title, prof, args.device, steps, args.rows), prof


def profile_generate(args: argparse.Namespace) -> tuple[str, Any]:
    from stylegan2.sampling import Sampler
    Gen = G.build_generator(args.quick, args.precision, args.device)
    options = G.parse_variant(args.gen_variant)
    batch = args.batch or (8 if args.quick else 64)
    z = torch.randn(batch, Gen.z_dim, device=args.device)
    with T.ops_impl("auto" if args.impl == "cuda" else "ref"):
        sampler = Sampler(Gen, compile_backend="aot_eager" if args.quick else "inductor", **options)
        steps = args.steps or 10
        prof = run_profiled(lambda: sampler(z), args.device, warmup=3, steps=steps)
    cfg = Gen.cfg
    title = (f"generation, {batch}x{cfg.channels}x{cfg.resolution}x{cfg.resolution}, precision {args.precision}, "
             f"impl {args.impl}, variant {args.gen_variant}, on {device_name(args.device)}")
    return report(title, prof, args.device, steps, args.rows), prof


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="toy sizes (the tiny preset), for CPUs and tests")
    p.add_argument("--sections", default="train,generate", help="comma list of train, generate")
    p.add_argument("--impl", choices=("cuda", "ref"), default="cuda", help="the ops' kernels or references")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default=None,
                   help="precision policy (default: fp16 on a GPU, fp32 on a CPU)")
    p.add_argument("--channels-last", action="store_true", help="training: NHWC activations")
    p.add_argument("--gen-variant", default="eager", help="generation variant as in run.py --gen-variants")
    p.add_argument("--steps", type=int, default=None,
                   help="profiled steps (default: one regularization cycle for train, 10 batches for generate)")
    p.add_argument("--batch", type=int, default=None, help="generation batch (default 64; quick 8)")
    p.add_argument("--rows", type=int, default=40, help="operators listed per report")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if visible)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "profile", help="output folder")
    p.add_argument("--trace", action="store_true", help="also export a Chrome trace per section")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad or not args.sections:
        p.error(f"--sections: choose from {', '.join(SECTIONS)}; got {args.sections}")
    try:
        G.parse_variant(args.gen_variant)
    except ValueError as e:
        p.error(f"--gen-variant: {e}")
    for name in ("steps", "batch", "rows"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name}: must be at least 1")
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.precision = args.precision or ("fp16" if args.device.type == "cuda" else "fp32")
    if args.impl == "cuda" and args.device.type != "cuda":
        print("profile: no CUDA device, so impl 'cuda' runs the references", file=sys.stderr)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as training and generation run
    elif args.quick:
        torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    for section in args.sections:
        text, prof = (profile_train if section == "train" else profile_generate)(args)
        stem = f"profile-{section}-{args.impl}-{args.precision}"
        path = args.out / f"{stem}.txt"
        path.write_text(text)
        print(text)
        written.append(path)
        if args.trace:
            trace = args.out / f"{stem}.trace.json"
            prof.export_chrome_trace(str(trace))
            written.append(trace)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
