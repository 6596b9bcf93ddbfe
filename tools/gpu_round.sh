#!/usr/bin/env bash
# One GPU round on a lent H100/H200 (the `device` tool), in stages that each fit its 10-minute limit:
#
#   bash tools/gpu_round.sh first      # THE FIRST CALL: build, doctor, cuda tests, self-check,
#                                      # sanitizer, kernel/train/generate rows, all in <= 8 min,
#                                      # each part under its own limit (tools/gpu_round_first.sh;
#                                      # --dry-run-cpu runs it on a CPU in about a minute, as CI does)
#
# The stages below measure the rest, one per call, if device time remains:
#
#   bash tools/gpu_round.sh build      # compile the extension for this GPU, doctor        (~3 min)
#   bash tools/gpu_round.sh test       # every `cuda` test, JUnit XML + log                  (~3 min)
#   bash tools/gpu_round.sh sanitize   # compute-sanitizer memcheck over the kernel tests    (~5 min)
#   bash tools/gpu_round.sh bench      # kernel rows, CUDA and reference                      (<= 9 min)
#   bash tools/gpu_round.sh bench-train  # training img/s, NCHW and channels_last, cuda and ref  (<= 9 min)
#   bash tools/gpu_round.sh bench-gen  # generation img/s: eager, channels_last, (un)fused modconv,
#                                      # CUDA graphs and their mixes, cuda and ref              (<= 9 min)
#   bash tools/gpu_round.sh bench-gen-compile-fp32  # generation under torch.compile, fp32  (<= 9 min)
#   bash tools/gpu_round.sh bench-gen-compile-fp16  # the same, fp16 policy                 (<= 9 min)
#   bash tools/gpu_round.sh bench-compile-fwd     # torch.compile rows, forward             (<= 9 min)
#   bash tools/gpu_round.sh bench-compile-fwdbwd  # torch.compile rows, forward+backward    (<= 9 min)
#   bash tools/gpu_round.sh merge      # merge every bench part into benchmarks/results/ (commit it)
#   bash tools/gpu_round.sh precision  # fp32 vs fp16 training, same seed, loss overlay PNG (<= 9 min)
#   bash tools/gpu_round.sh profile    # torch.profiler: training phases and top kernels, generation,
#                                      # kernels vs references (text reports)                  (~3 min)
#   bash tools/gpu_round.sh all        # build, test, sanitize and the three bench stages in a row: about
#                                      # 40 min, so only where no per-call limit applies
# The bench stages write to bench/ under the repository so the merge call finds them while the
# machine stays warm; each also copies its JSON to $OUT.
#
# Logs and JSON go under $OUT (the device tool brings that folder back), else ./gpu-round-out.
# The device copy may lack .git: run `git rev-parse --short HEAD > .commit` here before the calls.
# The device machine has torch, nvcc and ninja but no package registry: Python packages it lacks
# travel as wheels in .whl/ and are installed to /tmp/site first. Its image has click, tqdm and
# matplotlib; `bash tools/fetch_device_wheels.sh` (run here) fetches the missing nibabel and
# nilearn, which the data tests and the precision stage need; then name .whl in the call's carry.
set -uo pipefail
cd "$(dirname "$0")/.."
# `first` has its own output, wheel and time handling: nothing below applies to it.
if [ "${1:-}" = first ]; then shift; exec bash tools/gpu_round_first.sh "$@"; fi
OUT="${OUT:-$PWD/gpu-round-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# Build for the GPU that is there (torch reads its capability when the list is unset).
unset TORCH_CUDA_ARCH_LIST

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

KERNEL_TESTS=$(ls tests/test_bias_act.py tests/test_upfirdn2d*.py tests/test_modulated_conv*.py 2>/dev/null | tr '\n' ' ')

stage_build() {
  nvidia-smi | tee "$OUT/nvidia-smi.txt"
  git rev-parse HEAD > "$OUT/commit.txt" 2>/dev/null
  STYLEGAN2_OPS_REQUIRE_BUILD=1 MAX_JOBS=16 python3 -m pip install -v --no-build-isolation --no-deps -e . \
    > "$OUT/build.log" 2>&1
  local rc=$?
  grep "stylegan2_ops setup" "$OUT/build.log"
  python3 -m stylegan2_ops doctor 2>&1 | tee "$OUT/doctor.txt"
  return $rc
}

stage_test() {
  python3 -m pytest -m cuda -v -p no:cacheprovider --continue-on-collection-errors \
    --junitxml="$OUT/cuda-tests.xml" tests 2>&1 | tee "$OUT/cuda-tests.log" | tail -40
}

stage_sanitize() {
  if ! command -v compute-sanitizer >/dev/null; then
    echo "compute-sanitizer not found" | tee "$OUT/sanitizer.log"; return 0
  fi
  # memcheck over the kernel tests; PyTorch's caching allocator hides some overruns inside its
  # blocks, so it is switched off for this run.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 99 \
    python3 -m pytest -m cuda -x -q -p no:cacheprovider $KERNEL_TESTS > "$OUT/sanitizer.log" 2>&1
  local rc=$?
  tail -30 "$OUT/sanitizer.log"
  echo "compute-sanitizer exit code: $rc" | tee -a "$OUT/sanitizer.log"
  return $rc
}

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || cat .commit 2>/dev/null || echo unknown)
BENCH=gpu-round-out/bench

bench_part() {  # name, then run.py arguments
  local name=$1; shift
  rm -rf "$BENCH/$name" && mkdir -p "$BENCH/$name"  # a rerun replaces its part; merge sees each once
  python3 benchmarks/run.py --commit "$COMMIT" --out "$BENCH/$name" --time-limit 540 "$@" 2>&1 \
    | tee "$OUT/bench-$name.log" | tail -60
  cp "$BENCH/$name"/*.json "$OUT/" 2>/dev/null || true
}

stage_bench() { bench_part kernels --sections kernels --impls cuda,ref; }
GEN_VARIANTS=eager,channels_last,fused,unfused,channels_last+unfused,cudagraph,unfused+cudagraph,channels_last+unfused+cudagraph
stage_bench_train() { bench_part train --sections train --impls cuda,ref; }
stage_bench_gen() { bench_part gen --sections generate --impls cuda,ref --gen-variants "$GEN_VARIANTS"; }
# Two cold inductor compiles of the 256x256 generator per task (cuda, ref) at 1-2 min each: no
# new task after 300 s, so the last one still ends inside the 10-minute call.
stage_bench_gen_compile() {
  bench_part gen-compile-$1 --sections generate --impls cuda,ref --gen-variants compile --precisions $1 --time-limit 300
}
stage_bench_compile_fwd() { bench_part compile-fwd --sections kernels --impls compile --passes fwd; }
stage_bench_compile_fwdbwd() { bench_part compile-fwdbwd --sections kernels --impls compile --passes fwd+bwd; }
stage_merge() {
  python3 benchmarks/run.py --commit "$COMMIT" --merge "$BENCH"/*/*.json --results 2>&1 | tee "$OUT/merge.log" | tail -40
  cp benchmarks/results/* "$OUT/" 2>/dev/null || true
}

stage_precision() {  # two short gpu128 runs on one seed (each capped at 250 s) so both fit one call
  rm -rf gpu-round-out/prec && mkdir -p gpu-round-out/prec
  for p in fp32 fp16; do
    timeout 250 python3 -m stylegan2 train --preset gpu128 --precision $p --kimg 40 --snap 20 --seed 0 \
      --out gpu-round-out/prec --no-progress > "$OUT/train-$p.log" 2>&1
  done
  python3 benchmarks/overlay_losses.py gpu-round-out/prec/* --out "$OUT/fp32-vs-fp16-losses.png" | tee "$OUT/overlay.txt"
}

stage_profile() {  # where the time goes, on the kernels and on the references, fp16 policy
  for impl in cuda ref; do
    python3 benchmarks/profile_steps.py --impl $impl --precision fp16 --out "$OUT/profile" 2>&1 \
      | grep -A 12 "## Phases" | tee -a "$OUT/profile.log"
  done
}

case "${1:-all}" in
  build) stage_build ;;
  test) stage_test ;;
  sanitize) stage_sanitize ;;
  bench) stage_bench ;;
  bench-train) stage_bench_train ;;
  bench-gen) stage_bench_gen ;;
  bench-gen-compile-fp32) stage_bench_gen_compile fp32 ;;
  bench-gen-compile-fp16) stage_bench_gen_compile fp16 ;;
  bench-compile-fwd) stage_bench_compile_fwd ;;
  bench-compile-fwdbwd) stage_bench_compile_fwdbwd ;;
  merge) stage_merge ;;
  precision) stage_precision ;;
  profile) stage_profile ;;
  all) stage_build && stage_test; stage_sanitize; stage_bench; stage_bench_train; stage_bench_gen ;;
  *) echo "usage: $0 first [--dry-run-cpu]|build|test|sanitize|bench|bench-train|bench-gen|bench-gen-compile-fp32|bench-gen-compile-fp16|bench-compile-fwd|bench-compile-fwdbwd|merge|precision|profile|all" >&2; exit 2 ;;
esac
