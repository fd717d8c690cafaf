#!/usr/bin/env bash
# Live migration benchmark, vmm beside QEMU (see migrate.py).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
"$top/scripts/setup.sh"
exec python3 "$top/scripts/bench/migrate.py" "$@"
