#!/usr/bin/env bash
# Runs every test: unit tests and the integration tests on real KVM.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/setup.sh"
cd "$top"
cargo fmt --all -- --check
(cd tests/guest && cargo fmt -- --check)
"$top/scripts/check-guest-reproducible.sh"
cargo nextest run --workspace --no-fail-fast
