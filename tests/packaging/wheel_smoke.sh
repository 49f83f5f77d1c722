#!/usr/bin/env bash
# Installs the manylinux wheel from dist/ into a fresh virtual environment
# that sees none of this machine's Python packages, and checks that it needs
# no system library beyond what manylinux allows: the extension's Highway
# must be the copy inside the wheel, and a forward on NumPy arrays (NumPy from
# PyPI) must match the fp64 reference. PyTorch is not installed there, so the
# torch-facing names must raise their ImportError. The typing marker and the
# extension's stub must be there, the stub importing only the standard library.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
wheel=$(ls dist/flashsdpa-*manylinux*.whl | head -n 1)
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
"$PY" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "$wheel" numpy
cd "$venv"  # away from the source tree, so the installed package is imported
"$venv/bin/python" - <<'PY'
import ast, glob, os, subprocess, sys
import numpy as np
import flashsdpa
from flashsdpa import _C

ext = glob.glob(os.path.join(os.path.dirname(flashsdpa.__file__), "_C*.so"))[0]
ldd = subprocess.run(["ldd", ext], capture_output=True, text=True, check=True).stdout
hwy = [l for l in ldd.splitlines() if "libhwy" in l]
assert hwy and all("flashsdpa.libs" in l for l in hwy), "Highway not bundled:\n" + ldd
assert "not found" not in ldd, ldd

q = np.random.default_rng(0).standard_normal((2, 4, 33, 64)).astype(np.float32)
out = np.empty_like(q)
p = _C.Params()
p.causal = True
_C.forward(p, q, q, q, out)
ref = np.empty(q.shape)
_C.reference_forward(p, q, q, q, ref)
err = float(np.abs(out - ref).max())
assert err < 1e-5, err
pkg = os.path.dirname(flashsdpa.__file__)
assert os.path.exists(os.path.join(pkg, "py.typed")), "py.typed missing"
with open(os.path.join(pkg, "_C.pyi")) as f:
    stub = ast.parse(f.read())
imported = {a.name.split(".")[0] for n in ast.walk(stub) if isinstance(n, ast.Import) for a in n.names}
imported |= {n.module.split(".")[0] for n in ast.walk(stub) if isinstance(n, ast.ImportFrom) and n.level == 0}
assert imported <= set(sys.stdlib_module_names), f"_C.pyi imports {imported}"
try:
    flashsdpa.enable
except ImportError as e:
    assert "flashsdpa[torch]" in str(e)
else:
    raise AssertionError("enable() without torch did not raise ImportError")
print(f"wheel smoke test: OK ({flashsdpa.__version__}, backends {flashsdpa.backends()}, max error {err:.1e})")
PY
