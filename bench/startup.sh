#!/usr/bin/env bash
# Start-up cost of a trivial sched_switch counter: compile + load + attach +
# read + exit, for denet cold (--no-cache: clang compiles), denet warm (the
# program from the compile cache, no compiler in the process), bcc's Python
# front end and bpftrace, interleaved in one run so they share the
# machine's state. Reports the median wall time and peak RSS of each, and
# denet's compile (or cache load) time on its own. Then the same cold and
# warm for `denet run -- true` and `denet script offcpu -d 1`, and what
# detaching tracepoints costs (the kernel's share of the wall time).
#
#   bench/startup.sh [BUILD_DIR] [RUNS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../build}
runs=${2:-15}
denet=$build/denet
out=$here/results
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

run() { # name, command...
  local name=$1
  shift
  /usr/bin/time -f "%e %M" -o "$tmp/t" "$@" >/dev/null 2>"$tmp/err" || {
    echo "$name failed:" >&2
    cat "$tmp/err" >&2
    exit 1
  }
  cat "$tmp/t" >>"$tmp/$name"
  grep -o 'compile_s=[0-9.]*' "$tmp/err" | cut -d= -f2 >>"$tmp/$name.compile" || true
}

# denet's cache of its own, filled by the warm-ups
export DENET_CACHE_DIR=$tmp/cache
mkdir -m 0755 "$DENET_CACHE_DIR"

# one warm-up each (page cache, and denet's cache), not counted
"$denet" script "$here/startup/sched_switch.lua" >/dev/null 2>&1
"$denet" run -q -- true >/dev/null 2>&1
"$denet" script offcpu -d 1 >/dev/null 2>&1
/usr/bin/python3 "$here/startup/sched_switch.py" >/dev/null 2>&1
bpftrace -e 'tracepoint:sched:sched_switch { @n = count(); } BEGIN { exit(); }' >/dev/null 2>&1

for _ in $(seq "$runs"); do
  run denet-cold "$denet" --no-cache script "$here/startup/sched_switch.lua"
  run denet-warm "$denet" script "$here/startup/sched_switch.lua"
  run python-bcc /usr/bin/python3 "$here/startup/sched_switch.py"
  run bpftrace bpftrace -e 'tracepoint:sched:sched_switch { @n = count(); } BEGIN { exit(); }'
  run run-cold "$denet" --no-cache run -q -- true
  run run-warm "$denet" run -q -- true
  run offcpu-cold "$denet" --no-cache script offcpu -d 1
  run offcpu-warm "$denet" script offcpu -d 1
  "$denet" script "$here/startup/detach.lua" >>"$tmp/detach"
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

{
  echo "# Start-up: sched_switch counter (compile + load + attach + exit)"
  echo
  echo "$(date -u +%Y-%m-%d), kernel $(uname -r), $(nproc) CPUs, $runs interleaved runs each, medians."
  echo
  echo "| tool | wall (s) | peak RSS (MiB) |"
  echo "|---|---|---|"
  for t in denet-cold denet-warm python-bcc bpftrace; do
    w=$(cut -d' ' -f1 "$tmp/$t" | median)
    r=$(cut -d' ' -f2 "$tmp/$t" | median)
    printf '| %s | %.3f | %.1f |\n' "$t" "$w" "$(awk -v r="$r" 'BEGIN { print r / 1024 }')"
  done
  echo
  printf 'denet compile time alone (clang inside libbcc): median %.3f s; warm, the cache load instead: %.4f s\n' \
    "$(median <"$tmp/denet-cold.compile")" "$(median <"$tmp/denet-warm.compile")"
  echo
  echo "## The issue's commands, cold (--no-cache) and warm"
  echo
  echo "| command | cold wall (s) | cold RSS (MiB) | warm wall (s) | warm RSS (MiB) |"
  echo "|---|---|---|---|---|"
  for t in run offcpu; do
    label='denet run -q -- true'
    [ "$t" = offcpu ] && label='denet script offcpu -d 1'
    printf '| %s | %.3f | %.1f | %.3f | %.1f |\n' "$label" \
      "$(cut -d' ' -f1 "$tmp/$t-cold" | median)" "$(cut -d' ' -f2 "$tmp/$t-cold" | median | awk '{ print $1 / 1024 }')" \
      "$(cut -d' ' -f1 "$tmp/$t-warm" | median)" "$(cut -d' ' -f2 "$tmp/$t-warm" | median | awk '{ print $1 / 1024 }')"
  done
  echo
  printf 'Detaching four tracepoints at exit: as perf events (TRACEPOINT_PROBE) median %s ms, as raw tracepoints %s ms.\n' \
    "$(grep -o 'perf_tp_ms=[0-9.]*' "$tmp/detach" | cut -d= -f2 | median)" \
    "$(grep -o 'raw_tp_ms=[0-9.]*' "$tmp/detach" | cut -d= -f2 | median)"
} | tee "$out/startup.md"
