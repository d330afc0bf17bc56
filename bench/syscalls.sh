#!/usr/bin/env bash
# Syscall tracking cost on a syscall-heavy load (getppid in a loop, the
# cheapest syscall, so tracing cost shows): run bare, under denet and
# under bcc's syscount, counts only and with latency (-L), machine-wide,
# interleaved in one run. Reports the load's slowdown and the BPF cost per
# syscall: run_time_ns of the raw_syscalls programs (sys_enter and
# sys_exit together) divided by the syscalls they saw, from
# kernel.bpf_stats_enabled.
#
#   bench/syscalls.sh [BUILD_DIR] [CALLS] [ROUNDS] [pin]
# With "pin", the load runs on CPU 0 only (taskset -c 0).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../build}
calls=${2:-2000000}
rounds=${3:-3}
pin=()
[ "${4:-}" = pin ] && pin=(taskset -c 0)
denet=$build/denet
load=$build/fixtures/getppid_n
out=$here/results
mkdir -p "$out"
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
bpf_stats_on

# the load's wall time in seconds
bench() {
  local t0 t1
  t0=$(date +%s.%N)
  "${pin[@]}" "$load" "$calls"
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

# raw_syscalls programs loaded now: "run_time_ns calls" (calls: the
# largest run_cnt, i.e. the sys_exit program's)
prog_stats() {
  bpftool prog show -j | /usr/bin/python3 -c '
import json, sys
t = c = 0
for p in json.load(sys.stdin):
    if p.get("name", "").startswith("tracepoint__raw"):
        t += p.get("run_time_ns", 0); c = max(c, p.get("run_cnt", 0))
print(t, c)'
}


for _ in $(seq "$rounds"); do
  {
    echo "bare $(bench) 0"
    echo "denet $(run_under denet "$denet" script syscalls -d 300)"
    echo "syscount $(run_under syscount syscount-bpfcc -d 300)"
    echo "denet-L $(run_under denetL "$denet" script syscalls -L -d 300)"
    echo "syscount-L $(run_under syscountL syscount-bpfcc -L -d 300)"
  } >>"$tmp/res"
done

base=$(awk '$1 == "bare" {print $2}' "$tmp/res" | med)
{
  echo "# Syscall tracking: $calls getppid calls${pin:+, the load pinned to CPU 0}"
  echo
  echo "$(date -u +%Y-%m-%d), kernel $(uname -r), $(nproc) CPUs, medians of $rounds interleaved rounds."
  echo
  echo "| tracer | load time (s) | slowdown | BPF ns per syscall |"
  echo "|---|---|---|---|"
  for t in bare denet syscount denet-L syscount-L; do
    s=$(awk -v t=$t '$1 == t {print $2}' "$tmp/res" | med)
    c=$(awk -v t=$t '$1 == t {print $3}' "$tmp/res" | med)
    printf '| %s | %.3f | %+.0f%% | %s |\n' "$t" "$s" "$(awk -v s="$s" -v b="$base" 'BEGIN { print (s / b - 1) * 100 }')" \
      "$([ "$t" = bare ] && echo - || echo "$c")"
  done
  echo
  echo "Machine-wide, each tracer with its defaults. denet: counts per syscall and errors per (syscall, errno); -L adds"
  echo "total, max and a log2 histogram per syscall. syscount: counts per syscall; -L adds total time."
} | tee "$out/syscalls${pin:+-pinned}.md"
