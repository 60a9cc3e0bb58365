"""The PIIX3 IDE function's register state and its ``0000:00:01.1/ide`` section on the pc board:
layout, reset values, what guest writes to drive-less channels store (task file into both slots,
drive select, device control and SRST, commands on the master slot), the bus-master interrupt
bit, and a save/load round trip into a fresh board."""
from __future__ import annotations

import struct

from vmstate_source import ByteSource

from emu.devices.piix import PIIX3IDE
from emu.machine.options import BoardOptions
from emu.machine.pc import PcMachine
from emu.migration.vmstate import LoadContext, SaveStateEntry, load_state, save_state

KEY = ("0000:00:01.1/ide", 0)
BM = 0xC000
PCI_PART = 4 + 256 + 16
#: a fresh "ide_drive" of an empty slot: mult_sectors 16, identify_set 0, then feature, error,
#: nsector (be32) 1, sector 1, lcyl/hcyl 0xff (no drive), hob_* 0, select 0xa0, status 0x50,
#: lba48, sense_key, asc, cdrom_changed
FRESH_DRIVE = (struct.pack(">ii", 16, 0) + bytes([0, 0]) + struct.pack(">I", 1)
               + bytes([1, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0xA0, 0x50, 0, 0, 0, 0]))
FRESH_BMDMA = bytes(1 + 1 + 4 + 8 + 4 + 1)


def _board() -> PcMachine:
    m = PcMachine(64 << 20, manual_clock=True, options=BoardOptions())
    m.reset()
    return m


def _ide(m: PcMachine) -> PIIX3IDE:
    return next(d for d in m.devices if isinstance(d, PIIX3IDE))


def _entry(m: PcMachine, saving: bool = True) -> SaveStateEntry:
    return next(e for e in m.migration_entries(saving) if (e.idstr, e.instance_id) == KEY)


def _body(m: PcMachine) -> bytes:
    e = _entry(m)
    return save_state(e.vmsd, e.state)


def _out(m: PcMachine, port: int, value: int, size: int = 1) -> None:
    m.address_space_io.write_uint(port, value, size)


def _in(m: PcMachine, port: int, size: int = 1) -> int:
    return m.address_space_io.read_uint(port, size)


def _enable_bm(m: PcMachine) -> None:
    _out(m, 0xCF8, 0x80000920, 4)
    _out(m, 0xCFC, BM | 1, 4)
    _out(m, 0xCF8, 0x80000904, 4)
    _out(m, 0xCFC, 1, 2)


def test_fresh_section_layout() -> None:
    m = _board()
    e = _entry(m)
    assert (e.vmsd.name, e.vmsd.version_id) == ("ide", 3)
    assert [f.name for f in e.vmsd.fields][3:] == [
        "bmdma[0]", "bmdma[1]", "bus[0]", "bus[1]", "bus[0].ifs[0]", "bus[0].ifs[1]", "bus[1].ifs[0]",
        "bus[1].ifs[1]"]
    body = save_state(e.vmsd, e.state)
    config = body[4:260]
    assert body[:4] == struct.pack(">i", 2)
    assert config[:4] == bytes([0x86, 0x80, 0x10, 0x70]) and config[0x09] == 0x80
    assert config[0x20:0x24] == bytes([1, 0, 0, 0])  # BAR4 (at 0x20) is I/O
    assert body[PCI_PART:] == FRESH_BMDMA * 2 + bytes(4) + FRESH_DRIVE * 4


def test_task_file_goes_to_both_slots_and_reads_stay_zero() -> None:
    m = _board()
    ide = _ide(m)
    for port, value in ((0x1F1, 0x11), (0x1F2, 0x22), (0x1F3, 0x33), (0x1F4, 0x44), (0x1F5, 0x55),
                        (0x1F2, 0x66), (0x1F6, 0xE5)):
        _out(m, port, value)
    assert [_in(m, p) for p in range(0x1F0, 0x1F8)] + [_in(m, 0x3F6)] == [0] * 9
    bus = ide.buses[0]
    assert bus.unit == 0  # 0xe5: bit 4 clear
    for slot in bus.ifs:
        assert (slot.feature, slot.nsector, slot.sector, slot.lcyl, slot.hcyl) == (0x11, 0x66, 0x33, 0x44, 0x55)
        assert (slot.hob_feature, slot.hob_nsector, slot.hob_sector, slot.hob_lcyl, slot.hob_hcyl) == (
            0, 0x22, 1, 0xFF, 0xFF)
        assert slot.select == 0xE5
    _out(m, 0x176, 0x10)  # select the slave of the secondary bus
    assert ide.buses[1].unit == 1 and ide.buses[1].ifs[0].select == 0xB0
    # a word write is two byte writes: sector count then sector number
    _out(m, 0x172, 0x1234, 2)
    assert (ide.buses[1].ifs[1].nsector, ide.buses[1].ifs[1].sector) == (0x34, 0x12)


def test_device_control_hob_and_srst() -> None:
    m = _board()
    bus = _ide(m).buses[0]
    _out(m, 0x3F6, 0x80)
    assert bus.cmd == 0x80
    _out(m, 0x1F1, 0x01)  # any register write clears HOB
    assert bus.cmd == 0
    _out(m, 0x1F6, 0xF3)
    _out(m, 0x1F2, 0x09)
    _out(m, 0x3F6, 0x06)  # SRST with nIEN: both slots reset and diagnosed, SRST reads back clear
    assert bus.cmd == 0x02 and bus.unit == 1  # the selected unit survives a soft reset
    for slot in bus.ifs:
        assert (slot.select, slot.status, slot.error, slot.nsector, slot.sector, slot.lcyl, slot.hcyl) == (
            0xA0, 0x50, 0x01, 1, 1, 0xFF, 0xFF)
        assert slot.feature == 0
    _out(m, 0x1F2, 0x05)
    _out(m, 0x3F6, 0x02)  # no edge: nothing resets
    assert bus.ifs[0].nsector == 5


def test_commands_on_an_empty_bus_interrupt_through_the_bus_master() -> None:
    m = _board()
    _enable_bm(m)
    ide = _ide(m)
    bus = ide.buses[0]
    levels: list[int] = []
    m.gsi[14].handler, m.gsi[14].n = (lambda n, level: levels.append(level)), 14
    _out(m, 0x1F7, 0xEC)  # IDENTIFY: no backend, aborted; the completion interrupts
    assert (bus.ifs[0].status, bus.ifs[0].error) == (0x41, 0x04)
    assert levels == [0, 1] and _in(m, BM + 2) == 0x04
    assert _in(m, 0x1F7) == 0 and levels[-1] == 0  # a status read lowers the line
    _out(m, 0x1F2, 0x04)
    _out(m, 0x1F7, 0xC6)  # SET MULTIPLE MODE 4
    assert (bus.ifs[0].mult_sectors, bus.ifs[0].status) == (4, 0x50)
    _out(m, 0x1F2, 0x00)
    _out(m, 0x1F7, 0x40)  # READ VERIFY: a zero count means 256
    assert (bus.ifs[0].nsector, bus.ifs[0].lba48) == (256, 0)
    _out(m, 0x1F6, 0x10)
    bus.ifs[1].status = 0x50
    _out(m, 0x1F7, 0xE5)  # to the missing slave: ignored
    assert bus.ifs[1].status == 0x50 and bus.ifs[1].nsector != 0xFF
    _out(m, BM + 2, 0x04)  # write 1 to clear the interrupt bit
    assert _in(m, BM + 2) == 0


def test_reset_values() -> None:
    m = _board()
    _enable_bm(m)
    ide = _ide(m)
    _out(m, BM, 0x09)
    _out(m, BM + 4, 0x12345678, 4)
    _out(m, 0x1F6, 0x10)
    _out(m, 0x3F6, 0x82)
    _out(m, 0x171, 0x77)
    ide.reset()
    assert (ide.bm_cmd, ide.bm_status, ide.bm_addr) == ([0, 0], [0, 0], [0, 0])
    assert [(b.cmd, b.unit) for b in ide.buses] == [(0, 0), (0, 0)]
    assert all(s.save_state()["feature"] == 0 and s.status == 0x50 and s.mult_sectors == 16
               for b in ide.buses for s in b.ifs)


def test_bus_master_status_bits_go_through_the_compat_byte() -> None:
    m = _board()
    _enable_bm(m)
    _out(m, BM, 0x01)  # start: active
    _out(m, BM + 2, 0x20)  # drive 0 DMA capable
    body = _body(m)
    bm0 = body[PCI_PART:]
    # cmd, migration_compat_status (0x20 is one of the retry bits: masked), addr...
    assert bm0[:2] == bytes([0x01, 0x01])
    sub = b"\x05\x10ide bmdma/status" + struct.pack(">I", 1) + b"\x21"
    assert bm0[19:19 + len(sub)] == sub


def test_round_trip_into_a_fresh_board() -> None:
    src = _board()
    _enable_bm(src)
    for port, value in ((0x1F1, 0x11), (0x1F2, 0x02), (0x1F7, 0xC6), (0x176, 0x10), (0x3F6, 0x82),
                        (BM + 2, 0x60), (BM + 8, 0x09), (0x1F7, 0xEC)):
        _out(src, port, value)
    _out(src, BM + 12, 0xCAFEBAB8, 4)
    streamed = _body(src)
    dst = _board()
    e = _entry(dst, saving=False)
    ctx = LoadContext()
    assert load_state(ByteSource(streamed), e.vmsd, e.state, 3, ctx) == 0, ctx.lines
    dst.migration_loaded([e])
    assert _body(dst) == streamed
    a, b = _ide(src), _ide(dst)
    assert (b.bm_cmd, b.bm_status, b.bm_addr) == (a.bm_cmd, a.bm_status, a.bm_addr)
    assert b.buses[0].ifs[0].mult_sectors == 2 and b.buses[1].unit == 1
    assert _in(dst, BM + 12, 4) == 0xCAFEBAB8  # the BAR mapping follows the loaded config


def test_boot_disk_slot_has_a_drive_signature() -> None:
    m = _board()
    m.attach_boot_disk(bytes(512))
    slot = _ide(m).buses[0].ifs[0]
    assert (slot.lcyl, slot.hcyl) == (0, 0)
    m.reset()
    assert (slot.lcyl, slot.hcyl) == (0, 0)
    assert _in(m, 0x1F7) == 0xFF  # the channel's ports stay unmapped


def test_a_cd_on_the_secondary_master_answers_on_the_board_ports() -> None:
    """IdeBus.attach_cdrom on the board's secondary bus: that channel reads the ATAPI signature
    (as QEMU's default CD-ROM does), the primary channel stays an empty one."""
    m = PcMachine(64 << 20, manual_clock=True, options=BoardOptions())
    _ide(m).buses[1].attach_cdrom(0)
    m.reset()
    assert [_in(m, 0x170 + r) for r in range(1, 8)] == [0, 1, 1, 0x14, 0xEB, 0xA0, 0x50]
    assert _in(m, 0x376) == 0x50
    assert [_in(m, 0x1F0 + r) for r in range(1, 8)] == [0] * 7
    # the secondary master's drive state: lcyl/hcyl carry the packet signature
    body = _body(m)
    secondary_master = body[PCI_PART + 2 * len(FRESH_BMDMA) + 2 * 2 + 2 * len(FRESH_DRIVE):][:len(FRESH_DRIVE)]
    assert secondary_master[15:17] == bytes([0x14, 0xEB])
    assert body.count(FRESH_DRIVE) == 3
