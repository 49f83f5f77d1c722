#!/usr/bin/env bash
# Installs the built library into a temporary prefix and builds the C ABI
# example (examples/c_abi_example.c, which checks its result against the
# fp64 reference) as an outside project would: once with
# find_package(flashsdpa) (shared and static), once with pkg-config. Each
# program must run and pass.
# Usage: run.sh BUILD_DIR C_COMPILER
set -euo pipefail
build=$1 cc=$2
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cmake --install "$build" --prefix "$work/prefix" >/dev/null
test -f "$work/prefix/include/flashsdpa/flashsdpa.h"

echo "== find_package(flashsdpa)"
cmake -S "$root/tests/consumer/project" -B "$work/build" -G Ninja -DCMAKE_C_COMPILER="$cc" \
  -DCMAKE_PREFIX_PATH="$work/prefix" -DEXAMPLE_SOURCE="$root/examples/c_abi_example.c" >/dev/null
cmake --build "$work/build" >/dev/null
"$work/build/consumer_shared"
if [ -x "$work/build/consumer_static" ]; then
  "$work/build/consumer_static"
else
  echo "static consumer not built: the static library's dependencies were not found" >&2
  exit 1
fi

echo "== pkg-config flashsdpa"
pc_dir=$(dirname "$(find "$work/prefix" -name flashsdpa.pc)")
flags=$(PKG_CONFIG_PATH="$pc_dir" pkg-config --cflags --libs flashsdpa)
libdir=$(PKG_CONFIG_PATH="$pc_dir" pkg-config --variable=libdir flashsdpa)
# shellcheck disable=SC2086
"$cc" -std=c99 -o "$work/consumer_pc" "$root/examples/c_abi_example.c" $flags -lm -Wl,-rpath,"$libdir"
"$work/consumer_pc"
echo "install consumer: OK"
