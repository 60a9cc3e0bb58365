"""Every fw_cfg file of the ``pc`` board, our binary against Debian's QEMU 7.2.

Both are started with ``-M pc -nodefaults -S`` and the same options; the file directory is read
with fw_cfg DMA through qtest, then every file. The directories must list the same names with
the same sizes and selectors, and the files must hold the same bytes. The one difference allowed
is the machine type's name in the SMBIOS strings: QEMU 7.2's ``pc`` is ``pc-i440fx-7.2``, ours
is ``pc-i440fx-9.1`` (the same length, so the tables line up byte for byte).
"""
from __future__ import annotations

import struct

import pytest
from test_qtest_compat import PC, Emu, both, needs_qemu

from emu.devices.smbios import ANCHOR_FILE, TABLES_FILE

DESC = 0x1000
DATA = 0x10000
FW_CFG_FILE_DIR = 0x19
NOT_YET = {"etc/acpi/rsdp", "etc/acpi/tables", "etc/table-loader"}

CASES = {
    "default": [],
    "5G": ["-m", "5G"],
    "uuid": ["-uuid", "4600cb32-38ec-4b2f-8acb-81c6ea54f2d8"],
    "no-hpet-boot": ["-no-hpet", "-boot", "menu=on,splash-time=300,reboot-timeout=20"],
    "odd-size": ["-m", "3001M"],
    "no-acpi": ["-no-acpi"],  # no PIIX4 PM: no etc/system-states, etc/tpm/log or ACPI tables
}


def _dma_read(emu: Emu, select: int, length: int) -> bytes:
    assert emu.conn is not None
    if length == 0:
        return b""
    desc = struct.pack(">IIQ", (select << 16) | 0x0A, length, DATA)  # select + read
    for line in (f"write {DESC:#x} {len(desc)} 0x{desc.hex()}", "outl 0x514 0",
                 f"outl 0x518 {int.from_bytes(DESC.to_bytes(4, 'big'), 'little'):#x}"):
        assert emu.conn.cmd(line)[-1] == b"OK"
    reply = emu.conn.cmd(f"read {DATA:#x} {length}")[-1].split()
    assert reply[0] == b"OK"
    return bytes.fromhex(reply[1][2:].decode())


def _files(binary: str, args: list[str]) -> dict[str, tuple[int, bytes]]:
    """name -> (selector, data) of every file in the directory."""
    with Emu(binary, [*PC[:2], *PC[4:], *args]) as emu:
        count = struct.unpack(">I", _dma_read(emu, FW_CFG_FILE_DIR, 4))[0]
        raw = _dma_read(emu, FW_CFG_FILE_DIR, 4 + 64 * count)[4:]
        out = {}
        for i in range(count):
            size, select = struct.unpack(">IH", raw[64 * i:64 * i + 6])
            name = raw[64 * i + 8:64 * (i + 1)].rstrip(b"\0").decode()
            out[name] = (select, _dma_read(emu, select, size))
        return out


@needs_qemu
@pytest.mark.qemu
@pytest.mark.parametrize("case", sorted(CASES))
def test_fw_cfg_files_match_qemu(case: str) -> None:
    ours, qemu = both(_files, CASES[case])
    for name in (ANCHOR_FILE, TABLES_FILE):
        select, data = qemu[name]
        qemu[name] = (select, data.replace(b"pc-i440fx-7.2\0", b"pc-i440fx-9.1\0"))
    theirs = {n: v for n, v in qemu.items() if n not in NOT_YET}
    assert sorted(ours) == sorted(theirs)
    # selectors follow the names' order, so they match only once every file is published
    assert {n: d for n, (_, d) in ours.items()} == {n: d for n, (_, d) in theirs.items()}

