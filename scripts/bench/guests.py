"""What the benchmarks share: the test guest's command line on vmm and on
QEMU 7.2 (-M microvm -accel kvm, the same guest file), a minimal QMP
client, and waiting for a guest line."""
import json, os, socket, time

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUEST = os.path.join(TOP, "target/guest/test-guest")
# VMM_BIN: another build to compare (a release built from an older commit).
VMM = os.environ.get("VMM_BIN", os.path.join(TOP, "target/release/vmm"))


def cmdline(kind, mem, smp, append, sock, extra):
    if kind == "vmm":
        return [VMM, "-m", mem, "-smp", smp, "-kernel", GUEST, "-append", append,
                "-qmp", f"unix:{sock},server=on,wait=off"] + extra
    return ["qemu-system-x86_64", "-M", "microvm", "-accel", "kvm", "-cpu", "host,-arch-capabilities",
            "-m", mem, "-smp", smp, "-nodefaults", "-display", "none", "-serial", "stdio", "-monitor", "none",
            "-kernel", GUEST, "-append", append, "-qmp", f"unix:{sock},server=on,wait=off"] + extra


class Qmp:
    def __init__(self, path):
        for _ in range(1000):
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                time.sleep(0.01)
        self.f = self.s.makefile("rwb")
        self.f.readline()
        self.cmd("qmp_capabilities")

    def cmd(self, c, a=None):
        """The command's answer (events in between are dropped)."""
        m = {"execute": c}
        if a is not None:
            m["arguments"] = a
        self.f.write(json.dumps(m).encode() + b"\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "event" not in r:
                return r


def wait_line(p, prefix, timeout=120):
    """The first line of `p`'s output starting with `prefix`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = p.stdout.readline().decode(errors="replace")
        if not line:
            raise SystemExit(f"guest output ended before {prefix!r}")
        if line.startswith(prefix):
            return line
    raise SystemExit(f"{prefix!r} not seen")
