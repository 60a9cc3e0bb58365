"""The PIIX functions of the pc board: PIIX3 ISA bridge 00:01.0, PIIX3 IDE 00:01.1, PIIX4 PM 00:01.3.

As QEMU 7.2 builds them (hw/isa/piix3.c, hw/ide/piix.c, hw/acpi/piix4.c + core.c, hw/isa/apm.c):

- ``PIIX3`` (8086:7000): PIRQ route registers 0x60-0x63 steer the bus's four INTx lines to ISA IRQs
  (its ``isa_irq`` outputs, wired to the board's GSIs); the reset control register at port 0xcf9.
  The i8257 DMA controllers QEMU creates with it are the board's (``emu.devices.i8257``).
- ``PIIX3IDE`` (8086:7010): config space, the bus-master BAR (BAR4, 16 I/O ports: command/status/PRD
  address are stored, no DMA is ever performed) and the register state of both IDE buses
  (``emu.devices.ide_ports``), whose legacy ports 0x1f0/0x170 the board maps.
- ``PIIX4PM`` (8086:7113 rev 3): PM base (0x40) and enable (0x80) place the PM I/O block (PM1a
  event/control, the 24-bit ACPI PM timer at +8 counting at 3.579545 MHz of the virtual clock),
  SCI on its ``sci`` output (IRQ 9 on the pc board), APM ports 0xb2/0xb3 and GPE0 at 0xafe0. The
  SMBus host controller (``emu.devices.smbus``, its bus in ``pm.smb.bus``) sits at the SMBus base
  (0x90), enabled by bit 0 of 0xd2. The CPU/PCI hotplug blocks are the board's
  (``emu.devices.pm_blocks``); memory hotplug is not modelled.
"""
from __future__ import annotations

from collections.abc import Callable

from emu.clock import VirtualClock
from emu.devices.ide_ports import IdeBus, ide_bus_fields, load_ide_buses, save_ide_buses
from emu.devices.pci import (
    BASE_ADDRESS_SPACE_IO,
    COMMAND,
    STATUS,
    STATUS_DEVSEL_MEDIUM,
    STATUS_FAST_BACK,
    PCIBus,
    PCIDevice,
)
from emu.devices.smbus import VMSTATE_I2C_BUS, PMSMBus
from emu.irq import GpioOut
from emu.memory import AccessRules, CallbackOps, MemoryRegion, render
from emu.migration.vmstate import Field, VMStateDescription

PIIX_NUM_PIC_IRQS = 16
PIIX_NUM_PIRQS = 4
PIIX_PIRQCA = 0x60
PIIX_RCR_IOPORT = 0xCF9

APM_CNT_IOPORT = 0xB2
ACPI_ENABLE, ACPI_DISABLE = 0xF1, 0xF0
GPE_BASE, GPE_LEN = 0xAFE0, 4
PM_TIMER_FREQUENCY = 3579545
NANOSECONDS_PER_SECOND = 1_000_000_000

TMR_STS, TMR_EN = 0x0001, 0x0001
PWRBTN_STS, PWRBTN_EN = 0x0100, 0x0100
PM1_COMMON_ENABLED = 0x0400 | 0x0100 | 0x0020 | 0x0001  # RTC, power button, global lock, timer
SCI_EN, SLEEP_EN = 0x0001, 0x2000


def _rules(impl_min: int = 1, impl_max: int = 4, valid_max: int = 4) -> AccessRules:
    return AccessRules(valid_min=1, valid_max=valid_max, impl_min=impl_min, impl_max=impl_max)


class PIIX3(PCIDevice):
    """PIIX3 PCI-to-ISA bridge (function 0 of the multi-function southbridge)."""

    type_name = "PIIX3"
    type_parent = "pci-piix3"
    vendor_id = 0x8086
    device_id = 0x7000
    class_id = 0x0601

    _RESET_VALUES = {0x04: 0x07, 0x05: 0, 0x06: 0, 0x07: 0x02, 0x4C: 0x4D, 0x4E: 0x03, 0x4F: 0,
                     0x60: 0x80, 0x61: 0x80, 0x62: 0x80, 0x63: 0x80, 0x69: 0x02, 0x70: 0x80,
                     0x76: 0x0C, 0x77: 0x0C, 0x78: 0x02, 0x79: 0, 0x80: 0, 0x82: 0, 0xA0: 0x08,
                     0xA2: 0, 0xA3: 0, 0xA4: 0, 0xA5: 0, 0xA6: 0, 0xA7: 0, 0xA8: 0x0F, 0xAA: 0,
                     0xAB: 0, 0xAC: 0, 0xAE: 0}

    def __init__(self) -> None:
        super().__init__(multifunction=True)
        self.isa_irq = self.init_gpio_out(PIIX_NUM_PIC_IRQS)
        self.pic_levels = 0  # bit (irq * 4 + pirq): PIRQ pirq drives ISA IRQ irq
        self.rcr = 0
        self.reset_request: Callable[[], None] = lambda: None
        self.rcr_io = MemoryRegion.io("piix3-reset-control", 1,
                                      CallbackOps(self._rcr_read, self._rcr_write, _rules(1, 1)), owner=self)
        self.vmsd = VMStateDescription(
            name="PIIX3", version_id=3, minimum_version_id=2,
            fields=[*self.pci_vmstate_fields(),
                    *(Field(f"pci_irq_levels_vmstate[{i}]", "int32", version_id=3) for i in range(PIIX_NUM_PIRQS))],
            subsections=[VMStateDescription(name="PIIX3/rcr", version_id=1, minimum_version_id=1,
                                            fields=[Field("rcr", "uint8")], needed=lambda s: bool(s.get("rcr")))],
        )

    def realize(self) -> None:
        assert self.bus is not None
        self.bus.address_space_io.add_subregion(PIIX_RCR_IOPORT, self.rcr_io, priority=1)
        self.bus.set_irqs(self._set_pirq, self.slot_get_pirq, PIIX_NUM_PIRQS)

    def device_reset(self) -> None:
        for off, value in self._RESET_VALUES.items():
            self.config[off] = value
        self.pic_levels = 0
        self.rcr = 0

    @staticmethod
    def slot_get_pirq(dev: PCIDevice, pin: int) -> int:
        """pci_slot_get_pirq: INTx of slot s lands on PIRQ (pin + s - 1) mod 4."""
        return (pin + (dev.devfn >> 3) - 1) & 3

    def route_intx(self, pin: int) -> int | None:
        """piix3_route_intx_pin_to_irq: the ISA IRQ PIRQ ``pin`` is routed to, None if disabled."""
        irq = self.config[PIIX_PIRQCA + pin]
        return irq if irq < PIIX_NUM_PIC_IRQS else None

    def _set_level(self, pirq: int, level: int) -> int | None:
        irq = self.route_intx(pirq)
        if irq is not None:
            mask = 1 << (irq * PIIX_NUM_PIRQS + pirq)
            self.pic_levels = (self.pic_levels & ~mask) | (mask if level else 0)
        return irq

    def _drive_pic(self, irq: int) -> None:
        group = ((1 << PIIX_NUM_PIRQS) - 1) << (irq * PIIX_NUM_PIRQS)
        self.isa_irq[irq].set(1 if self.pic_levels & group else 0)

    def _set_pirq(self, pirq: int, level: int) -> None:
        irq = self._set_level(pirq, level)
        if irq is not None:
            self._drive_pic(irq)

    def write_config(self, addr: int, value: int, length: int) -> None:
        self.default_write_config(addr, value, length)
        if addr < PIIX_PIRQCA + 4 and PIIX_PIRQCA < addr + length and self.bus is not None:
            # routing changed: rebuild the levels from the bus and drive every ISA line
            self.pic_levels = 0
            for pirq in range(PIIX_NUM_PIRQS):
                self._set_pirq(pirq, self.bus.irq_level(pirq))
            for irq in range(PIIX_NUM_PIC_IRQS):
                self._drive_pic(irq)

    def _rcr_read(self, offset: int, size: int) -> int:
        return self.rcr

    def _rcr_write(self, offset: int, value: int, size: int) -> None:
        if value & 4:
            self.reset_request()
            return
        self.rcr = value & 2  # keep the system reset type only

    def save_vmstate(self) -> dict:
        state = self.pci_save_state()
        for i in range(PIIX_NUM_PIRQS):
            state[f"pci_irq_levels_vmstate[{i}]"] = self.bus.irq_level(i) if self.bus else 0
        state["rcr"] = self.rcr
        return state

    def load_vmstate(self, state: dict) -> None:
        self.pci_load_state(state)
        self.rcr = int(state.get("rcr", 0))
        # as piix3_post_load: levels from the bus, without raising anything (the PIC has its own state)
        self.pic_levels = 0
        for pirq in range(PIIX_NUM_PIRQS):
            self._set_level(pirq, self.bus.irq_level(pirq) if self.bus else 0)


class PIIX3IDE(PCIDevice):
    """PIIX3 IDE function: config space, the bus-master registers (no DMA is ever performed) and
    the two IDE buses' register state (``buses``, :class:`IdeBus`); the board maps their legacy
    ports and wires ``isa_irq`` to ISA IRQ 14/15. Migrates as QEMU's "ide" (vmstate_ide_pci)."""

    type_name = "piix3-ide"
    type_parent = "pci-ide"
    vendor_id = 0x8086
    device_id = 0x7010
    class_id = 0x0101

    def __init__(self) -> None:
        super().__init__()
        self.config[0x09] = 0x80  # prog-if: legacy ATA mode, bus master capable
        self.bm_cmd = [0, 0]
        self.bm_status = [0, 0]
        self.bm_addr = [0, 0]
        # each bus's interrupt passes through its BMDMA (bmdma_irq), as QEMU wires them
        self.isa_irq = [GpioOut(0), GpioOut(1)]
        self.buses = [IdeBus(self._bmdma_irq(ch)) for ch in range(2)]
        self.bmdma_bar = MemoryRegion.container("piix-bmdma-container", 16)
        for ch in range(2):
            self.bmdma_bar.add_subregion(ch * 8, MemoryRegion.io(
                "piix-bmdma", 4, CallbackOps(self._bm_reader(ch), self._bm_writer(ch), _rules()), owner=self))
            self.bmdma_bar.add_subregion(ch * 8 + 4, MemoryRegion.io(
                "bmdma", 4, CallbackOps(self._addr_reader(ch), self._addr_writer(ch), _rules()), owner=self))
        self.register_bar(4, BASE_ADDRESS_SPACE_IO, self.bmdma_bar)
        self.vmsd = VMStateDescription(name="ide", version_id=3, minimum_version_id=0,
                                       fields=[*self.pci_vmstate_fields(), *ide_bus_fields()])

    def device_reset(self) -> None:
        """piix_ide_reset: both buses (ide_bus_reset, with its BMDMA's reset), then config."""
        for ch, bus in enumerate(self.buses):
            bus.reset()
            self.bm_cmd[ch] = self.bm_status[ch] = self.bm_addr[ch] = 0
        self.set_word(COMMAND, 0)
        self.set_word(STATUS, STATUS_DEVSEL_MEDIUM | STATUS_FAST_BACK)
        self.set_long(0x20, BASE_ADDRESS_SPACE_IO)

    def _bmdma_irq(self, ch: int) -> Callable[[int], None]:
        def set_level(level: int) -> None:
            if level:
                self.bm_status[ch] |= 0x04  # BM_STATUS_INT latches on every raise
            self.isa_irq[ch].set(level)
        return set_level

    def _bm_reader(self, ch: int) -> Callable[[int, int], int]:
        def read(offset: int, size: int) -> int:
            if size != 1:
                return (1 << (8 * size)) - 1
            return {0: self.bm_cmd[ch], 2: self.bm_status[ch]}.get(offset & 3, 0xFF)
        return read

    def _bm_writer(self, ch: int) -> Callable[[int, int, int], None]:
        def write(offset: int, value: int, size: int) -> None:
            if size != 1:
                return
            if offset & 3 == 0:
                # start/stop toggles the "active" status bit as QEMU does; no transfer follows
                if (value ^ self.bm_cmd[ch]) & 1:
                    self.bm_status[ch] = self.bm_status[ch] | 1 if value & 1 else self.bm_status[ch] & ~1
                self.bm_cmd[ch] = value & 0x09
            elif offset & 3 == 2:
                old = self.bm_status[ch]
                self.bm_status[ch] = (value & 0x60) | (old & 1) | (old & ~value & 0x06)
        return write

    def _addr_reader(self, ch: int) -> Callable[[int, int], int]:
        return lambda offset, size: (self.bm_addr[ch] >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def _addr_writer(self, ch: int) -> Callable[[int, int, int], None]:
        def write(offset: int, value: int, size: int) -> None:
            mask = ((1 << (8 * size)) - 1) << (8 * offset)
            self.bm_addr[ch] = (self.bm_addr[ch] & ~mask) | ((value << (8 * offset)) & mask & ~3)
        return write

    def save_vmstate(self) -> dict:
        state = self.pci_save_state()
        state.update(save_ide_buses(self.buses, self.bm_cmd, self.bm_status, self.bm_addr))
        return state

    def load_vmstate(self, state: dict) -> None:
        self.pci_load_state(state)
        for ch, (cmd, status, addr) in enumerate(load_ide_buses(state, self.buses)):
            self.bm_cmd[ch], self.bm_status[ch], self.bm_addr[ch] = cmd, status, addr


def _gpe_u16(data: bytearray) -> int:
    return data[0] | (data[1] << 8)


class PIIX4PM(PCIDevice):
    """PIIX4 power management function: PM1a, PM timer, SCI, APM, GPE0."""

    type_name = "PIIX4_PM"
    type_parent = "pci-device"
    vendor_id = 0x8086
    device_id = 0x7113
    revision = 0x03
    class_id = 0x0680

    def __init__(self, clock: VirtualClock, smb_io_base: int = 0, smm_enabled: bool = False) -> None:
        super().__init__()
        self.clock = clock
        self.smm_enabled = smm_enabled
        self.acpi_only = not smm_enabled  # no smm-compat: SCI_EN is hardwired on without SMM
        self.config[0x06], self.config[0x07], self.config[0x09], self.config[0x3D] = 0x80, 0x02, 0x00, 0x01
        if not smm_enabled:
            self.config[0x5B] = 0x02  # SMM marked as already initialized
        self.config[0x90] = (smb_io_base | 1) & 0xFF
        self.config[0x91] = (smb_io_base >> 8) & 0xFF
        self.config[0xD2] = 0x09
        self.smb = PMSMBus(owner=self)
        self.sci = self.init_gpio_out(1)[0]
        self.smi = self.init_gpio_out(1, "smi-irq")[0]
        self.shutdown_request: Callable[[], None] = lambda: None
        self.suspend_request: Callable[[], None] = lambda: None
        self.evt_sts = self.evt_en = self.cnt = 0
        self.overflow_time = 0  # in PM timer ticks
        self.gpe_sts, self.gpe_en = bytearray(GPE_LEN // 2), bytearray(GPE_LEN // 2)
        self.apmc = self.apms = 0
        self.io_base = 0
        self.timer = clock.new_timer(self.update_sci)
        self.io = MemoryRegion.container("piix4-pm", 64)
        self.io.add_subregion(0, MemoryRegion.io("acpi-evt", 4, CallbackOps(
            self._evt_read, self._evt_write, _rules(impl_min=2, valid_max=2)), owner=self))
        self.io.add_subregion(4, MemoryRegion.io("acpi-cnt", 2, CallbackOps(
            lambda o, s: self.cnt, lambda o, v, s: self._cnt_write(v), _rules(impl_min=2, valid_max=2)), owner=self))
        self.io.add_subregion(8, MemoryRegion.io("acpi-tmr", 4, CallbackOps(
            lambda o, s: self.timer_value(), lambda o, v, s: None, _rules(impl_min=4)), owner=self))
        self.apm_io = MemoryRegion.io("apm-io", 2, CallbackOps(self._apm_read, self._apm_write, _rules(1, 1)),
                                      owner=self)
        self.gpe_io = MemoryRegion.io("acpi-gpe0", GPE_LEN, CallbackOps(self._gpe_read, self._gpe_write, _rules(1, 1)),
                                      owner=self)
        self.vmsd = self._build_vmsd()

    def realize(self) -> None:
        assert self.bus is not None
        io = self.bus.address_space_io
        self.io.set_enabled(False)
        io.add_subregion(0, self.io)
        io.add_subregion(APM_CNT_IOPORT, self.apm_io)
        io.add_subregion(GPE_BASE, self.gpe_io)
        io.add_subregion(0, self.smb.io)
        self.smbus_io_space_update()

    def machine_ready(self, io_present: Callable[[int], bool]) -> None:
        """piix4_pm_machine_ready: LPT/COM presence bits, once the board has all its devices."""
        self.config[0x5F] = 0x10 | (0x80 if io_present(0x378) else 0)
        self.config[0x63] = 0x60
        self.config[0x67] = (0x08 if io_present(0x3F8) else 0) | (0x90 if io_present(0x2F8) else 0)

    def device_reset(self) -> None:
        for off in (0x58, 0x59, 0x5A, 0x5B, 0x80):
            self.config[off] = 0
        self.config[0x40] = 0x01  # the PM base's I/O space indicator (read-only bit)
        if not self.smm_enabled:
            self.config[0x5B] = 0x02
        self.evt_sts = self.evt_en = 0
        self.cnt = SCI_EN if self.acpi_only else 0
        self.overflow_time = 0
        self.timer.cancel()
        self.gpe_sts[:] = bytes(len(self.gpe_sts))
        self.gpe_en[:] = bytes(len(self.gpe_en))
        self.update_sci()
        self.pm_io_space_update()

    def write_config(self, addr: int, value: int, length: int) -> None:
        self.default_write_config(addr, value, length)
        if addr <= 0x80 < addr + length or addr < 0x44 and 0x40 < addr + length:
            self.pm_io_space_update()
        if addr <= 0xD2 < addr + length or addr < 0x94 and 0x90 < addr + length:
            self.smbus_io_space_update()

    def pm_io_space_update(self) -> None:
        """The PM block at the base in 0x40 (64-byte aligned), enabled by bit 0 of 0x80."""
        self.io_base = self.get_long(0x40) & 0xFFC0
        self.io.set_address(self.io_base)
        self.io.set_enabled(bool(self.config[0x80] & 1))

    def smbus_io_space_update(self) -> None:
        """The SMBus host at the base in 0x90 (64-byte aligned), enabled by bit 0 of 0xd2."""
        self.smb.io.set_address(self.get_long(0x90) & 0xFFC0)
        self.smb.io.set_enabled(bool(self.config[0xD2] & 1))

    # ---- ACPI PM timer and PM1 event block
    def _ticks(self) -> int:
        return self.clock.now() * PM_TIMER_FREQUENCY // NANOSECONDS_PER_SECOND

    def timer_value(self) -> int:
        """The 24-bit PM timer (acpi_pm_tmr_get)."""
        return self._ticks() & 0xFFFFFF

    def _overflow_ns(self) -> int:
        return self.overflow_time * NANOSECONDS_PER_SECOND // PM_TIMER_FREQUENCY

    def _calc_overflow_time(self) -> None:
        self.overflow_time = (self._ticks() + 0x800000) & ~0x7FFFFF

    def pm1_status(self) -> int:
        """acpi_pm1_evt_get_sts: TMR_STS latches once the timer's bit 23 has toggled."""
        if self.clock.now() >= self._overflow_ns():
            self.evt_sts |= TMR_STS
        return self.evt_sts

    def update_sci(self) -> None:
        """acpi_update_sci: the SCI level, and the timer armed for the next overflow if enabled."""
        sts = self.pm1_status()
        level = bool(sts & self.evt_en & PM1_COMMON_ENABLED) or bool(_gpe_u16(self.gpe_sts) & _gpe_u16(self.gpe_en))
        self.sci.set(1 if level else 0)
        if self.evt_en & TMR_EN and not sts & TMR_STS:
            self.timer.mod(self._overflow_ns())
        else:
            self.timer.cancel()

    def power_button(self) -> None:
        """``system_powerdown`` (acpi_pm1_evt_power_down): PWRBTN_STS latches, and raises the SCI,
        only while the guest has enabled the power button event."""
        if self.evt_en & PWRBTN_EN:
            self.evt_sts |= PWRBTN_STS
            self.update_sci()

    def _evt_read(self, offset: int, size: int) -> int:
        return {0: self.pm1_status(), 2: self.evt_en}.get(offset, 0)

    def _evt_write(self, offset: int, value: int, size: int) -> None:
        if offset == 0:
            if self.pm1_status() & value & TMR_STS:
                self._calc_overflow_time()
            self.evt_sts &= ~value & 0xFFFF
        elif offset == 2:
            self.evt_en = value & 0xFFFF
        else:
            return
        self.update_sci()

    def _cnt_write(self, value: int) -> None:
        self.cnt = value & ~SLEEP_EN & 0xFFFF
        if value & SLEEP_EN:
            sus_typ = (value >> 10) & 7
            if sus_typ == 1:
                self.suspend_request()
            elif sus_typ in (0, 2):  # soft off, or S4 (s4_val 2)
                self.shutdown_request()

    # ---- APM (0xb2 control, 0xb3 status) and GPE0
    def _apm_read(self, offset: int, size: int) -> int:
        return self.apmc if offset == 0 else self.apms

    def _apm_write(self, offset: int, value: int, size: int) -> None:
        if offset:
            self.apms = value & 0xFF
            return
        self.apmc = value & 0xFF
        if not self.acpi_only:
            if value == ACPI_ENABLE:
                self.cnt |= SCI_EN
            elif value == ACPI_DISABLE:
                self.cnt &= ~SCI_EN
        if value in (ACPI_ENABLE, ACPI_DISABLE):
            return
        if self.config[0x5B] & 0x02:
            self.smi.raise_()

    def _gpe_read(self, offset: int, size: int) -> int:
        half = GPE_LEN // 2
        return self.gpe_sts[offset] if offset < half else self.gpe_en[offset - half]

    def _gpe_write(self, offset: int, value: int, size: int) -> None:
        half = GPE_LEN // 2
        if offset < half:
            self.gpe_sts[offset] &= ~value & 0xFF
        else:
            self.gpe_en[offset - half] = value & 0xFF
        self.update_sci()

    # ---- migration ("piix4_pm" v3)
    def _build_vmsd(self) -> VMStateDescription:
        """QEMU's field layout. What we do not model travels as zeros (PCI/memory hotplug
        registers) and is dropped on load."""
        fields = [*self.pci_vmstate_fields(),
                  Field("ar.pm1.evt.sts", "uint16"), Field("ar.pm1.evt.en", "uint16"),
                  Field("ar.pm1.cnt.cnt", "uint16"), Field("apmc", "uint8"), Field("apms", "uint8"),
                  *PMSMBus.vmstate_fields("smb."),
                  Field("ar.tmr.timer", "int64"),
                  Field("ar.tmr.overflow_time", "int64"), Field("gpe.sts", "uint16"), Field("gpe.en", "uint16"),
                  Field("acpi_pci_hotplug", "unused_buffer", 4 + 256 * 8 + 4)]
        memhp = VMStateDescription(name="piix4_pm/memhp", version_id=1, minimum_version_id=1,
                                   fields=[Field("acpi_memory_hotplug.selector", "uint32")], needed=lambda s: True)
        return VMStateDescription(name="piix4_pm", version_id=3, minimum_version_id=3, fields=fields,
                                  subsections=[memhp])

    def vmstate_sections(self, saving: bool = True) -> list[tuple[str, int, VMStateDescription, dict]]:
        """The SMBus's "i2c_bus" (registered while PIIX4 PM is realized), then "piix4_pm"."""
        bus = self.smb.bus
        return [("i2c_bus", 0, VMSTATE_I2C_BUS, bus.save_vmstate() if saving else {}),
                *super().vmstate_sections(saving)]

    def load_vmstate_sections(self, states: dict[tuple[str, int], dict]) -> None:
        state = states.get(("i2c_bus", 0))
        if state:
            self.smb.bus.load_vmstate(state)
        super().load_vmstate_sections(states)

    def save_vmstate(self) -> dict:
        state = self.pci_save_state()
        state.update({"ar.pm1.evt.sts": self.evt_sts, "ar.pm1.evt.en": self.evt_en, "ar.pm1.cnt.cnt": self.cnt,
                      "apmc": self.apmc, "apms": self.apms,
                      "ar.tmr.timer": self.timer.expire if self.timer.pending else -1,
                      "ar.tmr.overflow_time": self.overflow_time,
                      "gpe.sts": _gpe_u16(self.gpe_sts), "gpe.en": _gpe_u16(self.gpe_en)})
        state.update(self.smb.save_state("smb."))
        return state

    def load_vmstate(self, state: dict) -> None:
        self.pci_load_state(state)
        self.evt_sts, self.evt_en = int(state["ar.pm1.evt.sts"]), int(state["ar.pm1.evt.en"])
        self.cnt, self.apmc, self.apms = int(state["ar.pm1.cnt.cnt"]), int(state["apmc"]), int(state["apms"])
        self.overflow_time = int(state["ar.tmr.overflow_time"])
        self.gpe_sts[:] = int(state["gpe.sts"]).to_bytes(2, "little")
        self.gpe_en[:] = int(state["gpe.en"]).to_bytes(2, "little")
        expire = int(state["ar.tmr.timer"])
        if expire >= 0:
            self.timer.mod(expire)
        else:
            self.timer.cancel()
        self.smb.load_state(state, "smb.")
        self.pm_io_space_update()
        self.smbus_io_space_update()


def io_port_present(system_io: MemoryRegion, port: int) -> bool:
    """QEMU's memory_region_present on the I/O space: some device region (not the space's own
    catch-all) decodes ``port``."""
    return any(fr.start <= port <= fr.last and fr.mr is not system_io for fr in render(system_io))


def build_piix(bus: PCIBus, clock: VirtualClock, piix3_devfn: int = 8, smb_io_base: int = 0xB100,
               smm_enabled: bool = True, acpi: bool = True) -> tuple[PIIX3, PIIX3IDE, PIIX4PM | None]:
    """PIIX3 (multi-function) at ``piix3_devfn``, its IDE at +1 and PIIX4 PM at +3, as pc_init1 plugs
    them (smm-enabled is what QEMU's pc gets under TCG and qtest). The board still wires:
    ``piix3.isa_irq[n]`` -> GSI n, ``piix3.reset_request``, ``pm.sci`` -> GSI 9, ``pm.smi`` (SMI; may
    stay unconnected), ``pm.shutdown_request``/``suspend_request``, and calls ``pm.machine_ready``
    once its ISA devices (COM/LPT ports) exist. Without ACPI (``-machine acpi=off``) there is no
    PIIX4 PM, as in QEMU's pc_init1."""
    piix3 = PIIX3()
    bus.add(piix3, piix3_devfn)
    ide = PIIX3IDE()
    bus.add(ide, piix3_devfn + 1)
    if not acpi:
        return piix3, ide, None
    pm = PIIX4PM(clock, smb_io_base=smb_io_base, smm_enabled=smm_enabled)
    bus.add(pm, piix3_devfn + 3)
    return piix3, ide, pm
