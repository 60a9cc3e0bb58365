"""The 16550A UART (emu.devices.serial) against QEMU 7.2's serial.c behaviour.

Unit tests drive the device through its port region on a private I/O bus (``IsaBench``, which
speaks the qtest commands ``inb``/``outb``/``inw``/``outw``/``clock_step`` and reports IRQ changes
as qtest's interception does). The ``qemu``-marked tests replay the same scripts on QEMU 7.2
(``/root/qemu72/build``) with ``-M pc -nodefaults`` and compare the transcripts line by line;
they are skipped when that build is absent. ``IsaBench`` and ``qemu_transcript`` are shared
with test_i8257.py and test_fdc.py.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from vmstate_source import ByteSource

from emu.clock import VirtualClock
from emu.devices.serial import VMSTATE_ISA_SERIAL, Serial16550
from emu.irq import IRQ
from emu.memory import AddressSpace, MemoryRegion
from emu.migration.vmstate import LoadContext, load_state, save_state

QEMU72 = Path(os.environ.get("QEMU72_BUILD", "/root/qemu72/build")) / "qemu-system-x86_64"
COM1, COM1_IRQ = 0x3F8, 4


class IsaBench:
    """A bare ISA I/O bus with a manual virtual clock; ``run`` answers like qtest."""

    def __init__(self) -> None:
        self.clock = VirtualClock(manual=True)
        self.clock.enable(True)
        self.io_root = MemoryRegion.container("io", 0x10000)
        self.io = AddressSpace("io", self.io_root)
        self.levels: dict[int, int] = {}
        self.events: list[str] = []
        self.intercepting = False  # qtest reports IRQ changes only after irq_intercept_in

    def map(self, port: int, region: MemoryRegion) -> None:
        self.io_root.add_subregion(port, region)

    def irq(self, n: int) -> IRQ:
        """The input an ISA IRQ output connects to: records level changes as qtest reports them."""
        def handler(_: int, level: int) -> None:
            level = 1 if level else 0
            if self.levels.get(n, 0) != level:
                self.levels[n] = level
                if self.intercepting:
                    self.events.append(f"IRQ {'raise' if level else 'lower'} {n}")
        return IRQ(handler, n)

    def command(self, line: str) -> list[str]:
        """One qtest command: the IRQ lines it caused, then its reply."""
        op, *args = line.split()
        self.events = []
        reply = "OK"
        sizes = {"b": 1, "w": 2, "l": 4}
        if op[:-1] in ("in", "out") and op[-1] in sizes:
            size, addr = sizes[op[-1]], int(args[0], 0)
            if op.startswith("in"):
                reply = f"OK 0x{self.io.read_uint(addr, size):04x}"
            else:
                self.io.write_uint(addr, int(args[1], 0), size)
        elif op == "clock_step":
            reply = f"OK {self.clock.step(int(args[0]))}"
        elif op == "irq_intercept_in":
            self.intercepting = True
        else:
            raise ValueError(line)
        return self.events + [reply]

    def run(self, script: list[str]) -> list[str]:
        return [out for line in script for out in self.command(line)]

    def inb(self, port: int) -> int:
        return self.io.read_uint(port, 1)

    def outb(self, port: int, value: int) -> None:
        self.io.write_uint(port, value, 1)


def qemu_transcript(script: list[str], extra_args: tuple[str, ...] = (), irqs: tuple[int, ...] | None = None
                    ) -> list[str]:
    """The replies of QEMU 7.2 (``-M pc -nodefaults -accel qtest``) to a qtest script. No ``-S``:
    a stopped QEMU runs no virtual-clock timers (the qtest accelerator executes no guest code
    anyway). QEMU keeps running after the qtest chardev closes, so it is killed after the last reply.
    ``irqs``: keep only these IRQ lines (the PIT ticks on IRQ 0 while the clock runs)."""
    if not QEMU72.exists():
        pytest.skip(f"{QEMU72} is absent")
    proc = subprocess.Popen([str(QEMU72), "-M", "pc", "-nodefaults", "-display", "none", "-qtest", "stdio",
                             "-accel", "qtest", *extra_args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    lines: list[str] = []
    try:
        proc.stdin.write("".join(line + "\n" for line in script))
        proc.stdin.flush()
        replies = 0
        while replies < len(script):
            line = proc.stdout.readline()
            if not line:
                break
            line = line.rstrip("\n")
            if not line.startswith("IRQ "):
                replies += 1
            elif irqs is not None and int(line.split()[-1]) not in irqs:
                continue
            lines.append(line)
    finally:
        proc.kill()
        proc.communicate()
    return lines


def serial_bench(output: list[bytes] | None = None) -> tuple[IsaBench, Serial16550]:
    bench = IsaBench()
    uart = Serial16550(output.append if output is not None else None, clock=bench.clock)
    uart.irq.connect(bench.irq(COM1_IRQ))
    bench.map(COM1, uart.io)
    return bench, uart


def reg(n: int) -> int:
    return COM1 + n


# ---------------------------------------------------------------- reset values

# inb 0x3f8..0x3ff on QEMU 7.2 `-M pc -nodefaults -serial null` answered (probed with the qtest
# accelerator): RBR 00, IER 00, IIR 01, LCR 00, MCR 08 (OUT2), LSR 60, MSR b0, SCR 00.
QEMU_RESET_VALUES = [0x00, 0x00, 0x01, 0x00, 0x08, 0x60, 0xB0, 0x00]


def test_reset_values_match_qemu_probe() -> None:
    bench, _ = serial_bench()
    assert [bench.inb(reg(i)) for i in range(8)] == QEMU_RESET_VALUES


def test_system_reset_keeps_fcr_like_qemu() -> None:
    bench, uart = serial_bench()
    bench.outb(reg(2), 0xC1)  # FIFO on, trigger 14
    bench.outb(reg(3), 0x83)
    uart.reset()
    assert [bench.inb(reg(i)) for i in range(8)] == QEMU_RESET_VALUES  # IIR loses its FIFO bits...
    assert uart.fcr == 0xC1 and uart.recv_fifo_itl == 14  # ...but serial_reset leaves FCR alone


def test_divisor_latch() -> None:
    bench, uart = serial_bench()
    bench.outb(reg(3), 0x80)
    assert (bench.inb(reg(0)), bench.inb(reg(1))) == (0x0C, 0x00)
    bench.outb(reg(0), 0x01)
    bench.outb(reg(1), 0x02)
    assert (bench.inb(reg(0)), bench.inb(reg(1))) == (0x01, 0x02)
    bench.outb(reg(3), 0x03)
    assert bench.inb(reg(1)) == 0x00  # IER again
    assert uart.divider == 0x0201


def test_char_time_follows_qemu_float_formula() -> None:
    _, uart = serial_bench()
    assert uart.char_transmit_time == 1041660  # serial_reset: (1e9 / 9600) * 10 in integers
    uart._write(3, 0x03, 1)  # 8N1 at divisor 12 -> 9600 baud, computed in C float
    assert uart.char_transmit_time == 1041666
    uart._write(3, 0x1F, 1)  # 8 data, 2 stop, even parity: 12-bit frames
    assert uart.char_transmit_time == 1250000


# ---------------------------------------------------------------- transmit, loopback, receive

def test_output_goes_to_callable_and_thre_stays_set() -> None:
    out: list[bytes] = []
    bench, _ = serial_bench(out)
    for byte in b"hi!":
        bench.outb(reg(0), byte)
    assert out == [b"h", b"i", b"!"]
    assert bench.inb(reg(5)) == 0x60  # transmission is synchronous, as in QEMU


def test_loopback_echoes_thr_and_maps_mcr_to_msr() -> None:
    out: list[bytes] = []
    bench, _ = serial_bench(out)
    bench.outb(reg(4), 0x10)  # loop, all outputs low
    assert bench.inb(reg(6)) == 0x00
    bench.outb(reg(4), 0x1F)
    assert bench.inb(reg(6)) == 0xF0  # OUT2->DCD, OUT1->RI, DTR->DSR, RTS->CTS
    bench.outb(reg(4), 0x12)
    assert bench.inb(reg(6)) == 0x10
    bench.outb(reg(0), 0x5A)
    assert out == []  # nothing reaches the backend in loopback
    assert bench.inb(reg(5)) == 0x61
    assert bench.inb(reg(0)) == 0x5A
    assert bench.inb(reg(5)) == 0x60


def test_receive_sets_dr_and_overrun_without_fifo() -> None:
    bench, uart = serial_bench()
    uart.receive(b"ab")
    assert bench.inb(reg(5)) == 0x61
    assert list(uart.backlog) == [ord("b")]  # waits: RBR is full
    assert bench.inb(reg(0)) == ord("a")
    assert bench.inb(reg(0)) == ord("b")  # delivered when the guest read RBR
    assert bench.inb(reg(5)) == 0x60
    bench.outb(reg(4), 0x18)  # loopback: two bytes without a read overrun RBR
    bench.outb(reg(0), 1)
    bench.outb(reg(0), 2)
    assert bench.inb(reg(5)) == 0x63  # DR | OE
    assert bench.inb(reg(5)) == 0x61  # reading LSR clears OE
    assert bench.inb(reg(0)) == 2


def test_fifo_holds_16_then_overruns_and_takes_no_more_from_chardev() -> None:
    bench, uart = serial_bench()
    bench.outb(reg(2), 0xC7)  # enable + clear both, trigger 14
    uart.receive(bytes(range(20)))
    # QEMU's can_receive offers (level - count) bytes, so the chardev stops at the trigger level
    assert uart.recv_fifo.num == 14 and len(uart.backlog) == 6
    assert [bench.inb(reg(0)) for _ in range(20)] == list(range(20))
    assert bench.inb(reg(5)) == 0x60
    bench.outb(reg(4), 0x10)
    for i in range(17):
        bench.outb(reg(0), i)
    assert bench.inb(reg(5)) == 0x63  # the 17th byte overran, the FIFO kept the first 16
    assert [bench.inb(reg(0)) for _ in range(16)] == list(range(16))


def test_break_queues_nul_with_bi() -> None:
    bench, uart = serial_bench()
    uart.receive_break()
    assert bench.inb(reg(5)) == 0x71
    assert bench.inb(reg(5)) == 0x61  # BI cleared by the read, DR stays
    assert bench.inb(reg(0)) == 0


# ---------------------------------------------------------------- interrupts

def test_thre_interrupt_levels_and_iir_acknowledge() -> None:
    bench, _ = serial_bench()
    bench.run(["irq_intercept_in ioapic"])
    assert bench.run([f"outb {reg(1)} 0x02"]) == ["IRQ raise 4", "OK"]
    assert bench.run([f"inb {reg(2)}", f"inb {reg(2)}"]) == ["IRQ lower 4", "OK 0x0002", "OK 0x0001"]
    # a THR write drops THRE then raises it again once the byte has left
    assert bench.run([f"outb {reg(0)} 0x41"]) == ["IRQ raise 4", "OK"]
    assert bench.run([f"outb {reg(1)} 0x00"]) == ["IRQ lower 4", "OK"]


def test_iir_priorities() -> None:
    bench, uart = serial_bench()
    bench.outb(reg(4), 0x10)
    bench.outb(reg(1), 0x0F)
    assert bench.inb(reg(2)) == 0x02  # THRE only
    bench.outb(reg(0), 0x33)  # loop a byte in, then overrun it
    bench.outb(reg(0), 0x34)
    assert bench.inb(reg(2)) == 0x06  # line status beats data and THRE
    bench.inb(reg(5))
    assert bench.inb(reg(2)) == 0x04  # received data
    bench.inb(reg(0))
    assert bench.inb(reg(2)) == 0x02  # THRE again (still pending: not read since)
    bench.inb(reg(2))
    assert bench.inb(reg(2)) == 0x01
    bench.outb(reg(4), 0x00)
    uart.set_modem_lines(cts=False, dsr=True, dcd=True, ri=False)
    assert bench.inb(reg(2)) == 0x00  # modem status, lowest priority
    assert bench.inb(reg(6)) == 0xA1  # DCTS delta with the new levels; the read clears it
    assert bench.inb(reg(2)) == 0x01
    assert bench.levels[COM1_IRQ] == 0


def test_fifo_trigger_levels() -> None:
    for fcr, level in ((0x01, 1), (0x41, 4), (0x81, 8), (0xC1, 14)):
        bench, uart = serial_bench()
        bench.outb(reg(2), fcr)
        bench.outb(reg(1), 0x01)
        bench.outb(reg(4), 0x10)
        for i in range(level - 1):
            bench.outb(reg(0), i)
        assert bench.inb(reg(2)) == 0xC1, fcr  # below the trigger level: no interrupt
        bench.outb(reg(0), 0xEE)
        assert bench.inb(reg(2)) == 0xC4, fcr
        assert bench.levels[COM1_IRQ] == 1


def test_character_timeout_interrupt() -> None:
    bench, uart = serial_bench()
    bench.run(["irq_intercept_in ioapic"])
    bench.outb(reg(2), 0xC1)
    bench.outb(reg(1), 0x01)
    uart.receive(b"x")
    assert bench.inb(reg(2)) == 0xC1
    bench.run(["clock_step 4166639"])  # just under 4 character times (4 * 1041660 ns)
    assert bench.inb(reg(2)) == 0xC1
    assert bench.run(["clock_step 1"]) == ["IRQ raise 4", "OK 4166640"]
    assert bench.inb(reg(2)) == 0xCC
    assert bench.run([f"inb {reg(0)}"]) == ["IRQ lower 4", "OK 0x0078"]


def test_fcr_clear_and_enable_toggle() -> None:
    bench, uart = serial_bench()
    bench.outb(reg(2), 0x01)
    uart.receive(b"abc")
    bench.outb(reg(2), 0x03)  # clear the receive FIFO
    assert bench.inb(reg(5)) == 0x60 and uart.recv_fifo.num == 0
    uart.receive(b"d")
    bench.outb(reg(2), 0x00)  # disabling flushes both FIFOs
    assert bench.inb(reg(5)) == 0x60 and bench.inb(reg(2)) == 0x01


# ---------------------------------------------------------------- migration

def test_vmstate_roundtrip_with_subsections() -> None:
    bench, uart = serial_bench()
    bench.outb(reg(2), 0x81)
    bench.outb(reg(1), 0x01)
    uart.receive(b"xyz")
    bench.run(["clock_step 5000000"])  # the timeout fired: timeout_ipending
    state = uart.save_vmstate()
    blob = save_state(VMSTATE_ISA_SERIAL, state)
    # divider, 8 registers, fcr; then serial/recv_fifo, serial/fifo_timeout_timer? (no: fired),
    # serial/timeout_ipending
    assert blob[:11] == bytes([0x00, 0x0C, 0, 0x01, 0xCC, 0, 0x08, 0x61, 0xB0, 0, 0x81])
    assert b"serial/recv_fifo" in blob and b"serial/timeout_ipending" in blob
    assert b"serial/xmit_fifo" not in blob and b"serial/poll" not in blob

    loaded: dict = {}
    assert load_state(ByteSource(blob), VMSTATE_ISA_SERIAL, loaded, 3, LoadContext()) == 0
    bench2, uart2 = serial_bench()
    assert (uart2.vmstate_id(), Serial16550(instance_id=1).vmstate_id()) == (("serial", 0), ("serial", 1))
    uart2.load_vmstate(loaded)
    assert bench2.inb(reg(2)) == 0xCC
    assert [bench2.inb(reg(0)) for _ in range(3)] == list(b"xyz")

    bad = bytearray(blob)
    bad[7] = 0x21  # LSR without TEMT and no serial/tsr subsection: QEMU refuses it
    ctx = LoadContext()
    assert load_state(ByteSource(bytes(bad)), VMSTATE_ISA_SERIAL, {}, 3, ctx) == -1
    assert ctx.lines == ["inconsistent state in serial device (tsr not empty, tsr_retry=0",
                         "Failed to load serial:state"]


# ---------------------------------------------------------------- the oracle

ORACLE_SCRIPTS = {
    "reset": [f"inb {reg(i)}" for i in range(8)],
    "thre": ["irq_intercept_in ioapic", f"outb {reg(1)} 0x02", f"inb {reg(2)}", f"inb {reg(2)}",
             f"outb {reg(0)} 0x41", f"inb {reg(5)}", f"outb {reg(1)} 0x00", f"outb {reg(1)} 0x02"],
    "loopback_fifo_timeout": ["irq_intercept_in ioapic", f"outb {reg(2)} 0xc7", f"outb {reg(1)} 0x05",
                              f"outb {reg(4)} 0x1b", f"inb {reg(6)}", f"outb {reg(0)} 0x61",
                              f"outb {reg(0)} 0x62", f"inb {reg(2)}", f"inb {reg(5)}", "clock_step 4166639",
                              f"inb {reg(2)}", "clock_step 1", f"inb {reg(2)}", f"inb {reg(0)}", f"inb {reg(2)}",
                              f"inb {reg(0)}", f"inb {reg(5)}", f"inb {reg(2)}"],
    "trigger_overrun": ["irq_intercept_in ioapic", f"outb {reg(2)} 0x41", f"outb {reg(1)} 0x01",
                        f"outb {reg(4)} 0x10"] + [f"outb {reg(0)} {i}" for i in range(17)]
                       + [f"inb {reg(2)}", f"inb {reg(5)}", f"inb {reg(5)}", f"inb {reg(2)}"]
                       + [f"inb {reg(0)}" for _ in range(17)] + [f"inb {reg(5)}"],
    "divisor_words": [f"outb {reg(3)} 0x80", f"outw {reg(0)} 0x0201", f"inw {reg(0)}", f"outb {reg(3)} 0x1f",
                      f"inw {reg(2)}", f"inl {reg(4)}", "outb 0x3ff 0x55", "inb 0x3ff"],
}


@pytest.mark.qemu
@pytest.mark.parametrize("name", sorted(ORACLE_SCRIPTS))
def test_transcript_matches_qemu(name: str) -> None:
    script = ORACLE_SCRIPTS[name]
    bench, _ = serial_bench()
    assert bench.run(script) == qemu_transcript(script, ("-serial", "null"), irqs=(COM1_IRQ,))


# ---------------------------------------------------------------- the emulator process

@pytest.mark.subprocess
def test_emulator_com1_present_only_with_serial_option(qtest_factory) -> None:  # type: ignore[no-untyped-def]
    # -nodefaults creates no serial port (QEMU reads 0xff there); -serial null adds COM1.
    bare = qtest_factory(["-M", "pc", "-nodefaults"])
    assert [bare.qtest.inb(COM1 + i) for i in range(8)] == [0xFF] * 8
    with_com1 = qtest_factory(["-M", "pc", "-nodefaults", "-serial", "null"])
    assert [with_com1.qtest.inb(COM1 + i) for i in range(8)] == QEMU_RESET_VALUES
