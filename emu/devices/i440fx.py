"""The i440FX PCI host bridge: the 0xcf8/0xcfc configuration mechanism and host bridge config space.

Only bus 0 function 0:0.0 (the host bridge itself) exists so far; other functions read all-ones,
as an empty PCI slot does.
"""
from __future__ import annotations

from emu.devices.base import Device
from emu.memory import AccessRules, CallbackOps, MemoryRegion

CONFIG_ADDR_PORT = 0xCF8
CONFIG_DATA_PORT = 0xCFC


class I440FXHost(Device):
    type_name = "i440FX-pcihost"
    type_parent = "pci-host-bridge"

    def __init__(self) -> None:
        super().__init__()
        self.config_reg = 0
        self.config = bytearray(256)
        self._init_config()
        self.addr_io = MemoryRegion.io(
            "pci-conf-idx", 4,
            CallbackOps(self._addr_read, self._addr_write, AccessRules(valid_min=1, valid_max=4, impl_min=4, impl_max=4)),
            owner=self,
        )
        self.data_io = MemoryRegion.io(
            "pci-conf-data", 4,
            CallbackOps(self._data_read, self._data_write, AccessRules(valid_min=1, valid_max=4, impl_min=1, impl_max=4)),
            owner=self,
        )

    def _init_config(self) -> None:
        c = self.config
        c[0:2] = (0x8086).to_bytes(2, "little")  # vendor: Intel
        c[2:4] = (0x1237).to_bytes(2, "little")  # device: 82441FX
        c[8] = 0x02  # revision
        c[0x0A:0x0C] = (0x0600).to_bytes(2, "little")  # class: host bridge
        c[0x06:0x08] = (0x0000).to_bytes(2, "little")

    def reset(self) -> None:
        self.config_reg = 0
        self.config = bytearray(256)
        self._init_config()

    def _addr_read(self, offset: int, size: int) -> int:
        return self.config_reg

    def _addr_write(self, offset: int, value: int, size: int) -> None:
        self.config_reg = value & 0xFFFFFFFF

    def _target(self) -> int | None:
        """Config-space offset of the selected register when it addresses 00:00.0."""
        reg = self.config_reg
        if not reg & 0x80000000:
            return None
        bus, devfn = (reg >> 16) & 0xFF, (reg >> 8) & 0xFF
        if bus != 0 or devfn != 0:
            return None
        return reg & 0xFC

    def _data_read(self, offset: int, size: int) -> int:
        base = self._target()
        if base is None:
            return (1 << (8 * size)) - 1
        pos = base + offset
        return int.from_bytes(self.config[pos : pos + size], "little")

    def _data_write(self, offset: int, value: int, size: int) -> None:
        base = self._target()
        if base is None:
            return
        pos = base + offset
        # Only the PAM/SMRAM/scratch area past the standard header is writable on the host bridge.
        if pos >= 0x40:
            self.config[pos : pos + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
