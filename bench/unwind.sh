#!/usr/bin/env bash
# Unwind tables: the time to build each from .eh_frame and to load it into
# the kernel, and the kernel memory it takes, with an empty cache, for the
# files a Python process maps (libc, libstdc++, libpython, the executable)
# and two large Debian binaries.
#
#   bench/unwind.sh [BUILD_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../build}
out=$here/results
mkdir -p "$out"
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
{
  echo "# Unwind tables: build and load, empty cache"
  echo
  echo "$(date -u +%Y-%m-%d), kernel $(uname -r), $(nproc) CPUs."
  echo
  DENET_CACHE_DIR=$cache "$build/denet" script "$here/unwind/tables.lua" \
    /lib/x86_64-linux-gnu/libc.so.6 /usr/lib/x86_64-linux-gnu/libstdc++.so.6 \
    /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0 /usr/bin/python3.11 /usr/bin/git /usr/bin/perf
} | tee "$out/unwind.md"
