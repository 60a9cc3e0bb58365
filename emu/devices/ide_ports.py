"""The IDE buses of the PIIX IDE function and the legacy ports of a channel with no drive or an
empty CD-ROM drive on it, as QEMU 7.2 keeps and answers them (hw/ide/core.c, ioport.c, atapi.c).

QEMU registers a channel's command block (8 ports at 0x1f0 / 0x170) and its device control /
alternate status port (0x3f6 / 0x376) as port lists: byte handlers for the eight registers, word
and dword handlers for the data port only. An access of a size the list has no handler for is
answered as QEMU's portio dispatch does: a word from two byte handlers (0xff above the block's
end), anything else all ones; a word write likewise becomes two byte writes, other sizes are dropped.

Reads: with no drive on the bus every register reads 0 (a status read still lowers the bus's
interrupt). Writes are not lost, though: QEMU keeps two ``IDEState`` slots per bus whether or not a
drive sits in them, and what a guest writes is stored in both (:class:`IdeSlot`), the device
control register on the bus (:class:`IdeBus`), and this state migrates. The master slot of an
empty bus even executes ATA commands (QEMU only ignores commands to a missing *slave*): most abort,
a few change registers, and each completion raises the channel's interrupt (IRQ 14/15, setting the
bus master's interrupt status bit) unless nIEN is set. That is modelled for the command set QEMU
accepts for a hard-disk slot without a block backend.

A CD-ROM drive with an empty tray (QEMU's ``ide-cd`` without medium, the default
``-drive if=ide,index=2,media=cdrom``) can be put in a slot with :meth:`IdeBus.attach_cdrom`; the
same port handler (:class:`EmptyIdeChannel`, alias :class:`IdeChannel`) then answers as QEMU does:
the registers read back (on the whole bus: a missing slave's task file too, its error/status 0),
the ATAPI signature (0xeb14, count/sector 1) after reset, SRST (status 0, no interrupt) and DEVICE
RESET, the packet-device command set (IDENTIFY PACKET DEVICE with QEMU's identify data by PIO,
PACKET, EXECUTE DEVICE DIAGNOSTIC, SET FEATURES, FLUSH CACHE failing for want of a medium;
IDENTIFY DEVICE and READ SECTORS abort with the signature; the rest aborts), PIO through the
data port (word and dword handlers; a data byte read consumes a word), the retry registers every
transfer start sets (they migrate in the bus-master state), and the ``ide_drive`` subsections
(PIO state with the whole 128 KiB I/O buffer, tray state, media events). The ATAPI commands
themselves are in :mod:`emu.devices.atapi`.

Not modelled: the three SMART data-in subcommands (READ DATA, READ THRESHOLDS, READ LOG), which
need SMART enabled with the 0xc24f signature and would start a PIO transfer: they abort here.
QEMU performs a soft reset (SRST) in a bottom half, leaving both slots BUSY until it runs; here
it happens during the control write. The difference shows only for accesses queued behind that
write in the same batch of qtest commands (QEMU ignores their task-file writes, we store them).
For a CD: DMA (an ATAPI reply with the DMA bit set waits for the bus master, which never
transfers; saved with the bus master stopped it becomes a pending ATAPI retry, as in QEMU),
media (no image can be inserted, so no medium change, UNIT ATTENTION or sector reads), and the
end functions of disk sector reads/writes, which only a loaded stream could name (they stop the
transfer). A hard disk's ATA command set is not modelled either: the board leaves the channel of
a disk unmapped rather than answering for a drive that is not emulated.
"""
from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from emu.devices import atapi
from emu.devices.atapi import QEMU_HW_VERSION
from emu.memory import AccessRules, CallbackOps, MemoryRegion
from emu.migration.vmstate import Field, LoadContext, VMStateDescription, load_state, save_state

# (io base, control port) of the primary and secondary channels
CHANNELS = ((0x1F0, 0x3F6), (0x170, 0x376))
_PORTIO_RULES = AccessRules(valid_min=1, valid_max=4, valid_unaligned=True, impl_min=1, impl_max=4,
                            impl_unaligned=True)

ERR_STAT, DRQ_STAT, SEEK_STAT, READY_STAT, BUSY_STAT = 0x01, 0x08, 0x10, 0x40, 0x80
ABRT_ERR = 0x04
IDE_CTRL_DISABLE_IRQ, IDE_CTRL_RESET, IDE_CTRL_HOB = 0x02, 0x04, 0x80
ATA_DEV_HS, ATA_DEV_SELECT, ATA_DEV_ALWAYS_ON = 0x0F, 0x10, 0xA0
ATA_DEV_LBA, ATA_DEV_LBA_MSB = 0x40, 0x0F
#: QEMU's io_buffer_total_len: IDE_DMA_BUF_SECTORS (256) sectors and 4 bytes
IO_BUFFER_LEN = 256 * 512 + 4
#: transfer_end_table: what runs when the data window is exhausted (the migrated index)
(END_SECTOR_READ, END_SECTOR_WRITE, END_TRANSFER_STOP, _, END_ATAPI_CMD, END_DUMMY) = range(6)
END_ATAPI_REPLY = atapi.END_ATAPI_REPLY
#: the end functions of a transfer from the device to the guest (ide_is_pio_out)
_PIO_OUT = (END_SECTOR_READ, END_TRANSFER_STOP, END_ATAPI_REPLY, END_DUMMY)
IDE_RETRY_PIO, IDE_RETRY_ATAPI = 0x10, 0x20
MAX_MULT_SECTORS = 16
SMART_ATTR_AUTOSAVE, SMART_EXECUTE_OFFLINE, SMART_ENABLE, SMART_DISABLE, SMART_STATUS = 0xD2, 0xD4, 0xD8, 0xD9, 0xDA

#: The task-file registers 1-5 a write stores (the previous value moves to its ``hob_`` copy)
TASK_FILE = {1: "feature", 2: "nsector", 3: "sector", 4: "lcyl", 5: "hcyl"}
#: ``vmstate_ide_drive``'s register fields, in stream order after mult_sectors/identify
DRIVE_REGISTERS = ("feature", "error", "nsector", "sector", "lcyl", "hcyl", "hob_feature", "hob_sector",
                   "hob_nsector", "hob_lcyl", "hob_hcyl", "select", "status", "lba48", "sense_key", "asc",
                   "cdrom_changed")


class IdeSlot:
    """One ``IDEState`` of a bus: the registers QEMU keeps for a slot, drive or not.

    ``has_drive`` marks the slot of the boot disk, whose ATA side is not modelled (its channel is
    unmapped); only its reset signature (cylinder 0 instead of 0xffff) differs here. ``is_cd``
    marks an ATAPI CD-ROM drive with no medium (:meth:`IdeBus.attach_cdrom`). Every slot has
    QEMU's PIO transfer state: the I/O buffer, the window ``data_ptr``..``data_end`` the data
    port reads or writes, and what runs once it is exhausted (``end_transfer``).
    """

    def __init__(self, unit: int = 0) -> None:
        self.unit = unit
        self.has_drive = False
        self.is_cd = False
        self.drive_serial = ""
        self.mult_sectors = 0
        self.identify_set = 0
        self.identify_data = bytearray(512)
        self.feature = self.error = self.nsector = self.sector = self.lcyl = self.hcyl = 0
        self.hob_feature = self.hob_sector = self.hob_nsector = self.hob_lcyl = self.hob_hcyl = 0
        self.select = self.status = self.lba48 = self.sense_key = self.asc = self.cdrom_changed = 0
        # SMART state: not migrated and kept across resets, as in QEMU
        self.smart_enabled = self.smart_autosave = 0
        # PIO transfer state (offsets into io_buffer) and the ATAPI packet state
        self.io_buffer = bytearray(IO_BUFFER_LEN)
        self.data_ptr = self.data_end = 0
        self.end_transfer = END_DUMMY
        self.req_nb_sectors = self.packet_transfer_size = self.elementary_transfer_size = 0
        self.io_buffer_index = self.io_buffer_size = self.cd_sector_size = self.atapi_dma = 0
        # tray and GET EVENT STATUS NOTIFICATION events (not reset by ide_reset's callers: the
        # tray is, the events are not)
        self.tray_open = self.tray_locked = False
        self.new_media = self.eject_request = False

    @property
    def has_blk(self) -> bool:
        """Whether QEMU's slot has a block backend (a disk, or a CD drive even without medium)."""
        return self.has_drive or self.is_cd

    def reset(self) -> None:
        """ide_reset for a hard-disk slot."""
        self.mult_sectors = MAX_MULT_SECTORS
        self.feature = self.error = self.nsector = self.sector = self.lcyl = self.hcyl = 0
        self.hob_feature = self.hob_sector = self.hob_nsector = self.hob_lcyl = self.hob_hcyl = 0
        self.select = ATA_DEV_ALWAYS_ON
        self.status = READY_STAT | SEEK_STAT
        self.lba48 = self.sense_key = self.asc = self.cdrom_changed = 0
        self.packet_transfer_size = self.elementary_transfer_size = self.io_buffer_index = 0
        self.cd_sector_size = self.atapi_dma = self.io_buffer_size = self.req_nb_sectors = 0
        self.tray_locked = self.tray_open = False
        self.set_signature()
        self.end_transfer = END_DUMMY
        self.dummy_transfer_stop()

    def set_signature(self) -> None:
        """ide_set_signature: head bits cleared, count/sector 1, cylinder 0xeb14 for a CD, 0 for a
        disk, 0xffff if none."""
        self.select &= ~ATA_DEV_HS & 0xFF
        self.nsector = self.sector = 1
        if self.is_cd:
            self.lcyl, self.hcyl = 0x14, 0xEB
        else:
            self.lcyl = self.hcyl = 0 if self.has_drive else 0xFF

    def dummy_transfer_stop(self) -> None:
        """ide_dummy_transfer_stop: an empty window; the buffer's first bytes read as ones."""
        self.data_ptr = self.data_end = 0
        self.io_buffer[0:4] = b"\xff\xff\xff\xff"

    def transfer_halt(self) -> None:
        """ide_transfer_halt (the PIIX has no cmd_done hook, so also ide_transfer_stop)."""
        self.end_transfer = END_TRANSFER_STOP
        self.data_ptr = self.data_end = 0
        self.status &= ~DRQ_STAT & 0xFF

    transfer_stop = transfer_halt

    def abort(self) -> None:
        """ide_abort_command."""
        self.status = READY_STAT | ERR_STAT
        self.error = ABRT_ERR
        self.transfer_stop()

    def get_sector(self) -> int:
        """ide_get_sector (a CD has no geometry: CHS addresses give ``sector - 1``)."""
        if self.select & ATA_DEV_LBA:
            if self.lba48:
                return (self.hob_hcyl << 40 | self.hob_lcyl << 32 | self.hob_sector << 24
                        | self.hcyl << 16 | self.lcyl << 8 | self.sector)
            return (self.select & ATA_DEV_LBA_MSB) << 24 | self.hcyl << 16 | self.lcyl << 8 | self.sector
        return self.sector - 1

    def lba48_transform(self, lba48: bool) -> None:
        """ide_cmd_lba48_transform: the full sector count into ``nsector`` (0 means 256 / 65536)."""
        self.lba48 = int(lba48)
        if not lba48:
            if not self.nsector:
                self.nsector = 256
        elif not self.nsector and not self.hob_nsector:
            self.nsector = 65536
        else:
            self.nsector = ((self.hob_nsector << 8) | self.nsector) & 0xFFFFFFFF

    def save_state(self, bus_error_status: int = 0) -> dict:
        """The ``ide_drive`` fields and its subsections' (with ide_drive_pio_pre_save's values)."""
        state: dict = {name: getattr(self, name) for name in DRIVE_REGISTERS}
        state.update(mult_sectors=self.mult_sectors, identify_set=self.identify_set,
                     identify_data=bytes(self.identify_data), bus_error_status=bus_error_status,
                     req_nb_sectors=self.req_nb_sectors, io_buffer=bytes(self.io_buffer),
                     cur_io_buffer_offset=self.data_ptr, cur_io_buffer_len=self.data_end - self.data_ptr,
                     end_transfer_fn_idx=self.end_transfer,
                     elementary_transfer_size=self.elementary_transfer_size,
                     packet_transfer_size=self.packet_transfer_size, tray_open=int(self.tray_open),
                     tray_locked=int(self.tray_locked), new_media=int(self.new_media),
                     eject_request=int(self.eject_request))
        return state

    def load_state(self, state: dict) -> None:
        """The loaded fields; a subsection the stream did not carry leaves its fields as they are."""
        for name in (*DRIVE_REGISTERS, "mult_sectors", "identify_set"):
            setattr(self, name, int(state.get(name, 0)))
        self.identify_data = bytearray(bytes(state.get("identify_data", bytes(512)))[:512].ljust(512, b"\0"))
        if "end_transfer_fn_idx" in state:  # ide_drive/pio_state (its post_load checked the values)
            self.req_nb_sectors = int(state["req_nb_sectors"])
            self.io_buffer[:] = bytes(state["io_buffer"])
            self.end_transfer = int(state["end_transfer_fn_idx"])
            self.data_ptr = int(state["cur_io_buffer_offset"])
            self.data_end = self.data_ptr + int(state["cur_io_buffer_len"])
            self.elementary_transfer_size = int(state["elementary_transfer_size"])
            self.packet_transfer_size = int(state["packet_transfer_size"])
            self.atapi_dma = self.feature & 1
        if "tray_open" in state:
            self.tray_open, self.tray_locked = bool(state["tray_open"]), bool(state["tray_locked"])
        if "new_media" in state:
            self.new_media, self.eject_request = bool(state["new_media"]), bool(state["eject_request"])


# A command's flags (QEMU's ide_cmd_table for a hard disk): whether a successful completion sets DSC
_DSC = 1


def ide_serial(bus_index: int, unit: int) -> str:
    """The default serial QEMU gives the drive at a PIIX slot ("QM%05d", slots numbered from 1
    in creation order: primary master, primary slave, secondary master, secondary slave)."""
    return f"QM{2 * bus_index + unit + 1:05d}"


def _padstr(text: str, length: int) -> bytes:
    """padstr: space padded, the bytes of each 16-bit word swapped."""
    raw = text.encode()[:length].ljust(length, b" ")
    return bytes(raw[i ^ 1] for i in range(length))


class IdeBus:
    """QEMU's ``IDEBus``: two slots, the device control register (``cmd``), the selected unit,
    and the DMA error/retry state (the retry registers are set by every PIO transfer start; the
    error status only ever by a loaded stream: no DMA is performed). ``irq(level)`` is the bus's
    interrupt line (the BMDMA's ``bmdma_irq``)."""

    def __init__(self, irq: Callable[[int], None]) -> None:
        self.irq = irq
        self.ifs = (IdeSlot(0), IdeSlot(1))
        self.cmd = self.unit = 0
        self.error_status = self.retry_sector_num = self.retry_nsector = self.retry_unit = 0
        #: an ATAPI reply waits for the bus master (QEMU's bm->dma_cb): kept across resets, as
        #: QEMU's is; when saved with the bus master stopped, it becomes a retry (error_status)
        self.dma_pending = False

    def attach_cdrom(self, unit: int, serial: str = "QM00003") -> IdeSlot:
        """Puts an ATAPI CD-ROM drive with an empty tray in slot ``unit`` (QEMU's ``ide-cd``
        without medium; the default serial is that of the secondary master, see :func:`ide_serial`)
        and resets it as QEMU's ide_init_drive does."""
        slot = self.ifs[unit]
        slot.is_cd = True
        slot.drive_serial = serial
        slot.smart_enabled = slot.smart_autosave = 1
        slot.reset()
        return slot

    @property
    def has_drive(self) -> bool:
        """Whether either slot has a block backend: the registers read back only then."""
        return self.ifs[0].has_blk or self.ifs[1].has_blk

    def reset(self) -> None:
        """ide_bus_reset (the BMDMA reset is the PCI function's)."""
        self.unit = self.cmd = 0
        for slot in self.ifs:
            slot.reset()

    def _set_irq(self) -> None:
        if not self.cmd & IDE_CTRL_DISABLE_IRQ:
            self.irq(1)

    # ---- the command block and the control port
    def write_register(self, reg: int, value: int) -> None:
        """ide_ioport_write: registers 1-6 go to both slots; 7 runs a command on the selected one."""
        slot = self.ifs[self.unit]
        if reg != 7 and slot.status & (BUSY_STAT | DRQ_STAT):
            return  # a busy device ignores the command block
        if reg == 0:
            return  # a data byte: the byte handler stores nothing
        self.cmd &= ~IDE_CTRL_HOB & 0xFF
        if reg in TASK_FILE:
            name = TASK_FILE[reg]
            for s in self.ifs:
                setattr(s, "hob_" + name, getattr(s, name) & 0xFF)
                setattr(s, name, value)
        elif reg == 6:
            for s in self.ifs:
                s.select = value | ATA_DEV_ALWAYS_ON
            self.unit = 1 if value & ATA_DEV_SELECT else 0
        else:
            self.irq(0)
            self._exec_cmd(value)

    def _missing(self, slot: IdeSlot) -> bool:
        """No drive anywhere on the bus, or the selected slave has none: error/status read 0."""
        return not self.has_drive or slot is not self.ifs[0] and not slot.has_blk

    def read_register(self, reg: int) -> int:
        """ide_ioport_read: 0 on a bus without drives; a status read lowers the interrupt."""
        slot = self.ifs[self.unit]
        if reg == 0:
            return self.data_readw() & 0xFF  # consumes a word of the transfer
        hob = self.cmd & IDE_CTRL_HOB
        if reg == 7:
            self.irq(0)
            return 0 if self._missing(slot) else slot.status
        if reg == 1:
            return 0 if self._missing(slot) else slot.hob_feature if hob else slot.error
        if not self.has_drive:
            return 0
        if reg == 6:
            return slot.select
        name = TASK_FILE[reg]
        return getattr(slot, "hob_" + name) if hob else getattr(slot, name) & 0xFF

    def read_status(self) -> int:
        """ide_status_read (the alternate status): the status without touching the interrupt."""
        slot = self.ifs[self.unit]
        return 0 if self._missing(slot) else slot.status

    def write_control(self, value: int) -> None:
        """ide_ctrl_write: stores the register; a 0->1 edge of SRST soft-resets both slots, after
        which the SRST bit reads back clear in the saved register (as QEMU's reset clears it)."""
        edge = not self.cmd & IDE_CTRL_RESET and value & IDE_CTRL_RESET
        self.cmd = value
        if edge:
            for slot in self.ifs:  # ide_perform_srst: halt the transfer, a reset, then diagnostics
                slot.status |= BUSY_STAT
                slot.transfer_halt()
                slot.reset()
                self._diagnose(slot)
            self.cmd &= ~IDE_CTRL_RESET & 0xFF

    # ---- the data port (ide_data_readw/writew/readl/writel)
    def _data_slot(self, pio_out: bool) -> IdeSlot | None:
        slot = self.ifs[self.unit]
        if not slot.status & DRQ_STAT or (slot.end_transfer in _PIO_OUT) != pio_out:
            return None
        return slot

    def _advance(self, slot: IdeSlot, size: int) -> None:
        slot.data_ptr += size
        if slot.data_ptr >= slot.data_end:
            slot.status &= ~DRQ_STAT & 0xFF
            self._end_transfer(slot)

    def data_read(self, size: int) -> int:
        """A word or dword of a transfer to the guest; 0 outside one."""
        slot = self._data_slot(True)
        if slot is None or slot.data_ptr + size > slot.data_end:
            return 0
        value = int.from_bytes(slot.io_buffer[slot.data_ptr:slot.data_ptr + size], "little")
        self._advance(slot, size)
        return value

    def data_readw(self) -> int:
        return self.data_read(2)

    def data_write(self, value: int, size: int) -> None:
        """A word or dword of a transfer from the guest; dropped outside one."""
        slot = self._data_slot(False)
        if slot is None or slot.data_ptr + size > slot.data_end:
            return
        slot.io_buffer[slot.data_ptr:slot.data_ptr + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self._advance(slot, size)

    def transfer_start(self, slot: IdeSlot, start: int, size: int, end: int) -> None:
        """ide_transfer_start: the data window, the retry registers, DRQ unless in error."""
        slot.data_ptr, slot.data_end = start, start + size
        self.retry_unit = slot.unit
        self.retry_sector_num = slot.get_sector()
        self.retry_nsector = slot.nsector & 0xFFFFFFFF
        if not slot.status & ERR_STAT:
            slot.status |= DRQ_STAT
        slot.end_transfer = end

    def _end_transfer(self, slot: IdeSlot) -> None:
        if slot.end_transfer == END_ATAPI_CMD:
            atapi.atapi_cmd(self, slot)
        elif slot.end_transfer == END_ATAPI_REPLY:
            atapi.reply_end(self, slot)
        elif slot.end_transfer == END_DUMMY:
            slot.dummy_transfer_stop()
        else:  # ide_transfer_stop; sector reads/writes (only from a loaded stream) are not modelled
            slot.transfer_stop()

    # ---- ATA commands
    def _diagnose(self, slot: IdeSlot) -> bool:
        """EXECUTE DEVICE DIAGNOSTIC (also the end of a soft reset): signature, "device 0 passed";
        a packet device clears its status and raises no interrupt."""
        slot.select = ATA_DEV_ALWAYS_ON
        slot.set_signature()
        slot.error = 0x01
        if slot.is_cd:
            slot.status = 0
        else:
            slot.status = READY_STAT | SEEK_STAT
            self._set_irq()
        return False

    def _exec_cmd(self, cmd: int) -> None:
        """ide_exec_cmd. Commands to a missing slave are ignored; the master slot runs them even
        without a drive: data transfers, IDENTIFY and the like abort for lack of a backend. A CD
        runs the packet-device command set; only DEVICE RESET reaches it while BSY/DRQ is set."""
        slot = self.ifs[self.unit]
        if slot is not self.ifs[0] and not slot.has_blk:
            return
        if slot.status & (BUSY_STAT | DRQ_STAT) and not (cmd == 0x08 and slot.is_cd):
            return
        entry = (_CD_COMMANDS if slot.is_cd else _HD_COMMANDS).get(cmd)
        if entry is None:  # not permitted for this kind of drive
            slot.abort()
            self._set_irq()
            return
        handler, flags = entry
        slot.status = READY_STAT | BUSY_STAT
        slot.error = 0
        if handler(self, slot, cmd):
            slot.status &= ~BUSY_STAT & 0xFF
            if flags & _DSC and not slot.error:
                slot.status |= SEEK_STAT
            self._set_irq()

    def _diagnose_cmd(self, slot: IdeSlot, cmd: int) -> bool:
        return self._diagnose(slot)

    def _abort(self, slot: IdeSlot, cmd: int) -> bool:
        slot.abort()
        return True

    def _nop(self, slot: IdeSlot, cmd: int) -> bool:
        return True

    def _verify(self, slot: IdeSlot, cmd: int) -> bool:
        slot.lba48_transform(cmd == 0x42)  # READ VERIFY SECTORS (EXT)
        return True

    def _check_power_mode(self, slot: IdeSlot, cmd: int) -> bool:
        slot.nsector = 0xFF  # active or idle
        return True

    def _set_multiple_mode(self, slot: IdeSlot, cmd: int) -> bool:
        count = slot.nsector & 0xFF
        if count and (count > MAX_MULT_SECTORS or slot.nsector & (slot.nsector - 1)):
            slot.abort()
        else:
            slot.mult_sectors = count
        return True

    def _flush_cache(self, slot: IdeSlot, cmd: int) -> bool:
        if slot.has_blk:  # a CD without medium: the flush fails (ENOMEDIUM, reported: ide_rw_error)
            slot.status |= BUSY_STAT
            self.retry_unit, self.retry_sector_num = slot.unit, slot.get_sector()
            self.retry_nsector = slot.nsector & 0xFFFFFFFF
            slot.abort()
        else:  # nothing to flush: completes at once (ide_flush_cb)
            slot.status = READY_STAT | SEEK_STAT
        self._set_irq()
        return False

    def _wear_level(self, slot: IdeSlot, cmd: int) -> bool:
        slot.nsector = 0
        return True

    def _smart(self, slot: IdeSlot, cmd: int) -> bool:
        if slot.hcyl != 0xC2 or slot.lcyl != 0x4F or not slot.smart_enabled and slot.feature != SMART_ENABLE:
            slot.abort()
        elif slot.feature in (SMART_ENABLE, SMART_DISABLE):
            slot.smart_enabled = int(slot.feature == SMART_ENABLE)
        elif slot.feature == SMART_ATTR_AUTOSAVE and slot.sector in (0x00, 0xF1):
            slot.smart_autosave = int(slot.sector == 0xF1)
        elif slot.feature == SMART_STATUS:
            slot.hcyl, slot.lcyl = 0xC2, 0x4F  # no threshold exceeded
        elif slot.feature == SMART_EXECUTE_OFFLINE and slot.sector in (0, 1, 2):
            pass  # logged in the self-test log, which only the unmodelled READ LOG shows
        else:
            slot.abort()  # bad subcommand; also READ DATA/THRESHOLDS/LOG (not modelled)
        return True

    # ---- the packet-device (CD) commands
    def _device_reset(self, slot: IdeSlot, cmd: int) -> bool:
        """DEVICE RESET: halt the transfer, reset the slot; the status reads 0, no interrupt."""
        slot.transfer_halt()
        slot.reset()
        slot.status = 0
        return False

    def _cd_abort_signature(self, slot: IdeSlot, cmd: int) -> bool:
        """READ SECTORS and IDENTIFY DEVICE on a packet device: the signature, then abort."""
        slot.set_signature()
        slot.abort()
        return True

    def _identify_packet(self, slot: IdeSlot, cmd: int) -> bool:
        """IDENTIFY PACKET DEVICE: QEMU's ide-cd identify data, 512 bytes by PIO."""
        if not slot.identify_set:
            slot.identify_data[:] = atapi_identify_data(slot.drive_serial)
            slot.identify_set = 1
        slot.io_buffer[0:512] = slot.identify_data
        slot.status = READY_STAT | SEEK_STAT
        self.transfer_start(slot, 0, 512, END_TRANSFER_STOP)
        self._set_irq()
        return False

    def _packet(self, slot: IdeSlot, cmd: int) -> bool:
        """PACKET: the 12 command bytes by PIO, then the ATAPI command (emu.devices.atapi)."""
        if slot.feature & 0x02:  # overlapped commands are not supported
            slot.abort()
            return True
        slot.status = READY_STAT | SEEK_STAT
        slot.atapi_dma = slot.feature & 1
        slot.nsector = 1
        self.transfer_start(slot, 0, 12, END_ATAPI_CMD)
        return False

    def _set_features(self, slot: IdeSlot, cmd: int) -> bool:
        """SET FEATURES on a slot with a backend (a CD here): write cache and transfer-mode
        subcommands edit the identify words, the rest are accepted or abort as in QEMU."""
        words = slot.identify_data

        def put(index: int, value: int) -> None:
            words[2 * index:2 * index + 2] = value.to_bytes(2, "little")
        feature = slot.feature
        if feature == 0x02:
            put(85, (1 << 14) | (1 << 5) | 1)
            return True
        if feature == 0x82:  # write cache disable, then a flush, which fails without medium
            put(85, (1 << 14) | 1)
            self._flush_cache(slot, cmd)
            return False
        if feature in (0xCC, 0x66, 0xAA, 0x55, 0x05, 0x85, 0x69, 0x67, 0x96, 0x9A, 0x42, 0xC2):
            return True  # (power-on defaults reversion changes nothing for a CD: no geometry)
        if feature == 0x03:
            val, mode = slot.nsector & 0x07, slot.nsector >> 3
            bit = 1 << (val + 8)
            modes = {0: (7, 7, 0x3F), 1: (7, 7, 0x3F), 2: (7 | bit, 7, 0x3F), 4: (7, 7 | bit, 0x3F),
                     8: (7, 7, 0x3F | bit)}
            if mode in modes:
                for index, value in zip((62, 63, 88), modes[mode]):
                    put(index, value & 0xFFFF)
                return True
        slot.abort()
        return True


def atapi_identify_data(serial: str, version: str = QEMU_HW_VERSION, model: str = "QEMU DVD-ROM") -> bytes:
    """ide_atapi_identify with QEMU's USE_DMA_CDROM: the 512 bytes IDENTIFY PACKET returns."""
    words = [0] * 256
    words[0] = (2 << 14) | (5 << 8) | (1 << 7) | (2 << 5)  # removable CD-ROM, 50us, 12-byte packets
    words[20], words[21], words[22] = 3, 512, 4  # buffer type, cache size, ECC bytes
    words[48], words[49], words[53] = 1, (1 << 9) | (1 << 8), 7  # dword I/O; DMA and LBA; valid words
    words[62], words[63], words[64] = 7, 7, 3  # single/multiword DMA 0-2, PIO 3-4
    words[65], words[66], words[67], words[68] = 0xB4, 0xB4, 0x12C, 0xB4  # cycle times
    words[71], words[72], words[80], words[88] = 30, 30, 0x1E, 0x3F | (1 << 13)  # ATA/ATAPI-4, udma5
    data = bytearray(b"".join(w.to_bytes(2, "little") for w in words))
    data[20:40] = _padstr(serial, 20)
    data[46:54] = _padstr(version, 8)
    data[54:94] = _padstr(model, 40)
    return bytes(data)


_CommandHandler = Callable[[IdeBus, IdeSlot, int], bool]


def _command_table() -> dict[int, tuple[_CommandHandler, int]]:
    """The commands QEMU 7.2 permits on a hard-disk slot, as they behave without a block backend."""
    b = IdeBus
    table: dict[int, tuple[_CommandHandler, int]] = {}
    for cmds, handler, flags in (
        # reads/writes (PIO, multiple, DMA), IDENTIFY, SET FEATURES, INITIALIZE DEVICE PARAMETERS,
        # DATA SET MANAGEMENT and READ NATIVE MAX (no sectors): abort without a backend
        ((0x06, 0x20, 0x21, 0x24, 0x25, 0x29, 0x30, 0x31, 0x34, 0x35, 0x39, 0x3C, 0xC4, 0xC5, 0xC8, 0xC9,
          0xCA, 0xCB, 0xEC), b._abort, 0),
        ((0x27, 0x91, 0xEF, 0xF8), b._abort, _DSC),
        ((0x10, 0x70), b._nop, _DSC),  # RECALIBRATE, SEEK
        ((0x94, 0x95, 0x96, 0x97, 0x99, 0xE0, 0xE1, 0xE2, 0xE3, 0xE6), b._nop, 0),  # power management
        ((0x40, 0x41, 0x42), b._verify, _DSC),
        ((0x90,), b._diagnose_cmd, 0),
        ((0x98, 0xE5), b._check_power_mode, _DSC),
        ((0xB0,), b._smart, _DSC),
        ((0xC6,), b._set_multiple_mode, _DSC),
        ((0xE7, 0xEA), b._flush_cache, 0),
        ((0xF5,), b._wear_level, _DSC),
    ):
        table.update(dict.fromkeys(cmds, (handler, flags)))
    return table


_HD_COMMANDS = _command_table()
#: The commands QEMU 7.2 permits on a CD slot (CD_OK / ALL_OK in ide_cmd_table)
_CD_COMMANDS: dict[int, tuple[_CommandHandler, int]] = {
    0x08: (IdeBus._device_reset, 0), 0x20: (IdeBus._cd_abort_signature, 0), 0x90: (IdeBus._diagnose_cmd, 0),
    0xA0: (IdeBus._packet, 0), 0xA1: (IdeBus._identify_packet, 0), 0xE7: (IdeBus._flush_cache, 0),
    0xEC: (IdeBus._cd_abort_signature, 0), 0xEF: (IdeBus._set_features, _DSC),
}


class EmptyIdeChannel:
    """The ``ide`` (8 ports) and control (1 port) regions of a channel on ``bus``: without drives
    (every register reads 0), or with a CD attached (:meth:`IdeBus.attach_cdrom`), whose
    registers, data port and alternate status answer as QEMU's do. The name is historical."""

    def __init__(self, bus: IdeBus) -> None:
        self.bus = bus
        self.block_io = MemoryRegion.io("ide", 8, CallbackOps(self._block_read, self._block_write, _PORTIO_RULES))
        self.control_io = MemoryRegion.io("ide", 1, CallbackOps(self._control_read, self._control_write,
                                                                _PORTIO_RULES))

    def _block_read(self, offset: int, size: int) -> int:
        if size == 1:
            return self.bus.read_register(offset)
        if offset == 0:  # the data port's word and dword handlers
            return self.bus.data_read(size)
        if size == 2:  # two byte handlers, the second past the end reads 0xff
            low = self.bus.read_register(offset)
            high = self.bus.read_register(offset + 1) if offset + 1 < 8 else 0xFF
            return low | high << 8
        return (1 << (8 * size)) - 1

    def _block_write(self, offset: int, value: int, size: int) -> None:
        if size == 1:
            self.bus.write_register(offset, value & 0xFF)
        elif offset == 0:
            self.bus.data_write(value, size)
        elif size == 2:  # two byte handlers
            self.bus.write_register(offset, value & 0xFF)
            if offset + 1 < 8:
                self.bus.write_register(offset + 1, (value >> 8) & 0xFF)

    def _control_read(self, offset: int, size: int) -> int:
        if size == 1:
            return self.bus.read_status()
        if size == 2:
            return self.bus.read_status() | 0xFF00
        return (1 << (8 * size)) - 1

    def _control_write(self, offset: int, value: int, size: int) -> None:
        if size <= 2:  # a word becomes its low byte: the high one is past the port
            self.bus.write_control(value & 0xFF)


#: the same class: a channel answers for whatever its bus holds
IdeChannel = EmptyIdeChannel


# ---------------------------------------------------------------- migration (hw/ide/pci.c, core.c)

#: BMDMA status bits QEMU < 2.x used for the bus's retry state: they travel in the bus error
#: state, and the status byte goes in a subsection of its own when the guest has set them
BM_MIGRATION_COMPAT_STATUS_BITS = 0x08 | 0x10 | 0x20 | 0x40  # IDE_RETRY_DMA | PIO | READ | FLUSH


def struct_field(name: str, vmsd: VMStateDescription) -> Field:
    """A nested struct (VMSTATE_STRUCT): its state is the dict ``state[name]``, saved and loaded
    with ``vmsd`` at that vmsd's own version, its subsections right after its fields."""
    def put(state: dict) -> bytes:
        return save_state(vmsd, dict(state.get(name, {})))

    def get(f: Any, state: dict, ctx: LoadContext) -> int:
        sub: dict = {}
        ret = load_state(f, vmsd, sub, vmsd.version_id, ctx)
        state[name] = sub
        return ret
    return Field(name, "struct", put=put, get=get, vmdesc_type="struct")


def _bmdma_pre_save(state: dict) -> None:
    """ide_bmdma_pre_save: the status with the bus's retry bits folded in (migration_compat_status)."""
    abused = BM_MIGRATION_COMPAT_STATUS_BITS
    state["migration_compat_status"] = (int(state.get("status", 0)) & ~abused) | (
        int(state.get("error_status", 0)) & abused)


#: "ide bmdma" v3. ``ide bmdma_current`` (the PRD walk, needed while cur_prd_len != 0) is left out:
#: no transfer ever runs, so cur_prd_len stays 0.
VMSTATE_BMDMA = VMStateDescription(
    name="ide bmdma", version_id=3, minimum_version_id=0, pre_save=_bmdma_pre_save,
    fields=[Field("cmd", "uint8"), Field("migration_compat_status", "uint8"), Field("addr", "uint32"),
            Field("migration_retry_sector_num", "int64"), Field("migration_retry_nsector", "uint32"),
            Field("migration_retry_unit", "uint8")],
    subsections=[VMStateDescription(
        name="ide bmdma/status", version_id=1, minimum_version_id=1, fields=[Field("status", "uint8")],
        needed=lambda s: bool(int(s.get("status", 0)) & BM_MIGRATION_COMPAT_STATUS_BITS))],
)

#: "ide_bus" v1 with its error/retry subsection
VMSTATE_IDE_BUS = VMStateDescription(
    name="ide_bus", version_id=1, minimum_version_id=1,
    fields=[Field("cmd", "uint8"), Field("unit", "uint8")],
    subsections=[VMStateDescription(
        name="ide_bus/error", version_id=2, minimum_version_id=1,
        fields=[Field("error_status", "int32"), Field("retry_sector_num", "int64", version_id=2),
                Field("retry_nsector", "uint32", version_id=2), Field("retry_unit", "uint8", version_id=2)],
        needed=lambda s: bool(s.get("error_status")))],
)


def _put_identify(state: dict) -> bytes:
    """VMSTATE_BUFFER_TEST: the IDENTIFY data only once a drive has built it."""
    return bytes(state.get("identify_data", b""))[:512].ljust(512, b"\0") if state.get("identify_set") else b""


def _get_identify(f: Any, state: dict, ctx: LoadContext) -> int:
    if state.get("identify_set"):
        state["identify_data"] = f.get(512)
    return 0


_UINT32_REGISTERS = {"nsector"}


def _pio_post_load(state: dict, version_id: int, ctx: LoadContext) -> int:
    """ide_drive_pio_post_load: a known end function; the window must lie in the buffer (QEMU
    does not check that, and would run off its buffer)."""
    offset, length = int(state["cur_io_buffer_offset"]), int(state["cur_io_buffer_len"])
    if int(state["end_transfer_fn_idx"]) > END_DUMMY or not 0 <= offset <= offset + length <= IO_BUFFER_LEN:
        return -errno.EINVAL
    return 0


#: "ide_drive/pio_state": a transfer in its data phase (the whole I/O buffer travels)
VMSTATE_IDE_DRIVE_PIO = VMStateDescription(
    name="ide_drive/pio_state", version_id=1, minimum_version_id=1, post_load=_pio_post_load,
    fields=[Field("req_nb_sectors", "int32"), Field("io_buffer", "buffer", IO_BUFFER_LEN),
            Field("cur_io_buffer_offset", "int32"), Field("cur_io_buffer_len", "int32"),
            Field("end_transfer_fn_idx", "uint8"), Field("elementary_transfer_size", "int32"),
            Field("packet_transfer_size", "int32")],
    needed=lambda s: bool(int(s.get("status", 0)) & DRQ_STAT or int(s.get("bus_error_status", 0)) & IDE_RETRY_PIO))
#: "ide_drive/tray_state": an open or locked tray
VMSTATE_IDE_TRAY = VMStateDescription(
    name="ide_drive/tray_state", version_id=1, minimum_version_id=1,
    fields=[Field("tray_open", "bool"), Field("tray_locked", "bool")],
    needed=lambda s: bool(s.get("tray_open") or s.get("tray_locked")))
#: "ide_drive/atapi/gesn_state": pending media events
VMSTATE_IDE_GESN = VMStateDescription(
    name="ide_drive/atapi/gesn_state", version_id=1, minimum_version_id=1,
    fields=[Field("new_media", "bool"), Field("eject_request", "bool")],
    needed=lambda s: bool(s.get("new_media") or s.get("eject_request")))

#: "ide_drive" v3 with its subsections (PIO transfer state, tray state, ATAPI events)
VMSTATE_IDE_DRIVE = VMStateDescription(
    name="ide_drive", version_id=3, minimum_version_id=0,
    fields=[Field("mult_sectors", "int32"), Field("identify_set", "int32"),
            Field("identify_data", "buffer", 512, put=_put_identify, get=_get_identify, vmdesc_type="buffer"),
            *(Field(name, "uint32" if name in _UINT32_REGISTERS else "uint8",
                    version_id=3 if name == "cdrom_changed" else 0) for name in DRIVE_REGISTERS)],
    subsections=[VMSTATE_IDE_DRIVE_PIO, VMSTATE_IDE_TRAY, VMSTATE_IDE_GESN],
)


def ide_bus_fields() -> list[Field]:
    """The fields of vmstate_ide_pci after the PCIDevice struct: bmdma[2], bus[2], each bus's ifs[2]."""
    return [*(struct_field(f"bmdma[{i}]", VMSTATE_BMDMA) for i in range(2)),
            *(struct_field(f"bus[{i}]", VMSTATE_IDE_BUS) for i in range(2)),
            *(struct_field(f"bus[{b}].ifs[{i}]", VMSTATE_IDE_DRIVE) for b in range(2) for i in range(2))]


def save_ide_buses(buses: list[IdeBus], bm_cmd: list[int], bm_status: list[int], bm_addr: list[int]) -> dict:
    """The struct states of :func:`ide_bus_fields` (the BMDMA registers are the PCI function's)."""
    state: dict = {}
    for i, bus in enumerate(buses):
        if bus.dma_pending and not bm_status[i] & 1:  # ide_bmdma_pre_save: a DMA to retry
            bus.error_status = IDE_RETRY_ATAPI
        state[f"bmdma[{i}]"] = {"cmd": bm_cmd[i], "status": bm_status[i], "addr": bm_addr[i],
                                "error_status": bus.error_status,
                                "migration_retry_sector_num": bus.retry_sector_num,
                                "migration_retry_nsector": bus.retry_nsector,
                                "migration_retry_unit": bus.retry_unit}
        state[f"bus[{i}]"] = {"cmd": bus.cmd, "unit": bus.unit, "error_status": bus.error_status,
                              "retry_sector_num": bus.retry_sector_num, "retry_nsector": bus.retry_nsector,
                              "retry_unit": bus.retry_unit}
        for n, slot in enumerate(bus.ifs):
            state[f"bus[{i}].ifs[{n}]"] = slot.save_state(bus.error_status)
    return state


def load_ide_buses(state: dict, buses: list[IdeBus]) -> list[tuple[int, int, int]]:
    """Takes the loaded structs into ``buses``; returns each BMDMA's (cmd, status, addr), the
    status rebuilt as ide_pci_post_load does (from migration_compat_status unless the
    ``ide bmdma/status`` subsection carried it, the retry bits going back to the bus)."""
    bmdma = []
    for i, bus in enumerate(buses):
        bm, st = state.get(f"bmdma[{i}]", {}), state.get(f"bus[{i}]", {})
        bus.cmd, bus.unit = int(st.get("cmd", 0)), int(st.get("unit", 0))
        bus.error_status = int(st.get("error_status", 0))
        if "retry_sector_num" in st:
            bus.retry_sector_num, bus.retry_nsector = int(st["retry_sector_num"]), int(st["retry_nsector"])
            bus.retry_unit = int(st["retry_unit"])
        for n, slot in enumerate(bus.ifs):
            slot.load_state(state.get(f"bus[{i}].ifs[{n}]", {}))
        status = int(bm.get("status", 0))
        compat = int(bm.get("migration_compat_status", 0))
        if status == 0:
            status = compat & ~BM_MIGRATION_COMPAT_STATUS_BITS
            bus.error_status |= compat & BM_MIGRATION_COMPAT_STATUS_BITS
        if bus.error_status:
            bus.retry_sector_num = int(bm.get("migration_retry_sector_num", 0))
            bus.retry_nsector = int(bm.get("migration_retry_nsector", 0))
            bus.retry_unit = int(bm.get("migration_retry_unit", 0)) & 1  # older streams kept more bits
        bmdma.append((int(bm.get("cmd", 0)), status, int(bm.get("addr", 0))))
    return bmdma
