# shellcheck shell=bash
# Shared by the benchmarks that time a load under tracers (sourced).
# The sourcing script defines bench (prints the load's time), and
# prog_stats (prints "run_time_ns events" of the programs it measures)
# unless the one below serves; bg holds the tracer running in the
# background.

# every tracing program loaded now (sched_switch, and the syscall, fork,
# exec and exit tracepoints): "run_time_ns sched_switch_runs"
prog_stats() {
  bpftool prog show -j | /usr/bin/python3 -c '
import json, sys
t = c = 0
for p in json.load(sys.stdin):
    n = p.get("name", "")
    if p.get("type") in ("tracepoint", "raw_tracepoint", "tracing"):
        t += p.get("run_time_ns", 0)
        # (a program loaded from the compile cache has its 15-byte kernel name)
        if "sched_switch" in n or n.endswith("sched_sw"):
            c += p.get("run_cnt", 0)
print(t, c)'
}

# Turn kernel.bpf_stats_enabled on and make $tmp; on exit stop a tracer
# still running, restore the setting and remove $tmp.
bpf_stats_on() {
  tmp=$(mktemp -d)
  old_stats=$(cat /proc/sys/kernel/bpf_stats_enabled)
  bg=
  trap bench_cleanup EXIT
  echo 1 >/proc/sys/kernel/bpf_stats_enabled
}

bench_cleanup() {
  if [ -n "$bg" ] && kill -INT "$bg" 2>/dev/null; then
    wait "$bg" 2>/dev/null || true
  fi
  echo "$old_stats" >/proc/sys/kernel/bpf_stats_enabled
  rm -rf "$tmp"
}

# run_under NAME CMD...: start the tracer, wait until its programs run,
# time the load, stop the tracer; prints "seconds ns_per_event"
run_under() {
  local name=$1
  shift
  "$@" >/dev/null 2>"$tmp/$name.err" &
  bg=$!
  local i=0
  until [ "$(prog_stats | awk '{print $2}')" -gt 0 ] || [ $i -gt 200 ]; do sleep 0.05; i=$((i + 1)); done
  sleep 0.3
  local s0 s1 t
  s0=$(prog_stats)
  t=$(bench)
  s1=$(prog_stats)
  # (a background job of a script ignores SIGINT unless it sets its own
  # handler, as denet and bpftrace do; Python's does not)
  kill -INT $bg
  sleep 0.5
  kill -TERM $bg 2>/dev/null || true
  wait $bg 2>/dev/null || true
  bg=
  awk -v t="$t" -v a="$s0" -v b="$s1" 'BEGIN { split(a, x, " "); split(b, y, " ");
    n = y[2] - x[2]; printf "%s %.1f\n", t, (n > 0 ? (y[1] - x[1]) / n : 0) }'
}

# the median of the numbers on stdin
med() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
