"""``cfi.pflash01``: the CFI parallel flash (Intel command set) that the pc board maps for
``-drive if=pflash``, and the pc board's flash layout rules.

Follows QEMU 7.2's ``hw/block/pflash_cfi01.c`` (device) and ``hw/i386/pc_sysfw.c`` (layout):

* the device owns the flash image (a ``bytearray``, or the bytes of a ``RamBlock`` when the board
  wants the contents to migrate as QEMU's RAM block of the same name does) and one MMIO region
  named after the device (``system.flash0`` / ``system.flash1`` on pc);
* reads in read-array mode return the image; writes drive QEMU's command state machine (read
  array, status, clear status, read ID, CFI query, byte/word program, block erase, write to
  buffer, block (un)lock) with QEMU's replies, status bits and quirks;
* every change to the image is handed to ``write_back(offset, data)``, widened to 512-byte
  sectors as QEMU's ``blk_pwrite`` of the changed range does; a read-only flash refuses program
  (status bit 4) and erase (bit 5);
* the VMState section ``pflash_cfi01`` (version 1, subsection ``pflash_cfi01_blk_write``).

QEMU's ROM-device mode ("romd": reads go straight to the image until the first write) is kept
as a flag, because it decides what a read returns after an incoming migration. The ``secure``
property exists (off, as on pc) but transactions carry no security attribute here, so its
effect is not modelled.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from emu.devices.base import Device
from emu.memory import AccessRules, CallbackOps, MemoryRegion
from emu.migration.vmstate import Field, LoadContext, VMStateDescription

if TYPE_CHECKING:
    from emu.ram import RamBlock

KiB = 1024
MiB = 1024 * KiB
FLASH_SECTOR_SIZE = 4096  # pc_sysfw.c: every pc flash has 4 KiB sectors
ISA_BIOS_MAX_SIZE = 128 * KiB  # the tail of flash 0 copied below 1 MiB
DEFAULT_MAX_FW_SIZE = 8 * MiB  # the pc machine's "max-fw-size" default
BDRV_SECTOR_SIZE = 512  # the block layer's unit: file sizes and write-backs are rounded to it
CFI_TABLE_SIZE = 0x52
CMD_READ_ARRAY = 0x00  # QEMU's internal read-array state (0xff is the command that selects it)
STATUS_READY = 0x80
STATUS_ERASE_ERROR = 0x20
STATUS_PROGRAM_ERROR = 0x10
NO_BLOCK = 0xFFFFFFFF  # blk_offset when no write-to-buffer is open (QEMU's uint32 -1)
_U64 = (1 << 64) - 1

# Commands whose reads return the status register (QEMU's pflash_read).
_STATUS_READ_CMDS = frozenset({0x10, 0x20, 0x28, 0x40, 0x50, 0x60, 0x70, 0xE8})

WriteBack = Callable[[int, bytes], None]


def _ctz32(value: int) -> int:
    """QEMU's ctz32: trailing zero bits, 32 for 0."""
    value &= 0xFFFFFFFF
    return (value & -value).bit_length() - 1 if value else 32


def _deposit32(value: int, start: int, length: int, field_value: int) -> int:
    mask = ((1 << length) - 1) << start
    return ((value & ~mask) | ((field_value << start) & mask)) & 0xFFFFFFFF


def _replicate(resp: int, device_width: int, bank_width: int) -> int:
    """One device's answer repeated for each device of the bank."""
    if device_width < bank_width:
        for i in range(device_width, bank_width, device_width):
            resp = _deposit32(resp, 8 * i, 8 * device_width, resp)
    return resp


class PFlashCFI01(Device):
    """The flash device. Map ``region`` (``MemoryRegion.io``, size ``size``) in system memory.

    ``image``: the initial contents (zero-padded to ``num_blocks * sector_len``; ``num_blocks``
    defaults to what the image fills). ``write_back(offset, data)`` persists changed bytes (None:
    nothing is persisted). ``ram``: optional backing RAM block (its bytes become the storage and
    writes mark it dirty), so that the contents migrate like QEMU's RAM block of the flash.
    ``instance_id``: the VMState instance (QEMU numbers the pc flashes 0 and 1 in realize order).
    """

    type_name = "cfi.pflash01"
    type_parent = "sys-bus-device"

    def __init__(self, name: str, image: bytes | bytearray | memoryview = b"", *, num_blocks: int | None = None,
                 sector_len: int = FLASH_SECTOR_SIZE, width: int = 1, device_width: int = 0,
                 max_device_width: int = 0, big_endian: bool = False, ids: Sequence[int] = (0, 0, 0, 0),
                 readonly: bool = False, write_back: WriteBack | None = None, ram: RamBlock | None = None,
                 instance_id: int = 0, old_multiple_chip_handling: bool = False) -> None:
        super().__init__()
        if num_blocks is None:
            num_blocks = len(image) // sector_len if sector_len else 0
        # pflash_cfi01_realize's checks, in its order and wording
        if sector_len == 0:
            raise ValueError('attribute "sector-length" not specified or zero.')
        if num_blocks == 0:
            raise ValueError('attribute "num-blocks" not specified or zero.')
        self.name = name
        self.sector_len, self.nb_blocs = sector_len, num_blocks
        self.size = sector_len * num_blocks
        self.bank_width, self.device_width = width, device_width
        self.max_device_width = max_device_width or device_width
        self.big_endian = big_endian
        self.ident = tuple(ids)
        self.ro = readonly
        self.write_back = write_back
        self.instance_id = instance_id
        self._ram = ram
        self.storage = self._make_storage(image, ram)
        self.old_multiple_chip_handling = old_multiple_chip_handling
        self._add_properties(ids, old_multiple_chip_handling)
        self.cfi_table, self.writeblock_size = self._build_cfi_table()
        self.blk_bytes = bytearray(self.writeblock_size)
        self.counter = 0
        self.wcycle, self.cmd, self.status = 0, CMD_READ_ARRAY, STATUS_READY
        self.blk_offset = NO_BLOCK
        self.romd = True
        self.region = MemoryRegion.io(name, self.size, CallbackOps(self._read, self._write, AccessRules(
            valid_min=1, valid_max=4, impl_min=1, impl_max=4)), owner=self)
        self.vmsd = self._build_vmsd()

    def _make_storage(self, image: bytes | bytearray | memoryview, ram: RamBlock | None) -> bytearray | memoryview:
        data = bytes(image[:self.size])
        if ram is None:
            return bytearray(data) + bytearray(self.size - len(data))
        if ram.size < self.size:
            raise ValueError(f"RAM block {ram.name!r} is smaller than flash {self.name!r}")
        view = ram.view()[:self.size]
        view[:len(data)] = data
        view[len(data):] = bytes(self.size - len(data))
        ram.set_dirty(0, self.size)
        return view

    def _add_properties(self, ids: Sequence[int], old_multiple_chip_handling: bool) -> None:
        for pname, kind, value in (
                ("num-blocks", "uint32", self.nb_blocs), ("sector-length", "uint64", self.sector_len),
                ("width", "uint8", self.bank_width), ("device-width", "uint8", self.device_width),
                ("max-device-width", "uint8", self.max_device_width), ("big-endian", "bool", self.big_endian),
                ("secure", "bool", False), ("id0", "uint16", ids[0]), ("id1", "uint16", ids[1]),
                ("id2", "uint16", ids[2]), ("id3", "uint16", ids[3]), ("name", "string", self.name),
                ("old-multiple-chip-handling", "bool", old_multiple_chip_handling)):
            self.add_property(pname, kind, value, "str" if kind == "string" else kind, static=True)

    def _build_cfi_table(self) -> tuple[bytes, int]:
        """QEMU's hard-coded CFI table for this geometry, and the write buffer size it implies."""
        num_devices = self.bank_width // self.device_width if self.device_width else 1
        if self.old_multiple_chip_handling:
            blocks, sector = self.nb_blocs // num_devices, self.sector_len
        else:
            blocks, sector = self.nb_blocs, self.sector_len // num_devices
        t = bytearray(CFI_TABLE_SIZE)
        t[0x10:0x13] = b"QRY"
        t[0x13], t[0x15] = 0x01, 0x31  # Intel command set; primary extended table at 0x31
        t[0x1B:0x27] = bytes([0x45, 0x55, 0x00, 0x00, 0x07, 0x07, 0x0A, 0x00, 0x04, 0x04, 0x04, 0x00])
        t[0x27] = _ctz32(sector * blocks) & 0xFF  # QEMU's device size: log2 via ctz
        t[0x28] = 0x02  # x8/x16 interface
        t[0x2A] = 0x08 if self.bank_width == 1 else 0x0B  # log2 of the write buffer
        t[0x2C] = 0x01  # one uniform erase region
        t[0x2D], t[0x2E] = (blocks - 1) & 0xFF, ((blocks - 1) >> 8) & 0xFF
        t[0x2F], t[0x30] = (sector >> 8) & 0xFF, (sector >> 16) & 0xFF
        t[0x31:0x36] = b"PRI10"
        t[0x3F] = 0x01  # one protection field
        wbs = 1 << t[0x2A]
        if not self.old_multiple_chip_handling and num_devices > 1:
            wbs *= num_devices
        return bytes(t), wbs

    # ---- reset and image access
    def reset(self) -> None:
        """Back to read-array mode, status "ready", no write buffer open (the counter stays)."""
        self.cmd, self.wcycle = CMD_READ_ARRAY, 0
        self.romd = True
        self.status = STATUS_READY
        self.blk_offset = NO_BLOCK

    @property
    def image(self) -> bytes:
        """The current flash contents."""
        return bytes(self.storage)

    def _load(self, buf: bytearray | memoryview, offset: int, width: int) -> int:
        return int.from_bytes(buf[offset:offset + width], "big" if self.big_endian else "little")

    def _store(self, buf: bytearray | memoryview, offset: int, value: int, width: int) -> None:
        value &= (1 << (8 * width)) - 1
        buf[offset:offset + width] = value.to_bytes(width, "big" if self.big_endian else "little")

    def _update(self, offset: int, size: int) -> None:
        """Persists [offset, offset+size) widened to 512-byte sectors (QEMU's pflash_update)."""
        if self._ram is not None:
            self._ram.set_dirty(offset, size)
        if self.write_back is None:
            return
        start = offset - offset % BDRV_SECTOR_SIZE
        end = -(-(offset + size) // BDRV_SECTOR_SIZE) * BDRV_SECTOR_SIZE
        self.write_back(start, bytes(self.storage[start:min(end, self.size)]))

    # ---- reads
    def _read(self, offset: int, width: int) -> int:
        if self.romd:  # ROM mode: a plain memory read of the image, whatever the device's endianness
            return int.from_bytes(self.storage[offset:offset + width], "little")
        cmd = self.cmd
        if cmd == 0x90:
            ret = self._id_read(offset, width)
        elif cmd == 0x98:
            ret = self._query_read(offset, width)
        elif cmd in _STATUS_READ_CMDS:
            ret = self._status_read(width)
        else:
            if cmd != CMD_READ_ARRAY:  # an unknown state falls back to read array
                self.wcycle, self.cmd = 0, CMD_READ_ARRAY
            ret = self._load(self.storage, offset, width)
        return ret & ((1 << (8 * width)) - 1)

    def _status_read(self, width: int) -> int:
        ret = self.status
        dw = self.device_width
        if dw and width > dw:
            for shift in range(dw * 8, width * 8 - dw * 8 + 1, dw * 8):
                ret |= self.status << shift
        elif not dw and width > 2:
            ret |= self.status << 16  # the pre-device-width 32-bit behaviour
        return ret

    def _legacy_boff(self, offset: int) -> int:
        """Index of an ID/CFI read when ``device-width`` is unset: the low byte of the offset
        in bank-width units."""
        boff = offset & 0xFF
        return boff >> {2: 1, 4: 2}.get(self.bank_width, 0)

    def _scaled_boff(self, offset: int) -> int:
        """Index of an ID/CFI read in units of the device's maximum width."""
        return offset >> (_ctz32(self.bank_width) + _ctz32(self.max_device_width) - _ctz32(self.device_width))

    def _id_read(self, offset: int, width: int) -> int:
        if not self.device_width:
            boff = self._legacy_boff(offset)
            id0, id1, id2, id3 = self.ident
            return {0: id0 << 8 | id1, 1: id2 << 8 | id3}.get(boff, 0)
        return self._per_bank(offset, width, self._devid_query)

    def _query_read(self, offset: int, width: int) -> int:
        if not self.device_width:
            boff = self._legacy_boff(offset)
            return self.cfi_table[boff] if boff < CFI_TABLE_SIZE else 0
        return self._per_bank(offset, width, self._cfi_query)

    def _per_bank(self, offset: int, width: int, query: Callable[[int], int]) -> int:
        """A read wider than the bank combines one query per bank-width step."""
        ret = 0xFFFFFFFF
        for i in range(0, width, self.bank_width):
            ret = _deposit32(ret, i * 8, self.bank_width * 8, query(offset + i * self.bank_width))
        return ret

    def _devid_query(self, offset: int) -> int:
        boff = self._scaled_boff(offset) & 0xFF
        if boff > 1:
            return 0  # block lock status and the rest are not emulated
        return _replicate(self.ident[boff], self.device_width, self.bank_width)

    def _cfi_query(self, offset: int) -> int:
        boff = self._scaled_boff(offset)
        if boff >= CFI_TABLE_SIZE:
            return 0
        resp = self.cfi_table[boff]
        if self.device_width != self.max_device_width:
            if self.device_width != 1 or self.bank_width > 4:
                return 0  # the only mixed-width case QEMU supports is x8 mode of a wider part
            for i in range(1, self.max_device_width):
                resp = _deposit32(resp, 8 * i, 8, self.cfi_table[boff])
        return _replicate(resp, self.device_width, self.bank_width)

    # ---- writes: the command state machine (QEMU's pflash_write)
    def _write(self, offset: int, value: int, width: int) -> None:
        if not self.wcycle:
            self.romd = False  # the first command cycle leaves ROM mode
        handler = {0: self._cycle0, 1: self._cycle1, 2: self._cycle2, 3: self._cycle3}.get(self.wcycle)
        if handler is None or handler(offset, value, width):
            self._read_array()

    def _read_array(self) -> None:
        self.romd = True
        self.wcycle, self.cmd = 0, CMD_READ_ARRAY

    def _cycle0(self, offset: int, value: int, width: int) -> bool:
        """First cycle: the command byte. Returns True to go back to read-array mode."""
        cmd = value & 0xFF
        if cmd in (0x00, 0xF0, 0xFF):  # read array (0xf0: an AMD probe, treated the same)
            return True
        if cmd == 0x50:
            self.status = 0
            return True
        if cmd in (0x70, 0x90):  # status / ID reads: a mode, not a two-cycle command
            self.cmd = cmd
            return False
        if cmd == 0x20:
            self._erase(offset)
        elif cmd == 0xE8:
            self.status |= STATUS_READY
        elif cmd not in (0x10, 0x40, 0x60, 0x98):
            return True  # unimplemented command
        self.wcycle += 1
        self.cmd = cmd
        return False

    def _erase(self, offset: int) -> None:
        # QEMU erases at once (on the 0x20 cycle, before the 0xd0 confirmation)
        start = offset & ~(self.sector_len - 1)
        if self.ro:
            self.status |= STATUS_ERASE_ERROR
        else:
            self.storage[start:start + self.sector_len] = b"\xff" * self.sector_len
            self._update(start, self.sector_len)
        self.status |= STATUS_READY

    def _cycle1(self, offset: int, value: int, width: int) -> bool:
        cmd, cur = value & 0xFF, self.cmd
        if cur in (0x10, 0x40):
            if self.ro:
                self.status |= STATUS_PROGRAM_ERROR
            else:
                self._data_write(offset, value, width)
                self._update(offset, width)
            self.status |= STATUS_READY
            self.wcycle = 0
        elif cur in (0x20, 0x28, 0x60):
            # erase/lock confirmations (locking itself is not emulated: 0xd0 and 0x01 just succeed)
            if not (cmd == 0xD0 or (cur == 0x60 and cmd == 0x01)):
                return True
            self.wcycle = 0
            self.status |= STATUS_READY
        elif cur == 0xE8:
            self.counter = value & ((1 << (8 * (self.device_width or self.bank_width))) - 1)
            self.wcycle += 1
            self.blk_offset = offset & ~(self.writeblock_size - 1) & 0xFFFFFFFF
            self.blk_bytes[:] = self.storage[self.blk_offset:self.blk_offset + self.writeblock_size]
        elif cur == 0x98:
            return cmd == 0xFF  # anything else stays in query mode
        else:
            return True
        return False

    def _cycle2(self, offset: int, value: int, width: int) -> bool:
        if self.cmd != 0xE8:
            return True
        if not self.ro and self.blk_offset != NO_BLOCK:
            self._data_write(offset, value, width)
        else:
            self.status |= STATUS_PROGRAM_ERROR
        self.status |= STATUS_READY
        if not self.counter:
            self.wcycle += 1  # the last word: the confirmation comes next
        self.counter = (self.counter - 1) & _U64
        return False

    def _cycle3(self, offset: int, value: int, width: int) -> bool:
        if self.cmd == 0xE8 and value & 0xFF == 0xD0 and not self.status & STATUS_PROGRAM_ERROR:
            start = self.blk_offset
            self.storage[start:start + self.writeblock_size] = self.blk_bytes
            self._update(start, self.writeblock_size)
            self.blk_offset = NO_BLOCK
            self.wcycle = 0
            self.status |= STATUS_READY
            return False
        self.blk_offset = NO_BLOCK  # abort: the buffer is dropped
        return True

    def _data_write(self, offset: int, value: int, width: int) -> None:
        """A program: into the open write buffer if there is one (which must contain it), else
        straight into the image."""
        if self.blk_offset == NO_BLOCK:
            self._store(self.storage, offset, value, width)
            return
        if offset < self.blk_offset or offset + width > self.blk_offset + self.writeblock_size:
            self.status |= STATUS_PROGRAM_ERROR
            return
        self._store(self.blk_bytes, offset - self.blk_offset, value, width)

    # ---- migration
    def _build_vmsd(self) -> VMStateDescription:
        def pre_load(state: dict, ctx: LoadContext) -> int:
            state["writeblock_size"] = self.writeblock_size  # the buffer length is not in the stream
            return 0

        return VMStateDescription(
            name="pflash_cfi01", version_id=1, minimum_version_id=1, pre_load=pre_load,
            fields=[Field("wcycle", "uint8"), Field("cmd", "uint8"), Field("status", "uint8"),
                    Field("counter", "uint64")],
            subsections=[VMStateDescription(
                "pflash_cfi01_blk_write", 1, 1,
                [Field("blk_bytes", "buffer", size_field="writeblock_size"), Field("blk_offset", "uint32")],
                needed=lambda s: s.get("blk_offset", NO_BLOCK) != NO_BLOCK)])

    def vmstate_id(self) -> tuple[str, int]:
        """QEMU registers the flashes as ``pflash_cfi01`` with instances in realize order."""
        return "pflash_cfi01", self.instance_id

    def save_vmstate(self) -> dict:
        return {"wcycle": self.wcycle, "cmd": self.cmd, "status": self.status, "counter": self.counter,
                "writeblock_size": self.writeblock_size, "blk_bytes": bytes(self.blk_bytes),
                "blk_offset": self.blk_offset}

    def load_vmstate(self, state: dict) -> None:
        """Takes the state over; as QEMU's post-load hook, a writable flash then writes its whole
        image back (the contents may have come in with RAM)."""
        self.wcycle = int(state.get("wcycle", 0))
        self.cmd = int(state.get("cmd", 0))
        self.status = int(state.get("status", 0))
        self.counter = int(state.get("counter", 0))
        if "blk_offset" in state:  # the subsection came: an open write buffer
            self.blk_offset = int(state["blk_offset"])
            data = bytes(state.get("blk_bytes", b""))[:self.writeblock_size]
            self.blk_bytes[:len(data)] = data
        if not self.ro:
            self._update(0, self.size)


# ---------------------------------------------------------------- the pc board's flash rules

class PflashMapError(Exception):
    """A flash configuration QEMU refuses; ``lines`` are its stderr lines (after the program name)."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


def drive_length(file_size: int) -> int:
    """The length the block layer gives a raw file: rounded up to 512-byte sectors."""
    return -(-file_size // BDRV_SECTOR_SIZE) * BDRV_SECTOR_SIZE


def pc_flash_bases(drives: Sequence[tuple[str, int] | None], max_fw_size: int = DEFAULT_MAX_FW_SIZE) -> list[int]:
    """Base addresses of the pc flashes (QEMU's pc_system_firmware_init + pc_system_flash_map).

    ``drives[i]``: ``(block device name, length)`` of unit ``i`` (``pflash0``, ``pflash1``), or
    None. Flash 0 ends at 4 GiB, each next one right below; mapping stops at the first unit
    without a drive. Raises :class:`PflashMapError` with QEMU's messages.
    """
    for i in range(1, len(drives)):
        if drives[i] is not None and drives[i - 1] is None:
            raise PflashMapError(f"pflash{i} requires pflash{i - 1}")
    bases: list[int] = []
    total = 0
    for drive in drives:
        if drive is None:
            break
        name, size = drive
        if size == 0 or size % FLASH_SECTOR_SIZE:
            raise PflashMapError(f"system firmware block device {name} has invalid size {size}",
                                 f"info: its size must be a non-zero multiple of {FLASH_SECTOR_SIZE:#x}")
        if total + size > max_fw_size:
            raise PflashMapError(f"combined size of system firmware exceeds {max_fw_size} bytes")
        total += size
        bases.append((1 << 32) - total)
    return bases


def pc_flash_layout(size: int, name: str = "pflash0") -> tuple[int, int, int]:
    """``(base, isa_bios_offset, isa_bios_size)`` of flash 0 of ``size`` bytes: it ends at
    4 GiB, and its last min(size, 128 KiB) bytes (from ``isa_bios_offset`` in the image) are
    copied to a read-only RAM region "isa-bios" ending at 1 MiB (priority 1 in PCI memory)."""
    base = pc_flash_bases([(name, size)])[0]
    isa_size = min(size, ISA_BIOS_MAX_SIZE)
    return base, size - isa_size, isa_size


@dataclass
class FlashDrive:
    """A ``-drive if=pflash,format=raw,file=F`` backend: the image (sector-padded, as the block
    layer reads it) and, unless read-only, a ``write_back`` into the still-open file."""

    path: str
    readonly: bool
    image: bytearray
    _fd: int = field(default=-1, repr=False)

    @classmethod
    def open(cls, path: str, readonly: bool = False) -> FlashDrive:
        """Opens ``path`` (raising OSError); the file stays open so that writes still land after
        it is unlinked, as QEMU's do."""
        fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0)
        except OSError:
            os.close(fd)
            raise
        image = bytearray(data) + bytearray(drive_length(size) - len(data))
        return cls(path, readonly, image, fd)

    @property
    def write_back(self) -> WriteBack | None:
        """The callable for :class:`PFlashCFI01` (None when read-only)."""
        return None if self.readonly else self._write

    def _write(self, offset: int, data: bytes) -> None:
        os.pwrite(self._fd, data, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
