"""``ib700``: the iBASE 700 ISA watchdog, and the ``-watchdog-action`` values.

As QEMU 7.2's ``hw/watchdog/wdt_ib700.c``: one "ib700" region covers I/O 0x441..0x444 (byte
ports; reads return all ones). A byte write to 0x441/0x442 stops the timer; a byte write to
0x443/0x444 (re)arms it on the virtual clock for ``TIMEOUTS_S[value & 0xf]`` seconds from now
(30 s for 0 down to 0 s for 15). As QEMU's portio dispatch: a 2-byte write is two byte writes
when both bytes fall in the same pair (else only the first byte is written), and 4-byte writes
are ignored. On expiry the
device calls ``watchdog_expired()`` once and stays stopped until re-armed. A device reset
stops the timer. VMState: section ``ib700_wdt`` version 0, one ``timer`` field (the expiry
time in ns, or -1 when stopped).

What QEMU's ``watchdog_perform_action`` does on expiry, per action (each one first sends the
QMP event ``WATCHDOG`` with ``{"action": <action>}``):

==============  ==========================================================================
``reset``       (default) system reset request, cause ``guest-reset`` (so ``-no-reboot``
                turns it into a shutdown)
``shutdown``    ``system_powerdown`` (ACPI power button request; the VM keeps running)
``poweroff``    the process exits with status 0 at once (as ``quit``)
``pause``       the VM stops with runstate ``watchdog`` (``STOP`` event)
``debug``       prints ``watchdog: timer fired`` on stderr and carries on
``none``        nothing more
``inject-nmi``  an NMI to every vCPU (as the ``inject-nmi`` command)
==============  ==========================================================================
"""
from __future__ import annotations

from collections.abc import Callable

from emu.clock import VirtualClock
from emu.devices.base import Device
from emu.memory import AccessRules, CallbackOps, MemoryRegion
from emu.migration.vmstate import Field, VMStateDescription

IB700_BASE = 0x441
IB700_SIZE = 4
DISABLE_PORTS = (0x441, 0x442)
ENABLE_PORTS = (0x443, 0x444)
TIMEOUTS_S = (30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0)
NS_PER_S = 1_000_000_000

DEFAULT_WATCHDOG_ACTION = "reset"


VMSTATE_IB700 = VMStateDescription(
    name="ib700_wdt", version_id=0, minimum_version_id=0,
    fields=[Field("timer", "int64", vmdesc_type="timer")])


class IB700(Device):
    """The watchdog; the board maps ``io`` at :data:`IB700_BASE` in I/O space and sets
    ``watchdog_expired`` (which performs the configured action)."""

    type_name = "ib700"
    type_parent = "isa-device"
    vmsd = VMSTATE_IB700

    def __init__(self, clock: VirtualClock, watchdog_expired: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.watchdog_expired: Callable[[], None] = watchdog_expired or (lambda: None)
        self.timer = clock.new_timer(self._expired)
        rules = AccessRules(valid_min=1, valid_max=4, valid_unaligned=True, impl_min=1, impl_max=4,
                            impl_unaligned=True)  # QEMU's portio_ops
        self.io = MemoryRegion.io("ib700", IB700_SIZE, CallbackOps(self._read, self._write, rules), owner=self)

    def reset(self) -> None:
        self.timer.cancel()

    @staticmethod
    def _read(offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1  # no read handlers: a portio list reads all ones

    @staticmethod
    def _pair(offset: int) -> tuple[int, ...] | None:
        port = IB700_BASE + offset
        return next((pair for pair in (DISABLE_PORTS, ENABLE_PORTS) if port in pair), None)

    def _write(self, offset: int, value: int, size: int) -> None:
        pair = self._pair(offset)
        if pair is None or size > 2:
            return  # the port list has byte handlers only: a dword write finds none
        self._write_byte(pair, value & 0xFF)
        if size == 2 and self._pair(offset + 1) is pair:
            self._write_byte(pair, (value >> 8) & 0xFF)

    def _write_byte(self, pair: tuple[int, ...], value: int) -> None:
        if pair is DISABLE_PORTS:
            self.timer.cancel()
        else:
            self.timer.mod(self.clock.now() + TIMEOUTS_S[value & 0xF] * NS_PER_S)

    def _expired(self) -> None:
        self.watchdog_expired()
        self.timer.cancel()  # as QEMU: stopped after the action (the action may have re-armed it)

    def save_vmstate(self) -> dict:
        return {"timer": self.timer.expire if self.timer.pending else -1}

    def load_vmstate(self, state: dict) -> None:
        expire = int(state["timer"])
        if expire in (-1, (1 << 64) - 1):
            self.timer.cancel()
        else:
            self.timer.mod(expire)
