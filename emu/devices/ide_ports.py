"""The IDE buses of the PIIX IDE function and the legacy ports of a channel with no drive on it,
as QEMU 7.2 keeps and answers them (hw/ide/core.c, hw/ide/ioport.c).

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

Not modelled: the three SMART data-in subcommands (READ DATA, READ THRESHOLDS, READ LOG), which
need SMART enabled with the 0xc24f signature and would start a PIO transfer: they abort here.
QEMU performs a soft reset (SRST) in a bottom half, leaving both slots BUSY until it runs; here
it happens during the control write. The difference shows only for accesses queued behind that
write in the same batch of qtest commands (QEMU ignores their task-file writes, we store them).

A channel with a drive needs the ATA command set, which is not modelled: the board leaves such
a channel's ports unmapped rather than answering for a drive that is not emulated.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    unmapped); only its reset signature (cylinder 0 instead of 0xffff) differs here.
    """

    def __init__(self) -> None:
        self.has_drive = False
        self.mult_sectors = 0
        self.identify_set = 0
        self.identify_data = bytes(512)
        self.feature = self.error = self.nsector = self.sector = self.lcyl = self.hcyl = 0
        self.hob_feature = self.hob_sector = self.hob_nsector = self.hob_lcyl = self.hob_hcyl = 0
        self.select = self.status = self.lba48 = self.sense_key = self.asc = self.cdrom_changed = 0
        # SMART state: not migrated and kept across resets, as in QEMU
        self.smart_enabled = self.smart_autosave = 0

    def reset(self) -> None:
        """ide_reset for a hard-disk slot."""
        self.mult_sectors = MAX_MULT_SECTORS
        self.feature = self.error = self.nsector = self.sector = self.lcyl = self.hcyl = 0
        self.hob_feature = self.hob_sector = self.hob_nsector = self.hob_lcyl = self.hob_hcyl = 0
        self.select = ATA_DEV_ALWAYS_ON
        self.status = READY_STAT | SEEK_STAT
        self.lba48 = self.sense_key = self.asc = self.cdrom_changed = 0
        self.set_signature()

    def set_signature(self) -> None:
        """ide_set_signature: head bits cleared, count/sector 1, cylinder 0 for a disk, 0xffff if none."""
        self.select &= ~ATA_DEV_HS & 0xFF
        self.nsector = self.sector = 1
        self.lcyl = self.hcyl = 0 if self.has_drive else 0xFF

    def abort(self) -> None:
        """ide_abort_command."""
        self.status = READY_STAT | ERR_STAT
        self.error = ABRT_ERR

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

    def save_state(self) -> dict:
        """The ``ide_drive`` fields."""
        state = {name: getattr(self, name) for name in DRIVE_REGISTERS}
        state.update(mult_sectors=self.mult_sectors, identify_set=self.identify_set,
                     identify_data=self.identify_data)
        return state

    def load_state(self, state: dict) -> None:
        for name in (*DRIVE_REGISTERS, "mult_sectors", "identify_set"):
            setattr(self, name, int(state.get(name, 0)))
        self.identify_data = bytes(state.get("identify_data", bytes(512)))


# A command's flags (QEMU's ide_cmd_table for a hard disk): whether a successful completion sets DSC
_DSC = 1


class IdeBus:
    """QEMU's ``IDEBus`` of a bus with no drive attached: two slots, the device control register
    (``cmd``), the selected unit, and the DMA error/retry state (only ever set by a loaded stream:
    no DMA is performed). ``irq(level)`` is the bus's interrupt line (the BMDMA's ``bmdma_irq``)."""

    def __init__(self, irq: Callable[[int], None]) -> None:
        self.irq = irq
        self.ifs = (IdeSlot(), IdeSlot())
        self.cmd = self.unit = 0
        self.error_status = self.retry_sector_num = self.retry_nsector = self.retry_unit = 0

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
            return  # a data byte outside a transfer
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

    def read_register(self, reg: int) -> int:
        """ide_ioport_read of a bus without drives: 0, and a status read lowers the interrupt."""
        if reg == 7:
            self.irq(0)
        return 0

    def write_control(self, value: int) -> None:
        """ide_ctrl_write: stores the register; a 0->1 edge of SRST soft-resets both slots, after
        which the SRST bit reads back clear in the saved register (as QEMU's reset clears it)."""
        edge = not self.cmd & IDE_CTRL_RESET and value & IDE_CTRL_RESET
        self.cmd = value
        if edge:
            for slot in self.ifs:  # ide_perform_srst: no transfer to halt, a reset, then diagnostics
                slot.reset()
                self._diagnose(slot)
            self.cmd &= ~IDE_CTRL_RESET & 0xFF

    # ---- ATA commands on a slot without a block backend
    def _diagnose(self, slot: IdeSlot) -> bool:
        """EXECUTE DEVICE DIAGNOSTIC (also the end of a soft reset): signature, "device 0 passed"."""
        slot.select = ATA_DEV_ALWAYS_ON
        slot.set_signature()
        slot.status = READY_STAT | SEEK_STAT
        slot.error = 0x01
        self._set_irq()
        return False

    def _exec_cmd(self, cmd: int) -> None:
        """ide_exec_cmd. Commands to a missing slave are ignored; the master slot runs them even
        without a drive: data transfers, IDENTIFY and the like abort for lack of a backend."""
        slot = self.ifs[self.unit]
        if self.unit == 1 or slot.status & (BUSY_STAT | DRQ_STAT):
            return
        entry = _HD_COMMANDS.get(cmd)
        if entry is None:  # not a hard-disk command
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
        # nothing to flush: completes at once (ide_flush_cb)
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


class EmptyIdeChannel:
    """The ``ide`` (8 ports) and control (1 port) regions of a channel without drives, on ``bus``."""

    def __init__(self, bus: IdeBus) -> None:
        self.bus = bus
        self.block_io = MemoryRegion.io("ide", 8, CallbackOps(self._block_read, self._block_write, _PORTIO_RULES))
        self.control_io = MemoryRegion.io("ide", 1, CallbackOps(self._control_read, self._control_write,
                                                                _PORTIO_RULES))

    def _block_read(self, offset: int, size: int) -> int:
        if size == 1 or offset == 0:  # a register byte, or the data port at any width: no data
            return self.bus.read_register(offset) if size == 1 else 0
        if size == 2:  # two byte handlers, the second past the end reads 0xff
            low = self.bus.read_register(offset)
            high = self.bus.read_register(offset + 1) if offset + 1 < 8 else 0xFF
            return low | high << 8
        return (1 << (8 * size)) - 1

    def _block_write(self, offset: int, value: int, size: int) -> None:
        if size == 1:
            self.bus.write_register(offset, value & 0xFF)
        elif size == 2 and offset:  # the data port's word handler has no transfer to feed
            self.bus.write_register(offset, value & 0xFF)
            if offset + 1 < 8:
                self.bus.write_register(offset + 1, (value >> 8) & 0xFF)

    def _control_read(self, offset: int, size: int) -> int:
        if size == 1:
            return 0  # alternate status of an empty bus
        if size == 2:
            return 0xFF00
        return (1 << (8 * size)) - 1

    def _control_write(self, offset: int, value: int, size: int) -> None:
        if size <= 2:  # a word becomes its low byte: the high one is past the port
            self.bus.write_control(value & 0xFF)


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
#: "ide_drive" v3. Its subsections (PIO transfer state, tray state, ATAPI events) are needed only
#: for a transfer in its data phase or a CD-ROM, neither of which exists here, so none is defined:
#: a stream carrying one is refused (unknown subsection) rather than half understood.
VMSTATE_IDE_DRIVE = VMStateDescription(
    name="ide_drive", version_id=3, minimum_version_id=0,
    fields=[Field("mult_sectors", "int32"), Field("identify_set", "int32"),
            Field("identify_data", "buffer", 512, put=_put_identify, get=_get_identify, vmdesc_type="buffer"),
            *(Field(name, "uint32" if name in _UINT32_REGISTERS else "uint8",
                    version_id=3 if name == "cdrom_changed" else 0) for name in DRIVE_REGISTERS)],
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
        state[f"bmdma[{i}]"] = {"cmd": bm_cmd[i], "status": bm_status[i], "addr": bm_addr[i],
                                "error_status": bus.error_status,
                                "migration_retry_sector_num": bus.retry_sector_num,
                                "migration_retry_nsector": bus.retry_nsector,
                                "migration_retry_unit": bus.retry_unit}
        state[f"bus[{i}]"] = {"cmd": bus.cmd, "unit": bus.unit, "error_status": bus.error_status,
                              "retry_sector_num": bus.retry_sector_num, "retry_nsector": bus.retry_nsector,
                              "retry_unit": bus.retry_unit}
        for n, slot in enumerate(bus.ifs):
            state[f"bus[{i}].ifs[{n}]"] = slot.save_state()
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
