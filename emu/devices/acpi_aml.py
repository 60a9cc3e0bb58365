"""A small AML encoder (ACPI Machine Language), as QEMU's hw/acpi/aml-build.c encodes it.

Only what the ``pc`` board's tables need: package lengths, name strings, integers (QEMU's shortest
encoding), names, scopes, devices, processors, methods, packages, buffers, EISA ids, UUIDs, the
operators and control flow QEMU's DSDT uses, and the resource template items (I/O ports, IRQs,
extended interrupts, DMA, word/dword/qword address spaces, fixed memory). Every builder returns the
encoded bytes; an operator's omitted target is the NullName, as QEMU passes NULL.
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


def package(*elements: bytes, count: int | None = None) -> bytes:
    """Package(count) { elements } (count as a byte, as QEMU's aml_package; by default the
    number of elements)."""
    n = len(elements) if count is None else count
    return _with_pkg(bytes([PACKAGE_OP]), bytes([n]) + b"".join(elements))


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
    """Field(REGION, flags) { NAME, bits ... }: ``flags`` is access | lock << 4 | update << 5;
    an empty NAME is a reserved field (an Offset() in ASL)."""
    body = name_string(region) + bytes([flags])
    for name, bits in fields:
        body += (_name_seg(name) if name else b"\x00") + pkg_length(bits, include_self=False)
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


NULL_TARGET = b"\x00"


def _op2(opcode: int, a: bytes, b: bytes, target: bytes) -> bytes:
    return bytes([opcode]) + a + b + target


def add(a: bytes, b: bytes, target: bytes = NULL_TARGET) -> bytes:
    """Add(a, b, target)."""
    return _op2(0x72, a, b, target)


def subtract(a: bytes, b: bytes, target: bytes = NULL_TARGET) -> bytes:
    """Subtract(a, b, target)."""
    return _op2(0x74, a, b, target)


def and_(a: bytes, b: bytes, target: bytes = NULL_TARGET) -> bytes:
    """And(a, b, target)."""
    return _op2(0x7B, a, b, target)


def or_(a: bytes, b: bytes, target: bytes = NULL_TARGET) -> bytes:
    """Or(a, b, target)."""
    return _op2(0x7D, a, b, target)


def shiftleft(value: bytes, count: bytes) -> bytes:
    """ShiftLeft(value, count) (QEMU's aml_shiftleft never stores)."""
    return _op2(0x79, value, count, NULL_TARGET)


def index(obj: bytes, idx: bytes) -> bytes:
    """Index(obj, idx) without a target."""
    return _op2(0x88, obj, idx, NULL_TARGET)


def derefof(ref: bytes) -> bytes:
    """DerefOf(ref)."""
    return b"\x83" + ref


def sizeof(obj: bytes) -> bytes:
    """SizeOf(obj)."""
    return b"\x87" + obj


def increment(target: bytes) -> bytes:
    """Increment(target)."""
    return b"\x75" + target


def land(a: bytes, b: bytes) -> bytes:
    """LAnd(a, b)."""
    return b"\x90" + a + b


def lnot(a: bytes) -> bytes:
    """LNot(a)."""
    return b"\x92" + a


def lless(a: bytes, b: bytes) -> bytes:
    """LLess(a, b)."""
    return b"\x95" + a + b


def to_hexstring(source: bytes, target: bytes) -> bytes:
    """ToHexString(source, target)."""
    return b"\x98" + source + target


def to_buffer(source: bytes, target: bytes) -> bytes:
    """ToBuffer(source, target)."""
    return b"\x96" + source + target


def notify(obj: bytes, value: bytes) -> bytes:
    """Notify(obj, value)."""
    return b"\x86" + obj + value


def call(name: str, *args: bytes) -> bytes:
    """A method invocation: the name then its arguments."""
    return name_string(name) + b"".join(args)


def debug() -> bytes:
    """The Debug object."""
    return bytes([EXT_OP_PREFIX, 0x31])


def while_(predicate: bytes, *items: bytes) -> bytes:
    """While(predicate) { items }."""
    return _with_pkg(b"\xa2", predicate + b"".join(items))


def else_(*items: bytes) -> bytes:
    """Else { items } (follows an If)."""
    return _with_pkg(b"\xa1", b"".join(items))


def break_() -> bytes:
    """Break."""
    return b"\xa5"


def mutex(name: str, sync_level: int) -> bytes:
    """Mutex(NAME, level)."""
    return bytes([EXT_OP_PREFIX, 0x01]) + name_string(name) + bytes([sync_level])


def acquire(target: bytes, timeout: int) -> bytes:
    """Acquire(mutex, timeout)."""
    return bytes([EXT_OP_PREFIX, 0x23]) + target + struct.pack("<H", timeout)


def release(target: bytes) -> bytes:
    """Release(mutex)."""
    return bytes([EXT_OP_PREFIX, 0x27]) + target


def create_dword_field(source: bytes, byte_index: bytes, name: str) -> bytes:
    """CreateDWordField(source, index, NAME)."""
    return b"\x8a" + source + byte_index + name_string(name)


def processor(name: str, proc_id: int, pblk_addr: int, pblk_len: int, *items: bytes) -> bytes:
    """Processor(NAME, id, pblk, pblk_len) { items } (the ACPI 1.0 processor object)."""
    body = name_string(name) + struct.pack("<BIB", proc_id, pblk_addr, pblk_len) + b"".join(items)
    return _with_pkg(bytes([EXT_OP_PREFIX, 0x83]), body)


def touuid(text: str) -> bytes:
    """ToUUID("aabbccdd-eeff-gghh-iijj-kkllmmnnoopp"): a 16-byte buffer, the first three groups
    little-endian."""
    groups = text.split("-")
    raw = bytes.fromhex(groups[0])[::-1] + bytes.fromhex(groups[1])[::-1] + bytes.fromhex(groups[2])[::-1]
    return buffer(raw + bytes.fromhex(groups[3] + groups[4]))


def interrupt(irqs: list[int]) -> bytes:
    """Interrupt(ResourceConsumer, Level, ActiveHigh, Shared) { irqs }: an extended IRQ
    descriptor."""
    return struct.pack("<BHBB", 0x89, 2 + 4 * len(irqs), 0x09, len(irqs)) + b"".join(
        struct.pack("<I", irq) for irq in irqs)


def dma_compat8(channel: int) -> bytes:
    """DMA(Compatibility, NotBusMaster, Transfer8) {channel}."""
    return bytes([0x2A, 1 << channel, 0])


# Address space descriptor resource types and QEMU's fixed flags (MinFixed, MaxFixed, PosDecode)
MEMORY_RANGE = 0
IO_RANGE = 1
BUS_NUMBER_RANGE = 2
_MIN_MAX_FIXED = 0x0C


def word_space(rtype: int, type_flags: int, minimum: int, maximum: int) -> bytes:
    """A Word address space descriptor (WordBusNumber / WordIO) without granularity or
    translation; the length is maximum - minimum + 1."""
    return struct.pack("<BHBBBHHHHH", 0x88, 0x0D, rtype, _MIN_MAX_FIXED, type_flags,
                       0, minimum, maximum, 0, maximum - minimum + 1)


def dword_memory(minimum: int, maximum: int, cacheable: bool) -> bytes:
    """DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, Cacheable|NonCacheable,
    ReadWrite)."""
    return struct.pack("<BHBBBIIIII", 0x87, 23, MEMORY_RANGE, _MIN_MAX_FIXED, 1 | (2 if cacheable else 0),
                       0, minimum, maximum, 0, maximum - minimum + 1)


def qword_memory(minimum: int, maximum: int, cacheable: bool) -> bytes:
    """QWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, Cacheable|NonCacheable,
    ReadWrite)."""
    return struct.pack("<BHBBBQQQQQ", 0x8A, 0x2B, MEMORY_RANGE, _MIN_MAX_FIXED, 1 | (2 if cacheable else 0),
                       0, minimum, maximum, 0, maximum - minimum + 1)
