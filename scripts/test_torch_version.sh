#!/usr/bin/env bash
# Runs the Python test suite on another PyTorch release, for maintainers
# checking the README's "PyTorch versions" claim. Not part of CI: PyPI's Linux
# torch wheels are CUDA builds, so one version costs 2-4 GB of downloads.
#
#   scripts/test_torch_version.sh 2.4.1            # the whole tests/python
#   scripts/test_torch_version.sh 2.7.1 -x -k sdpa # extra arguments go to pytest
#
# The virtual environment is /tmp/flashsdpa-torch-VERSION (VENV overrides;
# reused when it exists). It is created from $PYTHON (default python3), which
# must be the interpreter the extension is built for. The extension is not
# installed: python/flashsdpa/_C*.so from an in-tree build is used, and built
# (CPU only, build-cpu/, target _C) only when missing. pip's own environment
# variables apply (PIP_INDEX_URL, PIP_FIND_LINKS, ...), e.g. for a local wheel.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ]; then
  echo "usage: $0 TORCH_VERSION [pytest arguments...]" >&2
  exit 2
fi
version=$1
shift
python=${PYTHON:-python3}
venv=${VENV:-/tmp/flashsdpa-torch-$version}

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" "torch==$version" numpy pytest hypothesis
# transformers >= 5.x refuses PyTorch < 2.6 (it imports without torch support);
# 4.57 is the last release series that runs on older PyTorch.
if "$venv/bin/python" -c "import sys, torch; v = tuple(int(x) for x in torch.__version__.split('.')[:2]); sys.exit(v >= (2, 6))"; then
  "${pip[@]}" "transformers==4.57.*"
else
  "${pip[@]}" transformers
fi

suffix=$("$venv/bin/python" -c "import importlib.machinery as m; print(m.EXTENSION_SUFFIXES[0])")
if [ ! -f "python/flashsdpa/_C$suffix" ]; then
  cmake -S . -B build-cpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHSDPA_WITH_CUDA=OFF \
    -DFLASHSDPA_BUILD_PYTHON=ON -DFLASHSDPA_METAL_EMU_TESTS=OFF -DPython_EXECUTABLE="$(command -v "$python")"
  cmake --build build-cpu -j2 --target _C
  cp build-cpu/python/_C*.so python/flashsdpa/
fi

echo "torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'), transformers" \
  "$("$venv/bin/python" -c 'import transformers; print(transformers.__version__)')"
PYTHONPATH="$PWD/python" "$venv/bin/python" -m pytest -q -p no:cacheprovider -rs tests/python "$@"
