#!/usr/bin/env bash
# Builds and runs the Rust example against a flashsdpa build (ctest
# rust_example). Exits 77, which ctest reports as skipped, when cargo is
# neither on PATH nor in ~/.cargo/bin (rustup's default place).
# Usage: run.sh LIB_DIR WORK_DIR   (LIB_DIR holds libflashsdpa.so)
set -euo pipefail
lib=$1 work=$2
cargo=$(command -v cargo || true)
if [ -z "$cargo" ] && [ -x "$HOME/.cargo/bin/cargo" ]; then cargo=$HOME/.cargo/bin/cargo; fi
if [ -z "$cargo" ]; then
  echo "SKIPPED: cargo not found on PATH or in ~/.cargo/bin"
  exit 77
fi
cd "$(dirname "$0")"
# --offline --locked: no crates, no registry, no change to Cargo.lock.
FLASHSDPA_LIB_DIR=$lib CARGO_TARGET_DIR=$work "$cargo" run --offline --locked --quiet
