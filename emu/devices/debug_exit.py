"""``isa-debug-exit``: a write to its ports ends the emulator with a status the guest chooses.

QEMU 7.2 (``hw/misc/debugexit.c``) maps ``iosize`` bytes at ``iobase`` (default 2 at 0x501),
accepting 1..4-byte accesses; reads return 0; a write of value ``v`` calls ``exit((v << 1) | 1)``,
so the process status is ``((v << 1) | 1) & 0xff`` (always odd). The device does not exit
itself: it calls the ``exit_request`` callable the board gives it with that 8-bit status.
``iosize=0`` maps nothing (``io`` is None). There is no VMState.
"""
from __future__ import annotations

from collections.abc import Callable

from emu.devices.base import Device
from emu.memory import AccessRules, CallbackOps, MemoryRegion

DEFAULT_IOBASE = 0x501
DEFAULT_IOSIZE = 2


def exit_status(value: int) -> int:
    """The process exit status QEMU ends with after the guest writes ``value``."""
    return ((value << 1) | 1) & 0xFF


class ISADebugExit(Device):
    """The device; the board maps ``io`` (when not None) at ``iobase`` in I/O space and sets
    ``exit_request`` to a callable that ends the process with the status it is given."""

    type_name = "isa-debug-exit"
    type_parent = "isa-device"

    def __init__(self, iobase: int = DEFAULT_IOBASE, iosize: int = DEFAULT_IOSIZE,
                 exit_request: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.iobase = iobase
        self.iosize = iosize
        self.exit_request: Callable[[int], None] = exit_request or (lambda status: None)
        self.add_property("iobase", "uint32", iobase, "int", static=True)
        self.add_property("iosize", "uint32", iosize, "int", static=True)
        ops = CallbackOps(lambda offset, size: 0, self._write, AccessRules(valid_min=1, valid_max=4))
        self.io: MemoryRegion | None = (
            MemoryRegion.io("isa-debug-exit", iosize, ops, owner=self) if iosize else None)

    def _write(self, offset: int, value: int, size: int) -> None:
        self.exit_request(exit_status(value))
