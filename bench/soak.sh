#!/usr/bin/env bash
# Soak: denet under sustained load, its figures checked against the loads'
# own counts and its own memory and descriptors watched every second.
#
#   1. `denet script syscalls -P` over two `storm` processes (getppid in a
#      loop, one per CPU) for S1 seconds: each process's getppid count
#      must equal the count it printed.
#   2. `denet script offcpu` over `pingpong` (two processes passing a byte
#      over pipes, pinned to CPU 0) for S1 seconds: blocks per thread
#      against the round trips the fixture counted, stacks lost, and
#      denet's RSS after warm-up.
#   3. `denet run` of `fork_rate 1000 S3 0.2` (1000 processes started and
#      ended per second) for S3 seconds: the tree's CPU time against
#      GNU time's rusage of the same tree, and denet's RSS and open fds.
#
#   bench/soak.sh [BUILD_DIR] [S1] [S3]     (defaults: build, 60, 30)
# Writes bench/results/soak.md; exits 1 if a check fails.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:-$here/../build}" && pwd)
s1=${2:-60}
s3=${3:-30}
denet=$build/denet
fx=$build/fixtures
out=$here/results
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
py=/usr/bin/python3
fail=0

# watch PID FILE [EVERY]: every EVERY seconds (default 1), "seconds rss_kb
# fds" of PID until it ends
watch_proc() {
  local pid=$1 file=$2 every=${3:-1} t0
  t0=$(date +%s.%N)
  while [ -d "/proc/$pid" ]; do
    local rss fds
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    [ -n "$rss" ] && echo "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') $rss $fds" >>"$file"
    sleep "$every"
  done
}

# watched NAME EVERY CMD...: run CMD (denet) with stdout to $tmp/NAME.out
# and stderr to $tmp/NAME.err, watching it every EVERY seconds into
# $tmp/NAME.watch, until it ends
watched() {
  local name=$1 every=$2 dpid
  shift 2
  "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  dpid=$!
  watch_proc $dpid "$tmp/$name.watch" "$every" &
  wait $dpid || true
  wait
}

# growth FILE FROM TO: "rss_min rss_max rss_first rss_last fds_a fds_b"
# between seconds FROM and TO (the load's steady part: not the start-up,
# nor the report made once the load ended); fds_a and fds_b: the most open
# descriptors in the first and in the second half of that time (denet
# holds a few per live process until the sample after it exits, so the
# count swings with the sampling phase; a leak shows as a second half above
# the first)
growth() {
  awk -v from="$2" -v to="$3" '$1 >= from && $1 <= to { t[++n] = $1; r[n] = $2; f[n] = $3 }
    END { rmin = rmax = r[1]; for (i = 1; i <= n; i++) { if (r[i] < rmin) rmin = r[i]; if (r[i] > rmax) rmax = r[i];
      if (i <= n / 2) { if (f[i] > fa) fa = f[i] } else if (f[i] > fb) fb = f[i] }
      printf "%d %d %d %d %d %d\n", rmin, rmax, r[1], r[n], fa, fb }' "$1"
}

{
  echo "# Soak results"
  echo
  echo "$(uname -r), $(nproc) CPUs, $(date -u +%Y-%m-%d). Produced by bench/soak.sh."
  echo
} >"$out/soak.md"

# --- 1. syscalls ---------------------------------------------------------
echo "soak 1/3: denet script syscalls, two getppid storms, ${s1}s" >&2
watched sys 1 "$denet" script syscalls -P --json -- sh -c "'$fx/storm' $s1 > '$tmp/a' & '$fx/storm' $s1 > '$tmp/b'; wait"
read -r rmin rmax _ _ f0 f1 < <(growth "$tmp/sys.watch" 10 $((s1 - 1)))
read -r ok1 line1 < <($py - "$tmp/sys.out" "$tmp/a" "$tmp/b" "$s1" "$rmin" "$rmax" "$f0" "$f1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
want = {}
for f in sys.argv[2:4]:
    pid, n = open(f).read().split()
    want[int(pid)] = int(n)
got = {}
for p in r["processes"]:
    if p["pid"] in want:
        got[p["pid"]] = sum(s["count"] for s in p["syscalls"] if s["name"] == "getppid")
total = sum(want.values())
rate = total / float(sys.argv[4])
exact = all(got.get(p) == n for p, n in want.items())
rmin, rmax, f0, f1 = map(int, sys.argv[5:9])
ok = exact and rate >= 1e6
print("ok" if ok else "FAIL",
      "| syscalls | %d getppid in %s s = %.2f M/s | denet counted %s, the storms %s | %s | "
      "RSS %d..%d KiB after 10 s; most fds %d, then %d |"
      % (total, sys.argv[4], rate / 1e6, sorted(got.values()), sorted(want.values()),
         "exact" if exact else "NOT exact", rmin, rmax, f0, f1))
EOF
)
[ "$ok1" = ok ] || fail=1

# --- 2. offcpu -----------------------------------------------------------
echo "soak 2/3: denet script offcpu, pinned pipe ping-pong, ${s1}s" >&2
watched off 1 "$denet" script offcpu --json -- sh -c "taskset -c 0 '$fx/pingpong' $s1 > '$tmp/pp'"
read -r omin omax _ _ _ _ < <(growth "$tmp/off.watch" 10 $((s1 - 1)))
read -r ok2 line2 < <($py - "$tmp/off.out" "$tmp/pp" "$s1" "$omin" "$omax" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
parent, child, trips, psw, csw = map(int, open(sys.argv[2]).read().split())
secs = float(sys.argv[3])
seen = {}
for s in r["stacks"]:
    seen[s["tid"]] = seen.get(s["tid"], 0) + s["count"]
switches = (psw + csw) / secs
# every switch-out of each side, against the kernel's count (getrusage);
# they may differ by the switches of an exit (the parent's come after it
# took its count; the child's, once its exit is seen, are not blocks of a
# watched thread: its final one as a dead task, and on a busy machine a
# preemption or two while it closes its files)
exact = abs(seen.get(parent, 0) - psw) <= 3 and abs(seen.get(child, 0) - csw) <= 3
flat = int(sys.argv[5]) - int(sys.argv[4]) <= 2048
ok = exact and switches >= 1e5 and flat
print("ok" if ok else "FAIL",
      "| offcpu | %d round trips in %s s = %.0f k switches/s | switches seen: parent %s, child %s; "
      "the kernel's: %d, %d | %s | lost stacks %d; RSS %s..%s KiB after 10 s (%s) |"
      % (trips, sys.argv[3], switches / 1e3, seen.get(parent), seen.get(child), psw, csw,
         "exact" if exact else "NOT exact", r["lost_stacks"], sys.argv[4], sys.argv[5],
         "flat within 2 MiB" if flat else "NOT flat"))
EOF
)
[ "$ok2" = ok ] || fail=1

# --- 3. process churn ----------------------------------------------------
echo "soak 3/3: denet run, 1000 processes/s, ${s3}s" >&2
watched run 0.1 "$denet" run -q -o "$tmp/run.jsonl" --stats "$tmp/run.stats" -- \
  /usr/bin/time -f "%U %S" -o "$tmp/time" "$fx/fork_rate" 1000 "$s3" 0.2
# (from 12 s: the sampling interval ramps to 1 s by 10 s)
read -r pmin pmax p0 p1 pf0 pf1 < <(growth "$tmp/run.watch" 12 $((s3 - 1)))
read -r ok3 line3 < <($py - "$tmp/run.stats" "$tmp/time" "$tmp/run.out" "$s3" "$p0" "$p1" "$pmin" "$pmax" "$pf0" \
  "$pf1" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
u, k = map(float, open(sys.argv[2]).read().split()[-2:])
ru = u + k
started = int(open(sys.argv[3]).read().split()[-1])
secs = float(sys.argv[4])
p0, p1, pmin, pmax, f0, f1 = map(int, sys.argv[5:11])
diff = (s["cpu_time_secs"] - ru) / ru
# GNU time prints its figures to 10 ms; denet's count includes time itself
exact = abs(s["cpu_time_secs"] - ru) <= max(0.01 * ru, 0.03)
flat = pmax - pmin <= 2048 and f1 <= f0 * 1.05
ok = exact and flat and started / secs >= 900
print("ok" if ok else "FAIL",
      "| run | %d processes in %s s = %.0f/s | tree CPU %.2f s, rusage %.2f s (%+.2f%%) | %s | "
      "RSS %d..%d KiB from 12 s on; most fds %d, then %d (%s) |"
      % (started, sys.argv[4], started / secs, s["cpu_time_secs"], ru, 100 * diff, "exact" if exact else "NOT exact",
         pmin, pmax, f0, f1, "no growth" if flat else "GROWS"))
EOF
)
[ "$ok3" = ok ] || fail=1

{
  echo "| load | size | denet vs the load's own count | result | denet itself |"
  echo "|---|---|---|---|---|"
  echo "$line1"
  echo "$line2"
  echo "$line3"
} >>"$out/soak.md"
cat "$out/soak.md"
exit $fail
