#!/usr/bin/env bash
# virtio-blk benchmark, vmm beside QEMU (see virtio.py).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
"$top/scripts/setup.sh"
exec python3 "$top/scripts/bench/virtio.py" "$@"
