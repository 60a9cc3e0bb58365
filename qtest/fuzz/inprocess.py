"""The generic qtest fuzzer run in this process, with QEMU's DMA-pattern answers (``--in-process``).

Owns what only an in-process fuzzer can do: the machine is built here from the same command line
(``emu.assembly.Assembler``, ``-accel qtest``, no chardevs) and driven through ``QTestServer`` line by
line, and the memory core's DMA hook (``AddressSpace.dma_read_hook``) fills guest RAM with the
input's patterns just before a device reads it, as QEMU's ``fuzz_dma_read_cb`` does
(``spec/qtest-protocol.md`` §11.3): only reads that start in the machine's main RAM, round robin
over the patterns, at most 0x10000 bytes per fill, no fill that would take the input past
0x10000000 bytes, written only to RAM/ROM pieces (one per flat range), and no refill of a range
already filled since the last op (QEMU's behaviour under ``QTEST_LOG``, which is how its
reproducers are made; with ``--avoid-double-fetch``, QEMU_AVOID_DOUBLE_FETCH's head and tail
fills). Each fill enters the trace as ``write ADDR LEN 0xHEX`` before the command that caused
it, so the trace replays out of process (``-qtest stdio``) and on QEMU.

Discovery of the fuzzable ranges and the PCI set-up come from a short-lived emulator process,
as in process mode (:class:`qtest.fuzz.generic_target.GenericFuzzTarget`). Oracles: an exception out of
a command is a crash, the replies keep QEMU's grammar, a shutdown or exit request is reported
as the emulator ending, an input running over ``--timeout`` is a hang (SIGALRM; past that, a
faulthandler watchdog ends the worker and the runner keeps the input), peak RSS of this process
stays under ``--rss-limit-mib``.
"""
from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import IO, Any

from qtest.fuzz.common import Finding, peak_rss_kib, watchdog_path
from qtest.fuzz.generic_ops import NUM_OPS, Decoder, check_replies, split_ops
from qtest.fuzz.generic_target import GenericFuzzTarget

FILL_CAP = 0x10000
FILL_BUDGET = 0x10000000
WATCHDOG_GRACE = 5.0  # seconds past --timeout before the watchdog ends a worker stuck in C code
RAM_KINDS = ("ram", "rom")  # what a fill may write: QEMU writes RAM and ROM-device memory


class _Stop(Exception):
    """Ends the input: (kind, message) of the finding."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class DmaFiller:
    """The DMA hook (``fuzz_dma_read_cb``): fills guest RAM with the decoder's patterns just
    before a device reads it, recording each fill as a trace line."""

    def __init__(self, mem: Any, decoder: Decoder, main_ram: Any = None, avoid_double_fetch: bool = False) -> None:
        self.mem = mem
        self.decoder = decoder
        #: the RamBlock of the machine's main RAM: only reads that start there are filled, as
        #: QEMU fills only ``current_machine->ram`` (None: any RAM)
        self.main_ram = main_ram
        #: QEMU_AVOID_DOUBLE_FETCH: fill the head and tail around an already-filled range
        self.avoid_double_fetch = avoid_double_fetch
        self.fills: list[str] = []  # trace lines of the fills of the running command
        self.filled: list[tuple[int, int]] = []  # ranges filled since the last op
        self.written = 0  # bytes written by fills in this input
        self.count = 0  # fills made, over all inputs

    def new_input(self) -> None:
        """QEMU's per-input reset: the byte budget and the already-filled list."""
        self.written = 0
        self.filled.clear()

    def __call__(self, addr: int, length: int) -> None:
        if self.decoder.patterns and self._starts_in_main_ram(addr):
            self._fill(addr, length)

    def _starts_in_main_ram(self, addr: int) -> bool:
        fr = self.mem.lookup(addr)
        if fr is None or fr.mr.kind != "ram":
            return False
        return self.main_ram is None or fr.mr.block is self.main_ram

    def _fill(self, addr: int, length: int) -> None:
        # the budget test and the overlap test see the uncapped length, as in QEMU
        if not length or self.written + length > FILL_BUDGET:
            return
        for a, n in self.filled:
            if addr < a + n and a < addr + length:
                if self.avoid_double_fetch and addr < a:
                    self._fill(addr, a - addr)
                if self.avoid_double_fetch and addr + length > a + n:
                    self._fill(a + n, addr + length - (a + n))
                return
        length = min(length, FILL_CAP)
        self.filled.append((addr, length))
        self.count += 1
        d = self.decoder
        data = d.patterns[d.pattern_index].render(length)
        d.pattern_index = (d.pattern_index + 1) % len(d.patterns)
        for start, size in self._ram_pieces(addr, length):
            piece = data[start - addr:start - addr + size]
            self.mem.write(start, piece)
            self.written += size
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

    #: the runner keeps the running input on disk: a hang in C code ends this worker with it
    in_process = True

    def __init__(self, args: argparse.Namespace) -> None:
        # the watchdog's stack dump goes where the runner looks for it (stderr outside the runner)
        self._watchdog_file: IO[str] | None = None
        if hasattr(args, "out"):
            path = watchdog_path(args, os.getpid())
            path.parent.mkdir(parents=True, exist_ok=True)
            self._watchdog_file = open(path, "w")  # noqa: SIM115 - faulthandler writes to it until close()
        self.system: Any = None
        self.filler: DmaFiller | None = None
        self.inputs_with_fills = 0
        self.avoid_double_fetch: bool = getattr(args, "avoid_double_fetch", False)
        #: the trace (DMA fills included) of the last input run
        self.last_trace: list[str] = []
        super().__init__(args)

    def _start(self) -> None:
        if self.space is None:  # discovery through a process, then that process goes
            super()._start()
            assert self.machine is not None
            self.machine.quit(check=False)
            self.machine = None
        self._build()

    def _build(self) -> None:
        # imported here: the emulator is loaded only by a worker that runs it in process
        from emu.assembly import Assembler
        from emu.cli import parse_args
        from qtest.server import QTestServer

        cfg = parse_args([*self.machine_args, "-display", "none", "-accel", "qtest"])
        # the machine and its VM only: no chardevs, monitors or qtest server of the process's own
        self.system = Assembler(cfg, "emu-system-x86_64").system
        vm = self.system.vm
        # isa-debug-exit and the like end the process in the emulator: here they end the input
        vm.exit_now = vm.machine.exit_request = self._exit_now
        self.replies: list[bytes | bytearray] = []  # what the server writes: bytes or a bytearray
        self.server = QTestServer(vm, write=self.replies.append)
        self.server.opened()
        assert self.decoder is not None
        machine = vm.machine
        mem = machine.address_space_memory
        main_ram = next((b for b in machine.ram_blocks if b.name == machine.default_ram_id), None)
        count = self.filler.count if self.filler is not None else 0
        self.filler = DmaFiller(mem, self.decoder, main_ram, self.avoid_double_fetch)
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
        self._release()
        self._build()

    def _release(self) -> None:
        """Lets the machine go with its main loop's descriptors (else three leak per finding)."""
        if self.system is None:
            return
        self.system.shutdown()
        self.system.loop.close()
        self.system = None

    def run_one(self, data: bytes) -> Finding | None:
        """Runs one input (set-up lines, then op by op with the patterns in force), then resets."""
        decoder, filler = self.decoder, self.filler
        assert decoder is not None and filler is not None
        decoder.start_input()
        filler.new_input()
        fills_before = filler.count
        trace: list[tuple[str, str]] = []
        pieces = split_ops(data)
        self.inputs += 1
        self.ops += len(pieces)
        try:
            with _Deadline(self.timeout, self._watchdog_file or sys.__stderr__):
                for line in self.setup_lines:
                    self._run(line, trace)
                for piece in pieces:
                    for line in decoder.op(piece[0] % NUM_OPS, piece[1:]):
                        self._run(line, trace)
                    filler.filled.clear()
        except _Stop as stop:
            self.last_trace = [c for c, _ in trace]
            self._restart()
            return self._finding(stop.kind, str(stop), self.last_trace)
        self.commands += len(trace)
        self.inputs_with_fills += filler.count > fills_before
        commands = self.last_trace = [c for c, _ in trace]
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
        self._release()
        if self._watchdog_file is not None:
            self._watchdog_file.close()
            Path(self._watchdog_file.name).unlink(missing_ok=True)
            self._watchdog_file = None
        super().close()
        count = self.filler.count if self.filler is not None else 0
        sys.stderr.write(f"[qtest] in process: {self.inputs_with_fills} of {self.inputs} inputs got DMA fills "
                         f"({count} fills)\n")


class _Deadline:
    """An input's time limit. SIGALRM after ``seconds`` raises a hang inside the input (main
    thread only); a hang inside C code never returns to the interpreter to see it, so
    faulthandler's watchdog ends the process ``WATCHDOG_GRACE`` seconds later, dumping the
    stacks to ``dump`` (the runner then saves the input the worker died with)."""

    def __init__(self, seconds: float, dump: IO[str] | None) -> None:
        self.seconds = seconds
        self.dump = dump
        self.armed = threading.current_thread() is threading.main_thread() and seconds > 0

    def _fire(self, signum: int, frame: Any) -> None:
        raise _Stop("hang", f"the input ran over {self.seconds:g} s")

    def __enter__(self) -> _Deadline:
        if self.seconds > 0 and self.dump is not None:
            faulthandler.dump_traceback_later(self.seconds + WATCHDOG_GRACE, exit=True, file=self.dump)
        if self.armed:
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        if self.seconds > 0 and self.dump is not None:
            faulthandler.cancel_dump_traceback_later()
