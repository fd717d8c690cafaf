#!/usr/bin/env bash
# Runs every test: unit tests and the integration tests on real KVM.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/setup.sh"
cd "$top"
cargo fmt --all -- --check
(cd tests/guest && cargo fmt -- --check)
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings
cargo clippy -p vmm --all-targets --features fault-injection --locked --quiet -- -D warnings
# The guest with its own flags (tests/guest/.cargo/config.toml).
(cd tests/guest && cargo clippy --release --locked --quiet -- -D warnings)
"$top/scripts/check-guest-reproducible.sh"
cargo nextest run --workspace --no-fail-fast
# The architecture-neutral crates built for ppc64le, their unit tests under
# qemu-user.
"$top/scripts/ppc64le.sh"
# The fuzzers, for a fixed budget each, from the corpus in the repository.
"$top/scripts/fuzz.sh" 60
