#!/usr/bin/env python3
"""Save/restore benchmark: a 1 GiB guest (the test guest with 256 MiB of
pattern written, the rest zero) saved to a file and restored, vmm beside
QEMU 7.2 (-M microvm, -accel kvm; QEMU 7.2 has no file: URI, so
exec:cat > FILE and -incoming exec:cat FILE) in the same run.

save: from the `migrate` command to `query-migrate` = completed, and the
guest RAM throughput that gives (1 GiB / time). restore-to-running: from
process start with -incoming to the guest's next counter line.
"""
import os, statistics, subprocess, sys, tempfile, time

from guests import Qmp, cmdline, wait_line

APPEND = "cpus=1 work=mem,counter mem_mb=256 mem_rate=1 tick_ms=50"
RAM = 1 << 30


def one(kind, d):
    sock, snap = os.path.join(d, "q.sock"), os.path.join(d, "snap.bin")
    for f in (sock, snap):
        if os.path.exists(f):
            os.remove(f)
    p = subprocess.Popen(cmdline(kind, "1G", "1", APPEND, sock, []), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.PIPE)
    wait_line(p, "mem.filled")
    wait_line(p, "tick")
    q = Qmp(sock)
    uri = f"file:{snap}" if kind == "vmm" else f"exec:cat > {snap}"
    if kind != "vmm":
        # QEMU caps migration at 128 MiB/s by default: lift it, to compare speeds.
        q.cmd("migrate-set-parameters", {"max-bandwidth": 100 * 2**30})
    t0 = time.monotonic()
    q.cmd("migrate", {"uri": uri})
    while q.cmd("query-migrate")["return"].get("status") not in ("completed", "failed"):
        time.sleep(0.005)
    save = time.monotonic() - t0
    p.kill()
    p.wait()
    size = os.path.getsize(snap)
    os.remove(sock)
    incoming = f"file:{snap}" if kind == "vmm" else f"exec:cat {snap}"
    t0 = time.monotonic()
    r = subprocess.Popen(cmdline(kind, "1G", "1", APPEND, sock, ["-incoming", incoming]), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.PIPE)
    wait_line(r, "tick")
    restore = time.monotonic() - t0
    r.kill()
    r.wait()
    return save, size, restore


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        for kind in ("vmm", "QEMU 7.2 -M microvm"):
            res = [one("vmm" if kind == "vmm" else "qemu", d) for _ in range(runs)]
            rows[kind] = res
    print("| VMM | save 1 GiB guest, ms (median [min-max]) | guest RAM throughput, GB/s | stream size, MiB | restore to running, ms (median [min-max]) |")
    print("|---|---|---|---|---|")
    for kind, res in rows.items():
        s = [r[0] * 1000 for r in res]
        rr = [r[2] * 1000 for r in res]
        print(f"| {kind} | {statistics.median(s):.0f} [{min(s):.0f}-{max(s):.0f}] | {RAM / statistics.median(s) / 1e6:.2f} "
              f"| {res[0][1] / 2**20:.0f} | {statistics.median(rr):.0f} [{min(rr):.0f}-{max(rr):.0f}] |")


if __name__ == "__main__":
    main()
