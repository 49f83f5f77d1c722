#!/usr/bin/env bash
# Runs every test: C++ (ctest: core + CPU backend grid, bad input, the C ABI
# example, the Metal emulation harness and kernels; CUDA tests skip cleanly
# without a GPU), the same C++ tests again under AddressSanitizer + UBSan,
# and the Python suite (pytest). Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}

bash scripts/install_deps.sh

echo "== C++ build (Release; CUDA backend compiled when nvcc is present)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$JOBS"
echo "== ctest"
ctest --test-dir build --output-on-failure -j"$JOBS"

if [ "${FLASHSDPA_SKIP_SANITIZERS:-0}" != "1" ]; then
  echo "== C++ build and ctest under AddressSanitizer + UBSan (CPU only)"
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFLASHSDPA_WITH_CUDA=OFF \
    -DFLASHSDPA_SANITIZE=address,undefined >/dev/null
  cmake --build build-asan -j"$JOBS"
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan --output-on-failure -j"$JOBS"
fi

echo "== Python package"
# CUDA off here: CI has no GPU and the C++ build above already compiled it.
"$PY" -m pip install -q --disable-pip-version-check --no-build-isolation \
  -C cmake.define.FLASHSDPA_WITH_CUDA=OFF -C build-dir=build-py .
echo "== manylinux wheel (reusing that build) and its smoke test in a fresh virtual environment"
BUILD_DIR=build-py bash scripts/build_wheel.sh
bash tests/packaging/wheel_smoke.sh
echo "== pytest"
cd tests/python && "$PY" -m pytest -q -p no:cacheprovider
