#!/usr/bin/env bash
# fetch.sh FLAVOUR DIR - download Debian's current kernel image of FLAVOUR
# (amd64, cloud-amd64, rt-amd64: what linux-image-FLAVOUR depends on) and
# unpack it into DIR (boot/vmlinuz-*, lib/modules/*, modules.dep made by
# depmod). Nothing is installed: the machine's own kernel and boot loader
# are not touched. Does nothing when DIR already holds that version.
set -euo pipefail

flavour=$1
dir=$2
pkg=$(apt-cache depends "linux-image-$flavour" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
if [ -z "$pkg" ]; then
	echo "fetch.sh: no Debian package linux-image-$flavour (run tools/setup.sh kernels)" >&2
	exit 2
fi
rel=${pkg#linux-image-}
if [ -f "$dir/boot/vmlinuz-$rel" ] && [ -f "$dir/lib/modules/$rel/modules.dep" ]; then
	exit 0
fi
tmp=$(mktemp -d /tmp/denet-kernel.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp" # apt downloads as _apt
(cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>&1) || {
	echo "fetch.sh: apt-get download $pkg failed" >&2
	exit 2
}
rm -rf "$dir"
mkdir -p "$dir"
dpkg-deb -x "$tmp"/"$pkg"_*.deb "$dir"
depmod -b "$dir" "$rel"
if [ ! -d "/usr/src/linux-headers-$rel" ]; then
	echo "fetch.sh: no headers for $rel in /usr/src (run tools/setup.sh kernels)" >&2
	exit 2
fi
