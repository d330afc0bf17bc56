#!/usr/bin/env bash
# under-load.sh CMD...: run CMD while stress-ng keeps every CPU busy, as a
# shared CI machine may be; CMD's exit status is the script's.
set -euo pipefail
stress-ng --cpu "$(nproc)" --timeout 3600 --quiet &
load=$!
trap 'kill "$load" 2>/dev/null; wait "$load" 2>/dev/null || true' EXIT
sleep 1
"$@"
