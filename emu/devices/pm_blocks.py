"""The I/O blocks PIIX4 PM exposes besides its PM registers, as QEMU 7.2's pc shows them.

- ACPI PCI hotplug (``acpi-pci-hotplug``, 0xae00, 0x18 bytes, 4-byte accesses only): UP, DOWN,
  EJ, RMV, SEL, AIDX. No device is ever hot-plugged here, so UP and DOWN read 0; RMV shows the
  slots QEMU would let a guest eject from (the empty ones of bus 0: built-in functions are not
  hot-pluggable); SEL keeps what is written; an eject request has no device to eject.
- Legacy ACPI CPU hotplug (``acpi-cpu-hotplug``, 0xaf00, 32 bytes): the CPU-present bitmap
  (CPU 0 present), byte-wide, 1-4 byte accesses. QEMU switches to its modern CPU hotplug
  interface when the guest writes 0 to byte 0; that interface is not modelled, so the write is
  ignored (a guest's ACPI code sees the legacy bitmap).
(PIIX4 PM's SMBus host controller is ``emu.devices.smbus``, created by the PM function itself.)

Devices know nothing of qtest or QMP; the board maps ``io`` of each at its port.
"""
from __future__ import annotations

from collections.abc import Callable

from emu.memory import AccessRules, CallbackOps, MemoryRegion

PCIHP_BASE, PCIHP_SIZE = 0xAE00, 0x18
CPUHP_BASE, CPUHP_SIZE = 0xAF00, 0x20

PCIHP_RMV, PCIHP_SEL = 0x0C, 0x10


class PciHotplugRegs:
    """``acpi-pci-hotplug``: UP/DOWN 0, RMV the empty slots of bus 0, SEL read-write.
    ``slot_occupied(slot)`` says whether a (built-in) device sits in a slot."""

    def __init__(self, slot_occupied: Callable[[int], bool]) -> None:
        self.select = 0
        self.slot_occupied = slot_occupied
        self.io = MemoryRegion.io("acpi-pci-hotplug", PCIHP_SIZE,
                                  CallbackOps(self._read, self._write, AccessRules(valid_min=4, valid_max=4)))

    def _read(self, offset: int, size: int) -> int:
        if offset == PCIHP_SEL:
            return self.select
        if offset == PCIHP_RMV and self.select == 0:
            return sum(1 << slot for slot in range(32) if not self.slot_occupied(slot))
        return 0

    def _write(self, offset: int, value: int, size: int) -> None:
        if offset == PCIHP_SEL:
            self.select = value & 0xFFFFFFFF


class CpuHotplugLegacy:
    """``acpi-cpu-hotplug``: the CPU-present bitmap, one bit per CPU index."""

    def __init__(self, nb_cpus: int = 1) -> None:
        self.status = bytearray(CPUHP_SIZE)
        for cpu in range(min(nb_cpus, CPUHP_SIZE * 8)):
            self.status[cpu // 8] |= 1 << (cpu % 8)
        rules = AccessRules(valid_min=1, valid_max=4, impl_min=1, impl_max=1)
        self.io = MemoryRegion.io("acpi-cpu-hotplug", CPUHP_SIZE,
                                  CallbackOps(lambda offset, size: self.status[offset], self._write, rules))

    def _write(self, offset: int, value: int, size: int) -> None:
        """Writes do nothing on the legacy interface (the modern switch is not modelled)."""
