#!/usr/bin/env bash
# Everything a fresh Debian 12 machine needs for vmm's demo and tests.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
# QEMU's pseries descriptions, the reference for vmm's (it dumps them
# without a POWER host).
command -v qemu-system-ppc64 >/dev/null || need+=(qemu-system-ppc)
# dtc decompiles QEMU's and vmm's pseries device trees to compare them.
command -v dtc >/dev/null || need+=(device-tree-compiler)
command -v python3 >/dev/null || need+=(python3)
python3 -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
# ip and ss: taps, bridges and network namespaces for the virtio-net and
# live-migration tests.
command -v ip >/dev/null && command -v ss >/dev/null || need+=(iproute2)
# The Linux guest (scripts/guest/build-linux.sh) unpacks Debian's kernel
# and packs an initramfs: installed here, before any test runs, since tests
# build it concurrently.
command -v cpio >/dev/null || need+=(cpio)
command -v xz >/dev/null || need+=(xz-utils)
command -v zstd >/dev/null || need+=(zstd)
command -v flock >/dev/null || need+=(util-linux)
# A test watches a file save's system calls (its fsync).
command -v strace >/dev/null || need+=(strace)
# Test certificates for TLS migration (scripts/tls-certs.sh).
command -v openssl >/dev/null || need+=(openssl)
# TLS with pre-shared keys links OpenSSL (the openssl crate finds it with
# pkg-config).
{ command -v pkg-config >/dev/null && pkg-config --exists openssl; } || need+=(pkg-config libssl-dev)
# ppc64le (scripts/ppc64le.sh): Debian's rustc-web with the powerpc64le
# standard library, the cross linker, OpenSSL for the target, qemu-user.
if ! dpkg --print-foreign-architectures | grep -qx ppc64el; then
    dpkg --add-architecture ppc64el
    need+=(libc6:ppc64el)
fi
# libc6-dev-ppc64el-cross: the static C library and the kernel's uapi
# headers the KVM-PPC layout probe is built against (kvm-ppc/probe).
for p in rustc-web libstd-rust-web-dev:ppc64el gcc-powerpc64le-linux-gnu libc6-dev-ppc64el-cross qemu-user-static libssl-dev:ppc64el; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
# The Linux guest downloads Debian's kernel package: the lists must know it.
if [ ${#need[@]} -gt 0 ] || ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
fi
if [ ${#need[@]} -gt 0 ]; then
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
# test.sh checks formatting and lints.
cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1 \
    || rustup component add rustfmt clippy
"$top/scripts/build-guest.sh" >/dev/null
# A real QMP client nobody here wrote, for the monitor's tests.
if [ ! -x "$top/target/qmp-venv/bin/qmp-shell" ]; then
    python3 -m venv "$top/target/qmp-venv"
    "$top/target/qmp-venv/bin/pip" install -q qemu.qmp==0.0.6
fi
# Running unprivileged (docs/security.md): /dev/kvm through the kvm group,
# as on a stock Debian host (udev sets that up there; here nobody did), and
# a user of that group the tests run vmm as.
getent group kvm >/dev/null || groupadd --system kvm
if [ -e /dev/kvm ]; then
    chgrp kvm /dev/kvm
    chmod 660 /dev/kvm
fi
# /dev/net/tun is open to all on Debian (the kernel checks that a tap is
# the user's when vmm attaches to it); here it was root's only.
[ -e /dev/net/tun ] && chmod 666 /dev/net/tun
id vmm-test >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin --gid kvm vmm-test
cd "$top" && cargo build --release --workspace --quiet
# The tests that kill a process inside a short window of a migration use a
# binary of their own with the fault-injection hooks; the release binary
# above has none.
cargo build --release -p vmm --features fault-injection --target-dir target/fault-injection --quiet
