"""QEMU's ACPI tables for the ``pc`` board (hw/i386/acpi-build.c), built as fw_cfg blobs.

``build_acpi(config)`` returns the three files QEMU publishes: ``etc/acpi/tables`` (FACS, DSDT,
FACP, APIC, HPET, WAET, RSDT, padded to 128 KiB), ``etc/table-loader`` (the BIOS linker/loader
commands, padded to 4 KiB) and ``etc/acpi/rsdp`` (20 bytes). QEMU puts them in ROM RAM blocks of
maximum size 0x200000, 0x10000 and 0x1000 (hw/acpi/utils.c acpi_add_rom_blob).

Status: every table but the DSDT is byte-exact with QEMU 7.2; the DSDT body is only partly built
(``dsdt_pieces``: the HPET device, the ISA devices and the sleep states, each byte-exact; not
PCI0, _PRT, the link devices, PCI hotplug, CPU hotplug AML, GPE, fw_cfg node).
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
    pvpanic_iobase: int | None = None
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
        enabled = 1 if uid < c.cpus else 0
        if apic_id < 255:
            body += struct.pack("<BBBBI", 0, 8, uid, apic_id, enabled)
        else:
            body += struct.pack("<BBHIII", 9, 16, 0, apic_id, enabled, uid)
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
    """The ISA devices' build_aml, in QEMU's order (hw/rtc, hw/input/pckbd, ...)."""
    out = []
    if c.rtc:
        out.append(aml.device("RTC", aml.name_decl("_HID", aml.eisaid("PNP0B00")), aml.name_decl(
            "_CRS", aml.resource_template(aml.io_port(c.rtc_iobase, c.rtc_iobase, 1, 8),
                                          aml.irq_no_flags(c.rtc_irq)))))
    if c.i8042:
        out.append(aml.device("KBD", aml.name_decl("_HID", aml.eisaid("PNP0303")),
                              aml.name_decl("_STA", aml.integer(0xF)), aml.name_decl(
            "_CRS", aml.resource_template(aml.io_port(0x60, 0x60, 1, 1), aml.io_port(0x64, 0x64, 1, 1),
                                          aml.irq_no_flags(1)))))
        out.append(aml.device("MOU", aml.name_decl("_HID", aml.eisaid("PNP0F13")),
                              aml.name_decl("_STA", aml.integer(0xF)),
                              aml.name_decl("_CRS", aml.resource_template(aml.irq_no_flags(12)))))
    for index, (iobase, irq) in enumerate(c.serial_ports):
        out.append(aml.device(f"COM{index + 1}", aml.name_decl("_HID", aml.eisaid("PNP0501")),
                              aml.name_decl("_UID", aml.integer(index + 1)),
                              aml.name_decl("_STA", aml.integer(0xF)), aml.name_decl(
            "_CRS", aml.resource_template(aml.io_port(iobase, iobase, 0, 8), aml.irq_no_flags(irq)))))
    if c.pvpanic_iobase is not None:
        out.append(pvpanic_aml(c.pvpanic_iobase))
    return out


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
    """The parts of the DSDT encoded so far, each as QEMU emits it (not yet in QEMU's order,
    and without PCI0, _PRT, the link devices, PCI hotplug, CPU AML and GPE)."""
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


def build_dsdt(blob: TableBlob, body: bytes | None = None) -> int:
    """The DSDT. Partial: only the pieces encoded so far (see the module docstring). A given
    ``body`` replaces the built one (tests check the rest of the layout with QEMU's own body)."""
    if body is None:
        body = b"".join(dsdt_pieces(blob.config))
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
