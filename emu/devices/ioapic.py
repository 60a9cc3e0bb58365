"""The I/O APIC (82093AA) register file and its 24 GPIO inputs.

Interrupt delivery to a vCPU comes with the vCPU work; for now input levels latch into IRR and
the register window (IOREGSEL/IOWIN) reads as on real hardware.
"""
from __future__ import annotations

from typing import Callable

from emu.devices.base import Device
from emu.memory import AccessRules, MemoryRegion

IOAPIC_BASE = 0xFEC00000
NUM_PINS = 24
IOAPIC_VERSION = 0x20


class IOAPIC(Device):
    type_name = "ioapic"
    type_parent = "ioapic-common"

    def __init__(self) -> None:
        super().__init__()
        self.init_gpio_in(self._set_irq, NUM_PINS)
        self.mmio = MemoryRegion.io("ioapic", 0x1000, self, AccessRules(valid_max=4, impl_min=4, impl_max=4), owner=self)
        self.reset()

    deliver: "Callable[[int], None] | None" = None  # set by the board: send a vector to the CPU

    def reset(self) -> None:
        self.ioregsel = 0
        self.id = 0
        self.irr = 0
        self.redir = [1 << 16] * NUM_PINS  # masked

    def _set_irq(self, n: int, level: int) -> None:
        if n == 0:
            n = 2  # ISA IRQ 0 (PIT, HPET timer 0) is GSI 2, as QEMU's ioapic_set_irq maps it
        rising = level and not self.irr & (1 << n)
        if level:
            self.irr |= 1 << n
        else:
            self.irr &= ~(1 << n)
        entry = self.redir[n]
        # An unmasked pin sends its vector on a rising edge (fixed delivery to CPU 0; without a
        # local APIC model there is no remote-IRR/EOI handshake for level-triggered pins).
        if rising and not entry & (1 << 16) and self.deliver is not None:
            self.deliver(entry & 0xFF)

    def read(self, offset: int, size: int) -> int:
        if offset == 0x00:
            return self.ioregsel
        if offset != 0x10:
            return 0
        reg = self.ioregsel
        if reg == 0x00:
            return self.id << 24
        if reg == 0x01:
            return ((NUM_PINS - 1) << 16) | IOAPIC_VERSION
        if reg == 0x02:
            return 0
        idx = (reg - 0x10) >> 1
        if 0x10 <= reg and idx < NUM_PINS:
            entry = self.redir[idx]
            return (entry >> 32) & 0xFFFFFFFF if reg & 1 else entry & 0xFFFFFFFF
        return 0

    def write(self, offset: int, value: int, size: int) -> None:
        if offset == 0x00:
            self.ioregsel = value & 0xFF
            return
        if offset != 0x10:
            return
        reg = self.ioregsel
        if reg == 0x00:
            self.id = (value >> 24) & 0x0F
            return
        idx = (reg - 0x10) >> 1
        if 0x10 <= reg and idx < NUM_PINS:
            entry = self.redir[idx]
            if reg & 1:
                entry = (entry & 0xFFFFFFFF) | (value << 32)
            else:
                # delivery status (bit 12) and remote IRR (bit 14) are read-only
                ro = (1 << 12) | (1 << 14)
                entry = (entry & ~0xFFFFFFFF) | (entry & ro) | (value & ~ro & 0xFFFFFFFF)
            self.redir[idx] = entry
