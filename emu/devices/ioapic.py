"""The I/O APIC (82093AA) register file and its 24 GPIO inputs.

Fixed delivery of a vector to the CPU through ``deliver``. IRR as QEMU keeps it: an edge-triggered
pin latches its request until an unmasked entry delivers it (at once, or when the entry is
written); a level-triggered pin's bit follows its input. There is no local APIC, hence no
remote-IRR/EOI handshake (level-triggered pins deliver on each rising edge).

Migration: QEMU 7.2's ``ioapic`` section (version 3): ID, IOREGSEL, 8 unused bytes (qemu-kvm's
version 2 format), IRR (from version 2) and the 24 64-bit redirection entries.
"""
from __future__ import annotations

from collections.abc import Callable

from emu.devices.base import Device
from emu.memory import AccessRules, MemoryRegion
from emu.migration.vmstate import Field, VMStateDescription

IOAPIC_BASE = 0xFEC00000
NUM_PINS = 24
IOAPIC_VERSION = 0x20
TRIGGER_LEVEL, MASKED = 1 << 15, 1 << 16  # redirection entry bits
_U64 = (1 << 64) - 1

#: QEMU 7.2's ``vmstate_ioapic_common``; the ``ioredtbl`` array is laid out element by element
VMSTATE_IOAPIC = VMStateDescription(
    name="ioapic", version_id=3, minimum_version_id=1,
    fields=[Field("id", "uint8"), Field("ioregsel", "uint8"), Field("unused", "unused_buffer", 8, version_id=2),
            Field("irr", "uint32", version_id=2)]
    + [Field(f"ioredtbl[{i}]", "uint64") for i in range(NUM_PINS)],
)


class IOAPIC(Device):
    """The register file; the board sets ``deliver`` and maps ``mmio`` at ``IOAPIC_BASE``."""

    type_name = "ioapic"
    type_parent = "ioapic-common"
    vmsd = VMSTATE_IOAPIC

    def __init__(self) -> None:
        super().__init__()
        self.init_gpio_in(self._set_irq, NUM_PINS)
        self.mmio = MemoryRegion.io("ioapic", 0x1000, self, AccessRules(valid_max=4, impl_min=4, impl_max=4),
                                    owner=self)
        self.reset()

    deliver: Callable[[int], None] | None = None  # set by the board: send a vector to the CPU

    def reset(self) -> None:
        self.ioregsel = 0
        self.id = 0
        self.irr = 0
        self.redir = [1 << 16] * NUM_PINS  # masked

    def _set_irq(self, n: int, level: int) -> None:
        if n == 0:
            n = 2  # ISA IRQ 0 (PIT, HPET timer 0) is GSI 2, as QEMU's ioapic_set_irq maps it
        mask = 1 << n
        if self.redir[n] & TRIGGER_LEVEL:
            rising = level and not self.irr & mask
            self.irr = self.irr | mask if level else self.irr & ~mask
            # Without a local APIC model there is no remote-IRR/EOI handshake: an unmasked
            # level-triggered pin sends its vector on each rising edge.
            if rising and not self.redir[n] & MASKED and self.deliver is not None:
                self.deliver(self.redir[n] & 0xFF)
        elif level and not self.redir[n] & MASKED:
            # edge: latched in IRR until delivered (a falling edge keeps it); a masked pin
            # ignores it, as the 82093AA manual says and QEMU does
            self.irr |= mask
            self._service()

    def _service(self) -> None:
        """Sends the latched edge-triggered requests of unmasked pins (fixed delivery to CPU 0)."""
        for n in range(NUM_PINS):
            entry = self.redir[n]
            if self.irr & (1 << n) and not entry & (MASKED | TRIGGER_LEVEL):
                self.irr &= ~(1 << n)
                if self.deliver is not None:
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
            self._service()  # QEMU services the pins after each redirection write

    # ---- migration
    def save_vmstate(self) -> dict:
        state: dict = {"id": self.id, "ioregsel": self.ioregsel, "irr": self.irr}
        state.update({f"ioredtbl[{i}]": entry & _U64 for i, entry in enumerate(self.redir)})
        return state

    def load_vmstate(self, state: dict) -> None:
        # a version 1 stream has no IRR: it keeps its local value, as in QEMU
        self.id = int(state.get("id", self.id))
        self.ioregsel = int(state.get("ioregsel", self.ioregsel))
        self.irr = int(state.get("irr", self.irr))
        self.redir = [int(state.get(f"ioredtbl[{i}]", entry)) for i, entry in enumerate(self.redir)]
