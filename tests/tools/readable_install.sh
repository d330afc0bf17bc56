#!/usr/bin/env bash
# readable_install.sh BUILD PREFIX: install denet from BUILD into PREFIX,
# with the test fixtures, readable by every user. Tests that run denet as
# an unprivileged user (setpriv) use it, so the suite passes from any
# clone, a 0700 directory included: nobody needs to read the checkout.
set -euo pipefail
build=$1
prefix=$2
rm -rf "$prefix"
mkdir -p "$prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null
cp -a "$build/fixtures" "$prefix/fixtures"
# the sanitizer build's leak suppressions, for the runs as nobody
cp "$(dirname "$0")/../lsan.supp" "$prefix/lsan.supp"
chmod -R a+rX "$prefix"
chmod 755 "$prefix"
