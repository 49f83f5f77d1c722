#!/usr/bin/env bash
# Compiles Metal kernel specialisations the planner can emit with Apple's own
# compiler, fast math off (as both hosts compile them). macOS only (xcrun);
# run by .github/workflows/macos-metal.yml. Cannot run on Linux CI.
#
#   tests/metal/macos/compile_specialisations.sh [JOBS]
#
# Every specialisation of `list_configs all` (every family, dtype and head
# dim, each mask kind, every feature at once, the KV cache and the
# block-sparse lists: ~3200) at -std=metal3.0, the
# language version of the C ABI host; the Apple9 plain and all-features ones
# again at metal3.1 and metal3.2 (PyTorch compiles with the newest the OS
# has). Compiling the .metal file with -D flags is what the hosts' assembled
# single-string source is (plan.cpp assemble_source inlines the same includes).
set -euo pipefail
cd "$(dirname "$0")/../../.."
JOBS=${1:-$(sysctl -n hw.ncpu)}
out=$(mktemp -d)
c++ -std=c++20 -O1 -I src -I tests/metal/attention tests/metal/attention/list_configs.cpp src/metal/plan.cpp \
  -o "$out/list_configs"
"$out/list_configs" all > "$out/all.txt"
grep -E '^mtl_a9_.*_(m0_b0a0s0p0v0|m1_b1a1s1p1v1) ' "$out/all.txt" > "$out/a9.txt"
echo "$(wc -l < "$out/all.txt") specialisations; $(wc -l < "$out/a9.txt") also at metal3.1/3.2"

compile() {  # std, then one line of list_configs: name NAME=VALUE ...
  local std=$1 name=$2; shift 2
  local defs=()
  for d in "$@"; do defs+=("-D$d"); done
  if ! xcrun -sdk macosx metal -std="$std" -fno-fast-math -c src/metal/kernels/fsdpa_attention.metal \
       -I src/metal/kernels "${defs[@]}" -o "$OUT/$name.$std.air" 2> "$OUT/$name.$std.log"; then
    echo "FAILED: $name at $std"; cat "$OUT/$name.$std.log"; return 1
  fi
  rm -f "$OUT/$name.$std.air"
}
export -f compile
export OUT=$out
status=0
xargs -P "$JOBS" -L 1 bash -c 'compile metal3.0 "$@"' _ < "$out/all.txt" || status=1
for std in metal3.1 metal3.2; do
  xargs -P "$JOBS" -L 1 bash -c "compile $std \"\$@\"" _ < "$out/a9.txt" || status=1
done
[ $status -eq 0 ] && echo "OK: every listed specialisation compiles with Apple's metal compiler, fast math off"
exit $status
