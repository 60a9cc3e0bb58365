"""The 8259A programmable interrupt controller pair (master 0x20/0x21, slave 0xa0/0xa1, ELCR
0x4d0/0x4d1), cascaded on master input 2.

Initialisation words, the mask (OCW1), end-of-interrupt commands (OCW2), IRR/ISR reads (OCW3),
edge and level triggering (ELCR), fixed priority with rotation, and the interrupt acknowledge
cycle the CPU runs (``acknowledge``). The master's INT output is the CPU's INTR line.
"""
from __future__ import annotations

from emu.devices.base import Device
from emu.memory import AccessRules, CallbackOps, MemoryRegion


class PicChip:
    """One 8259A."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.elcr = 0  # 1 bit per input: level triggered
        self.elcr_mask = 0xFF
        self.reset()

    def reset(self) -> None:
        self.last_irr = 0  # input levels, for edge detection
        self.irr = self.isr = self.imr = 0
        self.irq_base = 0
        self.priority_add = 0
        self.read_isr = False
        self.init_state = 0
        self.auto_eoi = False
        self.special_mask = False
        self.rotate_on_auto_eoi = False
        self.single = False
        self.icw4_needed = False

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
        """The input that should interrupt now, or -1."""
        mask = self.irr & ~self.imr
        p = self._priority(mask)
        if p == 8:
            return -1
        isr = self.isr & ~self.imr if self.special_mask else self.isr
        if slave_cascade:
            isr &= ~(1 << 2)  # fully nested mode: the slave may interrupt its own cascade
        cur = self._priority(isr)
        if p < cur:
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
        if addr == 0:
            if value & 0x10:  # ICW1
                self.reset()
                self.init_state = 1
                self.icw4_needed = bool(value & 1)
                self.single = bool(value & 2)
            elif value & 0x08:  # OCW3
                if value & 0x02:
                    self.read_isr = bool(value & 1)
                if value & 0x40:
                    self.special_mask = bool((value >> 5) & 1)
            else:  # OCW2
                cmd = value >> 5
                if cmd in (0, 4):
                    self.rotate_on_auto_eoi = cmd == 4
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
            return
        if self.init_state == 0:
            self.imr = value  # OCW1
        elif self.init_state == 1:
            self.irq_base = value & 0xF8
            self.init_state = 0 if self.single and not self.icw4_needed else (2 if not self.single else 3)
        elif self.init_state == 2:
            self.init_state = 3 if self.icw4_needed else 0
        elif self.init_state == 3:
            self.auto_eoi = bool((value >> 1) & 1)
            self.init_state = 0

    def read(self, addr: int) -> int:
        if addr == 0:
            return self.isr if self.read_isr else self.irr
        return self.imr


class I8259(Device):
    """Master and slave; input 2 of the master is the slave's output."""

    type_name = "isa-i8259"
    type_parent = "isa-device"

    def __init__(self) -> None:
        super().__init__()
        self.master, self.slave = PicChip("master"), PicChip("slave")
        self.master.elcr_mask, self.slave.elcr_mask = 0xF8, 0xDE  # QEMU's PIIX3 ELCR masks
        self.init_gpio_in(self._set_irq, 16)
        self.intr = self.init_gpio_out(1)[0]  # INTR to the CPU
        rules = AccessRules(valid_max=4, impl_max=1)  # QEMU: impl 1 byte, any size accepted
        self.master_io = MemoryRegion.io("pic", 2, CallbackOps(lambda o, s: self._read(self.master, o),
                                                             lambda o, v, s: self._write(self.master, o, v), rules), owner=self)
        self.slave_io = MemoryRegion.io("pic", 2, CallbackOps(lambda o, s: self._read(self.slave, o),
                                                            lambda o, v, s: self._write(self.slave, o, v), rules), owner=self)
        # one 1-byte "elcr" region per chip (0x4d0 master, 0x4d1 slave), as QEMU maps them
        self.master_elcr_io, self.slave_elcr_io = (
            MemoryRegion.io("elcr", 1, CallbackOps(lambda o, s, c=chip: c.elcr,
                                                   lambda o, v, s, c=chip: self._elcr_write(c, v), rules), owner=self)
            for chip in (self.master, self.slave))
        self._level = 0

    def reset(self) -> None:
        self.master.reset()
        self.slave.reset()
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
            self.master.ack(2)
            irq2 = self.slave.pending_irq()
            if irq2 < 0:
                vector = self.slave.irq_base + 7
            else:
                self.slave.ack(irq2)
                vector = self.slave.irq_base + irq2
        else:
            self.master.ack(irq)
            vector = self.master.irq_base + irq
        self._update()
        return vector

    def _read(self, chip: PicChip, offset: int) -> int:
        return chip.read(offset)

    def _write(self, chip: PicChip, offset: int, value: int) -> None:
        chip.write(offset, value)
        self._update()

    def _elcr_write(self, chip: PicChip, value: int) -> None:
        chip.elcr = value & chip.elcr_mask
        self._update()
