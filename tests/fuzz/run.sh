#!/usr/bin/env bash
# run.sh BUILD SECONDS [TARGET]: run every libFuzzer target of BUILD (or one; configured with
# -DDENET_FUZZ=ON) for SECONDS each, from a copy of its committed seeds.
# A crash stops with the input that caused it: add that file to
# tests/fuzz/seeds/TARGET/ (the fuzz.TARGET ctest replays it from then on)
# and fix the parser.
set -euo pipefail
build=$(realpath "$1")
seconds=${2:-60}
src=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$src/../.." && pwd)
work=$build/fuzz-work
# the suite's leak suppressions, with names for the frames they match
export LSAN_OPTIONS="suppressions=$src/../lsan.supp:print_suppressions=0"
export ASAN_SYMBOLIZER_PATH=${ASAN_SYMBOLIZER_PATH:-/usr/lib/llvm-14/bin/llvm-symbolizer}
mkdir -p "$work"
status=0
for exe in "$build"/tests/fuzz_${3:-*}; do
  name=${exe##*/fuzz_}
  corpus=$work/corpus/$name
  mkdir -p "$corpus" "$work/artifacts"
  cp -n "$src/seeds/$name"/* "$corpus"/ 2>/dev/null || true
  printf 'fuzz %s: %s s\n' "$name" "$seconds"
  if ! "$exe" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
      -artifact_prefix="$work/artifacts/$name-" "$corpus" >"$work/$name.log" 2>&1; then
    status=1
    # what failed, and the project's own frames of the crash
    awk -v here="$root/" '/ERROR|SUMMARY|crash-|fuzz_lua|invariant/ ||
      index($0, here "host/") || index($0, here "tests/")' \
      "$work/$name.log" | head -30 >&2
    printf 'fuzz %s: FAILED; the input is in %s/artifacts (keep it in tests/fuzz/seeds/%s/)\n' \
      "$name" "$work" "$name" >&2
  else
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "$work/$name.log" | tr '\n' ' '
    printf '\n'
  fi
done
exit $status
