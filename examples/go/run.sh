#!/usr/bin/env bash
# Builds and runs the Go example against a flashsdpa build (ctest
# go_example), with cgo's full pointer checks on. Exits 77, which ctest
# reports as skipped, when no Go toolchain is found (Debian: golang-go, which
# scripts/install_deps.sh installs).
# Usage: run.sh LIB_DIR WORK_DIR INCLUDE_DIRS   (INCLUDE_DIRS: ':'-separated,
# flashsdpa's include directory and DLPack's)
set -euo pipefail
lib=$1 work=$2 includes=$3
go=$(command -v go || true)
if [ -z "$go" ] && [ -x /usr/local/go/bin/go ]; then go=/usr/local/go/bin/go; fi
if [ -z "$go" ]; then
  echo "SKIPPED: go not found on PATH or in /usr/local/go/bin"
  exit 77
fi
cflags=""
IFS=':' read -ra dirs <<< "$includes"
for d in "${dirs[@]}"; do [ -n "$d" ] && cflags+=" -I$d"; done
cd "$(dirname "$0")"
# No modules to fetch: the proxy is off and the caches live in the build tree.
export GOCACHE=$work/cache GOPATH=$work/gopath GOPROXY=off GOFLAGS=-mod=mod GOTOOLCHAIN=local
CGO_ENABLED=1 CGO_CFLAGS="$cflags" CGO_LDFLAGS="-L$lib -Wl,-rpath,$lib" "$go" build -o "$work/attention" .
GODEBUG=cgocheck=2 "$work/attention"
