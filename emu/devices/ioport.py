"""The PC board's small fixed ports: 0x80 (POST/delay port), 0xf0 (FPU IGNNE) and 0x92
("System Control Port A": fast A20 gate and fast reset).

As in QEMU 7.2 (``hw/i386/pc.c`` and ``hw/i386/port92.c``):

* port 0x80 ("ioport80") and port 0xf0 ("ioportF0") are bare 1-byte regions, not devices:
  writes are ignored (0xf0's write asserts the CPU's IGNNE input under TCG, which we do not
  model: the optional ``on_write`` callback is where a board would do it) and reads return
  all ones.
* ``port92`` is an ISA device (not user-creatable): bit 1 drives the named GPIO output
  ``a20``; a 0 -> 1 transition of bit 0 asks for a system reset (``reset_request``); reading
  returns the last value written. A device reset clears bit 0 only. Its VMState section is
  ``port92`` version 1 with the ``outport`` byte.
"""
from __future__ import annotations

from collections.abc import Callable

from emu.devices.base import Device
from emu.memory import AccessRules, CallbackOps, MemoryRegion
from emu.migration.vmstate import Field, VMStateDescription

PORT80_ADDR = 0x80
PORTF0_ADDR = 0xF0
PORT92_ADDR = 0x92
PORT92_A20_LINE = "a20"  # QEMU's PORT92_A20_LINE GPIO name

# QEMU's ops for these ports declare impl 1..1 and leave ``valid`` at its 1..4 default.
_BYTE_IMPL = AccessRules(valid_min=1, valid_max=4, impl_min=1, impl_max=1)


def _read_all_ones(offset: int, size: int) -> int:
    return (1 << (8 * size)) - 1


def port80_region() -> MemoryRegion:
    """The "ioport80" region the board maps at I/O 0x80: ignores writes, reads 0xff."""
    return MemoryRegion.io("ioport80", 1, CallbackOps(_read_all_ones, lambda o, v, s: None, _BYTE_IMPL))


def portf0_region(on_write: Callable[[], None] | None = None) -> MemoryRegion:
    """The "ioportF0" region the board maps at I/O 0xf0: reads 0xff; a write calls
    ``on_write`` (QEMU sets the CPU's IGNNE line there; nothing models it here)."""

    def write(offset: int, value: int, size: int) -> None:
        if on_write is not None:
            on_write()

    return MemoryRegion.io("ioportF0", 1, CallbackOps(_read_all_ones, write, _BYTE_IMPL))


VMSTATE_PORT92 = VMStateDescription(
    name="port92", version_id=1, minimum_version_id=1, fields=[Field("outport", "uint8")])


class Port92(Device):
    """System Control Port A at I/O 0x92.

    The board maps ``io`` at :data:`PORT92_ADDR`, connects ``a20`` (the ``"a20"`` GPIO output)
    to whatever gates A20 and sets ``reset_request`` to its guest-reset entry point.
    """

    type_name = "port92"
    type_parent = "isa-device"
    vmsd = VMSTATE_PORT92

    def __init__(self) -> None:
        super().__init__()
        self.outport = 0
        self.a20 = self.init_gpio_out(1, PORT92_A20_LINE)[0]
        #: Called when the guest sets bit 0 (QEMU: qemu_system_reset_request(GUEST_RESET)).
        self.reset_request: Callable[[], None] = lambda: None
        self.io = MemoryRegion.io("port92", 1, CallbackOps(self._read, self._write, _BYTE_IMPL), owner=self)

    def reset(self) -> None:
        self.outport &= ~1  # only the reset bit; A20 keeps its state (and the line is not re-driven)

    def _read(self, offset: int, size: int) -> int:
        return self.outport

    def _write(self, offset: int, value: int, size: int) -> None:
        old = self.outport
        self.outport = value & 0xFF
        self.a20.set((value >> 1) & 1)
        if value & 1 and not old & 1:
            self.reset_request()

    def save_vmstate(self) -> dict:
        return {"outport": self.outport}

    def load_vmstate(self, state: dict) -> None:
        self.outport = int(state["outport"]) & 0xFF
