"""The generic qtest fuzzer run in this process, with QEMU's DMA-pattern answers (``--in-process``).

Owns what only an in-process fuzzer can do: the machine is built here from the same command line
(``emu.system.System``, ``-accel qtest``, no chardevs) and driven through ``QTestServer`` line by
line, and the memory core's DMA hook (``AddressSpace.dma_read_hook``) fills guest RAM with the
input's patterns just before a device reads it, as QEMU's ``fuzz_dma_read_cb`` does
(``spec/qtest-protocol.md`` §11.3): round-robin over the patterns, at most 0x10000 bytes per
fill, 0x10000000 per input, RAM only, split per flat range, and no refill of a range already
filled since the last op (QEMU's behaviour under ``QTEST_LOG``, which is how its reproducers are
made). Each fill enters the trace as ``write ADDR LEN 0xHEX`` before the command that caused it,
so the trace replays out of process (``-qtest stdio``) and on QEMU.

Discovery of the fuzzable ranges and the PCI set-up come from a short-lived emulator process,
as in process mode (:class:`qtest.fuzz.generic.GenericFuzzTarget`). Oracles: an exception out of
a command is a crash, the replies keep QEMU's grammar, a shutdown or exit request is reported
as the emulator ending, an input running over ``--timeout`` is a hang (SIGALRM), peak RSS of
this process stays under ``--rss-limit-mib``.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from typing import Any

from qtest.fuzz.common import Finding, peak_rss_kib
from qtest.fuzz.generic import NUM_OPS, Decoder, GenericFuzzTarget, check_replies, split_ops

FILL_CAP = 0x10000
FILL_BUDGET = 0x10000000
RAM_KINDS = ("ram", "rom", "romd")


class _Stop(Exception):
    """Ends the input: (kind, message) of the finding."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class DmaFiller:
    """The DMA hook: fills guest RAM with the decoder's patterns, recording each fill."""

    def __init__(self, mem: Any, decoder: Decoder) -> None:
        self.mem = mem
        self.decoder = decoder
        self.fills: list[str] = []  # trace lines of the fills of the running command
        self.filled: list[tuple[int, int]] = []  # ranges filled since the last op
        self.budget = FILL_BUDGET
        self.count = 0  # fills made, over all inputs

    def new_input(self) -> None:
        self.budget = FILL_BUDGET
        self.filled.clear()

    def __call__(self, addr: int, length: int) -> None:
        d = self.decoder
        if not d.patterns or self.budget <= 0:
            return
        length = min(length, FILL_CAP, self.budget)
        if any(a < addr + length and addr < a + n for a, n in self.filled):
            return
        self.filled.append((addr, length))
        self.budget -= length
        self.count += 1
        pattern = d.patterns[d.pattern_index % len(d.patterns)]
        d.pattern_index = (d.pattern_index + 1) % len(d.patterns)
        data = pattern.render(length)
        for start, size in self._ram_pieces(addr, length):
            piece = data[start - addr:start - addr + size]
            self.mem.write(start, piece)
            self.fills.append(f"write {start:#x} {size:#x} 0x{piece.hex()}")

    def _ram_pieces(self, addr: int, length: int) -> list[tuple[int, int]]:
        """(start, size) of the RAM/ROM parts of [addr, addr + length), one per flat range."""
        pieces = []
        pos, end = addr, addr + length
        while pos < end:
            fr = self.mem.lookup(pos)
            if fr is None:
                break
            last = min(end - 1, fr.last)
            if fr.mr.kind in RAM_KINDS:
                pieces.append((pos, last - pos + 1))
            pos = last + 1
        return pieces


class InProcessFuzzTarget(GenericFuzzTarget):
    """The ``qtest`` target with ``--in-process``: same inputs, traces and findings as the
    process mode, plus DMA fills, run in this process."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.system: Any = None
        self.filler: DmaFiller | None = None
        self.inputs_with_fills = 0
        super().__init__(args)

    def _start(self) -> None:
        if self.space is None:  # discovery through a process, then that process goes
            super()._start()
            assert self.machine is not None
            self.machine.quit(check=False)
            self.machine = None
        self._build()

    def _build(self) -> None:
        from emu.cli import parse_args
        from emu.system import System
        from qtest.server import QTestServer

        cfg = parse_args([*self.machine_args, "-display", "none", "-accel", "qtest"])
        self.system = System(cfg, "emu-system-x86_64")
        vm = self.system.vm
        vm.exit_now = self._exit_now
        self.replies: list[bytes] = []
        self.server = QTestServer(vm, write=self.replies.append)
        self.server.opened()
        assert self.decoder is not None
        mem = vm.machine.address_space_memory
        count = self.filler.count if self.filler is not None else 0
        self.filler = DmaFiller(mem, self.decoder)
        self.filler.count = count
        mem.dma_read_hook = self.filler

    @staticmethod
    def _exit_now(status: int) -> None:
        raise _Stop("crash", f"the emulator exited with status {status}")

    def _reset(self) -> None:
        if self.system is not None:
            self.system.vm.reset("host-qmp-system-reset")

    def _restart(self) -> None:
        self.restarts += 1
        self._build()

    def run_one(self, data: bytes) -> Finding | None:
        """Runs one input (set-up lines, then op by op with the patterns in force), then resets."""
        decoder, filler = self.decoder, self.filler
        assert decoder is not None and filler is not None
        decoder.patterns.clear()
        decoder.pattern_index = 0
        decoder.pci_disabled = False
        filler.new_input()
        fills_before = filler.count
        trace: list[tuple[str, str]] = []
        pieces = split_ops(data)
        self.inputs += 1
        self.ops += len(pieces)
        try:
            with _Deadline(self.timeout):
                for line in self.setup_lines:
                    self._run(line, trace)
                for piece in pieces:
                    for line in decoder.op(piece[0] % NUM_OPS, piece[1:]):
                        self._run(line, trace)
                    filler.filled.clear()
        except _Stop as stop:
            self._restart()
            return self._finding(stop.kind, str(stop), [c for c, _ in trace])
        self.commands += len(trace)
        self.inputs_with_fills += filler.count > fills_before
        commands = [c for c, _ in trace]
        problem = check_replies(commands, [r for _, r in trace])
        if problem is not None:
            self._restart()
            return self._finding("invariant", problem, commands)
        self._reset()
        rss = peak_rss_kib(os.getpid())
        self.peak_rss_kib = max(self.peak_rss_kib, rss)
        if rss > self.rss_limit_kib:
            return self._finding("memory", f"peak RSS {rss / 1024:.1f} MiB over the "
                                 f"{self.rss_limit_kib / 1024:g} MiB bound", commands)
        return None

    def _run(self, line: str, trace: list[tuple[str, str]]) -> None:
        """One command: its fills enter the trace before it; its reply (IRQ lines dropped) after."""
        assert self.filler is not None
        self.filler.fills.clear()
        self.replies.clear()
        try:
            self.server.process_line(line.encode())
            self.system.loop.run_once(0)  # what the main loop does next: deferred resets, panics
        except _Stop:
            trace.extend((f, "OK") for f in self.filler.fills)
            trace.append((line, ""))
            raise
        except Exception as e:
            trace.extend((f, "OK") for f in self.filler.fills)
            trace.append((line, ""))
            where = traceback.extract_tb(e.__traceback__)[-1]
            raise _Stop("crash", f"{type(e).__name__}: {e} (at {where.filename}:{where.lineno})") from None
        trace.extend((f, "OK") for f in self.filler.fills)
        text = b"".join(self.replies).decode("latin-1")
        reply = next((r for r in text.split("\n") if r and not r.startswith("IRQ ")), "")
        trace.append((line, reply))
        vm = self.system.vm
        if vm.shutdown_requested is not None:
            raise _Stop("crash", f"the emulator exited (shutdown requested: {vm.shutdown_requested})")

    def close(self) -> None:
        """Drops the machine and prints the totals, with how many inputs got a DMA fill."""
        self.system = None
        super().close()
        count = self.filler.count if self.filler is not None else 0
        sys.stderr.write(f"[qtest] in process: {self.inputs_with_fills} of {self.inputs} inputs got DMA fills "
                         f"({count} fills)\n")


class _Deadline:
    """SIGALRM after ``seconds`` raises a hang inside the running input (main thread only)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.armed = threading.current_thread() is threading.main_thread() and seconds > 0

    def _fire(self, signum: int, frame: Any) -> None:
        raise _Stop("hang", f"the input ran over {self.seconds:g} s")

    def __enter__(self) -> _Deadline:
        if self.armed:
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
