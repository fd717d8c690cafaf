#!/usr/bin/env bash
# Builds the test guest (tests/guest) reproducibly and installs it at
# target/guest/test-guest (PVH ELF) and target/guest/test-guest.bzImage
# (the same guest behind a minimal bzImage header) and target/guest/test-guest.elf32
# (the same segments as a 32-bit ELF). Prints the ELF's sha256.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top/tests/guest"
# Reproducible: no incremental state, fixed paths in the binary, no build id.
export CARGO_INCREMENTAL=0
export SOURCE_DATE_EPOCH=0
cargo build --release --locked --quiet
mkdir -p "$top/target/guest"
install -m 0644 target/x86_64-unknown-linux-gnu/release/test-guest "$top/target/guest/test-guest"
# The same guest packed as a bzImage, for the Linux boot-protocol path.
python3 mkbzimage.py target/x86_64-unknown-linux-gnu/release/test-guest "$top/target/guest/test-guest.bzImage"
# The same guest as a 32-bit ELF: PVH kernels may be either class.
python3 mkelf32.py target/x86_64-unknown-linux-gnu/release/test-guest "$top/target/guest/test-guest.elf32"
sha256sum "$top/target/guest/test-guest" | cut -d' ' -f1
