"""The i440FX host bridge: the 0xcf8/0xcfc configuration mechanism, 00:00.0, PAM and SMRAM.

``I440FXHost`` (QOM "i440FX-pcihost") is QEMU's PCIHostState: CONFIG_ADDRESS at 0xcf8 takes only
4-byte writes and is not masked, so the data window 0xcfc-0xcff addresses ``config_reg | (port & 3)``
(pci_host.c). ``I440FX`` (QOM "i440FX") is function 00:00.0: its PAM registers 0x59-0x5f remap the
13 segments of 0xc0000-0xfffff between PCI (where pc.rom and isa-bios live), read-only RAM and RAM
as QEMU's pam.c does, and its SMRAM register 0x72 shows the PCI (VGA) window or RAM at 0xa0000.
``build_i440fx`` does the memory wiring of QEMU's pc_memory_init + i440fx_init for the board.
There is no SMM CPU address space here: the ``smram`` region is built and switched (G_SMRAME) as
QEMU does but nothing maps it; D_LCK is not implemented (nor is it in QEMU 7.2).
"""
from __future__ import annotations

from collections.abc import Iterable

from emu.devices.base import Device
from emu.devices.pci import CONFIG_ADDR_PORT, CONFIG_DATA_PORT, CONFIG_ENABLE, PCIBus, PCIDevice
from emu.memory import AccessRules, CallbackOps, MemoryRegion
from emu.migration.vmstate import Field, VMStateDescription

GiB = 1 << 30
IOAPIC_DEFAULT_ADDRESS = 0xFEC00000

I440FX_PAM = 0x59
I440FX_PAM_SIZE = 7
I440FX_SMRAM = 0x72
I440FX_COREBOOT_RAM_SIZE = 0x57

# (start, size) of the 13 PAM segments: the BIOS area, then twelve 16 KiB expansion segments.
PAM_SEGMENTS = ((0xF0000, 0x10000), *((0xC0000 + i * 0x4000, 0x4000) for i in range(12)))
PAM_ATTR_MASK = 3

SMRAM_C_BASE, SMRAM_C_SIZE = 0xA0000, 0x20000
SMRAM_D_OPEN = 1 << 6
SMRAM_G_SMRAME = 1 << 3
SMRAM_RESET = 0x02  # C_BASE_SEG hardwired to 010b

# PAM attribute -> which alias is enabled: 0 PCI, 1 read-only RAM, 2 and 3 RAM (QEMU 7.2 does not
# tell write-only from read-write: its mode 2 alias is plain RAM too).
PAM_MODES = ("pam-pci", "pam-rom", "pam-pci", "pam-ram")


class PAMRegion:
    """One PAM segment: four aliases over [start, start+size), one enabled at a time (pam.c)."""

    def __init__(self, ram: MemoryRegion, pci: MemoryRegion, sysmem: MemoryRegion, start: int, size: int) -> None:
        targets = (pci, ram, ram, ram)
        self.aliases = [MemoryRegion.alias(PAM_MODES[i], targets[i], start, size) for i in range(4)]
        self.aliases[1].set_readonly(True)
        for mr in self.aliases:
            mr.set_enabled(False)
            sysmem.add_subregion(start, mr, priority=1)
        self.start, self.size = start, size
        self.current = 0

    def update(self, idx: int, value: int) -> None:
        """pam_update: odd segments take the high nibble of their register, even ones the low."""
        self.aliases[self.current].set_enabled(False)
        self.current = (value >> (0 if idx & 1 else 4)) & PAM_ATTR_MASK
        self.aliases[self.current].set_enabled(True)


class I440FX(PCIDevice):
    """Function 00:00.0 of the i440FX (82441FX PMC)."""

    type_name = "i440FX"
    type_parent = "pci-device"
    vendor_id = 0x8086
    device_id = 0x1237
    revision = 0x02
    class_id = 0x0600

    def __init__(self, ram_size: int = 0) -> None:
        super().__init__()
        self.config[I440FX_SMRAM] = SMRAM_RESET
        # Old coreboot reads the RAM size (in 8 MiB units) from this non-existent register.
        self.config[I440FX_COREBOOT_RAM_SIZE] = min(ram_size // (8 << 20), 255)
        self.pam: list[PAMRegion] = []
        self.smram_region: MemoryRegion | None = None
        self.smram: MemoryRegion | None = None
        self.vmsd = VMStateDescription(
            name="I440FX", version_id=3, minimum_version_id=3,
            fields=[*self.pci_vmstate_fields(), Field("smm_enabled", "unused_buffer", 1)],
        )

    def wire_memory(self, sysmem: MemoryRegion, pci_memory: MemoryRegion, ram: MemoryRegion) -> None:
        """The SMRAM window and the 13 PAM segments (i440fx_init), then the mappings the
        registers select."""
        # if SMRAM is closed, 0xa0000-0xbffff shows the PCI space (the VGA window) over RAM
        self.smram_region = MemoryRegion.alias("smram-region", pci_memory, SMRAM_C_BASE, SMRAM_C_SIZE)
        sysmem.add_subregion(SMRAM_C_BASE, self.smram_region, priority=1)
        # SMRAM as SMM CPUs would see it (no SMM address space uses it here)
        self.smram = MemoryRegion.container("smram", 4 * GiB)
        self.smram.add_subregion(SMRAM_C_BASE, MemoryRegion.alias("smram-low", ram, SMRAM_C_BASE, SMRAM_C_SIZE))
        self.pam = [PAMRegion(ram, pci_memory, sysmem, start, size) for start, size in PAM_SEGMENTS]
        self.update_memory_mappings()

    def update_memory_mappings(self) -> None:
        """i440fx_update_memory_mappings: PAM segments and the SMRAM window from config space."""
        for i, region in enumerate(self.pam):
            region.update(i, self.config[I440FX_PAM + (i + 1) // 2])
        smram = self.config[I440FX_SMRAM]
        if self.smram_region is not None and self.smram is not None:
            self.smram_region.set_enabled(not smram & SMRAM_D_OPEN)
            self.smram.set_enabled(bool(smram & SMRAM_G_SMRAME))

    def write_config(self, addr: int, value: int, length: int) -> None:
        self.default_write_config(addr, value, length)
        if addr < I440FX_PAM + I440FX_PAM_SIZE and I440FX_PAM < addr + length or \
                addr <= I440FX_SMRAM < addr + length:
            self.update_memory_mappings()

    def device_reset(self) -> None:
        # QEMU's i440FX has no reset handler: PAM/SMRAM keep their values over a system reset.
        pass

    def save_vmstate(self) -> dict:
        return self.pci_save_state()

    def load_vmstate(self, state: dict) -> None:
        self.pci_load_state(state)
        self.update_memory_mappings()


PCIHOST_VMSD = VMStateDescription(
    name="PCIHost", version_id=1, minimum_version_id=1, fields=[Field("config_reg", "uint32")],
)


class I440FXHost(Device):
    """The host-facing part (QOM "i440FX-pcihost"): config mechanism #1 onto bus 0."""

    type_name = "i440FX-pcihost"
    type_parent = "pci-host-bridge"
    vmsd = PCIHOST_VMSD

    def __init__(self, bus: PCIBus | None = None) -> None:
        """``bus``: the root bus behind 0xcf8/0xcfc (None: a bus with just an unwired 00:00.0)."""
        super().__init__()
        self.config_reg = 0
        if bus is None:
            # standalone (no build_i440fx): a bus holding only 00:00.0, with no memory wiring
            bus = PCIBus("pci.0", MemoryRegion.container("pci", 1 << 64), MemoryRegion.container("pci-io", 1 << 16))
            bus.add(I440FX(), 0)
        self.bus = bus
        self.pci_memory: MemoryRegion | None = None
        first = bus.devices[0]
        self.device: I440FX | None = first if isinstance(first, I440FX) else None
        self.pci_hole = (0, 0)  # [start, end) of the 32-bit PCI hole
        # QEMU's default ops: any size 1..4 accepted, handed to us as is
        rules = AccessRules(valid_min=1, valid_max=4, impl_min=1, impl_max=4)
        self.addr_io = MemoryRegion.io("pci-conf-idx", 4, CallbackOps(self._addr_read, self._addr_write, rules),
                                       owner=self)
        self.data_io = MemoryRegion.io("pci-conf-data", 4, CallbackOps(self._data_read, self._data_write, rules),
                                       owner=self)

    def reset(self) -> None:
        # PCIHostState has no reset: config_reg survives a system reset, as in QEMU.
        pass

    def _addr_read(self, offset: int, size: int) -> int:
        return self.config_reg  # the access width is cut from the low bytes, whatever the offset

    def _addr_write(self, offset: int, value: int, size: int) -> None:
        # PIIX3's reset control register at 0xcf9 is a region of its own over ours (an access
        # belongs whole to the region of its first byte, so "outl 0xcf8" still lands here)
        if offset == 0 and size == 4:
            self.config_reg = value & 0xFFFFFFFF

    def _data_read(self, offset: int, size: int) -> int:
        if not self.config_reg & CONFIG_ENABLE:
            return 0xFFFFFFFF
        return self.bus.data_read(self.config_reg | (offset & 3), size)

    def _data_write(self, offset: int, value: int, size: int) -> None:
        if self.config_reg & CONFIG_ENABLE:
            self.bus.data_write(self.config_reg | (offset & 3), value, size)

    def save_vmstate(self) -> dict:
        return {"config_reg": self.config_reg}

    def load_vmstate(self, state: dict) -> None:
        self.config_reg = int(state["config_reg"]) & 0xFFFFFFFF

    def vmstate_sections(self, saving: bool = True) -> list[tuple[str, int, VMStateDescription, dict]]:
        """"PCIHost", then the root bus's "PCIBUS" (QEMU registers it when the bus is realized,
        right after the host)."""
        idstr, instance = self.bus.vmstate_id()
        return [*super().vmstate_sections(saving),
                (idstr, instance, self.bus.vmsd, self.bus.save_vmstate() if saving else {})]

    def load_vmstate_sections(self, states: dict[tuple[str, int], dict]) -> None:
        super().load_vmstate_sections(states)
        state = states.get(self.bus.vmstate_id())
        if state:
            self.bus.load_vmstate(state)


def build_i440fx(sysmem: MemoryRegion, system_io: MemoryRegion, ram: MemoryRegion, below_4g: int, above_4g: int,
                 pci_regions: Iterable[tuple[int, MemoryRegion, int]] = ()) -> I440FXHost:
    """The pc board's memory and host bridge wiring (pc_memory_init + i440fx_init of QEMU 7.2).

    ``ram`` is the whole guest RAM region; it is shown as ``ram-below-4g`` at 0 and ``ram-above-4g``
    at 4 GiB. The PCI memory space (container "pci", returned as ``host.pci_memory``) sits under
    everything at priority -1; ``pci_regions`` are (address, region, priority) placed in it, e.g.
    pc.bios below 4 GiB and isa-bios / pc.rom at priority 1 below 1 MiB, where PAM mode 0 shows
    them. The host's config ports go to 0xcf8/0xcfc of ``system_io``, which is also the bus's I/O
    space. 00:00.0 is plugged on ``host.bus``; PIIX functions go on that bus next.
    """
    sysmem.add_subregion(0, MemoryRegion.alias("ram-below-4g", ram, 0, below_4g))
    if above_4g:
        sysmem.add_subregion(4 * GiB, MemoryRegion.alias("ram-above-4g", ram, below_4g, above_4g))
    pci_memory = MemoryRegion.container("pci", 1 << 64)
    for addr, mr, priority in pci_regions:
        pci_memory.add_subregion(addr, mr, priority)
    sysmem.add_subregion(0, pci_memory, priority=-1)

    bus = PCIBus("pci.0", pci_memory, system_io)
    host = I440FXHost(bus)
    bus.host = host
    host.pci_memory = pci_memory
    host.pci_hole = (below_4g, IOAPIC_DEFAULT_ADDRESS)
    system_io.add_subregion(CONFIG_ADDR_PORT, host.addr_io)
    system_io.add_subregion(CONFIG_DATA_PORT, host.data_io)

    dev = I440FX(ram.size)
    bus.add(dev, 0)
    dev.wire_memory(sysmem, pci_memory, ram)
    host.device = dev
    return host
