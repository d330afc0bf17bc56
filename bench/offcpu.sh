#!/usr/bin/env bash
# Off-CPU tracing cost on a context-switch-heavy load: `perf bench sched
# pipe` run bare, under denet's off-CPU tracing (machine-wide, kernel and
# user stacks), under a bpftrace sched_switch script recording the same
# data, and under denet tracing one idle process (so every switch is of
# another process), interleaved in one run. Reports the slowdown of the
# load and the BPF cost per event (run_time_ns / run_cnt of the
# sched_switch programs, from kernel.bpf_stats_enabled).
#
#   bench/offcpu.sh [BUILD_DIR] [LOOPS] [ROUNDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../build}
loops=${2:-20000}
rounds=${3:-3}
denet=$build/denet
out=$here/results
mkdir -p "$out"
. "$here/lib.sh"
bpf_stats_on

BT='tracepoint:sched:sched_switch {
  @start[args->prev_pid] = nsecs; @ks[args->prev_pid] = kstack; @us[args->prev_pid] = ustack;
  if (@start[args->next_pid]) {
    @off[@ks[args->next_pid], @us[args->next_pid]] = sum(nsecs - @start[args->next_pid]);
    delete(@start[args->next_pid]);
  }
}'

bench() { perf bench sched pipe -l "$loops" 2>/dev/null | awk '/Total time/ {print $3}'; }

# sched_switch programs loaded now: "run_time_ns run_cnt" summed
prog_stats() {
  bpftool prog show -j | /usr/bin/python3 -c '
import json, sys
t = c = 0
for p in json.load(sys.stdin):
    n = p.get("name", "")
    if "sched_switch" in n:
        t += p.get("run_time_ns", 0); c += p.get("run_cnt", 0)
print(t, c)'
}


sleep 600 &
idle=$!
for r in $(seq "$rounds"); do
  echo "bare $(bench) 0" >>"$tmp/res"
  echo "denet $(run_under denet "$denet" script offcpu -d 120)" >>"$tmp/res"
  echo "denet-walk $(run_under walk "$denet" script offcpu -d 120 --stack-reuse off)" >>"$tmp/res"
  echo "bpftrace $(run_under bpftrace bpftrace -e "$BT")" >>"$tmp/res"
  echo "denet-target $(run_under target "$denet" script offcpu -d 120 -p $idle)" >>"$tmp/res"
done
kill $idle

# Are reused stacks right? Once more in verify mode: every reused kernel
# stack is also walked, and disagreements are counted.
"$denet" script offcpu -d 120 --stack-reuse verify --json >"$tmp/verify.json" 2>"$tmp/verify.err" &
bg=$!
until [ "$(prog_stats | awk '{print $2}')" -gt 0 ]; do sleep 0.05; done
bench >/dev/null
kill -INT $bg
wait $bg 2>/dev/null || true
bg=
verify=$(/usr/bin/python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))["kstack_reuse"]
print("%d reused, %d walked, %d reused stacks the walk disagreed with" % (r["reused"], r["walked"], r["wrong"]))' "$tmp/verify.json")

base=$(awk '$1 == "bare" {print $2}' "$tmp/res" | med)
{
  echo "# Off-CPU tracing: perf bench sched pipe -l $loops"
  echo
  echo "$(date -u +%Y-%m-%d), kernel $(uname -r), $(nproc) CPUs, medians of $rounds interleaved rounds."
  echo
  echo "| tracer | load time (s) | slowdown | BPF ns per sched_switch |"
  echo "|---|---|---|---|"
  for t in bare denet denet-walk bpftrace denet-target; do
    s=$(awk -v t=$t '$1 == t {print $2}' "$tmp/res" | med)
    c=$(awk -v t=$t '$1 == t {print $3}' "$tmp/res" | med)
    printf '| %s | %.3f | %+.0f%% | %s |\n' "$t" "$s" "$(awk -v s="$s" -v b="$base" 'BEGIN { print (s / b - 1) * 100 }')" \
      "$([ "$t" = bare ] && echo - || echo "$c")"
  done
  echo
  echo "denet: machine-wide, kernel and user stacks (kernel stacks reused when a thread blocks where it blocked before;"
  echo "denet-walk: every stack walked). bpftrace: a sched_switch script keeping the same (start time, kernel"
  echo "and user stack per thread; time summed per stack pair). denet-target: denet tracing one idle process, so every"
  echo "switch of the load is another process's."
  echo
  echo "Stack reuse checked (--stack-reuse verify, one more run of the load): $verify."
} | tee "$out/offcpu.md"
