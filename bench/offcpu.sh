#!/usr/bin/env bash
# Off-CPU tracing cost on a context-switch-heavy load: `perf bench sched
# pipe`, both ends pinned to CPU 0 (unpinned, waking a task on the other
# CPU makes it vary tenfold between runs on these VMs), run bare, under
# denet's off-CPU tracing (machine-wide, kernel and user stacks), under a
# bpftrace sched_switch script recording the same data, and under denet
# tracing one idle process (so every switch is of another process),
# interleaved in one run. Reports the load's time per operation, its
# slowdown, denet's share of bpftrace's slowdown, and the BPF time per
# context switch of every program each tracer loaded (run_time_ns from
# kernel.bpf_stats_enabled, summed over all its programs, divided by the
# sched_switch runs).
#
#   bench/offcpu.sh [BUILD_DIR] [LOOPS] [ROUNDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../build}
loops=${2:-100000}
rounds=${3:-3}
denet=$build/denet
out=$here/results
mkdir -p "$out"
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
bpf_stats_on

BT='tracepoint:sched:sched_switch {
  @start[args->prev_pid] = nsecs; @ks[args->prev_pid] = kstack; @us[args->prev_pid] = ustack;
  if (@start[args->next_pid]) {
    @off[@ks[args->next_pid], @us[args->next_pid]] = sum(nsecs - @start[args->next_pid]);
    delete(@start[args->next_pid]);
  }
}'

bench() { taskset -c 0 perf bench sched pipe -l "$loops" 2>/dev/null | awk '/Total time/ {print $3}'; }

sleep 600 &
idle=$!
for _ in $(seq "$rounds"); do
  {
    echo "bare $(bench) 0"
    echo "denet $(run_under denet "$denet" script offcpu -d 120)"
    echo "denet-walk $(run_under walk "$denet" script offcpu -d 120 --stack-reuse off)"
    echo "bpftrace $(run_under bpftrace bpftrace -e "$BT")"
    echo "denet-target $(run_under target "$denet" script offcpu -d 120 -p $idle)"
  } >>"$tmp/res"
done
kill $idle

# Are reused stacks right? Once more in verify mode: every reused
# stack is also walked, and disagreements are counted.
# trace_load OUT CMD...: run the tracer CMD (its stdout to OUT) through
# one run of the load
trace_load() {
  local o=$1
  shift
  "$@" >"$o" 2>/dev/null &
  bg=$!
  until [ "$(prog_stats | awk '{print $2}')" -gt 0 ]; do sleep 0.05; done
  bench >/dev/null
  kill -INT $bg
  wait $bg 2>/dev/null || true
  bg=
}
trace_load "$tmp/verify.json" "$denet" script offcpu -d 120 --stack-reuse verify --json
verify=$(/usr/bin/python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print("; ".join("%s stacks: %d reused, %d walked, %d reused stacks the walk disagreed with"
                % (k, r[k + "stack_reuse"]["reused"], r[k + "stack_reuse"]["walked"], r[k + "stack_reuse"]["wrong"])
                for k in ("k", "u")))' "$tmp/verify.json")

# How deep are the load's user stacks? perf is built without frame
# pointers: denet's against bpftrace's ustack.
depth() {
  /usr/bin/python3 -c '
import json, re, sys
kind, path = sys.argv[1], sys.argv[2]
stacks = []  # (count, user frames leaf first)
if kind == "denet":
    r = json.load(open(path))
    for s in r["stacks"]:
        if s["comm"] == "sched-pipe":
            user = s["frames"][:s["frames"].index("-")] if "-" in s["frames"] else s["frames"]
            stacks.append((s["count"], list(reversed(user))))
else:
    text = open(path).read()
    for body, n in re.findall(r"@\[\n(.*?)\]: (\d+)", text, re.S):
        stacks.append((int(n), [l.strip() for l in body.strip().splitlines()]))
total = sum(n for n, _ in stacks) or 1
whole = sum(n for n, f in stacks if any(x.startswith("__libc_start_main") for x in f))
frames = sum(n * len(f) for n, f in stacks) / total
top = max(stacks, key=lambda x: x[0])[1] if stacks else []
print("%.0f%% of the blocks reach __libc_start_main, %.1f user frames on average; the most frequent: %s"
      % (100.0 * whole / total, frames, " <- ".join(top)))' "$@"
}
trace_load "$tmp/depth.json" "$denet" script offcpu -d 120 --json
trace_load "$tmp/depth.bt" bpftrace -e 'tracepoint:sched:sched_switch /comm == "sched-pipe"/ { @[ustack] = count(); }'
depth_denet=$(depth denet "$tmp/depth.json")
depth_bt=$(depth bpftrace "$tmp/depth.bt")

base=$(awk '$1 == "bare" {print $2}' "$tmp/res" | med)
{
  echo "# Off-CPU tracing: perf bench sched pipe -l $loops"
  echo
  echo "$(date -u +%Y-%m-%d), kernel $(uname -r), $(nproc) CPUs, medians of $rounds interleaved rounds."
  echo
  bt=$(awk '$1 == "bpftrace" {print $2}' "$tmp/res" | med)
  echo "| tracer | µs per op | slowdown (µs per op) | of bpftrace's slowdown | BPF ns per switch, all programs |"
  echo "|---|---|---|---|---|"
  for t in bare denet denet-walk bpftrace denet-target; do
    s=$(awk -v t=$t '$1 == t {print $2}' "$tmp/res" | med)
    c=$(awk -v t=$t '$1 == t {print $3}' "$tmp/res" | med)
    awk -v t="$t" -v s="$s" -v b="$base" -v bt="$bt" -v n="$loops" -v c="$c" 'BEGIN {
      d = (s - b) / n * 1e6; dbt = (bt - b) / n * 1e6
      printf "| %s | %.2f | %+.2f | %s | %s |\n", t, s / n * 1e6, d,
        (t == "bare" ? "-" : sprintf("%.2f", d / dbt)), (t == "bare" ? "-" : c) }'
  done
  echo
  echo "One op is a round trip: two context switches (each side switches out once; on one CPU about half of them"
  echo "are preemptions right after a write wakes the other side)."
  echo
  echo "denet: machine-wide, kernel and user stacks (stacks reused when a thread blocks where it blocked before;"
  echo "denet-walk: every stack walked). bpftrace: a sched_switch script keeping the same (start time, kernel"
  echo "and user stack per thread; time summed per stack pair). denet-target: denet tracing one idle process, so every"
  echo "switch of the load is another process's."
  echo
  echo "Stack reuse checked (--stack-reuse verify, one more run of the load): $verify."
  echo
  echo "User stacks of the load (Debian's perf, built without frame pointers): denet (from unwind tables):"
  echo "$depth_denet."
  echo "bpftrace (frame pointers): $depth_bt."
} | tee "$out/offcpu.md"
