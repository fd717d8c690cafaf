#!/usr/bin/env python3
"""Boot benchmark: vmm vs QEMU (-M microvm, -M q35, -accel kvm) on the same
test guest, in the same run.

For each VMM, RUNS runs of: time from process start to the guest's first
console line (its banner), and to process exit (the guest runs its platform
checks and leaves through the debug-exit port). Then, with the guest kept
alive for a moment, the VMM's own memory: peak over samples of (RSS of the
process minus RSS of the guest-RAM mappings), read from /proc/PID/smaps.
Prints a Markdown table; --json writes the raw numbers.
"""
import argparse, json, os, statistics, subprocess, sys, time

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUEST = os.path.join(TOP, "target/guest/test-guest")
VMM = os.environ.get("VMM_BIN", os.path.join(TOP, "target/release/vmm"))
MEM = "256M"
MEM_BYTES = 256 << 20
EXIT = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]


def qemu(machine):
    return ["qemu-system-x86_64", "-M", machine, "-accel", "kvm", "-cpu", "host,-arch-capabilities",
            "-m", MEM, "-smp", "1", "-nodefaults", "-display", "none", "-serial", "stdio",
            "-monitor", "none"] + EXIT + ["-kernel", GUEST, "-append"]


VMMS = {
    "vmm (q35-style)": [VMM, "-m", MEM, "-smp", "1"] + EXIT + ["-kernel", GUEST, "-append"],
    "QEMU 7.2 -M microvm": qemu("microvm"),
    "QEMU 7.2 -M q35": qemu("q35"),
}


def timed_run(cmd, append):
    t0 = time.monotonic()
    p = subprocess.Popen(cmd + [append], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    first = None
    for line in p.stdout:
        if first is None and line.startswith(b"guest=vmm-test-guest"):
            first = time.monotonic() - t0
    p.wait()
    total = time.monotonic() - t0
    if p.returncode != 1 or first is None:
        raise SystemExit(f"run failed (status {p.returncode}): {cmd}")
    return first, total


def own_memory(cmd):
    """Peak (RSS - guest RAM RSS) in KiB while the guest runs ~1.5 s."""
    p = subprocess.Popen(cmd + ["cpus=1 work=counter tick_ms=500 duration_ms=1500"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    peak_own, peak_guest = 0, 0
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/smaps") as f:
                total = guest = 0
                size = rss = 0
                for line in f:
                    if line.startswith("Size:"):
                        size = int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss = int(line.split()[1])
                        total += rss
                        # Guest RAM: the mappings at least half of -m in size.
                        if size * 1024 >= MEM_BYTES // 2:
                            guest += rss
            if total - guest > peak_own:
                peak_own, peak_guest = total - guest, guest
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        time.sleep(0.02)
    return peak_own, peak_guest


def stats(xs):
    xs = [x * 1000 for x in xs]
    return statistics.median(xs), min(xs), max(xs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json")
    a = ap.parse_args()
    results = {}
    for name, cmd in VMMS.items():
        firsts, totals = [], []
        for _ in range(a.runs):
            f, t = timed_run(cmd, "cpus=1 mem=256M")
            firsts.append(f)
            totals.append(t)
        mems = [own_memory(cmd) for _ in range(3)]
        results[name] = {"first_line_s": firsts, "exit_s": totals,
                         "own_rss_kib": [m[0] for m in mems], "guest_rss_kib": [m[1] for m in mems]}
    print(f"| VMM | first guest line, ms (median [min-max]) | exit, ms (median [min-max]) | own RSS MiB (max of 3) | guest RAM touched MiB |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        f, t = stats(r["first_line_s"]), stats(r["exit_s"])
        print(f"| {name} | {f[0]:.1f} [{f[1]:.1f}-{f[2]:.1f}] | {t[0]:.1f} [{t[1]:.1f}-{t[2]:.1f}] "
              f"| {max(r['own_rss_kib'])/1024:.1f} | {max(r['guest_rss_kib'])/1024:.1f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
