#!/usr/bin/env bash
# `bash tools/gpu_round.sh first`: the first call on a lent GPU, settling the most in one call of at
# most 8 minutes (GPU_ROUND_TOTAL, default 480 s), whatever happens. Parts, in priority order:
#
#   preflight      nvidia-smi, versions, the carried wheels (.whl/) into a private site folder
#   build          pip install -e . for the visible GPU's architecture only, MAX_JOBS = all cores
#   doctor         python -m stylegan2_ops doctor
#   tests          the `cuda` tests, fastest files first, pytest-xdist workers, JUnit XML
#   selfcheck      every kernel's self-check in float32, float16 and bfloat16
#   sanitize       compute-sanitizer memcheck of one short forward+backward per op (if time remains)
#   bench-kernels  kernel rows at the StyleGAN2-256 shapes, cuda vs ref
#   bench-train    training img/s, gpu256 preset (fp16 policy), cuda vs ref
#   bench-gen      generation img/s at batch 256: eager, then the speedups (CUDA graphs first)
#
# then merges the benchmark parts (benchmarks/run.py --merge) and writes into $OUT (5 files; the
# device tool brings back at most 8, 16 MiB each): <date>-<device>-<commit>.json and .md (the
# results, SPEC format), round-summary.md, cuda-tests.xml, round.log (every part's log).
#
# Each part runs under `timeout` with its own limit, cut further so the parts after it keep their
# floor (the least worth starting them with) and the merge and report keep 40 s. SIGINT comes
# first (pytest then still writes its XML; benchmarks/run.py has saved its rows after each task),
# SIGKILL 5 s later. A part that finds too little time left is skipped and says so.
#
# Options:
#   --dry-run-cpu     every part on the CPU (CUDA_VISIBLE_DEVICES=''), tiny shapes, 30 s per part:
#                     the build is pip's --dry-run, the tests skip, the self-check and the op steps
#                     run with the reference in the kernels' place, no compute-sanitizer. CI runs it.
#   --out DIR         where the files go (default $OUT, else gpu-round-out/first[-dry-run], emptied)
#   --only A,B / --skip A,B   run some parts only (the others are listed as not selected)
# Environment: GPU_ROUND_TOTAL (s), GPU_ROUND_LIMIT_<PART> (s, e.g. GPU_ROUND_LIMIT_BENCH_GEN),
# GPU_ROUND_TEST_WORKERS (pytest-xdist workers; 0 = none), GPU_ROUND_KEEP_WORK=1 (keep the scratch).
# Exit code: 0 when every part is ok or skipped, 1 when one failed, timed out or was interrupted,
# 2 for bad arguments; the files are written in every case but the last.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PARTS=(preflight build doctor tests selfcheck sanitize bench-kernels bench-train bench-gen)

die() { echo "gpu_round first: $*" >&2; exit 2; }
in_list() { local x=$1; shift; local y; for y in "$@"; do [ "$x" = "$y" ] && return 0; done; return 1; }

DRY=0 OUT_ARG="" ONLY="" SKIP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run-cpu) DRY=1 ;;
    --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT_ARG=$2; shift ;;
    --out=*) OUT_ARG=${1#--out=} ;;
    --only) [ $# -ge 2 ] || die "--only needs a comma list of parts"; ONLY=$2; shift ;;
    --skip) [ $# -ge 2 ] || die "--skip needs a comma list of parts"; SKIP=$2; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (options: --dry-run-cpu, --out DIR, --only PARTS, --skip PARTS)" ;;
  esac
  shift
done
for p in ${ONLY//,/ } ${SKIP//,/ }; do
  in_list "$p" "${PARTS[@]}" || die "no part named '$p' (parts: ${PARTS[*]})"
done
selected() {
  if [ -n "$ONLY" ]; then in_list "$1" ${ONLY//,/ } || return 1; fi
  if [ -n "$SKIP" ]; then in_list "$1" ${SKIP//,/ } && return 1; fi
  return 0
}

# Limits (s): what each part may take at most, and its floor. Typical H200 times are guesses until
# the first round has run; the floors keep the benchmark parts alive after a slow build.
declare -A LIMIT=([preflight]=30 [build]=240 [doctor]=30 [tests]=150 [selfcheck]=45 [sanitize]=90
                  [bench-kernels]=90 [bench-train]=80 [bench-gen]=60)
declare -A FLOOR=([preflight]=5 [build]=30 [doctor]=10 [tests]=30 [selfcheck]=15 [sanitize]=40
                  [bench-kernels]=30 [bench-train]=40 [bench-gen]=35)
OPTIONAL=(sanitize)  # "if time remains": nothing is held back for it
TOTAL=480 FINALIZE=40 KILL_AFTER=5
if [ "$DRY" = 1 ]; then
  for p in "${PARTS[@]}"; do LIMIT[$p]=30; FLOOR[$p]=1; done
  TOTAL=$(( ${#PARTS[@]} * 30 + FINALIZE ))
fi
positive_int() { [[ $2 =~ ^[0-9]+$ ]] && [ "$2" -gt 0 ] || die "$1 must be a whole number of seconds > 0, got '$2'"; }
if [ -n "${GPU_ROUND_TOTAL:-}" ]; then positive_int GPU_ROUND_TOTAL "$GPU_ROUND_TOTAL"; TOTAL=$GPU_ROUND_TOTAL; fi
if [ -n "${GPU_ROUND_TEST_WORKERS:-}" ] && ! [[ $GPU_ROUND_TEST_WORKERS =~ ^[0-9]+$ ]]; then
  die "GPU_ROUND_TEST_WORKERS must be a whole number (0: no pytest-xdist), got '$GPU_ROUND_TEST_WORKERS'"
fi
for p in "${PARTS[@]}"; do
  var=GPU_ROUND_LIMIT_$(echo "${p//-/_}" | tr a-z A-Z)
  if [ -n "${!var:-}" ]; then positive_int "$var" "${!var}"; LIMIT[$p]=${!var}; FLOOR[$p]=1; fi
done

if [ "$DRY" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""  # the CPU form even on a GPU machine
elif ! timeout 20 nvidia-smi -L >/dev/null 2>&1; then
  die "no NVIDIA GPU visible (nvidia-smi -L failed); on a machine without one run: bash tools/gpu_round.sh first --dry-run-cpu"
fi

if [ -n "$OUT_ARG" ]; then OUT=$OUT_ARG
elif [ -z "${OUT:-}" ]; then
  OUT=$ROOT/gpu-round-out/first$([ "$DRY" = 1 ] && echo -dry-run)
  rm -rf "$OUT"  # our own default folder: a previous round's files must not mix with this one's
fi
mkdir -p "$OUT" || die "cannot create the output folder $OUT"
if [ -f "$OUT/round-summary.md" ]; then
  # A previous round's folder: its results file would be taken for this round's. Only the names
  # a round writes are removed.
  rm -f "$OUT"/round-summary.md "$OUT"/round.log "$OUT"/cuda-tests.xml "$OUT"/20[0-9][0-9]-[01][0-9]-[0-3][0-9]-*.json \
    "$OUT"/20[0-9][0-9]-[01][0-9]-[0-3][0-9]-*.md
fi
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-round-work.XXXXXX") || die "cannot create a scratch folder"
mkdir -p "$WORK/logs" "$WORK/status" "$WORK/bench" "$WORK/site"
START_MS=$(date +%s%3N)
PARTS_END=$(( START_MS / 1000 + TOTAL - FINALIZE ))

# Commit: from git where the tree is a checkout, else the .commit file the README says to carry.
# Empty means: let benchmarks/run.py read git itself (it adds +dirty for a changed tree).
if git -C "$ROOT" rev-parse --short HEAD >/dev/null 2>&1; then COMMIT=""; git -C "$ROOT" rev-parse --short HEAD > "$WORK/commit"
else COMMIT=$(cat .commit 2>/dev/null | tr -d '[:space:]'); COMMIT=${COMMIT:-unknown}; echo "$COMMIT" > "$WORK/commit"; fi

export ROOT OUT WORK DRY COMMIT PYTHONUNBUFFERED=1
export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"  # the carried wheels (preflight fills it)

elapsed() { echo $(( ($(date +%s%3N) - START_MS) / 1000 )); }
say() { echo "[$(printf '%3s' "$(elapsed)") s] $*" | tee -a "$WORK/progress.log"; }
# A part's own verdict (refused, skipped...) and its one-line note; read after the part exits.
part_status() { printf '%s\n' "$1" > "$WORK/status/$PART.status"; }
part_note() { printf '%s\n' "$*" > "$WORK/status/$PART.note"; }
export -f part_status part_note

# ---------------------------------------------------------------------------------------------
# The parts. Each runs in its own bash under `timeout`, its output in $WORK/logs/<part>.log.

part_preflight() {
  date -u
  if [ "$DRY" = 1 ]; then echo "dry run on the CPU: CUDA_VISIBLE_DEVICES=''"
  else timeout 20 nvidia-smi; fi
  echo "cores: $(nproc)"; uname -a
  python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
  local wheels=(.whl/*.whl)
  if [ -e "${wheels[0]}" ]; then
    echo "installing the carried wheels: ${wheels[*]}"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" "${wheels[@]}" \
      || { part_note "the carried wheels did not install"; return 1; }
    part_note "wheels: $(cd .whl && ls *.whl | tr '\n' ' ')"
  else
    part_note "no .whl/ carried (nibabel/nilearn tests may skip or fail)"
  fi
}

part_build() {
  local arch="" cmd
  if [ "$DRY" != 1 ]; then arch=$(timeout 60 python3 tools/gpu_round.py arch) || arch=""; fi
  if [ -n "$arch" ]; then export TORCH_CUDA_ARCH_LIST=$arch; else unset TORCH_CUDA_ARCH_LIST; fi
  export MAX_JOBS=$(nproc)
  cmd=(python3 -m pip install -v --no-build-isolation --no-deps -e .)
  if [ "$DRY" = 1 ]; then
    # pip's own dry run: resolves and prepares the editable metadata, installs and compiles nothing
    # (CI's install step compiles the kernels; here the round's command line is what is checked).
    cmd+=(--dry-run); export STYLEGAN2_OPS_SKIP_BUILD=1
  else
    export STYLEGAN2_OPS_REQUIRE_BUILD=1
  fi
  echo "+ TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-unset} MAX_JOBS=$MAX_JOBS ${cmd[*]}"
  "${cmd[@]}"
  local rc=$?
  if [ $rc -ne 0 ]; then part_note "pip exit code $rc (arch ${arch:-unset}, MAX_JOBS $MAX_JOBS)"; return $rc; fi
  if [ "$DRY" = 1 ]; then part_note "pip --dry-run ok (arch: no GPU, MAX_JOBS $MAX_JOBS)"; return 0; fi
  python3 - <<'PY' || { part_note "built, but the module is missing or stale (arch $arch)"; return 1; }
import stylegan2_ops._kernels as k
from stylegan2_ops import _toolchain
assert k.SOURCE_HASH == _toolchain.source_hash(), "the compiled module is stale"
print("compiled module:", k.__file__)
PY
  part_note "compiled for compute capability ${arch:-?} with MAX_JOBS $MAX_JOBS"
}

part_doctor() {
  python3 -m stylegan2_ops doctor
  local rc=$?
  part_note "$(grep -m1 '^Summary:' "$WORK/logs/doctor.log" 2>/dev/null | cut -c1-200)"
  return $rc
}

part_tests() {
  # Fastest files first (the op tests, then the model-level ones; torch.compile's test is the last
  # of test_sampling); `tests` at the end picks up any other file with a `cuda` test (pytest
  # collects each file once).
  local files=() f
  for f in test_bias_act test_upfirdn2d test_upfirdn2d_cuda test_modulated_conv test_modulated_conv_cuda \
           test_networks test_losses test_training test_sampling; do
    [ -f "tests/$f.py" ] && files+=("tests/$f.py")
  done
  files+=(tests)
  local args=(-m cuda -v -p no:cacheprovider -rfE --continue-on-collection-errors
              --junitxml="$OUT/cuda-tests.xml" -o junit_suite_name=cuda-tests)
  # One process per worker, each with its own CUDA context: the tests share no files or global GPU
  # state, and an H200 has room for them all. None on the CPU, where every test skips.
  local workers=${GPU_ROUND_TEST_WORKERS:-$([ "$DRY" = 1 ] && echo 0 || echo $(( $(nproc) < 8 ? $(nproc) : 8 )))}
  if [ "$workers" -gt 0 ] && python3 -c 'import xdist' 2>/dev/null; then args+=(-n "$workers" --dist load); fi
  # A hung test must not eat the part: pytest-timeout (in the GPU image) fails it after 120 s.
  if python3 -c 'import pytest_timeout' 2>/dev/null; then args+=(--timeout 120); fi
  echo "+ python3 -m pytest ${args[*]} ${files[*]}"
  python3 -m pytest "${args[@]}" "${files[@]}"
  local rc=$?
  local lines
  lines=$(python3 tools/gpu_round.py test-summary "$OUT/cuda-tests.xml" --log "$WORK/logs/tests.log")
  echo "$lines"
  part_note "$(echo "$lines" | tail -1 | sed 's/^total: //')"
  # pytest: 0 all passed (skips included), 5 nothing selected; anything else is a failure.
  [ $rc -eq 0 ] || [ $rc -eq 5 ]
}

part_selfcheck() {
  local stand_in=(); [ "$DRY" = 1 ] && stand_in=(--cpu-stand-in)
  python3 tools/gpu_round.py selfcheck --json "$WORK/selfcheck.json" "${stand_in[@]}"
  local rc=$?
  part_note "$(tail -1 "$WORK/logs/selfcheck.log" | sed 's/^selfcheck: //')"
  return $rc
}

# The dry run's stand-in for compute-sanitizer: drops the memcheck options, runs the program, and
# ends with the report line the real tool prints, so the verdict code runs in CI too.
sanitizer_stand_in() {
  while [ $# -gt 0 ] && [ "$1" != python3 ]; do shift; done
  "$@"; local rc=$?
  echo "========= ERROR SUMMARY: 0 errors (dry run: no memory checker ran)"
  return $rc
}

part_sanitize() {
  local tool prog=(python3 tools/gpu_round.py opstep)
  if [ "$DRY" = 1 ]; then tool=sanitizer_stand_in; prog+=(--cpu-stand-in)
  else tool=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null); fi
  if [ -z "$tool" ]; then part_status refused; part_note "compute-sanitizer not found"; return 0; fi
  # PyTorch's caching allocator would hide overruns inside its blocks: off for this run.
  echo "+ $tool --tool memcheck --error-exitcode 99 --print-limit 50 ${prog[*]}"
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$tool" --tool memcheck --error-exitcode 99 --print-limit 50 "${prog[@]}"
  local rc=$? verdict
  verdict=$(python3 tools/gpu_round.py sanitize-verdict "$WORK/logs/sanitize.log" $rc)
  part_status "${verdict%%$'\t'*}"; part_note "${verdict#*$'\t'}"
  [ "${verdict%%$'\t'*}" != failed ]
}

# benchmarks/run.py into $WORK/bench/<part>; --time-limit leaves room for the start-up and ceiling
# measurements before its clock starts and for the last task it begins (margin, s).
bench() {
  local margin=$1; shift
  local dir=$WORK/bench/$PART quick=() commit=() tl
  [ "$DRY" = 1 ] && { quick=(--quick); margin=10; }
  [ -n "$COMMIT" ] && commit=(--commit "$COMMIT")
  tl=$(( PART_LIMIT - margin )); [ $tl -lt 1 ] && tl=1
  echo "+ benchmarks/run.py ${quick[*]} $* --time-limit $tl"
  python3 benchmarks/run.py "${quick[@]}" "${commit[@]}" --out "$dir" --no-progress --time-limit $tl "$@"
  local rc=$?
  part_note "$(python3 tools/gpu_round.py bench-note "$dir")"
  return $rc
}
# Precision: the gpu256 preset's fp16 policy (bf16 on the CPU, whose half convolutions crawl).
PREC() { [ "$DRY" = 1 ] && echo bf16 || echo fp16; }
part_bench_kernels() { bench 25 --sections kernels --impls cuda,ref --repeat 30 --warmup 5; }
part_bench_train() {
  bench 60 --sections train --impls cuda,ref --precisions "$(PREC)" --train-layouts nchw --no-flop-check --repeat 32
}
part_bench_gen() {
  local batch=256; [ "$DRY" = 1 ] && batch=8
  # Eager first, then CUDA graphs, the speedup expected to win (torch.compile's cold compiles take
  # minutes: the bench-gen-compile stages), then its mixes while time remains.
  bench 35 --sections generate --impls cuda,ref --precisions "$(PREC)" --gen-batch $batch \
    --gen-variants eager,cudagraph,unfused+cudagraph,channels_last+unfused+cudagraph
}
export -f part_preflight part_build part_doctor part_tests part_selfcheck part_sanitize sanitizer_stand_in bench PREC \
  part_bench_kernels part_bench_train part_bench_gen

# ---------------------------------------------------------------------------------------------
# Running a part under its limit, and the round.

INTERRUPTED=0 PART_PID=""
on_signal() { INTERRUPTED=1; [ -n "$PART_PID" ] && kill -TERM "$PART_PID" 2>/dev/null; }
trap on_signal INT TERM
cleanup() { [ "${GPU_ROUND_KEEP_WORK:-0}" = 1 ] && echo "scratch kept: $WORK" || rm -rf "$WORK"; }
trap cleanup EXIT

record() {  # name status rc seconds limit note
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$(echo "$6" | tr '\t\n' '  ' | sed 's/ *$//' | cut -c1-300)" >> "$WORK/parts.tsv"
  say "$1: $2${6:+ - $6}"
}

reserve_after() {  # seconds held back for the selected, non-optional parts after $1
  local seen=0 sum=0 p
  for p in "${PARTS[@]}"; do
    if [ $seen = 1 ] && selected "$p" && ! in_list "$p" "${OPTIONAL[@]}"; then sum=$(( sum + FLOOR[$p] )); fi
    [ "$p" = "$1" ] && seen=1
  done
  echo $sum
}

run_part() {
  local name=$1 fn=part_${1//-/_}
  if [ $INTERRUPTED = 1 ]; then record "$name" skipped - - - "the round was interrupted"; return; fi
  if ! selected "$name"; then record "$name" skipped - - - "not selected (--only/--skip)"; return; fi
  local left=$(( PARTS_END - $(date +%s) - $(reserve_after "$name") )) lim=${LIMIT[$name]}
  [ $left -lt "$lim" ] && lim=$left
  if [ "$lim" -lt "${FLOOR[$name]}" ]; then
    record "$name" skipped - - "${LIMIT[$name]}" "not enough time left (${lim} s, needs ${FLOOR[$name]} s)"; return
  fi
  say "$name: start, limit $lim s"
  local t0 rc status note
  t0=$(date +%s%3N)
  # timeout puts the part in its own process group and signals the whole group: pytest-xdist
  # workers, nvcc and compute-sanitizer's target go with it. Backgrounded so a signal to this
  # script is handled at once (on_signal passes it on).
  local grace=$(( lim >= 3 * KILL_AFTER ? KILL_AFTER : 1 ))  # SIGINT this long before SIGKILL
  PART=$name PART_LIMIT=$lim timeout -s INT -k $grace $(( lim > grace ? lim - grace : 1 )) \
    bash -c "$fn" > "$WORK/logs/$name.log" 2>&1 < /dev/null &
  PART_PID=$!
  while :; do wait "$PART_PID"; rc=$?; kill -0 "$PART_PID" 2>/dev/null || break; done
  PART_PID=""
  local secs; secs=$(awk -v ms=$(( $(date +%s%3N) - t0 )) 'BEGIN { printf "%.1f", ms / 1000 }')
  note=$(cat "$WORK/status/$name.note" 2>/dev/null)
  if [ $INTERRUPTED = 1 ]; then status=interrupted
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status=timeout; note="cut off at its $lim s limit${note:+; $note}"
  elif [ -s "$WORK/status/$name.status" ]; then status=$(cat "$WORK/status/$name.status")
  elif [ $rc -eq 0 ]; then status=ok
  else status=failed; note="exit code $rc${note:+; $note}"; fi
  record "$name" "$status" "$rc" "$secs" "$lim" "$note"
}

say "GPU round 'first'$([ "$DRY" = 1 ] && echo ' (dry run on the CPU)'): ${#PARTS[@]} parts in at most $TOTAL s; files in $OUT"
for part in "${PARTS[@]}"; do
  run_part "$part"
  if [ "$part" = build ] && [ "$DRY" != 1 ] && selected build && ! grep -q "^build"$'\t'"ok"$'\t' "$WORK/parts.tsv"; then
    # No kernels built: a just-in-time build inside a test or benchmark would eat the round.
    export STYLEGAN2_OPS_NO_JIT=1
    say "build not ok: STYLEGAN2_OPS_NO_JIT=1 for the rest of the round (the ops use the references)"
  fi
done

# Finalize: merge the benchmark parts into one results file, then the summary. Both bounded.
jsons=("$WORK"/bench/*/*.json)
if [ -e "${jsons[0]}" ]; then
  timeout -k 3 17 python3 benchmarks/run.py --merge "${jsons[@]}" --out "$OUT" > "$WORK/logs/merge.log" 2>&1 \
    || { say "merge failed: copying the parts' own files"; cp "$WORK"/bench/*/*.json "$WORK"/bench/*/*.md "$OUT/" 2>/dev/null; }
fi
report_args=(--work "$WORK" --out "$OUT" --total-limit "$TOTAL" --start-ms "$START_MS"); [ "$DRY" = 1 ] && report_args+=(--dry-run)
timeout -k 3 17 python3 tools/gpu_round.py report "${report_args[@]}"
code=$?
if [ $code -gt 1 ]; then
  # The report itself failed: still leave a summary and the logs.
  { echo "# GPU round 'first': the report step failed (exit code $code); parts:"; echo; cat "$WORK/parts.tsv"; } > "$OUT/round-summary.md"
  for f in "$WORK"/progress.log "$WORK"/logs/*.log; do echo "===== $(basename "$f")"; tail -c 1000000 "$f"; done > "$OUT/round.log" 2>/dev/null
  cat "$OUT/round-summary.md"
  code=1
fi
# Last, so the tail of the call's output (all the device tool shows) always has it.
say "parts: $(awk -F'\t' '{ printf "%s %s, ", $1, $2 }' "$WORK/parts.tsv" | sed 's/, $//')"
say "done in $(awk -v ms=$(( $(date +%s%3N) - START_MS )) 'BEGIN { printf "%.1f", ms / 1000 }') s; files in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
exit $code
