"""The empty ATAPI CD-ROM drive of ``emu.devices.ide_ports`` / ``emu.devices.atapi`` on a bench:
one IDE bus with the CD on its master (or slave), its channel's regions mapped at 0x170/0x376,
the interrupt line recorded. Values are QEMU 7.2's (checked against it in
tests/compat/test_cdrom_qemu.py)."""
from __future__ import annotations

import struct

import pytest
from port_io import PortIO

from emu.devices.atapi import atapi_cmd
from emu.devices.ide_ports import (
    END_ATAPI_CMD,
    END_DUMMY,
    VMSTATE_IDE_DRIVE,
    EmptyIdeChannel,
    IdeBus,
    atapi_identify_data,
    ide_serial,
)
from emu.memory import AddressSpace, MemoryRegion
from emu.migration.vmstate import save_state

BASE, CTRL = 0x170, 0x376


class Bench(PortIO):
    def __init__(self, unit: int = 0) -> None:
        self.levels: list[int] = []
        self.bus = IdeBus(self.levels.append)
        self.slot = self.bus.attach_cdrom(unit, ide_serial(1, unit))
        self.bus.reset()
        self.channel = EmptyIdeChannel(self.bus)
        root = MemoryRegion.container("io", 0x10000)
        root.add_subregion(BASE, self.channel.block_io)
        root.add_subregion(CTRL, self.channel.control_io)
        self.io = AddressSpace("io", root)

    @property
    def irq(self) -> int:
        return self.levels[-1] if self.levels else 0

    def regs(self) -> tuple[int, ...]:
        """error, sector count, sector, cylinder low/high, device, alternate status."""
        return tuple(self.inb(BASE + r) for r in range(1, 7)) + (self.inb(CTRL),)

    def packet(self, cdb: list[int], bcl: int = 0x100, feature: int = 0) -> None:
        cdb = (cdb + [0] * 12)[:12]
        self.outb(BASE + 1, feature)
        self.outb(BASE + 4, bcl & 0xFF)
        self.outb(BASE + 5, bcl >> 8)
        self.outb(BASE + 7, 0xA0)
        for i in range(0, 12, 2):
            self.outw(BASE, cdb[i] | cdb[i + 1] << 8)

    def read_data(self, nbytes: int) -> bytes:
        return b"".join(self.inw(BASE).to_bytes(2, "little") for _ in range(nbytes // 2))


def test_reset_signature_and_registers() -> None:
    b = Bench()
    assert b.regs() == (0, 1, 1, 0x14, 0xEB, 0xA0, 0x50)
    assert b.inb(BASE + 7) == 0x50
    assert b.inw(CTRL) == 0xFF50
    assert b.inw(BASE) == 0 and b.inl(BASE) == 0  # no transfer
    # the slave slot (no drive) selected: error/status 0, its registers (signature 0xffff)
    b.outb(BASE + 6, 0x10)
    assert b.regs() == (0, 1, 1, 0xFF, 0xFF, 0xB0, 0)
    assert b.inb(BASE + 7) == 0
    b.outb(BASE + 7, 0xA1)  # commands to the missing slave are ignored
    assert b.slot.status == 0x50 and b.bus.ifs[1].status == 0x50


def test_a_bus_without_drives_still_reads_zero() -> None:
    bus = IdeBus(lambda level: None)
    bus.reset()
    assert [bus.read_register(r) for r in range(8)] == [0] * 8
    assert bus.read_status() == 0


def test_identify_packet_device() -> None:
    b = Bench()
    b.outb(BASE + 7, 0xA1)
    assert b.irq == 1
    assert b.inb(BASE + 7) == 0x58 and b.irq == 0
    data = b.read_data(512)
    assert data == atapi_identify_data("QM00003")
    words = struct.unpack("<256H", data)
    assert words[0] == 0x85C0 and words[49] == 0x0300 and words[88] == 0x203F
    assert data[20:40] == b"MQ0000 3" + b" " * 12  # "QM00003", bytes of each word swapped
    assert data[54:66] == b"EQUMD DVR-MO"  # "QEMU DVD-ROM", bytes of each word swapped
    assert data[46:50] == b".2+5"
    assert b.inb(BASE + 7) == 0x50
    assert b.slot.identify_set == 1
    # the ATA IDENTIFY DEVICE aborts with the packet signature
    b.outb(BASE + 2, 0x55)
    b.outb(BASE + 7, 0xEC)
    assert b.regs() == (0x04, 1, 1, 0x14, 0xEB, 0xA0, 0x41)


def test_test_unit_ready_and_request_sense() -> None:
    b = Bench()
    b.packet([0x00])
    assert b.regs() == (0x20, 0x03, 1, 0x00, 0x01, 0xA0, 0x41)  # NOT READY, status phase
    assert (b.slot.sense_key, b.slot.asc) == (2, 0x3A)
    b.packet([0x03, 0, 0, 0, 18])
    assert b.regs() == (0, 0x02, 1, 18, 0, 0xA0, 0x58)  # data in, 18 bytes
    sense = b.read_data(18)
    assert sense[0] == 0xF0 and sense[2] == 2 and sense[7] == 10 and sense[12] == 0x3A
    assert b.regs()[1] == 0x03 and b.inb(CTRL) == 0x50


def test_unit_attention_allows_only_flagged_commands_and_request_sense_clears_it() -> None:
    b = Bench()
    b.slot.sense_key, b.slot.asc = 6, 0x28
    b.packet([0x5A, 0, 0x01, 0, 0, 0, 0, 0, 0x40])  # MODE SENSE is not ALLOW_UA
    assert (b.slot.error, b.slot.status, b.slot.nsector) == (0x60, 0x01, 0)
    b.packet([0x03, 0, 0, 0, 18])
    assert b.read_data(18)[2] == 6
    assert b.slot.sense_key == 0


def test_inquiry() -> None:
    b = Bench()
    b.packet([0x12, 0, 0, 0, 36])
    data = b.read_data(36)
    assert data[:8] == bytes([5, 0x80, 0, 0x21, 31, 0, 0, 0])
    assert data[8:36] == b"QEMU    QEMU DVD-ROM    2.5+"
    b.packet([0x12, 1, 0x83, 0, 100])  # serial, then vendor/model/serial (needs 100 bytes)
    vpd = b.read_data(100)
    assert vpd[:4] == bytes([5, 0x83, 0, 96]) and vpd[8:15] == b"QM00003"
    assert vpd[28:32] == bytes([2, 1, 0, 68]) and vpd[40:52] == b"QEMU DVD-ROM"
    b.packet([0x12, 1, 0x83, 0, 96])  # the second entry does not fit
    assert b.read_data(28)[:4] == bytes([5, 0x83, 0, 24])
    b.packet([0x12, 1, 0x80, 0, 96])
    assert (b.slot.sense_key, b.slot.asc) == (5, 0x24)


def test_reply_in_chunks_of_the_byte_count_limit() -> None:
    b = Bench()
    b.packet([0x12, 0, 0, 0, 36], bcl=7)  # odd limit: 6-byte chunks
    chunks = []
    while b.slot.status & 0x08:
        assert b.inb(BASE + 2) == 0x02
        size = b.inb(BASE + 4)
        chunks.append(size)
        b.read_data(size)
    assert chunks == [6] * 6 and b.inb(BASE + 2) == 0x03


def test_zero_byte_count_limit_aborts_without_interrupt() -> None:
    b = Bench()
    b.levels.clear()
    b.packet([0x12, 0, 0, 0, 36], bcl=0)
    assert (b.slot.status, b.slot.error) == (0x41, 0x04)
    assert b.levels == [0]  # only the command write's lowering


def test_no_medium_commands_and_unknown_opcodes() -> None:
    b = Bench()
    for op in (0x25, 0x28, 0x2B, 0x43, 0x51, 0xA8, 0xAD, 0xBE):
        b.packet([op])
        assert (b.slot.sense_key, b.slot.asc, b.slot.status) == (2, 0x3A, 0x41), hex(op)
    b.packet([0xFF])
    assert (b.slot.sense_key, b.slot.asc, b.slot.error) == (5, 0x20, 0x50)


def test_tray_lock_and_eject() -> None:
    b = Bench()
    b.packet([0x1E, 0, 0, 0, 1])
    b.packet([0x1B, 0, 0, 0, 2])  # eject while locked
    assert (b.slot.sense_key, b.slot.asc) == (5, 0x53) and not b.slot.tray_open
    b.packet([0x1E, 0, 0, 0, 0])
    b.packet([0x1B, 0, 0, 0, 2])
    assert b.slot.tray_open and b.slot.status == 0x50
    b.packet([0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8])
    assert b.read_data(8) == bytes([0, 4, 4, 0x10, 0, 1, 0, 0])  # media class, tray open
    state = b.slot.save_state()
    assert b"ide_drive/tray_state" in save_state(VMSTATE_IDE_DRIVE, state)


def test_srst_and_device_reset() -> None:
    b = Bench()
    b.outb(BASE + 7, 0xA1)
    b.inw(BASE)
    b.outb(CTRL, 0x04)
    b.outb(CTRL, 0x00)
    assert b.regs() == (1, 1, 1, 0x14, 0xEB, 0xA0, 0x00)  # a packet device clears its status
    assert b.slot.end_transfer == END_DUMMY and b.inw(BASE) == 0
    b.outb(BASE + 7, 0xA1)  # DEVICE RESET is accepted while DRQ is set
    b.levels.clear()
    b.outb(BASE + 7, 0x08)
    assert b.regs() == (0, 1, 1, 0x14, 0xEB, 0xA0, 0x00) and b.levels == [0]


def test_dma_reply_waits_for_the_bus_master() -> None:
    b = Bench()
    b.packet([0x12, 0, 0, 0, 36], feature=1)
    assert b.slot.status == 0x58 and b.bus.dma_pending
    assert b.inw(BASE) == 0  # nothing by PIO
    assert b.slot.end_transfer == END_ATAPI_CMD


def test_pio_state_subsection_carries_the_buffer() -> None:
    b = Bench()
    b.outb(BASE + 7, 0xA0)
    b.outw(BASE, 0x0012)
    body = save_state(VMSTATE_IDE_DRIVE, b.slot.save_state())
    assert b"ide_drive/pio_state" in body
    # (12-byte packet window at offset 2 of the buffer, 10 bytes left, end function ide_atapi_cmd)
    assert body.endswith(struct.pack(">iiBii", 2, 10, END_ATAPI_CMD, 0, 0))


@pytest.mark.parametrize("unit", [0, 1])
def test_cd_on_either_unit(unit: int) -> None:
    b = Bench(unit)
    b.outb(BASE + 6, unit << 4)
    b.outb(BASE + 7, 0xA1)
    assert b.read_data(512)[20:28] == (b"MQ0000 4" if unit else b"MQ0000 3")


def test_atapi_cmd_is_safe_on_a_garbage_packet() -> None:
    b = Bench()
    b.slot.io_buffer[0:12] = bytes([0x46, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0, 0])
    b.slot.lcyl, b.slot.hcyl = 0xFF, 0xFF
    atapi_cmd(b.bus, b.slot)  # GET CONFIGURATION asking for 64 KiB: clamped to 512
    assert b.slot.packet_transfer_size == 0 and b.slot.data_end - b.slot.data_ptr == 20
