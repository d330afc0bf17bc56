#!/usr/bin/env bash
# private-clone.sh: clone this checkout into a 0700 folder (what mktemp -d
# makes) and run the suite there: no test may need another user to read
# the checkout.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d /tmp/denet-private.XXXXXX)
trap 'rm -rf "$dir"' EXIT
chmod 700 "$dir"
git clone -q "$src" "$dir/denet"
if [ -d "$src/tests/browser/node_modules" ]; then
  cp -a "$src/tests/browser/node_modules" "$dir/denet/tests/browser/"
fi
make -C "$dir/denet" test
