#!/usr/bin/env bash
# The GPU check: one command on a machine with an NVIDIA GPU, nvcc and torch (README, "GPU check"). In order:
#   1. versions and the device (and the carried wheels in .whl/ that this machine needs, installed aside);
#   2. the figures, then the correctness pass: idle power once, before any work; torch-backend latency and NVML
#      energy per image of the FP32 baseline, VWT intra and VWT inter at batch 1 and 32; the CUDA kernels of
#      vwt::TokenMerge against the torch reference (mismatches and counts on stdout, one line per check in
#      kernels.log);
#   3. compute-sanitizer, our kernels only: memcheck with torch's allocator cache off on a quick subset, then a
#      planted out-of-bounds write that memcheck must report; racecheck and synccheck on a tiny subset.
# Each step runs under `timeout`, within what is left of VWT_GPU_BUDGET_S (450 s unless set); a failing or
# timed-out step is reported and the next one runs, so nothing can lose the figures already taken. Exit status:
# 0 when every step passed, 1 otherwise. Logs go to $OUT when it is set, else build/gpu/logs: transcript.log,
# build.log, figures.json, kernels.log, memcheck.log, racecheck.log, synccheck.log.
# UNVERIFIED: no GPU has run it yet (its CUDA compiles with nvcc 13.0 for sm_90; its Python side is tested on
# the CPU by tests/test_gpu_check.py).
# Usage: bash scripts/gpu_check.sh [measure options, e.g. --model deit_s --weights random]
set -uo pipefail  # not -e: a failing step must not end the run
cd "$(dirname "$0")/.." || exit 2

LOGS=${OUT:-build/gpu/logs}
mkdir -p "$LOGS" build/gpu
BUDGET=${VWT_GPU_BUDGET_S:-450}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
SANITIZER=${SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
LIB=build/gpu/libvwt_cuda.so
SITE=${TMPDIR:-/tmp}/vwt-gpu-site
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
SUMMARY=()
FAILED=0
# Our kernels only (vwt::cuda::...): torch's own are not under test, and instrumenting all of them would take much
# of the budget. Memcheck still tracks every allocation, so an access past any tensor is caught. Exit 99: the tool
# found something; any other failure is the checks' own.
SANITIZER_OPTS=(--kernel-name kns=3vwt4cuda --error-exitcode 99 --launch-timeout 120
  --target-processes application-only --report-api-errors no --print-limit 50)

# step NAME LIMIT_S LOG COMMAND...: runs COMMAND under `timeout` (LIMIT_S, or what is left of the budget), its
# output to LOG (- for the terminal, +FILE to append), and records the result for the summary; the exit status
# EXPECT (0 unless set) counts as a pass.
step() {
  local name=$1 limit=$2 log=$3 left rc t0 result
  shift 3
  left=$((BUDGET - SECONDS))
  if ((left < 15)); then
    SUMMARY+=("$(printf '%-10s skipped: %ss of the %ss budget left' "$name" "$left" "$BUDGET")")
    FAILED=1
    return 1
  fi
  ((limit > left)) && limit=$left
  t0=$SECONDS
  case $log in
    -) timeout --kill-after=10 "$limit" "$@" ;;
    +*) timeout --kill-after=10 "$limit" "$@" >>"${log#+}" 2>&1 ;;
    *) timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 ;;
  esac
  rc=$?
  case $rc in
    "${EXPECT:-0}") result=ok ;;
    124 | 137) result="TIMED OUT at ${limit}s" ;;
    *) result="FAILED (exit $rc)" ;;
  esac
  [ "$rc" = "${EXPECT:-0}" ] || FAILED=1
  SUMMARY+=("$(printf '%-10s %-22s %4ss' "$name" "$result" "$((SECONDS - t0))")")
  return "$rc"
}

# sanitize TOOL SUBSET LIMIT_S [ENV...]: the kernel checks of SUBSET under compute-sanitizer TOOL, output to
# $LOGS/TOOL.log; prints its error summary and the first findings.
sanitize() {
  local tool=$1 subset=$2 limit=$3 log=$LOGS/$1.log
  shift 3
  local opts=("${SANITIZER_OPTS[@]}" --tool "$tool")
  [ "$tool" = memcheck ] && opts+=(--padding 256)
  echo "== compute-sanitizer $tool: kernel checks ($subset subset)"
  step "$tool" "$limit" "$log" env "$@" "$SANITIZER" "${opts[@]}" "$PY" scripts/gpu_check.py kernels \
    --library "$LIB" --subset "$subset"
  report "$tool" "$log"
  echo "  the checks under it: $(grep -h '^kernels:' "$log" 2>/dev/null | tail -1)"
}

# report WHAT LOG: the last error summary of a sanitizer's LOG, and its findings counted by kind.
report() {
  local summary
  summary=$(grep -h "ERROR SUMMARY" "$2" 2>/dev/null | tail -1)
  echo "  $1: ${summary#========= }"
  grep -h "^========= [A-Z]" "$2" 2>/dev/null | grep -v "ERROR SUMMARY\|COMPUTE-SANITIZER" | sort | uniq -c |
    sort -rn | head -6
}

main() {
  echo "== 1. versions and device ($(date -u +%FT%TZ), budget ${BUDGET}s)"
  local cc arch
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,power.limit,pstate,clocks.sm,temperature.gpu \
      --format=csv
    cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' ')
  else
    echo "nvidia-smi not found"
    cc=
  fi
  # Hopper (9.0) gets its own machine code; anything else the GPU this runs on
  if [ "$cc" = 9.0 ]; then arch=-arch=sm_90; else arch=-arch=native; fi
  arch=${VWT_GPU_ARCH:-$arch}
  if command -v "$NVCC" >/dev/null; then echo "nvcc: $("$NVCC" --version | tail -1)"; else echo "nvcc: not found at $NVCC"; fi
  if [ -x "$SANITIZER" ]; then
    echo "compute-sanitizer: $("$SANITIZER" --version | grep -i version)"
  else
    echo "compute-sanitizer: not found at $SANITIZER"
  fi
  if compgen -G ".whl/*.whl" >/dev/null; then
    local need=()
    mapfile -t need < <("$PY" scripts/gpu_check.py wheels .whl)
    if ((${#need[@]})); then
      if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${need[@]}"; then
        export PYTHONPATH="$SITE:$PYTHONPATH"
        echo "installed in $SITE: ${need[*]}"
      else
        echo "the carried wheels did not install: ${need[*]}"
      fi
    fi
  fi
  step versions 90 - "$PY" scripts/gpu_check.py versions

  echo "== build: the CUDA kernels with their C interface ($arch; compiler output in build.log)"
  if step build 240 "$LOGS/build.log" "$NVCC" -std=c++17 -O3 -lineinfo -shared -Xcompiler -fPIC "$arch" -Xptxas -v \
    -Iplugins/common plugins/common/vwt_cuda.cu plugins/common/vwt_cuda_capi.cu -o "$LIB"; then
    echo "built $LIB"
  elif [ -f "$LOGS/build.log" ]; then
    tail -5 "$LOGS/build.log"
  fi

  echo "== 2. idle power, then torch-backend latency and energy per image (every figure in figures.json)"
  step measure 200 - "$PY" scripts/gpu_check.py measure --figures "$LOGS/figures.json" "$@"

  echo "== 2. correctness: the CUDA kernels against the torch reference (one line per check in kernels.log)"
  if [ -f "$LIB" ]; then
    step kernels 180 - "$PY" scripts/gpu_check.py kernels --library "$LIB" --subset full --log "$LOGS/kernels.log"
  else
    echo "skipped: $LIB was not built"
    SUMMARY+=("kernels    skipped: no library")
    FAILED=1
  fi

  echo "== 3. compute-sanitizer (after the figures; a finding or a refusal here loses none of them)"
  if [ ! -x "$SANITIZER" ]; then
    echo "skipped: compute-sanitizer not found (set SANITIZER=...)"
    SUMMARY+=("sanitizer  skipped: not found")
    FAILED=1
  elif [ ! -f "$LIB" ]; then
    echo "skipped: $LIB was not built"
    SUMMARY+=("sanitizer  skipped: no library")
    FAILED=1
  else
    # torch's caching allocator would hide an out-of-bounds access inside a cached block from memcheck
    sanitize memcheck quick 150 PYTORCH_NO_CUDA_MEMORY_CACHING=1
    echo "== compute-sanitizer memcheck: a planted out-of-bounds write, which it must report (1 error or more;"
    echo "   with none, its 0 errors above prove nothing)"
    EXPECT=99 step canary 60 "$LOGS/canary.tmp" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" \
      "${SANITIZER_OPTS[@]}" --tool memcheck --padding 256 "$PY" scripts/gpu_check.py canary --library "$LIB"
    report canary "$LOGS/canary.tmp"
    { echo "== canary"; cat "$LOGS/canary.tmp"; } >>"$LOGS/memcheck.log" 2>/dev/null
    rm -f "$LOGS/canary.tmp"
    sanitize racecheck tiny 100
    sanitize synccheck tiny 60
  fi

  echo "== summary (${SECONDS}s of the ${BUDGET}s budget; logs in $LOGS)"
  printf '  %s\n' "${SUMMARY[@]}"
  if ((FAILED)); then echo "GPU check: SOME STEPS FAILED (see above)"; else echo "GPU check: every step passed"; fi
  return "$FAILED"
}

main "$@" 2>&1 | tee "$LOGS/transcript.log"
exit "${PIPESTATUS[0]}"
