#!/usr/bin/env python3
"""Live migration benchmark over loopback TCP: the test guest on vmm and on
QEMU 7.2 (-M microvm -accel kvm, the same guest file), in the same run.

Scenarios (RUNS runs each, medians with min-max):
  idle-1G / idle-4G  the guest filled 256 MiB with a pattern and then writes
                     10 pages/s (the rest of RAM untouched, zero)
  dirty-256M         the guest rewrites 256 MiB as fast as it can (2 vCPUs)

Configurations: vmm as it comes (no migration parameter set: multifd
negotiated, 4 channels), vmm with 2 channels (QEMU's default count) and
with 8, vmm on one stream (multifd off); QEMU's defaults, QEMU with max-bandwidth raised to 100 GiB/s,
and the same plus multifd (4 channels).

What decides the spread on this host, and how it is controlled:
  * The destination's memory. This host is a VM whose kernel reports free
    pages back to its hypervisor (free page reporting, ~2 s after they are
    freed): memory touched for the first time after that costs a fault in
    the outer hypervisor, and placing 256 MiB takes ~500 ms instead of
    ~25 ms (perf: the receivers' time is clear_page_erms under THP faults).
    Whether a run met reported memory depended on how long ago the previous
    run's processes exited: the same configuration took 110 or 650 ms.
    Touching and freeing memory just before a run did not make the next
    process's first touch reliably cheap; waiting does make it reliably
    expensive. MEMORY=cold (the default) waits 4 s before every migration
    (and every loopback copy), so every destination meets reported memory:
    the nested worst case, the same for both VMMs. MEMORY=asis does not
    wait (the old behaviour, to show the spread).
  * Order and drift: the configurations run interleaved (run i of every
    configuration, then run i+1, the order rotated each time), after one
    discarded warm-up run per VMM and scenario.
  * CPU: 2 cores shared by the guest's vCPUs, the sender and the receiver;
    not pinned (pinning the source to one core halves a dirtying guest's
    CPU and changes the scenario), so the dirtying guest's figures keep the
    most noise.

Reported: total time and downtime from query-migrate on the source (vmm's
downtime runs from the source's vCPU pause until the destination reports
its vCPUs running; QEMU's is its own source-side figure), whether it
converged within 30 s, and per scenario vmm's default against QEMU's best
configuration (ratio of medians; whether the ranges overlap). The loopback
limits are plain socket copies of 2 GiB in the same memory state: into a
reused buffer (TCP alone) and into new memory (what any destination pays).
"""
import mmap, os, socket, statistics, subprocess, tempfile, threading, time

from guests import Qmp, cmdline, wait_line

RUNS = int(os.environ.get("RUNS", "5"))
MEMORY = os.environ.get("MEMORY", "cold").split(",")
# Seconds after the last free before free page reporting has handed it
# all back (the kernel reports 2 s after pages were freed).
COLD_WAIT = 4.0


SCENARIOS = {
    "idle-1G": ("1G", "1", "cpus=1 work=mem,counter mem_mb=256 mem_rate=10 tick_ms=100 max_gap_ms=5000"),
    "idle-4G": ("4G", "1", "cpus=1 work=mem,counter mem_mb=256 mem_rate=10 tick_ms=100 max_gap_ms=5000"),
    "dirty-256M": ("1G", "2", "cpus=2 work=mem,counter mem_mb=256 tick_ms=100 max_gap_ms=5000"),
}


def prepare_memory(state):
    """Puts this host's free memory in `state` (see the module's text)."""
    if state == "cold":
        time.sleep(COLD_WAIT)
    elif state != "asis":
        raise SystemExit(f"MEMORY={state}: cold or asis")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def drain(p):
    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()


def one(kind, mode, scenario, d, memory="cold"):
    mem, smp, append = SCENARIOS[scenario]
    ssock, dsock = os.path.join(d, "s.sock"), os.path.join(d, "d.sock")
    for f in (ssock, dsock):
        if os.path.exists(f):
            os.remove(f)
    port = free_port()
    # TLS: QEMU's tls-creds-x509 (or, "psk", tls-creds-psk) on both sides,
    # the destination deferred until its tls-creds is set.
    tls = mode in ("tls", "psk")
    kind_dir = ("tls-creds-psk", "psk") if mode == "psk" else ("tls-creds-x509", "pki")
    creds = lambda end: ["-object", f"{kind_dir[0]},id=tls0,dir={os.path.join(d, kind_dir[1])},endpoint={end}"]
    src_extra = creds("client") if tls else []
    dst_extra = creds("server") + ["-incoming", "defer"] if tls else ["-incoming", f"tcp:127.0.0.1:{port}"]
    src = subprocess.Popen(cmdline(kind, mem, smp, append, ssock, src_extra), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.PIPE)
    dst = subprocess.Popen(cmdline(kind, mem, smp, append, dsock, dst_extra),
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.PIPE)
    try:
        wait_line(src, "mem.filled")
        drain(src)
        qs, qd = Qmp(ssock), Qmp(dsock)
        if mode in ("bw", "multifd") or (tls and kind == "qemu"):
            qs.cmd("migrate-set-parameters", {"max-bandwidth": 100 * 2**30})
        if tls:
            for q in (qs, qd):
                q.cmd("migrate-set-parameters", {"tls-creds": "tls0"})
            qd.cmd("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
        if mode == "multifd":
            for q in (qs, qd):
                q.cmd("migrate-set-capabilities", {"capabilities": [{"capability": "multifd", "state": True}]})
                q.cmd("migrate-set-parameters", {"multifd-channels": 4})
        if mode in ("x2", "x8"):
            qs.cmd("migrate-set-parameters", {"multifd-channels": int(mode[1:])})
        if mode == "single":
            qs.cmd("migrate-set-capabilities", {"capabilities": [{"capability": "multifd", "state": False}]})
        prepare_memory(memory)
        r = qs.cmd("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        if "error" in r:
            raise SystemExit(f"{kind}: {r}")
        deadline = time.monotonic() + 30
        while True:
            m = qs.cmd("query-migrate")["return"]
            if m.get("status") in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                qs.cmd("migrate_cancel")
                return None
            time.sleep(0.01)
        if m["status"] != "completed":
            print(f"<!-- {kind} {mode} {scenario} failed: {m.get('error-desc')} -->", flush=True)
            return "failed"
        return m["total-time"], m.get("downtime", 0), m["ram"]["transferred"]
    finally:
        for p in (src, dst):
            p.kill()
            p.wait()


def loopback_limit(fresh, memory="cold", streams=1):
    """A plain socket copy of 2 GiB over loopback TCP, 1 MiB writes, on
    `streams` connections at once. The receivers read into a reused 1 MiB
    buffer each (the TCP path alone) or, with `fresh`, into new private
    anonymous memory with MADV_HUGEPAGE (1 GiB mappings), as a migration
    destination's RAM is: its pages are touched for the first time. (Not
    Python's default mmap, which is shared memory: no huge pages, and on
    this host its small pages come from a pool the outer hypervisor still
    backs, so it measured a first touch no VMM pays.)"""
    size, chunk = 2 << 30, 1 << 20
    per = size // streams
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(streams)
    got = [0] * streams

    def sink(i):
        c, _ = srv.accept()
        buf = memoryview(bytearray(chunk))
        area, pos = None, 0
        while True:
            if fresh:
                if area is None or pos >= len(area):
                    area = mmap.mmap(-1, min(1 << 30, per), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
                    area.madvise(mmap.MADV_HUGEPAGE)
                    view, pos = memoryview(area), 0
                n = c.recv_into(view[pos:pos + chunk])
                pos += n
            else:
                n = c.recv_into(buf)
            if not n:
                break
            got[i] += n

    def source():
        s = socket.create_connection(srv.getsockname())
        data = memoryview(bytearray(b"\x5a" * chunk))
        for _ in range(per // chunk):
            s.sendall(data)
        s.close()

    prepare_memory(memory)
    sinks = [threading.Thread(target=sink, args=(i,)) for i in range(streams)]
    for t in sinks:
        t.start()
    t0 = time.monotonic()
    sources = [threading.Thread(target=source) for _ in range(streams)]
    for t in sources:
        t.start()
    for t in sources + sinks:
        t.join()
    return sum(got) / (time.monotonic() - t0)


def summary(ok):
    tt = [r[0] for r in ok]
    return statistics.median(tt), min(tt), max(tt)


def main():
    configs = [("vmm", "default"), ("vmm", "x2"), ("vmm", "x8"), ("vmm", "single"),
               ("qemu", "default"), ("qemu", "bw"), ("qemu", "multifd")]
    # ONLY=vmm: vmm's configurations alone (comparing two builds, VMM_BIN).
    only_vmm = os.environ.get("ONLY") == "vmm"
    if only_vmm:
        configs = [c for c in configs if c[0] == "vmm"]
    # CONFIGS=vmm:default,qemu:bw: only those configurations.
    if os.environ.get("CONFIGS"):
        keep = {tuple(c.split(":")) for c in os.environ["CONFIGS"].split(",")}
        configs = [c for c in configs if c in keep]
    # TLS=1: both in TLS too (QEMU with max-bandwidth raised).
    tls = os.environ.get("TLS") == "1"
    if tls:
        configs += [("vmm", "tls")] + ([] if only_vmm else [("qemu", "tls")])
        configs += [("vmm", "psk")] + ([] if only_vmm else [("qemu", "psk")])
    names = {("vmm", "default"): "vmm as it comes (multifd negotiated, 4 channels)",
             ("vmm", "x2"): "vmm, multifd x2", ("vmm", "x8"): "vmm, multifd x8",
             ("vmm", "single"): "vmm, one stream (multifd off)",
             ("qemu", "default"): "QEMU 7.2 defaults",
             ("qemu", "bw"): "QEMU 7.2, max-bandwidth 100 GiB/s", ("qemu", "multifd"): "QEMU 7.2, max-bandwidth + multifd x4",
             ("vmm", "tls"): "vmm, TLS", ("qemu", "tls"): "QEMU 7.2, max-bandwidth + TLS",
             ("vmm", "psk"): "vmm, TLS-PSK", ("qemu", "psk"): "QEMU 7.2, max-bandwidth + TLS-PSK"}
    with tempfile.TemporaryDirectory() as d:
        if tls:
            subprocess.run([os.path.join(os.path.dirname(__file__), "../tls-certs.sh"), os.path.join(d, "pki")], check=True)
            os.makedirs(os.path.join(d, "psk"))
            with open(os.path.join(d, "psk", "keys.psk"), "w") as f:
                f.write("qemu:" + os.urandom(32).hex() + "\n")
        # SCENARIOS=idle-1G,idle-4G: only those.
        only = os.environ.get("SCENARIOS")
        for memory in MEMORY:
            print(f"\n## memory {memory}\n")
            for fresh, streams in ((False, 1), (True, 1), (True, 4)):
                rates = sorted(loopback_limit(fresh, memory, streams) for _ in range(3))
                into = "into new memory (first touch, as a destination)" if fresh else "into a reused buffer"
                on = "one stream" if streams == 1 else f"{streams} streams (as vmm's default channels)"
                print(f"loopback TCP, {on}, plain socket copy of 2 GiB {into}: "
                      f"{rates[1] / 1e9:.2f} GB/s (median of 3, {rates[0] / 1e9:.2f}-{rates[2] / 1e9:.2f})", flush=True)
            for scenario in SCENARIOS:
                if only and scenario not in only.split(","):
                    continue
                print(f"\n### {scenario}, memory {memory}\n")
                print("| VMM | total ms (median [min-max]) | downtime ms (median [min-max]) | MB sent | GB/s (sent / total, median) | converged |")
                print("|---|---|---|---|---|---|")
                for kind in sorted({k for k, _ in configs}):
                    one(kind, "default", scenario, d, memory)
                res = {c: [] for c in configs}
                for i in range(RUNS):
                    k = i % len(configs)
                    for kind, mode in configs[k:] + configs[:k]:
                        res[(kind, mode)].append(one(kind, mode, scenario, d, memory))
                med = {}
                for c in configs:
                    ok = [r for r in res[c] if r and r != "failed"]
                    failed = sum(1 for r in res[c] if r == "failed")
                    if not ok:
                        why = f"{failed} failed" if failed else "cancelled after 30 s"
                        print(f"| {names[c]} | - | - | - | - | no ({why}, {RUNS}/{RUNS}) |", flush=True)
                        continue
                    med[c] = summary(ok)
                    dt = [r[1] for r in ok]
                    m, lo, hi = med[c]
                    print(f"| {names[c]} | {m:.0f} [{lo}-{hi}] "
                          f"| {statistics.median(dt):.0f} [{min(dt)}-{max(dt)}] | {statistics.median(r[2] for r in ok) / 1e6:.0f} "
                          f"| {statistics.median(r[2] / r[0] / 1e6 for r in ok):.2f} "
                          f"| {len(ok)}/{RUNS}{f' ({failed} failed)' if failed else ''} |", flush=True)
                qemu = [c for c in med if c[0] == "qemu"]
                if ("vmm", "default") in med and qemu:
                    best = min(qemu, key=lambda c: med[c][0])
                    v, q = med[("vmm", "default")], med[best]
                    apart = "do not overlap" if v[2] < q[1] else "overlap"
                    print(f"\nvmm as it comes against QEMU's best ({names[best]}): {v[0] / q[0]:.2f}x the time "
                          f"(ranges {apart}: vmm {v[1]}-{v[2]}, QEMU {q[1]}-{q[2]})", flush=True)


if __name__ == "__main__":
    main()
