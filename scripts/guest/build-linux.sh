#!/usr/bin/env bash
# Builds the Linux guest from Debian packages only: the distribution kernel
# (bzImage, and the uncompressed ELF vmlinux extracted from it, which PVH
# loaders boot directly) and a busybox initramfs whose /init prints a
# marker, runs the command from `vmm.cmd=` on the kernel command line and
# powers off. Cached in build/linux-guest/ (or $VMM_LINUX_GUEST_DIR); the
# package versions used are written to VERSIONS there, last.
#
# Tests run it concurrently: one builds while the others wait on a lock,
# then find the cache. It installs nothing: scripts/setup.sh does.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
out="${VMM_LINUX_GUEST_DIR:-$top/build/linux-guest}"
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
if [ -f "$out/vmlinux" ] && [ -f "$out/initramfs.cpio.gz" ] && grep -q '^virtio_modules=' "$out/VERSIONS" 2>/dev/null; then
    echo "linux guest: cached in $out" >&2
    echo "$out"
    exit 0
fi
for tool in cpio xz zstd gzip apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/setup.sh" >&2; exit 1; }
done
echo "linux guest: building in $out" >&2
rm -f "$out/VERSIONS"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
cd "$work"
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kpkg" ] || { echo "cannot resolve linux-image-amd64 to a kernel package" >&2; exit 1; }
apt-get download -qq "$kpkg" busybox-static >/dev/null
dpkg-deb -x "$kpkg"_*.deb kernel
dpkg-deb -x busybox-static_*.deb bb
vmlinuz=$(ls kernel/boot/vmlinuz-*)

# vmlinux: the payload of the bzImage, found by its compression magic.
extract() {
    local magic=$1 cmd=$2
    local off
    for off in $(grep -abo "$magic" "$vmlinuz" | cut -d: -f1); do
        tail -c +$((off + 1)) "$vmlinuz" | $cmd > vmlinux.try 2>/dev/null || true
        if [ -s vmlinux.try ] && head -c 4 vmlinux.try | grep -q ELF; then
            mv vmlinux.try "$out/vmlinux"
            return 0
        fi
    done
    return 1
}
extract "$(printf '\3757zXZ')" "xz -dc" || extract "$(printf '\050\265\057\375')" "zstd -dc" \
    || { echo "no ELF payload found in $vmlinuz" >&2; exit 1; }
cp "$vmlinuz" "$out/bzImage"

mkdir -p root/bin root/proc root/sys root/dev root/lib/virtio
cp bb/bin/busybox root/bin/busybox
# Debian builds virtio as modules: the PCI transport and the drivers for
# vmm's devices, numbered in load order (dependencies first).
n=10
for m in drivers/virtio/virtio drivers/virtio/virtio_ring drivers/virtio/virtio_pci_modern_dev \
         drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci drivers/block/virtio_blk \
         net/core/failover drivers/net/net_failover drivers/net/virtio_net \
         drivers/char/virtio_console drivers/char/hw_random/virtio-rng; do
    cp kernel/lib/modules/*/kernel/"$m".ko "root/lib/virtio/$n-$(basename "$m").ko"
    n=$((n + 1))
done
cat > root/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in /lib/virtio/*.ko; do insmod "$m" || echo "VMM-LINUX-GUEST-INSMOD-FAILED $m"; done
echo "VMM-LINUX-GUEST-READY kernel=$(uname -r)"
cmd=$(sed -n 's/.*vmm\.cmd=\([^ ]*\).*/\1/p' /proc/cmdline | tr , ' ')
if [ -n "$cmd" ]; then
    echo "VMM-LINUX-GUEST-CMD $cmd"
    sh -c "$cmd"
    echo "VMM-LINUX-GUEST-CMD-EXIT $?"
fi
echo "VMM-LINUX-GUEST-POWEROFF"
poweroff -f
INIT
chmod +x root/init
(cd root && find . | cpio -o -H newc --quiet | gzip -9n) > "$out/initramfs.cpio.gz"
{
    echo "kernel_package=$kpkg $(dpkg-deb -f "$kpkg"_*.deb Version)"
    echo "busybox-static $(dpkg-deb -f busybox-static_*.deb Version)"
    echo "vmlinux_sha256=$(sha256sum "$out/vmlinux" | cut -d' ' -f1)"
    echo "virtio_modules=$(ls root/lib/virtio | tr '\n' ' ')"
} > "$out/VERSIONS"
echo "$out"
