#!/usr/bin/env bash
# The long soak (not in CI, which runs 14 hops in the test suite): 100
# consecutive live migrations with a fault in every other hop; see
# tests/tests/soak.rs. VMM_SOAK_HOPS and VMM_SOAK_SEED override.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/setup.sh"
cd "$top"
VMM_SOAK_HOPS="${VMM_SOAK_HOPS:-100}" cargo nextest run -p vmm-tests --test soak --no-capture
