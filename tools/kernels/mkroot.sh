#!/usr/bin/env bash
# mkroot.sh BUILD OUT.sqfs - the root file system the kernel matrix boots:
# denet installed under /opt/denet, its fixtures and the in-guest tests under
# /opt/denet-tests, every shared library they need (by ldd), the Lua modules
# busted uses, the syscall and errno headers denet names numbers from, the
# Debian kernel headers of each flavour, Debian's python3 and its standard
# library, and busybox for everything else.
# One squashfs image for every kernel: the cloud kernel has no 9p, and a
# packed image reads much faster than 9p under TCG.
set -euo pipefail

build=$(realpath "$1")
out=$2
src=$(realpath "$(dirname "$0")/../..")
mkdir -p "$(dirname "$out")"
stage=$(mktemp -d /tmp/denet-root.XXXXXX)
trap 'rm -rf "$stage"' EXIT

# a host path and, for links, what they point to (recursively), with parents
copy() {
	local p=$1
	[ -e "$p" ] || [ -L "$p" ] || return 0
	[ -e "$stage$p" ] || [ -L "$stage$p" ] && return 0
	mkdir -p "$stage$(dirname "$p")"
	cp -a "$p" "$stage$p"
	if [ -L "$p" ]; then
		local t
		t=$(readlink "$p")
		case $t in /*) ;; *) t=$(dirname "$p")/$t ;; esac
		copy "$(realpath -s "$t")"
	fi
}

# every library an ELF file loads
copy_libs() {
	ldd "$1" 2>/dev/null | awk '/=>/ { print $3 } /^\t\// { print $1 }' | while read -r lib; do
		[ -n "$lib" ] && copy "$lib"
	done
}

mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,usr/lib/modules,usr/lib64,etc,tmp,run,proc,sys,dev,var/cache,var/tmp,root,opt}
ln -s usr/lib "$stage/lib"
ln -s usr/lib64 "$stage/lib64"

# busybox for the shell and the tools
cp /bin/busybox "$stage/bin/busybox"
for a in $(/bin/busybox --list); do
	[ -e "$stage/bin/$a" ] || ln -s busybox "$stage/bin/$a"
done

# denet, installed as a user would, and what the tests need
cmake --install "$build" --prefix "$stage/opt/denet" >/dev/null
copy_libs "$stage/opt/denet/bin/denet"
# libbcc's compiler, which denet opens (dlopen) only when it compiles
bcc_bpf=$(ldd "$stage/opt/denet/bin/denet" | awk '/libbcc_bpf/ { print $3 }')
copy "$(dirname "$bcc_bpf")/libbcc.so.0"
copy_libs "$(realpath "$(dirname "$bcc_bpf")/libbcc.so.0")"
mkdir -p "$stage/opt/denet-tests"
cp -a "$build/fixtures" "$stage/opt/denet-tests/fixtures"
cp -a "$src/tests/kernels" "$src/tests/helper.lua" "$stage/opt/denet-tests/"
# Debian's python3 and its standard library, for the Python frames test
cp "$src/tests/fixtures/python/blocking.py" "$stage/opt/denet-tests/fixtures/"
copy /usr/bin/python3
copy_libs /usr/bin/python3.11
mkdir -p "$stage/usr/lib/python3.11"
(cd /usr/lib/python3.11 && tar cf - --exclude=./test --exclude=./idlelib --exclude=./tkinter --exclude=./ensurepip \
	--exclude=./lib2to3 --exclude=./pydoc_data --exclude=./dist-packages --exclude=./site-packages .) |
	tar xf - -C "$stage/usr/lib/python3.11"
for f in "$build"/fixtures/*; do
	[ -x "$f" ] && [ ! -d "$f" ] && copy_libs "$f"
done

# Lua modules (busted and its helpers, cjson, lfs) and their libraries
copy /usr/share/lua/5.1
while IFS= read -r so; do
	copy "$so"
	copy_libs "$(realpath "$so")"
done < <(find /usr/lib/x86_64-linux-gnu/lua/5.1 -name '*.so')
copy /usr/share/luajit-2.1.0-beta3

# names of syscalls and errnos, kernel headers of every flavour
copy /usr/include/x86_64-linux-gnu/asm
copy /usr/include/asm-generic
for d in /usr/src/linux-headers-*; do
	copy "$d"
done

# users (nobody), a linker cache for the staged libraries
cp /etc/passwd /etc/group "$stage/etc/"
ldconfig -r "$stage" 2>/dev/null || true

rm -f "$out"
mksquashfs "$stage" "$out" -comp lz4 -noappend -quiet -all-root >/dev/null
