"""The i8257 DMA pair (emu.devices.i8257) against QEMU 7.2's hw/dma/i8257.c.

Register semantics on a private ISA bus (``IsaBench`` from test_serial.py), the transfer API
with a RAM address space, and (``qemu`` marker) transcripts replayed on QEMU 7.2 ``-M pc
-nodefaults``, skipped when /root/qemu72/build is absent.
"""
from __future__ import annotations

import pytest
from test_serial import IsaBench, qemu_transcript

from emu.devices.i8257 import I8257, VMSTATE_I8257, create_dma_pair
from emu.memory import AddressSpace, MemoryRegion
from emu.migration.vmstate import save_state


def dma_bench() -> tuple[IsaBench, I8257, I8257, AddressSpace]:
    bench = IsaBench()
    ram_root = MemoryRegion.container("mem", 1 << 32)
    ram_root.add_subregion(0, MemoryRegion.ram("ram", 0x100000))
    mem = AddressSpace("mem", ram_root)
    dma1, dma2 = create_dma_pair(mem)
    for dma in (dma1, dma2):
        for port, region in dma.io_regions:
            bench.map(port, region)
    return bench, dma1, dma2, mem


# ---------------------------------------------------------------- reset values

# inb over 0x00-0x0f and 0xc0-0xdf on QEMU 7.2 `-M pc -nodefaults` (qtest probe): all 0x00 except
# the mask registers at 0x09 and 0xd2/0xd3 (0xff: master clear masks every channel); the page
# registers 0x81-0x83, 0x87, 0x89-0x8b, 0x8f read 0x00; 0x480-0x48f read 0xff (no high pages on pc).
def test_reset_values_match_qemu_probe() -> None:
    bench, *_ = dma_bench()
    assert [bench.inb(p) for p in range(0x10)] == [0] * 9 + [0xFF] + [0] * 6
    assert [bench.inb(p) for p in range(0xC0, 0xE0)] == [0] * 18 + [0xFF, 0xFF] + [0] * 12
    assert [bench.inb(p) for p in (0x81, 0x82, 0x83, 0x87, 0x89, 0x8A, 0x8B, 0x8F)] == [0] * 8


def test_board_regions() -> None:
    _, dma1, dma2, _ = dma_bench()
    assert [(p, r.size) for p, r in dma1.io_regions] == [(0x00, 8), (0x08, 8), (0x81, 3), (0x87, 1)]
    assert [(p, r.size) for p, r in dma2.io_regions] == [(0xC0, 16), (0xD0, 16), (0x89, 3), (0x8F, 1)]
    with_high = I8257(pageh_base=0x480)
    assert [(p, r.size) for p, r in with_high.io_regions][2:] == [(0x81, 3), (0x87, 1), (0x481, 3), (0x487, 3)]


# ---------------------------------------------------------------- registers

def test_address_and_count_through_flip_flop() -> None:
    bench, dma1, _, _ = dma_bench()
    bench.outb(0x0C, 0)  # clear flip-flop
    bench.outb(0x04, 0x34)  # channel 2 address, low then high
    bench.outb(0x04, 0x12)
    bench.outb(0x05, 0xFF)  # count 0x01ff
    bench.outb(0x05, 0x01)
    assert dma1.regs[2].base == [0x1234, 0x01FF]
    assert (bench.inb(0x04), bench.inb(0x04)) == (0x34, 0x12)
    assert (bench.inb(0x05), bench.inb(0x05)) == (0xFF, 0x01)
    bench.inb(0x04)  # leaves the flip-flop on the high byte...
    assert bench.inb(0x04) == 0x12
    bench.outb(0x0C, 0)  # ...until cleared
    assert bench.inb(0x04) == 0x34


def test_sixteen_bit_controller_shifts() -> None:
    bench, _, dma2, _ = dma_bench()
    bench.outb(0xD8, 0)
    bench.outb(0xC4, 0x00)  # channel 5 address 0x8000 words
    bench.outb(0xC4, 0x80)
    assert dma2.regs[1].now[0] == 0x10000  # byte address = words << 1
    assert (bench.inb(0xC4), bench.inb(0xC5)) == (0x00, 0x80)  # odd port: the same register
    assert bench.io.read_uint(0xC4, 2) == 0x8000  # a word read: low byte, then high byte


def test_masks_status_request_and_master_clear() -> None:
    bench, dma1, _, _ = dma_bench()
    bench.outb(0x0A, 0x01)  # unmask channel 1
    assert bench.inb(0x09) == 0xFD
    bench.outb(0x0F, 0x05)
    assert bench.inb(0x09) == 0x05
    bench.outb(0x0E, 0)  # clear all masks
    assert bench.inb(0x09) == 0x00
    bench.outb(0x0B, 0x46)  # mode channel 2: single, write
    assert dma1.regs[2].mode == 0x46
    bench.outb(0x0A, 0x06)  # mask channel 2 so that the request only shows in status
    bench.outb(0x09, 0x06)  # software request channel 2
    assert bench.inb(0x08) == 0x40
    bench.outb(0x09, 0x02)
    assert bench.inb(0x08) == 0x00
    bench.outb(0x08, 0x04)  # controller disable: the only command QEMU accepts
    assert dma1.command == 0x04
    bench.outb(0x08, 0x10)  # rotating priority: refused, the command stays
    assert dma1.command == 0x04
    bench.outb(0x0D, 0)  # master clear
    assert (dma1.command, bench.inb(0x09), dma1.regs[2].mode) == (0, 0xFF, 0x46)


def test_page_registers() -> None:
    bench, dma1, dma2, _ = dma_bench()
    for port, value in ((0x81, 0x12), (0x82, 0x13), (0x83, 0x11), (0x87, 0x10), (0x89, 0x16), (0x8F, 0x14)):
        bench.outb(port, value)
    assert [r.page for r in dma1.regs] == [0x10, 0x11, 0x12, 0x13]
    assert [r.page for r in dma2.regs] == [0x14, 0, 0x16, 0]
    assert bench.io.read_uint(0x81, 2) == 0x1312  # a word is two byte accesses (portio)
    assert bench.io.read_uint(0x82, 2) == 0x1113
    port87 = dma1.io_regions[3][1]
    assert port87.ops.read(0, 2) == 0xFF10  # portio: a word past the end of a run reads 0xff high
    assert port87.ops.read(0, 4) == 0xFFFFFFFF  # and other sizes read all-ones


# ---------------------------------------------------------------- transfers

def program(bench: IsaBench, ch: int, mode: int, addr: int, count: int) -> None:
    bench.outb(0x0C, 0)
    bench.outb(0x0B, mode | ch)
    bench.outb(ch * 2, addr & 0xFF)
    bench.outb(ch * 2, (addr >> 8) & 0xFF)
    bench.outb({0: 0x87, 1: 0x83, 2: 0x81, 3: 0x82}[ch], addr >> 16)
    bench.outb(ch * 2 + 1, count & 0xFF)
    bench.outb(ch * 2 + 1, count >> 8)


def test_transfer_to_memory_and_terminal_count() -> None:
    bench, dma1, _, mem = dma_bench()
    calls: list[tuple[int, int, int]] = []

    def handler(nchan: int, pos: int, length: int) -> int:
        calls.append((nchan, pos, length))
        n = dma1.write_memory(nchan, pos, bytes(range(1, length - pos + 1)))
        dma1.release_dreq(nchan)
        return pos + n

    dma1.register_channel(2, handler)
    program(bench, 2, 0x44, 0x012000, 7)  # single mode, write to memory (device -> RAM)
    bench.outb(0x0A, 0x02)  # unmask
    dma1.hold_dreq(2)
    assert calls == [(2, 0, 8)]
    assert bytes(mem.read(0x12000, 9)) == bytes(range(1, 9)) + b"\0"
    assert bench.inb(0x08) == 0x04  # terminal count on channel 2, DREQ released
    assert bench.inb(0x08) == 0x00  # read clears TC
    assert (bench.inb(0x05), bench.inb(0x05)) == (0xFF, 0xFF)  # remaining count: base - transferred


def test_read_memory_modes() -> None:
    bench, dma1, _, mem = dma_bench()
    mem.write(0x3000, b"ABCDEFGH")
    program(bench, 1, 0x48, 0x3000, 3)  # read from memory
    assert dma1.read_memory(1, 2, 4) == b"CDEF"
    program(bench, 1, 0x40, 0x3000, 3)  # verify: nothing moves
    assert dma1.read_memory(1, 0, 4) == bytes(4)
    program(bench, 1, 0x68, 0x3008, 3)  # address decrement: QEMU's half mirror of the block below
    assert dma1.read_memory(1, 0, 4) == b"HGGH"
    assert dma1.has_autoinitialization(1) is False
    bench.outb(0x0B, 0x59)
    assert dma1.has_autoinitialization(1) is True


def test_masked_or_unregistered_channel_does_not_run() -> None:
    bench, dma1, _, _ = dma_bench()
    calls: list[int] = []
    dma1.register_channel(3, lambda n, pos, length: calls.append(pos) or pos + 1)
    program(bench, 3, 0x44, 0, 3)
    dma1.hold_dreq(3)
    assert calls == []  # masked since reset
    bench.outb(0x0A, 0x03)
    assert calls == [0]
    dma1.release_dreq(3)
    program(bench, 0, 0x44, 0, 3)
    bench.outb(0x0A, 0x00)
    dma1.hold_dreq(0)  # the phony handler makes no progress
    assert dma1.regs[0].now[1] == 0 and bench.inb(0x08) == 0x10


def test_vmstate_layout() -> None:
    bench, dma1, dma2, _ = dma_bench()
    program(bench, 2, 0x44, 0x012345, 0x0100)
    blob = save_state(VMSTATE_I8257, dma1.save_vmstate())
    assert len(blob) == 3 + 4 + 4 * 17
    assert blob[:7] == bytes([0, 0xFF, 0, 0, 0, 0, 0])
    ch2 = blob[7 + 2 * 17:7 + 3 * 17]
    assert ch2 == bytes.fromhex("00002345 00000000 2345 0100 46 01 00 00 00".replace(" ", ""))
    assert (dma1.vmstate_id(), dma2.vmstate_id()) == (("dma", 0), ("dma", 1))
    dma2.load_vmstate(dma1.save_vmstate())
    assert dma2.regs[2].base == [0x2345, 0x0100] and dma2.regs[2].page == 0x01


# ---------------------------------------------------------------- the oracle

ORACLE_SCRIPTS = {
    "reset": [f"inb 0x{p:x}" for p in [*range(0x10), 0x81, 0x82, 0x83, 0x87, 0x89, 0x8A, 0x8B, 0x8F,
                                       *range(0xC0, 0xE0)]],
    "chan_regs": ["outb 0x0c 0", "outb 0x04 0x34", "outb 0x04 0x12", "outb 0x05 0xff", "outb 0x05 0x01",
                  "inb 0x04", "inb 0x04", "inb 0x05", "inw 0x04", "outb 0x0b 0x66", "inb 0x04", "inb 0x04",
                  "outb 0xd8 0", "outw 0xc4 0x8000", "inb 0xc4", "inb 0xc5", "inw 0xc4", "outb 0xc6 0x10",
                  "outb 0xc7 0x20", "inw 0xc6", "outw 0xc6 0x7788", "inw 0xc6"],
    "control": ["outb 0x0a 0x01", "inb 0x09", "outb 0x0f 0x05", "inb 0x09", "outb 0x0e 0", "inb 0x09",
                "outb 0x0a 0x06", "outb 0x09 0x06", "inb 0x08", "inb 0x08", "outb 0x09 0x02", "inb 0x08",
                "outb 0x08 0x10", "outb 0x0d 0", "inb 0x09", "outb 0xd4 0x05", "inb 0xd2", "inb 0xd0",
                "outb 0xdc 0", "inb 0xd3", "inw 0x08", "inl 0x08"],
    "pages": ["outb 0x81 0x12", "outb 0x82 0x13", "outb 0x83 0x11", "outb 0x87 0x10", "outb 0x89 0x16",
              "outb 0x8f 0x14", "inw 0x81", "inw 0x82", "inb 0x83", "inb 0x87", "inb 0x89", "inb 0x8f",
              "outw 0x81 0x3456", "inb 0x81", "inb 0x82"],
}


@pytest.mark.qemu
@pytest.mark.parametrize("name", sorted(ORACLE_SCRIPTS))
def test_transcript_matches_qemu(name: str) -> None:
    script = ORACLE_SCRIPTS[name]
    bench, *_ = dma_bench()
    assert bench.run(script) == qemu_transcript(script, irqs=())
