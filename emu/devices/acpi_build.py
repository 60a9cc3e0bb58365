"""QEMU's ACPI tables for the ``pc`` board (hw/i386/acpi-build.c), built as fw_cfg blobs.

``build_acpi(config)`` returns the three files QEMU publishes: ``etc/acpi/tables`` (FACS, DSDT,
FACP, APIC, HPET, WAET, RSDT, padded to 128 KiB), ``etc/table-loader`` (the BIOS linker/loader
commands, padded to 4 KiB) and ``etc/acpi/rsdp`` (20 bytes). QEMU puts them in ROM RAM blocks of
maximum size 0x200000, 0x10000 and 0x1000 (hw/acpi/utils.c acpi_add_rom_blob).

Status: all three blobs, the whole DSDT included, are byte-exact with Debian's QEMU 7.2 for
``-M pc -nodefaults`` with 1-10 CPUs (maxcpus, APIC ids < 255; x2APIC ids are encoded but
unchecked), any RAM size, with or without HPET, serial and parallel ports, ISA pvpanic, a std VGA
(a non-hotpluggable slot) and hotpluggable PCI devices (tests/compat/test_acpi_qemu.py). Not
modelled: PCI bridges and expander buses, memory hotplug (maxmem), NVDIMM, TPM, SGX, floppy
drives, NUMA (_PXM), and q35.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from emu.devices import acpi_aml as aml

TABLE_FILE = "etc/acpi/tables"
LOADER_FILE = "etc/table-loader"
RSDP_FILE = "etc/acpi/rsdp"
TABLE_PAD = 0x20000  # ACPI_BUILD_TABLE_SIZE
LOADER_PAD = 0x1000  # ACPI_BUILD_ALIGN_SIZE
RAM_BLOCK_MAX = {TABLE_FILE: 0x200000, LOADER_FILE: 0x10000, RSDP_FILE: 0x1000}

CMD_ALLOCATE = 1
CMD_ADD_POINTER = 2
CMD_ADD_CHECKSUM = 3
ZONE_HIGH = 1
ZONE_FSEG = 2
LOADER_FILESZ = 56
HEADER_SIZE = 36


@dataclass
class AcpiConfig:
    """What the tables depend on. ``apic_ids`` lists every possible CPU's APIC id (``max_cpus``
    entries); the first ``cpus`` are present."""
    cpus: int = 1
    max_cpus: int = 1
    apic_ids: list[int] = field(default_factory=lambda: [0])
    ram_below_4g: int = 128 << 20
    ram_above_4g: int = 0
    hpet: bool = True
    pm_base: int = 0  # the PIIX4 PM I/O base as the guest has programmed it (0 before the BIOS runs)
    sci_irq: int = 9
    gpe0_base: int = 0xAFE0
    gpe0_len: int = 4
    smi_cmd: int = 0xB2  # 0 without SMM
    s3: bool = True  # PIIX4_PM disable_s3=0
    s4: bool = True  # PIIX4_PM disable_s4=0
    s4_val: int = 2  # PIIX4_PM s4_val
    rtc: bool = True
    rtc_iobase: int = 0x70
    rtc_irq: int = 8
    i8042: bool = True
    serial_ports: list[tuple[int, int]] = field(default_factory=list)  # (iobase, irq)
    parallel_ports: list[tuple[int, int]] = field(default_factory=list)  # (iobase, irq)
    pvpanic_iobase: int | None = None
    fdc: bool = True  # the ISA floppy controller (present even with -nodefaults), no drives
    # Root-bus slots whose function 0 holds a cold-plugged device that is not hotpluggable, with
    # the AML it adds: "" none (the host bridge), "isa" the PIIX3 with the ISA devices, "vga" a
    # std VGA. Other slots, empty or holding hotpluggable devices, get the hotplug slot AML.
    pci_fixed_slots: dict[int, str] = field(default_factory=lambda: {0: "", 1: "isa"})
    pci_hole64_size: int = 1 << 31  # i440FX pci-hole64-size
    # The 64-bit PCI window [start, end) once the firmware has mapped 64-bit BARs; None: QEMU's
    # default from pci_hole64_size after above-4G RAM
    pci_hole64: tuple[int, int] | None = None
    oem_id: bytes = b"BOCHS "
    oem_table_id: bytes = b"BXPC    "
    machine_version: str = "7.2"  # "7.2" or "9.1": 9.1's MADT is revision 3 (7.2's: 1)


@dataclass
class AcpiBlobs:
    """The three fw_cfg files, padded as QEMU pads them."""
    tables: bytes
    loader: bytes
    rsdp: bytes


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` sum to 0 mod 256."""
    return (-sum(data)) & 0xFF


def _name(name: str) -> bytes:
    return name.encode().ljust(LOADER_FILESZ, b"\0")


class Linker:
    """QEMU's bios-linker-loader: 128-byte commands; ALLOCATE commands go first (prepended)."""

    def __init__(self) -> None:
        self.allocs: list[bytes] = []
        self.cmds: list[bytes] = []

    def alloc(self, file: str, align: int, fseg: bool) -> None:
        cmd = struct.pack("<I", CMD_ALLOCATE) + _name(file) + struct.pack(
            "<IB", align, ZONE_FSEG if fseg else ZONE_HIGH)
        self.allocs.insert(0, cmd.ljust(128, b"\0"))

    def add_pointer(self, dest: str, offset: int, size: int, src: str) -> None:
        cmd = struct.pack("<I", CMD_ADD_POINTER) + _name(dest) + _name(src) + struct.pack("<IB", offset, size)
        self.cmds.append(cmd.ljust(128, b"\0"))

    def add_checksum(self, file: str, start: int, length: int, offset: int) -> None:
        cmd = struct.pack("<I", CMD_ADD_CHECKSUM) + _name(file) + struct.pack("<III", offset, start, length)
        self.cmds.append(cmd.ljust(128, b"\0"))

    def blob(self) -> bytes:
        return b"".join(self.allocs + self.cmds)


class TableBlob:
    """The growing ``etc/acpi/tables`` contents and its linker."""

    def __init__(self, config: AcpiConfig, linker: Linker) -> None:
        self.data = bytearray()
        self.config = config
        self.linker = linker

    def add_table(self, sig: bytes, rev: int, body: bytes, pointers: tuple[tuple[int, int], ...] = ()) -> int:
        """Append a table with the standard header; ``pointers`` are (offset in body, table
        offset) pairs patched to point into this same file. Returns the table's offset."""
        start = len(self.data)
        body_b = bytearray(body)
        for off, target in pointers:
            body_b[off:off + 4] = struct.pack("<I", target)
        header = sig + struct.pack("<IBB", HEADER_SIZE + len(body_b), rev, 0) + self.config.oem_id \
            + self.config.oem_table_id + struct.pack("<I", 1) + b"BXPC" + struct.pack("<I", 1)
        self.data += header + body_b
        for off, _target in pointers:
            self.linker.add_pointer(TABLE_FILE, start + HEADER_SIZE + off, 4, TABLE_FILE)
        self.linker.add_checksum(TABLE_FILE, start, len(self.data) - start, start + 9)
        return start


def build_facs(blob: TableBlob) -> int:
    """FACS: signature and length only (no checksum, not linked)."""
    start = len(blob.data)
    blob.data += (b"FACS" + struct.pack("<I", 64)).ljust(64, b"\0")
    return start


def build_fadt(blob: TableBlob, facs: int, dsdt: int) -> int:
    """FADT revision 1 (116 bytes), as QEMU's build_fadt for PIIX4 PM."""
    c = blob.config
    flags = 0x80A5 | (1 << 18 if c.max_cpus > 8 else 0)  # FORCE_APIC_CLUSTER_MODEL
    pm = c.pm_base
    body = struct.pack("<IIBBHIBBBB", 0, 0, 1, 0, c.sci_irq, c.smi_cmd,
                       0xF1 if c.smi_cmd else 0, 0xF0 if c.smi_cmd else 0, 0, 0)
    body += struct.pack("<IIIIIIII", pm, 0, pm + 4, 0, 0, pm + 8, c.gpe0_base, 0)
    body += struct.pack("<BBBBBBBB", 4, 2, 0, 4, c.gpe0_len, 0, 0, 0)
    body += struct.pack("<HHHHBBBBBHBI", 0xFFF, 0xFFF, 0, 0, 0, 0, 0, 0, 0x32, 0, 0, flags)
    return blob.add_table(b"FACP", 1, body, pointers=((0, facs), (4, dsdt)))


def build_madt(blob: TableBlob) -> int:
    """MADT: local APICs (present CPUs enabled), the IOAPIC, the ISA overrides and the NMI."""
    c = blob.config
    body = struct.pack("<II", 0xFEE00000, 1)
    for uid, apic_id in enumerate(c.apic_ids[:c.max_cpus]):
        body += madt_cpu_entry(uid, apic_id, uid < c.cpus)
    body += struct.pack("<BBBBII", 1, 12, 0, 0, 0xFEC00000, 0)
    body += struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)  # IRQ0 -> GSI 2
    for irq in (5, 9, 10, 11):  # the PCI link IRQs: level, active high
        body += struct.pack("<BBBBIH", 2, 10, 0, irq, irq, 0xD)
    body += struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1)
    return blob.add_table(b"APIC", 1 if c.machine_version == "7.2" else 3, body)


def build_hpet(blob: TableBlob) -> int:
    """HPET: event timer block id and the memory-mapped base 0xfed00000."""
    body = struct.pack("<IBBBBQBHB", 0x8086A201, 0, 0, 0, 0, 0xFED00000, 0, 0, 0)
    return blob.add_table(b"HPET", 1, body)


def build_waet(blob: TableBlob) -> int:
    """WAET: "ACPI PM timer good" (bit 1)."""
    return blob.add_table(b"WAET", 1, struct.pack("<I", 2))


def build_rsdt(blob: TableBlob, tables: list[int]) -> int:
    """RSDT: a 32-bit pointer to each table."""
    body = bytes(4 * len(tables))
    return blob.add_table(b"RSDT", 1, body, pointers=tuple((4 * i, t) for i, t in enumerate(tables)))


def isa_devices_aml(c: AcpiConfig) -> list[bytes]:
    """The ISA devices' build_aml in QEMU's ISA bus order: the bus lists its children newest first,
    so ``-device`` ones (pvpanic) lead, then the i8042 (KBD, MOU), the floppy controller, the parallel
    and then the serial ports, each from the last one, and the RTC, which the board creates first."""
    out = []
    if c.pvpanic_iobase is not None:
        out.append(pvpanic_aml(c.pvpanic_iobase))
    if c.i8042:
        out.append(aml.device("KBD", aml.name_decl("_HID", aml.eisaid("PNP0303")),
                              aml.name_decl("_STA", aml.integer(0xF)), aml.name_decl(
            "_CRS", aml.resource_template(aml.io_port(0x60, 0x60, 1, 1), aml.io_port(0x64, 0x64, 1, 1),
                                          aml.irq_no_flags(1)))))
        out.append(aml.device("MOU", aml.name_decl("_HID", aml.eisaid("PNP0F13")),
                              aml.name_decl("_STA", aml.integer(0xF)),
                              aml.name_decl("_CRS", aml.resource_template(aml.irq_no_flags(12)))))
    if c.fdc:
        out.append(fdc_aml())
    for index, (iobase, irq) in reversed(list(enumerate(c.parallel_ports))):  # parallel_isa_build_aml
        out.append(aml.device(f"LPT{index + 1}", aml.name_decl("_HID", aml.eisaid("PNP0400")),
                              aml.name_decl("_UID", aml.integer(index + 1)),
                              aml.name_decl("_STA", aml.integer(0xF)), aml.name_decl(
            "_CRS", aml.resource_template(aml.io_port(iobase, iobase, 8, 8), aml.irq_no_flags(irq)))))
    for index, (iobase, irq) in reversed(list(enumerate(c.serial_ports))):
        out.append(aml.device(f"COM{index + 1}", aml.name_decl("_HID", aml.eisaid("PNP0501")),
                              aml.name_decl("_UID", aml.integer(index + 1)),
                              aml.name_decl("_STA", aml.integer(0xF)), aml.name_decl(
            "_CRS", aml.resource_template(aml.io_port(iobase, iobase, 0, 8), aml.irq_no_flags(irq)))))
    if c.rtc:
        out.append(aml.device("RTC", aml.name_decl("_HID", aml.eisaid("PNP0B00")), aml.name_decl(
            "_CRS", aml.resource_template(aml.io_port(c.rtc_iobase, c.rtc_iobase, 1, 8),
                                          aml.irq_no_flags(c.rtc_irq)))))
    return out


def fdc_aml() -> bytes:
    """hw/block/fdc-isa.c's FDC0 at 0x3f0, IRQ 6, DMA 2, with no drives (_FDE: four absent
    drives, tape never present)."""
    crs = aml.resource_template(aml.io_port(0x3F2, 0x3F2, 0, 4), aml.io_port(0x3F7, 0x3F7, 0, 1),
                                aml.irq_no_flags(6), aml.dma_compat8(2))
    return aml.device("FDC0", aml.name_decl("_HID", aml.eisaid("PNP0700")), aml.name_decl("_CRS", crs),
                      aml.name_decl("_FDE", aml.buffer(struct.pack("<5I", 0, 0, 0, 0, 2))))


def hpet_aml() -> bytes:
    """build_hpet_aml: Scope(_SB) { Device(HPET) } with the _STA that checks vendor and period."""
    zero, ident, period = aml.integer(0), aml.local(0), aml.local(1)
    sta = aml.method(
        "_STA", 0,
        aml.store(aml.name_string("VEND"), ident), aml.store(aml.name_string("PRD"), period),
        aml.shiftright(ident, aml.integer(16), ident),
        aml.if_(aml.lor(aml.lequal(ident, zero), aml.lequal(ident, aml.integer(0xFFFF))), aml.return_(zero)),
        aml.if_(aml.lor(aml.lequal(period, zero), aml.lgreater(period, aml.integer(100000000))),
                aml.return_(zero)),
        aml.return_(aml.integer(0xF)))
    return aml.scope("_SB", aml.device(
        "HPET", aml.name_decl("_HID", aml.eisaid("PNP0103")), aml.name_decl("_UID", zero),
        aml.operation_region("HPTM", 0, aml.integer(0xFED00000), 0x400),
        aml.field_("HPTM", 0x13, ("VEND", 32), ("PRD", 32)), sta,
        aml.name_decl("_CRS", aml.resource_template(aml.memory32_fixed(0xFED00000, 0x400, False)))))


def dsdt_pieces(c: AcpiConfig) -> list[bytes]:
    """Self-contained parts of the DSDT, each as QEMU emits it (the HPET scope, the ISA devices
    inside PCI0.S08 and the sleep states)."""
    return [*([hpet_aml()] if c.hpet else []), *isa_devices_aml(c), sleep_states_aml(c)]


def sleep_states_aml(c: AcpiConfig) -> bytes:
    """Scope(\\) with the _S3/_S4/_S5 packages (SLP_TYP for PM1a and PM1b, two reserved)."""
    items = []
    if c.s3:
        items.append(aml.name_decl("_S3", aml.package(*(aml.integer(v) for v in (1, 1, 0, 0)))))
    if c.s4:
        items.append(aml.name_decl("_S4", aml.package(*(aml.integer(v) for v in (c.s4_val, c.s4_val, 0, 0)))))
    items.append(aml.name_decl("_S5", aml.package(*(aml.integer(0) for _ in range(4)))))
    return aml.scope("\\", *items)


def pvpanic_aml(port: int) -> bytes:
    """hw/misc/pvpanic-isa.c's PEVT device."""
    pept = aml.name_string("PEPT")
    return aml.device(
        "PEVT", aml.name_decl("_HID", aml.string("QEMU0001")),
        aml.name_decl("_CRS", aml.resource_template(aml.io_port(port, port, 1, 1))),
        aml.operation_region("PEOR", 1, aml.integer(port), 1),
        aml.field_("PEOR", 0x01, ("PEPT", 8)),
        aml.name_decl("_STA", aml.integer(0xF)),
        aml.method("RDPT", 0, aml.store(pept, aml.local(0)), aml.return_(aml.local(0))),
        aml.method("WRPT", 1, aml.store(aml.arg(0), pept)))


# Field flags: access type | lock << 4 | update rule << 5
BYTE_ACC, DWORD_ACC = 1, 3
WRITE_AS_ZEROS = 2 << 5
SYSTEM_IO, PCI_CONFIG = 1, 2
PCIHP_IO_BASE, PCIHP_IO_LEN = 0xAE00, 0x18  # PIIX4 ACPI PCI hotplug registers
CPUHP_IO_BASE, CPUHP_IO_LEN = 0xAF00, 0x0C  # ACPI CPU hotplug registers (modern interface)
FW_CFG_IO_BASE, FW_CFG_IO_LEN = 0x510, 0x0C  # selector, data and the DMA address
PCI_HOLE_END = 0xFEC00000  # the IO-APIC: the 32-bit PCI hole ends below it
GIB = 1 << 30


def _n(name: str) -> bytes:
    return aml.name_string(name)


def dbg_aml() -> bytes:
    """build_dbg_aml: the DBGB byte at port 0x402 and DBUG, which prints a value in hex there."""
    buf, length, idx = aml.local(0), aml.local(1), aml.local(2)
    dbug = aml.method(
        "DBUG", 1,
        aml.to_hexstring(aml.arg(0), buf), aml.to_buffer(buf, buf),
        aml.subtract(aml.sizeof(buf), aml.integer(1), length), aml.store(aml.integer(0), idx),
        aml.while_(aml.lless(idx, length), aml.store(aml.derefof(aml.index(buf, idx)), _n("DBGB")),
                   aml.increment(idx)),
        aml.store(aml.integer(0x0A), _n("DBGB")))
    return aml.scope("\\", aml.operation_region("DBG", SYSTEM_IO, aml.integer(0x402), 1),
                     aml.field_("DBG", BYTE_ACC, ("DBGB", 8)), dbug)


def pci0_device_aml() -> bytes:
    """Scope(_SB) { Device(PCI0) } with the i440FX host bridge's ids (root uid 0)."""
    return aml.scope("_SB", aml.device("PCI0", aml.name_decl("_HID", aml.eisaid("PNP0A03")),
                                       aml.name_decl("_ADR", aml.integer(0)), aml.name_decl("_UID", aml.integer(0))))


def pci_pdsm_aml() -> bytes:
    """aml_pci_pdsm: PDSM, the PCI _DSM (function 0: supported functions; function 7: the
    device's acpi-index label, read with AIDX)."""
    ret, caps, acpi_index = aml.local(0), aml.local(1), aml.local(2)
    zero, one, not_supp = aml.integer(0), aml.integer(1), aml.integer(0xFFFFFFFF)
    params = aml.arg(4)
    bnum = aml.derefof(aml.index(params, zero))
    sunum = aml.derefof(aml.index(params, one))
    has_index = aml.lequal(acpi_index, zero), aml.lequal(acpi_index, not_supp)
    funcs = aml.if_(
        aml.lequal(aml.arg(2), zero),
        aml.store(aml.buffer(b"\x00"), ret), aml.store(zero, caps),
        aml.if_(aml.lnot(aml.lequal(aml.arg(0), aml.touuid("E5C937D0-3553-4D7A-9117-EA4D19C3434D"))),
                aml.return_(ret)),
        aml.if_(aml.lless(aml.arg(1), aml.integer(2)), aml.return_(ret)),
        aml.store(aml.call("AIDX", bnum, sunum), acpi_index),
        aml.if_(aml.lnot(aml.or_(*has_index)), aml.or_(caps, one, caps),
                aml.or_(caps, aml.shiftleft(one, aml.integer(7)), caps)),
        aml.store(caps, aml.index(ret, zero)), aml.return_(ret))
    label = aml.if_(
        aml.lequal(aml.arg(2), aml.integer(7)),
        aml.store(aml.call("AIDX", bnum, sunum), acpi_index), aml.store(aml.package(count=2), ret),
        aml.if_(aml.lnot(aml.lor(*has_index)), aml.store(acpi_index, aml.index(ret, zero)),
                aml.store(aml.string(""), aml.index(ret, one))),
        aml.return_(ret))
    return aml.method("PDSM", 5, funcs, label, serialized=True)


def pci_hotplug_aml() -> bytes:
    """build_x86_acpi_pci_hotplug: the PIIX4 hotplug registers (PCIU/PCID up/down, B0EJ eject,
    BNUM bus select, PIDX acpi-index), the BLCK mutex and the PCEJ, AIDX and PDSM methods."""
    blck = _n("BLCK")
    lock = aml.acquire(blck, 0xFFFF)
    one = aml.integer(1)
    pcej = aml.method("PCEJ", 2, lock, aml.store(aml.arg(0), _n("BNUM")),
                      aml.store(aml.shiftleft(one, aml.arg(1)), _n("B0EJ")), aml.release(blck),
                      aml.return_(aml.integer(0)))
    aidx = aml.method("AIDX", 2, lock, aml.store(aml.arg(0), _n("BNUM")),
                      aml.store(aml.shiftleft(one, aml.arg(1)), _n("PIDX")),
                      aml.store(_n("PIDX"), aml.local(0)), aml.release(blck), aml.return_(aml.local(0)))
    base = PCIHP_IO_BASE
    return aml.scope(
        "_SB.PCI0",
        aml.operation_region("PCST", SYSTEM_IO, aml.integer(base), 8),
        aml.field_("PCST", DWORD_ACC | WRITE_AS_ZEROS, ("PCIU", 32), ("PCID", 32)),
        aml.operation_region("SEJ", SYSTEM_IO, aml.integer(base + 8), 4),
        aml.field_("SEJ", DWORD_ACC | WRITE_AS_ZEROS, ("B0EJ", 32)),
        aml.operation_region("BNMR", SYSTEM_IO, aml.integer(base + 0x10), 8),
        aml.field_("BNMR", DWORD_ACC | WRITE_AS_ZEROS, ("BNUM", 32), ("PIDX", 32)),
        aml.mutex("BLCK", 0), pcej, aidx, pci_pdsm_aml())


def _prt_entry(link: str) -> bytes:
    return aml.package(aml.integer(0), aml.integer(0), _n(link), aml.integer(0))


def prt_aml() -> bytes:
    """build_prt(true): _PRT builds 128 routes (32 slots x 4 pins) at run time; pin p of slot s
    goes to LNK[DABC][(s + p) & 3], except the PM function's SCI (slot 1 pin A) on LNKS."""
    res, pin, slot, lnk_idx, route = (aml.local(i) for i in range(5))

    def route_if(link: str, idx: int) -> bytes:
        return aml.if_(aml.lequal(lnk_idx, aml.integer(idx)), aml.store(_prt_entry(link), route))

    loop = aml.while_(
        aml.lless(pin, aml.integer(128)),
        aml.store(aml.shiftright(pin, aml.integer(2)), slot),
        aml.store(aml.and_(aml.add(pin, slot), aml.integer(3)), lnk_idx),
        route_if("LNKD", 0),
        aml.if_(aml.lequal(lnk_idx, aml.integer(1)),
                aml.if_(aml.lequal(pin, aml.integer(4)), aml.store(_prt_entry("LNKS"), route)),
                aml.else_(aml.store(_prt_entry("LNKA"), route))),
        route_if("LNKB", 2), route_if("LNKC", 3),
        aml.store(aml.or_(aml.shiftleft(slot, aml.integer(16)), aml.integer(0xFFFF)),
                  aml.index(route, aml.integer(0))),
        aml.store(aml.and_(pin, aml.integer(3)), aml.index(route, aml.integer(1))),
        aml.store(route, aml.index(res, pin)), aml.increment(pin))
    return aml.method("_PRT", 0, aml.store(aml.package(count=128), res), aml.store(aml.integer(0), pin),
                      loop, aml.return_(res))


def link_aml(name: str, uid: int, reg: str) -> bytes:
    """build_link_dev: a PCI interrupt link routed by the PIIX3 PIRQ register ``reg`` (bit 7:
    disabled), choosing among IRQs 5, 10 and 11."""
    r = _n(reg)
    return aml.device(
        name, aml.name_decl("_HID", aml.eisaid("PNP0C0F")), aml.name_decl("_UID", aml.integer(uid)),
        aml.name_decl("_PRS", aml.resource_template(aml.interrupt([5, 10, 11]))),
        aml.method("_STA", 0, aml.return_(aml.call("IQST", r))),
        aml.method("_DIS", 0, aml.or_(r, aml.integer(0x80), r)),
        aml.method("_CRS", 0, aml.return_(aml.call("IQCR", r))),
        aml.method("_SRS", 1, aml.create_dword_field(aml.arg(0), aml.integer(5), "PRRI"),
                   aml.store(_n("PRRI"), r)))


def pci0_int_aml() -> bytes:
    """build_piix4_pci0_int: PCI0._PRT, the IQST/IQCR helpers, LNKA-LNKD and LNKS (the SCI,
    fixed at GSI 9)."""
    iqst = aml.method("IQST", 1, aml.if_(aml.and_(aml.integer(0x80), aml.arg(0)), aml.return_(aml.integer(9))),
                      aml.return_(aml.integer(0x0B)))
    iqcr = aml.method(
        "IQCR", 1, aml.name_decl("PRR0", aml.resource_template(aml.interrupt([0]))),
        aml.create_dword_field(_n("PRR0"), aml.integer(5), "PRRI"),
        aml.if_(aml.lless(aml.arg(0), aml.integer(0x80)), aml.store(aml.arg(0), _n("PRRI"))),
        aml.return_(_n("PRR0")), serialized=True)
    lnks = aml.device(
        "LNKS", aml.name_decl("_HID", aml.eisaid("PNP0C0F")), aml.name_decl("_UID", aml.integer(4)),
        aml.name_decl("_PRS", aml.resource_template(aml.interrupt([9]))),
        aml.method("_STA", 0, aml.return_(aml.integer(0x0B))), aml.method("_DIS", 0),
        aml.method("_CRS", 0, aml.return_(_n("_PRS"))), aml.method("_SRS", 1))
    links = [link_aml(f"LNK{'ABCD'[i]}", i, f"PRQ{i}") for i in range(4)]
    return aml.scope("_SB", aml.scope("PCI0", prt_aml()), iqst, iqcr, *links, lnks)


def madt_cpu_entry(uid: int, apic_id: int, enabled: bool) -> bytes:
    """A MADT processor entry: Local APIC for ids below 255, else Local x2APIC."""
    if apic_id < 255:
        return struct.pack("<BBBBI", 0, 8, uid, apic_id, int(enabled))
    return struct.pack("<BBHIII", 9, 16, 0, apic_id, int(enabled), uid)


def cpu_hotplug_aml(c: AcpiConfig) -> bytes:
    """build_cpus_aml: the hotplug register device PCI0.PRES, the CPUS container with its
    methods (CTFY notify, CSTA status, CEJ0 eject, CSCN scan, COST _OST) and a processor per
    possible CPU; then \\_GPE._E02 calling CSCN."""
    res = "\\_SB.PCI0.PRES"
    lock, sel, cmd, data = (_n(f"{res}.{f}") for f in ("CPLK", "CSEL", "CCMD", "CDAT"))
    enabled, ej = _n(f"{res}.CPEN"), _n(f"{res}.CEJ0")
    zero, one = aml.integer(0), aml.integer(1)
    base = CPUHP_IO_BASE
    prst = aml.device(
        res, aml.name_decl("_HID", aml.eisaid("PNP0A06")),
        aml.name_decl("_UID", aml.string("CPU Hotplug resources")), aml.mutex("CPLK", 0),
        aml.name_decl("_CRS", aml.resource_template(aml.io_port(base, base, 1, CPUHP_IO_LEN))),
        aml.operation_region("PRST", SYSTEM_IO, aml.integer(base), CPUHP_IO_LEN),
        aml.field_("PRST", BYTE_ACC | WRITE_AS_ZEROS, ("", 32), ("CPEN", 1), ("CINS", 1), ("CRMV", 1),
                   ("CEJ0", 1), ("CEJF", 1), ("", 3), ("CCMD", 8)),
        aml.field_("PRST", DWORD_ACC, ("CSEL", 32), ("", 32), ("CDAT", 32)),
        aml.method("_INI", 0, aml.store(zero, _n("CSEL")), serialized=True))
    count = c.max_cpus
    ctfy = aml.method("CTFY", 2, *(aml.if_(aml.lequal(aml.arg(0), aml.integer(i)),
                                           aml.notify(_n(f"C{i:03X}"), aml.arg(1))) for i in range(count)))
    take = aml.acquire(lock, 0xFFFF)
    csta = aml.method("CSTA", 1, take, aml.store(aml.arg(0), sel), aml.store(zero, aml.local(0)),
                      aml.if_(aml.lequal(enabled, one), aml.store(aml.integer(0xF), aml.local(0))),
                      aml.release(lock), aml.return_(aml.local(0)), serialized=True)
    cej0 = aml.method("CEJ0", 1, take, aml.store(aml.arg(0), sel), aml.store(one, ej), aml.release(lock),
                      serialized=True)
    cost = aml.method("COST", 4, take, aml.store(aml.arg(0), sel), aml.store(one, cmd),
                      aml.store(aml.arg(1), data), aml.store(aml.integer(2), cmd), aml.store(aml.arg(2), data),
                      aml.release(lock), serialized=True)
    cpus = [processor_aml(i, apic_id) for i, apic_id in enumerate(c.apic_ids[:count])]
    container = aml.device("\\_SB.CPUS", aml.name_decl("_HID", aml.string("ACPI0010")),
                           aml.name_decl("_CID", aml.eisaid("PNP0A05")), ctfy, csta, cej0,
                           cpu_scan_aml(count), cost, *cpus)
    return aml.scope("_SB", prst, container) + aml.method("\\_GPE._E02", 0, aml.call("\\_SB.CPUS.CSCN"))


def cpu_scan_aml(count: int) -> bytes:
    """CSCN: collect up to 255 CPUs with insert events per pass (notifying removals at once),
    then notify and clear each inserted one."""
    res = "\\_SB.PCI0.PRES"
    lock, sel, cmd, data, ins, rmv = (_n(f"{res}.{f}") for f in ("CPLK", "CSEL", "CCMD", "CDAT", "CINS", "CRMV"))
    zero, one = aml.integer(0), aml.integer(1)
    has_event, added, cpu_idx, uid, has_job = (aml.local(i) for i in range(5))
    new = _n("CNEW")
    scan = aml.while_(
        aml.land(aml.lequal(has_event, one), aml.lless(uid, aml.integer(count))),
        aml.store(zero, has_event), aml.store(uid, sel), aml.store(zero, cmd),
        aml.if_(aml.lless(data, uid), aml.break_()),
        aml.if_(aml.lequal(added, aml.integer(255)), aml.store(one, has_job), aml.break_()),
        aml.store(data, uid),
        aml.if_(aml.lequal(ins, one), aml.store(uid, aml.index(new, added)), aml.increment(added),
                aml.store(one, has_event)),
        aml.else_(aml.if_(aml.lequal(rmv, one), aml.call("CTFY", uid, aml.integer(3)), aml.store(one, rmv),
                          aml.store(one, has_event))),
        aml.increment(uid))
    notify = aml.while_(
        aml.lless(cpu_idx, added), aml.store(aml.derefof(aml.index(new, cpu_idx)), uid),
        aml.call("CTFY", uid, one), aml.store(uid, aml.debug()), aml.store(uid, sel), aml.store(one, ins),
        aml.increment(cpu_idx))
    outer = aml.while_(aml.lequal(has_job, one), aml.store(zero, has_job), aml.store(one, has_event),
                       aml.store(zero, added), scan, aml.store(zero, cpu_idx), notify)
    return aml.method("CSCN", 0, aml.acquire(lock, 0xFFFF), aml.name_decl("CNEW", aml.package(count=255)),
                      aml.store(zero, uid), aml.store(one, has_job), outer, aml.release(lock), serialized=True)


def processor_aml(uid: int, apic_id: int) -> bytes:
    """One possible CPU: an ACPI 1.0 Processor (a Device with _HID ACPI0007 for x2APIC ids), with
    _STA, _MAT (its MADT entry, enabled), _EJ0 (not on the boot CPU) and _OST."""
    u = aml.integer(uid)
    name = f"C{uid:03X}"
    items = [aml.method("_STA", 0, aml.return_(aml.call("CSTA", u)), serialized=True),
             aml.name_decl("_MAT", aml.buffer(madt_cpu_entry(uid, apic_id, True)))]
    if uid:
        items.append(aml.method("_EJ0", 1, aml.call("CEJ0", u)))
    items.append(aml.method("_OST", 3, aml.call("COST", u, aml.arg(0), aml.arg(1), aml.arg(2)), serialized=True))
    if apic_id < 255:
        return aml.processor(name, uid, 0, 0, *items)
    return aml.device(name, aml.name_decl("_HID", aml.string("ACPI0007")), aml.name_decl("_UID", u), *items)


def pci_hole64(c: AcpiConfig) -> tuple[int, int]:
    """The 64-bit PCI window [start, end): as the i440FX host computes it (pci_hole64_fix) when
    no 64-bit BAR is mapped: from above-4G RAM's end, 1 GiB aligned, ``pci_hole64_size`` long."""
    if c.pci_hole64 is not None:
        return c.pci_hole64
    start = _round_up((1 << 32) + c.ram_above_4g, GIB)
    return start, _round_up(start + c.pci_hole64_size, GIB)


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def pci0_resources_aml(c: AcpiConfig) -> bytes:
    """Scope(\\_SB.PCI0) with its _CRS (bus numbers, the config ports, I/O around them, the VGA
    window, the 32-bit hole from the top of low RAM to the IO-APIC, the 64-bit window) and the
    GPE0 and PHPR devices that reserve the GPE block and the PCI hotplug registers."""
    start64, end64 = pci_hole64(c)
    crs = [aml.word_space(aml.BUS_NUMBER_RANGE, 0, 0, 0xFF), aml.io_port(0xCF8, 0xCF8, 1, 8),
           aml.word_space(aml.IO_RANGE, 3, 0, 0xCF7), aml.word_space(aml.IO_RANGE, 3, 0xD00, 0xFFFF),
           aml.dword_memory(0xA0000, 0xBFFFF, True), aml.dword_memory(c.ram_below_4g, PCI_HOLE_END - 1, False)]
    if end64 > start64:
        crs.append(aml.qword_memory(start64, end64 - 1, True))

    def reserve(name: str, uid: str, base: int, length: int) -> bytes:
        return aml.device(name, aml.name_decl("_HID", aml.string("PNP0A06")), aml.name_decl("_UID", aml.string(uid)),
                          aml.name_decl("_STA", aml.integer(0xB)),
                          aml.name_decl("_CRS", aml.resource_template(aml.io_port(base, base, 1, length))))
    return aml.scope("\\_SB.PCI0", aml.name_decl("_CRS", aml.resource_template(*crs)),
                     reserve("GPE0", "GPE0 resources", c.gpe0_base, c.gpe0_len),
                     reserve("PHPR", "PCI Hotplug resources", PCIHP_IO_BASE, PCIHP_IO_LEN))


def fw_cfg_aml() -> bytes:
    """fw_cfg_add_acpi_dsdt: Scope(\\_SB.PCI0) { Device(FWCF) } at the x86 I/O ports (with DMA)."""
    return aml.scope("\\_SB.PCI0", aml.device(
        "FWCF", aml.name_decl("_HID", aml.string("QEMU0002")), aml.name_decl("_STA", aml.integer(0xB)),
        aml.name_decl("_CRS", aml.resource_template(aml.io_port(FW_CFG_IO_BASE, FW_CFG_IO_BASE, 1, FW_CFG_IO_LEN)))))


def pci_slot_dsm() -> bytes:
    """aml_pci_device_dsm: _DSM passing (BSEL, ASUN) to PDSM."""
    return aml.method("_DSM", 4, aml.store(aml.package(_n("BSEL"), _n("ASUN")), aml.local(0)),
                      aml.return_(aml.call("PDSM", aml.arg(0), aml.arg(1), aml.arg(2), aml.arg(3), aml.local(0))),
                      serialized=True)


def piix3_isa_aml(c: AcpiConfig) -> list[bytes]:
    """build_pci_isa_aml: the PIIX3's PIRQ route registers (config 0x60-0x63, as \\_SB.PRQ0-3)
    and the ISA devices."""
    field = aml.field_("PCI0.S08.P40C", BYTE_ACC, *((f"PRQ{i}", 8) for i in range(4)))
    return [aml.operation_region("P40C", PCI_CONFIG, aml.integer(0x60), 4), aml.scope("\\_SB", field),
            *isa_devices_aml(c)]


def vga_aml() -> list[bytes]:
    """build_vga_aml (std VGA): _S1D, _S2D and _S3D all D0."""
    return [aml.method(f"_S{i}D", 0, aml.return_(aml.integer(0))) for i in (1, 2, 3)]


def pci_bus_aml(c: AcpiConfig) -> bytes:
    """build_append_pci_bus_devices for the root bus (BSEL 0): a device per slot; slots without a
    cold-plugged non-hotpluggable function-0 device (empty or hotpluggable) get _SUN and _EJ0 and
    a DVNT entry; then DVNT (notify per slot bit) and PCNT (check up/down events)."""
    slots, notify = [], []
    for slot in range(32):
        devfn = slot * 8
        items = [aml.name_decl("_ADR", aml.integer(slot << 16)), aml.name_decl("ASUN", aml.integer(slot)),
                 pci_slot_dsm()]
        kind = c.pci_fixed_slots.get(slot)
        if kind == "isa":
            items += piix3_isa_aml(c)
        elif kind == "vga":
            items += vga_aml()
        elif kind is None:
            items += [aml.name_decl("_SUN", aml.integer(slot)),
                      aml.method("_EJ0", 1, aml.call("PCEJ", _n("BSEL"), _n("_SUN")))]
            notify.append(aml.if_(aml.and_(aml.arg(0), aml.integer(1 << slot)),
                                  aml.notify(_n(f"S{devfn:02X}"), aml.arg(1))))
        slots.append(aml.device(f"S{devfn:02X}", *items))
    pcnt = aml.method("PCNT", 0, aml.store(aml.integer(0), _n("BNUM")),
                      aml.call("DVNT", _n("PCIU"), aml.integer(1)), aml.call("DVNT", _n("PCID"), aml.integer(3)))
    return aml.scope("\\_SB", aml.scope("PCI0", aml.name_decl("BSEL", aml.integer(0)), *slots,
                                        aml.method("DVNT", 2, *notify), pcnt))


def gpe_aml() -> bytes:
    """Scope(_GPE) { _HID "ACPI0006" }."""
    return aml.scope("_GPE", aml.name_decl("_HID", aml.string("ACPI0006")))


def pci_hotplug_gpe_aml() -> bytes:
    """Scope(_GPE) { _E01 }: GPE 1 (PCI hotplug) runs PCI0.PCNT under BLCK."""
    blck = _n("\\_SB.PCI0.BLCK")
    return aml.scope("_GPE", aml.method("_E01", 0, aml.acquire(blck, 0xFFFF), aml.call("\\_SB.PCI0.PCNT"),
                                        aml.release(blck)))


def dsdt_aml(c: AcpiConfig) -> bytes:
    """The DSDT's AML in build_dsdt's order for the i440FX board."""
    parts = [dbg_aml(), pci0_device_aml(), pci_hotplug_aml(), pci0_int_aml(),
             *([hpet_aml()] if c.hpet else []), gpe_aml(), cpu_hotplug_aml(c), pci0_resources_aml(c),
             sleep_states_aml(c), fw_cfg_aml(), pci_bus_aml(c), pci_hotplug_gpe_aml()]
    return b"".join(parts)


def build_dsdt(blob: TableBlob, body: bytes | None = None) -> int:
    """The DSDT. A given ``body`` replaces the built one (tests check the rest of the layout
    with QEMU's own body)."""
    if body is None:
        body = dsdt_aml(blob.config)
    return blob.add_table(b"DSDT", 1, body)


def build_rsdp(linker: Linker, rsdt: int, oem_id: bytes) -> bytes:
    """RSDP revision 0 with the RSDT's offset; the loader relocates it and computes the checksum."""
    linker.alloc(RSDP_FILE, 16, True)
    data = bytearray(b"RSD PTR " + b"\0" + oem_id + b"\0" + struct.pack("<I", rsdt))
    linker.add_pointer(RSDP_FILE, 16, 4, TABLE_FILE)
    linker.add_checksum(RSDP_FILE, 0, 20, 8)
    return bytes(data)


def build_acpi(config: AcpiConfig, dsdt_body: bytes | None = None) -> AcpiBlobs:
    """All three blobs, in acpi_build's order. As in QEMU, checksum fields stay 0 in the blobs:
    the firmware computes them from the loader's ADD_CHECKSUM commands."""
    linker = Linker()
    linker.alloc(TABLE_FILE, 64, False)
    blob = TableBlob(config, linker)
    facs = build_facs(blob)
    dsdt = build_dsdt(blob, dsdt_body)
    tables = [build_fadt(blob, facs, dsdt), build_madt(blob)]
    if config.hpet:
        tables.append(build_hpet(blob))
    tables.append(build_waet(blob))
    rsdt = build_rsdt(blob, tables)
    rsdp = build_rsdp(linker, rsdt, config.oem_id)
    return AcpiBlobs(bytes(blob.data.ljust(TABLE_PAD, b"\0")),
                     linker.blob().ljust(LOADER_PAD, b"\0"), rsdp)
