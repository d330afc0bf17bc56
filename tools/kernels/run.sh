#!/usr/bin/env bash
# run.sh FLAVOUR BUILD - one row of the kernel matrix: fetch Debian's
# FLAVOUR kernel, boot it under qemu on the root image BUILD/kernels/root.sqfs
# (made by mkroot.sh) and run the in-guest smoke suite
# (tests/kernels/*_spec.lua). The console log is BUILD/kernels/FLAVOUR.log.
set -euo pipefail

flavour=$1
build=$(realpath "$2")
here=$(dirname "$(realpath "$0")")
kdir=$build/kernels/$flavour
"$here/fetch.sh" "$flavour" "$kdir"
exec "$here/boot.sh" "$kdir" "$build/kernels/root.sqfs" "$build/kernels/$flavour.log"
