#!/usr/bin/env bash
# ppc64le: the crates that know no x86 (migration, devices, machine) are
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
cargo test --locked --quiet --target powerpc64le-unknown-linux-gnu --target-dir target/ppc64le \
    -p migration -p devices -p machine
