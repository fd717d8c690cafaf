#!/usr/bin/env bash
# Keeps, for recorded release VERSION (tests/compat/releases), one saved
# stream per machine type it offers in tests/compat/vmm-VERSION/streams/
# (gzipped): the release, rebuilt from its commit by build-release.sh,
# runs the test guest with every virtio device and saves it to a file.
# tests/tests/release_compat.rs loads every kept stream with the current
# build. Part of cutting a release (docs/releasing.md); needs root (taps).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
version=${1:?usage: scripts/freeze-streams.sh VERSION}
cd "$top"
bash scripts/build-guest.sh >/dev/null
cargo build --release --locked --quiet
VMM_FREEZE_STREAMS=$version cargo nextest run --locked -p vmm-tests --test release_compat \
    --run-ignored only --no-capture -E 'test(freeze_saved_streams)'
ls -l "tests/compat/vmm-$version/streams"
