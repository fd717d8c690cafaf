#!/usr/bin/env bash
# Save/restore benchmark, vmm beside QEMU (see snapshot.py).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
"$top/scripts/setup.sh"
exec python3 "$top/scripts/bench/snapshot.py" "$@"
