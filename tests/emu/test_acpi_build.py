"""Units of ``emu.devices.acpi_aml`` and ``emu.devices.acpi_build``: AML encodings, table
headers and checksums, and the linker/loader commands' files and offsets."""
from __future__ import annotations

import struct

import pytest

from emu.devices import acpi_aml as aml
from emu.devices.acpi_build import (
    LOADER_FILE,
    LOADER_PAD,
    RSDP_FILE,
    TABLE_FILE,
    TABLE_PAD,
    AcpiConfig,
    build_acpi,
)


@pytest.mark.parametrize(("length", "expected"), [
    (0, b"\x01"), (62, b"\x3f"), (63, b"\x41\x04"),  # 63 + 1 needs the 2-byte form
    (0xFFD, b"\x4f\xff"), (0xFFE, b"\x81\x00\x01"),  # 0xffe + 2 crosses 12 bits
    (0xFFFFC, b"\x8f\xff\xff"), (0xFFFFD, b"\xc1\x00\x00\x01"),
])
def test_pkg_length_counts_itself(length: int, expected: bytes) -> None:
    assert aml.pkg_length(length) == expected


def test_pkg_length_without_self_keeps_the_size_rule() -> None:
    assert aml.pkg_length(8, include_self=False) == b"\x08"
    assert aml.pkg_length(63, include_self=False) == b"\x4f\x03"


def test_integers_use_the_shortest_form() -> None:
    assert aml.integer(0) == b"\x00"
    assert aml.integer(1) == b"\x01"
    assert aml.integer(0xF) == b"\x0a\x0f"
    assert aml.integer(0x505) == b"\x0b\x05\x05"
    assert aml.integer(0xFED00000) == b"\x0c\x00\x00\xd0\xfe"
    assert aml.integer(1 << 32) == b"\x0e" + struct.pack("<Q", 1 << 32)
    assert aml.integer((1 << 64) - 1) == b"\xff"


def test_names_and_eisaid() -> None:
    assert aml.name_string("RTC") == b"RTC_"
    assert aml.name_string("\\_SB.PCI0") == b"\\\x2e_SB_PCI0"
    assert aml.name_string("\\_SB.PCI0.ISA") == b"\\\x2f\x03_SB_PCI0ISA_"
    assert aml.eisaid("PNP0B00") == b"\x0c\x41\xd0\x0b\x00"


def test_resource_template_ends_with_an_end_tag() -> None:
    rt = aml.resource_template(aml.irq_no_flags(12))
    assert rt == b"\x11\x08\x0a\x05\x22\x00\x10\x79\x00"


def _tables(data: bytes) -> dict[bytes, tuple[int, bytes]]:
    out, off = {}, 0
    while data[off:off + 4] != b"\0\0\0\0":
        length = struct.unpack_from("<I", data, off + 4)[0]
        out[data[off:off + 4]] = (off, data[off:off + length])
        off += length
    return out


def _commands(loader: bytes) -> list[bytes]:
    return [loader[i:i + 128] for i in range(0, len(loader), 128) if loader[i:i + 4] != b"\0\0\0\0"]


def _file(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode()


@pytest.mark.parametrize("config", [AcpiConfig(), AcpiConfig(hpet=False, cpus=2, max_cpus=4, apic_ids=[0, 1, 2, 3])])
def test_blobs_are_padded_and_every_checksum_command_fixes_a_table(config: AcpiConfig) -> None:
    blobs = build_acpi(config)
    assert (len(blobs.tables), len(blobs.loader), len(blobs.rsdp)) == (TABLE_PAD, LOADER_PAD, 20)
    files = {TABLE_FILE: bytearray(blobs.tables), RSDP_FILE: bytearray(blobs.rsdp)}
    tables = _tables(blobs.tables)
    checked = set()
    for cmd in _commands(blobs.loader):
        if struct.unpack_from("<I", cmd)[0] == 3:
            name = _file(cmd[4:60])
            offset, start, length = struct.unpack_from("<III", cmd, 60)
            data = files[name]
            assert data[offset] == 0  # QEMU leaves checksums to the firmware
            data[offset] = (-sum(data[start:start + length])) & 0xFF
            assert sum(data[start:start + length]) & 0xFF == 0
            checked.add((name, start))
    expected = {(TABLE_FILE, off) for sig, (off, _) in tables.items() if sig != b"FACS"}
    assert checked == expected | {(RSDP_FILE, 0)}
    assert (b"HPET" in tables) == config.hpet


def test_linker_allocates_then_points_at_the_tables() -> None:
    blobs = build_acpi(AcpiConfig())
    cmds = _commands(blobs.loader)
    allocs = [(_file(c[4:60]), *struct.unpack_from("<IB", c, 60)) for c in cmds[:2]]
    assert allocs == [(RSDP_FILE, 16, 2), (TABLE_FILE, 64, 1)]
    tables = _tables(blobs.tables)
    pointers = [(_file(c[4:60]), _file(c[60:116]), *struct.unpack_from("<IB", c, 116))
                for c in cmds if struct.unpack_from("<I", c)[0] == 2]
    facp, rsdt = tables[b"FACP"][0], tables[b"RSDT"][0]
    assert pointers[:2] == [(TABLE_FILE, TABLE_FILE, facp + 36, 4), (TABLE_FILE, TABLE_FILE, facp + 40, 4)]
    assert pointers[-1] == (RSDP_FILE, TABLE_FILE, 16, 4)
    assert struct.unpack_from("<I", blobs.rsdp, 16)[0] == rsdt
    rsdt_entries = struct.unpack_from("<4I", blobs.tables, rsdt + 36)
    assert list(rsdt_entries) == [tables[s][0] for s in (b"FACP", b"APIC", b"HPET", b"WAET")]
    assert struct.unpack_from("<II", blobs.tables, facp + 36) == (tables[b"FACS"][0], tables[b"DSDT"][0])
    assert LOADER_FILE == "etc/table-loader"


def test_madt_revision_and_disabled_cpus() -> None:
    config = AcpiConfig(cpus=1, max_cpus=2, apic_ids=[0, 1], machine_version="9.1")
    madt = _tables(build_acpi(config).tables)[b"APIC"][1]
    assert madt[8] == 3
    assert madt[44:60] == bytes([0, 8, 0, 0, 1, 0, 0, 0, 0, 8, 1, 1, 0, 0, 0, 0])


def test_operator_and_object_encodings() -> None:
    assert aml.package(count=3) == b"\x12\x02\x03"
    assert aml.field_("R", 0x01, ("", 32), ("A", 1)) == b"\x5b\x81\x0d" + b"R___\x01\x00\x20A___\x01"
    assert aml.and_(aml.arg(0), aml.integer(4)) == b"\x7b\x68\x0a\x04\x00"
    assert aml.while_(aml.lless(aml.local(0), aml.local(1)), aml.break_()) == b"\xa2\x05\x95\x60\x61\xa5"
    assert aml.acquire(aml.name_string("BLCK"), 0xFFFF) == b"\x5b\x23BLCK\xff\xff"
    assert aml.processor("C001", 1, 0, 0) == b"\x5b\x83\x0bC001\x01\x00\x00\x00\x00\x00"
    assert aml.touuid("E5C937D0-3553-4D7A-9117-EA4D19C3434D") == bytes.fromhex(
        "1113" "0a10" "d037c9e5" "5335" "7a4d" "9117ea4d19c3434d")


def test_resource_descriptors() -> None:
    assert aml.interrupt([5, 10]) == bytes.fromhex("890a000902" "05000000" "0a000000")
    assert aml.word_space(aml.IO_RANGE, 3, 0xD00, 0xFFFF) == bytes.fromhex("880d00010c03" "0000" "000d" "ffff" "0000" "00f3")
    assert aml.dword_memory(0xA0000, 0xBFFFF, True)[3:6] == b"\x00\x0c\x03"
    qword = aml.qword_memory(1 << 32, (3 << 31) - 1, True)
    assert len(qword) == 46 and struct.unpack_from("<QQQQQ", qword, 6) == (0, 1 << 32, (3 << 31) - 1, 0, 1 << 31)
    assert aml.dma_compat8(2) == b"\x2a\x04\x00"


def _dsdt(config: AcpiConfig) -> bytes:
    return _tables(build_acpi(config).tables)[b"DSDT"][1]


def test_dsdt_hotplug_slots_follow_the_fixed_slots() -> None:
    default, vga = _dsdt(AcpiConfig()), _dsdt(AcpiConfig(pci_fixed_slots={0: "", 1: "isa", 2: "vga"}))
    eject = b"_EJ0\x01PCEJBSEL_SUN"
    assert default.count(eject) == 30 and vga.count(eject) == 29
    assert b"_S1D" in vga and b"_S1D" not in default
    assert b"\x86S10_\x69" in default and b"\x86S10_\x69" not in vga  # DVNT's Notify(S10, Arg1)


def test_dsdt_cpu_objects_and_pci_windows() -> None:
    dsdt = _dsdt(AcpiConfig(cpus=2, max_cpus=3, apic_ids=[0, 1, 4], ram_below_4g=0xC0000000,
                            ram_above_4g=0x80000000))
    assert dsdt.count(b"\x5b\x83") == 3  # a Processor per possible CPU
    assert b"_MAT\x11\x0b\x0a\x08" + bytes([0, 8, 2, 4, 1, 0, 0, 0]) in dsdt  # always enabled
    assert dsdt.count(b"_EJ0\x01CEJ0") == 2  # not the boot CPU
    assert aml.dword_memory(0xC0000000, 0xFEBFFFFF, False) in dsdt
    assert aml.qword_memory(0x180000000, 0x1FFFFFFFF, True) in dsdt
    mapped = _dsdt(AcpiConfig(pci_hole64=(0x800000000, 0x1000000000)))
    assert aml.qword_memory(0x800000000, 0xFFFFFFFFF, True) in mapped


def test_isa_devices_in_qemus_bus_order() -> None:
    dsdt = _dsdt(AcpiConfig(serial_ports=[(0x3F8, 4), (0x2F8, 3)], pvpanic_iobase=0x505))
    order = [dsdt.index(name) for name in (b"PEVT", b"KBD_", b"MOU_", b"FDC0", b"COM2", b"COM1", b"RTC_")]
    assert order == sorted(order)
