#!/bin/sh
# A small workload with a bit of everything, for trying denet: CPU in two
# children, file writes with fsync, reads, sleeps, and short-lived
# processes. Runs about 3 seconds.
set -e
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# two CPU-bound children for ~1.5 s
for _ in 1 2; do
  ( end=$(( $(date +%s%N) + 1500000000 )); while [ "$(date +%s%N)" -lt "$end" ]; do :; done ) &
done
# disk: 32 MiB written and synced, then read back
dd if=/dev/zero of="$tmp/data" bs=1M count=32 conv=fsync status=none
dd if="$tmp/data" of=/dev/null bs=1M status=none
# short-lived processes and sleeps
for _ in 1 2 3 4 5 6 7 8 9 10; do
  /bin/true
  sleep 0.1
done
wait
