#!/usr/bin/env bash
# The migration's zero-page check on guest memory (volatile loads) against
# the plain-slice check it replaced; argument: MiB of memory (default 256).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
cargo run --release -q -p migration --example zero_page -- "$@"
