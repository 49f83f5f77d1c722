#!/bin/bash
# Device call for the Hopper backward (issue 5). Runs the binaries built on
# the development machine and carried in .carry/ (bench/hopper_carry.sh:
# libflashsdpa.so and flashsdpa_cuda_tests for 90a-real). Steps ($1, comma
# list):
#   info    GPU name, HGMMA count of the backward kernels (cuobjdump)
#   quick   h_* cases, --quick (gate: stop unless all pass)
#   full    --no-long (every case; the main grid and h_* run deterministic = 0)
#           and the h_* cases on the sm_80 kernels (--no-hopper)
#   hfull   every h_* variant (both dtypes) on the two small h_ shapes
#   san     compute-sanitizer memcheck + racecheck on a reduced h_* grid
#   bench   dense fwd+bwd bf16 D64/128 S 1k/4k/16k vs FLASH and cuDNN
#   benchsimple D = 128 with FLASHSDPA_CUDA_HOPPER_BWD_SIMPLE=1
#   benchold the same on the sm_80 kernels (FLASHSDPA_CUDA_NO_HOPPER=1)
#   pytest  builds the Python package (carried .whl: scikit-build-core,
#           nanobind, pathspec; --no-build-isolation) and runs tests/python
# Logs land in $OUT (at most 8 files come back).
set -o pipefail
STEPS=${1:-info,quick}
OUT=${OUT:-/tmp/hopper_out}
mkdir -p "$OUT"
CARRY=${CARRY:-.carry}  # folder of the carried binaries (bench/hopper_carry.sh)
LIB=$CARRY/libflashsdpa.so
TEST=$CARRY/flashsdpa_cuda_tests
has() { [[ ",$STEPS," == *",$1,"* ]]; }
export LD_LIBRARY_PATH=$PWD/$CARRY:$PWD/.devdeps/lib:$LD_LIBRARY_PATH
T0=$(date +%s)
el() { echo "[t+$(( $(date +%s) - T0 ))s] $*"; }
if has info; then
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$OUT/info.txt"
  cuobjdump --dump-sass "$LIB" 2>/dev/null | awk '/Function : /{f=$3} /HGMMA/{c[f]++} END{for(k in c) print c[k], k}' | grep hopper | tee -a "$OUT/info.txt"
fi
if has quick; then
  el quick
  timeout 120 "$TEST" --quick --filter h_ 2>&1 | tee "$OUT/test_quick.log" | grep -v "^ok \|^MAXERR" | tail -30
  if ! grep -q "CUDA TESTS: .* 0 failed" "$OUT/test_quick.log"; then
    grep "FAIL" "$OUT/test_quick.log" | head -40; exit 1
  fi
fi
if has full; then
  el full
  timeout 300 "$TEST" --no-long 2>&1 | tee "$OUT/test_full.log" | grep -v "^ok \|^MAXERR" | tail -20
  timeout 100 "$TEST" --quick --no-hopper --filter h_ 2>&1 | tee -a "$OUT/test_full.log" | tail -1
fi
if has hfull; then  # every h_* variant (fp16 too) on the two small shapes
  el hfull
  timeout 150 "$TEST" --no-long --filter h_s1 2>&1 | tee "$OUT/test_hfull.log" | grep -v "^ok \|^MAXERR" | tail -8
fi
if has san; then
  el san
  for tool in memcheck racecheck; do
    timeout 100 compute-sanitizer --tool $tool --print-limit 20 "$TEST" --quick --threads 1 --filter h_s1 \
      2>&1 | tee -a "$OUT/san.log" | grep -v "^ok \|^MAXERR" | tail -4
  done
fi
bench() {  # name, extra env, bench args
  local name=$1 envs=$2; shift 2
  el bench $name
  env $envs PYTHONUNBUFFERED=1 timeout 300 python3 bench/bench_cuda.py --lib "$LIB" --results "$OUT/bench_$name.md" \
    --png "" --only dense --modes fwd+bwd "$@" 2>&1 | tail -3
  grep "^| " "$OUT/bench_$name.md" | head -40
}
if has bench; then
  bench bwd "" --dims 64,128 --seqs 1024,4096,16384 --dtypes bf16 --refs FLASH,CUDNN
fi
if has bench1; then
  bench bwd1 "" --dims 64,128 --seqs 4096 --dtypes bf16 --refs FLASH,CUDNN
fi
if has benchsimple; then  # D128 without the PIPE overlap (FLASHSDPA_CUDA_HOPPER_BWD_SIMPLE=1)
  bench simple "FLASHSDPA_CUDA_HOPPER_BWD_SIMPLE=1" --dims 128 --seqs 1024,4096,16384 --dtypes bf16 --refs FLASH
fi
if has benchold; then
  bench old "FLASHSDPA_CUDA_NO_HOPPER=1" --dims 64,128 --seqs 1024,4096,16384 --dtypes bf16 --refs FLASH
fi
if has pytest; then
  el pytest
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site
  CMAKE_BUILD_PARALLEL_LEVEL=16 timeout 240 python3 -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps \
    -C cmake.define.FLASHSDPA_CUDA_ARCHITECTURES=90a-real -C cmake.define.CMAKE_PREFIX_PATH=$PWD/.devdeps \
    -C cmake.define.FLASHSDPA_BUILD_TESTS=OFF -C build-dir=/tmp/build-py --target /tmp/pyinst . >"$OUT/pip.log" 2>&1 ||
    { tail -30 "$OUT/pip.log"; }
  el pytest run
  (cd tests/python && PYTHONPATH=/tmp/pyinst:/tmp/site timeout 150 python3 -m pytest -q -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log" | tail -15)
fi
el end
