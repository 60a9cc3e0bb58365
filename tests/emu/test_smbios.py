"""``emu.devices.smbios``: the pc board's SMBIOS tables and 2.1 anchor.

Byte for byte against QEMU 7.2's own output (``tests/vectors/qemu72-smbios.json``), then the
memory layouts no CI machine can start (16 GiB DIMMs, the extended fields past 2 and 4 TiB,
the moved type 19 handles past 8 TiB), checked field by field against the SMBIOS 2.8 layout.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from emu.devices.smbios import SmbiosConfig, SmbiosError, build_smbios, encode_uuid

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "qemu72-smbios.json").read_text())
GIB = 1 << 30
TIB = 1 << 40

CONFIGS = {
    "default": SmbiosConfig(version="pc-i440fx-7.2"),
    "5G": SmbiosConfig(version="pc-i440fx-7.2", ram_size=5 * GIB, ram_areas=((0, 3 * GIB), (4 * GIB, 2 * GIB))),
    # -smp 4,sockets=2,cores=2: two type 4 tables, each with 2 cores and 2 threads per socket
    "smp": SmbiosConfig(version="pc-i440fx-7.2", sockets=2, cores_per_socket=2, threads_per_socket=2),
}


def structures(tables: bytes) -> list[tuple[int, int, bytes, list[bytes]]]:
    """(type, handle, formatted area after the header, strings) of each structure."""
    out, off = [], 0
    while off < len(tables):
        type_, length, handle = struct.unpack_from("<BBH", tables, off)
        end = tables.index(b"\0\0", off + length)
        strings = tables[off + length:end].split(b"\0") if end > off + length else []
        out.append((type_, handle, tables[off + 4:off + length], strings))
        off = end + 2
    return out


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_tables_and_anchor_equal_qemu_72(case: str) -> None:
    blobs = build_smbios(CONFIGS[case])
    assert blobs.tables.hex() == VECTORS[case]["tables"]
    assert blobs.anchor.hex() == VECTORS[case]["anchor"]


def test_default_structures_handles_and_strings() -> None:
    blobs = build_smbios(SmbiosConfig())
    found = structures(blobs.tables)
    assert [(t, h) for t, h, _, _ in found] == [
        (1, 0x100), (3, 0x300), (4, 0x400), (16, 0x1000), (17, 0x1100), (19, 0x1300), (32, 0x2000), (127, 0x7F00)]
    strings = {t: s for t, _, _, s in found}
    assert strings[1] == [b"QEMU", b"Standard PC (i440FX + PIIX, 1996)", b"pc-i440fx-9.1"]
    assert strings[4] == [b"CPU 0", b"QEMU", b"pc-i440fx-9.1"] and strings[17] == [b"DIMM 0", b"QEMU"]
    assert strings[127] == []
    # the anchor: _SM_ 2.8, largest structure (type 1 with its strings: 81 bytes), total length,
    # count 8, checksums and table address left to the firmware
    a = blobs.anchor
    assert a[:4] == b"_SM_" and a[16:21] == b"_DMI_" and len(a) == 31
    assert struct.unpack_from("<BBBBH", a, 4) == (0, 31, 2, 8, 81)
    assert struct.unpack_from("<BHIHB", a, 21) == (0, len(blobs.tables), 0, 8, 0x28)


def test_uuid_in_smbios_wire_order() -> None:
    uuid = bytes.fromhex("4600cb3238ec4b2f8acb81c6ea54f2d8")
    assert encode_uuid(uuid).hex() == "32cb0046ec382f4b8acb81c6ea54f2d8"
    type1 = structures(build_smbios(SmbiosConfig(uuid=uuid)).tables)[0][2]
    assert type1[4:20] == encode_uuid(uuid)
    assert structures(build_smbios(SmbiosConfig()).tables)[0][2][4:20] == bytes(16)


def test_ram_is_split_into_16_gib_dimms() -> None:
    found = structures(build_smbios(SmbiosConfig(ram_size=40 * GIB + 3,
                                                 ram_areas=((0, 3 * GIB), (4 * GIB, 37 * GIB)))).tables)
    dimms = [(h, s, area) for t, h, area, s in found if t == 17]
    assert [(h, s[0]) for h, s, _ in dimms] == [(0x1100, b"DIMM 0"), (0x1101, b"DIMM 1"), (0x1102, b"DIMM 2")]
    # size in MiB at offset 8 of the formatted area; the last DIMM's size is rounded up
    assert [struct.unpack_from("<H", area, 8)[0] for _, _, area in dimms] == [16384, 16384, 8193]
    t16 = next(area for t, _, area, _ in found if t == 16)
    # maximum capacity in KiB (rounded up) and the DIMM count
    assert struct.unpack_from("<IHH", t16, 3) == (-(-(40 * GIB + 3) // 1024), 0xFFFE, 3)
    t19 = [struct.unpack_from("<II", area) for t, _, area, _ in found if t == 19]
    assert t19 == [(0, 3 * GIB // 1024 - 1), (4 * GIB // 1024, 41 * GIB // 1024 - 1)]


def test_extended_capacity_and_addresses_past_2_and_4_tib() -> None:
    size = 5 * TIB
    found = structures(build_smbios(SmbiosConfig(ram_size=size, ram_areas=((0, 2 * GIB), (4 * GIB, size - 2 * GIB)))).tables)
    t16 = next(area for t, _, area, _ in found if t == 16)
    assert struct.unpack_from("<I", t16, 3)[0] == 0x80000000 and struct.unpack_from("<Q", t16, 11)[0] == size
    low, high = [area for t, _, area, _ in found if t == 19]
    assert struct.unpack_from("<IIHBQQ", low) == (0, 2 * GIB // 1024 - 1, 0x1000, 1, 0, 0)
    # the high range ends past 4 TiB: the 32-bit KiB fields say "see extended", which hold bytes
    assert struct.unpack_from("<IIHBQQ", high) == (0xFFFFFFFF, 0xFFFFFFFF, 0x1000, 1, 4 * GIB, 4 * GIB + size - 2 * GIB - 1)


def test_type_19_handles_move_past_the_dimms_beyond_8_tib() -> None:
    size = 9 * TIB  # 576 DIMMs of 16 GiB: more than the 512 handles between 0x1100 and 0x1300
    found = structures(build_smbios(SmbiosConfig(ram_size=size, ram_areas=((0, 2 * GIB), (4 * GIB, size - 2 * GIB)))).tables)
    dimm_handles = [h for t, h, _, _ in found if t == 17]
    assert len(dimm_handles) == 576 and dimm_handles[-1] == 0x1100 + 575
    assert [h for t, h, _, _ in found if t == 19] == [0x1300 + 64, 0x1300 + 65]


def test_refuses_a_table_longer_than_the_21_anchor_can_say() -> None:
    with pytest.raises(SmbiosError, match="SMBIOS 2.1 table length"):
        build_smbios(SmbiosConfig(sockets=2000))
