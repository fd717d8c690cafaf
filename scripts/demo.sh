#!/usr/bin/env bash
# Sets up a fresh machine, then boots the test guest on vmm (KVM) and shows
# its platform checks passing on the serial console.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
# --no-setup: the machine is already set up (the demo's own test uses it).
[ "${1:-}" = --no-setup ] || "$top/scripts/setup.sh"
dir=$(mktemp -d)
src_pid='' dst_pid=''
# Whatever is still running when the demo ends, however it ends; a process
# that already exited is not a failure (the trap's status would become the
# script's under set -e).
cleanup() {
    for p in $src_pid $dst_pid; do kill "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
# The guest's verdict: isa-debug-exit turns its 0 (pass) into exit status 1,
# as in QEMU, and vmm's own errors exit 1 too, so the console must say PASS.
passed() { [ "$1" -eq 1 ] && grep -q '^RESULT PASS' "$2"; }

echo "== vmm -M q35 -m 512M -smp 2: the test guest checks memory, ACPI, CPUs, clocks and PCI (CF8 and ECAM),"
echo "== then writes and verifies a memory pattern on both vCPUs for a second"
set +e
"$top/target/release/vmm" -M q35 -m 512M -smp 2 \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -kernel "$top/target/guest/test-guest" \
    -append "cpus=2 mem=512M pci_ecam=1 acpi_require=FACP,APIC,DSDT,MCFG work=mem,counter mem_mb=32 tick_ms=250 duration_ms=1000" \
    | tee "$dir/boot.log"
rc=${PIPESTATUS[0]}
set -e
if passed $rc "$dir/boot.log"; then echo "== guest reported PASS"; else echo "== guest failed (exit $rc)"; exit 1; fi

echo
echo "== live migration: a guest writing memory on 2 vCPUs moves to a second vmm process over TCP;"
echo "== the destination finishes the run and the guest verifies every page it wrote"
# A free port below Linux's ephemeral range (32768-60999), which a
# connection could take between the choice and the destination's bind.
port=$(python3 -c '
import random, socket
for port in random.sample(range(20000, 32000), 12000):
    try:
        socket.create_server(("127.0.0.1", port)).close()
        print(port)
        break
    except OSError:
        pass
')
guest=(-M q35 -m 512M -smp 2 -device isa-debug-exit,iobase=0xf4,iosize=0x04
       -kernel "$top/target/guest/test-guest"
       -append "cpus=2 mem=512M work=mem,counter mem_mb=64 tick_ms=250 duration_ms=8000")
"$top/target/release/vmm" "${guest[@]}" -serial "file:$dir/src.log" \
    -qmp "unix:$dir/src.sock,server=on,wait=off" &
src_pid=$!
"$top/target/release/vmm" "${guest[@]}" -serial "file:$dir/dst.log" -incoming "tcp:127.0.0.1:$port" &
dst_pid=$!
# Until $2 succeeds, for at most $1 seconds and while both vmm processes
# run; says what it waited for if not.
wait_for() {
    local deadline=$((SECONDS + $1)) what=$2; shift 2
    until "$@"; do
        if [ $SECONDS -ge $deadline ] || ! kill -0 "$src_pid" "$dst_pid" 2>/dev/null; then
            echo "== $what did not happen"
            exit 1
        fi
        sleep 0.1
    done
}
filled() { grep -q '^mem.filled' "$dir/src.log" 2>/dev/null; }
listening() { ss -ltnH "sport = :$port" | grep -q .; }
wait_for 30 "the source's guest filling its memory" filled
wait_for 30 "the destination listening on $port" listening
"$top/target/release/vmmctl" --qmp "$dir/src.sock" migrate "tcp:127.0.0.1:$port"
set +e
wait $dst_pid
rc=$?
set -e
echo "== the destination's console:"
grep -E '^(tick|mem.verify|RESULT)' "$dir/dst.log" | tail -4
if passed $rc "$dir/dst.log"; then echo "== guest reported PASS after moving"; else echo "== guest failed after moving (exit $rc)"; exit 1; fi
