#!/usr/bin/env bash
# ppc64le: the workspace is built for powerpc64le-unknown-linux-gnu with
# Debian's rustc-web (rustup can fetch no other target here) and its unit
# tests run under qemu-user (ppc64 guests are proven without a POWER host:
# DESIGN.md); then the vmm binary, which a pseries guest migrates to and
# from.
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
# Every crate's unit tests (the integration tests need KVM x86: vmm-tests).
cargo test --locked --quiet --target powerpc64le-unknown-linux-gnu --target-dir target/ppc64le \
    --workspace --exclude vmm-tests
# The vmm binary for ppc64le: a pseries guest migrates between it (under
# qemu-user) and the x86_64 build, both ways (an integration test the
# main run leaves out for want of this build; built with the host's
# toolchain and environment).
cargo build --locked --quiet --target powerpc64le-unknown-linux-gnu --target-dir target/ppc64le \
    -p vmm --bins
env -u RUSTC -u RUSTDOC -u PKG_CONFIG_ALLOW_CROSS -u PKG_CONFIG_PATH \
    cargo nextest run --locked -p vmm-tests --test vmm_qtest --run-ignored only \
    --no-fail-fast
