#!/usr/bin/env bash
# What the monitor's perf counters cost, side by side with the same runs
# without them (--no-counters), and with `perf stat` (which opens the same
# inherited counters) as the anchor:
#
#  1. the monitored program's own cost: a tree that forks 1000 short
#     processes a second for 3 s (tests/fixtures/fork_rate), pinned to one
#     CPU; the tree's CPU time (the kernel's rusage of it) under denet with
#     and without counters, and alone and under `perf stat -e` with the
#     same five software counters. Every fork and exit copies and folds
#     back the inherited counters: the extra CPU per process is the figure.
#  2. denet's own cost per sample: `denet attach` to a tree of 100
#     sleeping processes at 10 samples/s, its CPU per sample over a window
#     after warm-up (from /proc/PID/schedstat), with and without counters
#     (counters on 100 tasks: one group read each per sample).
#
#   bench/counters.sh [BUILD_DIR] [ROUNDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../build}
rounds=${2:-5}
denet=$build/denet
fx=$build/fixtures
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
tmp=$(mktemp -d)
tree=
cleanup() {
  [ -n "$tree" ] && { pkill -P "$tree" 2>/dev/null || true; kill "$tree" 2>/dev/null || true; }
  rm -rf "$tmp"
}
trap cleanup EXIT

tree_cpu() { # the summary's cpu_time_secs and processes_started
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["cpu_time_secs"], s["processes_started"])' "$1"
}

echo "1. the program's cost: fork_rate 1000/s for 3 s, pinned to CPU 0 ($rounds rounds each)"
: >"$tmp/on"; : >"$tmp/off"; : >"$tmp/perf"; : >"$tmp/plain"
# the tree's CPU as the kernel's rusage says: denet's summary (wait4 of
# the command), GNU time's for the others (perf stat's own CPU, mostly
# waiting, is in its figure)
tcpu() { /usr/bin/time -f "%U %S" -o "$tmp/t" "$@" >/dev/null; awk '{print $1 + $2}' "$tmp/t"; }
for _ in $(seq "$rounds"); do
  taskset -c 0 "$denet" run -q --stats "$tmp/s.json" -- "$fx/fork_rate" 1000 3 >/dev/null
  tree_cpu "$tmp/s.json" >>"$tmp/on"
  taskset -c 0 "$denet" run -q --no-counters --stats "$tmp/s.json" -- "$fx/fork_rate" 1000 3 >/dev/null
  tree_cpu "$tmp/s.json" >>"$tmp/off"
  tcpu taskset -c 0 perf stat -x, -e task-clock,page-faults,major-faults,context-switches,cpu-migrations \
    -o /dev/null -- "$fx/fork_rate" 1000 3 >>"$tmp/perf"
  tcpu taskset -c 0 "$fx/fork_rate" 1000 3 >>"$tmp/plain"
done
on=$(awk '{print $1}' "$tmp/on" | med)
off=$(awk '{print $1}' "$tmp/off" | med)
n=$(awk '{print $2}' "$tmp/on" | med)
pf=$(med <"$tmp/perf")
pl=$(med <"$tmp/plain")
awk -v on="$on" -v off="$off" -v n="$n" -v pf="$pf" -v pl="$pl" 'BEGIN {
  printf "tree CPU, median of the rounds (%d processes):\n", n
  printf "  alone %.3f s; perf stat (5 inherited software counters) %.3f s\n", pl, pf
  printf "  denet run --no-counters %.3f s; denet run (counters) %.3f s\n", off, on
  printf "extra CPU per process started: counters %.1f us, perf stat %.1f us\n", (on - off) / n * 1e6,
    (pf - pl) / n * 1e6
}'

echo "2. denet's cost per sample: attach to 100 sleeping processes at 10/s"
"$fx/sleep_tree" 100 600 </dev/null >/dev/null 2>&1 &
tree=$!
sleep 1
per_sample() { # FLAGS...: ms of denet CPU per sample over 10 s after 3 s
  "$denet" attach -q -i 100 -m 100 "$@" -o "$tmp/a.jsonl" "$tree" &
  local d=$!
  while ! grep -q '"kind":"tree"' "$tmp/a.jsonl" 2>/dev/null; do sleep 0.01; done
  sleep 3
  local c1 n1 c2 n2
  c1=$(awk '{print $1}' /proc/$d/schedstat); n1=$(grep -c '"kind":"tree"' "$tmp/a.jsonl")
  sleep 10
  c2=$(awk '{print $1}' /proc/$d/schedstat); n2=$(grep -c '"kind":"tree"' "$tmp/a.jsonl")
  kill -INT $d; wait $d || true
  awk -v a="$c1" -v b="$c2" -v x="$n1" -v y="$n2" 'BEGIN { printf "%.3f\n", (b - a) / (y - x) / 1e6 }'
}
with=$(per_sample)
without=$(per_sample --no-counters)
echo "denet CPU per sample: with counters $with ms, without $without ms"
