"""The ISA parallel port (emu.devices.parallel) against QEMU 7.2's parallel.c software path.

The device is driven through its port region on a private I/O bus (test_serial's ``IsaBench``),
LPT1 at 0x378 on IRQ 7. The expected values are those QEMU 7.2 answered to the same accesses
(tests/compat/test_parallel_qemu.py replays these sequences on the real QEMU).
"""
from __future__ import annotations

import pytest
from test_serial import IsaBench
from vmstate_source import ByteSource

from emu.devices.parallel import VMSTATE_PARALLEL_ISA, ParallelPort
from emu.migration.vmstate import LoadContext, load_state, save_state

LPT1, LPT_IRQ = 0x378, 7
DATA, STATUS, CONTROL = LPT1, LPT1 + 1, LPT1 + 2


def lpt_bench(out: list[bytes] | None = None) -> tuple[IsaBench, ParallelPort]:
    bench = IsaBench()
    lpt = ParallelPort(out.append if out is not None else None)
    lpt.irq.connect(bench.irq(LPT_IRQ))
    bench.map(LPT1, lpt.io)
    bench.intercepting = True
    return bench, lpt


def strobe(bench: IsaBench, byte: int, control: int = 0x0C) -> None:
    """The BIOS/driver handshake: data, STROBE high, STROBE low (SELECT and INIT kept set)."""
    bench.outb(DATA, byte)
    bench.outb(CONTROL, control | 0x01)
    bench.outb(CONTROL, control)


# ---------------------------------------------------------------- reset values and access sizes

def test_reset_values() -> None:
    bench, _ = lpt_bench()
    # DATA 0xff, STATUS BUSY|ACK|ONLINE|ERROR|TMOUT, CONTROL SELECT|INIT with bits 7-6 set, rest 0xff
    assert [bench.inb(LPT1 + i) for i in range(8)] == [0xFF, 0xD9, 0xCC, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]


def test_word_is_two_byte_accesses_and_dword_reads_all_ones() -> None:
    bench, lpt = lpt_bench()
    assert bench.run(["inw 0x378", "inw 0x379", "inw 0x37e", "inw 0x37f"]) == [
        "OK 0xd9ff", "OK 0xccd9", "OK 0xffff", "OK 0xffff"]
    for port in range(LPT1, LPT1 + 8):
        assert bench.io.read_uint(port, 4) == 0xFFFFFFFF
    bench.io.write_uint(LPT1, 0x0D0D0D41, 4)  # no dword handler: nothing is written
    assert (lpt.dataw, lpt.control) == (0xFF, 0xCC)
    bench.io.write_uint(LPT1, 0x2C42, 2)
    assert (lpt.dataw, lpt.control) == (0x42, 0xCC)  # the high byte went to STATUS (read-only)
    bench.io.write_uint(LPT1 + 1, 0x2C00, 2)
    assert lpt.control == 0xEC


def test_dword_status_read_has_no_side_effect() -> None:
    bench, lpt = lpt_bench()
    strobe(bench, 0x41, control=0x1C)
    assert bench.levels[LPT_IRQ] == 1
    assert bench.io.read_uint(STATUS, 4) == 0xFFFFFFFF
    assert (bench.levels[LPT_IRQ], lpt.status) == (1, 0x59)


# ---------------------------------------------------------------- data, control and the strobe

def test_data_register_and_direction_bit() -> None:
    bench, _ = lpt_bench()
    bench.outb(DATA, 0x5A)
    assert bench.inb(DATA) == 0x5A
    bench.outb(CONTROL, 0x2C)  # input direction: reads show the (undriven) lines
    assert (bench.inb(CONTROL), bench.inb(DATA)) == (0xEC, 0xFF)
    bench.outb(CONTROL, 0x0C)
    assert bench.inb(DATA) == 0x5A


def test_strobe_sends_byte_and_steps_handshake() -> None:
    out: list[bytes] = []
    bench, _ = lpt_bench(out)
    bench.outb(DATA, 0x41)
    bench.outb(CONTROL, 0x0D)
    assert out == [b"A"]
    assert bench.inb(STATUS) == 0x59  # BUSY clears; the strobe is still high, so no step
    assert bench.inb(STATUS) == 0x59
    bench.outb(CONTROL, 0x0C)
    assert [bench.inb(STATUS) for _ in range(4)] == [0x59, 0x19, 0xD9, 0xD9]  # ACK low, then ready


def test_only_a_rising_strobe_with_init_and_select_sends() -> None:
    out: list[bytes] = []
    bench, _ = lpt_bench(out)
    bench.outb(DATA, 0x31)
    bench.outb(CONTROL, 0x0D)
    bench.outb(CONTROL, 0x0D)  # already high: no second byte
    bench.outb(CONTROL, 0x05)  # SELECT clear: nothing
    bench.outb(CONTROL, 0x04)
    bench.outb(CONTROL, 0x05)
    bench.outb(CONTROL, 0x09)  # INIT clear: printer reset instead
    assert out == [b"1"]
    assert bench.inb(STATUS) == 0xD8  # BUSY|ACK|ONLINE|ERROR, the EPP timeout bit gone


def test_several_bytes_in_order() -> None:
    out: list[bytes] = []
    bench, _ = lpt_bench(out)
    for byte in b"hi\n":
        strobe(bench, byte)
        bench.inb(STATUS)
        bench.inb(STATUS)
    assert b"".join(out) == b"hi\n"


# ---------------------------------------------------------------- interrupt

def test_irq_raised_by_strobe_end_and_lowered_by_status_read() -> None:
    bench, lpt = lpt_bench()
    assert bench.run(["outb 0x378 0x41", "outb 0x37a 0x1d", "outb 0x37a 0x1c", "inb 0x37a", "inb 0x379"]) == [
        "OK", "OK", "IRQ raise 7", "OK", "OK 0x00dc", "IRQ lower 7", "OK 0x0059"]
    assert lpt.irq_pending == 0


def test_irq_enable_is_sampled_from_previous_control_value() -> None:
    bench, lpt = lpt_bench()
    bench.outb(CONTROL, 0x0D)
    bench.outb(CONTROL, 0x1C)  # IRQ enable arrives with the falling strobe: too late
    assert (lpt.irq_pending, bench.levels.get(LPT_IRQ, 0)) == (0, 0)
    bench.outb(CONTROL, 0x0C)  # the previous value had it: pending now
    assert (lpt.irq_pending, bench.levels[LPT_IRQ]) == (1, 1)
    bench.outb(DATA, 0x00)  # a data write re-drives the line, still high
    assert bench.levels[LPT_IRQ] == 1
    bench.inb(STATUS)
    assert bench.levels[LPT_IRQ] == 0


def test_reset_restores_values_but_leaves_the_line() -> None:
    bench, lpt = lpt_bench()
    strobe(bench, 0x41, control=0x1C)
    bench.outb(CONTROL, 0x3C)
    lpt.reset()
    assert (lpt.dataw, lpt.datar, lpt.status, lpt.control, lpt.irq_pending) == (0xFF, 0xFF, 0xD9, 0xCC, 0)
    assert bench.levels[LPT_IRQ] == 1  # parallel_reset does not drive the IRQ
    bench.inb(STATUS)
    assert bench.levels[LPT_IRQ] == 0


# ---------------------------------------------------------------- migration

def test_vmstate_layout_and_round_trip() -> None:
    bench, lpt = lpt_bench()
    strobe(bench, 0x41, control=0x1C)
    assert lpt.vmstate_id() == ("parallel_isa", 0)
    assert ParallelPort(instance_id=2).vmstate_id() == ("parallel_isa", 2)
    assert (VMSTATE_PARALLEL_ISA.name, VMSTATE_PARALLEL_ISA.version_id, VMSTATE_PARALLEL_ISA.minimum_version_id) \
        == ("parallel_isa", 1, 1)
    data = save_state(VMSTATE_PARALLEL_ISA, lpt.save_vmstate())
    # dataw, datar, status, control (uint8), irq_pending, epp_timeout (big-endian int32)
    assert data == bytes([0x41, 0xFF, 0x59, 0xDC]) + (1).to_bytes(4, "big") + bytes(4)

    state: dict = {}
    assert load_state(ByteSource(data), VMSTATE_PARALLEL_ISA, state, 1, LoadContext()) == 0
    other = ParallelPort()
    other.load_vmstate(state)
    assert save_state(VMSTATE_PARALLEL_ISA, other.save_vmstate()) == data
    assert (other.dataw, other.status, other.control, other.irq_pending) == (0x41, 0x59, 0xDC, 1)


@pytest.mark.parametrize("version", [0, 2])
def test_vmstate_rejects_other_versions(version: int) -> None:
    ctx = LoadContext()
    assert load_state(ByteSource(bytes(12)), VMSTATE_PARALLEL_ISA, {}, version, ctx) < 0
    assert ctx.lines and "parallel_isa" in ctx.lines[0]


def test_device_sections_list_one_parallel_section() -> None:
    lpt = ParallelPort(instance_id=1)
    [(idstr, instance, vmsd, state)] = lpt.vmstate_sections()
    assert (idstr, instance, vmsd) == ("parallel_isa", 1, VMSTATE_PARALLEL_ISA)
    assert state["state.status"] == 0xD9 and state["state.control"] == 0xCC
    assert lpt.type_name == "isa-parallel"
