#!/usr/bin/env python3
"""Side-by-side qtest benchmark: our emu-system-x86_64 against real QEMU.

Workloads (spec/qtest-protocol.md §14):

  (a) round trips   ``readb 0x1000``, one outstanding command             (cmds/s, higher is better)
  (b) pipelined     ``readb 0x1000`` sent by a sender thread while the
                    main thread reads the replies                          (cmds/s, higher is better)
  (c) b64read       one ``b64read`` of 16 MiB                              (MiB/s, higher is better)
  (d) b64write      one ``b64write`` of 16 MiB                             (MiB/s, higher is better)
  (e) start-up      spawn -> accept the emulator's connection on a listening
                    unix socket (``-qtest unix:PATH``) -> ``endianness`` ->
                    ``OK little``; median of 7, for ``-M pc -S`` and ``-M none``
                                                                           (ms, lower is better)

Every emulator is started as ``BIN -M pc -m 128M -nodefaults -S -display none -qtest
unix:PATH -qtest-log none`` (the start-up row for ``-M none`` uses ``-M none`` instead);
the benchmark listens and the emulator connects, as libqtest does. Rates are medians over
repetitions. The ratio column is always ours/QEMU of the printed metric, next to its target.

Usage:  python3 bench/qtest_bench.py [--quick] [--ours PATH] [--qemu PATH] [--json [FILE]]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PC = ["-M", "pc", "-m", "128M", "-nodefaults", "-S", "-display", "none"]
NONE = ["-M", "none", "-nodefaults", "-S", "-display", "none"]
MiB = 1 << 20


# ----------------------------------------------------------------------------------------
# Process + connection
# ----------------------------------------------------------------------------------------

class Emulator:
    """Spawn BIN with ``-qtest unix:PATH`` and accept its connection (libqtest style)."""

    def __init__(self, binary: str, machine: list[str], timeout: float = 60.0):
        self.dir = tempfile.mkdtemp(dir="/tmp", prefix="qb")
        path = os.path.join(self.dir, "q.sock")
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(path)
        lst.listen(1)
        self.t_spawn = time.perf_counter()
        self.proc = subprocess.Popen(
            [binary, *machine, "-qtest", "unix:" + path, "-qtest-log", "none"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout
            lst.settimeout(0.25)
            while True:
                try:
                    self.sock = lst.accept()[0]
                    break
                except TimeoutError:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"{binary} exited with {self.proc.returncode}") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{binary} did not connect within {timeout}s") from None
        except BaseException:
            self.close()
            raise
        finally:
            lst.close()
        self.sock.settimeout(None)
        self.buf = bytearray()

    def cmd(self, line: bytes) -> bytes:
        """Send one line, return its reply line (IRQ lines are skipped)."""
        self.sock.sendall(line + b"\n")
        return self.readline()

    def readline(self) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 1]
                if line.startswith(b"IRQ "):
                    continue
                return line
            self._fill()

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 22)
        if not chunk:
            raise RuntimeError("emulator closed the connection")
        self.buf += chunk

    def read_sized_line(self, n: int) -> bytearray:
        """A reply line of exactly N bytes including its ``\\n``, via recv_into (fast client).

        A slow client would cap the measurable rate: joining 4 MiB recv() chunks of a 22 MiB
        line costs ~25 ms here, recv_into a preallocated buffer ~5 ms."""
        assert not self.buf
        out = bytearray(n)
        mv = memoryview(out)
        got = 0
        while got < n:
            k = self.sock.recv_into(mv[got:], n - got)
            if not k:
                raise RuntimeError("emulator closed the connection")
            got += k
        assert out[-1:] == b"\n", bytes(out[:80])
        return out

    def close(self) -> None:
        try:
            self.sock.close()
        except (AttributeError, OSError):
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------------------
# Workloads
# ----------------------------------------------------------------------------------------

def bench_roundtrip(emu: Emulator, n: int) -> float:
    line = b"readb 0x1000\n"
    sock = emu.sock
    t0 = time.perf_counter()
    want = emu.expect_readb + b"\n"
    for _ in range(n):
        sock.sendall(line)
        # Replies are tiny; a reply is complete when it ends in "\n".
        data = sock.recv(4096)
        while not data.endswith(b"\n"):
            more = sock.recv(4096)
            if not more:
                raise RuntimeError("EOF")
            data += more
    dt = time.perf_counter() - t0
    assert data == want, data
    return n / dt


def bench_pipelined(emu: Emulator, n: int) -> float:
    batch = 1000
    sock = emu.sock
    err = []

    def sender():
        try:
            left = n
            chunk = b"readb 0x1000\n" * batch
            while left:
                k = min(batch, left)
                sock.sendall(chunk if k == batch else b"readb 0x1000\n" * k)
                left -= k
        except BaseException as e:  # reported by the main thread
            err.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t0 = time.perf_counter()
    t.start()
    got = nbytes = 0
    first = b""
    while got < n:
        data = sock.recv(1 << 20)
        if not data:
            raise RuntimeError("EOF after %d replies" % got)
        got += data.count(b"\n")
        nbytes += len(data)
        if len(first) < 64:
            first += data[:64]
    dt = time.perf_counter() - t0
    t.join()
    if err:
        raise err[0]
    # Cheap validation: every reply is the same fixed-size line.
    want = emu.expect_readb + b"\n"
    assert got == n and nbytes == n * len(want) and first.startswith(want * 2), (got, nbytes, first)
    return n / dt


def bench_b64read(emu: Emulator, size: int) -> float:
    assert emu.cmd(b"memset 0x100000 %d 0x5a" % size) == b"OK"
    expect = 3 + (size + 2) // 3 * 4 + 1  # "OK " + base64 + "\n"
    t0 = time.perf_counter()
    emu.sock.sendall(b"b64read 0x100000 %d\n" % size)
    reply = emu.read_sized_line(expect)
    dt = time.perf_counter() - t0
    assert reply[:8] == b"OK WlpaW", bytes(reply[:40])
    return size / MiB / dt


def bench_b64write(emu: Emulator, size: int, payload: bytes) -> float:
    t0 = time.perf_counter()
    r = emu.cmd(b"b64write 0x100000 %d " % size + payload)
    dt = time.perf_counter() - t0
    assert r == b"OK", r
    return size / MiB / dt


def bench_startup(binary: str, machine: list[str], runs: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        emu = Emulator(binary, machine)
        try:
            r = emu.cmd(b"endianness")
            dt = time.perf_counter() - emu.t_spawn
            assert r == b"OK little", r
        finally:
            emu.close()
        times.append(dt * 1000)
    return statistics.median(times), times


# ----------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------

ROWS = [
    # key, label, unit, higher_is_better, target ratio (ours/QEMU), target text
    ("roundtrip", "(a) readb round trips", "cmd/s", True, 1.0, ">= 1x"),
    ("pipelined", "(b) readb pipelined", "cmd/s", True, 2.0, ">= 2x"),
    ("b64read", "(c) b64read {bulk}", "MiB/s", True, 10.0, ">= 10x"),
    ("b64write", "(d) b64write {bulk}", "MiB/s", True, 100.0, ">= 100x"),
    ("startup_pc", "(e) start-up -M pc -S", "ms", False, 1.0, "<= 1x"),
    ("startup_none", "(e) start-up -M none", "ms", False, 1.0, "<= 1x"),
]


def run_all(binary: str, p: dict, log) -> dict:
    res: dict = {}
    reps = p["reps"]

    def med(fn, *a, warmup=False):
        if warmup:
            fn(*a)  # first touch of fresh buffers and guest pages; not what steady use costs
        vals = [fn(*a) for _ in range(reps)]
        return statistics.median(vals), vals

    log(f"  {binary}: round trips")
    with Emulator(binary, PC) as emu:
        emu.cmd(b"writeb 0x1000 0x5a")
        emu.expect_readb = emu.cmd(b"readb 0x1000")
        assert emu.expect_readb == b"OK 0x000000000000005a", emu.expect_readb
        res["roundtrip"] = med(bench_roundtrip, emu, p["rt_n"])
        log(f"  {binary}: pipelined")
        res["pipelined"] = med(bench_pipelined, emu, p["pipe_n"])
        log(f"  {binary}: b64read")
        res["b64read"] = med(bench_b64read, emu, p["bulk"], warmup=True)
        log(f"  {binary}: b64write")
        res["b64write"] = med(bench_b64write, emu, p["bulk"], p["payload"], warmup=True)
        # Sanity: the last write landed.
        tail = emu.cmd(b"b64read %d 16" % (0x100000 + p["bulk"] - 16))
        assert tail == b"OK " + base64.b64encode(p["data"][-16:]), tail
    log(f"  {binary}: start-up")
    res["startup_pc"] = bench_startup(binary, PC, p["startup_runs"])
    res["startup_none"] = bench_startup(binary, NONE, p["startup_runs"])
    return res


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "ms":
        return f"{v:.1f} ms"
    if unit == "MiB/s":
        return f"{v:,.1f} MiB/s"
    return f"{v:,.0f} /s"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller N for a smoke run")
    ap.add_argument("--ours", default=shutil.which("emu-system-x86_64"), help="our binary")
    ap.add_argument("--qemu", default=shutil.which("qemu-system-x86_64"),
                    help="real QEMU (columns are skipped when absent)")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="also dump results as JSON (to FILE, or stdout without FILE)")
    a = ap.parse_args(argv)
    if not a.ours:
        ap.error("emu-system-x86_64 not found; pass --ours PATH")
    qemu = a.qemu if a.qemu and os.path.exists(a.qemu) else None

    if a.quick:
        p = dict(rt_n=2000, pipe_n=20000, bulk=1 * MiB, reps=1, startup_runs=3)
    else:
        p = dict(rt_n=20000, pipe_n=200000, bulk=16 * MiB, reps=5, startup_runs=7)
    # An installed package has .pyc files; an editable checkout under PYTHONDONTWRITEBYTECODE=1 would
    # recompile every module at every start, which is not what a user's start-up looks like.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(root, "emu"), os.path.join(root, "qtest")],
                   stdout=subprocess.DEVNULL, check=False)
    p["data"] = os.urandom(p["bulk"])
    p["payload"] = base64.b64encode(p["data"])
    bulk = f"{p['bulk'] // MiB} MiB"

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    log(f"ours: {a.ours}\nqemu: {qemu or '(absent)'}\nparams: rt_n={p['rt_n']} pipe_n={p['pipe_n']} "
        f"bulk={bulk} reps={p['reps']} startup_runs={p['startup_runs']}")
    results = {"ours": run_all(a.ours, p, log)}
    if qemu:
        results["qemu"] = run_all(qemu, p, log)

    hdr = ("workload", "ours", "QEMU 7.2", "ours/QEMU", "target", "met", "better")
    lines = []
    out_rows = []
    for key, label, unit, hib, target, ttext in ROWS:
        o = results["ours"][key][0]
        q = results["qemu"][key][0] if qemu else None
        ratio = o / q if q else None
        met = "-" if ratio is None else ("yes" if (ratio >= target if hib else ratio <= target) else "NO")
        lab = label.format(bulk=bulk)
        lines.append((lab, fmt(o, unit), fmt(q, unit), "-" if ratio is None else f"{ratio:.2f}x",
                      ttext, met, "higher" if hib else "lower"))
        out_rows.append(dict(key=key, workload=lab, unit=unit, higher_is_better=hib,
                             ours=o, ours_runs=results["ours"][key][1],
                             qemu=q, qemu_runs=results["qemu"][key][1] if qemu else None,
                             ratio=ratio, target=target, met=met == "yes"))
    # A Markdown table, so that a run can be pasted into bench/README.md as is.
    w = [max(len(r[i]) for r in [hdr, *lines]) for i in range(len(hdr))]
    print("| " + " | ".join(h.ljust(w[i]) for i, h in enumerate(hdr)) + " |")
    print("|" + "|".join("-" * (x + 1) + ":" if i else "-" * (x + 2) for i, x in enumerate(w)) + "|")
    for r in lines:
        print("| " + " | ".join((c.ljust if i == 0 else c.rjust)(w[i]) for i, c in enumerate(r)) + " |")
    print(f"\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, Python "
          f"{platform.python_version()}; ratio = ours/QEMU of the metric shown "
          f"(rates: higher is better; start-up times: lower is better).")

    if a.json:
        doc = dict(params={k: v for k, v in p.items() if k not in ("data", "payload")},
                   ours=a.ours, qemu=qemu, cpus=os.cpu_count(), loadavg=os.getloadavg(),
                   rows=out_rows)
        text = json.dumps(doc, indent=2)
        if a.json == "-":
            print(text)
        else:
            with open(a.json, "w") as f:
                f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
