"""The SMBIOS tables QEMU 7.2's pc board publishes in fw_cfg (hw/smbios/smbios.c, 2.1 entry point).

``build_smbios(config)`` returns the two files ``etc/smbios/smbios-tables`` and
``etc/smbios/smbios-anchor``. With no ``-smbios`` options QEMU builds the required structures
only: type 1 (system), 3 (chassis), one type 4 per socket, 16 (memory array), one type 17 per
16 GiB "DIMM", one type 19 per e820 RAM range, 32 (boot status) and 127 (end). The anchor's
checksums and table address are left 0: the firmware fills them when it copies the tables.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

TABLES_FILE = "etc/smbios/smbios-tables"
ANCHOR_FILE = "etc/smbios/smbios-anchor"

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
MAX_DIMM_SIZE = 16 * GIB  # QEMU splits RAM into "DIMMs" of at most this size
MAX_T16_STD_KB = 0x80000000  # 2 TiB in KiB: larger goes in the extended field
MAX_T17_STD_MB = 0x7FFF  # 32 GiB - 1 MiB in MiB: larger goes in the extended field
MAX_21_TABLES_LEN = 0xFFFF  # the 2.1 anchor's 16-bit structure table length
DEFAULT_CPU_SPEED = 2000  # MHz, max and current speed in type 4

# handle bases per type (QEMU's T*_BASE)
T1_BASE, T3_BASE, T4_BASE = 0x100, 0x300, 0x400
T16_BASE, T17_BASE, T19_BASE, T32_BASE, T127_BASE = 0x1000, 0x1100, 0x1300, 0x2000, 0x7F00

# qemu64's CPUID leaf 1 EAX and EDX as QEMU 7.2 reports them (type 4's processor ID)
QEMU64_CPUID_VERSION = 0x00060FB1
QEMU64_CPUID_FEATURES = 0x078BFBFD


class SmbiosError(Exception):
    """A table set QEMU refuses to build (fatal at start-up in QEMU)."""


@dataclass
class SmbiosConfig:
    """What the tables depend on; defaults are ``-M pc -nodefaults`` with 128 MiB."""
    version: str = "pc-i440fx-9.1"  # the machine type's name (types 1, 3 and 4)
    manufacturer: str = "QEMU"
    product: str = "Standard PC (i440FX + PIIX, 1996)"
    uuid: bytes | None = None  # -uuid in RFC 4122 (big-endian) order; None: all zero
    ram_size: int = 128 * MIB
    ram_areas: Sequence[tuple[int, int]] = ((0, 128 * MIB),)  # the e820 RAM entries (start, length)
    sockets: int = 1
    cores_per_socket: int = 1
    threads_per_socket: int = 1
    cpuid_version: int = QEMU64_CPUID_VERSION
    cpuid_features: int = QEMU64_CPUID_FEATURES


@dataclass
class SmbiosBlobs:
    """The two fw_cfg files."""
    tables: bytes
    anchor: bytes


class _Builder:
    """Appends structures (formatted area, then strings) and keeps the anchor's counters."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.count = 0
        self.max_size = 0

    def add(self, type_: int, handle: int, body: bytes, strings: Sequence[str] = ()) -> None:
        """One structure: ``body`` is the formatted area after the 4-byte header, with string
        fields already holding their 1-based index among the non-empty ``strings``."""
        start = len(self.out)
        self.out += struct.pack("<BBH", type_, 4 + len(body), handle) + body
        present = [s for s in strings if s]
        for s in present:
            self.out += s.encode() + b"\0"
        self.out += b"\0" if present else b"\0\0"
        self.max_size = max(self.max_size, len(self.out) - start)
        self.count += 1


class _Strings:
    """String-field numbering as QEMU's SMBIOS_TABLE_SET_STR: an empty string is field 0 and
    takes no slot."""

    def __init__(self) -> None:
        self.values: list[str] = []

    def __call__(self, value: str | None) -> int:
        if not value:
            return 0
        self.values.append(value)
        return len(self.values)


def encode_uuid(uuid: bytes) -> bytes:
    """RFC 4122 byte order to the SMBIOS 2.6 wire format (first three fields little-endian)."""
    return uuid[3::-1] + uuid[5:3:-1] + uuid[7:5:-1] + uuid[8:16]


def _type1(b: _Builder, c: SmbiosConfig) -> None:
    s = _Strings()
    head = struct.pack("<BBBB", s(c.manufacturer), s(c.product), s(c.version), s(None))
    uuid = encode_uuid(c.uuid) if c.uuid is not None else bytes(16)
    body = head + uuid + struct.pack("<BBB", 0x06, s(None), s(None))  # wake-up: power switch
    b.add(1, T1_BASE, body, s.values)


def _type3(b: _Builder, c: SmbiosConfig) -> None:
    s = _Strings()
    body = struct.pack("<BBBBBBBBBIBBBBB", s(c.manufacturer), 0x01, s(c.version), s(None), s(None),
                       0x03, 0x03, 0x03, 0x02,  # boot-up, power supply, thermal: safe; security: unknown
                       0, 0, 0, 0, 0, s(None))
    b.add(3, T3_BASE, body, s.values)


def _type4(b: _Builder, c: SmbiosConfig, socket: int) -> None:
    s = _Strings()
    cores = min(c.cores_per_socket, 0xFF)
    threads = min(c.threads_per_socket, 0xFF)
    body = struct.pack(
        "<BBBBIIBBHHHBBHHHBBBBBBHH",
        s(f"CPU{socket:2x}"), 0x03, 0x01, s(c.manufacturer),  # central processor, family "other"
        c.cpuid_version, c.cpuid_features, s(c.version), 0, 0, DEFAULT_CPU_SPEED, DEFAULT_CPU_SPEED,
        0x41, 0x01, 0xFFFF, 0xFFFF, 0xFFFF,  # populated and enabled; upgrade "other"; no caches
        s(None), s(None), s(None), cores, cores, threads, 0x02, 0x01)
    b.add(4, T4_BASE + socket, body, s.values)


def _type16(b: _Builder, c: SmbiosConfig, dimms: int) -> None:
    size_kb = -(-c.ram_size // KIB)
    std, ext = (size_kb, 0) if size_kb < MAX_T16_STD_KB else (MAX_T16_STD_KB, c.ram_size)
    body = struct.pack("<BBBIHHQ", 0x01, 0x03, 0x06, std, 0xFFFE, dimms, ext)
    b.add(16, T16_BASE, body)


def _type17(b: _Builder, c: SmbiosConfig, index: int, size: int) -> None:
    s = _Strings()
    size_mb = -(-size // MIB)
    std, ext = (size_mb, 0) if size_mb < MAX_T17_STD_MB else (MAX_T17_STD_MB, size_mb)
    body = struct.pack("<HHHHHBBBBBHHBBBBBIHHHH",
                       0x1000, 0xFFFE, 0xFFFF, 0xFFFF, std, 0x09, 0,  # array handle, no error info; DIMM
                       s(f"DIMM {index}"), s(None), 0x07, 0x02, 0,  # RAM, detail "other", speed unknown
                       s(c.manufacturer), s(None), s(None), s(None), 0, ext, 0, 0, 0, 0)
    b.add(17, T17_BASE + index, body, s.values)


def _type19(b: _Builder, handle: int, start: int, length: int) -> None:
    end = start + length - 1
    start_kb, end_kb = start // KIB, end // KIB
    if start_kb < 0xFFFFFFFF and end_kb < 0xFFFFFFFF:
        std, ext = (start_kb, end_kb), (0, 0)
    else:
        std, ext = (0xFFFFFFFF, 0xFFFFFFFF), (start, end)
    b.add(19, handle, struct.pack("<IIHBQQ", *std, 0x1000, 1, *ext))


def build_smbios(config: SmbiosConfig) -> SmbiosBlobs:
    """The tables and the 2.1 (32-bit) anchor, as ``smbios_get_tables`` builds them."""
    c = config
    b = _Builder()
    _type1(b, c)
    _type3(b, c)
    for socket in range(c.sockets):
        _type4(b, c, socket)
    dimms = -(-c.ram_size // MAX_DIMM_SIZE)
    # handles of type 19 move up when the DIMMs would run into them (beyond 8 TiB)
    offset = max(0, dimms - (T19_BASE - T17_BASE))
    _type16(b, c, dimms)
    for i in range(dimms):
        _type17(b, c, i, MAX_DIMM_SIZE if i < dimms - 1 else (c.ram_size - 1) % MAX_DIMM_SIZE + 1)
    if len(c.ram_areas) + offset >= T32_BASE - T19_BASE:
        raise SmbiosError("too many SMBIOS type 19 structures")
    for i, (start, length) in enumerate(c.ram_areas):
        _type19(b, T19_BASE + offset + i, start, length)
    b.add(32, T32_BASE, bytes(7))  # no errors detected
    b.add(127, T127_BASE, b"")
    if len(b.out) > MAX_21_TABLES_LEN:
        raise SmbiosError(f"SMBIOS 2.1 table length {len(b.out)} exceeds {MAX_21_TABLES_LEN}")
    anchor = (b"_SM_" + struct.pack("<BBBBHB5s", 0, 31, 2, 8, b.max_size, 0, bytes(5))
              + b"_DMI_" + struct.pack("<BHIHB", 0, len(b.out), 0, b.count, 0x28))
    return SmbiosBlobs(bytes(b.out), anchor)
