#!/usr/bin/env bash
# ppc64le: the crates that know no x86 (migration, devices, machine,
# kvm-ppc) are
# built for powerpc64le-unknown-linux-gnu with Debian's rustc-web (rustup
# can fetch no other target here) and their unit tests run under
# qemu-user (ppc64 guests are proven without a POWER host: DESIGN.md).
# scripts/setup.sh installs the toolchain; test.sh runs this.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_POWERPC64LE_UNKNOWN_LINUX_GNU_LINKER=powerpc64le-linux-gnu-gcc
export CARGO_TARGET_POWERPC64LE_UNKNOWN_LINUX_GNU_RUNNER="qemu-ppc64le-static -L /"
# OpenSSL (TLS with pre-shared keys) from Debian's ppc64el libssl-dev.
export PKG_CONFIG_ALLOW_CROSS=1
export PKG_CONFIG_PATH=/usr/lib/powerpc64le-linux-gnu/pkgconfig
# What the ppc64el kernel headers say of KVM-PPC's structures and numbers
# (kvm-ppc/probe/uapi.c, against the cross toolchain's uapi headers), for
# kvm-ppc's layout test.
mkdir -p target/ppc64le
powerpc64le-linux-gnu-gcc -static -O1 kvm-ppc/probe/uapi.c -o target/ppc64le/uapi-probe
qemu-ppc64le-static target/ppc64le/uapi-probe > target/ppc64le/uapi.txt
export KVM_PPC_UAPI="$top/target/ppc64le/uapi.txt"
cargo test --locked --quiet --target powerpc64le-unknown-linux-gnu --target-dir target/ppc64le \
    -p migration -p devices -p machine -p kvm-ppc
