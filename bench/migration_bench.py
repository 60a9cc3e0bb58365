"""Migration speed beside Debian's QEMU 7.2: the issue's two cases and multifd, unlimited bandwidth.

    python3 bench/migration_bench.py [--mem-mib 1024] [--random-mib 256] [--reps 3] [--multifd 2]

Each implementation migrates to itself over a unix socket: ``-M none -m 1G -nodefaults -S``
source into an identical ``-incoming defer`` destination, ``max-bandwidth`` 1 TiB/s (unlimited),
events on. Timed from sending ``migrate`` to the source's ``MIGRATION completed`` event (no
polling). Cases: (1) an idle guest (all RAM zero: ZERO records), (2) the same with 256 MiB of
random data, (3) that again over multifd (2 channels; zero pages stay on the main stream in 7.2).
Debian's QEMU has no qtest accelerator and cannot be written through qtest, so both sources get
their RAM the same way: by loading one stream saved by us (``-incoming exec:cat``). After one
uncounted warm-up run each, the two implementations alternate run by run. Prints a table with
the ratio QEMU time / our time (higher is better; goal >= 1).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from qtest.machine import QTestMachine  # noqa: E402

UNLIMITED = 1 << 40


def make_stream(ours: str, path: str, mem_mib: int, random_mib: int) -> None:
    """Our -M none guest with ``random_mib`` of random data at 1 MiB, saved to ``path``."""
    with QTestMachine(ours, ["-M", "none", "-m", f"{mem_mib}M", "-nodefaults", "-S"]) as m:
        chunk = 16 << 20
        for off in range(0, random_mib << 20, chunk):
            m.qtest.bufwrite((1 << 20) + off, os.urandom(min(chunk, (random_mib << 20) - off)))
        m.qmp.cmd("migrate", uri=f"exec:cat > {path}")
        while m.qmp.cmd("query-migrate").get("status") != "completed":
            time.sleep(0.01)  # a one-off preparation step; not timed


def migrate_once(binary: str, stream: str, mem_mib: int, tmp: str, multifd: int = 0) -> tuple[float, dict]:
    """One timed migration; ``multifd``: that many channels (0: the main stream only)."""
    base = ["-M", "none", "-m", f"{mem_mib}M", "-nodefaults", "-S"]
    sock = os.path.join(tmp, "m.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    with QTestMachine(binary, [*base, "-incoming", f"exec:cat {stream}"], accel_qtest=False) as src, \
            QTestMachine(binary, [*base, "-incoming", "defer"], accel_qtest=False) as dst:
        while src.qmp.cmd("query-migrate").get("status") != "completed":
            time.sleep(0.01)  # loading the prepared RAM; not timed
        src.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])
        src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": UNLIMITED})
        if multifd:
            for m in (src, dst):
                m.qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
                m.qmp.cmd("migrate-set-parameters", **{"multifd-channels": multifd})
        dst.qmp.cmd("migrate-incoming", uri=f"unix:{sock}")
        t0 = time.perf_counter()
        src.qmp.cmd("migrate", uri=f"unix:{sock}")
        while True:
            status = src.qmp.wait_event("MIGRATION", timeout=300)["data"]["status"]
            if status in ("completed", "failed", "cancelled"):
                break
        elapsed = time.perf_counter() - t0
        if status != "completed":
            raise RuntimeError(f"{binary}: migration {status}")
        info = src.qmp.cmd("query-migrate")
        return elapsed, info.get("ram", {})


def _ms(t: float | None) -> str:
    return f"{t * 1000:.0f} ms" if t else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ours", default=shutil.which("emu-system-x86_64"))
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"))
    ap.add_argument("--mem-mib", type=int, default=1024)
    ap.add_argument("--random-mib", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--multifd", type=int, default=2, help="channels for the multifd row (0: no such row)")
    args = ap.parse_args()
    if not args.ours:
        sys.exit("emu-system-x86_64 not found")
    tmp = tempfile.mkdtemp(prefix="migbench")
    try:
        rows = []
        cases = [("idle", 0, 0), (f"{args.random_mib} MiB random", args.random_mib, 0)]
        if args.multifd:
            cases.append((f"{args.random_mib} MiB random, multifd {args.multifd}", args.random_mib, args.multifd))
        for label, random_mib, multifd in cases:
            stream = os.path.join(tmp, f"stream-{random_mib}")
            if not os.path.exists(stream):
                make_stream(args.ours, stream, args.mem_mib, random_mib)
            impls = [(name, binary) for name, binary in (("ours", args.ours), ("qemu", args.qemu)) if binary]
            for _name, binary in impls:  # warm-up, not counted: the first run after a change of case is slow
                migrate_once(binary, stream, args.mem_mib, tmp, multifd)
            runs: dict[str, list[tuple[float, dict]]] = {name: [] for name, _ in impls}
            for _ in range(args.reps):  # alternating, so drift in the host's state hits both alike
                for name, binary in impls:
                    runs[name].append(migrate_once(binary, stream, args.mem_mib, tmp, multifd))
            times = {}
            for name, _ in impls:
                times[name] = statistics.median(t for t, _ in runs[name])
                ram = runs[name][-1][1]
                print(f"{label:>18} {name}: {[round(t * 1000) for t, _ in runs[name]]} ms; "
                      f"normal={ram.get('normal')} duplicate={ram.get('duplicate')} "
                      f"transferred={ram.get('transferred')}", file=sys.stderr)
            rows.append((label, times))
        print(f"\n| {args.mem_mib} MiB guest, -M none | ours | QEMU 7.2 | QEMU/ours (higher: we are faster) |")
        print("|---|---:|---:|---:|")
        for label, times in rows:
            ours, qemu = times.get("ours"), times.get("qemu")
            ratio = f"{qemu / ours:.2f}x" if ours and qemu else "-"
            print(f"| {label} | {_ms(ours)} | {_ms(qemu)} | {ratio} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
