"""QEMU's firmware configuration device (fw_cfg) as the x86 ``pc`` board maps it, and ``-boot``.

This module owns:

* :class:`FwCfgIo` (QOM ``fw_cfg_io``, parent ``fw_cfg``; the board adds it as
  ``/machine/fw_cfg``): the item store (well-known keys 0x00..0x1f, the arch-local keys at
  0x8000, files from 0x20 with their sorted directory at key 0x19), the 2-byte ``fwcfg`` port
  region (16-bit selector writes, byte data reads; a 16-bit read or any other write is refused
  as QEMU's ``fw_cfg_comb_valid`` refuses it) and the 8-byte ``fwcfg.dma`` region (big-endian
  "QEMU CFG" signature on reads, the descriptor address in two big-endian 32-bit halves, the
  transfer done through the ``AddressSpace`` given), its reset and its ``fw_cfg`` VMState.
* :func:`build_pc_fw_cfg`: the items QEMU 7.2's ``pc`` board publishes (``hw/i386/fw_cfg.c``,
  ``hw/nvram/fw_cfg.c``, ``hw/i386/pc.c``, ``hw/acpi/core.c``) from the machine's
  configuration. ACPI tables, SMBIOS tables and option ROMs are not generated here.
* :func:`parse_boot_option`: ``-boot`` parsed as QEMU 7.2 does (keyval syntax, then the
  ``BootConfiguration`` visit and the boot-device checks), with QEMU's error texts.
"""
from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from emu.devices.base import Device
from emu.devices.smbios import ANCHOR_FILE as SMBIOS_ANCHOR_FILE
from emu.devices.smbios import TABLES_FILE as SMBIOS_TABLES_FILE
from emu.devices.smbios import SmbiosConfig, build_smbios
from emu.firmware_path import find_file
from emu.memory import AccessRules, AddressSpace, CallbackOps, MemoryRegion
from emu.migration.vmstate import Field, VMStateDescription
from emu.qom import register_type

# ---- selector keys (include/standard-headers/linux/qemu_fw_cfg.h, hw/i386/fw_cfg.h)
FW_CFG_SIGNATURE = 0x00
FW_CFG_ID = 0x01
FW_CFG_UUID = 0x02
FW_CFG_RAM_SIZE = 0x03
FW_CFG_NOGRAPHIC = 0x04
FW_CFG_NB_CPUS = 0x05
FW_CFG_MACHINE_ID = 0x06
FW_CFG_BOOT_DEVICE = 0x0C
FW_CFG_NUMA = 0x0D
FW_CFG_BOOT_MENU = 0x0E
FW_CFG_MAX_CPUS = 0x0F
FW_CFG_FILE_DIR = 0x19
FW_CFG_FILE_FIRST = 0x20
FW_CFG_FILE_SLOTS_MIN = 0x10
FW_CFG_FILE_SLOTS_DEFAULT = 0x20
FW_CFG_WRITE_CHANNEL = 0x4000
FW_CFG_ARCH_LOCAL = 0x8000
FW_CFG_ENTRY_MASK = 0x3FFF  # ~(WRITE_CHANNEL | ARCH_LOCAL) as a 16-bit key
FW_CFG_INVALID = 0xFFFF
FW_CFG_ACPI_TABLES = FW_CFG_ARCH_LOCAL + 0
FW_CFG_SMBIOS_ENTRIES = FW_CFG_ARCH_LOCAL + 1
FW_CFG_IRQ0_OVERRIDE = FW_CFG_ARCH_LOCAL + 2
FW_CFG_HPET = FW_CFG_ARCH_LOCAL + 4

FW_CFG_VERSION = 0x01
FW_CFG_VERSION_DMA = 0x02
FW_CFG_DMA_CTL_ERROR = 0x01
FW_CFG_DMA_CTL_READ = 0x02
FW_CFG_DMA_CTL_SKIP = 0x04
FW_CFG_DMA_CTL_SELECT = 0x08
FW_CFG_DMA_CTL_WRITE = 0x10
FW_CFG_DMA_SIGNATURE = b"QEMU CFG"
FW_CFG_MAX_FILE_PATH = 56
FILE_ENTRY_SIZE = 64  # struct fw_cfg_file: be32 size, be16 select, u16 reserved, char name[56]

# Where the pc board maps the device (hw/i386/fw_cfg.h FW_CFG_IO_BASE, DMA at +4).
FW_CFG_IO_BASE = 0x510
FW_CFG_DMA_IO_BASE = 0x514
QOM_CHILD_NAME = "fw_cfg"  # QEMU adds the device as /machine/fw_cfg

# The ACPI blobs whose sizes the "fw_cfg/acpi_mr" subsection carries.
ACPI_TABLE_FILE, ACPI_LOADER_FILE, ACPI_RSDP_FILE = "etc/acpi/tables", "etc/table-loader", "etc/acpi/rsdp"

register_type("fw_cfg", "sys-bus-device", abstract=True)

SelectCallback = Callable[[], None]
WriteCallback = Callable[[int, int], None]  # (offset, length) written by DMA
DmaTarget = AddressSpace | Callable[[], AddressSpace] | None


class FwCfgError(Exception):
    """A misuse QEMU would assert on or exit for (the text is QEMU's where it prints one)."""


@dataclass
class FwCfgEntry:
    """One item: its bytes (shared, so a directory updated in place reads fresh) and callbacks."""

    data: bytearray
    select_cb: SelectCallback | None = None
    write_cb: WriteCallback | None = None
    allow_write: bool = False


def _entry_index(key: int) -> tuple[int, int]:
    return (1 if key & FW_CFG_ARCH_LOCAL else 0), key & FW_CFG_ENTRY_MASK


def _c_name(name: str) -> bytes:
    """The name as QEMU stores it: pstrcpy into 56 bytes (55 characters and a NUL)."""
    return name.encode()[:FW_CFG_MAX_FILE_PATH - 1]


def _acpi_mr_needed(state: dict) -> bool:
    page = mmap.PAGESIZE
    sizes = (state.get("table_mr_size", 0), state.get("linker_mr_size", 0), state.get("rsdp_mr_size", 0))
    return bool(state.get("acpi_mr_restore")) and not all(s % page == 0 for s in sizes)


#: QEMU 7.2's vmstate_fw_cfg. Version 1 streams carry cur_offset as a 16-bit field that only
#: version 1 has; that layout is not modelled, so they are refused as too old instead of misread.
VMSTATE_FW_CFG = VMStateDescription(
    name="fw_cfg", version_id=2, minimum_version_id=2,
    fields=[Field("cur_entry", "uint16"), Field("cur_offset", "uint32", version_id=2)],
    subsections=[
        VMStateDescription(name="fw_cfg/dma", version_id=0, minimum_version_id=0,
                           fields=[Field("dma_addr", "uint64")],
                           needed=lambda s: bool(s.get("dma_enabled"))),
        VMStateDescription(name="fw_cfg/acpi_mr", version_id=1, minimum_version_id=1,
                           fields=[Field("table_mr_size", "uint64"), Field("linker_mr_size", "uint64"),
                                   Field("rsdp_mr_size", "uint64")],
                           needed=_acpi_mr_needed),
    ],
)


class FwCfgIo(Device):
    """fw_cfg on I/O ports: ``io`` ("fwcfg", 2 bytes) for 0x510 and ``dma_io`` ("fwcfg.dma",
    8 bytes, None without DMA) for 0x514. ``dma_as`` is the address space DMA reads and writes
    (an AddressSpace, or a callable returning it, for boards that build theirs later)."""

    type_name = "fw_cfg_io"
    type_parent = "fw_cfg"
    vmsd = VMSTATE_FW_CFG

    def __init__(self, dma_as: DmaTarget = None, dma_enabled: bool = True,
                 file_slots: int = FW_CFG_FILE_SLOTS_DEFAULT, acpi_mr_restore: bool = True) -> None:
        super().__init__()
        if file_slots < FW_CFG_FILE_SLOTS_MIN:
            raise FwCfgError(f'"file_slots" must be at least 0x{FW_CFG_FILE_SLOTS_MIN:x}')
        if file_slots > FW_CFG_ENTRY_MASK - FW_CFG_FILE_FIRST + 1:
            raise FwCfgError(f'"file_slots" must not exceed 0x{FW_CFG_ENTRY_MASK - FW_CFG_FILE_FIRST + 1:x}')
        self.dma_enabled = dma_enabled
        self.file_slots = file_slots
        self.acpi_mr_restore = acpi_mr_restore
        self._dma_target = dma_as
        # in the order QEMU 7.2's qom-list shows them
        self.add_property("acpi-mr-restore", "bool", acpi_mr_restore, "bool", static=True)
        self.add_property("x-file-slots", "uint16", file_slots, "uint16", static=True)
        self.add_property("dma_enabled", "bool", dma_enabled, "bool", static=True)
        self._entries: dict[tuple[int, int], FwCfgEntry] = {}
        self._files: list[tuple[bytes, int]] = []  # (stored name, size) in directory order
        self._dir: bytearray | None = None  # the FILE_DIR item, allocated with the first file
        self.cur_entry = FW_CFG_SIGNATURE
        self.cur_offset = 0
        self.dma_addr = 0
        self.acpi_mr_sizes = {ACPI_TABLE_FILE: 0, ACPI_LOADER_FILE: 0, ACPI_RSDP_FILE: 0}
        # valid 1..4 as QEMU's memory_access_size assumes for ops without valid.max; which
        # sizes are refused is decided in the callbacks (QEMU's .valid.accepts).
        self.io = MemoryRegion.io("fwcfg", 2, CallbackOps(self._comb_read, self._comb_write,
                                                          AccessRules(valid_max=4, impl_max=4)), owner=self)
        self.dma_io: MemoryRegion | None = None
        if dma_enabled:
            self.dma_io = MemoryRegion.io("fwcfg.dma", 8, CallbackOps(self._dma_read, self._dma_write,
                                                                      AccessRules(valid_max=8, impl_max=8)), owner=self)
        self.add_bytes(FW_CFG_SIGNATURE, b"QEMU")
        self.add_i32(FW_CFG_ID, FW_CFG_VERSION | (FW_CFG_VERSION_DMA if dma_enabled else 0))

    # ---- the item store (QEMU's fw_cfg_add_* / fw_cfg_modify_*)
    @property
    def max_entry(self) -> int:
        """Exclusive limit of the key index (FILE_FIRST + file slots)."""
        return FW_CFG_FILE_FIRST + self.file_slots

    def add_bytes(self, key: int, data: bytes | bytearray, select_cb: SelectCallback | None = None,
                  write_cb: WriteCallback | None = None, read_only: bool = True) -> None:
        """Publishes ``data`` under ``key``; a key can be added once. A bytearray is kept, not copied."""
        arch, index = _entry_index(key)
        if index >= self.max_entry:
            raise FwCfgError(f"fw_cfg key {key:#x} beyond the last slot")
        if (arch, index) in self._entries:
            raise FwCfgError(f"fw_cfg key {key:#x} added twice")
        buf = data if isinstance(data, bytearray) else bytearray(data)
        self._entries[arch, index] = FwCfgEntry(buf, select_cb, write_cb, not read_only)

    def add_string(self, key: int, value: str) -> None:
        """A NUL-terminated string item."""
        self.add_bytes(key, value.encode() + b"\0")

    def add_i16(self, key: int, value: int) -> None:
        """Publishes a little-endian 16-bit integer item (fw_cfg_add_i16)."""
        self.add_bytes(key, struct.pack("<H", value & 0xFFFF))

    def add_i32(self, key: int, value: int) -> None:
        """Publishes a little-endian 32-bit integer item (fw_cfg_add_i32)."""
        self.add_bytes(key, struct.pack("<I", value & 0xFFFFFFFF))

    def add_i64(self, key: int, value: int) -> None:
        """Publishes a little-endian 64-bit integer item (fw_cfg_add_i64)."""
        self.add_bytes(key, struct.pack("<Q", value & (1 << 64) - 1))

    def modify_bytes(self, key: int, data: bytes | bytearray) -> None:
        """Replaces an item's data (read-only from then on, callbacks dropped), as fw_cfg_modify_*."""
        arch, index = _entry_index(key)
        if index >= self.max_entry:
            raise FwCfgError(f"fw_cfg key {key:#x} beyond the last slot")
        self._entries[arch, index] = FwCfgEntry(bytearray(data))

    def modify_i16(self, key: int, value: int) -> None:
        """Replaces a little-endian 16-bit integer item (fw_cfg_modify_i16)."""
        self.modify_bytes(key, struct.pack("<H", value & 0xFFFF))

    def modify_i32(self, key: int, value: int) -> None:
        """Replaces a little-endian 32-bit integer item (fw_cfg_modify_i32)."""
        self.modify_bytes(key, struct.pack("<I", value & 0xFFFFFFFF))

    def modify_i64(self, key: int, value: int) -> None:
        """Replaces a little-endian 64-bit integer item (fw_cfg_modify_i64)."""
        self.modify_bytes(key, struct.pack("<Q", value & (1 << 64) - 1))

    def entry(self, key: int) -> bytes | None:
        """The data published under ``key`` (None when nothing is)."""
        e = self._entries.get(_entry_index(key))
        return bytes(e.data) if e is not None else None

    def add_file(self, name: str, data: bytes | bytearray, select_cb: SelectCallback | None = None,
                 write_cb: WriteCallback | None = None, read_only: bool = True) -> int:
        """Adds a named file in name order (later files' selectors move up, as in QEMU's
        non-legacy ordering); returns its selector."""
        if self._dir is None:
            self._dir = bytearray(4 + FILE_ENTRY_SIZE * self.file_slots)
            self.add_bytes(FW_CFG_FILE_DIR, self._dir)
        count = len(self._files)
        if count >= self.file_slots:
            raise FwCfgError(f"fw_cfg: no free file slot for {name}")
        stored = _c_name(name)
        if any(n == stored for n, _ in self._files):
            raise FwCfgError(f"duplicate fw_cfg file name: {stored.decode(errors='replace')}")
        full = name.encode()
        index = count
        while index > 0 and full < self._files[index - 1][0]:
            index -= 1
        for i in range(count, index, -1):  # move later entries (and their items) up one slot
            self._entries[0, FW_CFG_FILE_FIRST + i] = self._entries.pop((0, FW_CFG_FILE_FIRST + i - 1))
        self._files.insert(index, (stored, len(data)))
        self.add_bytes(FW_CFG_FILE_FIRST + index, data, select_cb, write_cb, read_only)
        self._note_acpi_size(name, len(data))
        self._write_dir()
        return FW_CFG_FILE_FIRST + index

    def modify_file(self, name: str, data: bytes | bytearray) -> None:
        """Replaces a file's data and size, or adds the file (QEMU's fw_cfg_modify_file)."""
        stored = _c_name(name)
        for i, (n, _) in enumerate(self._files):
            if n == name.encode():
                self.modify_bytes(FW_CFG_FILE_FIRST + i, data)
                self._files[i] = (stored, len(data))
                self._note_acpi_size(name, len(data))
                self._write_dir()
                return
        self.add_file(name, data)

    def file_resized(self, name: str) -> None:
        """A file's buffer changed length in place: the directory follows (fw_cfg_resized)."""
        for i, (n, _) in enumerate(self._files):
            if n == _c_name(name):
                size = len(self._entries[0, FW_CFG_FILE_FIRST + i].data)
                self._files[i] = (n, size)
                self._note_acpi_size(name, size)
                self._write_dir()
                return

    def file_selector(self, name: str) -> int | None:
        """The selector of a published file, or None."""
        for i, (n, _) in enumerate(self._files):
            if n == _c_name(name):
                return FW_CFG_FILE_FIRST + i
        return None

    def file_names(self) -> list[str]:
        """Published file names in directory order."""
        return [n.decode(errors="replace") for n, _ in self._files]

    def _write_dir(self) -> None:
        assert self._dir is not None
        struct.pack_into(">I", self._dir, 0, len(self._files))
        for i, (name, size) in enumerate(self._files):
            struct.pack_into(">IHH56s", self._dir, 4 + FILE_ENTRY_SIZE * i, size, FW_CFG_FILE_FIRST + i, 0, name)

    def _note_acpi_size(self, name: str, size: int) -> None:
        if name in self.acpi_mr_sizes:
            self.acpi_mr_sizes[name] = size

    # ---- selector and data
    def select(self, key: int) -> bool:
        """Selects ``key`` (offset back to 0); False (and nothing selected) when out of range."""
        self.cur_offset = 0
        arch, index = _entry_index(key)
        if index >= self.max_entry:
            self.cur_entry = FW_CFG_INVALID
            return False
        self.cur_entry = key & 0xFFFF
        e = self._entries.get((arch, index))
        if e is not None and e.select_cb is not None:
            e.select_cb()
        return True

    def _current(self) -> FwCfgEntry | None:
        if self.cur_entry == FW_CFG_INVALID:
            return None
        return self._entries.get(_entry_index(self.cur_entry))

    def read_byte(self) -> int:
        """The next data byte of the selected item; 0 past its end or for an empty selector."""
        e = self._current()
        if e is None or self.cur_offset >= len(e.data):
            return 0
        value = e.data[self.cur_offset]
        self.cur_offset += 1
        return value

    def reset(self) -> None:
        # QEMU's fw_cfg_reset selects the signature; the DMA address register is left alone.
        self.select(FW_CFG_SIGNATURE)

    # ---- the "fwcfg" port region: QEMU accepts byte accesses and 16-bit writes only
    def _comb_read(self, offset: int, size: int) -> int:
        return self.read_byte() if size == 1 else 0  # a refused read reads 0 (unassigned_mem_read)

    def _comb_write(self, offset: int, value: int, size: int) -> None:
        if size == 2:
            self.select(value & 0xFFFF)
        # byte writes reach fw_cfg_write, which does nothing since QEMU 2.4

    # ---- the "fwcfg.dma" region (big-endian device: the values we get are little-endian)
    def _dma_read(self, offset: int, size: int) -> int:
        return int.from_bytes(FW_CFG_DMA_SIGNATURE[offset:offset + size], "little")

    def _dma_write(self, offset: int, value: int, size: int) -> None:
        be = int.from_bytes(value.to_bytes(size, "little"), "big")
        if size == 4 and offset == 0:
            self.dma_addr = be << 32  # the high half replaces the whole register
        elif size == 4 and offset == 4:
            self.dma_addr |= be
            self.dma_transfer()
        elif size == 8 and offset == 0:
            self.dma_addr = be
            self.dma_transfer()
        # other writes are refused by QEMU's fw_cfg_dma_mem_valid

    @property
    def dma_as(self) -> AddressSpace | None:
        """The address space DMA goes through (resolved lazily when a callable was given)."""
        target = self._dma_target
        if target is None or isinstance(target, AddressSpace):
            return target
        return target()

    @dma_as.setter
    def dma_as(self, value: DmaTarget) -> None:
        self._dma_target = value

    def dma_transfer(self) -> None:
        """Runs the FWCfgDmaAccess at ``dma_addr`` and writes its control word back."""
        desc_addr, self.dma_addr = self.dma_addr, 0
        mem = self.dma_as
        if mem is None:
            return
        if not mem.covered(desc_addr, 16):
            _write_be32(mem, desc_addr, FW_CFG_DMA_CTL_ERROR)
            return
        op = "none"
        control, length, address = struct.unpack(">IIQ", mem.dma_read(desc_addr, 16))
        if control & FW_CFG_DMA_CTL_SELECT:
            self.select(control >> 16)
        if control & FW_CFG_DMA_CTL_READ:
            op = "read"
        elif control & FW_CFG_DMA_CTL_WRITE:
            op = "write"
        elif control & FW_CFG_DMA_CTL_SKIP:
            op = "skip"
        else:
            length = 0
        status = 0
        if length:
            status = self._dma_move(mem, op, address, length)
        _write_be32(mem, desc_addr, status)

    def _dma_move(self, mem: AddressSpace, op: str, address: int, length: int) -> int:
        """The data phase of a transfer; returns the control word (0 or the error bit)."""
        mask = (1 << 64) - 1
        while length > 0:
            e = self._current()
            if e is None or self.cur_offset >= len(e.data):
                # past the end: reads fill zeros, writes fail, skips just move on
                if op == "read":
                    if not mem.covered(address, length):
                        return FW_CFG_DMA_CTL_ERROR
                    mem.fill(address, 0, length)
                elif op == "write":
                    return FW_CFG_DMA_CTL_ERROR
                return 0
            n = min(length, len(e.data) - self.cur_offset)
            error = False
            if op == "read":
                error = not mem.covered(address, n)
                if not error:
                    mem.write(address, e.data[self.cur_offset:self.cur_offset + n])
            elif op == "write":
                error = not e.allow_write or n != length or not mem.covered(address, n)
                if not error:
                    e.data[self.cur_offset:self.cur_offset + n] = mem.dma_read(address, n)
                    if e.write_cb is not None:
                        e.write_cb(self.cur_offset, n)
            self.cur_offset += n
            address, length = (address + n) & mask, length - n
            if error:
                return FW_CFG_DMA_CTL_ERROR
        return 0

    # ---- migration: QEMU's "fw_cfg" section
    def save_vmstate(self) -> dict:
        return {"cur_entry": self.cur_entry, "cur_offset": self.cur_offset, "dma_addr": self.dma_addr,
                "dma_enabled": self.dma_enabled, "acpi_mr_restore": self.acpi_mr_restore,
                "table_mr_size": self.acpi_mr_sizes[ACPI_TABLE_FILE],
                "linker_mr_size": self.acpi_mr_sizes[ACPI_LOADER_FILE],
                "rsdp_mr_size": self.acpi_mr_sizes[ACPI_RSDP_FILE]}

    def load_vmstate(self, state: dict) -> None:
        self.cur_entry = int(state["cur_entry"]) & 0xFFFF
        self.cur_offset = int(state["cur_offset"]) & 0xFFFFFFFF
        if "dma_addr" in state:
            self.dma_addr = int(state["dma_addr"])
        # QEMU resizes its ACPI blob regions to these sizes; this model keeps the numbers only.
        for name, key in ((ACPI_TABLE_FILE, "table_mr_size"), (ACPI_LOADER_FILE, "linker_mr_size"),
                          (ACPI_RSDP_FILE, "rsdp_mr_size")):
            if key in state:
                self.acpi_mr_sizes[name] = int(state[key])




def _write_be32(mem: AddressSpace, addr: int, value: int) -> None:
    if mem.covered(addr, 4):
        mem.write(addr, struct.pack(">I", value))


# ================================================================ the pc board's items

E820_RAM, E820_RESERVED = 1, 2
AMD_HT_START, AMD_HT_SIZE = 0xFD00000000, 0x300000000
HPET_BASE = 0xFED00000
#: Low 32 bits of QEMU's HPET capability register (Intel vendor, 3 timers, 64-bit, legacy route).
PC_HPET_BLOCK_ID = 0x8086A201
HPET_FW_MAX = 8


@dataclass(frozen=True)
class E820Entry:
    """One ``etc/e820`` record: little-endian u64 address, u64 length, u32 type."""

    address: int
    length: int
    type: int

    def pack(self) -> bytes:
        return struct.pack("<QQI", self.address, self.length, self.type)


def pc_e820_entries(below_4g: int, above_4g: int, above_4g_start: int = 1 << 32,
                    amd_ht_hole: bool = True) -> list[E820Entry]:
    """The table pc_memory_init builds: the AMD HyperTransport hole first (QEMU adds it for an
    AMD vCPU with >= 40 physical address bits, as the default qemu64 is), then the RAM."""
    table = [E820Entry(AMD_HT_START, AMD_HT_SIZE, E820_RESERVED)] if amd_ht_hole else []
    table.append(E820Entry(0, below_4g, E820_RAM))
    if above_4g:
        table.append(E820Entry(above_4g_start, above_4g, E820_RAM))
    return table


def hpet_fw_config(blocks: Sequence[tuple[int, int]]) -> bytes:
    """``struct hpet_fw_config`` (121 bytes): count, then 8 x (u32 block id, u64 address,
    u16 min_tick, u8 page_prot). Without any HPET the count stays at QEMU's initial 0xff."""
    if len(blocks) > HPET_FW_MAX:
        raise FwCfgError("Only 8 instances of HPET is allowed")
    out = bytearray([len(blocks) if blocks else 0xFF])
    for i in range(HPET_FW_MAX):
        block_id, address = blocks[i] if i < len(blocks) else (0, 0)
        out += struct.pack("<IQHB", block_id, address, 0, 0)
    return bytes(out)


def numa_fw_config(apic_id_limit: int, cpu_node_ids: Sequence[int], node_mem: Sequence[int]) -> bytes:
    """The FW_CFG_NUMA item: node count, one node id per APIC id below the limit, node sizes."""
    words = [0] * (1 + apic_id_limit + len(node_mem))
    words[0] = len(node_mem)
    for apic_id, node in enumerate(cpu_node_ids[:apic_id_limit]):
        words[1 + apic_id] = node
    for i, size in enumerate(node_mem):
        words[1 + apic_id_limit + i] = size
    return struct.pack(f"<{len(words)}Q", *words)


def system_states(disable_s3: bool = False, disable_s4: bool = False, s4_val: int = 2) -> bytes:
    """``etc/system-states`` as acpi_pm1_cnt_init writes it (PIIX4 PM defaults: S3/S4 on, S4 = 2)."""
    return bytes([128, 0, 0, 1 | (0 if disable_s3 else 0x80), (s4_val & 0x7F) | (0 if disable_s4 else 0x80), 128])


def bootorder_file(paths: Sequence[str], strict: bool = False) -> bytes:
    """The ``bootorder`` file: device paths one a line, NUL-terminated; ``strict`` appends
    ``HALT`` when there is at least one path (get_boot_devices_list)."""
    if not paths:
        return b""
    text = "\n".join(paths) + ("\nHALT" if strict else "")
    return text.encode() + b"\0"


def check_boot_timeouts(splash_time: int | None, reboot_timeout: int | None) -> None:
    """QEMU's checks when fw_cfg is created (fatal there): BootOptionError with its text."""
    if splash_time is not None and not 0 <= splash_time <= 0xFFFF:
        raise BootOptionError("splash-time is invalid,it should be a value between 0 and 65535")
    if reboot_timeout is not None and reboot_timeout != -1 and not 0 <= reboot_timeout <= 0xFFFF:
        raise BootOptionError("reboot timeout is invalid,it should be a value between -1 and 65535")


@dataclass
class PcFwCfgConfig:
    """What the pc board tells :func:`build_pc_fw_cfg` (defaults: ``-M pc -nodefaults``, 128 MiB)."""

    ram_size: int = 128 << 20
    below_4g: int = 128 << 20
    above_4g: int = 0
    nb_cpus: int = 1
    max_cpus: int = 1
    apic_id_limit: int | None = None  # default: max_cpus (APIC id == CPU index)
    uuid: bytes = bytes(16)
    nographic: bool = False
    boot_menu: int = 0
    splash_time: int | None = None  # ms, -boot splash-time
    reboot_timeout: int | None = None  # ms, -boot reboot-timeout (-1: never)
    splash: str | None = None  # -boot splash=FILE (read when the device is built)
    data_dirs: Sequence[str] = ()  # -L directories and the firmware directories, searched for it
    bootorder: Sequence[str] = ()  # firmware device paths of devices with a bootindex
    boot_strict: bool = False
    bios_geometry: bytes = b""
    cpu_node_ids: Sequence[int] = ()  # NUMA node of each APIC id
    numa_node_mem: Sequence[int] = ()  # bytes per NUMA node
    e820: Sequence[E820Entry] | None = None  # default: pc_e820_entries(below_4g, above_4g)
    hpet: Sequence[tuple[int, int]] = ((PC_HPET_BLOCK_ID, HPET_BASE),)  # () with -no-hpet
    acpi: bool = True  # PIIX4 PM's etc/system-states and the (empty) etc/tpm/log
    acpi_tables: bytes = b""  # -acpitable data (FW_CFG_ACPI_TABLES)
    reserved_memory_end: int | None = None
    extra_files: Mapping[str, bytes] = field(default_factory=dict)  # e.g. option ROMs the board loads
    smbios: bool = True  # etc/smbios/* (QEMU adds them at machine-done; they depend on this config only)
    machine_name: str = "pc-i440fx-9.1"  # the SMBIOS "version" strings
    smp_topology: tuple[int, int, int] = (1, 1, 1)  # sockets, cores per socket, threads per core (SMBIOS type 4)


def build_pc_fw_cfg(config: PcFwCfgConfig, dma_as: DmaTarget = None,
                    report: Callable[[str], None] | None = None) -> FwCfgIo:
    """A ``fw_cfg_io`` device with the items QEMU 7.2's pc board publishes for ``config``.

    Raises BootOptionError for the splash-time / reboot-timeout ranges (fatal in QEMU); a
    splash file that cannot be used is only reported (``report`` gets QEMU's text) and skipped.
    """
    c = config
    check_boot_timeouts(c.splash_time, None)
    fw = FwCfgIo(dma_as)
    # fw_cfg_common_realize (its checks come in QEMU's order: splash-time, splash, reboot-timeout)
    fw.add_bytes(FW_CFG_UUID, bytes(c.uuid).ljust(16, b"\0")[:16])
    fw.add_i16(FW_CFG_NOGRAPHIC, int(c.nographic))
    fw.add_i16(FW_CFG_BOOT_MENU, c.boot_menu)
    if c.splash_time is not None:
        fw.add_file("etc/boot-menu-wait", struct.pack("<H", c.splash_time))
    if c.splash is not None:
        try:
            fw.add_file(*read_splash_file(c.splash, c.data_dirs))
        except BootOptionError as e:
            if report is not None:
                report(str(e))
    check_boot_timeouts(None, c.reboot_timeout)
    fw.add_file("etc/boot-fail-wait", struct.pack("<I", -1 & 0xFFFFFFFF if c.reboot_timeout is None
                                                  else c.reboot_timeout & 0xFFFFFFFF))
    # fw_cfg_arch_create
    apic_id_limit = c.max_cpus if c.apic_id_limit is None else c.apic_id_limit
    fw.add_i16(FW_CFG_NB_CPUS, c.nb_cpus)
    fw.add_i16(FW_CFG_MAX_CPUS, apic_id_limit)
    fw.add_i64(FW_CFG_RAM_SIZE, c.ram_size)
    fw.add_bytes(FW_CFG_ACPI_TABLES, c.acpi_tables)
    fw.add_i32(FW_CFG_IRQ0_OVERRIDE, 1)
    e820 = pc_e820_entries(c.below_4g, c.above_4g) if c.e820 is None else c.e820
    fw.add_file("etc/e820", b"".join(e.pack() for e in e820))
    fw.add_bytes(FW_CFG_HPET, hpet_fw_config(c.hpet))
    fw.add_bytes(FW_CFG_NUMA, numa_fw_config(apic_id_limit, c.cpu_node_ids, c.numa_node_mem))
    if c.reserved_memory_end is not None:
        fw.add_file("etc/reserved-memory-end", struct.pack("<Q", c.reserved_memory_end))
    if c.acpi:
        fw.add_file("etc/system-states", system_states())
        fw.add_file("etc/tpm/log", b"")  # acpi_setup publishes it, empty without a TPM
    for name, data in c.extra_files.items():
        fw.add_file(name, data)
    if c.smbios:  # fw_cfg_build_smbios: type 19 lists e820's RAM ranges
        blobs = build_smbios(SmbiosConfig(
            version=c.machine_name, uuid=c.uuid if any(c.uuid) else None, ram_size=c.ram_size,
            sockets=c.smp_topology[0], cores_per_socket=c.smp_topology[1],
            threads_per_socket=c.smp_topology[1] * c.smp_topology[2],
            ram_areas=[(e.address, e.length) for e in e820 if e.type == E820_RAM]))
        fw.add_file(SMBIOS_TABLES_FILE, blobs.tables)
        fw.add_file(SMBIOS_ANCHOR_FILE, blobs.anchor)
    # fw_cfg_machine_reset, run at the first system reset before anything can look
    fw.modify_file("bootorder", bootorder_file(c.bootorder, c.boot_strict))
    fw.modify_file("bios-geometry", c.bios_geometry)
    return fw


def read_splash_file(name: str, data_dirs: Sequence[str] = ()) -> tuple[str, bytes]:
    """``-boot splash=FILE``: (fw_cfg file name, data) for a JPEG or 24-bit BMP, found as
    qemu_find_file does (the name itself, then each data directory). QEMU reports the
    BootOptionError texts and goes on without a splash (not fatal)."""
    path = find_file(name, data_dirs)
    if path is None:
        raise BootOptionError(f"failed to find file '{name}'")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BootOptionError(f"failed to read splash file '{path}': {e.strerror}") from e
    head = int.from_bytes(data[:2], "little") if len(data) >= 30 else 0
    if head == 0xD8FF:
        return "bootsplash.jpg", data
    if head == 0x4D42 and int.from_bytes(data[28:30], "little") == 24:
        return "bootsplash.bmp", data
    raise BootOptionError(f"splash file '{path}' format not recognized; must be JPEG or 24 bit BMP")


# ================================================================ -boot

class BootOptionError(ValueError):
    """A ``-boot`` error; ``str()`` is what QEMU prints after ``qemu-system-x86_64: `` (syntax
    errors carry the ``-boot VALUE: `` location, later checks do not)."""

    def __init__(self, message: str, location: str | None = None) -> None:
        super().__init__(f"{location}: {message}" if location else message)
        self.message, self.location = message, location


BOOT_HELP_TEXT = """boot-opts options:
  menu=<bool (on/off)>
  once=<str>
  order=<str>
  reboot-timeout=<num>
  splash-time=<num>
  splash=<str>
  strict=<bool (on/off)>
"""

#: BootConfiguration members in schema order (the visit order, hence the error order).
_BOOT_MEMBERS = (("order", "str"), ("once", "str"), ("menu", "bool"), ("splash", "str"),
                 ("splash-time", "int"), ("reboot-timeout", "int"), ("strict", "bool"))


@dataclass
class BootOptions:
    """The machine's ``boot`` property (QAPI BootConfiguration); None where not given.
    ``help`` is set for ``-boot help``: print :data:`BOOT_HELP_TEXT` and exit 0."""

    order: str | None = None
    once: str | None = None
    menu: bool | None = None
    splash: str | None = None
    splash_time: int | None = None
    reboot_timeout: int | None = None
    strict: bool | None = None
    help: bool = False

    @property
    def boot_menu(self) -> int:
        """FW_CFG_BOOT_MENU: 1 only for an explicit menu=on."""
        return 1 if self.menu else 0


KeyvalDict = dict  # str -> str | nested KeyvalDict

_QAPI_NAME = re.compile(r"(?:__[A-Za-z0-9.-]*_)?[A-Za-z][A-Za-z0-9_-]*")
_INDEX = re.compile(r"[0-9]+")


def _keyval_put(cur: KeyvalDict, frag: str, value: str | None, key_so_far: str) -> KeyvalDict | None:
    old = cur.get(frag)
    if old is not None and isinstance(old, dict) != (value is None):
        raise BootOptionError(f"Parameters '{key_so_far}.*' used inconsistently")
    if value is None:
        if old is None:
            old = cur[frag] = {}
        return old
    cur[frag] = value
    return None


def _keyval_key(out: KeyvalDict, key: str) -> tuple[KeyvalDict, str]:
    """Walks the dotted ``key`` (creating nested dicts): (dict to store in, last fragment)."""
    cur, pos = out, 0
    while True:
        m = (_INDEX.match(key, pos) if pos else None) or _QAPI_NAME.match(key, pos)
        n = m.end() - pos if m else 0
        if not n or (pos + n < len(key) and key[pos + n] != "."):
            raise BootOptionError(f"Invalid parameter '{key}'")
        if n >= 128:
            frag = " fragment" if pos or pos + n != len(key) else ""
            raise BootOptionError(f"Parameter{frag} '{key[pos:pos + n]}' is too long")
        if pos + n == len(key):
            return cur, key[pos:]
        sub = _keyval_put(cur, key[pos:pos + n], None, key[:pos + n])
        assert sub is not None
        cur, pos = sub, pos + n + 1


def parse_boot_keyval(value: str) -> tuple[KeyvalDict, bool]:
    """``-boot``'s keyval syntax (implied key ``order``): (dict, help requested). Errors carry
    the ``-boot VALUE`` location."""
    out: KeyvalDict = {}
    help_ = False
    pos, first = 0, True
    try:
        while pos < len(value):
            span = re.match(r"[^=,]*", value[pos:]).group(0)  # type: ignore[union-attr]
            after = pos + len(span)
            if span and (after == len(value) or value[after] != "="):
                if span in ("help", "?"):
                    help_, pos, first = True, after + (1 if after < len(value) else 0), False
                    continue
                if first:  # desugared "order=VALUE"
                    _keyval_put(out, "order", span, "order")
                    pos, first = after + (1 if after < len(value) else 0), False
                    continue
            cur, frag = _keyval_key(out, span)
            if after >= len(value) or value[after] != "=":
                raise BootOptionError(f"Expected '=' after parameter '{span}'")
            val, pos = _keyval_value(value, after + 1)
            _keyval_put(cur, frag, val, span)
            first = False
    except BootOptionError as e:
        raise BootOptionError(e.message, f"-boot {value}") from None
    return out, help_


def _keyval_value(text: str, pos: int) -> tuple[str, int]:
    """A value up to the next single comma (",," is a literal comma); (value, next position)."""
    chars = []
    while pos < len(text):
        ch = text[pos]
        if ch == ",":
            pos += 1
            if pos >= len(text) or text[pos] != ",":
                break
        chars.append(text[pos])
        pos += 1
    return "".join(chars), pos


def merge_boot_keyval(dest: KeyvalDict, new: KeyvalDict, prefix: str = "boot.") -> None:
    """A later ``-boot`` merged into the earlier ones (keyval_merge: later scalars win)."""
    for key, val in new.items():
        old = dest.get(key)
        if old is not None and isinstance(old, dict) != isinstance(val, dict):
            raise BootOptionError(f"Parameter '{prefix}{key}' used inconsistently")
        if isinstance(val, dict) and isinstance(old, dict):
            merge_boot_keyval(old, val, f"{prefix}{key}.")
        else:
            dest[key] = val


_C_SPACE = " \t\n\v\f\r"
_C_INT = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def _parse_int64(text: str) -> int | None:
    """qemu_strtoi64(str, NULL, 0): leading blanks, base prefix, the whole string, int64 range."""
    body = text.lstrip(_C_SPACE)
    if not _C_INT.fullmatch(body):
        return None
    value = int(body, 0) if not re.fullmatch(r"[+-]?0[0-7]+", body) else int(body, 8)
    return value if -(1 << 63) <= value < (1 << 63) else None


def _parse_bool(text: str) -> bool | None:
    if text in ("on", "yes", "true", "y"):
        return True
    if text in ("off", "no", "false", "n"):
        return False
    return None


def validate_boot_devices(devices: str) -> None:
    """validate_bootdevices: letters a..p, each at most once."""
    seen: set[str] = set()
    for ch in devices:
        if not "a" <= ch <= "p":
            raise BootOptionError(f"Invalid boot device '{ch}'")
        if ch in seen:
            raise BootOptionError(f"Boot device '{ch}' was given twice")
        seen.add(ch)


def boot_options_from_keyval(values: KeyvalDict) -> BootOptions:
    """The ``boot`` property set from the merged keyval dict: the member visit (type errors in
    schema order, then unexpected parameters), then the order/once checks."""
    left = dict(values)
    got: dict[str, object] = {}
    for name, kind in _BOOT_MEMBERS:
        if name not in left:
            continue
        raw = left.pop(name)
        if isinstance(raw, dict):
            raise BootOptionError(f"Parameters 'boot.{name}.*' are unexpected")
        if kind == "bool":
            parsed: object = _parse_bool(raw)
            expects = "'on' or 'off'"
        elif kind == "int":
            parsed, expects = _parse_int64(raw), "integer"
        else:
            parsed, expects = raw, ""
        if parsed is None:
            raise BootOptionError(f"Parameter 'boot.{name}' expects {expects}")
        got[name.replace("-", "_")] = parsed
    if left:
        # QEMU names the first key of a GHashTable walk; sorted order is our approximation.
        raise BootOptionError(f"Parameter 'boot.{sorted(left)[0]}' is unexpected")
    opts = BootOptions(**got)  # type: ignore[arg-type]
    if opts.order is not None:
        validate_boot_devices(opts.order)
    if opts.once is not None:
        validate_boot_devices(opts.once)
    return opts


def parse_boot_option(value: str) -> BootOptions:
    """One ``-boot VALUE`` as QEMU 7.2 takes it (for several, merge their
    :func:`parse_boot_keyval` dicts with :func:`merge_boot_keyval` first). Raises
    BootOptionError with QEMU's text; ``help`` set means print BOOT_HELP_TEXT and exit 0."""
    values, help_ = parse_boot_keyval(value)
    if help_:
        return BootOptions(help=True)
    return boot_options_from_keyval(values)
