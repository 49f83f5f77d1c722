#!/bin/bash
# One call on a lent GPU (issue 5): tests, sanitizers, benchmark and the
# Python suite on the binaries built here by tools/device/hopper_carry.sh (carried
# in .carry/: libflashsdpa.so and flashsdpa_cuda_tests for 90a-real). On the
# device: `bash tools/device/device.sh STEPS` with carry [".carry", ".devdeps"]
# (".whl" too for pytest). STEPS, a comma list, run in this order:
#   info    GPU name and clocks, HGMMA count per Hopper kernel (cuobjdump)
#   quick   flashsdpa_cuda_tests --quick; stops the call unless it passes
#   full    --no-long (every case but the long ones: about 450 s on an H100,
#           so give it a call of its own)
#   det     --determinism-only, then the Hopper cases with deterministic = 1
#           (--deterministic: h_s1*, the masked hbm_*, the D 256 hb256_*)
#   masks   the masked backward cases with every step on the per-element
#           path (FLASHSDPA_CUDA_FORCE=mask_skip=0)
#   san     compute-sanitizer memcheck + racecheck on a reduced grid
#           (h_s1* both deterministic settings, hbm_s257*, hb256_*)
#   bench   bench/bench_cuda.py, the whole grid with the deterministic
#           column (about 190 s); BENCH_ARGS replaces its arguments, e.g.
#           BENCH_ARGS="--only dense --dims 128 --ab NAME=VALUE"
#   pytest  builds the Python package here (wheels of scikit-build-core,
#           nanobind, pathspec carried in .whl; --no-build-isolation) and
#           runs tests/python on CUDA
#   build   (first) builds libflashsdpa.so, the test driver and the Python
#           extension here, on the device, for 90a-real into /tmp/build-dev
#           (about 3 min on 16 cores; Highway, GoogleTest, DLPack from the
#           Debian packages unpacked into $DEVDEPS, default .devdeps) and
#           uses them in place of .carry; the package then imports from
#           python/ (PYTHONPATH is set for the later steps)
#   overhead  bench/overhead.py: a small call's device and host time per
#           layer against PyTorch's backends, the profile, CUDA-graph replay
#   carried the Python extension in $CARRY (tools/device/cuda_carry.sh) is used
#   pyquick tests/python/test_cuda.py and test_fast_path.py (after build)
#   sweep   bench/bench_sweep.py (SWEEP_ARGS, default --quick)
#   kv      KV caches (issue 20): flashsdpa_cuda_tests --kv-only (pages,
#           cache rows, leftpad, every family vs the fp64 reference, the
#           debug checks), then tests/python/test_kvcache.py's CUDA cases
#           (after build or carried)
#   decode  bench/bench_decode_cuda.py (DECODE_ARGS, default the grid with a
#           420 s budget): paged vs contiguous decode, % of copy bandwidth
#   sparse  block-sparse masks (issue 26): the driver's bsp cases (tensor-core
#           and SIMT paths), compute-sanitizer memcheck on a few of them,
#           tests/python/test_block_sparse.py (after build), then
#           bench/bench_block_sparse.py (SPARSE_ARGS, default --quick)
#   sparsebench  that benchmark alone
#   parcheck  the correctness runs at once, each in the background (the
#           GPU has room; timings are not taken): --quick, --kv-only, the
#           bsp cases, the determinism cases, compute-sanitizer memcheck on
#           a few KV and bsp cases, and test_cuda.py, test_fast_path.py and every
#           other pytest case with cuda in its id (after build or carried). Then each one's summary.
# KEEP_GOING=1: a failed quick step does not stop the call.
# Logs land in $OUT (at most 8 files come back); a crash keeps what was
# written, since every test log is line-buffered.
set -o pipefail
STEPS=${1:-info,quick}
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
CARRY=${CARRY:-.carry}
T0=$(date +%s)
has() { [[ ",$STEPS," == *",$1,"* ]]; }
if has build; then
  DEVDEPS=${DEVDEPS:-$PWD/.devdeps}
  echo "[build] cmake for 90a-real"
  cmake -S . -B /tmp/build-dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHSDPA_CUDA_ARCHITECTURES=90a-real \
    -DFLASHSDPA_BUILD_PYTHON=ON -DFLASHSDPA_METAL_EMU_TESTS=OFF -DCMAKE_PREFIX_PATH="$DEVDEPS" \
    >"$OUT/build.log" 2>&1 &&
    cmake --build /tmp/build-dev -j16 --target flashsdpa flashsdpa_cuda_tests _C >>"$OUT/build.log" 2>&1 ||
    { tail -40 "$OUT/build.log"; exit 1; }
  mkdir -p /tmp/carry
  cp -L /tmp/build-dev/src/libflashsdpa.so /tmp/build-dev/flashsdpa_cuda_tests /tmp/carry/
  cp -L "$DEVDEPS"/lib/x86_64-linux-gnu/libhwy.so.1 /tmp/carry/
  cp /tmp/build-dev/python/_C*.so python/flashsdpa/
  CARRY=/tmp/carry
  export PYTHONPATH=$PWD/python:$PYTHONPATH
  echo "[build] done in $(( $(date +%s) - T0 ))s"
fi
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
# tests LOG SECONDS ARGS...: one run of the test driver, appended to
# $OUT/LOG; prints its failures and summary.
tests() {
  local log=$OUT/$1 secs=$2
  shift 2
  el "tests $*"
  timeout "$secs" stdbuf -oL "$TEST" "$@" >>"$log" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && echo "  timed out after ${secs}s"
  grep -iE "^FAIL|^SKIP|illegal|error|CUDA TESTS" "$log" | tail -6
  return $rc
}
# san TOOL ARGS...: compute-sanitizer over the test driver, one thread.
san() {
  local tool=$1
  shift
  el "$tool $*"
  timeout 120 compute-sanitizer --tool "$tool" --print-limit 20 "$TEST" --threads 1 "$@" \
    >>"$OUT/san_$tool.log" 2>&1
  tail -1 "$OUT/san_$tool.log"
}

if has carried; then
  # The Python extension built here for the device's Python (3.12) and
  # carried with the library (tools/device/cuda_carry.sh), packed.
  if [ -f .carry-pack/carry.tar.xz ]; then
    mkdir -p "$CARRY" && python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
      .carry-pack/carry.tar.xz "$CARRY" &&
      ln -sf libflashsdpa.so.0 "$CARRY/libflashsdpa.so"
  fi
  cp "$CARRY"/_C*.so python/flashsdpa/ && export PYTHONPATH=$PWD/python:$PYTHONPATH
fi
LIB=$CARRY/libflashsdpa.so
TEST=$CARRY/flashsdpa_cuda_tests
export LD_LIBRARY_PATH=$CARRY:$PWD/$CARRY:$PWD/.devdeps/lib:$LD_LIBRARY_PATH
if has info; then
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$OUT/info.txt"
  cuobjdump --dump-sass "$LIB" 2>/dev/null |
    awk '/Function : /{f=$3} /HGMMA/{c[f]++} END{for(k in c) print c[k], k}' | grep hopper |
    tee -a "$OUT/info.txt" | wc -l | sed 's/$/ Hopper kernels with HGMMA/'
fi
if has quick; then
  tests quick.log ${QUICK_S:-200} --quick
  grep -q "CUDA TESTS: .* 0 failed" "$OUT/quick.log" || [ -n "$KEEP_GOING" ] || exit 1
fi
if has parcheck; then
  el parcheck
  bg() { local log=$OUT/$1; shift; timeout 540 stdbuf -oL "$@" >"$log" 2>&1; echo "rc=$?" >>"$log"; }
  bg quick.log "$TEST" --quick &
  bg kv.log "$TEST" --kv-only &
  bg sparse.log "$TEST" --no-long --filter bsp &
  { bg det.log "$TEST" --determinism-only; for f in h_s1 hbm_s hb256; do
      timeout 200 "$TEST" --no-long --deterministic --filter $f >>"$OUT/det.log" 2>&1; done; } &
  { timeout 250 compute-sanitizer --tool memcheck --print-limit 20 "$TEST" --threads 1 --filter bsp_s5x700 \
      >"$OUT/san.log" 2>&1; timeout 250 compute-sanitizer --tool memcheck --print-limit 20 "$TEST" \
      --threads 1 --kv-only --quick >>"$OUT/san.log" 2>&1; } &
  (cd tests/python && { bg pytest.log python3 -m pytest -q -p no:cacheprovider test_cuda.py \
      test_fast_path.py; bg pytest_kv.log python3 -m pytest -q -p no:cacheprovider . -k cuda \
      --deselect test_cuda.py --deselect test_fast_path.py; }) &
  wait
  for f in quick kv sparse det san pytest pytest_kv; do
    echo "== $f"; grep -iE "^FAIL|illegal|ERROR SUMMARY|CUDA TESTS|passed|failed|rc=" "$OUT/$f.log" | tail -8
  done
fi
if has full; then
  tests full.log 560 --no-long
fi
if has det; then
  tests det.log 60 --determinism-only
  tests det.log 100 --no-long --deterministic --filter h_s1
  tests det.log 100 --no-long --deterministic --filter hbm_s
  tests det.log 100 --no-long --deterministic --filter hb256
fi
if has masks; then
  FLASHSDPA_CUDA_FORCE=mask_skip=0 tests masks.log 100 --no-long --filter hbm_s
fi
if has san; then
  for tool in memcheck racecheck; do
    san $tool --quick --filter h_s1
    san $tool --quick --deterministic --filter h_s1
    san $tool --quick --filter hbm_s257
    san $tool --quick --filter hb256
  done
fi
if has bench; then
  el bench
  # shellcheck disable=SC2086
  PYTHONUNBUFFERED=1 timeout 400 python3 bench/bench_cuda.py --lib "$LIB" --results "$OUT/bench.md" \
    --png "$OUT/bench_cuda.png" ${BENCH_ARGS:---det-too} >"$OUT/bench.log" 2>&1
  echo "  rc=$?"
  grep "^Geometric" "$OUT/bench.md"
fi
if has overhead; then
  el overhead
  PYTHONUNBUFFERED=1 timeout 150 python3 bench/overhead.py ${OVERHEAD_ARGS:---profile --graph} 2>&1 |
    tee "$OUT/overhead.log" | tail -45
fi
if has pyquick; then
  el pyquick
  (cd tests/python && timeout 120 python3 -m pytest -q -p no:cacheprovider test_cuda.py test_fast_path.py 2>&1 | tail -4)
fi
if has sparse; then
  tests sparse.log 300 --filter bsp
  san memcheck --filter gqa_causal_bf16  # general and band-only variants
  san memcheck --filter bsp_s5x700
  el pytest block_sparse
  (cd tests/python && timeout 300 python3 -m pytest -q -p no:cacheprovider test_block_sparse.py 2>&1 |
    tail -4)
fi
if has sparse || has sparsebench; then
  el bench_block_sparse
  # shellcheck disable=SC2086
  PYTHONUNBUFFERED=1 timeout 500 python3 bench/bench_block_sparse.py ${SPARSE_ARGS:---quick} \
    --results "$OUT/sparse.md" >"$OUT/sparse_bench.log" 2>&1
  echo "  rc=$?"
  tail -30 "$OUT/sparse.md"
fi
if has sweep; then
  el sweep
  # shellcheck disable=SC2086
  PYTHONUNBUFFERED=1 timeout 480 python3 bench/bench_sweep.py --results "$OUT/sweep.md" \
    --png "$OUT/sweep.png" ${SWEEP_ARGS:---quick} >"$OUT/sweep.log" 2>&1
  echo "  rc=$?"
  tail -25 "$OUT/sweep.log"
fi
if has kv; then
  tests kv.log ${KV_S:-240} --kv-only
  el kvpy
  (cd tests/python && timeout 300 python3 -m pytest -q -p no:cacheprovider test_kvcache.py -k "cuda or merge" 2>&1 |
    tee "$OUT/kvpy.log" | tail -4)
fi
if has decode; then
  el decode
  # shellcheck disable=SC2086
  PYTHONUNBUFFERED=1 timeout 540 python3 bench/bench_decode_cuda.py --results "$OUT/decode.md" \
    ${DECODE_ARGS:---budget-s 420} >"$OUT/decode.log" 2>&1
  echo "  rc=$?"
  tail -45 "$OUT/decode.log"
fi
if has pytest; then
  el pytest build
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site
  CMAKE_BUILD_PARALLEL_LEVEL=16 timeout 240 python3 -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps \
    -C cmake.define.FLASHSDPA_WITH_CUDA=ON -C cmake.define.FLASHSDPA_CUDA_ARCHITECTURES=90a-real -C cmake.define.CMAKE_PREFIX_PATH=$PWD/.devdeps \
    -C cmake.define.FLASHSDPA_BUILD_TESTS=OFF -C build-dir=/tmp/build-py --target /tmp/pyinst . >"$OUT/pip.log" 2>&1 ||
    tail -30 "$OUT/pip.log"
  el pytest run
  (cd tests/python && PYTHONPATH=/tmp/pyinst:/tmp/site timeout 200 python3 -m pytest -q -p no:cacheprovider 2>&1 |
    tee "$OUT/pytest.log" | tail -3)
fi
el end
