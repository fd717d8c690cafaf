#!/usr/bin/env bash
# The release matrix: every recorded release that migrates against this
# build, on every machine type both offer, both ways, live (a chain:
# release -> this build -> release -> this build) and by file, with real
# guests and every virtio device (tests/tests/release_compat.rs, which CI
# runs too). Writes docs/compat-matrix.md: each hop, whether it worked, and
# what the destination adopted of its source's configuration.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/setup.sh"
cd "$top"
out=$(mktemp)
status=0
VMM_COMPAT_MATRIX=$out cargo nextest run -p vmm-tests --test release_compat --no-fail-fast || status=$?
python3 - "$out" "$top/docs/compat-matrix.md" "$(git rev-parse --short HEAD)" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
key = lambda r: (r["from"] if r["from"] != "this build" else r["to"], r["machine"])
out = ["# The release matrix", "",
       f"`scripts/compat-matrix.sh` at {sys.argv[3]}: every hop below ran a real guest",
       "(memory workload verified page by page after each hop, with virtio-blk,",
       "virtio-net on a tap, virtio-rng and a virtconsole) between two processes.",
       "A hop that failed is missing from the table and fails the script.", "",
       "| release | machine type | hop | how | carried (adopted by the destination) |",
       "|---|---|---|---|---|"]
for r in sorted(rows, key=lambda r: (key(r), r["how"])):
    carried = "; ".join(r["carried"]) or "nothing"
    out.append(f"| {key(r)[0]} | {r['machine']} | {r['from']} → {r['to']} | {r['how']} | {carried} |")
out.append("")
out.append(f"{len(rows)} hops.")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print(f"compat-matrix: {len(rows)} hops written to {sys.argv[2]}")
PY
rm -f "$out"
exit $status
