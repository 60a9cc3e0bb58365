"""The PC speaker port 0x61 (QEMU 7.2's ``isa-pcspk``): PIT channel 2 gate and output, speaker data.

Owns the register only; no sound is produced (QEMU's audio backend is not modelled). Reads return
channel 2's gate (bit 0), the speaker-data enable (bit 1), a refresh-clock bit (bit 4) and channel 2's
output (bit 5). As in QEMU 7.2 the refresh bit is not derived from time: it flips on every read. Writes
take bit 0 as channel 2's gate and bit 1 as speaker data; the other bits are dropped. The device has no
reset handler in QEMU, so data and the refresh bit survive a system reset (the PIT's reset still
lowers channel 2's gate).
"""
from __future__ import annotations

from emu.devices.base import Device
from emu.devices.i8254 import PIT
from emu.memory import AccessRules, CallbackOps, MemoryRegion
from emu.migration.vmstate import Field, VMStateDescription
from emu.qom import Property


class PCSpeaker(Device):
    """``isa-pcspk``: I/O region ``io`` (1 byte, at ``iobase``), linked to the ``pit`` it gates."""

    type_name = "isa-pcspk"
    type_parent = "isa-device"

    def __init__(self, pit: PIT, iobase: int = 0x61, migrate: bool = True) -> None:
        super().__init__()
        self.pit = pit
        self.data_on = 0
        self.dummy_refresh_clock = 0
        self.add_property("iobase", "uint32", iobase, "uint32", static=True)
        self.add_property("migrate", "bool", migrate, "bool", static=True)
        # QEMU's link<pit-common> property, which reads as the PIT's QOM path
        self._props["pit"] = Property("pit", "link<pit-common>", lambda: pit.path)
        self.io = MemoryRegion.io("pcspk", 1, CallbackOps(self._read, self._write, AccessRules(impl_max=1)),
                                  owner=self)

    def _read(self, offset: int, size: int) -> int:
        gate, _, _, out = self.pit.channel_info(2)
        self.dummy_refresh_clock ^= 1 << 4
        return gate | (self.data_on << 1) | self.dummy_refresh_clock | (out << 5)

    def _write(self, offset: int, value: int, size: int) -> None:
        self.data_on = (value >> 1) & 1
        self.pit.set_gate(2, value & 1)

    # ---- migration ("pcspk" version 1, sent only while the ``migrate`` property is on)
    vmsd = VMStateDescription(
        name="pcspk", version_id=1, minimum_version_id=1,
        fields=[Field("data_on", "uint8"), Field("dummy_refresh_clock", "uint8")],
        needed=lambda state: bool(state.get("migrate", True)),
    )

    def save_vmstate(self) -> dict:
        return {"data_on": self.data_on, "dummy_refresh_clock": self.dummy_refresh_clock,
                "migrate": bool(self.prop("migrate"))}

    def load_vmstate(self, state: dict) -> None:
        self.data_on = int(state.get("data_on", self.data_on)) & 0xFF
        self.dummy_refresh_clock = int(state.get("dummy_refresh_clock", self.dummy_refresh_clock)) & 0xFF
