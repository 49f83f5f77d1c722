#!/bin/bash
# Development machine: build the library and the CUDA test driver for sm_90a
# (build-h) and copy what tools/device/device.sh runs into .carry/ (git-ignored;
# pass carry: [".carry", ".devdeps"] to the device call). CARRY=dir and BUILD=dir
# pick other folders (a git worktree: CARRY=/work/main/.carry-NAME).
set -e
CARRY=${CARRY:-.carry}
BUILD=${BUILD:-build-h}
DEVDEPS=${DEVDEPS:-$PWD/.devdeps}
cmake -S . -B $BUILD -G Ninja -DFLASHSDPA_CUDA_ARCHITECTURES=90a-real \
  -DFLASHSDPA_METAL_EMU_TESTS=OFF -DCMAKE_PREFIX_PATH=$DEVDEPS >/dev/null
cmake --build $BUILD -j2 --target flashsdpa flashsdpa_cuda_tests
mkdir -p $CARRY
cp -L $BUILD/src/libflashsdpa.so $CARRY/libflashsdpa.so
cp -L $BUILD/src/libflashsdpa.so $CARRY/libflashsdpa.so.0
cp -L $DEVDEPS/lib/x86_64-linux-gnu/libhwy.so.1 $CARRY/
cp $BUILD/flashsdpa_cuda_tests $CARRY/
ls -la $CARRY
