#!/usr/bin/env bash
# Start-up cost of a trivial sched_switch counter: compile + load + attach +
# read + exit, for denet, bcc's Python front end and bpftrace, interleaved
# in one run so they share the machine's state. Reports the median wall
# time and peak RSS of each, and denet's compile time on its own.
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
  echo "$(cat "$tmp/t")" >>"$tmp/$name"
  grep -o 'compile_s=[0-9.]*' "$tmp/err" | cut -d= -f2 >>"$tmp/$name.compile" || true
}

# one warm-up each (page cache), not counted
"$denet" script "$here/startup/sched_switch.lua" >/dev/null 2>&1
/usr/bin/python3 "$here/startup/sched_switch.py" >/dev/null 2>&1
bpftrace -e 'tracepoint:sched:sched_switch { @n = count(); } BEGIN { exit(); }' >/dev/null 2>&1

for _ in $(seq "$runs"); do
  run denet "$denet" script "$here/startup/sched_switch.lua"
  run python-bcc /usr/bin/python3 "$here/startup/sched_switch.py"
  run bpftrace bpftrace -e 'tracepoint:sched:sched_switch { @n = count(); } BEGIN { exit(); }'
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

{
  echo "# Start-up: sched_switch counter (compile + load + attach + exit)"
  echo
  echo "$(date -u +%Y-%m-%d), kernel $(uname -r), $(nproc) CPUs, $runs interleaved runs each, medians."
  echo
  echo "| tool | wall (s) | peak RSS (MiB) |"
  echo "|---|---|---|"
  for t in denet python-bcc bpftrace; do
    w=$(cut -d' ' -f1 "$tmp/$t" | median)
    r=$(cut -d' ' -f2 "$tmp/$t" | median)
    printf '| %s | %.3f | %.1f |\n' "$t" "$w" "$(awk -v r="$r" 'BEGIN { print r / 1024 }')"
  done
  echo
  printf 'denet compile time alone (clang inside libbcc): median %.3f s\n' "$(median <"$tmp/denet.compile")"
} | tee "$out/startup.md"
