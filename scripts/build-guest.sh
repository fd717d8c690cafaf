#!/usr/bin/env bash
# Builds the test guest (tests/guest) reproducibly and installs it at
# target/guest/test-guest. Prints its sha256.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top/tests/guest"
# Reproducible: no incremental state, fixed paths in the binary, no build id.
export CARGO_INCREMENTAL=0
export SOURCE_DATE_EPOCH=0
cargo build --release --locked --quiet
mkdir -p "$top/target/guest"
install -m 0644 target/release/test-guest "$top/target/guest/test-guest"
sha256sum "$top/target/guest/test-guest" | cut -d' ' -f1
