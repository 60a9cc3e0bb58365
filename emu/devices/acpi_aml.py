"""A small AML encoder (ACPI Machine Language), as QEMU's hw/acpi/aml-build.c encodes it.

Only what the ``pc`` board's tables need: package lengths, name strings, integers (QEMU's shortest
encoding), names, scopes, devices, methods, packages, buffers, EISA ids and the resource template
items (I/O ports, IRQ without flags). Every builder returns the encoded bytes.
"""
from __future__ import annotations

import struct

ZERO_OP = 0x00
ONE_OP = 0x01
ONES_OP = 0xFF
NAME_OP = 0x08
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
QWORD_PREFIX = 0x0E
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
METHOD_OP = 0x14
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F
END_TAG = bytes([0x79, 0x00])


def pkg_length(length: int, include_self: bool = True) -> bytes:
    """PkgLength of a body of ``length`` bytes; with ``include_self`` the encoding's own bytes
    count. As QEMU's build_prepend_package_length, the encoding's size is chosen from the body's
    length plus that size whether or not it is then included."""
    if length < 0 or length + 4 >= 1 << 28:
        raise ValueError(f"package length {length} out of range")
    if length + 1 < 1 << 6:
        return bytes([length + (1 if include_self else 0)])
    if length + 2 < 1 << 12:
        size = 2
    elif length + 3 < 1 << 20:
        size = 3
    else:
        size = 4
    total = length + (size if include_self else 0)
    out = [((size - 1) << 6) | (total & 0x0F)]
    total >>= 4
    for _ in range(size - 1):
        out.append(total & 0xFF)
        total >>= 8
    return bytes(out)


def _name_seg(seg: str) -> bytes:
    if not 1 <= len(seg) <= 4:
        raise ValueError(f"bad AML name segment {seg!r}")
    return seg.encode("ascii").ljust(4, b"_")


def name_string(name: str) -> bytes:
    """A NameString: root/parent prefixes then one, two (DualNamePrefix) or more
    (MultiNamePrefix) segments, each padded with ``_`` to four characters."""
    prefix = b""
    while name.startswith(("\\", "^")):
        prefix += name[0].encode()
        name = name[1:]
    segs = [s for s in name.split(".") if s] if name else []
    if not segs:
        return prefix + b"\x00"
    body = b"".join(_name_seg(s) for s in segs)
    if len(segs) == 1:
        return prefix + body
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + body
    return prefix + bytes([MULTI_NAME_PREFIX, len(segs)]) + body


def integer(value: int) -> bytes:
    """QEMU's aml_int: Zero, One, Ones, then the smallest of Byte/Word/DWord/QWord constants."""
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value == 0xFFFFFFFFFFFFFFFF:
        return bytes([ONES_OP])
    if value <= 0xFF:
        return bytes([BYTE_PREFIX, value])
    if value <= 0xFFFF:
        return bytes([WORD_PREFIX]) + struct.pack("<H", value)
    if value <= 0xFFFFFFFF:
        return bytes([DWORD_PREFIX]) + struct.pack("<I", value)
    return bytes([QWORD_PREFIX]) + struct.pack("<Q", value)


def name_decl(name: str, value: bytes) -> bytes:
    """Name(NAME, value)."""
    return bytes([NAME_OP]) + name_string(name) + value


def _with_pkg(opcode: bytes, body: bytes) -> bytes:
    return opcode + pkg_length(len(body)) + body


def scope(name: str, *items: bytes) -> bytes:
    """Scope(NAME) { items }."""
    return _with_pkg(bytes([SCOPE_OP]), name_string(name) + b"".join(items))


def device(name: str, *items: bytes) -> bytes:
    """Device(NAME) { items }."""
    return _with_pkg(bytes([EXT_OP_PREFIX, DEVICE_OP]), name_string(name) + b"".join(items))


def method(name: str, arg_count: int, *items: bytes, serialized: bool = False) -> bytes:
    """Method(NAME, args, NotSerialized|Serialized) { items }."""
    flags = (arg_count & 7) | (0x08 if serialized else 0)
    return _with_pkg(bytes([METHOD_OP]), name_string(name) + bytes([flags]) + b"".join(items))


def package(*elements: bytes) -> bytes:
    """Package() { elements } (count as a byte, as QEMU's aml_package)."""
    return _with_pkg(bytes([PACKAGE_OP]), bytes([len(elements)]) + b"".join(elements))


def buffer(data: bytes) -> bytes:
    """Buffer(size) { data }."""
    return _with_pkg(bytes([BUFFER_OP]), integer(len(data)) + data)


def eisaid(text: str) -> bytes:
    """EisaId("PNPxxxx") as QEMU's aml_eisaid: a big-endian compressed id as a DWord constant."""
    if len(text) != 7:
        raise ValueError(f"bad EISA id {text!r}")
    value = 0
    for ch in text[:3]:
        value = (value << 5) | (ord(ch) - 0x40)
    value = (value << 16) | int(text[3:], 16)
    return bytes([DWORD_PREFIX]) + struct.pack(">I", value)


def io_port(minimum: int, maximum: int, align: int, length: int, decode16: bool = True) -> bytes:
    """IO(Decode16|Decode10, min, max, align, length): a small I/O port descriptor."""
    return struct.pack("<BBHHBB", 0x47, 1 if decode16 else 0, minimum, maximum, align, length)


def irq_no_flags(irq: int) -> bytes:
    """IRQNoFlags() {irq}: a two-byte IRQ descriptor."""
    return struct.pack("<BH", 0x22, 1 << irq)


def resource_template(*items: bytes) -> bytes:
    """ResourceTemplate() { items }: a buffer ending with an End Tag whose checksum byte is 0."""
    return buffer(b"".join(items) + END_TAG)


def string(text: str) -> bytes:
    """A String constant: StringPrefix, the ASCII text, a NUL."""
    return b"\x0d" + text.encode("ascii") + b"\x00"


def local(n: int) -> bytes:
    """LocalN (0-7)."""
    return bytes([0x60 + n])


def arg(n: int) -> bytes:
    """ArgN (0-6)."""
    return bytes([0x68 + n])


def store(source: bytes, target: bytes) -> bytes:
    """Store(source, target)."""
    return b"\x70" + source + target


def return_(value: bytes) -> bytes:
    """Return(value)."""
    return b"\xa4" + value


def operation_region(name: str, space: int, offset: bytes, length: int) -> bytes:
    """OperationRegion(NAME, space, offset, length); space 1 is SystemIO."""
    return bytes([EXT_OP_PREFIX, 0x80]) + name_string(name) + bytes([space]) + offset + integer(length)


def field_(region: str, flags: int, *fields: tuple[str, int]) -> bytes:
    """Field(REGION, flags) { NAME, bits ... }: ``flags`` is access | lock << 4 | update << 5."""
    body = name_string(region) + bytes([flags])
    for name, bits in fields:
        body += _name_seg(name) + pkg_length(bits, include_self=False)
    return _with_pkg(bytes([EXT_OP_PREFIX, 0x81]), body)


def if_(predicate: bytes, *items: bytes) -> bytes:
    """If(predicate) { items }."""
    return _with_pkg(b"\xa0", predicate + b"".join(items))


def lor(a: bytes, b: bytes) -> bytes:
    """LOr(a, b)."""
    return b"\x91" + a + b


def lequal(a: bytes, b: bytes) -> bytes:
    """LEqual(a, b)."""
    return b"\x93" + a + b


def lgreater(a: bytes, b: bytes) -> bytes:
    """LGreater(a, b)."""
    return b"\x94" + a + b


def shiftright(value: bytes, count: bytes, target: bytes = b"\x00") -> bytes:
    """ShiftRight(value, count, target); no target is the NullName."""
    return b"\x7a" + value + count + target


def memory32_fixed(address: int, size: int, writable: bool) -> bytes:
    """Memory32Fixed(ReadWrite|ReadOnly, address, size)."""
    return struct.pack("<BHBII", 0x86, 9, 1 if writable else 0, address, size)
