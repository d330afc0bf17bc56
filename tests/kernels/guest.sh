#!/bin/sh
# The smoke suite inside a kernel of the matrix (tools/kernels/boot.sh runs
# it as root on the squashfs image): every spec of tests/kernels, run by
# busted inside the installed denet.
export DENET_BIN=/opt/denet/bin/denet
export DENET_FIXTURES=/opt/denet-tests/fixtures
export DENET_SOURCE=/opt/denet-tests
cd /opt/denet-tests || exit 1
echo "kernel: $(uname -r)"
$DENET_BIN doctor
$DENET_BIN busted --output=plainTerminal --helper=/opt/denet-tests/helper.lua /opt/denet-tests/kernels
