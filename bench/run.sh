#!/usr/bin/env bash
# Run every benchmark; each writes its table to bench/results/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:-$here/../build}" && pwd)
"$here/startup.sh" "$build"
"$here/monitor.sh" "$build"
"$here/counters.sh" "$build"
"$here/offcpu.sh" "$build"
"$here/unwind.sh" "$build"
"$here/syscalls.sh" "$build"
