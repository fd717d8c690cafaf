#!/usr/bin/env python3
"""virtio-blk benchmark: the test guest's own driver (blk_bench=1) measures
sequential write and read throughput (1 MiB requests over 64 MiB) and
4 KiB random-read IOPS (8 requests in flight, 2 s), with MSI-X, on the same
host file, in vmm and in QEMU 7.2 (-M q35 -accel kvm, virtio-blk-pci with
the same raw image) in the same run, alternating, RUNS times each.

Both VMMs use the host page cache (QEMU's default cache=writeback), so the
numbers are the virtio path's cost, not the disk's.
"""
import os, re, statistics, subprocess, sys, tempfile

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUEST = os.path.join(TOP, "target/guest/test-guest")
VMM = os.path.join(TOP, "target/release/vmm")
RUNS = int(os.environ.get("RUNS", "5"))
APPEND = "cpus=1 mem=256M msix=1 blk_bench=1 bench_mb=64 bench_ms=2000 bench_qd=8 seed=3"


def cmd(kind, img):
    drive = ["-drive", f"file={img},if=none,id=d0,format=raw"]
    if kind == "vmm":
        return [VMM, "-m", "256M", "-smp", "1", "-kernel", GUEST, "-append", APPEND,
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "-device", "virtio-blk-pci,drive=d0"] + drive
    return ["qemu-system-x86_64", "-M", "q35", "-accel", "kvm", "-cpu", "host,-arch-capabilities",
            "-m", "256M", "-smp", "1", "-nodefaults", "-display", "none", "-serial", "stdio",
            "-monitor", "none", "-kernel", GUEST, "-append", APPEND,
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-device", "virtio-blk-pci,drive=d0"] + drive


def run(kind, img):
    out = subprocess.run(cmd(kind, img), capture_output=True, timeout=300).stdout.decode(errors="replace")
    m = re.search(r"blk\.bench .*seq_write_mbs=(\d+) seq_read_mbs=(\d+) .*rand_read_iops=(\d+) .*errors=(\d+)", out)
    if not m or m.group(4) != "0":
        sys.exit(f"{kind}: no clean benchmark line:\n{out[-2000:]}")
    return tuple(int(x) for x in m.groups()[:3])


def main():
    with tempfile.TemporaryDirectory() as d:
        img = os.path.join(d, "bench.raw")
        with open(img, "wb") as f:
            f.truncate(128 << 20)
        res = {"vmm": [], "qemu": []}
        for i in range(RUNS):
            for kind in ("vmm", "qemu"):
                r = run(kind, img)
                res[kind].append(r)
                print(f"run {i} {kind}: seq_write={r[0]} MB/s seq_read={r[1]} MB/s rand_read={r[2]} IOPS", flush=True)
        print()
        print(f"median of {RUNS} runs        seq write MB/s   seq read MB/s   4K rand read IOPS (qd 8)")
        for kind in ("vmm", "qemu"):
            med = [statistics.median(r[k] for r in res[kind]) for k in range(3)]
            print(f"{kind:24} {med[0]:>14.0f} {med[1]:>15.0f} {med[2]:>19.0f}")


if __name__ == "__main__":
    main()
