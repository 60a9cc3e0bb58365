"""The ``qtest`` fuzz target's input encoding: QEMU's generic-fuzz bytes decoded into qtest commands.

This module owns the byte encoding of ``tests/qtest/fuzz/generic_fuzz.c`` (``spec/qtest-protocol.md``
§11): ops separated by ``FUZZ``, opcode = first byte % 10, payloads read in x86-64 C layout (padding
included), region index cycling over the fuzzable ranges, offset modulo the range, access width
capped by the bytes left in the range, PIO addresses above 0xffff skipped, PCI config ops through
0xcf8/0xcfc, DMA-pattern state and libFuzzer-style crossover; the reply oracle (the exact reply
QEMU's qtest server gives each command); and the generation of random inputs.

Pure data: no processes, no sockets. It must not import the other ``qtest.fuzz`` modules.
"""
from __future__ import annotations

import random
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from emu.devices.pci import CONFIG_ADDR_PORT, CONFIG_DATA_PORT, config_address

SEPARATOR = b"FUZZ"
(OP_IN, OP_OUT, OP_READ, OP_WRITE, OP_PCI_READ, OP_PCI_WRITE, OP_DISABLE_PCI, OP_ADD_DMA_PATTERN,
 OP_CLEAR_DMA_PATTERNS, OP_CLOCK_STEP) = range(10)
NUM_OPS = 10
PIO_LIMIT = 0xFFFF
MASKS = {"b": 0xFF, "w": 0xFFFF, "l": 0xFFFFFFFF, "q": 0xFFFFFFFFFFFFFFFF}

# payload layouts of generic_fuzz.c's op structs, x86-64 (little-endian, C padding as "x")
IN_FMT = struct.Struct("<BBH")
OUT_FMT = struct.Struct("<BBHI")
READ_FMT = struct.Struct("<BBxxI")
WRITE_FMT = struct.Struct("<BBxxIQ")
PCI_READ_FMT = struct.Struct("<BBB")
PCI_WRITE_FMT = struct.Struct("<BBBxI")
DMA_FMT = struct.Struct("<BB")


# ----------------------------------------------------------------------------- the encoding

def split_ops(data: bytes) -> list[bytes]:
    """The input cut at every ``FUZZ``, empty pieces dropped (each piece is one op)."""
    return [piece for piece in data.split(SEPARATOR) if piece]


def crossover(data1: bytes, data2: bytes, max_size: int) -> bytes:
    """``generic_fuzz_crossover``: data1, CLEAR_DMA_PATTERNS, DISABLE_PCI, then as much of data2
    as fits in ``max_size``; empty when data1 and the separators do not leave room."""
    if max_size <= len(data1) + len(SEPARATOR) * 3 + 2:
        return b""
    head = data1 + SEPARATOR + bytes([OP_CLEAR_DMA_PATTERNS]) + SEPARATOR + bytes([OP_DISABLE_PCI]) + SEPARATOR
    return head + data2[:max_size - len(head)]


@dataclass(frozen=True)
class Pattern:
    """A DMA pattern: ``data`` repeated, the byte at ``index`` of each repetition increased by
    a running sum that grows by ``stride`` (``pattern_alloc`` in generic_fuzz.c)."""

    index: int
    stride: int
    data: bytes

    def render(self, length: int) -> bytes:
        """The first ``length`` bytes QEMU would write into guest RAM for this pattern."""
        out = bytearray(length)
        total = 0
        n = len(self.data)
        for i in range(length):
            out[i] = self.data[i % n]
            if i % n == self.index:
                out[i] = (out[i] + total) & 0xFF
                total = (total + self.stride) & 0xFF
        return bytes(out)


@dataclass(frozen=True)
class FlatRange:
    """One range of a rendered flat view: ``start``/``size``, the MemoryRegion's name and mtree
    type, and the QOM path that owns it (or is its QOM parent), when the emulator says."""

    start: int
    size: int
    name: str
    kind: str
    owner: str | None = None


@dataclass
class FuzzSpace:
    """What the fuzzer may touch: fuzzable ranges of the I/O and memory flat views, in address
    order, and the devfns of the matched PCI devices (in QEMU's array order)."""

    pio: list[FlatRange]
    mmio: list[FlatRange]
    pci_devfns: list[int] = field(default_factory=list)

    @staticmethod
    def _address(ranges: list[FlatRange], index: int, offset: int) -> tuple[int, int] | None:
        """``get_io_address``: the index-th range (cycling), offset modulo its size; returns the
        address and the bytes left to the range's end."""
        if not ranges:
            return None
        r = ranges[index % len(ranges)]
        offset %= r.size
        return r.start + offset, r.size - offset

    def pio_address(self, index: int, offset: int) -> tuple[int, int] | None:
        """``get_pio_address``: as :meth:`_address`, but nothing above port 0xffff."""
        found = self._address(self.pio, index, offset)
        return found if found is not None and found[0] <= PIO_LIMIT else None

    def mmio_address(self, index: int, offset: int) -> tuple[int, int] | None:
        """``get_mmio_address``."""
        return self._address(self.mmio, index, offset)


@dataclass
class Decoder:
    """Turns one input into qtest command lines, keeping the per-input state generic_fuzz.c
    keeps (DMA patterns and their round-robin pointer, whether PCI ops are disabled)."""

    space: FuzzSpace
    patterns: list[Pattern] = field(default_factory=list)
    pattern_index: int = 0
    pci_disabled: bool = False

    def decode(self, data: bytes) -> tuple[list[str], int]:
        """The command lines of ``data`` and its number of ops; resets the state first, as QEMU
        does at the start of every input."""
        self.start_input()
        lines: list[str] = []
        pieces = split_ops(data)
        for piece in pieces:
            lines += self.op(piece[0] % NUM_OPS, piece[1:])
        return lines, len(pieces)

    def start_input(self) -> None:
        """The state at the start of an input: no patterns, PCI ops enabled."""
        self.patterns.clear()
        self.pattern_index = 0
        self.pci_disabled = False

    def op(self, opcode: int, payload: bytes) -> list[str]:
        """The command lines of one op (none when its payload is too short or it is a no-op)."""
        handlers: dict[int, Callable[[bytes], list[str]]] = {
            OP_IN: self._in, OP_OUT: self._out, OP_READ: self._read, OP_WRITE: self._write,
            OP_PCI_READ: self._pci_read, OP_PCI_WRITE: self._pci_write,
            OP_DISABLE_PCI: self._disable_pci, OP_ADD_DMA_PATTERN: self._add_dma_pattern,
            OP_CLEAR_DMA_PATTERNS: self._clear_dma_patterns, OP_CLOCK_STEP: lambda _: ["clock_step"],
        }
        return handlers[opcode](payload)

    def _in(self, p: bytes) -> list[str]:
        return self._access(p, IN_FMT, self.space.pio_address, "bwl", "in")

    def _out(self, p: bytes) -> list[str]:
        return self._access(p, OUT_FMT, self.space.pio_address, "bwl", "out")

    def _read(self, p: bytes) -> list[str]:
        return self._access(p, READ_FMT, self.space.mmio_address, "bwlq", "read")

    def _write(self, p: bytes) -> list[str]:
        return self._access(p, WRITE_FMT, self.space.mmio_address, "bwlq", "write")

    @staticmethod
    def _access(p: bytes, fmt: struct.Struct, lookup: Callable[[int, int], tuple[int, int] | None],
                widths: str, cmd: str) -> list[str]:
        """IN/OUT/READ/WRITE: (size, region index, offset[, value]) -> one command, or none when
        the payload is short or the range has no room for the width."""
        if len(p) < fmt.size:
            return []
        size, base, offset, *value = fmt.unpack_from(p)
        found = lookup(base, offset)
        width = _width(widths, size, found)
        if found is None or width is None:
            return []
        operand = f" {value[0] & MASKS[width]:#x}" if value else ""
        return [f"{cmd}{width} {found[0]:#x}{operand}"]

    def _pci_select(self, base: int, offset: int) -> str:
        devfn = self.space.pci_devfns[base % len(self.space.pci_devfns)]
        return pci_select_line(devfn, offset)

    def _pci_read(self, p: bytes) -> list[str]:
        if len(p) < PCI_READ_FMT.size or not self.space.pci_devfns or self.pci_disabled:
            return []
        size, base, offset = PCI_READ_FMT.unpack_from(p)
        return [self._pci_select(base, offset), f"in{'bwl'[size % 3]} {CONFIG_DATA_PORT:#x}"]

    def _pci_write(self, p: bytes) -> list[str]:
        if len(p) < PCI_WRITE_FMT.size or not self.space.pci_devfns or self.pci_disabled:
            return []
        size, base, offset, value = PCI_WRITE_FMT.unpack_from(p)
        width = "bwl"[size % 3]
        return [self._pci_select(base, offset), f"out{width} {CONFIG_DATA_PORT:#x} {value & MASKS[width]:#x}"]

    def _disable_pci(self, p: bytes) -> list[str]:
        self.pci_disabled = True
        return []

    def _add_dma_pattern(self, p: bytes) -> list[str]:
        if len(p) < DMA_FMT.size + 1:
            return []
        index, stride = DMA_FMT.unpack_from(p)
        data = p[DMA_FMT.size:]
        self.patterns.append(Pattern(index % len(data), stride, data))
        return []  # delivered only in process (see the module docstring)

    def _clear_dma_patterns(self, p: bytes) -> list[str]:
        self.patterns.clear()
        self.pattern_index = 0
        return []


def pci_select_line(devfn: int, offset: int) -> str:
    """The qtest command that points the host bridge's CONFIG_ADDRESS at ``offset`` of ``devfn``."""
    return f"outl {CONFIG_ADDR_PORT:#x} {config_address(devfn, offset):#x}"


def _width(widths: str, size: int, found: tuple[int, int] | None) -> str | None:
    """The access width ``size`` selects (``size % len(widths)``), or None when the range has
    fewer bytes left than that width."""
    if found is None:
        return None
    width = widths[size % len(widths)]
    return width if found[1] >= {"b": 1, "w": 2, "l": 4, "q": 8}[width] else None


# ----------------------------------------------------------------------------- reply oracle

_OK_HEX = re.compile(r"OK 0x([0-9a-f]+)")


def check_reply(command: str, reply: str, clock: list[int]) -> str | None:
    """None when ``reply`` is exactly what QEMU's qtest server answers to ``command``
    (``in*``: ``OK 0x%04x``; ``read*``: ``OK 0x%016x``, both within the access width;
    ``out*``/``write*`` (and a DMA fill's ``write``): ``OK``; ``clock_step``: ``OK <ns>``, never
    going back), else why not. ``clock`` holds the last clock value seen (updated)."""
    verb = command.split(" ", 1)[0]
    if verb == "clock_step":
        m = re.fullmatch(r"OK (0|[1-9][0-9]*)", reply)
        if m is None:
            return f"bad reply {reply[:80]!r} to {command!r}"
        if clock and int(m.group(1)) < clock[0]:
            return f"clock went back from {clock[0]} to {m.group(1)}"
        clock[:] = [int(m.group(1))]
        return None
    if verb[:-1] in ("out", "write") or verb == "write":  # ``write A L 0xHEX``: a DMA fill
        return None if reply == "OK" else f"bad reply {reply[:80]!r} to {command!r}"
    m = _OK_HEX.fullmatch(reply)
    digits = 4 if verb[:-1] == "in" else 16
    if m is None or int(m.group(1), 16) > MASKS[verb[-1]] or reply != f"OK 0x{int(m.group(1), 16):0{digits}x}":
        return f"bad reply {reply[:80]!r} to {command!r}"
    return None


def check_replies(commands: Sequence[str], replies: Sequence[str]) -> str | None:
    """The first broken reply of a pipelined batch, or None."""
    clock: list[int] = []
    for command, reply in zip(commands, replies):
        problem = check_reply(command, reply, clock)
        if problem is not None:
            return problem
    return None


# ----------------------------------------------------------------------------- input generation

OP_WEIGHTS = (3, 3, 3, 3, 1, 1, 0.1, 0.4, 0.2, 1)
MAX_INPUT = 4096  # libFuzzer's default -max_len
_PAYLOADS: dict[int, struct.Struct] = {OP_IN: IN_FMT, OP_OUT: OUT_FMT, OP_READ: READ_FMT, OP_WRITE: WRITE_FMT,
                                       OP_PCI_READ: PCI_READ_FMT, OP_PCI_WRITE: PCI_WRITE_FMT}


def _value(rng: random.Random, bits: int) -> int:
    """A value biased towards the ones devices treat specially."""
    kind = rng.randrange(5)
    if kind == 0:
        return rng.choice((0, (1 << bits) - 1))
    if kind == 1:
        return rng.randrange(16)
    if kind == 2:
        return 1 << rng.randrange(bits)
    return rng.getrandbits(bits)


def _payload(rng: random.Random, op: int) -> bytes:
    """A well-formed payload for ``op``: size selector, region index, an offset (mostly near
    the start of the range), a value; padding bytes random, as a byte fuzzer leaves them."""
    if op == OP_ADD_DMA_PATTERN:
        return bytes([rng.randrange(256), rng.randrange(256)]) + rng.randbytes(rng.randint(1, 16))
    fmt = _PAYLOADS.get(op)
    if fmt is None:
        return b""
    raw = bytearray(rng.randbytes(fmt.size))
    raw[0] = rng.randrange(256)
    if op in (OP_IN, OP_OUT):
        struct.pack_into("<H", raw, 2, rng.randrange(16) if rng.random() < 0.7 else rng.getrandbits(16))
    elif op in (OP_READ, OP_WRITE):
        struct.pack_into("<I", raw, 4, rng.randrange(64) if rng.random() < 0.7 else rng.getrandbits(32))
    if op == OP_OUT:
        struct.pack_into("<I", raw, 4, _value(rng, 32))
    elif op == OP_WRITE:
        struct.pack_into("<Q", raw, 8, _value(rng, 64))
    elif op == OP_PCI_WRITE:
        struct.pack_into("<I", raw, 4, _value(rng, 32))
    return bytes(raw)


def generate_input(rng: random.Random, max_ops: int = 64) -> bytes:
    """A random input in the encoding: 1..max_ops ops, now and then a truncated or extended
    payload (the decoder must ignore or skip the extra bytes)."""
    pieces = []
    for _ in range(rng.randint(1, max_ops)):
        op = rng.choices(range(NUM_OPS), OP_WEIGHTS)[0]
        payload = _payload(rng, op)
        if rng.random() < 0.05:
            payload = payload[:rng.randrange(len(payload) + 1)]
        elif rng.random() < 0.05:
            payload += rng.randbytes(rng.randint(1, 8))
        pieces.append(bytes([op + NUM_OPS * rng.randrange(25)]) + payload)
    return SEPARATOR.join(pieces)[:MAX_INPUT]
