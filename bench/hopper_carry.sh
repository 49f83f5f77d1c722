#!/bin/bash
# Development machine: build the library and the CUDA test driver for sm_90a
# (build-h) and copy what bench/hopper_device.sh runs into .carry/ (git-
# ignored; pass carry: [".carry"] to the device call).
set -e
cmake -S . -B build-h -G Ninja -DFLASHSDPA_CUDA_ARCHITECTURES=90a-real \
  -DFLASHSDPA_METAL_EMU_TESTS=OFF -DCMAKE_PREFIX_PATH=$PWD/.devdeps >/dev/null
cmake --build build-h -j2 --target flashsdpa flashsdpa_cuda_tests
mkdir -p .carry
cp -L build-h/src/libflashsdpa.so .carry/libflashsdpa.so
cp -L build-h/src/libflashsdpa.so .carry/libflashsdpa.so.0
cp -L .devdeps/lib/x86_64-linux-gnu/libhwy.so.1 .carry/
cp build-h/flashsdpa_cuda_tests .carry/
ls -la .carry
