#!/usr/bin/env bash
# Sets up a fresh machine and shows the test guest checking a platform.
# vmm cannot run guests yet (issue #3): until then the demo boots the test
# guest on QEMU, the reference it is proven against, with the devices vmm
# will have to provide.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/setup.sh"
img=$(mktemp /tmp/vmm-demo-disk.XXXXXX)
trap 'rm -f "$img"' EXIT
truncate -s 16M "$img"
echo "== test guest on qemu-system-x86_64 -M q35 -accel kvm, 2 vCPUs, virtio-blk/rng, a PCIe root port"
set +e
qemu-system-x86_64 -M q35 -accel kvm -cpu host,-arch-capabilities -m 512M -smp 2 \
    -nodefaults -display none -serial stdio \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -device pcie-root-port,id=rp0,chassis=1 \
    -drive file="$img",if=none,id=d0,format=raw \
    -device virtio-blk-pci,drive=d0,bus=rp0 \
    -device virtio-rng-pci \
    -kernel "$top/target/guest/test-guest" \
    -append "cpus=2 mem=512M pci_ecam=1 acpi_require=FACP,APIC,DSDT,MCFG work=mem,counter mem_mb=32 tick_ms=250 duration_ms=1000"
rc=$?
set -e
# isa-debug-exit: the guest's 0 (pass) becomes exit status 1.
if [ $rc -eq 1 ]; then echo "== guest reported PASS"; else echo "== guest failed (exit $rc)"; exit 1; fi
