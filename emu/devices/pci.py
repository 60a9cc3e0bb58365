"""Conventional PCI: the bus (slots, config-space routing, INTx levels) and the PCIDevice base.

Follows QEMU 7.2's hw/pci/pci.c: each function has a 256-byte config space with write, W1C and
check masks; config writes go through ``wmask``/``w1cmask`` as ``pci_default_write_config`` does;
BARs answer the sizing protocol through their wmask and are mapped into the bus's memory or I/O
space (priority 1) when the command register enables that space; INTx pins are counted per bus
IRQ line after the bus's ``map_irq`` (the PIIX3 owns routing on the pc board). PCIe, bridges,
capabilities, MSI and option ROMs are not modelled.
"""
from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from emu.devices.base import Device
from emu.memory import MemoryRegion
from emu.migration.vmstate import Field, LoadContext, VMStateDescription
from emu.qom import register_type

CONFIG_SPACE_SIZE = 256
HEADER_SIZE = 0x40

# Standard header offsets and bits (include/hw/pci/pci_regs.h)
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION_ID, CLASS_PROG, CLASS_DEVICE = 0x08, 0x09, 0x0A
CACHE_LINE_SIZE, HEADER_TYPE = 0x0C, 0x0E
BASE_ADDRESS_0, ROM_ADDRESS = 0x10, 0x30
SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID = 0x2C, 0x2E
CAPABILITY_LIST, INTERRUPT_LINE, INTERRUPT_PIN = 0x34, 0x3C, 0x3D

COMMAND_IO, COMMAND_MEMORY, COMMAND_MASTER = 0x1, 0x2, 0x4
COMMAND_SERR, COMMAND_INTX_DISABLE = 0x100, 0x400
STATUS_INTERRUPT, STATUS_CAP_LIST = 0x08, 0x10
STATUS_FAST_BACK, STATUS_DEVSEL_MEDIUM = 0x80, 0x200
STATUS_W1C = 0x0100 | 0x0800 | 0x1000 | 0x2000 | 0x4000 | 0x8000  # parity, aborts, SERR, detected parity
HEADER_TYPE_MULTI_FUNCTION = 0x80

BASE_ADDRESS_SPACE_MEMORY = 0x00
BASE_ADDRESS_SPACE_IO = 0x01
BASE_ADDRESS_MEM_TYPE_64 = 0x04
NUM_BARS = 6
NUM_PINS = 4

#: QEMU's default subsystem IDs (Red Hat / QEMU) for devices that set none.
DEFAULT_SUBSYSTEM_VENDOR_ID = 0x1AF4
DEFAULT_SUBSYSTEM_ID = 0x1100

UINT32_MAX = 0xFFFFFFFF
HWADDR_MAX = (1 << 64) - 1

# Configuration mechanism #1 of the PC's host bridge: a CONFIG_ADDRESS register selects the bus,
# function and register that the 4-byte CONFIG_DATA window then reads and writes.
CONFIG_ADDR_PORT, CONFIG_DATA_PORT = 0xCF8, 0xCFC
CONFIG_ENABLE = 1 << 31


def config_address(devfn: int, offset: int, bus: int = 0) -> int:
    """The CONFIG_ADDRESS value that selects register ``offset`` of ``devfn`` on ``bus`` (enabled)."""
    return CONFIG_ENABLE | (bus << 16) | (devfn << 8) | offset


class PCIError(Exception):
    """A device that cannot be plugged where it was asked to go (the message is QEMU's)."""


def devfn(slot: int, func: int) -> int:
    """QEMU's PCI_DEVFN."""
    return ((slot & 0x1F) << 3) | (func & 0x07)


def _overlaps(addr: int, length: int, start: int, size: int) -> bool:
    return addr < start + size and start < addr + length


class BAR:
    """One registered base address register: its region, size, type bits and current mapping."""

    __slots__ = ("index", "size", "type", "mr", "addr")

    def __init__(self, index: int, type_: int, mr: MemoryRegion) -> None:
        self.index, self.size, self.type, self.mr = index, mr.size, type_, mr
        self.addr: int | None = None  # None: unmapped (QEMU's PCI_BAR_UNMAPPED)

    @property
    def is_io(self) -> bool:
        return bool(self.type & BASE_ADDRESS_SPACE_IO)

    @property
    def is_64(self) -> bool:
        return not self.is_io and bool(self.type & BASE_ADDRESS_MEM_TYPE_64)


class PCIDevice(Device):
    """A conventional PCI function. Subclasses set the class attributes of QEMU's PCIDeviceClass,
    override ``realize`` (runs once the function sits on a bus), ``device_reset`` (the qdev reset,
    run before the generic PCI reset) and ``write_config`` (wrapping ``default_write_config``)."""

    type_name = "pci-device"
    type_parent = "device"
    type_abstract = True

    vendor_id = 0
    device_id = 0
    revision = 0
    class_id = 0
    subsystem_vendor_id = 0
    subsystem_id = 0

    def __init__(self, multifunction: bool = False) -> None:
        super().__init__()
        self.multifunction = multifunction
        self.bus: PCIBus | None = None
        self.devfn = -1
        self.qdev_id: str | None = None
        self.irq_state = 0  # bit n: INTx pin n asserted
        self.version_id = 2  # the PCIDevice vmstate version, as do_pci_register_device sets it
        self.bars: dict[int, BAR] = {}
        self.config = bytearray(CONFIG_SPACE_SIZE)
        self.wmask = bytearray(CONFIG_SPACE_SIZE)
        self.w1cmask = bytearray(CONFIG_SPACE_SIZE)
        self.cmask = bytearray(CONFIG_SPACE_SIZE)
        self._init_header()

    # ---- config space helpers
    def get_word(self, off: int) -> int:
        return int.from_bytes(self.config[off : off + 2], "little")

    def get_long(self, off: int) -> int:
        return int.from_bytes(self.config[off : off + 4], "little")

    def set_word(self, off: int, value: int, space: bytearray | None = None) -> None:
        (self.config if space is None else space)[off : off + 2] = (value & 0xFFFF).to_bytes(2, "little")

    def set_long(self, off: int, value: int, space: bytearray | None = None) -> None:
        (self.config if space is None else space)[off : off + 4] = (value & UINT32_MAX).to_bytes(4, "little")

    def _init_header(self) -> None:
        """IDs and the masks of do_pci_register_device (pci_init_cmask/wmask/w1cmask)."""
        self.set_word(VENDOR_ID, self.vendor_id)
        self.set_word(DEVICE_ID, self.device_id)
        self.config[REVISION_ID] = self.revision
        self.set_word(CLASS_DEVICE, self.class_id)
        sub = (self.subsystem_vendor_id, self.subsystem_id)
        if not any(sub):
            sub = (DEFAULT_SUBSYSTEM_VENDOR_ID, DEFAULT_SUBSYSTEM_ID)
        self.set_word(SUBSYSTEM_VENDOR_ID, sub[0])
        self.set_word(SUBSYSTEM_ID, sub[1])
        for off, size in ((VENDOR_ID, 2), (DEVICE_ID, 2), (REVISION_ID, 1), (CLASS_PROG, 1), (CLASS_DEVICE, 2),
                          (HEADER_TYPE, 1), (CAPABILITY_LIST, 1)):
            self.cmask[off : off + size] = b"\xff" * size
        self.cmask[STATUS] = STATUS_CAP_LIST
        self.wmask[CACHE_LINE_SIZE] = 0xFF
        self.wmask[INTERRUPT_LINE] = 0xFF
        self.set_word(COMMAND, COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_INTX_DISABLE | COMMAND_SERR,
                      self.wmask)
        self.wmask[HEADER_SIZE:] = b"\xff" * (CONFIG_SPACE_SIZE - HEADER_SIZE)
        self.set_word(STATUS, STATUS_W1C, self.w1cmask)
        if self.multifunction:
            self.config[HEADER_TYPE] |= HEADER_TYPE_MULTI_FUNCTION

    # ---- hooks
    def realize(self) -> None:
        """Called once the function is on its bus (regions go into the bus's spaces here)."""

    def device_reset(self) -> None:
        """The device's own reset (QEMU's dc->reset); the generic PCI reset follows it."""

    def reset(self) -> None:
        self.device_reset()
        self._pci_reset()

    def _pci_reset(self) -> None:
        """pci_do_device_reset: INTx down, writable command/status/line bits cleared, BARs to type."""
        for pin in range(NUM_PINS):
            self._irq_handler(pin, 0)
        for off in (COMMAND, STATUS):
            mask = int.from_bytes(self.wmask[off : off + 2], "little")
            mask |= int.from_bytes(self.w1cmask[off : off + 2], "little")
            self.set_word(off, self.get_word(off) & ~mask)
        self.config[INTERRUPT_LINE] &= ~(self.wmask[INTERRUPT_LINE] | self.w1cmask[INTERRUPT_LINE]) & 0xFF
        self.config[CACHE_LINE_SIZE] = 0
        for bar in self.bars.values():
            off = BASE_ADDRESS_0 + 4 * bar.index
            self.set_long(off, bar.type)
            if bar.is_64:
                self.set_long(off + 4, 0)
        self.update_mappings()

    # ---- config access (what the host bridge calls)
    def config_read(self, addr: int, length: int) -> int:
        """pci_default_read_config: ``length`` bytes at ``addr``, little-endian."""
        return int.from_bytes(self.config[addr : addr + length], "little")

    def write_config(self, addr: int, value: int, length: int) -> None:
        """The device's config_write; the default is pci_default_write_config."""
        self.default_write_config(addr, value, length)

    def default_write_config(self, addr: int, value: int, length: int) -> None:
        """Each byte through wmask (write) and w1cmask (write 1 to clear), then BAR/command effects."""
        was_disabled = self.intx_disabled()
        for i in range(length):
            v = (value >> (8 * i)) & 0xFF
            wm, w1c = self.wmask[addr + i], self.w1cmask[addr + i]
            self.config[addr + i] = ((self.config[addr + i] & ~wm) | (v & wm)) & ~(v & w1c) & 0xFF
        covers_command = addr <= COMMAND < addr + length
        if covers_command or _overlaps(addr, length, BASE_ADDRESS_0, 24) or _overlaps(addr, length, ROM_ADDRESS, 4):
            self.update_mappings()
        if covers_command:
            self._update_intx_disabled(was_disabled)

    # ---- BARs
    def register_bar(self, index: int, type_: int, mr: MemoryRegion) -> BAR:
        """pci_register_bar: the BAR's size bits read back as zeros (its wmask), type bits fixed."""
        if not 0 <= index < NUM_BARS or mr.size & (mr.size - 1):
            raise ValueError(f"{self.type_name}: bad BAR {index} of size {mr.size:#x}")
        bar = BAR(index, type_, mr)
        self.bars[index] = bar
        off = BASE_ADDRESS_0 + 4 * index
        wmask = ~(mr.size - 1) & ((1 << 64) - 1)
        self.set_long(off, type_)
        if bar.is_64:
            self.wmask[off : off + 8] = wmask.to_bytes(8, "little")
            self.cmask[off : off + 8] = b"\xff" * 8
        else:
            self.set_long(off, wmask, self.wmask)
            self.set_long(off, UINT32_MAX, self.cmask)
        return bar

    def bar_address(self, bar: BAR) -> int | None:
        """pci_bar_address: where the BAR decodes now, or None (disabled, zero, wrapping)."""
        cmd = self.get_word(COMMAND)
        off = BASE_ADDRESS_0 + 4 * bar.index
        raw = int.from_bytes(self.config[off : off + 8], "little") if bar.is_64 else self.get_long(off)
        addr = raw & ~(bar.size - 1)
        last = addr + bar.size - 1
        if bar.is_io:
            if not cmd & COMMAND_IO or last <= addr or last >= UINT32_MAX or addr == 0:
                return None
            return addr
        if not cmd & COMMAND_MEMORY or last <= addr or addr == 0 or last >= HWADDR_MAX:
            return None
        if not bar.is_64 and last >= UINT32_MAX:
            return None
        return addr

    def update_mappings(self) -> None:
        """pci_update_mappings: moves each BAR's region to where its register now points."""
        if self.bus is None:
            return
        for bar in self.bars.values():
            new = self.bar_address(bar)
            if new == bar.addr:
                continue
            space = self.bus.address_space_io if bar.is_io else self.bus.address_space_mem
            if bar.addr is not None:
                space.del_subregion(bar.mr)
            bar.addr = new
            if new is not None:
                space.add_subregion(new, bar.mr, priority=1)

    # ---- INTx
    def intx_disabled(self) -> bool:
        return bool(self.get_word(COMMAND) & COMMAND_INTX_DISABLE)

    def intx_pin(self) -> int:
        """The INTx pin index (0 = INTA) this function's interrupt pin register names."""
        return self.config[INTERRUPT_PIN] - 1

    def set_irq(self, level: int) -> None:
        """pci_set_irq: drives the function's own INTx pin."""
        self._irq_handler(self.intx_pin(), 1 if level else 0)

    def _irq_handler(self, pin: int, level: int) -> None:
        change = level - ((self.irq_state >> pin) & 1)
        if not change:
            return
        self.irq_state = (self.irq_state & ~(1 << pin)) | (level << pin)
        self._update_irq_status()
        if not self.intx_disabled() and self.bus is not None:
            self.bus.change_irq_level(self, pin, change)

    def _update_irq_status(self) -> None:
        if self.irq_state:
            self.config[STATUS] |= STATUS_INTERRUPT
        else:
            self.config[STATUS] &= ~STATUS_INTERRUPT & 0xFF

    def _update_intx_disabled(self, was_disabled: bool) -> None:
        disabled = self.intx_disabled()
        if disabled == was_disabled or self.bus is None:
            return
        for pin in range(NUM_PINS):
            state = (self.irq_state >> pin) & 1
            if state:
                self.bus.change_irq_level(self, pin, -state if disabled else state)

    # ---- migration: the "PCIDevice" struct every PCI vmsd starts with (VMSTATE_PCI_DEVICE)
    def dev_path(self) -> str:
        """pcibus_get_dev_path: ``0000:00:01.0``."""
        return f"0000:00:{self.devfn >> 3:02x}.{self.devfn & 7:x}"

    def vmstate_id(self) -> tuple[str, int]:
        """QEMU's idstr for a PCI device: ``<dev path>/<vmsd name>``, instance 0."""
        assert self.vmsd is not None
        return f"{self.dev_path()}/{self.vmsd.name}", 0

    def pci_vmstate_fields(self) -> list[Field]:
        """The PCIDevice struct inlined (its bytes in the stream are the same as a nested struct)."""
        return [
            Field("version_id", "int32", get=self._get_version_id),
            Field("config", "buffer", CONFIG_SPACE_SIZE, get=self._get_config, vmdesc_type="pci config"),
            Field("irq_state", "buffer", 4 * NUM_PINS, get=self._get_irq_state, vmdesc_type="pci irq state"),
        ]

    def pci_save_state(self) -> dict[str, Any]:
        """pci_device_save's values: the interrupt status bit is implicit in irq_state."""
        config = bytearray(self.config)
        config[STATUS] &= ~STATUS_INTERRUPT & 0xFF
        irq = b"".join(((self.irq_state >> pin) & 1).to_bytes(4, "big") for pin in range(NUM_PINS))
        return {"version_id": self.version_id, "config": bytes(config), "irq_state": irq}

    def pci_load_state(self, state: dict[str, Any]) -> None:
        """Takes a loaded PCIDevice struct: config, mappings, INTx state."""
        self.version_id = int(state["version_id"])
        self.config[:] = state["config"]
        self.update_mappings()
        irq = bytes(state["irq_state"])
        self.irq_state = sum(int.from_bytes(irq[4 * p : 4 * p + 4], "big") << p for p in range(NUM_PINS))
        self._update_irq_status()

    def _get_version_id(self, f: Any, state: dict, ctx: LoadContext) -> int:
        loaded = int.from_bytes(f.get(4), "big", signed=True)
        if 0 <= loaded <= self.version_id:
            state["version_id"] = loaded
            return 0
        ctx.error(f"Invalid value {loaded} expecting positive value <= {self.version_id}")
        return -errno.EINVAL

    def _get_config(self, f: Any, state: dict, ctx: LoadContext) -> int:
        data = f.get(CONFIG_SPACE_SIZE)
        for i in range(CONFIG_SPACE_SIZE):
            if (data[i] ^ self.config[i]) & self.cmask[i] & ~self.wmask[i] & ~self.w1cmask[i]:
                ctx.error(f"get_pci_config_device: Bad config data: i=0x{i:x} read: {data[i]:x} "
                          f"device: {self.config[i]:x} cmask: {self.cmask[i]:x} wmask: {self.wmask[i]:x} "
                          f"w1cmask:{self.w1cmask[i]:x}")
                return -errno.EINVAL
        state["config"] = bytes(data)
        return 0

    def _get_irq_state(self, f: Any, state: dict, ctx: LoadContext) -> int:
        data = f.get(4 * NUM_PINS)
        for pin in range(NUM_PINS):
            value = int.from_bytes(data[4 * pin : 4 * pin + 4], "big")
            if value not in (0, 1):
                ctx.error(f"irq state {value}: must be 0 or 1.")
                return -errno.EINVAL
        state["irq_state"] = bytes(data)
        return 0


SetIrq = Callable[[int, int], None]
MapIrq = Callable[[PCIDevice, int], int]


class PCIBus:
    """A root PCI bus (bus 0): 256 device/function slots, memory and I/O spaces, INTx lines."""

    def __init__(self, name: str, address_space_mem: MemoryRegion, address_space_io: MemoryRegion) -> None:
        self.name = name
        self.address_space_mem = address_space_mem
        self.address_space_io = address_space_io
        self.devices: list[PCIDevice | None] = [None] * 256
        self.set_irq_fn: SetIrq | None = None
        self.map_irq_fn: MapIrq | None = None
        self.irq_count: list[int] = []
        self.host: Any = None  # the host bridge behind this root bus, if any

    def set_irqs(self, set_irq: SetIrq, map_irq: MapIrq, nirq: int) -> None:
        """pci_bus_irqs: who turns INTx pins into interrupt lines (the PIIX3 on the pc board)."""
        self.set_irq_fn, self.map_irq_fn = set_irq, map_irq
        self.irq_count = [0] * nirq

    def irq_level(self, irq: int) -> int:
        """pci_bus_get_irq_level: 1 if any function drives bus line ``irq``."""
        return 1 if self.irq_count[irq] else 0

    def change_irq_level(self, dev: PCIDevice, pin: int, change: int) -> None:
        if self.map_irq_fn is None or self.set_irq_fn is None:
            return
        irq = self.map_irq_fn(dev, pin)
        self.irq_count[irq] += change
        self.set_irq_fn(irq, self.irq_level(irq))

    # ---- plugging
    def add(self, dev: PCIDevice, devfn_: int = -1, qdev_id: str | None = None) -> PCIDevice:
        """Places ``dev`` at ``devfn_`` (-1: the first free slot), realizes and resets it.
        Raises PCIError with QEMU's text when the slot is taken or the functions disagree."""
        name = dev.type_name
        if devfn_ < 0:
            devfn_ = next((d for d in range(0, 256, 8) if self.devices[d] is None), -1)
            if devfn_ < 0:
                raise PCIError(f"PCI: no slot/function available for {name}, all in use or reserved")
        elif self.devices[devfn_] is not None:
            other = self.devices[devfn_]
            assert other is not None
            raise PCIError(f"PCI: slot {devfn_ >> 3} function {devfn_ & 7} not available for {name}, "
                           f"in use by {other.type_name},id={other.qdev_id or '(null)'}")
        self._check_multifunction(dev, devfn_)
        dev.bus, dev.devfn, dev.qdev_id = self, devfn_, qdev_id
        dev.add_property("addr", "int32", devfn_, "int", static=True)  # QEMU's PCI "addr": the devfn
        self.devices[devfn_] = dev
        dev.realize()
        dev.reset()
        return dev

    def _check_multifunction(self, dev: PCIDevice, devfn_: int) -> None:
        slot, func = devfn_ >> 3, devfn_ & 7
        if func:
            f0 = self.devices[devfn(slot, 0)]
            if f0 is not None and not f0.multifunction:
                raise PCIError(f"PCI: single function device can't be populated in function {slot:x}.{func:x}")
            return
        if dev.multifunction:
            return
        for f in range(1, 8):
            if self.devices[devfn(slot, f)] is not None:
                raise PCIError(f"PCI: {slot:x}.0 indicates single function, but {slot:x}.{f:x} is already populated.")

    def find(self, bus_num: int, devfn_: int) -> PCIDevice | None:
        """pci_find_device on the root bus (there are no bridges, so only bus 0 has functions)."""
        return self.devices[devfn_ & 0xFF] if bus_num == 0 else None

    # ---- migration: QEMU's "PCIBUS" section (the INTx line counts)
    @property
    def vmsd(self) -> VMStateDescription:
        """"PCIBUS" v1: nirq (must match) and the per-line assertion counts."""
        return VMStateDescription(name="PCIBUS", version_id=1, minimum_version_id=1,
                                  fields=[Field("nirq", "int32", get=self._get_nirq, vmdesc_type="int32 equal"),
                                          *(Field(f"irq_count[{i}]", "int32") for i in range(len(self.irq_count)))])

    def vmstate_id(self) -> tuple[str, int]:
        return "PCIBUS", 0

    def save_vmstate(self) -> dict:
        state: dict[str, Any] = {"nirq": len(self.irq_count)}
        state.update({f"irq_count[{i}]": n for i, n in enumerate(self.irq_count)})
        return state

    def load_vmstate(self, state: dict) -> None:
        self.irq_count = [int(state[f"irq_count[{i}]"]) for i in range(len(self.irq_count))]

    def _get_nirq(self, f: Any, state: dict, ctx: LoadContext) -> int:
        loaded = int.from_bytes(f.get(4), "big", signed=True)
        if loaded != len(self.irq_count):
            ctx.error(f"{len(self.irq_count) & 0xFFFFFFFF:x} != {loaded & 0xFFFFFFFF:x}")
            return -errno.EINVAL
        state["nirq"] = loaded
        return 0

    def functions(self) -> list[PCIDevice]:
        return [d for d in self.devices if d is not None]

    # ---- config cycles (pci_data_read/pci_data_write)
    def data_read(self, addr: int, length: int) -> int:
        """A config read at the 0xcf8-style address ``addr``: absent functions read all-ones."""
        dev = self.find((addr >> 16) & 0xFF, (addr >> 8) & 0xFF)
        if dev is None:
            return UINT32_MAX
        off = addr & 0xFF
        return dev.config_read(off, min(length, CONFIG_SPACE_SIZE - off))

    def data_write(self, addr: int, value: int, length: int) -> None:
        dev = self.find((addr >> 16) & 0xFF, (addr >> 8) & 0xFF)
        if dev is None:
            return
        off = addr & 0xFF
        dev.write_config(off, value, min(length, CONFIG_SPACE_SIZE - off))


register_type("pci-ide", "pci-device", abstract=True)
register_type("pci-piix3", "pci-device", abstract=True)
