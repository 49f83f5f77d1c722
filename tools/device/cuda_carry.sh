#!/bin/bash
# Development machine: build the library, the CUDA test driver and the Python
# extension for sm_90a and the device's Python (3.12; pyenv here), and copy
# them into $CARRY, packed into .carry-pack/carry.tar.xz for a device call
# (carry [".carry-pack"], then tools/device/device.sh carried,...). Takes
# about 20 min on 2 cores: build on the device instead (device.sh build)
# when device time allows.
set -e
CARRY=${CARRY:-.carry}
BUILD=${BUILD:-build-h}
PY=${PY:-$HOME/.pyenv/versions/3.12.1/bin/python3.12}
cmake -S . -B $BUILD -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHSDPA_CUDA_ARCHITECTURES=90a-real \
  -DFLASHSDPA_BUILD_PYTHON=ON -DFLASHSDPA_METAL_EMU_TESTS=OFF -DPython_EXECUTABLE=$PY \
  -Dnanobind_DIR="$(python3 -m nanobind --cmake_dir)" >/dev/null
cmake --build $BUILD -j2 --target flashsdpa flashsdpa_cuda_tests _C
mkdir -p $CARRY
cp -L $BUILD/src/libflashsdpa.so $CARRY/libflashsdpa.so
cp -L $BUILD/src/libflashsdpa.so $CARRY/libflashsdpa.so.0
cp -L /usr/lib/x86_64-linux-gnu/libhwy.so.1 $CARRY/
cp $BUILD/flashsdpa_cuda_tests $BUILD/python/_C*.so $CARRY/
# The four files are about 95 MB, over a device call's 64 MiB; compressed
# about 5 MB: carry .carry-pack, and device.sh's `carried` step unpacks it.
mkdir -p .carry-pack
tar -C $CARRY -cf - libflashsdpa.so.0 libhwy.so.1 flashsdpa_cuda_tests $(cd $CARRY && ls _C*.so) |
  xz -6 -T2 >.carry-pack/carry.tar.xz
ls -la $CARRY .carry-pack
