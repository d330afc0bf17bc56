#!/usr/bin/env bash
# Steady-state cost of watching a tree of 100 processes: CPU time of the
# monitor per sample, side by side in one run with pidstat and a psutil
# sampling loop (what psrecord does).
#
# Each tool runs on the same tree; after a warm-up, its CPU time is read
# twice from /proc/PID/schedstat (nanoseconds of the running thread; all
# three tools are single-threaded) and its output lines are counted at the
# same moments, so the cost per sample excludes start-up (compiling BPF,
# importing Python modules) and has no 10 ms tick rounding. denet's
# start-up CPU and wall time and its resident set after start-up are
# reported separately, for a first run (an empty compile cache: it
# compiles) and for the second (from that cache).
#
#   bench/monitor.sh [BUILD_DIR] [WINDOW_SECONDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../build}
window=${2:-10}
denet=$build/denet
out=$here/results
mkdir -p "$out"
tmp=$(mktemp -d)
tree=
cleanup() {
  [ -n "$tree" ] && { pkill -P "$tree" 2>/dev/null || true; kill "$tree" 2>/dev/null || true; }
  jobs -p | xargs -r kill 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

"$build/fixtures/sleep_tree" 100 600 </dev/null >/dev/null 2>&1 &
tree=$!
sleep 1
pids=$(ps -e -o pid=,ppid= | awk -v r=$tree '$1 == r || $2 == r {print $1}' | paste -sd,)
ntree=$(echo "$pids" | tr ',' '\n' | wc -l)

cpu_ns() { awk '{print $1}' "/proc/$1/schedstat"; }

# measure NAME PID LINES_FILE PATTERN: per-sample CPU over the window
measure() {
  local name=$1 pid=$2 file=$3 pat=$4
  sleep 3 # warm-up: start-up done, JIT and caches warm
  local c1 n1 c2 n2
  c1=$(cpu_ns "$pid"); n1=$(grep -c -- "$pat" "$file" || true)
  sleep "$window"
  c2=$(cpu_ns "$pid"); n2=$(grep -c -- "$pat" "$file" || true)
  awk -v a="$c1" -v b="$c2" -v x="$n1" -v y="$n2" -v n="$name" \
    'BEGIN { printf "%s %.3f %d\n", n, (b - a) / (y - x) / 1e6, y - x }'
}

# denet: 10 samples/s fixed; the first run compiles (an empty cache of
# its own), the second loads what it kept
export DENET_CACHE_DIR=$tmp/cache
mkdir -m 0700 "$DENET_CACHE_DIR"
t0=$(date +%s.%N)
"$denet" attach -q -i 100 -m 100 -o "$tmp/denet.jsonl" "$tree" &
dpid=$!
while ! grep -q '"kind":"tree"' "$tmp/denet.jsonl" 2>/dev/null; do sleep 0.01; done
t_first=$(date +%s.%N)
start_cpu=$(cpu_ns $dpid)
denet_line=$(measure denet $dpid "$tmp/denet.jsonl" '"kind":"tree"')
rss=$(awk '/VmRSS/ {print $2}' /proc/$dpid/status)
kill -INT $dpid
wait $dpid || true

# the same without writing JSONL: watching alone, like the psutil loop,
# which writes nothing (samples counted from denet's -n status lines)
script -qfc "$denet attach -n -i 100 -m 100 $tree" /dev/null >"$tmp/denet-n.txt" 2>&1 &
spid=$!
while ! grep -q "CPU" "$tmp/denet-n.txt" 2>/dev/null; do sleep 0.01; done
dnpid=$(pgrep -n -x denet)
bare_line=$(measure denet-bare "$dnpid" "$tmp/denet-n.txt" "CPU ")
rss_cached=$(awk '/VmRSS/ {print $2}' "/proc/$dnpid/status")
kill -INT "$dnpid"
wait $spid 2>/dev/null || true

# pidstat: whole seconds only, so 1 sample/s; one report line per process
pidstat -u -r -d -h -p "$pids" 1 >"$tmp/pidstat.txt" &
ppid=$!
pidstat_line=$(measure pidstat $ppid "$tmp/pidstat.txt" " $tree ")
kill $ppid; wait $ppid 2>/dev/null || true

# psutil loop at 10 samples/s; one line per sample
/usr/bin/python3 -u "$here/monitor/psutil_loop.py" "$tree" 1000000 >"$tmp/psutil.txt" &
qpid=$!
psutil_line=$(measure psutil $qpid "$tmp/psutil.txt" "sample")
kill $qpid; wait $qpid 2>/dev/null || true

d_ms=$(echo "$denet_line" | awk '{print $2}')
b_ms=$(echo "$bare_line" | awk '{print $2}')
s_ms=$(echo "$pidstat_line" | awk '{print $2}')
p_ms=$(echo "$psutil_line" | awk '{print $2}')
{
  echo "# Monitor: CPU per sample of a $ntree-process tree"
  echo
  echo "$(date -u +%Y-%m-%d), kernel $(uname -r), $(nproc) CPUs; CPU from /proc/PID/schedstat over a ${window} s window after a 3 s warm-up."
  echo
  echo "| tool | samples in window | CPU per sample (ms) | denet's cost relative to it |"
  echo "|---|---|---|---|"
  printf '| denet attach -o FILE (10/s, 20 KB of JSONL per sample) | %s | %s | 1 |\n' "$(echo "$denet_line" | awk '{print $3}')" "$d_ms"
  printf '| denet attach, status line only, no JSONL (10/s) | %s | %s | - |\n' "$(echo "$bare_line" | awk '{print $3}')" "$b_ms"
  printf '| pidstat -u -r -d (1/s) | %s | %s | 1/%s (no JSONL: 1/%s) |\n' "$(echo "$pidstat_line" | awk '{print $3}')" "$s_ms" \
    "$(awk -v a="$s_ms" -v b="$d_ms" 'BEGIN { printf "%.1f", a / b }')" "$(awk -v a="$s_ms" -v b="$b_ms" 'BEGIN { printf "%.1f", a / b }')"
  printf '| psutil loop, psrecord-style, writes nothing (10/s) | %s | %s | 1/%s (no JSONL: 1/%s) |\n' "$(echo "$psutil_line" | awk '{print $3}')" "$p_ms" \
    "$(awk -v a="$p_ms" -v b="$d_ms" 'BEGIN { printf "%.1f", a / b }')" "$(awk -v a="$p_ms" -v b="$b_ms" 'BEGIN { printf "%.1f", a / b }')"
  echo
  printf 'denet start-up, first run (compile, load, attach, baseline, first sample): %.3f s CPU, %.2f s wall.\n' \
    "$(awk -v c="$start_cpu" 'BEGIN { print c / 1e9 }')" "$(awk -v a="$t0" -v b="$t_first" 'BEGIN { print b - a }')"
  printf 'denet resident set after start-up (VmRSS while sampling): %.1f MiB after a compile, %.1f MiB from the compile cache.\n' \
    "$(awk -v r="$rss" 'BEGIN { print r / 1024 }')" "$(awk -v r="$rss_cached" 'BEGIN { print r / 1024 }')"
} | tee "$out/monitor.md"
