#!/usr/bin/env bash
# Fuzzes what vmm reads from others, with libFuzzer through cargo-fuzz
# (fuzz/): the savevm stream reader (what a migration peer or a saved file
# sends), device state loading (a section body handed to each device's
# load), every virtio device's queue (whatever a guest puts in it), the QMP
# monitor (framing, negotiation, dispatch of what a client sends), and the
# certificate-subject reader tls-authz runs on a client's certificate.
# Each runs for its budget from its corpus in the repository; a crash
# fails the run and leaves the input in fuzz/artifacts/TARGET/. Only a
# stable toolchain exists here, so the sanitizer flags are enabled with
# RUSTC_BOOTSTRAP=1.
# Usage: scripts/fuzz.sh [SECONDS] (60 by default, the main targets'
# budget; the monitor and the certificate reader get half; the test
# command runs it)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install --locked --quiet cargo-fuzz
cd "$top"
RUSTC_BOOTSTRAP=1 cargo fuzz build --release >/dev/null 2>&1 \
    || RUSTC_BOOTSTRAP=1 cargo fuzz build --release
for target in stream_reader:$secs device_state:$secs virtqueue:$secs qmp:$((secs / 2)) cert_subject:$((secs / 2)); do
    name=${target%%:*}
    work=$(mktemp -d)
    log=$(mktemp)
    cp fuzz/corpus/"$name"/* "$work/"
    if ! RUSTC_BOOTSTRAP=1 cargo fuzz run --release "$name" "$work" -- \
        -max_total_time="${target##*:}" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz: $name found a failure (the input is in fuzz/artifacts/$name/)" >&2
        rm -rf "$work" "$log"
        exit 1
    fi
    done_line=$(grep -E "^#[0-9]+[[:space:]]+DONE" "$log" | tail -1)
    echo "fuzz: $name ${target##*:} s: ${done_line#*DONE}"
    rm -rf "$work" "$log"
done
