"""The 8259A programmable interrupt controller pair (master 0x20/0x21, slave 0xa0/0xa1, ELCR
0x4d0/0x4d1), cascaded on master input 2, as QEMU 7.2's ``isa-i8259`` pair behaves.

Initialisation words (ICW1-ICW4, including single mode and special fully nested mode), the mask
(OCW1), end-of-interrupt and rotation commands (OCW2), IRR/ISR reads, poll mode and special mask
(OCW3), edge and level triggering (ELCR), fixed priority with rotation, and the interrupt
acknowledge cycle the CPU runs (``acknowledge``). The master's INT output is the CPU's INTR line.

Migration: QEMU has one ``isa-i8259`` device per chip, hence two ``i8259`` sections (version 1,
instance 0 the master, 1 the slave). This one object models both chips, so it lists its sections
through ``vmstate_sections``/``load_vmstate_sections`` instead of the single-section ``vmsd`` hook.
"""
from __future__ import annotations

from emu.devices.base import Device
from emu.memory import AccessRules, CallbackOps, MemoryRegion
from emu.migration.vmstate import Field, VMStateDescription

#: the chip state QEMU's ``vmstate_pic_common`` carries, in stream order (all uint8)
PIC_STATE_FIELDS = (
    "last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_reg_select", "poll",
    "special_mask", "init_state", "auto_eoi", "rotate_on_auto_eoi", "special_fully_nested_mode",
    "init4", "single_mode", "elcr",
)

#: QEMU 7.2's ``vmstate_pic_common`` ("i8259" version 1)
VMSTATE_I8259 = VMStateDescription(name="i8259", version_id=1, minimum_version_id=1,
                                   fields=[Field(name, "uint8") for name in PIC_STATE_FIELDS])

#: one migration section: (idstr, instance_id, description, field values)
VMStateSection = tuple[str, int, VMStateDescription, dict]


class PicChip:
    """One 8259A; attribute names are those of QEMU's ``PICCommonState``."""

    def __init__(self, name: str, master: bool = False) -> None:
        self.name = name
        self.master = master
        self.elcr = 0  # 1 bit per input: level triggered (an ICW1 does not clear it)
        self.elcr_mask = 0xFF
        self.irr = 0
        self.reset()

    def reset(self) -> None:
        """The ICW1 reset (QEMU's ``pic_reset_common``): level-triggered requests stay pending."""
        self.last_irr = 0  # input levels, for edge detection
        self.irr &= self.elcr
        self.isr = self.imr = 0
        self.irq_base = 0
        self.priority_add = 0
        self.read_reg_select = 0  # OCW3: 1 = reads of port 0 return ISR
        self.poll = 0
        self.init_state = 0
        self.auto_eoi = 0
        self.special_mask = 0
        self.rotate_on_auto_eoi = 0
        self.special_fully_nested_mode = 0
        self.single_mode = 0
        self.init4 = 0

    def set_irq(self, irq: int, level: int) -> None:
        mask = 1 << irq
        if self.elcr & mask:  # level triggered
            if level:
                self.irr |= mask
                self.last_irr |= mask
            else:
                self.irr &= ~mask
                self.last_irr &= ~mask
        elif level:  # edge triggered: a rising edge latches
            if not self.last_irr & mask:
                self.irr |= mask
            self.last_irr |= mask
        else:
            self.last_irr &= ~mask

    def _priority(self, mask: int) -> int:
        """Highest-priority bit of ``mask`` (8 when none), honouring rotation."""
        if not mask:
            return 8
        p = 0
        while not mask & (1 << ((p + self.priority_add) & 7)):
            p += 1
        return p

    def pending_irq(self, slave_cascade: bool = False) -> int:
        """The input that should interrupt now, or -1. ``slave_cascade`` is accepted for callers
        that query the master; whether the in-service cascade input blocks the slave follows
        ICW4's special fully nested mode bit, as in QEMU."""
        mask = self.irr & ~self.imr
        p = self._priority(mask)
        if p == 8:
            return -1
        isr = self.isr & ~self.imr if self.special_mask else self.isr
        if self.special_fully_nested_mode and self.master:
            isr &= ~(1 << 2)  # the slave may interrupt its own cascade
        if p < self._priority(isr):
            return (p + self.priority_add) & 7
        return -1

    def ack(self, irq: int) -> None:
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self.priority_add = (irq + 1) & 7
        else:
            self.isr |= 1 << irq
        if not self.elcr & (1 << irq):
            self.irr &= ~(1 << irq)  # edge: acknowledged

    def write(self, addr: int, value: int) -> None:
        if addr:
            self._write_data(value)
        elif value & 0x10:  # ICW1
            self.reset()
            self.init_state = 1
            self.init4 = value & 1
            self.single_mode = 1 if value & 2 else 0
        elif value & 0x08:  # OCW3
            if value & 0x04:
                self.poll = 1
            if value & 0x02:
                self.read_reg_select = value & 1
            if value & 0x40:
                self.special_mask = (value >> 5) & 1
        else:
            self._ocw2(value)

    def _ocw2(self, value: int) -> None:
        cmd = value >> 5
        if cmd in (0, 4):
            self.rotate_on_auto_eoi = cmd >> 2
        elif cmd in (1, 5):  # non-specific EOI (and rotate)
            p = self._priority(self.isr)
            if p != 8:
                irq = (p + self.priority_add) & 7
                self.isr &= ~(1 << irq)
                if cmd == 5:
                    self.priority_add = (irq + 1) & 7
        elif cmd in (3, 7):  # specific EOI (and rotate)
            irq = value & 7
            self.isr &= ~(1 << irq)
            if cmd == 7:
                self.priority_add = (irq + 1) & 7
        elif cmd == 6:  # set priority
            self.priority_add = (value + 1) & 7

    def _write_data(self, value: int) -> None:
        if self.init_state == 0:
            self.imr = value  # OCW1
        elif self.init_state == 1:  # ICW2
            self.irq_base = value & 0xF8
            self.init_state = (3 if self.init4 else 0) if self.single_mode else 2
        elif self.init_state == 2:  # ICW3
            self.init_state = 3 if self.init4 else 0
        elif self.init_state == 3:  # ICW4
            self.special_fully_nested_mode = (value >> 4) & 1
            self.auto_eoi = (value >> 1) & 1
            self.init_state = 0

    def read(self, addr: int) -> int:
        if self.poll:  # poll command: the read acknowledges the highest request
            self.poll = 0
            irq = self.pending_irq()
            if irq < 0:
                return 0
            self.ack(irq)
            return irq | 0x80
        if addr == 0:
            return self.isr if self.read_reg_select else self.irr
        return self.imr

    def save_state(self) -> dict:
        """The ``i8259`` section fields of this chip."""
        return {name: getattr(self, name) & 0xFF for name in PIC_STATE_FIELDS}

    def load_state(self, state: dict) -> None:
        """Takes over a loaded ``i8259`` section (fields missing from ``state`` keep their value)."""
        for name in PIC_STATE_FIELDS:
            if name in state:
                setattr(self, name, int(state[name]) & 0xFF)


class PicSlaveObject(Device):
    """The slave chip's place in the QOM tree (``/machine/unattached/device[7]`` on pc)."""

    type_name = "isa-i8259"
    type_parent = "isa-device"


class I8259(Device):
    """Master and slave; input 2 of the master is the slave's output."""

    type_name = "isa-i8259"
    type_parent = "isa-device"

    def __init__(self) -> None:
        super().__init__()
        self.master, self.slave = PicChip("master", master=True), PicChip("slave")
        self.master.elcr_mask, self.slave.elcr_mask = 0xF8, 0xDE  # QEMU's PIIX3 ELCR masks
        self.init_gpio_in(self._set_irq, 16)
        self.intr = self.init_gpio_out(1)[0]  # INTR to the CPU
        rules = AccessRules(valid_max=4, impl_max=1)  # QEMU: impl 1 byte, any size accepted
        self.master_io = self._chip_io(self.master, rules)
        #: QEMU's second ``isa-i8259`` (the slave chip) as a QOM object of its own: it owns the
        #: slave's regions; its state, reset and sections stay with this object
        self.slave_object = PicSlaveObject()
        self.slave_io = self._chip_io(self.slave, rules)
        # one 1-byte "elcr" region per chip (0x4d0 master, 0x4d1 slave), as QEMU maps them
        self.master_elcr_io = self._elcr_io(self.master, rules)
        self.slave_elcr_io = self._elcr_io(self.slave, rules)
        self._level = 0

    def _chip_io(self, chip: PicChip, rules: AccessRules) -> MemoryRegion:
        """The chip's two ports (command/status and data)."""

        def read(offset: int, size: int) -> int:
            return self._read(chip, offset)

        def write(offset: int, value: int, size: int) -> None:
            self._write(chip, offset, value)

        owner = self.slave_object if chip is self.slave else self
        return MemoryRegion.io("pic", 2, CallbackOps(read, write, rules), owner=owner)

    def _elcr_io(self, chip: PicChip, rules: AccessRules) -> MemoryRegion:
        """The chip's edge/level control register."""

        def read(offset: int, size: int) -> int:
            return chip.elcr

        def write(offset: int, value: int, size: int) -> None:
            self._elcr_write(chip, value)

        owner = self.slave_object if chip is self.slave else self
        return MemoryRegion.io("elcr", 1, CallbackOps(read, write, rules), owner=owner)

    def reset(self) -> None:
        for chip in (self.master, self.slave):
            chip.elcr = 0  # QEMU's device reset clears ELCR (an ICW1 does not)
            chip.reset()
        self._update()

    def _set_irq(self, n: int, level: int) -> None:
        if n < 8:
            self.master.set_irq(n, 1 if level else 0)
        else:
            self.slave.set_irq(n - 8, 1 if level else 0)
        self._update()

    def _update(self) -> None:
        # the slave's output drives master input 2
        self.master.set_irq(2, 1 if self.slave.pending_irq() >= 0 else 0)
        level = 1 if self.master.pending_irq(slave_cascade=True) >= 0 else 0
        if level != self._level:
            self._level = level
            self.intr.set(level)

    def acknowledge(self) -> int:
        """The CPU's INTA cycle: the vector of the highest-priority pending input."""
        irq = self.master.pending_irq(slave_cascade=True)
        if irq < 0:
            vector = self.master.irq_base + 7  # spurious
        elif irq == 2:
            irq2 = self.slave.pending_irq()
            if irq2 < 0:
                vector = self.slave.irq_base + 7
            else:
                self.slave.ack(irq2)
                vector = self.slave.irq_base + irq2
            self.master.ack(2)
        else:
            self.master.ack(irq)
            vector = self.master.irq_base + irq
        self._update()
        return vector

    def _read(self, chip: PicChip, offset: int) -> int:
        value = chip.read(offset)
        self._update()  # a poll read acknowledges
        return value

    def _write(self, chip: PicChip, offset: int, value: int) -> None:
        chip.write(offset, value)
        self._update()

    def _elcr_write(self, chip: PicChip, value: int) -> None:
        chip.elcr = value & chip.elcr_mask
        self._update()

    # ---- migration: two "i8259" sections, master (instance 0) then slave (instance 1)
    def vmstate_sections(self, saving: bool = True) -> list[VMStateSection]:
        """The sections this device saves, in QEMU's order: ``(idstr, instance, vmsd, state)``;
        ``state`` is empty when ``saving`` is False (the board only wants the section list)."""
        return [("i8259", i, VMSTATE_I8259, chip.save_state() if saving else {})
                for i, chip in enumerate((self.master, self.slave))]

    def load_vmstate_sections(self, states: dict[tuple[str, int], dict]) -> None:
        """Takes over the loaded sections, keyed by ``(idstr, instance)``; a chip whose section
        the stream did not carry keeps its state, as in QEMU."""
        for i, chip in enumerate((self.master, self.slave)):
            if states.get(("i8259", i)):
                chip.load_state(states[("i8259", i)])
        # QEMU's post_load only resyncs KVM; the INTR output follows the loaded registers here
        self._level = -1
        self._update()
