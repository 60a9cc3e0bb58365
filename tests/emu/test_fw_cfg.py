"""fw_cfg: the port and DMA registers, the item store and file directory, the pc board's items,
the ``fw_cfg`` VMState and ``-boot`` parsing; compared with QEMU 7.2 where it is built.

In-process tests map the device on a private I/O address space (unassigned ports read 0xff,
as on the pc) and DMA into a private 1 MiB RAM address space."""
from __future__ import annotations

import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from port_io import PortIO
from vmstate_source import ByteSource

from emu.devices import fw_cfg as F
from emu.devices.fw_cfg import (
    BootOptionError,
    BootOptions,
    E820Entry,
    FwCfgError,
    FwCfgIo,
    PcFwCfgConfig,
    build_pc_fw_cfg,
    merge_boot_keyval,
    parse_boot_keyval,
    parse_boot_option,
)
from emu.memory import AccessRules, AddressSpace, CallbackOps, MemoryRegion
from emu.migration.vmstate import LoadContext, load_state, save_state, vmdesc_fields

QEMU72 = Path("/root/qemu72/build/qemu-system-x86_64")
RAM_SIZE = 1 << 20
DESC, BUF = 0x1000, 0x2000


class Bench(PortIO):
    """The device on its own I/O space plus RAM for DMA, with the qtest client's method names."""

    def __init__(self, fw: FwCfgIo | None = None, config: PcFwCfgConfig | None = None) -> None:
        root = MemoryRegion.container("system", 1 << 64)
        root.add_subregion(0, MemoryRegion.ram("ram", RAM_SIZE))
        self.mem = AddressSpace("memory", root)
        self.fw = fw if fw is not None else build_pc_fw_cfg(config or PcFwCfgConfig(), dma_as=lambda: self.mem)
        if self.fw.dma_as is None:
            self.fw.dma_as = self.mem
        io = MemoryRegion.io("io", 1 << 16, CallbackOps(lambda o, s: (1 << 8 * s) - 1, lambda o, v, s: None,
                                                        AccessRules(valid_unaligned=True, impl_unaligned=True)))
        io.add_subregion(F.FW_CFG_IO_BASE, self.fw.io)
        if self.fw.dma_io is not None:
            io.add_subregion(F.FW_CFG_DMA_IO_BASE, self.fw.dma_io)
        self.io = AddressSpace("io", io)

    def memwrite(self, addr: int, data: bytes) -> None:
        self.mem.write(addr, data)

    def memread(self, addr: int, size: int) -> bytes:
        return bytes(self.mem.read(addr, size))


def port_read(m, key: int, n: int) -> bytes:  # type: ignore[no-untyped-def]
    """libqos io_fw_cfg: a 16-bit selector write, then byte reads of the data port."""
    m.outw(0x510, key)
    return bytes(m.inb(0x511) for _ in range(n))


def dma(m, control: int, length: int, address: int = BUF, desc: int = DESC) -> int:  # type: ignore[no-untyped-def]
    """One FWCfgDmaAccess started by the two 32-bit halves; returns the control word written back."""
    m.memwrite(desc, struct.pack(">IIQ", control, length, address))
    m.outl(0x514, 0)
    m.outl(0x518, int.from_bytes(desc.to_bytes(4, "big"), "little"))  # the register is big-endian
    return int(struct.unpack(">I", m.memread(desc, 4))[0])


def dma_read(m, key: int, n: int) -> bytes:  # type: ignore[no-untyped-def]
    assert dma(m, (key << 16) | F.FW_CFG_DMA_CTL_SELECT | F.FW_CFG_DMA_CTL_READ, n) == 0
    return bytes(m.memread(BUF, n)) if n else b""


def directory(m) -> dict[str, tuple[int, int]]:  # type: ignore[no-untyped-def]
    """name -> (selector, size), through DMA."""
    count = struct.unpack(">I", dma_read(m, F.FW_CFG_FILE_DIR, 4))[0]
    raw = dma_read(m, F.FW_CFG_FILE_DIR, 4 + 64 * count)
    out = {}
    for i in range(count):
        size, sel, _, name = struct.unpack(">IHH56s", raw[4 + 64 * i:68 + 64 * i])
        out[name.rstrip(b"\0").decode()] = (sel, size)
    return out


# ---------------------------------------------------------------- port registers

def test_signature_id_and_reads_past_the_end() -> None:
    b = Bench()
    assert port_read(b, F.FW_CFG_SIGNATURE, 6) == b"QEMU\0\0"
    assert struct.unpack("<I", port_read(b, F.FW_CFG_ID, 4))[0] == 3  # traditional + DMA
    assert port_read(b, 0x07, 4) == bytes(4)  # in range, nothing published


def test_without_dma_the_id_is_1_and_there_is_no_dma_region() -> None:
    fw = FwCfgIo(dma_enabled=False)
    assert fw.dma_io is None and fw.prop("dma_enabled") is False
    assert port_read(Bench(fw), F.FW_CFG_ID, 4) == b"\x01\0\0\0"


def test_port_access_sizes_follow_qemu_comb_valid() -> None:
    b = Bench()
    b.outw(0x510, F.FW_CFG_SIGNATURE)
    assert b.inb(0x510) == ord("Q")  # the data read ignores the offset
    assert b.inw(0x510) == 0  # refused: reads 0 and does not advance
    assert b.inb(0x511) == ord("E")
    assert b.inw(0x511) == 0xFF00 | ord("M")  # split: data byte, then the unassigned port 0x512
    # writes: bytes are ignored, 16-bit at 0x511 splits into bytes
    b.outb(0x510, F.FW_CFG_ID)
    b.outb(0x511, F.FW_CFG_ID)
    b.outw(0x511, F.FW_CFG_ID)
    assert b.inb(0x511) == ord("U")
    # a 32-bit access delivered to the region is refused as a whole
    b.fw.io.ops.write(0, F.FW_CFG_ID, 4)
    assert b.fw.io.ops.read(0, 4) == 0 and b.fw.cur_entry == F.FW_CFG_SIGNATURE


def test_32bit_port_accesses_at_0x510_are_refused_through_the_bus() -> None:
    # the 4-byte access goes whole to the 2-byte region (as in QEMU), which refuses it
    b = Bench()
    b.outw(0x510, F.FW_CFG_SIGNATURE)
    assert b.inl(0x510) == 0
    b.outl(0x510, F.FW_CFG_ID)
    assert b.inb(0x511) == ord("Q")


def test_selector_bits_and_range() -> None:
    b = Bench()
    assert port_read(b, F.FW_CFG_IRQ0_OVERRIDE, 5) == b"\x01\0\0\0\0"  # arch-local key
    assert port_read(b, F.FW_CFG_IRQ0_OVERRIDE | F.FW_CFG_WRITE_CHANNEL, 4) == b"\x01\0\0\0"
    assert port_read(b, F.FW_CFG_FILE_DIR | F.FW_CFG_WRITE_CHANNEL, 4) == port_read(b, F.FW_CFG_FILE_DIR, 4)
    assert b.fw.select(0x3F) is True and b.fw.cur_entry == 0x3F  # last file slot: empty
    assert b.fw.select(0x40) is False and b.fw.cur_entry == F.FW_CFG_INVALID
    assert b.inb(0x511) == 0


def test_reset_selects_the_signature_and_keeps_the_dma_address() -> None:
    b = Bench()
    port_read(b, F.FW_CFG_RAM_SIZE, 3)
    b.outl(0x514, 0x01000000)  # high half only: no transfer yet
    b.fw.reset()
    assert (b.fw.cur_entry, b.fw.cur_offset) == (0, 0)
    assert b.fw.dma_addr == 1 << 32
    assert bytes(b.inb(0x511) for _ in range(4)) == b"QEMU"


# ---------------------------------------------------------------- items and the directory

def test_integers_are_little_endian_and_keys_are_added_once() -> None:
    fw = FwCfgIo()
    fw.add_i16(0x0A, 0x1234)
    fw.add_i32(0x0B, 0x12345678)
    fw.add_i64(0x8003, 0x1122334455667788)
    fw.add_string(0x09, "console=ttyS0")
    b = Bench(fw)
    assert port_read(b, 0x0A, 2) == b"\x34\x12"
    assert port_read(b, 0x0B, 4) == b"\x78\x56\x34\x12"
    assert port_read(b, 0x8003, 8) == bytes.fromhex("8877665544332211")
    assert port_read(b, 0x09, 14) == b"console=ttyS0\0"
    with pytest.raises(FwCfgError):
        fw.add_i16(0x0A, 1)
    with pytest.raises(FwCfgError):
        fw.add_i16(0x40, 1)
    fw.modify_i16(0x0A, 0xBEEF)
    assert port_read(b, 0x0A, 2) == b"\xef\xbe"


def test_files_are_sorted_by_name_and_selectors_move() -> None:
    fw = FwCfgIo()
    assert fw.add_file("etc/zz", b"zz") == 0x20
    assert fw.add_file("etc/aa", b"first") == 0x20  # sorts before: etc/zz moves to 0x21
    assert fw.add_file("etc/mm", b"m" * 70) == 0x21
    b = Bench(fw)
    assert directory(b) == {"etc/aa": (0x20, 5), "etc/mm": (0x21, 70), "etc/zz": (0x22, 2)}
    assert port_read(b, 0x22, 3) == b"zz\0"
    assert port_read(b, 0x20, 5) == b"first"
    # the directory item is sized for every slot: count + 32 entries of 64 bytes
    assert len(fw.entry(F.FW_CFG_FILE_DIR) or b"") == 4 + 64 * 32
    fw.modify_file("etc/aa", b"again!")
    assert directory(b)["etc/aa"] == (0x20, 6) and port_read(b, 0x20, 6) == b"again!"
    with pytest.raises(FwCfgError, match="duplicate fw_cfg file name: etc/mm"):
        fw.add_file("etc/mm", b"")


def test_file_names_are_cut_at_55_bytes_and_slots_run_out() -> None:
    fw = FwCfgIo(file_slots=0x10)
    long = "x" * 60
    fw.add_file(long, b"1")
    assert fw.file_names() == ["x" * 55]
    with pytest.raises(FwCfgError, match="duplicate"):
        fw.add_file("x" * 58, b"2")
    for i in range(15):
        fw.add_file(f"f{i:02d}", b"")
    with pytest.raises(FwCfgError):
        fw.add_file("one-more", b"")
    with pytest.raises(FwCfgError, match='"file_slots" must be at least 0x10'):
        FwCfgIo(file_slots=0xF)


# ---------------------------------------------------------------- DMA

def test_dma_signature_register_reads() -> None:
    b = Bench()
    assert [hex(b.inl(0x514)), hex(b.inl(0x518))] == ["0x554d4551", "0x47464320"]  # "QEMU CFG" in memory order
    assert (b.inb(0x514), b.inw(0x516), b.inw(0x515), b.inl(0x516)) == (0x51, 0x554D, 0x4D45, 0x4320554D)


def test_dma_read_skip_and_past_the_end() -> None:
    b = Bench()
    read = F.FW_CFG_DMA_CTL_READ
    assert dma(b, (F.FW_CFG_SIGNATURE << 16) | F.FW_CFG_DMA_CTL_SELECT | F.FW_CFG_DMA_CTL_SKIP, 2) == 0
    b.memwrite(BUF, b"\xaa" * 8)
    assert dma(b, read, 6) == 0  # no select: goes on from offset 2, then zeros
    assert b.memread(BUF, 8) == b"MU\0\0\0\0\xaa\xaa"
    assert b.fw.cur_offset == 4 and b.fw.dma_addr == 0
    # no operation bit: nothing moves, the control word is cleared
    b.memwrite(BUF, b"\xbb")
    assert dma(b, (F.FW_CFG_ID << 16) | F.FW_CFG_DMA_CTL_SELECT, 4) == 0
    assert b.memread(BUF, 1) == b"\xbb" and b.fw.cur_entry == F.FW_CFG_ID


def test_dma_errors() -> None:
    b = Bench()
    # a read-only item refuses DMA writes
    assert dma(b, (F.FW_CFG_ID << 16) | F.FW_CFG_DMA_CTL_SELECT | F.FW_CFG_DMA_CTL_WRITE, 4) == F.FW_CFG_DMA_CTL_ERROR
    # the data goes to unmapped memory
    sel_read = (F.FW_CFG_SIGNATURE << 16) | F.FW_CFG_DMA_CTL_SELECT | F.FW_CFG_DMA_CTL_READ
    assert dma(b, sel_read, 4, address=RAM_SIZE - 2) == F.FW_CFG_DMA_CTL_ERROR
    # an invalid selector reads zeros, writes fail
    b.memwrite(BUF, b"\xcc" * 4)
    assert dma(b, (0x3FFF << 16) | F.FW_CFG_DMA_CTL_SELECT | F.FW_CFG_DMA_CTL_READ, 4) == 0
    assert b.memread(BUF, 4) == bytes(4)
    assert dma(b, F.FW_CFG_DMA_CTL_WRITE, 4) == F.FW_CFG_DMA_CTL_ERROR


def test_dma_write_to_a_writable_file_and_the_64_bit_start() -> None:
    seen: list[tuple[int, int]] = []
    fw = FwCfgIo()
    sel = fw.add_file("etc/vmcoreinfo", bytearray(8), write_cb=lambda off, n: seen.append((off, n)), read_only=False)
    b = Bench(fw)
    b.memwrite(BUF, b"abcdefgh")
    b.memwrite(DESC, struct.pack(">IIQ", (sel << 16) | F.FW_CFG_DMA_CTL_SELECT | F.FW_CFG_DMA_CTL_WRITE, 8, BUF))
    b.io.write_uint(0x514, int.from_bytes(DESC.to_bytes(8, "big"), "little"), 8)  # one 64-bit write
    assert b.memread(DESC, 4) == bytes(4)
    assert fw.entry(sel) == b"abcdefgh" and seen == [(0, 8)]
    # longer than the item: refused
    b.memwrite(DESC, struct.pack(">IIQ", (sel << 16) | F.FW_CFG_DMA_CTL_SELECT | F.FW_CFG_DMA_CTL_WRITE, 9, BUF))
    b.outl(0x514, 0)
    b.outw(0x518, 0)  # 16-bit writes are refused: no transfer
    assert b.memread(DESC, 4) != bytes(4)
    b.outl(0x518, int.from_bytes(DESC.to_bytes(4, "big"), "little"))
    assert struct.unpack(">I", b.memread(DESC, 4))[0] == F.FW_CFG_DMA_CTL_ERROR


# ---------------------------------------------------------------- migration

def test_vmstate_layout_and_round_trip() -> None:
    b = Bench()
    port_read(b, F.FW_CFG_UUID | F.FW_CFG_WRITE_CHANNEL, 3)
    b.outl(0x514, 0x78563412)
    fw = b.fw
    assert fw.vmstate_id() == ("fw_cfg", 0)
    blob = save_state(fw.vmsd, fw.save_vmstate())  # type: ignore[arg-type]
    sub = b"fw_cfg/dma"
    assert blob == (struct.pack(">HI", 0x4002, 3) + bytes([5, len(sub)]) + sub
                    + struct.pack(">IQ", 0, 0x12345678 << 32))
    assert vmdesc_fields(fw.vmsd, fw.save_vmstate())["fields"] == [  # type: ignore[arg-type]
        {"name": "cur_entry", "type": "uint16", "size": 2}, {"name": "cur_offset", "type": "uint32", "size": 4}]
    other = Bench()
    state: dict = {}
    assert load_state(ByteSource(blob), other.fw.vmsd, state, 2, LoadContext()) == 0
    other.fw.load_vmstate(state)
    assert (other.fw.cur_entry, other.fw.cur_offset, other.fw.dma_addr) == (0x4002, 3, 0x12345678 << 32)
    assert bytes(other.inb(0x511) for _ in range(2)) == bytes(2)  # the default UUID's next bytes


def test_vmstate_acpi_mr_subsection_only_for_unaligned_acpi_blobs() -> None:
    fw = FwCfgIo(dma_enabled=False)
    assert save_state(fw.vmsd, fw.save_vmstate()) == struct.pack(">HI", 0, 0)  # type: ignore[arg-type]
    fw.add_file(F.ACPI_RSDP_FILE, bytes(20))
    blob = save_state(fw.vmsd, fw.save_vmstate())  # type: ignore[arg-type]
    assert b"fw_cfg/acpi_mr" in blob and blob.endswith(struct.pack(">QQQ", 0, 0, 20))


# ---------------------------------------------------------------- the pc board's items (QEMU 7.2 values)

def test_pc_items_for_the_default_machine() -> None:
    b = Bench()
    fw = b.fw
    assert directory(b) == {"bios-geometry": (0x20, 0), "bootorder": (0x21, 0), "etc/boot-fail-wait": (0x22, 4),
                            "etc/e820": (0x23, 40), "etc/smbios/smbios-anchor": (0x24, 31),
                            "etc/smbios/smbios-tables": (0x25, 321), "etc/system-states": (0x26, 6),
                            "etc/tpm/log": (0x27, 0)}
    assert fw.entry(F.FW_CFG_UUID) == bytes(16)
    assert fw.entry(F.FW_CFG_RAM_SIZE) == struct.pack("<Q", 128 << 20)
    assert [fw.entry(k) for k in (F.FW_CFG_NOGRAPHIC, F.FW_CFG_NB_CPUS, F.FW_CFG_MAX_CPUS, F.FW_CFG_BOOT_MENU)] == [
        b"\0\0", b"\1\0", b"\1\0", b"\0\0"]
    assert fw.entry(F.FW_CFG_NUMA) == bytes(16)
    assert fw.entry(F.FW_CFG_ACPI_TABLES) == b""
    assert fw.entry(F.FW_CFG_SMBIOS_ENTRIES) is None
    hpet = fw.entry(F.FW_CFG_HPET) or b""
    assert len(hpet) == 121 and hpet[:15] == bytes.fromhex("0101a286800000d0fe000000000000")
    assert not any(hpet[15:])
    assert dma_read(b, 0x22, 4) == b"\xff\xff\xff\xff"
    assert dma_read(b, 0x23, 40).hex() == ("00000000fd000000000000000300000002000000"
                                           "0000000000000000000000080000000001000000")
    assert dma_read(b, 0x26, 6).hex() == "800000818280"
    assert dma_read(b, 0x24, 31)[:4] == b"_SM_" and b"pc-i440fx-9.1\0" in dma_read(b, 0x25, 321)


def test_pc_items_for_a_bigger_machine() -> None:
    config = PcFwCfgConfig(ram_size=5 << 30, below_4g=3 << 30, above_4g=2 << 30, nb_cpus=2, max_cpus=4,
                           uuid=bytes.fromhex("4600cb3238ec4b2f8acb81c6ea54f2d8"), nographic=True, boot_menu=1,
                           splash_time=300, reboot_timeout=20, cpu_node_ids=(0, 0, 1, 1),
                           numa_node_mem=(2 << 30, 3 << 30), hpet=(), acpi=False,
                           bootorder=("/pci@i0cf8/ide@1,1/drive@0/disk@0", "/rom@genroms/linuxboot_dma.bin"),
                           boot_strict=True)
    fw = build_pc_fw_cfg(config)
    assert fw.file_names() == ["bios-geometry", "bootorder", "etc/boot-fail-wait", "etc/boot-menu-wait", "etc/e820",
                               "etc/smbios/smbios-anchor", "etc/smbios/smbios-tables"]
    sel = {n: fw.file_selector(n) for n in fw.file_names()}
    assert fw.entry(sel["etc/boot-menu-wait"]) == b"\x2c\x01"
    assert fw.entry(sel["etc/boot-fail-wait"]) == b"\x14\0\0\0"
    assert fw.entry(sel["bootorder"]) == b"/pci@i0cf8/ide@1,1/drive@0/disk@0\n/rom@genroms/linuxboot_dma.bin\nHALT\0"
    assert fw.entry(sel["etc/e820"]) == b"".join(e.pack() for e in (
        E820Entry(0xFD00000000, 0x300000000, 2), E820Entry(0, 0xC0000000, 1), E820Entry(1 << 32, 0x80000000, 1)))
    assert fw.entry(F.FW_CFG_NUMA) == struct.pack("<7Q", 2, 0, 0, 1, 1, 2 << 30, 3 << 30)
    assert (fw.entry(F.FW_CFG_NB_CPUS), fw.entry(F.FW_CFG_MAX_CPUS)) == (b"\2\0", b"\4\0")
    assert (fw.entry(F.FW_CFG_NOGRAPHIC), fw.entry(F.FW_CFG_BOOT_MENU)) == (b"\1\0", b"\1\0")
    assert (fw.entry(F.FW_CFG_HPET) or b"")[0] == 0xFF  # -no-hpet: QEMU's count stays at 0xff


@pytest.mark.parametrize(("splash_time", "reboot_timeout", "error"), [
    (65536, None, "splash-time is invalid,it should be a value between 0 and 65535"),
    (-1, None, "splash-time is invalid,it should be a value between 0 and 65535"),
    (70000, 70000, "splash-time is invalid,it should be a value between 0 and 65535"),
    (None, 65536, "reboot timeout is invalid,it should be a value between -1 and 65535"),
    (None, -2, "reboot timeout is invalid,it should be a value between -1 and 65535"),
])
def test_pc_timeouts_out_of_range(splash_time: int | None, reboot_timeout: int | None, error: str) -> None:
    with pytest.raises(BootOptionError) as exc:
        build_pc_fw_cfg(PcFwCfgConfig(splash_time=splash_time, reboot_timeout=reboot_timeout))
    assert str(exc.value) == error


def test_pc_no_reboot_timeout_and_limits() -> None:
    fw = build_pc_fw_cfg(PcFwCfgConfig(splash_time=65535, reboot_timeout=-1))
    assert fw.entry(fw.file_selector("etc/boot-fail-wait") or 0) == b"\xff\xff\xff\xff"
    assert fw.entry(fw.file_selector("etc/boot-menu-wait") or 0) == b"\xff\xff"


def test_pc_splash_files(tmp_path: Path) -> None:
    jpeg = tmp_path / "logo.jpg"
    jpeg.write_bytes(b"\xff\xd8" + bytes(40))
    bmp = tmp_path / "logo.bmp"
    bmp.write_bytes(b"BM" + bytes(26) + b"\x18\x00" + bytes(10))
    bad_bmp = tmp_path / "bad.bmp"
    bad_bmp.write_bytes(b"BM" + bytes(26) + b"\x20\x00" + bytes(10))
    reports: list[str] = []
    fw = build_pc_fw_cfg(PcFwCfgConfig(splash=str(jpeg)), report=reports.append)
    assert fw.entry(fw.file_selector("bootsplash.jpg") or 0) == jpeg.read_bytes() and reports == []
    fw = build_pc_fw_cfg(PcFwCfgConfig(splash="logo.bmp", data_dirs=(str(tmp_path),)), report=reports.append)
    assert "bootsplash.bmp" in fw.file_names()
    for name in (str(bad_bmp), str(tmp_path / "missing")):
        fw = build_pc_fw_cfg(PcFwCfgConfig(splash=name), report=reports.append)
        assert not [n for n in fw.file_names() if n.startswith("bootsplash")]
    assert reports == [f"splash file '{bad_bmp}' format not recognized; must be JPEG or 24 bit BMP",
                       f"failed to find file '{tmp_path / 'missing'}'"]


# ---------------------------------------------------------------- -boot

@pytest.mark.parametrize(("value", "expected"), [
    ("cdn", BootOptions(order="cdn")),
    ("order=cd,order=dc", BootOptions(order="dc")),
    ("menu=yes", BootOptions(menu=True)),
    ("menu=n,strict=on", BootOptions(menu=False, strict=True)),
    ("reboot-timeout=0x10", BootOptions(reboot_timeout=16)),
    ("reboot-timeout=010", BootOptions(reboot_timeout=8)),
    ("reboot-timeout=-1", BootOptions(reboot_timeout=-1)),
    ("reboot-timeout=+5", BootOptions(reboot_timeout=5)),
    ("splash-time= 5", BootOptions(splash_time=5)),
    ("order=c,", BootOptions(order="c")),
    ("order=", BootOptions(order="")),
    ("once=d,splash=a,,b.jpg", BootOptions(once="d", splash="a,b.jpg")),
    ("", BootOptions()),
    ("order=c,help", BootOptions(help=True)),
])
def test_boot_option_values(value: str, expected: BootOptions) -> None:
    assert parse_boot_option(value) == expected


# Texts as QEMU 7.2 prints them after "qemu-system-x86_64: " (collected from the oracle).
BOOT_ERRORS = [
    ("menu=foo", "Parameter 'boot.menu' expects 'on' or 'off'"),
    ("menu=ON", "Parameter 'boot.menu' expects 'on' or 'off'"),
    ("menu=on=x", "Parameter 'boot.menu' expects 'on' or 'off'"),
    ("order=z", "Invalid boot device 'z'"),
    ("order=cc", "Boot device 'c' was given twice"),
    ("once=q", "Invalid boot device 'q'"),
    ("order=AB", "Invalid boot device 'A'"),
    ("menu", "Invalid boot device 'u'"),
    ("order=c,,d", "Invalid boot device ','"),
    ("once=c,order=z", "Invalid boot device 'z'"),
    ("reboot-timeout=abc", "Parameter 'boot.reboot-timeout' expects integer"),
    ("reboot-timeout=", "Parameter 'boot.reboot-timeout' expects integer"),
    ("reboot-timeout=5 ", "Parameter 'boot.reboot-timeout' expects integer"),
    ("reboot-timeout=1e3", "Parameter 'boot.reboot-timeout' expects integer"),
    ("reboot-timeout=9223372036854775808", "Parameter 'boot.reboot-timeout' expects integer"),
    ("splash-time=x,reboot-timeout=y", "Parameter 'boot.splash-time' expects integer"),
    ("strict=maybe", "Parameter 'boot.strict' expects 'on' or 'off'"),
    ("foo=bar", "Parameter 'boot.foo' is unexpected"),
    ("a.b=1", "Parameter 'boot.a' is unexpected"),
    ("order.x=1", "Parameters 'boot.order.*' are unexpected"),
    ("foo=1,order=z", "Parameter 'boot.foo' is unexpected"),
    ("menu=maybe,foo=1", "Parameter 'boot.menu' expects 'on' or 'off'"),
    ("order=z,menu=x", "Parameter 'boot.menu' expects 'on' or 'off'"),
    ("foo=1,bar=2", "Parameter 'boot.bar' is unexpected"),
    (",menu=on", "-boot ,menu=on: Invalid parameter ''"),
    ("=c", "-boot =c: Invalid parameter ''"),
    ("menu=on,cd", "-boot menu=on,cd: Expected '=' after parameter 'cd'"),
    ("order=c,menu", "-boot order=c,menu: Expected '=' after parameter 'menu'"),
    ("a b=1", "-boot a b=1: Invalid parameter 'a b'"),
    ("x" * 130 + "=1", f"-boot {'x' * 130}=1: Parameter '{'x' * 130}' is too long"),
]


@pytest.mark.parametrize(("value", "error"), BOOT_ERRORS)
def test_boot_option_errors(value: str, error: str) -> None:
    with pytest.raises(BootOptionError) as exc:
        parse_boot_option(value)
    assert str(exc.value) == error


def test_boot_options_merge_and_fw_cfg_values() -> None:
    merged, _ = parse_boot_keyval("order=z,menu=on")
    merge_boot_keyval(merged, parse_boot_keyval("order=c,splash-time=12")[0])
    opts = F.boot_options_from_keyval(merged)  # -boot order=z -boot order=c is fine in QEMU
    assert opts == BootOptions(order="c", menu=True, splash_time=12) and opts.boot_menu == 1
    assert BootOptions(menu=False).boot_menu == 0 and BootOptions().boot_menu == 0
    with pytest.raises(BootOptionError, match=r"Parameters 'order\.\*' used inconsistently"):
        parse_boot_option("order=c,order.x=1")
    assert F.BOOT_HELP_TEXT.splitlines()[0] == "boot-opts options:"


# ---------------------------------------------------------------- against QEMU 7.2

needs_qemu72 = pytest.mark.skipif(not QEMU72.exists(), reason=f"{QEMU72} is absent")

# Published by the board outside build_pc_fw_cfg (the ACPI blobs at machine-done, the vapic ROM);
# tests/compat/test_fw_cfg_files_qemu.py compares the whole machine's files.
NOT_PRODUCED = {"etc/acpi/rsdp", "etc/acpi/tables", "etc/table-loader", "genroms/kvmvapic.bin"}
WELL_KNOWN = {F.FW_CFG_SIGNATURE: 4, F.FW_CFG_ID: 4, F.FW_CFG_UUID: 16, F.FW_CFG_RAM_SIZE: 8,
              F.FW_CFG_NOGRAPHIC: 2, F.FW_CFG_NB_CPUS: 2, F.FW_CFG_MAX_CPUS: 2, F.FW_CFG_BOOT_MENU: 2,
              F.FW_CFG_IRQ0_OVERRIDE: 4, F.FW_CFG_HPET: 121, F.FW_CFG_SMBIOS_ENTRIES: 8, 0x0C: 2}

ORACLE_CONFIGS: dict[str, tuple[list[str], PcFwCfgConfig]] = {
    "default": ([], PcFwCfgConfig(machine_name="pc-i440fx-7.2")),
    "numa-5G": (["-m", "5G", "-smp", "2,maxcpus=4", "-object", "memory-backend-ram,id=m0,size=2G",
                 "-object", "memory-backend-ram,id=m1,size=3G", "-numa", "node,memdev=m0,cpus=0-1",
                 "-numa", "node,memdev=m1,cpus=2-3", "-boot", "menu=on,splash-time=300,reboot-timeout=20,strict=on",
                 "-uuid", "4600cb32-38ec-4b2f-8acb-81c6ea54f2d8", "-machine", "graphics=off"],
                PcFwCfgConfig(ram_size=5 << 30, below_4g=3 << 30, above_4g=2 << 30, nb_cpus=2, max_cpus=4,
                              uuid=bytes.fromhex("4600cb3238ec4b2f8acb81c6ea54f2d8"), nographic=True, boot_menu=1,
                              splash_time=300, reboot_timeout=20, boot_strict=True, cpu_node_ids=(0, 0, 1, 1),
                              numa_node_mem=(2 << 30, 3 << 30), machine_name="pc-i440fx-7.2",
                              smp_topology=(1, 4, 1))),
}


def _snapshot(m, numa_len: int) -> dict:  # type: ignore[no-untyped-def]
    """Everything the guest can read that this model produces: keys, the directory minus the
    files it does not produce, and those files' bytes."""
    files = {n: v for n, v in directory(m).items() if n not in NOT_PRODUCED}
    keys = {hex(k): dma_read(m, k, n) for k, n in WELL_KNOWN.items()}
    keys["numa"] = dma_read(m, F.FW_CFG_NUMA, numa_len)
    return {"names": sorted(files), "sizes": {n: s for n, (_, s) in files.items()},
            "data": {n: dma_read(m, sel, s) for n, (sel, s) in files.items()}, "keys": keys}


@pytest.mark.qemu
@needs_qemu72
@pytest.mark.parametrize("name", sorted(ORACLE_CONFIGS))
def test_items_match_qemu(name: str) -> None:
    from qtest.machine import QTestMachine

    args, config = ORACLE_CONFIGS[name]
    numa_len = 8 * (1 + config.max_cpus + len(config.numa_node_mem)) + 8  # and a word past the end
    with QTestMachine(QEMU72, ["-M", "pc", "-nodefaults", "-S", *args]) as qemu:
        theirs = _snapshot(qemu.qtest, numa_len)
        listed = set(directory(qemu.qtest))
    ours = _snapshot(Bench(config=config), numa_len)
    assert ours == theirs
    assert NOT_PRODUCED <= listed


PORT_SCRIPT: list[tuple[str, int, int]] = [
    ("outw", 0x510, 0), ("inb", 0x510, 0), ("inb", 0x511, 0), ("inw", 0x510, 0), ("inb", 0x511, 0),
    ("inw", 0x511, 0), ("inb", 0x511, 0), ("outb", 0x510, 1), ("inb", 0x511, 0), ("outb", 0x511, 1),
    ("inb", 0x511, 0), ("inl", 0x510, 0), ("outl", 0x510, 1), ("inb", 0x511, 0), ("inl", 0x511, 0), ("outw", 0x511, 0x0100), ("inb", 0x511, 0), ("outw", 0x510, 0x4019), ("inb", 0x511, 0),
    ("inb", 0x511, 0), ("inb", 0x511, 0), ("outw", 0x510, 0xC002), ("inb", 0x511, 0), ("outw", 0x510, 0x40),
    ("inb", 0x511, 0), ("outw", 0x510, 0xFFFF), ("inb", 0x511, 0), ("outw", 0x510, 0x8004), ("inb", 0x511, 0),
    ("inb", 0x511, 0), ("inl", 0x514, 0), ("inl", 0x518, 0), ("inb", 0x517, 0), ("inw", 0x515, 0),
    ("inl", 0x516, 0), ("inw", 0x51A, 0), ("inb", 0x512, 0), ("inb", 0x51C, 0), ("outw", 0x514, 0x1234),
    ("outb", 0x518, 0x10),
]


def _run_ports(m) -> list[int | None]:  # type: ignore[no-untyped-def]
    replies: list[int | None] = []
    for op, port, value in PORT_SCRIPT:
        fn: Callable = getattr(m, op)
        replies.append(fn(port) if op.startswith("in") else fn(port, value))
    return replies


@pytest.mark.qemu
@needs_qemu72
def test_port_registers_match_qemu() -> None:
    from qtest.machine import QTestMachine

    with QTestMachine(QEMU72, ["-M", "pc", "-nodefaults", "-S"]) as qemu:
        theirs = _run_ports(qemu.qtest)
    assert _run_ports(Bench()) == theirs


@pytest.mark.qemu
@needs_qemu72
@pytest.mark.parametrize(("value", "error"), [e for e in BOOT_ERRORS if "boot.bar" not in e[1]][::3])
def test_boot_errors_match_qemu(value: str, error: str) -> None:
    proc = subprocess.run([str(QEMU72), "-M", "pc", "-nodefaults", "-display", "none", "-accel", "qtest",
                           "-qtest", "null", "-S", "-boot", value], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == f"qemu-system-x86_64: {error}"
