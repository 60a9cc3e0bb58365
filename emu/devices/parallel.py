"""The ISA parallel port as QEMU 7.2 models it (hw/char/parallel.c): QOM type ``isa-parallel``.

Only QEMU's "software" path is modelled, the one it takes for every chardev that is not a host
``/dev/parport`` (``null``, ``file:``, ``vc``, ``pipe``...): an 8-port byte-wide port list with

* DATA (+0): writes latch ``dataw``; reads give ``dataw``, or ``datar`` (always 0xff: nothing
  drives the lines) while the control register's direction bit is set;
* STATUS (+1): read-only; reading it clears the pending interrupt and steps the fake printer's
  handshake (ACK drops on the first read after a strobe, BUSY and ACK come back on the next);
* CONTROL (+2): reads return the last value with bits 7-6 forced to 1. Clearing INIT puts the
  printer back to ready (BUSY|ACK|ONLINE|ERROR, EPP timeout cleared); with INIT and SELECT set,
  a rising STROBE sends ``dataw`` to ``output`` (and clears BUSY), and writing STROBE low while
  the *previous* control value had IRQ enable set makes the interrupt pending;
* +3..+7 (EPP address/data and the rest): read 0xff, writes ignored.

The port list's access sizes are QEMU's ``portio_read``/``portio_write``: a byte access hits one
register, a word access is two byte accesses (the high one reads 0xff and writes nothing past
+7), and a dword access finds no handler: it reads all ones and writes nothing, with no side
effect. The IRQ output follows the pending flag on every data/control write and status read.

A reset (QEMU's ``parallel_reset``, registered for system reset) sets DATA 0xff, STATUS 0xd9
(BUSY|ACK|ONLINE|ERROR|TMOUT), CONTROL 0xcc and clears the pending flag without driving the IRQ
line (QEMU does not lower it there either). The VMState section is ``parallel_isa`` version 1.

Not modelled: the host parallel-port (``hw_driver``) path with its ioctls, EPP cycles, the ECP
ports at +0x400 and the timing the source marks "wait 5 microseconds" (the handshake advances
per status read, as in QEMU). ``output`` must accept every byte (QEMU's blocking write_all).
"""
from __future__ import annotations

from collections.abc import Callable

from emu.devices.base import Device
from emu.memory import AccessRules, CallbackOps, MemoryRegion
from emu.migration.vmstate import Field, VMStateDescription

REG_DATA, REG_STATUS, REG_CONTROL = 0, 1, 2
N_PORTS = 8

STS_BUSY, STS_ACK, STS_PAPER, STS_ONLINE, STS_ERROR, STS_TMOUT = 0x80, 0x40, 0x20, 0x10, 0x08, 0x01
CTR_DIR, CTR_INTEN, CTR_SELECT, CTR_INIT, CTR_AUTOLF, CTR_STROBE = 0x20, 0x10, 0x08, 0x04, 0x02, 0x01
CTR_FIXED = 0xC0  # bits 7-6 of the control register always read 1

RESET_STATUS = STS_BUSY | STS_ACK | STS_ONLINE | STS_ERROR | STS_TMOUT  # 0xd9
RESET_CONTROL = CTR_FIXED | CTR_SELECT | CTR_INIT  # 0xcc

# QEMU's portio_ops: any size 1..4 at any alignment reaches the port-list dispatcher.
_PORTIO_RULES = AccessRules(valid_min=1, valid_max=4, valid_unaligned=True, impl_min=1, impl_max=4,
                            impl_unaligned=True)


class ParallelPort(Device):
    """One LPT port. ``output`` receives each strobed byte; ``instance_id`` is the VMState
    instance (0 for LPT1, in creation order as QEMU numbers them). The board maps ``io`` (the
    8-port region) at the port's base and connects ``irq`` (ISA IRQ 7 for every QEMU LPT)."""

    type_name = "isa-parallel"
    type_parent = "isa-device"

    def __init__(self, output: Callable[[bytes], None] | None = None, instance_id: int = 0) -> None:
        super().__init__()
        self.output = output
        self.instance_id = instance_id
        self.irq = self.init_gpio_out(1)[0]
        self.io = MemoryRegion.io("parallel", N_PORTS, CallbackOps(self._read, self._write, _PORTIO_RULES),
                                  owner=self)
        self.dataw = self.datar = self.status = self.control = 0
        self.irq_pending = self.epp_timeout = 0
        self.reset()  # QEMU's machine-creation system reset runs parallel_reset before the guest starts

    def reset(self) -> None:
        self.datar = self.dataw = 0xFF
        self.status = RESET_STATUS
        self.control = RESET_CONTROL
        self.irq_pending = 0
        self.epp_timeout = 0

    def _update_irq(self) -> None:
        self.irq.set(1 if self.irq_pending else 0)

    # ---------------------------------------------------------------- port-list dispatch
    def _read(self, offset: int, size: int) -> int:
        if size == 1:
            return self.read_register(offset)
        if size == 2:
            low = self.read_register(offset)  # low byte first: the status read has side effects
            return low | ((self.read_register(offset + 1) if offset + 1 < N_PORTS else 0xFF) << 8)
        return (1 << (8 * size)) - 1  # no dword handler in the list

    def _write(self, offset: int, value: int, size: int) -> None:
        if size == 1:
            self.write_register(offset, value & 0xFF)
        elif size == 2:
            self.write_register(offset, value & 0xFF)
            if offset + 1 < N_PORTS:
                self.write_register(offset + 1, (value >> 8) & 0xFF)

    # ---------------------------------------------------------------- registers
    def read_register(self, reg: int) -> int:
        """One byte read of port ``reg`` (0..7), with QEMU's side effects."""
        if reg == REG_DATA:
            return self.datar if self.control & CTR_DIR else self.dataw
        if reg == REG_STATUS:
            ret = self.status
            self.irq_pending = 0
            if not self.status & STS_BUSY and not self.control & CTR_STROBE:
                # the printer finishes the byte: ACK pulses low, then BUSY/ACK return
                if self.status & STS_ACK:
                    self.status &= ~STS_ACK
                else:
                    self.status |= STS_ACK | STS_BUSY
            self._update_irq()
            return ret
        if reg == REG_CONTROL:
            return self.control
        return 0xFF

    def write_register(self, reg: int, value: int) -> None:
        """One byte write of ``value`` to port ``reg`` (0..7), with QEMU's side effects."""
        if reg == REG_DATA:
            self.dataw = value
            self._update_irq()
        elif reg == REG_CONTROL:
            value |= CTR_FIXED
            if not value & CTR_INIT:
                self.status = STS_BUSY | STS_ACK | STS_ONLINE | STS_ERROR
            elif value & CTR_SELECT:
                if value & CTR_STROBE:
                    self.status &= ~STS_BUSY
                    if not self.control & CTR_STROBE and self.output is not None:
                        self.output(bytes([self.dataw]))
                elif self.control & CTR_INTEN:  # QEMU tests the old control value here
                    self.irq_pending = 1
            self._update_irq()
            self.control = value
        # STATUS and the EPP/extra ports ignore writes on this path

    # ---------------------------------------------------------------- migration
    def vmstate_id(self) -> tuple[str, int]:
        return "parallel_isa", self.instance_id

    def save_vmstate(self) -> dict:
        return {"state.dataw": self.dataw, "state.datar": self.datar, "state.status": self.status,
                "state.control": self.control, "state.irq_pending": self.irq_pending,
                "state.epp_timeout": self.epp_timeout}

    def load_vmstate(self, state: dict) -> None:
        self.dataw = int(state.get("state.dataw", 0)) & 0xFF
        self.datar = int(state.get("state.datar", 0)) & 0xFF
        self.status = int(state.get("state.status", 0)) & 0xFF
        self.control = int(state.get("state.control", 0)) & 0xFF
        self.irq_pending = int(state.get("state.irq_pending", 0))
        self.epp_timeout = int(state.get("state.epp_timeout", 0))
        # QEMU has no post_load: the line keeps whatever level the destination's reset left


#: QEMU's ``vmstate_parallel_isa``: section "parallel_isa" v1 (instance id = port index), the
#: ParallelState fields inlined under their ``state.`` names.
VMSTATE_PARALLEL_ISA = VMStateDescription(
    name="parallel_isa", version_id=1, minimum_version_id=1,
    fields=[Field(f"state.{n}", "uint8") for n in ("dataw", "datar", "status", "control")]
    + [Field("state.irq_pending", "int32"), Field("state.epp_timeout", "int32")],
)

ParallelPort.vmsd = VMSTATE_PARALLEL_ISA
