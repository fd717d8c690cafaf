#!/usr/bin/env bash
# Fuzzes the savevm stream reader (migration/fuzz) with libFuzzer through
# cargo-fuzz. Only a stable toolchain exists here, so the sanitizer flags
# are enabled with RUSTC_BOOTSTRAP=1. Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
cd "$top/migration"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp fuzz/corpus/stream_reader/* "$work/"
RUSTC_BOOTSTRAP=1 cargo fuzz run stream_reader "$work" -- -max_total_time="${1:-60}" -rss_limit_mb=2048
