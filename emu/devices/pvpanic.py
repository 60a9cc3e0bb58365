"""``pvpanic``: the ISA paravirtual panic notifier (port 0x505 by default).

As QEMU 7.2's ``hw/misc/pvpanic.c`` and ``pvpanic-isa.c``: a 1-byte port (byte-implemented,
1..4-byte accesses accepted); reading returns the ``events`` property (the events the device
supports, default ``PANICKED | CRASH_LOADED`` = 3); writing reports an event: bit 0 is a guest
panic (QMP ``GUEST_PANICKED``), else bit 1 a loaded crash kernel (``GUEST_CRASHLOADED``); other
bits are ignored (QEMU logs them once under ``-d guest_errors``, which we do not). The device
calls ``panic_event("panicked")`` or ``panic_event("crash-loaded")``; what follows is the
board's business (see :func:`emu.actions.guest_panicked_action`).

QEMU maps the port only when the machine has fw_cfg, and then adds the fw_cfg file
``etc/pvpanic-port`` (the port as a little-endian u16, see :meth:`PVPanic.fw_cfg_file`).
The ISA device has no VMState.

``pvpanic-pci`` (QEMU's ``hw/misc/pvpanic-pci.c``) is the same notifier as a PCI function:
Red Hat vendor 0x1b36, device 0x0011, revision 1, class 0x0880 (system peripheral, other), a
2-byte memory BAR 0 holding the same port (each byte reads ``events``), section ``pvpanic-pci``
version 1 holding only the PCI device state.
"""
from __future__ import annotations

from collections.abc import Callable

from emu.devices.base import Device
from emu.devices.pci import BASE_ADDRESS_SPACE_MEMORY, PCIDevice
from emu.memory import AccessRules, CallbackOps, MemoryRegion
from emu.migration.vmstate import VMStateDescription

PVPANIC_PANICKED = 1 << 0
PVPANIC_CRASH_LOADED = 1 << 1
DEFAULT_IOPORT = 0x505
DEFAULT_EVENTS = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED
FW_CFG_FILE = "etc/pvpanic-port"


PCI_VENDOR_ID_REDHAT = 0x1B36
PCI_DEVICE_ID_REDHAT_PVPANIC = 0x0011
PCI_CLASS_SYSTEM_OTHER = 0x0880
PCI_BAR_SIZE = 2


def _notifier(events: int, panic_event: Callable[[str], None], size: int, owner: Device) -> MemoryRegion:
    """QEMU's pvpanic_setup_io: ``size`` byte-implemented bytes, each reading ``events``; a write
    reports bit 0 (panic) before bit 1 (crash kernel loaded)."""

    def write(offset: int, value: int, width: int) -> None:
        if value & PVPANIC_PANICKED:
            panic_event("panicked")
        elif value & PVPANIC_CRASH_LOADED:
            panic_event("crash-loaded")

    rules = AccessRules(valid_min=1, valid_max=4, impl_min=1, impl_max=1)
    return MemoryRegion.io("pvpanic", size, CallbackOps(lambda offset, width: events, write, rules), owner=owner)


class PVPanic(Device):
    """The device; the board maps ``io`` at ``ioport`` in I/O space (when it has fw_cfg) and
    sets ``panic_event``."""

    type_name = "pvpanic"
    type_parent = "isa-device"

    def __init__(self, ioport: int = DEFAULT_IOPORT, events: int = DEFAULT_EVENTS,
                 panic_event: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.ioport = ioport
        self.events = events
        self.panic_event: Callable[[str], None] = panic_event or (lambda kind: None)
        self.add_property("ioport", "uint16", ioport, "int", static=True)
        self.add_property("events", "uint8", events, "int", static=True)
        self.io = _notifier(events, lambda kind: self.panic_event(kind), 1, self)

    def fw_cfg_file(self) -> tuple[str, bytes]:
        """The fw_cfg file QEMU adds at realize: (name, contents)."""
        return FW_CFG_FILE, self.ioport.to_bytes(2, "little")


class PVPanicPCI(PCIDevice):
    """``pvpanic-pci``: the notifier behind memory BAR 0; the board puts it on its PCI bus."""

    type_name = "pvpanic-pci"
    type_parent = "pci-device"
    vendor_id = PCI_VENDOR_ID_REDHAT
    device_id = PCI_DEVICE_ID_REDHAT_PVPANIC
    revision = 1
    class_id = PCI_CLASS_SYSTEM_OTHER

    def __init__(self, events: int = DEFAULT_EVENTS, panic_event: Callable[[str], None] | None = None,
                 multifunction: bool = False) -> None:
        super().__init__(multifunction)
        self.events = events
        self.panic_event: Callable[[str], None] = panic_event or (lambda kind: None)
        self.add_property("events", "uint8", events, "int", static=True)
        self.mr = _notifier(events, lambda kind: self.panic_event(kind), PCI_BAR_SIZE, self)
        self.register_bar(0, BASE_ADDRESS_SPACE_MEMORY, self.mr)
        self.vmsd = VMStateDescription(name="pvpanic-pci", version_id=1, minimum_version_id=1,
                                       fields=self.pci_vmstate_fields())

    def save_vmstate(self) -> dict:
        return self.pci_save_state()

    def load_vmstate(self, state: dict) -> None:
        self.pci_load_state(state)
