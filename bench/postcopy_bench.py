"""Postcopy beside Debian's QEMU 7.2: page-request latency and the time to finish.

    python3 bench/postcopy_bench.py [--mem-mib 1024] [--dirty-mib 256] [--reads 300] [--qemu PATH]

Each implementation migrates to itself over a unix socket: a ``-M none -m 1G -nodefaults -S``
source holding 256 MiB of random data (both load the same stream saved by us, as
``migration_bench.py`` does: Debian's QEMU cannot be written through qtest) into an identical
``-incoming defer`` destination, postcopy-ram on both (and postcopy-preempt in the ``preempt``
rows). Precopy is held to 1 MB/s and switched to postcopy at once; the background stream then
trickles at 8 MiB/s, so a page the destination reads is one it must ask for.

Latency: the client reads ``--reads`` random pages of the random region on the destination, one
at a time, with HMP ``xp`` over QMP, timing each round trip; the same pages read again (present
now) give the monitor's own round trip, shown beside it. Then the background limit is lifted and
the time until the source's ``completed`` is the finish time. Prints median and p99 per row and
the ratios QEMU / ours (higher is better).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from migration_bench import make_stream  # noqa: E402

from qtest.machine import QTestMachine  # noqa: E402


def _status(m: QTestMachine) -> str:
    return str(m.qmp.cmd("query-migrate").get("status"))


def _wait(m: QTestMachine, status: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while (s := _status(m)) != status:
        if s in ("failed", "cancelled") or time.monotonic() > deadline:
            raise RuntimeError(f"{m}: {s} waiting for {status}: {m.stderr_text()[-2000:]}")
        time.sleep(0.005)


def _read_ms(m: QTestMachine, addr: int) -> float:
    t0 = time.perf_counter()
    m.qmp.cmd("human-monitor-command", **{"command-line": f"xp /1xg {addr:#x}"})
    return (time.perf_counter() - t0) * 1000


def run(binary: str, stream: str, tmp: str, args: argparse.Namespace, preempt: bool) -> dict[str, float]:
    """One postcopy migration; the latencies (ms) and the finish time (s)."""
    common = ["-M", "none", "-m", f"{args.mem_mib}M", "-nodefaults", "-S"]
    accel = binary == args.ours
    sock = os.path.join(tmp, f"pc-{time.monotonic_ns()}.sock")
    with QTestMachine(binary, [*common, "-incoming", f"exec:cat {stream}"], accel_qtest=accel) as src, \
            QTestMachine(binary, [*common, "-incoming", "defer"], accel_qtest=accel) as dst:
        _wait(src, "completed")  # the source's RAM, loaded from the stream
        caps = [{"capability": "postcopy-ram", "state": True}, {"capability": "postcopy-preempt", "state": preempt}]
        for m in (src, dst):
            m.qmp.cmd("migrate-set-capabilities", capabilities=caps)
        src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1_000_000, "max-postcopy-bandwidth": 8 << 20})
        dst.qmp.cmd("migrate-incoming", uri=f"unix:{sock}")
        src.qmp.cmd("migrate", uri=f"unix:{sock}")
        _wait(src, "active")
        src.qmp.cmd("migrate-start-postcopy")
        _wait(src, "postcopy-active")
        _wait(dst, "postcopy-active")
        pages = random.Random(1).sample(range((1 << 20) >> 12, ((1 << 20) + (args.dirty_mib << 20)) >> 12), args.reads)
        missing = [_read_ms(dst, p << 12) for p in pages]
        present = [_read_ms(dst, p << 12) for p in pages]
        requests = src.qmp.cmd("query-migrate")["ram"]["postcopy-requests"]
        t0 = time.monotonic()
        src.qmp.cmd("migrate-set-parameters", **{"max-postcopy-bandwidth": 0})
        _wait(src, "completed")
        finish = time.monotonic() - t0
        _wait(dst, "completed")
    missing.sort()
    return {"median": statistics.median(missing), "p99": missing[int(len(missing) * 0.99) - 1],
            "present": statistics.median(present), "requests": requests, "finish": finish}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mem-mib", type=int, default=1024)
    ap.add_argument("--dirty-mib", type=int, default=256)
    ap.add_argument("--reads", type=int, default=300)
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"))
    ap.add_argument("--ours", default=shutil.which("emu-system-x86_64"))
    args = ap.parse_args()
    if not args.qemu or not args.ours:
        sys.exit("need qemu-system-x86_64 (Debian's qemu-system-x86) and emu-system-x86_64 (pip install -e .)")
    with tempfile.TemporaryDirectory() as tmp:
        stream = os.path.join(tmp, "stream")
        make_stream(args.ours, stream, args.mem_mib, args.dirty_mib)
        print(f"postcopy, -M none -m {args.mem_mib}M, {args.dirty_mib} MiB random, {args.reads} page reads "
              "(HMP xp), ms; finish in s")
        print(f"{'mode':8} {'impl':5} {'median':>8} {'p99':>8} {'present':>8} {'requests':>9} {'finish':>7}")
        for preempt in (False, True):
            mode = "preempt" if preempt else "plain"
            rows = {name: run(binary, stream, tmp, args, preempt)
                    for name, binary in (("qemu", args.qemu), ("ours", args.ours))}
            for name, r in rows.items():
                print(f"{mode:8} {name:5} {r['median']:8.2f} {r['p99']:8.2f} {r['present']:8.2f} "
                      f"{int(r['requests']):9d} {r['finish']:7.2f}")
            q, o = rows["qemu"], rows["ours"]
            print(f"{mode:8} ratio {q['median'] / o['median']:8.2f} {q['p99'] / o['p99']:8.2f} "
                  f"{'':8} {'':9} {q['finish'] / o['finish']:7.2f}")


if __name__ == "__main__":
    main()
