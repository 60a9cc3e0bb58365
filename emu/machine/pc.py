"""The ``pc`` machine (i440FX + PIIX): RAM split around the PCI hole, BIOS ROMs, host bridge, IOAPIC.

The layout follows QEMU's i440fx board: RAM below 4 GiB up to 0xe0000000 (0xc0000000 when the RAM
has to be split, for gigabyte alignment), the rest above 4 GiB; the option-ROM area at 0xc0000 and
the last 128 KiB of the BIOS at 0xe0000 shadow RAM; the BIOS image sits just below 4 GiB. More PC
devices plug in through ``add_device`` and the ``memory``/``io`` regions.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from emu.devices.acpi_build import AcpiConfig
from emu.devices.base import Device
from emu.devices.catalog import DeviceSpec
from emu.devices.debug_exit import ISADebugExit
from emu.devices.fdc import IsaFdc
from emu.devices.fw_cfg import (
    FW_CFG_DMA_IO_BASE,
    FW_CFG_IO_BASE,
    PC_HPET_BLOCK_ID,
    QOM_CHILD_NAME,
    BootOptionError,
    PcFwCfgConfig,
    build_pc_fw_cfg,
)
from emu.devices.hpet import HPET, HPET_BASE
from emu.devices.i440fx import I440FXHost, build_i440fx
from emu.devices.i8042 import I8042
from emu.devices.i8254 import PIT
from emu.devices.i8257 import create_dma_pair
from emu.devices.i8259 import I8259
from emu.devices.ib700 import IB700, IB700_BASE
from emu.devices.ide_ports import CHANNELS, EmptyIdeChannel, ide_serial
from emu.devices.ioapic import IOAPIC, IOAPIC_BASE, NUM_PINS
from emu.devices.ioport import PORT80_ADDR, PORT92_ADDR, PORTF0_ADDR, Port92, port80_region, portf0_region
from emu.devices.pci import PCIDevice, PCIError
from emu.devices.pcspk import PCSpeaker
from emu.devices.piix import PIIX4PM, build_piix, io_port_present
from emu.devices.pm_blocks import CPUHP_BASE, PCIHP_BASE, CpuHotplugLegacy, PciHotplugRegs
from emu.devices.pvpanic import PVPanic, PVPanicPCI
from emu.devices.rtc import RTC, RtcOptions
from emu.devices.serial import Serial16550
from emu.devices.smbus import EEPROM_BASE, EEPROM_COUNT, SMBusEEPROM
from emu.devices.testdev import IOMEM_ADDR as TESTDEV_IOMEM_ADDR
from emu.devices.testdev import PCTestdev
from emu.devices.x86cpu import X86CPU
from emu.firmware_path import FIRMWARE_PATH, find_file
from emu.irq import IRQ
from emu.machine import pc_unmodelled
from emu.machine.base import Machine, MachineError
from emu.machine.pc_acpi import OemIds, PcAcpiTables
from emu.memory import MemoryRegion

GiB = 1 << 30
BIOS_SIZE = 256 * 1024
ISA_BIOS_SIZE = 128 * 1024
PC_ROM_BASE = 0xC0000
PC_ROM_SIZE = 0x20000
LOWMEM_LIMIT = 0xE0000000
LOWMEM_SPLIT = 0xC0000000
CMOS_EQUIPMENT = 0x14
BOOT_NIBBLES = {"a": 1, "b": 1, "c": 2, "d": 3, "n": 4}  # CMOS boot device codes

# QEMU's pc firmware, looked for in the data directories (emu.firmware_path); SeaBIOS's image is
# plain ROM data for us (we never execute it).
DEFAULT_BIOS = "bios-256k.bin"
# The option ROM of the vapic device every TCG pc has (hw/i386/kvmvapic.c). The device (TPR
# patching through port 0x7e) is not modelled; SeaBIOS would run the ROM, which we never do.
VAPIC_ROM = "kvmvapic.bin"


def option_rom(name: str, dirs: Sequence[str] = FIRMWARE_PATH) -> bytes | None:
    """An option ROM image found as qemu_find_file does, or None after QEMU's message (the
    machine starts without it, as QEMU's does)."""
    path = find_file(name, dirs) or name
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        sys.stderr.write(f"Could not open option rom '{path}': {os.strerror(e.errno or 0)}\n")
        return None


def default_bios_image(dirs: Sequence[str] = FIRMWARE_PATH) -> bytes:
    """SeaBIOS's ``bios-256k.bin`` from the data directories, else (with a warning, where QEMU
    would not start) an empty ROM with only the reset vector jump."""
    path = find_file(DEFAULT_BIOS, dirs)
    data = b""
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = f.read(BIOS_SIZE + 1)
        except OSError:
            pass
    if len(data) == BIOS_SIZE:
        return data
    _report(f"warning: no SeaBIOS image ({DEFAULT_BIOS}) found in " + ", ".join(dirs)
            + ": the BIOS ROM is empty")
    image = bytearray(BIOS_SIZE)
    # jmp far f000:e05b at 0xffff0: the conventional PC reset vector
    image[-16:-11] = bytes([0xEA, 0x5B, 0xE0, 0x00, 0xF0])
    return bytes(image)


def _report(message: str) -> None:
    """QEMU's error_report: the program name, then the message, on stderr."""
    sys.stderr.write(f"{os.path.basename(sys.argv[0]) or 'emu-system-x86_64'}: {message}\n")


def split_ram(ram_size: int) -> tuple[int, int]:
    """(below 4 GiB, above 4 GiB) sizes, as i440fx splits them."""
    lowmem = LOWMEM_SPLIT if ram_size >= LOWMEM_LIMIT else LOWMEM_LIMIT
    below = min(ram_size, lowmem)
    return below, ram_size - below


class PcMachine(Machine):
    name = "pc-i440fx-9.1"
    aliases: tuple[str, ...] = ("pc",)
    description = "Standard PC (i440FX + PIIX, 1996)"
    default_ram_size = 128 * 1024 * 1024
    has_cpu = True
    has_default_devices = True
    machine_parent = "generic-pc-machine"
    max_cpus = 255
    ide_buses = 2
    default_cpu_type = "qemu64-x86_64-cpu"
    default_ram_id = "pc.ram"
    acpi = True

    def init_board(self) -> None:
        """The devices in the order QEMU 7.2's pc_init1 creates them, so that each one gets
        QEMU's ``/machine/unattached/device[N]`` path (numbers of devices we do not have are
        skipped, not reused)."""
        self.oem_ids = OemIds(self)
        self.serial_ports: list[tuple[int, int]] = []  # (iobase, irq) of each -serial UART
        self.parallel_ports: list[tuple[int, int]] = []  # (iobase, irq) of each -parallel port
        self.pvpanic_iobase: int | None = None
        self.acpi_tables: PcAcpiTables | None = None
        self.cpus = [X86CPU(0)]
        self.add_device(self.cpus[0])  # device[0]
        self._skip_unattached()  # device[1]: kvmvapic
        below, above = split_ram(self.ram_size)
        host = self._init_memory_and_host(below, above)  # device[2]: i440FX (00:00.0)
        self._init_fw_cfg(below, above)
        self._init_irqs(host)
        piix3, ide, pm = build_piix(host.bus, self.clock, acpi=self.options.acpi)
        self.add_device(piix3)  # device[3]
        for n in range(16):
            piix3.isa_irq[n].connect(self.gsi[n])
        piix3.reset_request = lambda: self.request_reset("guest-reset")
        self.dma = create_dma_pair(self.address_space_memory)  # device[4], [5]
        for dma in self.dma:
            self.add_device(dma)
            for port, mr in dma.io_regions:
                self.system_io.add_subregion(port, mr)
        self.add_device(self.pic)  # device[6]
        self.add_device(self.pic.slave_object)  # device[7]: QEMU's second isa-i8259
        self._init_timers(below, above)  # device[8] hpet, [9] rtc, [10] isa-pit, [11] isa-pcspk
        fdc = IsaFdc(iobase=0x3F0, dma=self.dma[0], dma_chann=2, clock=self.clock)
        self.add_device(fdc)  # device[12]
        fdc.irq.connect(self.gsi[6])
        for port, mr in fdc.io_regions:
            self.system_io.add_subregion(port, mr)
        self._init_i8042()  # device[13]
        self._skip_unattached(2)  # device[14], [15]: vmport, vmmouse
        self._init_port92()  # device[16]
        self.add_device(ide)  # device[17]
        self.ide = ide
        self.ide_channels = [EmptyIdeChannel(bus) for bus in ide.buses]
        for n, ((base, control), channel) in enumerate(zip(CHANNELS, self.ide_channels)):
            ide.isa_irq[n].connect(self.gsi[14 + n])  # ISA IRQ 14 / 15
            self.system_io.add_subregion(base, channel.block_io)
            self.system_io.add_subregion(control, channel.control_io)
        self.pm = pm
        if pm is not None:
            self.add_device(pm)  # device[18]
            pm.sci.connect(self.gsi[9])
            self._init_pm_blocks(pm)
        # QEMU's start-up reset ends with the PICs clear: the PIT's IRQ 0 level, raised when
        # the HPET's reset enabled it, leaves no request behind before the first clock tick
        self.pic.reset()

    def _skip_unattached(self, count: int = 1) -> None:
        self._unattached += count

    def _init_memory_and_host(self, below: int, above: int) -> I440FXHost:
        """RAM around the PCI hole, the BIOS and option-ROM areas in PCI space (PAM decides what
        0xc0000-0xfffff shows) and the i440FX host bridge at ``/machine/i440fx``."""
        block = self.new_ram("pc.ram", self.ram_size)
        ram_mr = MemoryRegion.ram("pc.ram", self.ram_size, block)
        firmware = self._init_pflash() if any(self.options.pflash) else self._bios_regions()
        option_rom = MemoryRegion.rom("pc.rom", PC_ROM_SIZE)
        assert option_rom.block is not None
        self.register_ram_block(option_rom.block)  # QEMU's ROMs are RAM blocks: they migrate
        host = build_i440fx(self.system_memory, self.system_io, ram_mr, below, above, pci_regions=[
            *firmware, (PC_ROM_BASE, option_rom, 1),
        ])
        self.add_device(host, "i440fx")
        assert host.device is not None  # build_i440fx plugs 00:00.0
        self.add_device(host.device)
        self.pci_bus = host.bus
        return host

    def _bios_regions(self) -> list[tuple[int, MemoryRegion, int]]:
        dirs = self.options.data_dirs
        image = default_bios_image(dirs) if self.bios_path is None else self._load_bios(self.bios_path, dirs)
        bios_mr = MemoryRegion.rom("pc.bios", BIOS_SIZE, image)
        assert bios_mr.block is not None
        self.register_ram_block(bios_mr.block)
        isa_bios = MemoryRegion.alias("isa-bios", bios_mr, BIOS_SIZE - ISA_BIOS_SIZE, ISA_BIOS_SIZE)
        return [(4 * GiB - BIOS_SIZE, bios_mr, 0), (0x100000 - ISA_BIOS_SIZE, isa_bios, 1)]

    def _init_pflash(self) -> list[tuple[int, MemoryRegion, int]]:
        """QEMU's pc_system_flash_map: flashes from 4 GiB down in system memory, the tail of
        flash 0 copied to a read-only "isa-bios" below 1 MiB (in PCI memory, priority 1)."""
        from emu.devices.pflash import FlashDrive, PFlashCFI01, PflashMapError, pc_flash_bases

        drives = [None if d is None else FlashDrive.open(d[0], d[1]) for d in self.options.pflash]
        try:
            bases = pc_flash_bases([None if d is None else (f"pflash{i}", len(d.image)) for i, d in enumerate(drives)])
        except PflashMapError as e:
            raise MachineError("\n".join(e.lines)) from None
        self.flash = []
        for unit, base in enumerate(bases):
            d = drives[unit]
            assert d is not None
            name = f"system.flash{unit}"
            block = self.new_ram(name, len(d.image))
            flash = PFlashCFI01(name, d.image, readonly=d.readonly, write_back=d.write_back, ram=block,
                                instance_id=unit)
            self.add_device(flash, name, parent=self)
            self.system_memory.add_subregion(base, flash.region)
            self.flash.append(flash)
        size = self.flash[0].size
        isa_size = min(size, ISA_BIOS_SIZE)
        isa_bios = MemoryRegion.rom("isa-bios", isa_size, self.flash[0].image[size - isa_size:])
        return [(0x100000 - isa_size, isa_bios, 1)]

    def _init_irqs(self, host: I440FXHost) -> None:
        """The IOAPIC (under the host bridge, as in QEMU) and the 8259 pair; GSI n drives ISA
        IRQ n of the PICs (n < 16) and IOAPIC pin n, as QEMU's gsi_handler does."""
        ioapic = IOAPIC()
        self.add_device(ioapic, "ioapic", parent=host)
        self.system_memory.add_subregion(IOAPIC_BASE, ioapic.mmio)
        self.ioapic = ioapic
        pic = I8259()
        self.pic = pic
        self.system_io.add_subregion(0x20, pic.master_io)
        self.system_io.add_subregion(0xA0, pic.slave_io)
        self.system_io.add_subregion(0x4D0, pic.master_elcr_io)
        self.system_io.add_subregion(0x4D1, pic.slave_elcr_io)
        pins = ioapic.gpio_in[None]
        isa = pic.gpio_in[None]

        def gsi_handler(n: int, level: int) -> None:
            if n < 16:
                isa[n].set(level)
            pins[n].set(level)

        self.gsi = [IRQ(gsi_handler, n) for n in range(NUM_PINS)]
        # The CPU's interrupt inputs: the PIC's INTR line and the IOAPIC's messages.
        self._ioapic_vectors: list[int] = []
        pic.intr.connect(IRQ(lambda n, level: self._kick_cpu() if level else None, 0))
        ioapic.deliver = self._ioapic_deliver

    def _init_timers(self, below: int, above: int) -> None:
        """HPET, RTC, PIT and the speaker port. With the HPET, the PIT and RTC interrupts pass
        through it (its legacy-replacement mode takes GSI 0 and 8 over); without it
        (``-no-hpet``, ``-machine hpet=off``) they go straight to GSI 0 and 8."""
        hpet = None
        if self.options.hpet:
            hpet = HPET(self.clock, intcap=0x4, dma=self.address_space_memory)  # PIIX: GSI 2 only
            self.add_device(hpet)
            self.system_memory.add_subregion(HPET_BASE, hpet.mmio)
            for n in range(NUM_PINS):
                hpet.irqs[n].connect(self.gsi[n])
        rtc_options = self.options.rtc
        assert rtc_options is None or isinstance(rtc_options, RtcOptions)  # what the CLI parses -rtc into
        rtc = RTC(self.clock, rtc_options, base_year=2000)
        self.add_device(rtc)
        self.system_io.add_subregion(0x70, rtc.io)
        self.rtc = rtc
        self._init_cmos(rtc, below, above)
        pit = PIT(self.clock)
        self.add_device(pit)
        self.system_io.add_subregion(0x40, pit.io)
        if hpet is not None:
            rtc.irq.connect(hpet.gpio_in[None][1])
            pit.irq.connect(hpet.gpio_in[None][0])
            hpet.pit_enabled.connect(pit.gpio_in[None][0])
            hpet.reset()  # QEMU's start-up reset: gives the PIT its enable
        else:
            rtc.irq.connect(self.gsi[8])
            pit.irq.connect(self.gsi[0])
        speaker = PCSpeaker(pit)
        self.add_device(speaker)
        self.system_io.add_subregion(0x61, speaker.io)
        self.hpet = hpet

    def _init_fw_cfg(self, below: int, above: int) -> None:
        """fw_cfg at I/O 0x510 (DMA at 0x514) with the items of QEMU's pc board, as
        ``/machine/fw_cfg``."""
        o = self.options
        config = PcFwCfgConfig(
            ram_size=self.ram_size, below_4g=below, above_4g=above, nb_cpus=o.nb_cpus, max_cpus=o.max_cpus,
            uuid=o.uuid or bytes(16), nographic=o.nographic, boot_menu=int(o.boot_menu),
            splash_time=o.splash_time, reboot_timeout=o.reboot_timeout, splash=o.boot_splash,
            boot_strict=o.boot_strict, hpet=((PC_HPET_BLOCK_ID, HPET_BASE),) if o.hpet else (),
            machine_name=self.name, extra_files=self._option_roms(o.data_dirs), acpi=o.acpi,
            data_dirs=o.data_dirs)
        try:
            fw = build_pc_fw_cfg(config, dma_as=self.address_space_memory,
                                 report=_report)
        except BootOptionError as e:
            raise MachineError(str(e)) from None
        self.add_device(fw, QOM_CHILD_NAME, parent=self)
        self.system_io.add_subregion(FW_CFG_IO_BASE, fw.io)
        if fw.dma_io is not None:
            self.system_io.add_subregion(FW_CFG_DMA_IO_BASE, fw.dma_io)
        self.fw_cfg = fw

    @staticmethod
    def _option_roms(dirs: Sequence[str]) -> dict[str, bytes]:
        """fw_cfg's ``genroms/`` files (QEMU's rom_add_option from pc_memory_init): plain data,
        with no RAM block on this machine type (option_rom_has_mr is off)."""
        data = option_rom(VAPIC_ROM, dirs)
        return {} if data is None else {f"genroms/{VAPIC_ROM}": data}

    def _init_i8042(self) -> None:
        kbd = I8042()
        self.add_device(kbd)
        kbd.irq_kbd.connect(self.gsi[1])
        kbd.irq_mouse.connect(self.gsi[12])
        kbd.reset_request = lambda: self.request_reset("guest-reset")
        self.system_io.add_subregion(0x60, kbd.data_io)
        self.system_io.add_subregion(0x64, kbd.cmd_io)

    def _init_port92(self) -> None:
        self.system_io.add_subregion(PORT80_ADDR, port80_region())
        self.system_io.add_subregion(PORTF0_ADDR, portf0_region())
        port92 = Port92()
        self.add_device(port92)
        port92.reset_request = lambda: self.request_reset("guest-reset")
        self.system_io.add_subregion(PORT92_ADDR, port92.io)

    def _init_pm_blocks(self, pm: PIIX4PM) -> None:
        """PIIX4 PM's ACPI PCI/CPU hotplug blocks, and the SPD EEPROMs on its SMBus (device[19]
        to [26], as smbus_eeprom_init adds them)."""
        bus = self.pci_bus
        hotplug = PciHotplugRegs(lambda slot: any(bus.devices[slot * 8 + fn] is not None for fn in range(8)))
        cpu_hotplug = CpuHotplugLegacy(self.options.nb_cpus)
        self.pm_blocks = (hotplug, cpu_hotplug)
        for base, region in ((PCIHP_BASE, hotplug.io), (CPUHP_BASE, cpu_hotplug.io)):
            region.owner = pm  # QEMU's PIIX4_PM creates both
            self.system_io.add_subregion(base, region)
        for i in range(EEPROM_COUNT):
            eeprom = SMBusEEPROM(EEPROM_BASE + i, instance=i)
            self.add_device(eeprom)
            pm.smb.bus.devices.append(eeprom)
            eeprom.bus = pm.smb.bus

    def attach_boot_disk(self, sector0: bytes) -> None:
        """The first IDE disk: its sector 0 is what the direct boot loads. The primary channel
        now has a drive, whose ATA registers are not modelled: its ports are left unmapped."""
        self.boot_image = sector0
        channel = self.ide_channels[0]
        channel.block_io.set_enabled(False)
        channel.control_io.set_enabled(False)
        # the master slot holds a drive: its reset signature says so; the rest of its state
        # stays the reset state, since the guest cannot reach the unmapped ATA registers
        slot = self.ide.buses[0].ifs[0]
        slot.has_drive = True
        slot.reset()

    def attach_cdrom(self, index: int) -> None:
        """An empty CD-ROM drive (QEMU's ide-cd without medium) at IDE ``index`` (bus * 2 + unit),
        with the serial QEMU gives that slot."""
        bus, unit = divmod(index, 2)
        self.ide.buses[bus].attach_cdrom(unit, ide_serial(bus, unit))

    def machine_done(self) -> None:
        """Once every device (``-serial`` UARTs included) exists: QEMU's machine-init-done
        notifiers (PIIX4 PM's COM/LPT presence bits, then acpi_setup: the ACPI blobs in fw_cfg
        and their ROM blocks)."""
        if self.pm is not None:
            self.pm.machine_ready(lambda port: io_port_present(self.system_io, port))
            self.acpi_tables = PcAcpiTables(self.fw_cfg, self.acpi_config)  # acpi_setup
            for block, max_length in self.acpi_tables.blocks():
                self.register_ram_block(block, max_length)

    def acpi_config(self) -> AcpiConfig:
        """What QEMU's acpi_build reads from the board now: the PM base the guest programmed,
        the ISA devices and the OEM ids. Every PCI device we plug with -device is hotpluggable,
        so only the host bridge and the PIIX3 occupy fixed slots."""
        assert self.pm is not None
        below, above = split_ram(self.ram_size)
        o = self.options
        return AcpiConfig(cpus=o.nb_cpus, max_cpus=o.max_cpus, apic_ids=list(range(o.max_cpus)),
                          ram_below_4g=below, ram_above_4g=above, hpet=o.hpet, pm_base=self.pm.io_base,
                          serial_ports=list(self.serial_ports), parallel_ports=list(self.parallel_ports),
                          pvpanic_iobase=self.pvpanic_iobase,
                          oem_id=self.oem_ids.padded("x-oem-id", 6),
                          oem_table_id=self.oem_ids.padded("x-oem-table-id", 8))

    def powerdown(self) -> None:
        """The ACPI power button of PIIX4 PM (QEMU's powerdown notifier); nothing without ACPI."""
        if self.pm is not None:
            self.pm.power_button()

    boot_image: bytes | None = None  # sector 0 of the boot disk, if there is one

    # ---- -device
    def add_user_device(self, spec: DeviceSpec) -> Device:
        """Creates a ``-device`` of the catalog's ISA models, maps it and wires its IRQs and
        callbacks (QEMU's qdev_device_add on the pc board)."""
        dev: Device
        io: list[tuple[int, MemoryRegion]] = []
        if spec.driver == "isa-debug-exit":
            debug_exit = ISADebugExit(spec.int_value("iobase"), spec.int_value("iosize"),
                                      lambda status: self.exit_request(status))
            io = [(debug_exit.iobase, debug_exit.io)] if debug_exit.io is not None else []
            dev = debug_exit
        elif spec.driver == "pc-testdev":
            testdev = PCTestdev()
            io = testdev.io_regions()
            self.system_memory.add_subregion(TESTDEV_IOMEM_ADDR, testdev.iomem)
            for n, line in enumerate(testdev.irq):
                line.connect(self.gsi[n])
            dev = testdev
        elif spec.driver == "pvpanic":
            if self.fw_cfg.file_selector("etc/pvpanic-port") is not None:  # QEMU exits in fw_cfg_add_file
                raise MachineError("duplicate fw_cfg file name: etc/pvpanic-port")
            pvpanic = PVPanic(spec.int_value("ioport"), spec.int_value("events"),
                              lambda kind: self.panic_event(kind))
            io = [(pvpanic.ioport, pvpanic.io)]
            dev = pvpanic
            self.pvpanic_iobase = pvpanic.ioport
            self.fw_cfg.add_file("etc/pvpanic-port", pvpanic.ioport.to_bytes(2, "little"))
        elif spec.driver == "ib700":
            ib700 = IB700(self.clock, lambda: self.watchdog_expired())
            io = [(IB700_BASE, ib700.io)]
            dev = ib700
        elif spec.driver == "pvpanic-pci":
            return self._add_pci_device(spec, PVPanicPCI(spec.int_value("events"),
                                                         lambda kind: self.panic_event(kind),
                                                         bool(spec.value("multifunction"))))
        else:
            return super().add_user_device(spec)
        parent, name = self.user_device_parent(spec)
        self.add_device(dev, name, parent)
        for addr, region in io:
            self.system_io.add_subregion(addr, region)
        return dev

    def _add_pci_device(self, spec: DeviceSpec, dev: PCIDevice) -> Device:
        """A ``-device`` PCI function: into the QOM tree, then onto the bus at ``addr`` (QEMU's
        default -1: the first free slot), realized; PCIError texts become the option's error."""
        parent, name = self.user_device_parent(spec)
        self.add_device(dev, name, parent)
        try:
            self.pci_bus.add(dev, spec.int_value("addr"), qdev_id=spec.id)
        except PCIError as e:
            raise MachineError(str(e)) from None
        return dev

    # ---- migration (the CPU, device[0], saves its cpu_common and cpu sections first)
    def migration_entries(self, saving: bool) -> list:
        entries = super().migration_entries(saving)
        if self.acpi_tables is not None:  # registered at machine-done, after the devices
            entries.append(self.acpi_tables.migration_entry(saving))
        if not saving:  # QEMU's sections of devices not modelled here: loaded at reset state only
            entries += pc_unmodelled.load_entries()
        return entries

    def migration_loaded(self, entries: list) -> None:
        super().migration_loaded(entries)
        if self.acpi_tables is not None:
            self.acpi_tables.migration_loaded(entries)

    # ---- interrupts: PIC INTR and IOAPIC fixed-delivery messages to CPU 0
    def _kick_cpu(self) -> None:
        vcpu = getattr(self.cpus[0], "vcpu", None) if self.cpus else None
        if vcpu is not None:
            vcpu.interrupt_request()

    def _ioapic_deliver(self, vector: int) -> None:
        self._ioapic_vectors.append(vector)
        self._kick_cpu()

    def interrupt_pending(self) -> bool:
        return bool(self._ioapic_vectors) or self.pic.master.pending_irq(slave_cascade=True) >= 0

    def interrupt_vector(self) -> int | None:
        if self._ioapic_vectors:
            return self._ioapic_vectors.pop(0)
        if self.pic.master.pending_irq(slave_cascade=True) >= 0:
            return self.pic.acknowledge()
        return None

    def boot(self) -> None:
        """Direct boot (no BIOS is run): sector 0 of the boot disk at 0x7c00, as a BIOS leaves it."""
        if self.boot_image is not None:
            self.address_space_memory.write(0x7C00, self.boot_image[:512])

    def add_serial(self, index: int, output: Callable[[bytes], None]) -> Serial16550:
        """COM1..COM4 at 0x3f8, 0x2f8, 0x3e8, 0x2e8 on IRQs 4, 3, 4, 3."""
        port, irq = ((0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3))[index]
        uart = Serial16550(output, clock=self.clock, instance_id=index)
        self.add_device(uart)
        uart.irq.connect(self.gsi[irq])
        self.system_io.add_subregion(port, uart.io)
        self.serial_ports.append((port, irq))
        return uart

    def add_parallel(self, index: int, output: Callable[[bytes], None]) -> Device:
        """LPT1..LPT3 at 0x378, 0x278, 0x3bc, all on IRQ 7 (QEMU's isa_parallel_io/irq)."""
        from emu.devices.parallel import ParallelPort

        port, irq = (0x378, 0x278, 0x3BC)[index], 7
        lpt = ParallelPort(output, instance_id=index)
        self.add_device(lpt)
        lpt.irq.connect(self.gsi[irq])
        self.system_io.add_subregion(port, lpt.io)
        self.parallel_ports.append((port, irq))
        return lpt

    @staticmethod
    def _load_bios(name: str, dirs: Sequence[str]) -> bytes:
        """``-bios NAME`` (a path, or a file in the data directories): a ROM image whose size is
        a multiple of 64 KiB, mapped so that it ends at 4 GiB."""
        path = find_file(name, dirs)
        data = b""
        try:
            if path is not None and os.path.getsize(path) <= BIOS_SIZE:
                with open(path, "rb") as f:
                    data = f.read(BIOS_SIZE + 1)
            elif path is not None and os.path.getsize(path) % 65536 == 0:
                # QEMU maps larger images; our BIOS region is fixed
                raise MachineError(f"-bios {name}: images larger than 256 KiB are not supported by this emulator")
        except OSError:
            pass
        if not data or len(data) % 65536:
            raise MachineError(f"qemu: could not load PC BIOS '{name}'", prefixed=False)
        return bytes(BIOS_SIZE - len(data)) + data

    def _init_cmos(self, rtc: RTC, below: int, above: int) -> None:
        """The CMOS bytes the BIOS reads (memory sizes, boot order, equipment), as QEMU's
        pc_cmos_init writes them."""
        KiB, MiB = 1024, 1 << 20
        base = min(below // KiB, 640)
        rtc.set_cmos(0x15, base & 0xFF)
        rtc.set_cmos(0x16, base >> 8)
        ext = min((below - MiB) // KiB, 65535) if below > MiB else 0
        for lo in (0x17, 0x30):
            rtc.set_cmos(lo, ext & 0xFF)
            rtc.set_cmos(lo + 1, ext >> 8)
        high = min((below - 16 * MiB) // (64 * KiB), 65535) if below > 16 * MiB else 0
        rtc.set_cmos(0x34, high & 0xFF)
        rtc.set_cmos(0x35, high >> 8)
        above_64k = above // (64 * KiB)
        for i, reg in enumerate((0x5B, 0x5C, 0x5D)):
            rtc.set_cmos(reg, (above_64k >> (8 * i)) & 0xFF)
        opts = self.options
        self.set_boot_order(opts.boot_once if opts.boot_once is not None else opts.boot_order)
        self._restore_boot_order = opts.boot_once is not None
        rtc.set_cmos(CMOS_EQUIPMENT, 0x02 | 0x04)  # FPU, PS/2 mouse

    def set_boot_order(self, order: str) -> None:
        """Boot devices in CMOS 0x3d/0x38 (QEMU's set_boot_dev): a/b floppy, c disk, d CD-ROM,
        n network, at most three; bit 0 of 0x38 skips the floppy boot-sector check."""
        if len(order) > 3:
            raise MachineError("Too many boot devices for PC")
        nibbles = [BOOT_NIBBLES.get(dev, 0) for dev in order] + [0, 0, 0]
        for dev, nibble in zip(order, nibbles):
            if not nibble:
                raise MachineError(f"Invalid boot device for PC: '{dev}'")
        self.rtc.set_cmos(0x3D, (nibbles[1] << 4) | nibbles[0])
        self.rtc.set_cmos(0x38, (nibbles[2] << 4) | (0 if self.options.fd_bootchk else 1))

    def reset(self) -> None:
        super().reset()
        if self.acpi_tables is not None:
            self.acpi_tables.reset()
        if self._restore_boot_order:  # -boot once= applies to the first boot only
            self._restore_boot_order = False
            self.set_boot_order(self.options.boot_order)


class PcI440fx72Machine(PcMachine):
    """``pc-i440fx-7.2``: QEMU 7.2's ``pc``, the machine type a QEMU 7.2 migrates with (its
    configuration section names it). The board is the same: what this emulator models of the pc
    already behaves as QEMU 7.2's (its tests compare with QEMU 7.2). The compat properties QEMU
    9.1 gives this type that touch what we model are the migration ones: 7.2's multifd sync at
    each section and zero-page detection on the main channel (7.2's multifd packets have no
    zero-page list)."""

    name = "pc-i440fx-7.2"
    aliases: tuple[str, ...] = ()
    compat_globals = {("migration", "multifd-flush-after-each-section"): "on",
                      ("migration", "zero-page-detection"): "legacy"}
