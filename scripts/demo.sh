#!/usr/bin/env bash
# The main job: installs what is needed, builds and installs the flashsdpa
# Python package, then trains a small transformer for a few steps with and
# without flashsdpa on the present device (cuda, else mps, else cpu) and
# prints loss agreement, dispatch counts, time and peak memory side by side.
# Extra arguments go to the demo, e.g. `bash scripts/demo.sh --steps 20`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

bash scripts/install_deps.sh

echo "== building and installing the flashsdpa Python package"
# The CUDA backend is compiled (when nvcc is present) only if PyTorch sees a
# GPU: the demo runs on the present device, and the kernels take long to build.
if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  CUDA=AUTO
else
  CUDA=OFF
fi
CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-$(nproc)} "$PY" -m pip install -q --disable-pip-version-check \
  --no-build-isolation -C cmake.define.FLASHSDPA_WITH_CUDA=$CUDA -C build-dir=build-py-demo-$CUDA .

echo "== demo"
exec "$PY" examples/train_demo.py "$@"
