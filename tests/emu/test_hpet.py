"""The HPET (``emu.devices.hpet``): registers, counter, comparators, IRQ routing, legacy mode, VMState.

``TRANSCRIPT_HPET`` was recorded from QEMU 7.2 exactly as the transcripts of ``test_i8254`` (same
command line, ``irq_intercept_in ioapic`` first) and is re-checked against that binary when present.
"""
from __future__ import annotations

import os

import pytest
from test_i8254 import QEMU72, MiniBoard, parse_transcript, replay, run_qemu
from vmstate_source import ByteSource

from emu.clock import VirtualClock
from emu.devices.hpet import HPET, HPET_BASE
from emu.irq import IRQ
from emu.memory import AddressSpace, MemoryRegion
from emu.migration.vmstate import LoadContext, load_state, save_state

# Capability/ID, counter writes while halted, timer 0 in 64-bit one-shot (edge, route 2), the
# PIT on IRQ 0 through the HPET, level-triggered interrupt status and its clearing, periodic mode
# with SETVAL and the double fire QEMU produces on an exact comparator match, legacy replacement
# (timer 0 -> IRQ 0, timer 1 -> IRQ 8, the PIT cut off and re-enabled), counter halt, 32-bit mode,
# FSB enable, the registers of timer 3 (one past the last, reachable in QEMU) and timer 4, read-only
# and reserved bits, and sub-word or unaligned accesses.
TRANSCRIPT_HPET = """
readq 0xfed00000           |                        | 0x009896808086a201
readl 0xfed000f0           |                        | 0x0000000000000000
writel 0xfed000f0 0x1000   |                        |
writel 0xfed000f4 0x2      |                        |
readq 0xfed000f0           |                        | 0x0000000200001000
writel 0xfed00108 0x3000   |                        |
writel 0xfed0010c 0x2      |                        |
writel 0xfed00100 0x0404   |                        |
readq 0xfed00100           |                        | 0x0000000400000434
readq 0xfed00108           |                        | 0x0000000200003000
writel 0xfed00010 0x1      |                        |
clock_step 1000            |                        | 1000
readq 0xfed000f0           |                        | 0x0000000200001064
readl 0xfed000f4           |                        | 0x0000000000000002
clock_step                 | IRQ raise 2, IRQ lower 2 | 81920
clock_step                 | IRQ raise 0            | 27462700
clock_step                 | IRQ lower 0            | 27462701
readl 0xfed00020           |                        | 0x0000000000000000
writel 0xfed00100 0x0406   |                        |
writel 0xfed00108 0x9000   |                        |
clock_step                 | IRQ raise 2            | 27462711
readl 0xfed00020           |                        | 0x0000000000000001
clock_step 100             |                        | 27462811
readl 0xfed00020           |                        | 0x0000000000000001
writel 0xfed00020 0x1      | IRQ lower 2            |
readl 0xfed00020           |                        | 0x0000000000000000
clock_step                 |                        | 54925401
writel 0xfed00100 0x004c   |                        |
writel 0xfed00108 0x100    |                        |
readq 0xfed00100           |                        | 0x000000040000003c
writel 0xfed00108 0x64     |                        |
readq 0xfed00108           |                        | 0x0000000200000100
clock_step                 | IRQ raise 0            | 54925402
clock_step                 | IRQ lower 0            | 54925411
clock_step                 | IRQ raise 0, IRQ lower 0 | 54925601
clock_step                 | IRQ raise 0, IRQ lower 0 | 54925611
clock_step                 | IRQ raise 0, IRQ lower 0 | 54926601
readq 0xfed00108           |                        | 0x000000020053dfb4
writel 0xfed00010 0x3      |                        |
clock_step                 | IRQ raise 0, IRQ lower 0 | 54926611
clock_step                 | IRQ raise 0, IRQ lower 0 | 54927601
clock_step                 | IRQ raise 0, IRQ lower 0 | 54927611
writel 0xfed00128 0x500    |                        |
writel 0xfed0012c 0x0      |                        |
readq 0xfed00128           |                        | 0x0000000000000500
writel 0xfed00120 0x0004   |                        |
writel 0xfed00128 0xffffff |                        |
clock_step                 | IRQ raise 8, IRQ lower 8 | 54927621
readq 0xfed000f0           |                        | 0x000000020053e01a
writel 0xfed00010 0x1      | IRQ raise 0            |
clock_step                 | IRQ lower 0            | 54928601
clock_step                 | IRQ raise 0, IRQ lower 0 | 54928611
writel 0xfed00010 0x0      |                        |
readq 0xfed000f0           |                        | 0x000000020053e07d
clock_step 10000           |                        | 54938611
readq 0xfed000f0           |                        | 0x000000020053e07d
writel 0xfed00140 0x714e   |                        |
readq 0xfed00140           |                        | 0x000000040000717e
writel 0xfed00148 0x12345678 |                        |
writel 0xfed0014c 0x9abcdef0 |                        |
readq 0xfed00148           |                        | 0x0000000012345678
writel 0xfed00150 0x11223344 |                        |
writel 0xfed00154 0x55667788 |                        |
readq 0xfed00150           |                        | 0x5566778811223344
readq 0xfed00160           |                        | 0x0000000000000000
writel 0xfed00160 0x0004   |                        |
readq 0xfed00160           |                        | 0x0000000000000004
readq 0xfed00180           |                        | 0x0000000000000000
writel 0xfed00180 0x0004   |                        |
readq 0xfed00180           |                        | 0x0000000000000000
readq 0xfed00010           |                        | 0x0000000000000000
writel 0xfed00014 0xffffffff |                        |
writel 0xfed00010 0xfffffffc |                        |
readq 0xfed00010           |                        | 0x0000000000000000
writel 0xfed00000 0        |                        |
writeq 0xfed00100 0x00000000ffffffff |                        |
readq 0xfed00100           |                        | 0x0000000400007f7e
readl 0xfed00118           |                        | 0x0000000000000000
readl 0xfed0001c           |                        | 0x0000000000000000
readw 0xfed00000           |                        | 0x0000000000000000
readb 0xfed00004           |                        | 0x0000000000000000
readl 0xfed00002           |                        | 0x0000000000000000
readq 0xfed003f8           |                        | 0x0000000000000000
"""


def test_transcript_matches_qemu_recording() -> None:
    assert replay(TRANSCRIPT_HPET) == parse_transcript(TRANSCRIPT_HPET)


@pytest.mark.qemu
@pytest.mark.subprocess
@pytest.mark.skipif(not os.access(QEMU72, os.X_OK), reason="QEMU 7.2 oracle build not present")
def test_transcript_still_matches_qemu() -> None:
    assert run_qemu(TRANSCRIPT_HPET) == parse_transcript(TRANSCRIPT_HPET)


class Bench:
    """An HPET alone, its 24 GSI outputs recorded as (time, line, level)."""

    def __init__(self, **kw: object) -> None:
        self.clock = VirtualClock(manual=True)
        self.clock.enable(True)
        self.mem_root = MemoryRegion.container("mem", 1 << 64)
        self.ram = MemoryRegion.ram("ram", 0x1000)
        self.mem_root.add_subregion(0, self.ram)
        self.mem = AddressSpace("mem", self.mem_root)
        self.hpet = HPET(self.clock, intcap=0x4, dma=self.mem, **kw)  # type: ignore[arg-type]
        self.mem_root.add_subregion(HPET_BASE, self.hpet.mmio)
        self.log: list[tuple[int, int, int]] = []
        for i in range(24):
            self.hpet.irqs[i].connect(IRQ(lambda n, level: self.log.append((self.clock.now(), n, level)), i))
        self.pit_enable: list[int] = []
        self.hpet.pit_enabled.connect(IRQ(lambda n, level: self.pit_enable.append(level), 0))

    def rd(self, off: int, size: int = 4) -> int:
        return self.mem.read_uint(HPET_BASE + off, size)

    def wr(self, off: int, value: int, size: int = 4) -> None:
        self.mem.write_uint(HPET_BASE + off, value, size)


def test_capabilities_and_reset_values() -> None:
    b = Bench()
    assert (b.hpet.mmio.name, b.hpet.mmio.size) == ("hpet", 0x400)
    assert b.rd(0x000, 8) == 0x009896808086A201  # 3 timers, 64-bit, legacy capable, 10 ns
    for tn in range(3):
        assert b.rd(0x100 + 0x20 * tn, 8) == 0x0000000400000030  # intcap IRQ 2, periodic+64-bit caps
        assert b.rd(0x108 + 0x20 * tn, 8) == 0xFFFFFFFFFFFFFFFF
    assert b.rd(0x010, 8) == 0 and b.rd(0x0F0, 8) == 0
    assert Bench(msi=True).rd(0x100) & 0x8000  # FSB capability only with msi=on
    assert Bench(timers=5).rd(0x000) == 0x8086A401
    assert len(b.hpet.gpio_out["sysbus-irq"]) == 32 and len(b.hpet.gpio_in[None]) == 2


def test_counter_follows_clock_only_while_enabled() -> None:
    b = Bench()
    b.clock.advance_to(1000)
    assert b.rd(0xF0, 8) == 0
    b.wr(0xF0, 0x100)
    b.wr(0x10, 1)
    b.clock.advance_to(1000 + 12345)
    assert b.rd(0xF0, 8) == 0x100 + 1234  # 10 ns per tick
    b.wr(0x10, 0)
    b.clock.advance_to(10**6)
    assert b.rd(0xF0, 8) == 0x100 + 1234


def test_comparator_low_half_alone_leaves_high_half_all_ones() -> None:
    b = Bench()
    b.wr(0x108, 500)  # the high half keeps its reset value: the comparator is in the past
    b.wr(0x100, 0x4 | (5 << 9))
    b.wr(0x10, 1)
    b.clock.advance_to(10**6)
    assert b.rd(0x108, 8) == 0xFFFFFFFF000001F4
    assert b.log == [(10, 5, 1), (10, 5, 0)]  # QEMU fires one tick later for a past comparator


def test_one_shot_edge_and_level() -> None:
    b = Bench()
    b.wr(0x108, 500, 8)  # timer 0 comparator (two 32-bit writes)
    b.wr(0x100, 0x4 | (5 << 9))  # enabled, edge, route 5
    b.wr(0x128, 1000, 8)  # timer 1 comparator
    b.wr(0x120, 0x6 | (7 << 9))  # enabled, level, route 7
    b.wr(0x10, 1)
    b.clock.advance_to(20000)
    assert b.log == [(5000, 5, 1), (5000, 5, 0), (10000, 7, 1)]
    assert b.rd(0x20) == 0x2  # only the level-triggered timer latches its status
    b.wr(0x20, 0x1)  # clearing a bit that is not set does nothing
    assert b.rd(0x20) == 0x2 and len(b.log) == 3
    b.wr(0x20, 0x2)  # write-1-to-clear withdraws the level
    assert b.log[-1] == (20000, 7, 0) and b.rd(0x20) == 0


def test_periodic_timer_rate() -> None:
    b = Bench()
    b.wr(0x100, 0x4 | 0x8 | 0x40)  # enabled, periodic, SETVAL
    b.wr(0x10C, 0)  # SETVAL: comparator high half
    b.wr(0x100, 0x4 | 0x8 | 0x40)
    b.wr(0x108, 100)  # SETVAL: comparator low half, and the period's
    assert b.rd(0x108, 8) == 100 and b.hpet.timers[0].period == 100
    b.wr(0x10, 1)
    b.clock.advance_to(5000)
    rises = [t for t, n, level in b.log if level]
    # QEMU fires once on the exact match and again one tick later, where it advances the comparator
    assert rises == [1000, 1010, 2000, 2010, 3000, 3010, 4000, 4010, 5000]
    assert b.rd(0x108) == 500


def test_32bit_one_shot_fires_at_wrap_then_at_comparator() -> None:
    b = Bench()
    b.wr(0xF0, 0xFFFFFF00)
    b.wr(0x100, 0x4 | 0x100)  # enabled, 32-bit
    b.wr(0x108, 0x10)
    b.wr(0x10, 1)
    b.clock.advance_to(10**5)
    assert [t for t, n, level in b.log if level] == [0xFF * 10, (0x100 + 0x10) * 10]


def test_legacy_mode_routes_and_gates_pit_and_rtc() -> None:
    b = Bench()
    pit_in, rtc_in = b.hpet.gpio_in[None]
    pit_in.set(1)
    rtc_in.set(1)
    assert b.log == [(0, 0, 1), (0, 8, 1)]  # forwarded to GSI 0 and 8
    b.log.clear()
    b.wr(0x10, 0x2)  # legacy replacement on
    assert b.pit_enable[-1] == 0 and b.log == [(0, 0, 0), (0, 8, 0)]
    pit_in.set(0)
    rtc_in.set(0)
    rtc_in.set(1)
    assert b.log == [(0, 0, 0), (0, 8, 0)]  # both inputs are cut off
    b.wr(0x128, 50, 8)
    b.wr(0x120, 0x4 | (20 << 9))  # timer 1: its route field is ignored in legacy mode
    b.wr(0x10, 0x3)
    b.clock.advance_to(1000)
    assert b.log[2:] == [(500, 8, 1), (500, 8, 0)]
    b.log.clear()
    b.wr(0x10, 0x1)  # legacy off: PIT re-enabled, RTC level restored
    assert b.pit_enable[-1] == 1 and b.log == [(1000, 0, 0), (1000, 8, 1)]


def test_legacy_mode_disables_the_pit_timer() -> None:
    board = MiniBoard()
    assert board.hpet is not None and board.pit._timer.pending
    board.cmd("writel 0xfed00010 0x2")
    assert board.pit.channels[0].irq_disabled == 1 and not board.pit._timer.pending
    board.cmd("writel 0xfed00010 0x0")
    assert board.pit.channels[0].irq_disabled == 0 and board.pit._timer.pending


def test_fsb_delivery_writes_memory() -> None:
    b = Bench()
    b.wr(0x110, 0xCAFE)  # value
    b.wr(0x114, 0x800)  # address
    b.wr(0x108, 10, 8)
    b.wr(0x100, 0x4 | 0x4000)  # enabled, FSB (switching FSB on first withdraws the line)
    b.wr(0x10, 1)
    b.clock.advance_to(1000)
    assert b.mem.read_uint(0x800, 4) == 0xCAFE and b.log == [(0, 0, 0)]


def test_vmstate_layout_and_round_trip() -> None:
    b = Bench()
    b.wr(0x108, 5000, 8)
    b.wr(0x100, 0x6)
    b.wr(0x10, 1)
    b.hpet.gpio_in[None][1].set(1)  # RTC level: the rtc_irq_level subsection is needed
    b.clock.advance_to(777)
    vmsd = b.hpet.vmsd
    assert vmsd is not None and (vmsd.name, vmsd.version_id, vmsd.minimum_version_id) == ("hpet", 2, 1)
    state = b.hpet.save_vmstate()
    blob = save_state(vmsd, state)
    body = 8 * 3 + 1 + 3 * 42
    assert blob[:8] == (1).to_bytes(8, "big") and blob[24] == 3
    assert blob[25 + 36:25 + 42] == b.hpet.timers[0].timer.expire.to_bytes(8, "big")[2:]
    assert blob[body:] == (b"\x05\x12hpet/rtc_irq_level" + (1).to_bytes(4, "big") + b"\x01"
                           + b"\x05\x0bhpet/offset" + (1).to_bytes(4, "big")
                           + b.hpet.hpet_offset.to_bytes(8, "big"))
    loaded: dict = {}
    assert load_state(ByteSource(blob), vmsd, loaded, 2, LoadContext()) == 0
    other = Bench()
    other.clock.advance_to(777)
    other.hpet.load_vmstate(loaded)
    assert other.hpet.save_vmstate() == state
    assert other.rd(0xF0) == b.rd(0xF0) == 77
    other.clock.advance_to(10**5)
    assert other.rd(0x20) == 1  # the migrated comparator fired


def test_vmstate_rejects_bad_timer_count() -> None:
    b = Bench()
    blob = bytearray(save_state(b.hpet.vmsd, b.hpet.save_vmstate()))  # type: ignore[arg-type]
    blob[24] = 40
    ctx = LoadContext()
    assert load_state(ByteSource(bytes(blob)), b.hpet.vmsd, {}, 2, ctx) < 0  # type: ignore[arg-type]
    assert ctx.lines[0] == "Input validation failed: num_timers in range"
