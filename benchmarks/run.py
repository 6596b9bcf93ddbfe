"""Benchmarks: kernel, training and generation throughput, as JSON plus a markdown table.

    python benchmarks/run.py                    # everything, full size (wants a GPU)
    python benchmarks/run.py --quick --out DIR  # a toy-size run on a CPU in about a minute (CI)
    python benchmarks/run.py --results          # write into benchmarks/results/ (to commit)
    python benchmarks/run.py --sections kernels --ops modulated_conv2d --impls cuda,ref
    python benchmarks/run.py --merge A.json B.json --results   # one report from split runs

Sections: kernels (each op at the StyleGAN2-256 layer shapes, forward and forward+backward, for
impl='cuda', impl='ref' and torch.compile of the reference), train (img/s of the training step,
kernels vs references under one precision policy) and generate (img/s of G forward). The copy
bandwidth and matmul peaks the percentages refer to are measured at the start of every run.
Output: benchmarks/out/<date>-<device>-<commit>.{json,md} unless --out or --results says
otherwise; the markdown table is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: import this checkout's packages
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from benchmarks import generate as G  # noqa: E402
from benchmarks import kernels as K  # noqa: E402
from benchmarks import report as R  # noqa: E402
from benchmarks import shapes as S  # noqa: E402
from benchmarks import train as T  # noqa: E402
from benchmarks.timing import measure_ceilings  # noqa: E402

PRECISIONS = ("fp32", "fp16", "bf16")


def _list(text: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{what}: {', '.join(bad) or '(empty)'} not in {', '.join(allowed)}")
    return items


def _batches(text: str) -> list[int]:
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--gen-batch: positive integers, comma separated; got {text!r}")
    return sizes


def _gen_variants(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    try:
        for n in names:
            G.parse_variant(n)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--gen-variants: {e}") from None
    if not names:
        raise argparse.ArgumentTypeError("--gen-variants: name at least one variant")
    return list(dict.fromkeys(names))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="toy sizes, few repeats: about a minute on a CPU (what CI runs)")
    p.add_argument("--sections", default="kernels,train,generate",
                   type=lambda s: _list(s, R.SECTIONS, "--sections"), help="comma list (default: all)")
    p.add_argument("--ops", default=",".join(K.OPS), type=lambda s: _list(s, K.OPS, "--ops"),
                   help="kernel ops to run (default: all)")
    p.add_argument("--impls", default="cuda,ref,compile", type=lambda s: _list(s, K.IMPLS, "--impls"),
                   help="kernel impls; train/generate use cuda and ref of these (default: all)")
    p.add_argument("--passes", default="fwd,fwd+bwd", type=lambda s: _list(s, K.PASSES, "--passes"))
    p.add_argument("--dtypes", default="policy",
                   help="kernel dtypes: 'policy' (each layer in the mixed-precision model's dtype: "
                        "float32 below 32x32, float16 from 32x32 at 256) or a list, e.g. "
                        "float32,float16,bfloat16")
    p.add_argument("--precisions", default=None,
                   type=lambda s: _list(s, PRECISIONS, "--precisions"),
                   help="train/generate precision policies (default: fp32,fp16; quick: fp32,bf16)")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed calls per kernel row (default 50, quick 5); train cycles and "
                        "generate calls scale with it")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 10, quick 1)")
    p.add_argument("--gen-batch", default=None, type=_batches,
                   help="generation batch sizes, comma list (default 64,256; quick 8)")
    p.add_argument("--gen-variants", default=None, type=_gen_variants,
                   help="generation speed variants, comma list of 'eager' or '+' mixes of "
                        "channels_last, fused, unfused, cudagraph, compile (default: eager, "
                        "channels_last, fused, unfused, channels_last+unfused, cudagraph, "
                        "unfused+cudagraph, channels_last+unfused+cudagraph, compile; quick: eager, "
                        "channels_last, unfused, compile)")
    p.add_argument("--train-layouts", default="nchw,channels_last",
                   type=lambda s: _list(s, ("nchw", "channels_last"), "--train-layouts"),
                   help="training rows per activation layout (default both)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if visible)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; quick on a CPU: 1, which keeps the "
                        "toy timings steady on a shared machine)")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend (default inductor; quick: aot_eager, which traces "
                        "and partitions like inductor without the C++/Triton build)")
    p.add_argument("--no-flop-check", action="store_true",
                   help="skip counting training FLOPs with FlopCounterMode on the reference path")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/out)")
    out.add_argument("--results", action="store_true",
                     help="write into benchmarks/results/ (measured GPU runs to commit)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="start no new row after this many seconds; the report then holds the rows "
                        "done so far (for a GPU lease with a per-command limit)")
    p.add_argument("--commit", default=None,
                   help="commit to record (default: git rev-parse --short HEAD, +dirty for a changed "
                        "tree); for a copy of the tree without .git")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                   help="join earlier runs' JSON files (same device) into one report and exit")
    args = p.parse_args(argv)
    if args.dtypes != "policy":
        names = _list(args.dtypes, ("float32", "float16", "bfloat16", "float64"), "--dtypes")
        args.dtypes = [getattr(torch, n) for n in names]
    else:
        args.dtypes = None
    for name in ("repeat", "warmup", "threads"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} must be {'>= 0' if name == 'warmup' else '>= 1'}")
    return args


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the mode-dependent defaults."""
    q = args.quick
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.device.type == "cuda" and args.device.index is None:
        args.device = torch.device("cuda", torch.cuda.current_device())
    args.repeat = args.repeat or (5 if q else 50)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 10)
    args.gen_batch = args.gen_batch or ([8] if q else [64, 256])
    args.gen_variants = args.gen_variants or (["eager", "channels_last", "unfused", "compile"] if q else
                                              ["eager", "channels_last", "fused", "unfused", "channels_last+unfused",
                                               "cudagraph", "unfused+cudagraph", "channels_last+unfused+cudagraph",
                                               "compile"])
    args.compile_backend = args.compile_backend or ("aot_eager" if q else "inductor")
    args.precisions = args.precisions or ["fp32", "bf16" if q else "fp16"]
    if args.threads is None and q and args.device.type == "cpu":
        args.threads = 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.not_run = 0
    args.out_dir = (ROOT / "benchmarks" / "results" if args.results
                    else args.out or ROOT / "benchmarks" / "out")
    return args


def tasks(args: argparse.Namespace, ceilings: Any) -> Iterator[tuple[str, Callable[[], Any]]]:
    """(label, thunk) per unit of work; a thunk returns a row or a list of rows. The few long
    train and generate tasks go first: under --time-limit the headline numbers are kept, and the
    report lists the sections in their usual order anyway."""
    dev, q = args.device, args.quick
    impls = [i for i in ("ref", "cuda") if i in args.impls]
    if "train" in args.sections:
        for layout in args.train_layouts:
            for prec in args.precisions:
                # The FLOP count does not depend on the layout: check it once per policy.
                count = not args.no_flop_check and layout == args.train_layouts[0]
                yield f"train {prec} {layout}", (lambda p=prec, cl=layout == "channels_last", n=count: list(
                    T.train_rows(dev, ceilings, quick=q, precisions=[p], impls=impls, warmup_cycles=1,
                                 cycles=2 if q else max(2, args.repeat // 16), count=n, channels_last=cl)))
    if "generate" in args.sections:
        for variant in args.gen_variants:
            for prec in args.precisions:
                for batch in args.gen_batch:
                    yield f"generate {prec} batch {batch} {variant}", (
                        lambda p=prec, b=batch, v=variant: list(G.generate_rows(
                            dev, ceilings, quick=q, precisions=[p], impls=impls, batch=b,
                            warmup=max(args.warmup // 3, 1), repeat=max(3, args.repeat // 5),
                            variants=(v,), compile_backend=args.compile_backend)))
    if "kernels" in args.sections:
        settings = K.Settings(device=dev, warmup=args.warmup, repeat=args.repeat,
                              compile_backend=args.compile_backend)
        yield from K.kernel_tasks(S.QUICK if q else S.FULL, args.dtypes, args.impls, args.ops,
                                  args.passes, settings, ceilings, compile_first_only=q)


def ceiling_dtypes(args: argparse.Namespace) -> list[str]:
    names = ["float32"]
    if args.dtypes is None:
        names.append(K.dtype_name((S.QUICK if args.quick else S.FULL).half))
    else:
        names += [K.dtype_name(d) for d in args.dtypes]
    names += [{"fp16": "float16", "bf16": "bfloat16"}[p] for p in args.precisions if p != "fp32"]
    return list(dict.fromkeys(n for n in names if n != "float64" or args.device.type == "cpu"))


def _failed(label: str, section: str, e: BaseException) -> dict[str, Any]:
    """A row that keeps the place of work that raised, with the error as its note."""
    op = label.split(" ")[0] if section == "kernels" else label
    return {"section": section, "op": op, "shape": label, "dtype": "-", "impl": "-",
            "note": f"error: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}


def run_tasks(args: argparse.Namespace, ceilings: Any,
              on_row: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    """Every task in turn under a tqdm bar. A task that raises (out of memory, a kernel bug)
    becomes an error row and the run goes on: one bad row must not cost a GPU session its
    other numbers. `on_row` sees the rows so far after each task (for partial files)."""
    rows: list[dict[str, Any]] = []
    work = list(tasks(args, ceilings))
    start = time.perf_counter()
    bar = tqdm(work, desc="benchmarks", unit="row", disable=args.no_progress, dynamic_ncols=True)
    for done, (label, thunk) in enumerate(bar):
        if args.time_limit is not None and time.perf_counter() - start > args.time_limit:
            args.not_run = len(work) - done
            print(f"\nbenchmarks: --time-limit {args.time_limit:g} s reached; {args.not_run} of "
                  f"{len(work)} tasks not run (from: {label})", file=sys.stderr)
            break
        bar.set_postfix_str(label[:60], refresh=False)
        section = "kernels" if not label.startswith(("train", "generate")) else label.split()[0]
        try:
            got = thunk()
        except Exception as e:  # noqa: BLE001 - reported in the row and on stderr
            traceback.print_exc()
            got = _failed(label, section, e)
            if args.device.type == "cuda":
                torch.cuda.empty_cache()
        rows.extend(got if isinstance(got, list) else [got])
        on_row(rows)
    bar.close()
    return rows


def in_table_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """kernels, train, generate (stable within a section)."""
    order = {name: i for i, name in enumerate(R.SECTIONS)}
    return sorted(rows, key=lambda r: order.get(r["section"], len(order)))


def _settings(args: argparse.Namespace, t0: float) -> dict[str, Any]:
    out = {k: (str(v) if isinstance(v, (Path, torch.device)) else v)
           for k, v in vars(args).items() if k not in ("dtypes", "merge")}
    out["dtypes"] = "policy" if args.dtypes is None else [K.dtype_name(d) for d in args.dtypes]
    out["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def merge(paths: Sequence[Path], out_dir: Path) -> int:
    """Join the rows of several runs on one device (say kernels with and without compile, run as
    separate commands) into one report; ratios are recomputed across them."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    devices = {d["device"] for d in docs}
    if len(devices) != 1:
        print(f"--merge: the runs come from different devices ({', '.join(sorted(devices))}); "
              "their ratios would compare unlike with unlike", file=sys.stderr)
        return 2
    doc = dict(docs[0])
    doc["rows"] = R.finish_rows([r for d in docs for r in d["rows"]])
    doc["settings"] = {"merged_from": [str(p) for p in paths],
                       "runs": [dict(d.get("settings", {}), commit=d.get("commit"), ceilings=d.get("ceilings"))
                                for d in docs]}
    jpath, mpath = R.write(doc, out_dir)
    print(R.markdown(doc))
    print(f"wrote {jpath} and {mpath} ({len(doc['rows'])} rows from {len(paths)} runs)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = resolve(parse_args(argv))
    if args.merge:
        return merge(args.merge, args.out_dir)
    t0 = time.perf_counter()
    if args.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the training loop sets it
    print(f"benchmarks: {'quick' if args.quick else 'full'} mode on {R.device_name(args.device)}, "
          f"sections {','.join(args.sections)}", flush=True)
    if args.device.type != "cuda" and not args.quick:
        print("benchmarks: full sizes on a CPU take hours; --quick is the CPU mode", file=sys.stderr)
    ceilings = measure_ceilings(args.device, ceiling_dtypes(args), quick=args.quick)
    commit = args.commit or R.git_commit(ROOT)

    def save(rows: list[dict[str, Any]]) -> tuple[Path, Path]:
        doc = R.document(in_table_order(rows), args.device, ceilings.to_dict(), commit, _settings(args, t0))
        return R.write(doc, args.out_dir)

    rows = in_table_order(run_tasks(args, ceilings, save))  # saved after every task: a killed run keeps its rows
    doc = R.document(rows, args.device, ceilings.to_dict(), commit, _settings(args, t0))
    jpath, mpath = R.write(doc, args.out_dir)
    print()
    print(R.markdown(doc))
    print(f"wrote {jpath} and {mpath} ({len(doc['rows'])} rows, {doc['settings']['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
