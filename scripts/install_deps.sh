#!/usr/bin/env bash
# Installs everything the build, the tests and the demo need on a fresh
# Debian machine (this project's CI and developer machines): compilers and
# CMake come with the image; the C++ libraries come from Debian's packages,
# the Python side from PyPI. Idempotent and quick when all is present.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# clang: the Objective-C++ compiler of the simulated macOS build (tests/metal/macsim);
# pkgconf: the installed-package consumer test (tests/consumer);
# golang-go: the cgo example (examples/go; Rust's cargo comes with the image).
for pkg in libhwy-dev libgtest-dev libgmock-dev libdlpack-dev ninja-build clang pkgconf golang-go; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# torch is pinned: on these machines 2.13.0 (CPU) installs from a local
# file, while a looser spec would download gigabytes of CUDA packages.
${PYTHON:-python3} -m pip install -q --disable-pip-version-check -r scripts/requirements-dev.txt
