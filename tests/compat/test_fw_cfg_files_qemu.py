"""Every fw_cfg file of the ``pc`` board, our binary against Debian's QEMU 7.2.

Both are started with ``-M pc -nodefaults -S`` and the same options; the file directory is read
with fw_cfg DMA through qtest, then every file. The directories must list the same names with
the same sizes and selectors, and the files must hold the same bytes. The one difference allowed
is the machine type's name in the SMBIOS strings: QEMU 7.2's ``pc`` is ``pc-i440fx-7.2``, ours
is ``pc-i440fx-9.1`` (the same length, so the tables line up byte for byte).

The ACPI blobs are built when first read: the ``pm-base`` case programs PIIX4 PM's I/O base
first, as a BIOS does, and the FADT must carry it.
"""
from __future__ import annotations

import struct

import pytest
from test_qtest_compat import PC, Emu, both, needs_qemu

from emu.devices.smbios import ANCHOR_FILE, TABLES_FILE

DESC = 0x1000
DATA = 0x10000
FW_CFG_FILE_DIR = 0x19
PM_CONFIG = 0x80000000 | (1 << 11) | (3 << 8)  # PIIX4 PM, 00:01.3
# what a BIOS does before it reads the ACPI tables: the PM I/O base at 0x600, enabled
PROGRAM_PM_BASE = [f"outl 0xcf8 {PM_CONFIG | 0x40:#x}", "outl 0xcfc 0x601",
                   f"outl 0xcf8 {PM_CONFIG | 0x80:#x}", "outl 0xcfc 0x1"]

CASES: dict[str, tuple[list[str], list[str]]] = {  # (options, qtest commands before the reads)
    "default": ([], []),
    "5G": (["-m", "5G"], []),
    "uuid": (["-uuid", "4600cb32-38ec-4b2f-8acb-81c6ea54f2d8"], []),
    "no-hpet-boot": (["-no-hpet", "-boot", "menu=on,splash-time=300,reboot-timeout=20"], []),
    "odd-size": (["-m", "3001M"], []),
    "no-acpi": (["-no-acpi"], []),  # no PIIX4 PM: no etc/system-states, etc/tpm/log or ACPI tables
    "isa-devices": (["-serial", "null", "-serial", "null", "-device", "pvpanic"], []),
    "pci-device": (["-device", "pvpanic-pci,addr=5"], []),
    "oem-ids": (["-machine", "x-oem-id=ABC,x-oem-table-id=TABLE1"], []),
    # the FADT is rebuilt from the PM base programmed before the first read
    "pm-base": ([], PROGRAM_PM_BASE),
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


def _files(binary: str, args: list[str], before: list[str]) -> dict[str, tuple[int, bytes]]:
    """name -> (selector, data) of every file in the directory."""
    with Emu(binary, [*PC[:2], *PC[4:], *args]) as emu:
        assert emu.conn is not None
        for line in before:
            assert emu.conn.cmd(line)[-1] == b"OK"
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
    ours, qemu = both(_files, *CASES[case])
    for name in (ANCHOR_FILE, TABLES_FILE):
        if name in qemu:
            select, data = qemu[name]
            qemu[name] = (select, data.replace(b"pc-i440fx-7.2\0", b"pc-i440fx-9.1\0"))
    assert sorted(ours) == sorted(qemu)
    assert ours == qemu



def _oem_ids_across_reset(binary: str) -> list[bytes]:
    """The RSDP's OEM id when read, after a qom-set of x-oem-id, and again after system_reset:
    the blobs are rebuilt on the first read after each reset only."""
    from qtest.machine import QTestMachine

    with QTestMachine(binary, ["-M", "pc", "-nodefaults", "-S"], accel_qtest=False) as m:
        q = m.qtest

        def rsdp_oem_id() -> bytes:
            q.outw(0x510, FW_CFG_FILE_DIR)
            count = int.from_bytes(bytes(q.inb(0x511) for _ in range(4)), "big")
            for _ in range(count):
                entry = bytes(q.inb(0x511) for _ in range(64))
                if entry[8:].rstrip(b"\0") == b"etc/acpi/rsdp":
                    q.outw(0x510, int.from_bytes(entry[4:6], "big"))
                    return bytes(q.inb(0x511) for _ in range(15))[9:15]
            raise AssertionError("no etc/acpi/rsdp")

        out = [rsdp_oem_id()]
        m.qmp.cmd("qom-set", path="/machine", property="x-oem-id", value="NEWID")
        out.append(rsdp_oem_id())
        m.qmp.cmd("system_reset")
        m.qmp.wait_event("RESET")
        out.append(rsdp_oem_id())
        return out


@needs_qemu
@pytest.mark.qemu
def test_acpi_blobs_are_rebuilt_on_the_first_read_after_a_reset() -> None:
    ours, qemu = both(_oem_ids_across_reset)
    assert ours == qemu == [b"BOCHS ", b"BOCHS ", b"NEWID\0"]
