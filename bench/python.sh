#!/usr/bin/env bash
# The cost of Python frames: a Python ping-pong (bench/python/pingpong.py:
# two Debian python3 processes passing a byte over pipes, pinned to CPU 0)
# run bare, under denet's off-CPU tracing with Python frames (the
# default) and without them (--no-python-frames: native frames only, from
# the unwind tables), interleaved in one run. Reports the load's time per
# round trip, and the BPF time per context switch of every program denet
# loaded (run_time_ns from kernel.bpf_stats_enabled, summed over all its
# programs, divided by the sched_switch runs), and the ratio of the two.
#
#   bench/python.sh [BUILD_DIR] [LOOPS] [ROUNDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../build}
loops=${2:-50000}
rounds=${3:-3}
denet=$build/denet
out=$here/results
mkdir -p "$out"
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
bpf_stats_on

# seconds of the load, as µs per round trip
bench() {
  taskset -c 0 /usr/bin/python3 "$here/python/pingpong.py" "$loops" | awk -v n="$loops" '{printf "%.2f", $1 * 1e6 / n}'
}

for _ in $(seq "$rounds"); do
  {
    echo "bare $(bench) 0"
    echo "python $(run_under python "$denet" script offcpu -d 120)"
    echo "native $(run_under native "$denet" script offcpu -d 120 --no-python-frames)"
  } >>"$tmp/res"
done

# the load's stacks as denet shows them
"$denet" script offcpu --json -- sh -c "taskset -c 0 /usr/bin/python3 '$here/python/pingpong.py' 2000 >/dev/null" \
  >"$tmp/stacks.json" 2>/dev/null
top=$(/usr/bin/python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
s = max((s for s in r["stacks"] if s["syscall"] == "read"), key=lambda s: s["count"])
user = s["frames"][:s["frames"].index("-")]
print(" <- ".join(f for f in reversed(user) if ".py:" in f))' "$tmp/stacks.json")

col() { awk -v k="$1" -v c="$2" '$1 == k {print $c}' "$tmp/res" | med; }
{
  echo "# Python frames: a Python ping-pong, $loops round trips"
  echo
  echo "$(date -u +%Y-%m-%d), kernel $(uname -r), $(nproc) CPUs, medians of $rounds interleaved rounds."
  echo
  echo "| tracer | µs per round trip | BPF ns per switch, all programs |"
  echo "|---|---|---|"
  echo "| bare | $(col bare 2) | - |"
  echo "| denet, Python frames | $(col python 2) | $(col python 3) |"
  echo "| denet, native frames only | $(col native 2) | $(col native 3) |"
  echo
  awk -v p="$(col python 3)" -v n="$(col native 3)" \
    'BEGIN { printf "Python frames cost %.2fx the BPF time of native frames alone per switch (goal: at most 1.5x).\n", p / n }'
  echo
  echo "The load's Python frames as denet shows them (the most frequent read): $top."
} | tee "$out/python.md"
