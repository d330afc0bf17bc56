#!/usr/bin/env bash
# Idempotent machine set-up for building, testing and running denet.
#
# Installs the Debian packages denet needs (build, run, tests, benchmarks),
# mounts tracefs when it is missing, and, when the running kernel ships no
# headers of its own, points /lib/modules/$(uname -r)/{build,source} at the
# newest Debian linux-headers-* directories so libbcc can compile BPF C.
# Safe to run any number of times; does nothing that is already done.
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake pkg-config
  libbpfcc-dev libbpf-dev libluajit-5.1-dev luajit libelf-dev libdw-dev libdebuginfod-dev libreadline-dev
  libmicrohttpd-dev libprotobuf-c-dev protobuf-c-compiler zlib1g-dev
  # run-time Lua modules
  lua-cjson lua-argparse
  # tests
  lua-busted bpftool libclang-rt-14-dev python3-pytest systemtap-sdt-dev
  # ground truth for stacks (eu-stack), and glibc's own function names
  elfutils libc6-dbg
  # a debuginfod server on loopback, for symbols fetched by build-id
  debuginfod
  # lint (tools/lint.sh) and the fuzz targets (make fuzz)
  lua-check clang-format clang git shellcheck pyflakes3
  # export tests: a real Prometheus, protoc to decode pprof, a browser for the reports
  prometheus protobuf-compiler chromium nodejs curl
  # kernel headers for libbcc (see DEVELOPERS notes in docs/troubleshooting.md)
  linux-headers-amd64
  # workflows: Snakemake's own benchmark files beside denet's (tests/python)
  snakemake
  # the wheel (make wheel, pip install .): built offline with Debian's tools
  python3-build python3-venv python3-wheel python3-setuptools python3-pip
  # anchors and benchmark tools
  bpftrace bpfcc-tools python3 python3-bpfcc python3-psutil hyperfine stress-ng sysstat linux-perf time
)

# `setup.sh kernels`: also what the kernel matrix needs (make test-kernels):
# qemu, an initramfs's busybox, squashfs, depmod, and the headers of the
# Debian kernel flavours it boots (the kernel images themselves are only
# downloaded and unpacked, by tools/kernels/fetch.sh)
KERNEL_PACKAGES=(
  qemu-system-x86 busybox-static squashfs-tools kmod
  linux-headers-amd64 linux-headers-cloud-amd64 linux-headers-rt-amd64
)
if [ "${1:-}" = kernels ]; then
  PACKAGES=("${KERNEL_PACKAGES[@]}")
fi

log() { printf 'setup: %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (packages, tracefs and /lib/modules need it); try: sudo $0"
    exit 2
  fi
}

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

mount_tracefs() {
  if [ -e /sys/kernel/tracing/events ]; then
    return 0
  fi
  log "mounting tracefs at /sys/kernel/tracing"
  mount -t tracefs tracefs /sys/kernel/tracing
}

# libbcc looks for /lib/modules/$(uname -r)/build (and source on split
# layouts). Debian's packaged headers are for its own kernel; tracepoint
# programs only need the generic headers, so link the newest ones.
link_kernel_headers() {
  local rel mod
  rel=$(uname -r)
  mod=/lib/modules/$rel
  # Headers are usable when build/ has include/ and linux/ sits either there
  # (one tree) or under source/ (Debian's split -amd64/-common layout).
  if [ -d "$mod/build/include" ] &&
     { [ -d "$mod/build/include/linux" ] || [ -d "$mod/source/include/linux" ]; }; then
    return 0
  fi
  local amd64 common
  # the generic flavour (not -cloud-amd64 or -rt-amd64, which the kernel
  # matrix installs for its guests)
  amd64=$(printf '%s\n' /usr/src/linux-headers-*-amd64 | grep -v -e '-cloud-amd64$' -e '-rt-amd64$' \
    -e '\*' | sort -V | tail -n 1)
  common=$(printf '%s\n' /usr/src/linux-headers-*-common | grep -v '\*' | sort -V | tail -n 1)
  if [ -z "$amd64" ] || [ -z "$common" ]; then
    log "no Debian kernel headers under /usr/src; install linux-headers-amd64"
    exit 2
  fi
  log "linking $mod/build -> $amd64 and $mod/source -> $common"
  mkdir -p "$mod"
  ln -sfn "$amd64" "$mod/build"
  ln -sfn "$common" "$mod/source"
}

# The browser tests drive Debian's chromium with puppeteer-core from npm
# (tests/browser/package-lock.json pins it). Debian's npm is installed only
# where no npm is on PATH (a nodejs from elsewhere brings its own).
install_browser_driver() {
  local dir
  dir="$(cd "$(dirname "$0")/.." && pwd)/tests/browser"
  if [ ! -f "$dir/package-lock.json" ] || [ -d "$dir/node_modules/puppeteer-core" ]; then
    return 0
  fi
  if ! command -v npm >/dev/null 2>&1; then
    log "installing: npm"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
  fi
  log "installing puppeteer-core (npm ci in tests/browser)"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
}

need_root
install_packages
mount_tracefs
link_kernel_headers
if [ "${1:-}" != kernels ]; then
  install_browser_driver
fi
