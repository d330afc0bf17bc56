#!/usr/bin/env bash
# repeat.sh N [load]: run `make test` N times in a row, each on a fresh
# clone of this checkout's HEAD in a new 0700 folder; with "load", beside
# `stress-ng --cpu $(nproc)`. One line per run (result, ctest's count,
# minutes, the failed tests) on stdout; each run's log is kept in
# $DENET_REPEAT_LOGS (default /tmp/denet-repeat). Exit status: the number of
# failed runs (0: all passed).
set -euo pipefail
n=${1:?usage: repeat.sh N [load]}
mode=${2:-}
src=$(cd "$(dirname "$0")/.." && pwd)
logs=${DENET_REPEAT_LOGS:-/tmp/denet-repeat}
mkdir -p "$logs"
if [ -d "$src/tests/browser/node_modules" ]; then
  modules="$src/tests/browser/node_modules"
else
  modules=
fi
failed=0
for i in $(seq 1 "$n"); do
  dir=$(mktemp -d /tmp/denet-repeat.XXXXXX)
  chmod 700 "$dir"
  git clone -q "$src" "$dir/denet"
  if [ -n "$modules" ]; then
    cp -a "$modules" "$dir/denet/tests/browser/"
  fi
  log="$logs/run-$i.log"
  start=$(date +%s)
  if [ "$mode" = load ]; then
    cmd=(bash "$src/tools/under-load.sh" make -C "$dir/denet" test)
  else
    cmd=(make -C "$dir/denet" test)
  fi
  if "${cmd[@]}" >"$log" 2>&1; then
    result=pass
  else
    result=FAIL
    failed=$((failed + 1))
  fi
  mins=$(( ($(date +%s) - start + 30) / 60 ))
  count=$(grep -E '^[0-9]+% tests passed' "$log" | tail -1 || true)
  fails=$(sed -n '/The following tests FAILED/,$p' "$log" | grep -E '^\s+[0-9]+ - ' | awk '{print $3}' | paste -sd, - || true)
  echo "run $i: $result, ${count:-no ctest summary}, ${mins} min${fails:+, failed: $fails}"
  rm -rf "$dir"
done
exit "$failed"
