#!/usr/bin/env bash
# boot.sh KDIR ROOT.sqfs LOG [COMMAND] - boot the Debian kernel extracted in
# KDIR (boot/vmlinuz-*, lib/modules/*) under qemu (TCG: nested KVM hangs on
# these VMs), with ROOT.sqfs as a read-only root on virtio-blk, and run
# COMMAND there (default: the in-guest smoke suite,
# /opt/denet-tests/kernels/guest.sh). The console goes to LOG and stdout;
# exits with the command's exit status (124 when the guest timed out).
#
# The initramfs is busybox plus the virtio and squashfs modules of that
# kernel; it mounts the image, tmpfs on /tmp, /run, /var and
# /lib/modules (where build/source point at the flavour's Debian headers),
# proc, sys, tracefs, debugfs, bpffs and cgroup2, brings up the loopback,
# then switch_root's.
set -euo pipefail

kdir=$(realpath "$1")
root=$(realpath "$2")
log=$3
cmd=${4:-/opt/denet-tests/kernels/guest.sh}
timeout_s=${DENET_QEMU_TIMEOUT:-1500}
mem=${DENET_QEMU_MEM:-3G}

mods=("$kdir"/lib/modules/*/)
rel=$(basename "${mods[0]}")
# Single-threaded TCG: both vCPUs in one host thread. Multi-threaded TCG
# (qemu 7.2) hangs these kernels when a tracepoint's code is patched while
# the other vCPU schedules: that vCPU goes on taking the int3 of the patch
# at a site whose memory already holds the final instruction, with its
# run-queue lock held, and the other one waits for it forever. A ping-pong
# load beside rounds of `denet run` and `denet script offcpu` hung the rt
# kernel in 3 boots of 3 and the cloud kernel in 1 of 1, within their
# first 3 rounds; single-threaded, 30 rounds passed on each.
accel=${DENET_QEMU_ACCEL:-tcg,thread=single}
vmlinuz=$kdir/boot/vmlinuz-$rel
[ -f "$vmlinuz" ] || { echo "boot.sh: no kernel at $vmlinuz" >&2; exit 2; }
moddir=$kdir/lib/modules/$rel
[ -f "$moddir/modules.dep" ] || depmod -b "$kdir" "$rel"

work=$(mktemp -d /tmp/denet-initrd.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,dev,proc,sys,newroot,mods}
cp /bin/busybox "$work/bin/busybox"
ln -s busybox "$work/bin/sh"

# the modules to mount the root, dependencies first (from modules.dep)
declare -A seen=()
order=()
add_mod() {
	local m=$1 line dep
	[ -n "${seen[$m]:-}" ] && return 0
	seen[$m]=1
	line=$(grep -E "(^|/)$m\.ko(\.xz|\.zst)?:" "$moddir/modules.dep" || true)
	[ -n "$line" ] || return 0 # built in
	for dep in ${line#*:}; do
		add_mod "$(basename "${dep%%.ko*}")"
	done
	order+=("${line%%:*}")
}
for m in virtio_pci virtio_blk squashfs; do
	add_mod "$m"
done
: >"$work/mods/order"
for f in "${order[@]}"; do
	cp "$moddir/$f" "$work/mods/"
	basename "$f" >>"$work/mods/order"
done

cat >"$work/init" <<'INIT'
#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m; done
for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
mount -t squashfs -o ro /dev/vda /newroot || { echo "DENET-GUEST-EXIT 3"; poweroff -f; }
for d in tmp run var root; do mount -t tmpfs -o mode=0755 tmpfs /newroot/$d; done
chmod 1777 /newroot/tmp
mkdir -p /newroot/var/cache /newroot/var/tmp
rel=$(uname -r)
mount -t tmpfs tmpfs /newroot/usr/lib/modules
mkdir -p /newroot/usr/lib/modules/$rel
ln -s /usr/src/linux-headers-$rel /newroot/usr/lib/modules/$rel/build
case $rel in
*-rt-*) common=$(ls -d /newroot/usr/src/linux-headers-*-common-rt | head -n 1) ;;
*) common=$(ls -d /newroot/usr/src/linux-headers-*-common | head -n 1) ;;
esac
ln -s ${common#/newroot} /newroot/usr/lib/modules/$rel/source
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
mount -t tracefs tracefs /newroot/sys/kernel/tracing
mount -t debugfs debugfs /newroot/sys/kernel/debug
mount -t bpf bpf /newroot/sys/fs/bpf
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup
# the loopback, as any system brings it up (tests send over 127.0.0.1)
ip link set lo up
cmd=$(sed -n 's/.*denet\.cmd=\([^ ]*\).*/\1/p' /newroot/proc/cmdline | base64 -d)
exec switch_root /newroot /bin/sh -c "cd /root; export HOME=/root PATH=/usr/bin:/bin:/usr/sbin:/sbin; $cmd; echo DENET-GUEST-EXIT \$?; poweroff -f"
INIT
chmod +x "$work/init"
(cd "$work" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 >"$work.cpio.gz")
trap 'rm -rf "$work" "$work.cpio.gz"' EXIT

enc=$(printf '%s' "$cmd" | base64 -w0)
set +e
timeout "$timeout_s" qemu-system-x86_64 -accel "$accel" -cpu max -smp 2 -m "$mem" -nographic -no-reboot \
	-kernel "$vmlinuz" -initrd "$work.cpio.gz" \
	-append "console=ttyS0 panic=-1 softlockup_panic=1 softlockup_all_cpu_backtrace=1 hung_task_panic=1 quiet loglevel=5 rdinit=/init denet.cmd=$enc" \
	-drive "file=$root,format=raw,if=virtio,readonly=on" </dev/null 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -eq 124 ]; then
	echo "boot.sh: the guest ($rel) did not finish within ${timeout_s}s" >&2
	exit 124
fi
code=$(sed -n 's/.*DENET-GUEST-EXIT \([0-9]*\).*/\1/p' "$log" | tail -n 1)
[ -n "$code" ] || { echo "boot.sh: the guest ($rel) ended without a result" >&2; exit 125; }
exit "$code"
