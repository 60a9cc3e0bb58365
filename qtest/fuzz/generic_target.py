"""The ``qtest`` fuzz target run against an emulator process, and fresh-process replay.

This module owns :class:`GenericFuzzTarget` (a long-running ``-accel qtest`` emulator, reset
after every input and restarted after every finding) with its oracles: the process stays alive
and prints no traceback, every reply has the exact form QEMU's qtest server gives that command, a
reply arrives within ``--timeout`` seconds, and the peak RSS (VmHWM) stays under
``--rss-limit-mib``; and the reproducers: the qtest trace of an input (plain commands, one per
line), replayed and minimised in a fresh ``-qtest stdio`` process.

DMA patterns (ops 7 and 8) are parsed and kept exactly as QEMU keeps them. Their data reaches
devices only with ``--in-process`` (:mod:`qtest.fuzz.inprocess`, which builds on this class): QEMU
fills guest RAM from inside the process just before a device reads it, which a fuzzer in another
process cannot see. This module must not import :mod:`qtest.fuzz.inprocess` or
:mod:`qtest.fuzz.generic`.
"""
from __future__ import annotations

import argparse
import os
import queue
import random
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO

from qtest.fuzz.common import Finding, peak_rss_kib
from qtest.fuzz.generic_discovery import PciSetup, fuzz_space, match_objects
from qtest.fuzz.generic_ops import MAX_INPUT, Decoder, FuzzSpace, check_replies, crossover, generate_input
from qtest.machine import QMPError, QTestMachine

# ----------------------------------------------------------------------------- fresh-process replay

def replay(argv: Sequence[str], commands: Sequence[str], timeout: float, rss_limit_kib: int) -> tuple[str, str] | None:
    """Replays a trace on the stdin of a fresh ``-qtest stdio`` process (followed by
    ``endianness``, which must answer ``OK little``); returns (kind, message) of what it shows,
    or None. The input stays open, as with a ``< file`` replay (the emulator keeps running)."""
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: queue.Queue[str | None] = queue.Queue()
    err = bytearray()
    payload = "".join(c + "\n" for c in [*commands, "endianness"]).encode()
    threads = [threading.Thread(target=_feed, args=(proc.stdin, payload), daemon=True),
               threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True),
               threading.Thread(target=_collect, args=(proc.stderr, err), daemon=True)]
    for t in threads:
        t.start()
    try:
        outcome = _await_replies(proc, commands, lines, timeout)
        rss = peak_rss_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait()
        for t in threads:
            t.join(timeout)
    if b"Traceback" in err:
        return "crash", "traceback on stderr: " + err.decode(errors="replace").strip().splitlines()[-1][:200]
    if outcome is None and rss > rss_limit_kib:
        return "memory", f"peak RSS {rss / 1024:.1f} MiB over the {rss_limit_kib / 1024:g} MiB bound"
    return outcome


def _feed(pipe: IO[bytes] | None, data: bytes) -> None:
    assert pipe is not None
    try:
        pipe.write(data)
        pipe.flush()
    except OSError:
        pass  # the process died: the reader sees its end


def _read_lines(pipe: IO[bytes] | None, out: queue.Queue[str | None]) -> None:
    assert pipe is not None
    for line in pipe:
        out.put(line.decode(errors="replace").rstrip("\n"))
    out.put(None)


def _collect(pipe: IO[bytes] | None, out: bytearray) -> None:
    assert pipe is not None
    while chunk := pipe.read1(1 << 16):  # type: ignore[attr-defined]
        out += chunk


def _await_replies(proc: subprocess.Popen[bytes], commands: Sequence[str], lines: queue.Queue[str | None],
                   timeout: float) -> tuple[str, str] | None:
    """Reads one reply per command plus the final ``endianness`` one and judges them."""
    replies: list[str] = []
    while len(replies) <= len(commands):
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            return "hang", f"no reply to {([*commands, 'endianness'])[len(replies)]!r} within {timeout:g} s"
        if line is None:
            status = proc.wait(timeout)
            return "crash", f"the emulator exited with status {status} after {len(replies)} replies"
        if not line.startswith("IRQ "):
            replies.append(line)
    problem = check_replies(commands, replies)
    if problem is None and replies[-1] != "OK little":
        problem = f"the server stopped serving: {replies[-1][:80]!r} to 'endianness'"
    return None if problem is None else ("invariant", problem)


def reduce_lines(lines: list[str], still_fails: Callable[[list[str]], bool], deadline: float,
                 max_trials: int = 200) -> list[str]:
    """Removes chunks of lines (halving the chunk size down to one line) while the trace still
    fails, within ``deadline`` (a ``time.monotonic()`` value) and ``max_trials`` replays."""
    trials = 0
    chunk = max(1, len(lines) // 2)
    while trials < max_trials and time.monotonic() < deadline:
        i = 0
        while i < len(lines) and trials < max_trials and time.monotonic() < deadline:
            candidate = lines[:i] + lines[i + chunk:]
            trials += 1
            if candidate and still_fails(candidate):
                lines = candidate
            else:
                i += chunk
        if chunk == 1:
            break
        chunk //= 2
    return lines


# ----------------------------------------------------------------------------- the target

class GenericFuzzTarget:
    """The ``qtest`` fuzz target: a long-running ``-accel qtest`` emulator, reset with QMP
    ``system_reset`` after every input and restarted after every finding."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.binary: str = args.binary
        self.machine_args = ["-M", args.machine, *shlex.split(args.args)]
        self.patterns: list[str] = args.objects.split()
        self.timeout: float = args.timeout
        self.rss_limit_kib = int(args.rss_limit_mib * 1024)
        self.minimise_time: float = args.minimise_time
        self.machine: QTestMachine | None = None
        self.space: FuzzSpace | None = None
        self.setup_lines: list[str] = []
        self.decoder: Decoder | None = None
        self.inputs = self.ops = self.commands = self.restarts = 0
        self.peak_rss_kib = 0
        self.pool: list[bytes] = []
        self.started = time.monotonic()
        self._stderr_seen = 0
        self._start()

    def replay_argv(self, quiet: bool = True) -> list[str]:
        """The command line a trace replays with (``-qtest stdio``, input on stdin)."""
        log = ["-qtest-log", "/dev/null"] if quiet else []
        return [self.binary, *self.machine_args, "-display", "none", "-accel", "qtest", "-qtest", "stdio", *log]

    def _start(self) -> None:
        self.machine = QTestMachine(self.binary, self.machine_args, accel_qtest=True, io_timeout=self.timeout)
        self._stderr_seen = 0
        if self.space is not None:
            return
        # BARs first: the ranges are those of the flat view the set-up leaves (BARs mapped)
        matched = match_objects(self.machine.qmp, self.patterns)
        setup = PciSetup(self.machine.qtest)
        for devfn in matched.pci_devfns:
            setup.map_device(devfn)
        space = fuzz_space(self.machine.qmp, matched)
        for warning in matched.warnings:
            sys.stderr.write(f"[qtest] warning: {warning}\n")
        if not space.pio and not space.mmio:
            self.machine.kill()
            raise SystemExit(f"No fuzzable memory regions found for --objects {' '.join(self.patterns)!r}")
        self.space, self.setup_lines, self.decoder = space, setup.lines, Decoder(space)
        self._reset()

    def _reset(self) -> None:
        assert self.machine is not None
        self.machine.qmp.cmd("system_reset")
        self.machine.qmp.wait_event("RESET", timeout=self.timeout)
        self.machine.qmp.clear_events()

    def _restart(self) -> None:
        if self.machine is not None:
            self.machine.kill()
        self.restarts += 1
        self._start()

    def generate(self, rng: random.Random) -> bytes:
        """A random input in QEMU's generic-fuzz encoding; one in ten is the crossover of an
        earlier input and a new one, as libFuzzer's custom crossover builds them."""
        data = generate_input(rng)
        if self.pool and rng.random() < 0.1:
            data = crossover(rng.choice(self.pool), data, MAX_INPUT) or data
        if len(self.pool) < 64:
            self.pool.append(data)
        else:
            self.pool[rng.randrange(64)] = data
        return data

    def trace(self, data: bytes) -> list[str]:
        """The qtest commands an input sends: the PCI set-up, then its ops."""
        assert self.decoder is not None
        return self.setup_lines + self.decoder.decode(data)[0]

    def run_one(self, data: bytes) -> Finding | None:
        """Runs one input, then resets the machine; a finding restarts the emulator."""
        assert self.decoder is not None
        lines, ops = self.decoder.decode(data)
        commands = self.setup_lines + lines
        self.inputs += 1
        self.ops += ops
        self.commands += len(commands)
        found = self._execute(commands)
        if found is None:
            return None
        self._restart()
        return self._finding(found[0], found[1], commands)

    def _execute(self, commands: list[str]) -> tuple[str, str] | None:
        machine = self.machine
        assert machine is not None
        try:
            problem = check_replies(commands, machine.qtest.pipeline(commands))
            if problem is not None:
                return "invariant", problem
            self._reset()
        except TimeoutError:
            return "hang", f"no reply within {self.timeout:g} s"
        except (ConnectionError, OSError, QMPError) as e:
            try:  # the connection closes a moment before the process can be reaped
                status = machine.wait(timeout=min(self.timeout, 5.0), check=False)
            except subprocess.TimeoutExpired:
                return "invariant", f"the server stopped serving: {e}"
            return "crash", f"the emulator exited with status {status}: {_last_line(machine.stderr_text())}"
        err = machine.stderr_text()
        new, self._stderr_seen = err[self._stderr_seen:], len(err)
        if "Traceback" in new:
            return "crash", "traceback on stderr: " + _last_line(new)
        rss = peak_rss_kib(machine.pid)
        self.peak_rss_kib = max(self.peak_rss_kib, rss)
        if rss > self.rss_limit_kib:
            return "memory", f"peak RSS {rss / 1024:.1f} MiB over the {self.rss_limit_kib / 1024:g} MiB bound"
        return None

    def _finding(self, kind: str, message: str, commands: list[str]) -> Finding:
        return Finding(kind, message, "".join(c + "\n" for c in commands).encode(), ".qtest",
                       shlex.join(self.replay_argv(quiet=False)) + " < THIS_FILE.qtest")

    def minimise(self, data: bytes, finding: Finding) -> Finding:
        """Replays the trace in a fresh ``-qtest stdio`` process and removes lines while the
        same kind of finding persists (at most ``--minimise-time`` seconds)."""
        lines = finding.reproducer.decode().splitlines()
        first = replay(self.replay_argv(), lines, self.timeout, self.rss_limit_kib)
        if first is None or first[0] != finding.kind:
            note = f"not reproduced by a fresh -qtest stdio replay (that gave {first}); trace not minimised"
            return Finding(finding.kind, f"{finding.message} [{note}]", finding.reproducer, finding.suffix,
                           finding.replay)

        def still_fails(candidate: list[str]) -> bool:
            got = replay(self.replay_argv(), candidate, self.timeout, self.rss_limit_kib)
            return got is not None and got[0] == finding.kind

        small = reduce_lines(lines, still_fails, time.monotonic() + self.minimise_time)
        return Finding(finding.kind, f"{finding.message} (trace minimised from {len(lines)} to {len(small)} lines)",
                       "".join(c + "\n" for c in small).encode(), finding.suffix, finding.replay)

    def close(self) -> None:
        """Stops the emulator and prints this worker's totals (ops, commands, peak RSS)."""
        if self.machine is not None:
            self.machine.quit(check=False)
            self.machine = None
        elapsed = max(time.monotonic() - self.started, 1e-6)
        sys.stderr.write(f"\n[qtest] worker {os.getpid()}: {self.inputs} inputs, {self.ops} ops "
                         f"({self.ops / elapsed:.0f} ops/s), {self.commands} qtest commands, "
                         f"{self.restarts} restarts, emulator peak RSS {self.peak_rss_kib // 1024} MiB\n")


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1][:200] if lines else "(no stderr)"
