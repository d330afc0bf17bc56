#!/usr/bin/env bash
# Steady-state cost of watching a tree of 100 processes at 10 samples/s:
# CPU time of the monitor per sample, from a short and a long run of each
# tool (extra CPU over extra samples, so start-up is not counted), side by
# side in one run with pidstat and a psutil sampling loop (what psrecord
# does). Also denet's start-up CPU and wall time, and its resident set
# after start-up (VmRSS polled while it runs).
#
#   bench/monitor.sh [BUILD_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../build}
denet=$build/denet
out=$here/results
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'kill $tree 2>/dev/null || true; rm -rf "$tmp"' EXIT

"$build/fixtures/sleep_tree" 100 600 &
tree=$!
sleep 1
pids=$(pgrep -d, -g "$(ps -o pgid= $tree | tr -d ' ')" sleep_tree || true)
pids=$(ps -e -o pid=,ppid= | awk -v r=$tree '$1 == r || $2 == r {print $1}' | paste -sd,)
nproc_tree=$(echo "$pids" | tr ',' '\n' | wc -l)

cpu_of() { # file written by GNU time "%U %S %e %M"
  awk '{print $1 + $2}' "$1"
}

# denet: samples from its JSONL; RSS after start-up polled meanwhile
denet_run() { # seconds -> "cpu samples wall rss_after_start"
  local secs=$1
  /usr/bin/time -f "%U %S %e %M" -o "$tmp/t" "$denet" attach -q -i 100 -m 100 -d "$secs" -o "$tmp/d.jsonl" $tree &
  local w=$!
  local rss=0
  sleep 1.5
  while kill -0 $w 2>/dev/null; do
    local dp
    dp=$(pgrep -n -x denet || true)
    if [ -n "$dp" ]; then
      local r
      r=$(awk '/VmRSS/ {print $2}' /proc/$dp/status 2>/dev/null || echo 0)
      [ "${r:-0}" -gt "$rss" ] && rss=$r
    fi
    sleep 0.5
  done
  wait $w
  echo "$(cpu_of "$tmp/t") $(grep -c '"kind":"tree"' "$tmp/d.jsonl") $(awk '{print $3}' "$tmp/t") $rss"
}

pidstat_run() { # samples (1 s apart; pidstat's interval is whole seconds)
  /usr/bin/time -f "%U %S %e %M" -o "$tmp/t" pidstat -u -r -d -h -p "$pids" 1 "$1" >/dev/null
  echo "$(cpu_of "$tmp/t") $1"
}

psutil_run() { # samples at 10/s
  /usr/bin/time -f "%U %S %e %M" -o "$tmp/t" /usr/bin/python3 "$here/monitor/psutil_loop.py" $tree "$1" >/dev/null
  echo "$(cpu_of "$tmp/t") $1"
}

per_sample() { # "cpu n" "cpu n" -> ms per sample
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ");
    printf "%.3f", (y[1] - x[1]) / (y[2] - x[2]) * 1000 }'
}

d_short=$(denet_run 2); p_short=$(psutil_run 20); s_short=$(pidstat_run 2)
d_long=$(denet_run 12); p_long=$(psutil_run 120); s_long=$(pidstat_run 8)

d_ms=$(per_sample "$d_short" "$d_long")
p_ms=$(per_sample "$p_short" "$p_long")
s_ms=$(per_sample "$s_short" "$s_long")
d_start=$(awk -v a="$d_short" -v ms="$d_ms" 'BEGIN { split(a, x, " "); printf "%.3f", x[1] - x[2] * ms / 1000 }')
d_wall=$(awk -v a="$d_short" 'BEGIN { split(a, x, " "); printf "%.2f", x[3] }')
d_rss=$(awk -v a="$d_long" 'BEGIN { split(a, x, " "); printf "%.1f", x[4] / 1024 }')

{
  echo "# Monitor: CPU per sample of a $nproc_tree-process tree at 10 samples/s"
  echo
  echo "$(date -u +%Y-%m-%d), kernel $(uname -r), $(nproc) CPUs. Per-sample CPU = extra CPU of a long run over a short one / extra samples."
  echo
  echo "| tool | CPU per sample (ms) | denet's cost relative to it |"
  echo "|---|---|---|"
  printf '| denet attach | %s | 1 |\n' "$d_ms"
  printf '| pidstat -u -r -d | %s | 1/%s |\n' "$s_ms" "$(awk -v a="$s_ms" -v b="$d_ms" 'BEGIN { printf "%.1f", a / b }')"
  printf '| psutil loop (psrecord) | %s | 1/%s |\n' "$p_ms" "$(awk -v a="$p_ms" -v b="$d_ms" 'BEGIN { printf "%.1f", a / b }')"
  echo
  echo "denet start-up (compile, load, attach, baseline): $d_start s CPU; a 2 s run took $d_wall s wall."
  echo "denet resident set after start-up (peak VmRSS while sampling): $d_rss MiB."
} | tee "$out/monitor.md"
