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
There is no VMState.
"""
from __future__ import annotations

from typing import Callable

from emu.devices.base import Device
from emu.memory import AccessRules, CallbackOps, MemoryRegion

PVPANIC_PANICKED = 1 << 0
PVPANIC_CRASH_LOADED = 1 << 1
DEFAULT_IOPORT = 0x505
DEFAULT_EVENTS = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED
FW_CFG_FILE = "etc/pvpanic-port"


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
        rules = AccessRules(valid_min=1, valid_max=4, impl_min=1, impl_max=1)
        self.io = MemoryRegion.io("pvpanic", 1, CallbackOps(lambda offset, size: self.events, self._write, rules),
                                  owner=self)

    def fw_cfg_file(self) -> tuple[str, bytes]:
        """The fw_cfg file QEMU adds at realize: (name, contents)."""
        return FW_CFG_FILE, self.ioport.to_bytes(2, "little")

    def _write(self, offset: int, value: int, size: int) -> None:
        if value & PVPANIC_PANICKED:
            self.panic_event("panicked")
        elif value & PVPANIC_CRASH_LOADED:
            self.panic_event("crash-loaded")
