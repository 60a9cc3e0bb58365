"""A-B guest speed: our vCPUs beside Debian's QEMU, booting the same boot sector, under TCG
(our Unicorn vCPU) and, where /dev/kvm works, under KVM (our KVM vCPU against QEMU's ``-accel kvm``).

    python3 bench/ab_bench.py [--seconds 10] [--qemu PATH] [--no-kvm]

Prints passes of the A-B loop per second and pages dirtied per second (25,344 pages per pass)
for QEMU, for us, and for us without dirty tracking (in-process, to show what the C write hook
costs), with the ratios to QEMU on the same accelerator. The KVM rows print a B after every pass
(a KVM that is nested or software-assisted runs this page-per-store loop far slower). Rates
come from the time between the first and the last 'B' on the serial port; QEMU boots the sector
through SeaBIOS, we load it directly, so start-up is excluded.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from qtest.migration import AB_BOOTSECT, AB_PASSES_OFFSET, ab_bootsect  # noqa: E402

PAGES_PER_PASS = ((100 << 20) - (1 << 20)) // 4096
PASSES_PER_B = int.from_bytes(AB_BOOTSECT.read_bytes()[AB_PASSES_OFFSET:AB_PASSES_OFFSET + 4], "little")


def rate_from_serial(path: str, seconds: float, proc: subprocess.Popen) -> float:
    """B per second between the first B and the last B seen within ``seconds`` after it."""
    first = None
    count = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        data = open(path, "rb").read() if os.path.exists(path) else b""
        n = data.count(b"B")
        now = time.monotonic()
        if n and first is None:
            first, base = now, n
        if first is not None:
            if n > count:
                count, last = n, now
            if now - first >= seconds:
                break
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {proc.returncode}")
        time.sleep(0.005)
    if first is None or count - base < 1:
        raise RuntimeError("not enough B's on the serial port")
    return (count - base) / (last - first)


def run_binary(binary: str, image: str, tmp: str, seconds: float, extra: list[str]) -> float:
    serial = os.path.join(tmp, f"serial-{os.path.basename(binary)}")
    argv = [binary, "-M", "pc", "-m", "150M", "-nodefaults", "-display", "none", "-serial", f"file:{serial}",
            "-drive", f"file={image},format=raw", *extra]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return rate_from_serial(serial, seconds, proc)
    finally:
        proc.terminate()
        proc.wait()


def run_in_process(seconds: float, dirty_tracking: bool) -> float:
    from emu.cpu import VCPU
    from emu.machine import find_machine
    from emu.vm import VM

    machine = find_machine("pc")(150 << 20, manual_clock=False)
    machine.boot_image = AB_BOOTSECT.read_bytes()
    times: list[float] = []
    got = threading.Event()

    def out(data: bytes) -> None:
        if b"B" in data:
            times.append(time.monotonic())
            got.set()

    machine.add_serial(0, out)
    machine.boot()
    vm = VM(machine, start_paused=False, qtest_accel=False)
    vcpu = VCPU(vm, dirty_tracking=dirty_tracking)
    vm.attach_vcpu(vcpu)
    try:
        deadline = time.monotonic() + 120
        while not times and time.monotonic() < deadline:
            got.wait(1)
        end = times[0] + seconds
        while time.monotonic() < end:
            time.sleep(0.05)
        n = len(times)
        return (n - 1) / (times[n - 1] - times[0]) if n > 1 else 0.0
    finally:
        vcpu.quit()


def kvm_rows(qemu: str | None, ours: str, tmp: str, seconds: float) -> list[tuple[str, float, int]]:
    """QEMU and us under -accel kvm, one pass per B (empty where /dev/kvm is not usable)."""
    from emu.kvm_core import kvm_available

    why = kvm_available()
    if why is not None:
        print(f"(no KVM rows: {why})", file=sys.stderr)
        return []
    image = ab_bootsect(os.path.join(tmp, "bootsect-1"), passes_per_b=1)
    rows = []
    if qemu:
        rows.append(("QEMU 7.2 KVM", run_binary(qemu, image, tmp, seconds, ["-accel", "kvm"]), 1))
    rows.append(("ours, KVM", run_binary(ours, image, tmp, seconds, ["-accel", "kvm"]), 1))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--ours", default=shutil.which("emu-system-x86_64"))
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"))
    ap.add_argument("--no-kvm", action="store_true", help="TCG rows only")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ab", dir="/tmp") as tmp:
        image = ab_bootsect(os.path.join(tmp, "bootsect"))
        rows: list[tuple[str, float, int]] = []
        if a.qemu:
            rows.append(("QEMU 7.2 TCG", run_binary(a.qemu, image, tmp, a.seconds, ["-accel", "tcg"]), PASSES_PER_B))
        rows.append(("ours", run_binary(a.ours, image, tmp, a.seconds, ["-accel", "tcg"]), PASSES_PER_B))
        rows.append(("ours, no dirty tracking (in-process)", run_in_process(a.seconds, False), PASSES_PER_B))
        rows.append(("ours, dirty tracking (in-process)", run_in_process(a.seconds, True), PASSES_PER_B))
        if not a.no_kvm:
            rows += kvm_rows(a.qemu, a.ours, tmp, a.seconds)
    base = {"TCG": rows[0][1] if a.qemu else None, "KVM": next((r[1] for r in rows if r[0] == "QEMU 7.2 KVM"), None)}
    print("| run | B/s | passes/s | pages dirtied/s | ratio to QEMU (same accelerator) |")
    print("|---|--:|--:|--:|--:|")
    for name, bps, per_b in rows:
        passes = bps * per_b
        qemu = base["KVM" if "KVM" in name else "TCG"]
        ratio = f"{bps / qemu:.2f}x" if qemu else "-"
        print(f"| {name} | {bps:.2f} | {passes:.0f} | {passes * PAGES_PER_PASS:,.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
