#!/bin/bash
# One device call for the Hopper forward (issue 5): runs the binaries built
# on the development machine (carried in .carry/: libflashsdpa.so and
# flashsdpa_cuda_tests, built with -DFLASHSDPA_CUDA_ARCHITECTURES=90a-real),
# or builds them here when .carry/ has none. Steps (comma list in $1):
#   info    GPU name/clocks
#   sass    HGMMA count of the Hopper kernels (cuobjdump)
#   quick   flashsdpa_cuda_tests --quick (with gate: stop unless it passes)
#   full    flashsdpa_cuda_tests --no-long (then --no-hopper --quick, and the
#           D = 64 cases with 3 consumer warpgroups)
#   wg3test only the latter
#   longonly flashsdpa_cuda_tests --long-only (the long tc-vs-SIMT cases)
#   long    flashsdpa_cuda_tests (everything)
#   san     compute-sanitizer memcheck + racecheck on a reduced grid
#   bench   bench_cuda.py dense fwd, bf16+fp16, D64/128, S 1k/4k/16k vs FLASH, cuDNN
#   benchwg D64 bf16 with 2 consumer warpgroups (FLASHSDPA_CUDA_HOPPER_D64_WG=2)
#   benchwg3 D64 bf16 S <= 4096 with 3 consumer warpgroups
#   benchold the sm_80 kernels on the same GPU (FLASHSDPA_CUDA_NO_HOPPER=1)
#   bench1  bf16 only, S 4096/16384 (quick iteration)
#   bench64 D = 64 only, bf16 and fp16
# Logs and tables land in $OUT (at most 8 files come back).
set -o pipefail
STEPS=${1:-info,quick}
OUT=${OUT:-/tmp/hopper_out}
mkdir -p "$OUT"
CARRY=${CARRY:-.carry}  # folder of the carried binaries (bench/hopper_carry.sh)
LIB=$CARRY/libflashsdpa.so
TEST=$CARRY/flashsdpa_cuda_tests
has() { [[ ",$STEPS," == *",$1,"* ]]; }
if [ ! -x "$TEST" ]; then
  cmake -S . -B build-d -G Ninja -DCMAKE_PREFIX_PATH=$PWD/.devdeps \
    -DFLASHSDPA_CUDA_ARCHITECTURES=90a-real -DFLASHSDPA_METAL_EMU_TESTS=OFF >"$OUT/cfg.log" 2>&1 &&
    cmake --build build-d -j16 --target flashsdpa flashsdpa_cuda_tests >"$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log"; exit 1; }
  mkdir -p $CARRY && cp build-d/src/libflashsdpa.so build-d/flashsdpa_cuda_tests $CARRY/
fi
export LD_LIBRARY_PATH=$PWD/$CARRY:$PWD/.devdeps/lib:$LD_LIBRARY_PATH
if has info; then
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv | tee -a "$OUT/info.txt"
fi
if has sass; then
  cuobjdump --dump-sass "$LIB" 2>/dev/null | awk '/Function : /{f=$3} /HGMMA/{c[f]++} END{for(k in c) print c[k], k}' | grep hopper | tee -a "$OUT/info.txt"
fi
if has quick; then
  timeout 150 "$TEST" --quick 2>&1 | tee "$OUT/test_quick.log" | grep -v "^ok " | tail -40
  rc=$?
  # stop here when the quick grid fails (or hangs): nothing else is worth the device time
  if has gate && ! grep -q "CUDA TESTS: .* 0 failed" "$OUT/test_quick.log"; then
    grep "FAIL" "$OUT/test_quick.log" | head -40; exit 1
  fi
fi
if has full; then
  timeout 420 "$TEST" --no-long 2>&1 | tee "$OUT/test_full.log" | grep -v "^ok " | tail -30
  timeout 120 "$TEST" --quick --no-hopper --filter h_ 2>&1 | tee "$OUT/test_nohopper.log" | tail -1
  FLASHSDPA_CUDA_HOPPER_D64_WG=3 timeout 120 "$TEST" --no-long --filter _d64 2>&1 | tee -a "$OUT/test_nohopper.log" | tail -1
fi
if has wg3test; then  # D = 64 cases with 3 consumer warpgroups (the default picks 2 below Sk 4096)
  FLASHSDPA_CUDA_HOPPER_D64_WG=3 timeout 150 "$TEST" --no-long --filter _d64 2>&1 | tee "$OUT/test_wg3.log" | grep -v "^ok \|^MAXERR" | tail -4
fi
if has longonly; then
  timeout 300 "$TEST" --long-only 2>&1 | tee "$OUT/test_long.log" | grep -v "^MAXERR" | tail -8
fi
if has long; then
  timeout 540 "$TEST" 2>&1 | tee "$OUT/test_long.log" | grep -v "^ok " | tail -30
fi
bench() {  # name, extra env, bench args
  local name=$1 envs=$2; shift 2
  env $envs PYTHONUNBUFFERED=1 timeout 300 python3 bench/bench_cuda.py --lib "$LIB" --results "$OUT/bench_$name.md" \
    --png "" --only dense --modes fwd "$@" 2>&1 | tail -3
  grep "^| " "$OUT/bench_$name.md" | head -40
}
if has bench; then
  bench all "" --dims 64,128 --seqs 1024,4096,16384 --dtypes bf16,fp16 --refs FLASH,CUDNN
fi
if has benchwg; then  # D64: 2 consumer warpgroups instead of 3
  bench wg2 "FLASHSDPA_CUDA_HOPPER_D64_WG=2" --dims 64 --seqs 1024,4096,16384 --dtypes bf16 --refs FLASH
fi
if has benchwg3; then  # D64 S <= 4096 with 3 consumer warpgroups (the default there is 2)
  bench wg3 "FLASHSDPA_CUDA_HOPPER_D64_WG=3" --dims 64 --seqs 1024,4096 --dtypes bf16 --refs FLASH
fi
if has benchold; then  # the sm_80 kernels on the same GPU (before/after)
  bench old "FLASHSDPA_CUDA_NO_HOPPER=1" --dims 64,128 --seqs 1024,4096,16384 --dtypes bf16 --refs FLASH
fi
if has bench1; then
  bench one "" --dims 64,128 --seqs 4096,16384 --dtypes bf16 --refs FLASH,CUDNN
fi
if has bench64; then
  bench d64 "" --dims 64 --seqs 1024,4096,16384 --dtypes bf16,fp16 --refs FLASH,CUDNN
fi
if has san; then
  for tool in memcheck racecheck; do
    timeout 100 compute-sanitizer --tool $tool --print-limit 20 "$TEST" --quick --threads 1 --filter h_s1 \
      2>&1 | tee "$OUT/san_$tool.log" | tail -6
  done
fi
