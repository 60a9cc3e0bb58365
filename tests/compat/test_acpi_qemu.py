"""``emu.devices.acpi_build`` against Debian's QEMU 7.2: the three ACPI fw_cfg blobs.

QEMU is started with ``-S -qtest stdio`` (no BIOS runs, so the PIIX4 PM base is still 0 and no
64-bit BAR is mapped) and the blobs are read with fw_cfg DMA. The three blobs, our DSDT included,
are compared byte for byte, table by table first for a readable failure; the layout (offsets,
RSDT, loader commands, RSDP) is also compared with QEMU's own DSDT body put in place of ours.
"""
from __future__ import annotations

import functools
import shutil
import struct
import subprocess

import pytest

from emu.devices.acpi_build import (
    LOADER_FILE,
    RSDP_FILE,
    TABLE_FILE,
    AcpiConfig,
    build_acpi,
    dsdt_pieces,
)

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")

DESC_ADDR = 0x1000
DATA_ADDR = 0x10000


class FwCfgReader:
    """A QEMU under qtest, its fw_cfg files read by DMA."""

    def __init__(self, args: list[str]) -> None:
        assert QEMU is not None
        self.proc = subprocess.Popen(
            [QEMU, "-M", "pc", "-nodefaults", "-display", "none", "-S", "-qtest", "stdio", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def cmd(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        while True:
            reply = self.proc.stdout.readline()
            assert reply, "QEMU exited"
            if not reply.startswith("IRQ"):
                return reply.strip()

    def dma_read(self, select: int, length: int) -> bytes:
        desc = struct.pack(">IIQ", (select << 16) | 0x0A, length, DATA_ADDR)
        self.cmd(f"write {DESC_ADDR:#x} {len(desc)} 0x{desc.hex()}")
        self.cmd("outl 0x514 0")
        self.cmd(f"outl 0x518 {int.from_bytes(DESC_ADDR.to_bytes(4, 'big'), 'little'):#x}")
        return bytes.fromhex(self.cmd(f"read {DATA_ADDR:#x} {length}").split()[1][2:])

    def acpi_files(self) -> dict[str, bytes]:
        count = struct.unpack(">I", self.dma_read(0x19, 4))[0]
        directory = self.dma_read(0x19, 4 + 64 * count)[4:]
        out = {}
        for i in range(count):
            entry = directory[64 * i:64 * (i + 1)]
            size, select = struct.unpack(">IH", entry[:6])
            name = entry[8:].rstrip(b"\0").decode()
            if name in (TABLE_FILE, LOADER_FILE, RSDP_FILE):
                out[name] = self.dma_read(select, size)
        return out

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def qemu_acpi(args: list[str]) -> dict[str, bytes]:
    return _qemu_acpi(tuple(args))


@functools.cache
def _qemu_acpi(args: tuple[str, ...]) -> dict[str, bytes]:
    reader = FwCfgReader(list(args))
    try:
        return reader.acpi_files()
    finally:
        reader.close()


def split_tables(data: bytes) -> dict[bytes, bytes]:
    """Signature -> table, walking the blob (FACS has length 64 at offset 4 too)."""
    out, off = {}, 0
    while off < len(data) and data[off:off + 4] != b"\0\0\0\0":
        length = struct.unpack_from("<I", data, off + 4)[0]
        out[data[off:off + 4]] = data[off:off + length]
        off += length
    return out


CASES = {
    "default": ([], AcpiConfig()),
    "smp4": (["-smp", "4"], AcpiConfig(cpus=4, max_cpus=4, apic_ids=[0, 1, 2, 3])),
    "smp2-max4": (["-smp", "2,maxcpus=4"], AcpiConfig(cpus=2, max_cpus=4, apic_ids=[0, 1, 2, 3])),
    "smp10": (["-smp", "10"], AcpiConfig(cpus=10, max_cpus=10, apic_ids=list(range(10)))),
    "m5G": (["-m", "5G"], AcpiConfig(ram_below_4g=0xC0000000, ram_above_4g=0x80000000)),
    "no-hpet": (["-no-hpet"], AcpiConfig(hpet=False)),
    "pvpanic": (["-device", "pvpanic"], AcpiConfig(pvpanic_iobase=0x505)),
    "serial": (["-serial", "null"], AcpiConfig(serial_ports=[(0x3F8, 4)])),
    "serial2": (["-serial", "null", "-serial", "null"], AcpiConfig(serial_ports=[(0x3F8, 4), (0x2F8, 3)])),
    "m3G": (["-m", "3G"], AcpiConfig(ram_below_4g=0xC0000000)),
    "parallel": (["-parallel", "null"], AcpiConfig(parallel_ports=[(0x378, 7)])),
    "serial-parallel2": (["-serial", "null", "-parallel", "null", "-parallel", "null"],
                         AcpiConfig(serial_ports=[(0x3F8, 4)], parallel_ports=[(0x378, 7), (0x278, 7)])),
    # a non-hotpluggable device (std VGA at slot 2): no _SUN/_EJ0/DVNT entry, the VGA's _SxD
    "vga": (["-vga", "std"], AcpiConfig(pci_fixed_slots={0: "", 1: "isa", 2: "vga"})),
    # a hotpluggable device describes its slot as an empty one
    "pci-testdev": (["-device", "pci-testdev,addr=5"], AcpiConfig()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layout_and_fixed_tables_with_qemus_dsdt(case: str) -> None:
    args, config = CASES[case]
    qemu = qemu_acpi(args)
    theirs = split_tables(qemu[TABLE_FILE])
    ours = build_acpi(config, dsdt_body=theirs[b"DSDT"][36:])
    assert ours.tables == qemu[TABLE_FILE]
    assert ours.loader == qemu[LOADER_FILE]
    assert ours.rsdp == qemu[RSDP_FILE]


@pytest.mark.parametrize("case", sorted(CASES))
def test_whole_blobs(case: str) -> None:
    args, config = CASES[case]
    qemu = qemu_acpi(args)
    ours = build_acpi(config)
    theirs_tables, ours_tables = split_tables(qemu[TABLE_FILE]), split_tables(ours.tables)
    assert list(ours_tables) == list(theirs_tables)
    for piece in dsdt_pieces(config):
        assert piece in theirs_tables[b"DSDT"]
    for sig, table in theirs_tables.items():
        assert ours_tables[sig] == table, sig
    assert (ours.tables, ours.loader, ours.rsdp) == (qemu[TABLE_FILE], qemu[LOADER_FILE], qemu[RSDP_FILE])
