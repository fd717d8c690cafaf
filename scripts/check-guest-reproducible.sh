#!/usr/bin/env bash
# Builds the test guest twice from scratch in separate target directories
# and fails unless both builds are byte-identical.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in 1 2; do
    (cd "$top/tests/guest" && CARGO_INCREMENTAL=0 CARGO_TARGET_DIR="$tmp/t$i" cargo build --release --locked --quiet)
done
a=$(sha256sum "$tmp/t1/x86_64-unknown-linux-gnu/release/test-guest" | cut -d' ' -f1)
b=$(sha256sum "$tmp/t2/x86_64-unknown-linux-gnu/release/test-guest" | cut -d' ' -f1)
if [ "$a" != "$b" ]; then
    echo "test guest build is not reproducible: $a != $b" >&2
    exit 1
fi
echo "test guest reproducible: $a"
