#!/usr/bin/env bash
# Boot benchmark, vmm beside QEMU in the same run (see boot.py).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
"$top/scripts/setup.sh"
exec python3 "$top/scripts/bench/boot.py" "$@"
