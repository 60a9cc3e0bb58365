"""The i8254 PIT and port 0x61 (``emu.devices.i8254``, ``emu.devices.pcspk``) under a manual virtual clock.

Register values and IRQ 0 timings are compared with QEMU 7.2: the ``TRANSCRIPT_*`` constants were
recorded by running their commands, one at a time, through
``/root/qemu72/build/qemu-system-x86_64 -M pc -nodefaults -display none -qtest stdio -accel qtest``
(after ``irq_intercept_in ioapic``; columns: command | IRQ events before the reply | reply value).
``test_transcripts_still_match_qemu`` re-runs them through that binary when it is present. The
``MiniBoard`` here wires the devices as QEMU's pc board does (PIT -> HPET legacy input -> GSI 0,
HPET -> PIT IRQ enable, port 0x61 -> PIT channel 2) and reports GSI level changes like qtest does.
"""
from __future__ import annotations

import os
import selectors
import subprocess

import pytest
from vmstate_source import ByteSource

from emu.clock import VirtualClock
from emu.devices.hpet import HPET, HPET_BASE
from emu.devices.i8254 import PIT, PIT_FREQ, muldiv64
from emu.devices.pcspk import PCSpeaker
from emu.irq import IRQ
from emu.memory import AddressSpace, MemoryRegion
from emu.migration.vmstate import LoadContext, load_state, save_state

QEMU72 = "/root/qemu72/build/qemu-system-x86_64"
_SIZES = {"b": 1, "w": 2, "l": 4, "q": 8}


class MiniBoard:
    """The timer part of QEMU's pc board, driven by qtest-like commands (``cmd``)."""

    def __init__(self, hpet: bool = True) -> None:
        self.clock = VirtualClock(manual=True)
        self.clock.enable(True)
        self.levels = [0] * 24
        self.events: list[str] = []
        gsi = [IRQ(self._gsi, n) for n in range(24)]
        io, mem = MemoryRegion.container("io", 0x10000), MemoryRegion.container("mem", 1 << 64)
        self.io, self.mem = AddressSpace("io", io), AddressSpace("mem", mem)
        self.pit = PIT(self.clock)
        self.spk = PCSpeaker(self.pit)
        io.add_subregion(0x40, self.pit.io)
        io.add_subregion(0x61, self.spk.io)
        self.hpet: HPET | None = None
        if hpet:
            self.hpet = HPET(self.clock, intcap=0x4, dma=self.mem)
            mem.add_subregion(HPET_BASE, self.hpet.mmio)
            for i in range(24):
                self.hpet.irqs[i].connect(gsi[i])
            self.pit.irq.connect(self.hpet.gpio_in[None][0])
            self.hpet.pit_enabled.connect(self.pit.gpio_in[None][0])
            self.hpet.reset()  # the machine reset after wiring, as QEMU's first system reset
        else:
            self.pit.irq.connect(gsi[0])
        self.levels = [0] * 24  # qtest's interception starts from all-low

    def _gsi(self, n: int, level: int) -> None:
        if self.levels[n] != level:  # qtest reports changes only
            self.levels[n] = level
            self.events.append(f"IRQ {'raise' if level else 'lower'} {n}")

    def cmd(self, line: str) -> str:
        """Runs one qtest command; returns the reply's value ('' for a plain OK)."""
        op, *args = line.split()
        num = [int(a, 0) for a in args]
        if op == "clock_step":
            return str(self.clock.step(num[0] if num else None))
        if op in ("inb", "inw", "inl"):
            return f"0x{self.io.read_uint(num[0], _SIZES[op[-1]]):04x}"
        if op in ("outb", "outw", "outl"):
            self.io.write_uint(num[0], num[1], _SIZES[op[-1]])
            return ""
        if op.startswith("read"):
            return f"0x{self.mem.read_uint(num[0], _SIZES[op[-1]]):016x}"
        assert op.startswith("write"), line
        self.mem.write_uint(num[0], num[1], _SIZES[op[-1]])
        return ""


def parse_transcript(text: str) -> list[tuple[str, str, str]]:
    rows = []
    for line in text.strip().splitlines():
        cmd, events, reply = (part.strip() for part in line.split("|"))
        rows.append((cmd, events, reply))
    return rows


def replay(text: str, hpet: bool = True) -> list[tuple[str, str, str]]:
    """Runs a transcript's commands on a MiniBoard; the rows as this emulator answers them."""
    board = MiniBoard(hpet)
    out = []
    for cmd, _, _ in parse_transcript(text):
        board.events = []
        reply = board.cmd(cmd)
        out.append((cmd, ", ".join(board.events), reply))
    return out


def run_qemu(text: str, extra: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """The same rows from the real QEMU 7.2 (one command at a time; 30 s budget per reply)."""
    args = [QEMU72, "-M", "pc", *extra, "-nodefaults", "-display", "none", "-qtest", "stdio", "-accel", "qtest"]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    fd = proc.stdout.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    pending = b""

    def next_line() -> str:
        nonlocal pending
        while b"\n" not in pending:
            assert sel.select(timeout=30), "QEMU did not answer"
            chunk = os.read(fd, 65536)
            assert chunk, "QEMU exited"
            pending += chunk
        line, pending = pending.split(b"\n", 1)
        return line.decode()

    out = []
    try:
        for cmd in ["irq_intercept_in ioapic"] + [row[0] for row in parse_transcript(text)]:
            proc.stdin.write(cmd.encode() + b"\n")
            proc.stdin.flush()
            events = []
            line = next_line()
            while line.startswith(("IRQ", "[")):
                if line.startswith("IRQ"):
                    events.append(line)
                line = next_line()
            assert line.startswith("OK"), (cmd, line)
            out.append((cmd, ", ".join(events), line[3:]))
    finally:
        proc.kill()
        proc.wait()
    return out[1:]


# Channel 0 mode 2 (count 0x1000), counter latch, read-back of status and count, channel 2 in
# mode 3 through port 0x61, channel 1 word access and latch.
TRANSCRIPT_PIT_BASICS = """
clock_step 1000000         |                        | 1000000
outb 0x43 0x34             |                        |
outb 0x40 0x00             |                        |
outb 0x40 0x10             |                        |
clock_step 123456          |                        | 1123456
outb 0x43 0x00             |                        |
inb 0x40                   |                        | 0x006d
inb 0x40                   |                        | 0x000f
clock_step 777             |                        | 1124233
outb 0x43 0xc2             |                        |
inb 0x40                   |                        | 0x0034
inb 0x40                   |                        | 0x006c
inb 0x40                   |                        | 0x000f
outb 0x43 0xd2             |                        |
inb 0x40                   |                        | 0x006c
inb 0x40                   |                        | 0x000f
outb 0x43 0xe2             |                        |
inb 0x40                   |                        | 0x0034
inb 0x40                   |                        | 0x006c
clock_step                 | IRQ raise 0            | 4433675
clock_step                 | IRQ lower 0            | 7865675
clock_step                 | IRQ raise 0            | 7866513
clock_step                 | IRQ lower 0            | 11298512
outb 0x43 0xb6             |                        |
outb 0x42 0x35             |                        |
outb 0x42 0x12             |                        |
inb 0x61                   |                        | 0x0030
outb 0x61 0x03             |                        |
inb 0x61                   |                        | 0x0023
clock_step 5000            | IRQ raise 0            | 11303512
inb 0x61                   |                        | 0x0033
inb 0x42                   |                        | 0x002b
inb 0x42                   |                        | 0x0012
outb 0x43 0x9a             |                        |
outb 0x42 0x99             |                        |
inb 0x42                   |                        | 0x0099
outb 0x43 0xe8             |                        |
inb 0x42                   |                        | 0x001a
outb 0x43 0x70             |                        |
inb 0x41                   |                        | 0x0051
inb 0x41                   |                        | 0x00cb
outb 0x43 0x50             |                        |
outb 0x41 0x20             |                        |
clock_step 10000           |                        | 11313512
inb 0x41                   |                        | 0x0015
"""

# Reset-state IRQ 0 (mode 3, 65536), every mode's count and IRQ edges (modes 0-5, and 7 which
# QEMU treats as mode 0), BCD (stored, counted in binary), gate restarts from port 0x61,
# refresh bit toggling on every read, read-back with status only and count only, 16/32-bit reads.
TRANSCRIPT_PIT_MODES = """
clock_step 27462348        |                        | 27462348
clock_step 1               |                        | 27462349
clock_step 27462348        | IRQ raise 0, IRQ lower 0 | 54924697
clock_step 100             |                        | 54924797
clock_step                 |                        | 54925401
clock_step                 | IRQ raise 0            | 54925402
inb 0x40                   |                        | 0x0000
inb 0x40                   |                        | 0x0000
outb 0x43 0x30             |                        |
outb 0x40 0xff             |                        |
outb 0x40 0x00             | IRQ lower 0            |
clock_step 100000          |                        | 55025402
inb 0x40                   |                        | 0x0088
inb 0x40                   |                        | 0x0000
clock_step                 |                        | 55139116
inb 0x40                   |                        | 0x0001
inb 0x40                   |                        | 0x0000
clock_step                 | IRQ raise 0            | 55139117
outb 0x43 0x12             |                        |
outb 0x40 0x50             |                        |
clock_step                 |                        | 55206164
clock_step                 | IRQ lower 0            | 55206165
clock_step                 |                        | 55206165
outb 0x43 0x3a             |                        |
outb 0x40 0x10             |                        |
outb 0x40 0x00             |                        |
clock_step                 |                        | 55219574
clock_step                 | IRQ raise 0            | 55219575
clock_step                 |                        | 55220412
outb 0x43 0x37             |                        |
outb 0x40 0x07             |                        |
outb 0x40 0x00             |                        |
clock_step                 |                        | 55223764
clock_step                 | IRQ lower 0            | 55223765
outb 0x43 0xc2             |                        |
inb 0x40                   |                        | 0x0037
outb 0x43 0x1c             |                        |
outb 0x40 0x03             |                        |
clock_step                 |                        | 55226279
clock_step                 | IRQ raise 0            | 55226280
clock_step                 |                        | 55226280
outb 0x43 0x3e             |                        |
outb 0x40 0x00             |                        |
outb 0x40 0x01             | IRQ lower 0            |
clock_step                 |                        | 55440832
clock_step                 | IRQ raise 0            | 55440833
clock_step                 |                        | 55440833
outb 0x43 0xb2             |                        |
outb 0x42 0x20             |                        |
outb 0x42 0x00             |                        |
inb 0x61                   |                        | 0x0030
outb 0x61 0x01             |                        |
clock_step 5000            |                        | 55445833
inb 0x61                   |                        | 0x0021
inb 0x61                   |                        | 0x0031
outb 0x61 0x00             |                        |
clock_step 100000          |                        | 55545833
inb 0x61                   |                        | 0x0000
outb 0x61 0x01             |                        |
inb 0x61                   |                        | 0x0031
outb 0x43 0xba             |                        |
outb 0x42 0x40             |                        |
outb 0x42 0x00             |                        |
clock_step 10000           |                        | 55555833
inb 0x61                   |                        | 0x0001
outb 0x61 0x00             |                        |
outb 0x61 0x01             |                        |
inb 0x61                   |                        | 0x0011
clock_step 60000           |                        | 55615833
inb 0x61                   |                        | 0x0001
outb 0x43 0xec             |                        |
inb 0x42                   |                        | 0x003a
outb 0x43 0xd8             |                        |
inb 0x42                   |                        | 0x00f9
inb 0x42                   |                        | 0x00ff
inw 0x40                   |                        | 0x8606
inl 0x40                   |                        | 0xf99200
inb 0x43                   |                        | 0x0000
"""

# -machine hpet=off: the PIT drives GSI 0 directly.
TRANSCRIPT_PIT_NO_HPET = """
readq 0xfed00000           |                        | 0x0000000000000000
clock_step                 | IRQ raise 0            | 27462700
clock_step                 | IRQ lower 0            | 27462701
outb 0x43 0x34             |                        |
outb 0x40 0xe8             |                        |
outb 0x40 0x03             |                        |
clock_step                 | IRQ raise 0            | 28301634
clock_step                 | IRQ lower 0            | 29138891
clock_step                 | IRQ raise 0            | 29139729
clock_step                 | IRQ lower 0            | 29976986
"""

TRANSCRIPTS = [("basics", TRANSCRIPT_PIT_BASICS, True), ("modes", TRANSCRIPT_PIT_MODES, True),
               ("no-hpet", TRANSCRIPT_PIT_NO_HPET, False)]


@pytest.mark.parametrize("name,text,hpet", TRANSCRIPTS, ids=[t[0] for t in TRANSCRIPTS])
def test_transcript_matches_qemu_recording(name: str, text: str, hpet: bool) -> None:
    assert replay(text, hpet) == parse_transcript(text)


@pytest.mark.qemu
@pytest.mark.subprocess
@pytest.mark.skipif(not os.access(QEMU72, os.X_OK), reason="QEMU 7.2 oracle build not present")
@pytest.mark.parametrize("name,text,hpet", TRANSCRIPTS, ids=[t[0] for t in TRANSCRIPTS])
def test_transcripts_still_match_qemu(name: str, text: str, hpet: bool) -> None:
    extra = () if hpet else ("-machine", "hpet=off")
    assert run_qemu(text, extra) == parse_transcript(text)


# ---- unit tests on a bare PIT


def make_pit() -> tuple[VirtualClock, PIT, list[tuple[int, int]]]:
    clock = VirtualClock(manual=True)
    clock.enable(True)
    pit = PIT(clock)
    edges: list[tuple[int, int]] = []
    pit.irq.connect(IRQ(lambda n, level: edges.append((clock.now(), level)), 0))
    return clock, pit, edges


def program(pit: PIT, channel: int, control: int, *data: int) -> None:
    pit.io.ops.write(3, (channel << 6) | control, 1)
    for byte in data:
        pit.io.ops.write(channel, byte, 1)


def ns_for_ticks(ticks: int) -> int:
    return muldiv64(ticks, 1_000_000_000, PIT_FREQ)


def test_reset_state_and_region() -> None:
    clock, pit, _ = make_pit()
    assert (pit.io.name, pit.io.size, pit.prop("iobase")) == ("pit", 4, 0x40)
    for i, ch in enumerate(pit.channels):
        assert (ch.mode, ch.count, ch.gate) == (3, 0x10000, int(i != 2))
    assert pit.channels[0].next_transition_time == ns_for_ticks(0x8000) == 27462700
    assert pit.io.ops.read(3, 1) == 0  # the control register is write-only


def test_mode0_counts_down_and_raises_out_once() -> None:
    clock, pit, edges = make_pit()
    clock.advance_to(1000)
    program(pit, 0, 0x30, 100, 0)  # channel 0, LSB then MSB, mode 0, count 100
    assert edges == [(1000, 0)]
    clock.advance_to(1000 + ns_for_ticks(40) + 1)
    program(pit, 0, 0x00)  # latch
    assert (pit.io.ops.read(0, 1), pit.io.ops.read(0, 1)) == (60, 0)
    clock.advance_to(10**9)
    # the timer is due at the truncated nanosecond, where the count has not quite run out yet:
    # like QEMU, the level is refreshed there and the rise follows 1 ns later; then no timer
    end = 1000 + ns_for_ticks(100)
    assert edges == [(1000, 0), (end, 0), (end + 1, 1)]
    assert not pit._timer.pending


@pytest.mark.parametrize("mode,rises", [(2, 4), (3, 5)])
def test_periodic_modes_irq_period(mode: int, rises: int) -> None:
    clock, pit, edges = make_pit()
    program(pit, 0, 0x30 | (mode << 1), 0x00, 0x10)  # count 0x1000
    level = edges[-1][1]
    clock.advance_to(ns_for_ticks(0x1000 * 5) + 10)
    times = []
    for t, new in edges:
        if new and not level:
            times.append(t)
        level = new
    # QEMU's rounding makes mode 2's pulse last almost a period, but rising edges keep the rate
    assert len(times) == rises
    assert {b - a for a, b in zip(times, times[1:])} <= {ns_for_ticks(0x1000), ns_for_ticks(0x1000) + 1}


def test_mode3_count_decrements_twice_per_tick() -> None:
    clock, pit, _ = make_pit()
    program(pit, 1, 0x36, 0x00, 0x01)  # channel 1, word, mode 3, count 256
    clock.advance_to(ns_for_ticks(10) + 1)
    assert pit.channels[1].current_count(clock.now()) == 256 - 20
    program(pit, 1, 0x00)
    assert (pit.io.ops.read(1, 1), pit.io.ops.read(1, 1)) == (236, 0)


def test_latch_is_not_overwritten_until_read() -> None:
    clock, pit, _ = make_pit()
    program(pit, 2, 0x30, 0x34, 0x12)  # mode 0, count 0x1234
    program(pit, 2, 0x00)
    clock.advance_to(ns_for_ticks(0x100) + 1)
    program(pit, 2, 0x00)  # ignored: a latch is pending
    assert (pit.io.ops.read(2, 1), pit.io.ops.read(2, 1)) == (0x34, 0x12)
    assert pit.io.ops.read(2, 1) == 0x34  # live count again (word mode: LSB first)
    assert pit.io.ops.read(2, 1) == 0x11


def test_read_back_status_reports_bcd_mode_and_out_but_counts_binary() -> None:
    clock, pit, _ = make_pit()
    program(pit, 0, 0x35, 0x99, 0x00)  # word, mode 2, BCD
    clock.advance_to(ns_for_ticks(9) + 1)
    pit.io.ops.write(3, 0xC2, 1)  # read-back ch0: status and count
    assert pit.io.ops.read(0, 1) == 0x35  # out 0, rw 3, mode 2, bcd 1
    assert pit.io.ops.read(0, 1) == 0x99 - 9  # binary arithmetic despite the BCD bit
    assert pit.io.ops.read(0, 1) == 0  # the latched count's MSB
    pit.io.ops.write(3, 0xE2, 1)  # status only
    pit.io.ops.write(3, 0xE2, 1)  # a second status latch is ignored while one is pending
    assert pit.io.ops.read(0, 1) == 0x35
    assert pit.io.ops.read(0, 1) == 0x99 - 9  # live count again, LSB then MSB
    assert pit.io.ops.read(0, 1) == 0
    pit.io.ops.write(3, 0xD2, 1)  # count only: no status in front
    assert pit.io.ops.read(0, 1) == 0x99 - 9


def test_lsb_msb_only_access_modes() -> None:
    clock, pit, _ = make_pit()
    program(pit, 0, 0x20, 0x12)  # MSB only: count 0x1200
    assert pit.channels[0].count == 0x1200
    assert pit.io.ops.read(0, 1) == 0x12 and pit.io.ops.read(0, 1) == 0x12
    program(pit, 0, 0x10, 0x34)  # LSB only: count 0x34
    assert pit.channels[0].count == 0x34
    program(pit, 0, 0x10, 0x00)  # 0 means 65536
    assert pit.channels[0].count == 0x10000


def test_gate_rising_edge_restarts_mode1() -> None:
    clock, pit, _ = make_pit()
    program(pit, 2, 0xB2, 0x00, 0x10)  # channel 2, word, mode 1
    clock.advance_to(ns_for_ticks(0x800) + 1)
    assert pit.channel_info(2)[3] == 1
    pit.set_gate(2, 1)  # rising edge: count restarts now
    assert pit.channels[2].count_load_time == clock.now()
    pit.set_gate(2, 0)
    pit.set_gate(2, 0)
    assert pit.channels[2].count_load_time == clock.now()


def test_irq_control_disables_and_reenables_irq0() -> None:
    clock, pit, edges = make_pit()
    control = pit.gpio_in[None][0]
    control.set(0)
    clock.advance_to(10**8)
    assert edges == [] and not pit._timer.pending
    control.set(1)  # re-enabling updates the level at once and re-arms
    assert edges == [(10**8, pit.channels[0].out(10**8))] and pit._timer.pending


def test_vmstate_layout_and_round_trip() -> None:
    clock, pit, _ = make_pit()
    program(pit, 0, 0x34, 0x00, 0x20)
    program(pit, 1, 0x00)
    clock.advance_to(12345)
    state = pit.save_vmstate()
    blob = save_state(pit.vmsd, state)
    assert (pit.vmsd.name, pit.vmsd.version_id, pit.vmsd.minimum_version_id) == ("i8254", 3, 2)
    assert len(blob) == 4 + 3 * 32 + 8
    assert blob[:4] == b"\0\0\0\0" and blob[4:8] == (0x2000).to_bytes(4, "big")
    assert blob[-8:] == pit.channels[0].next_transition_time.to_bytes(8, "big")
    loaded: dict = {}
    assert load_state(ByteSource(blob), pit.vmsd, loaded, 3, LoadContext()) == 0
    clock2 = VirtualClock(manual=True)
    clock2.enable(True)
    clock2.advance_to(12345)
    pit2 = PIT(clock2)
    pit2.load_vmstate(loaded)
    assert pit2.save_vmstate() == state
    assert pit2._timer.expire == pit.channels[0].next_transition_time


def test_port61_bits() -> None:
    board = MiniBoard(hpet=False)
    spk = board.spk
    assert (spk.io.name, spk.io.size, spk.prop("iobase")) == ("pcspk", 1, 0x61)
    assert board.cmd("inb 0x61") == "0x0030"  # refresh toggled on, channel 2 out high
    assert board.cmd("inb 0x61") == "0x0020"
    board.cmd("outb 0x61 0xff")  # only gate and speaker data stick
    assert board.pit.channels[2].gate == 1 and spk.data_on == 1
    assert board.cmd("inb 0x61") == "0x0033"
    board.pit.reset()  # the PIT's reset drops channel 2's gate; the speaker has no reset
    assert board.cmd("inb 0x61") == "0x0022"
    assert spk.save_vmstate() == {"data_on": 1, "dummy_refresh_clock": 0, "migrate": True}
    assert spk.vmsd.needed is not None and spk.vmsd.needed(spk.save_vmstate())
