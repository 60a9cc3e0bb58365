"""Generic qtest fuzzer: QEMU's generic-fuzz input encoding run against a live emulator process.

This module owns the ``qtest`` fuzz target (``python -m qtest.fuzz qtest ...``):

* the byte encoding of ``tests/qtest/fuzz/generic_fuzz.c`` (``spec/qtest-protocol.md`` §11): ops
  separated by ``FUZZ``, opcode = first byte % 10, payloads read in x86-64 C layout (padding
  included), region index cycling over the fuzzable flat ranges, offset modulo the range,
  access width capped by the bytes left in the range, PIO addresses above 0xffff skipped, PCI
  config ops through 0xcf8/0xcfc, DMA-pattern state and libFuzzer-style crossover;
* discovery of the fuzzable ranges from the running emulator (QMP ``info mtree -f -o``,
  ``qom-list`` of ``/machine``, ``qom-list-types``, ``qom-get addr``), with ``--objects`` glob
  patterns matched as QEMU_FUZZ_OBJECTS does; RAM and ROM are never fuzzed;
* the oracles: the process stays alive and prints no traceback, every reply has the exact form
  QEMU's qtest server gives that command, a reply arrives within ``--timeout`` seconds, and the
  peak RSS (VmHWM) stays under ``--rss-limit-mib``;
* reproducers: the qtest trace of an input (plain commands, one per line), replayed and
  minimised in a fresh ``-qtest stdio`` process.

DMA patterns (ops 7 and 8) are parsed and kept exactly as QEMU keeps them. Their data reaches
devices only with ``--in-process`` (:mod:`qtest.fuzz.inprocess`): QEMU fills guest RAM from inside
the process just before a device reads it, which a fuzzer in another process cannot see.
"""
from __future__ import annotations

import argparse
import atexit
import os
import queue
import random
import re
import shlex
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from qtest.client import QTestClient
from qtest.fuzz.common import Finding, peak_rss_kib
from qtest.machine import QMPConnection, QMPError, QTestMachine, default_binary

SEPARATOR = b"FUZZ"
(OP_IN, OP_OUT, OP_READ, OP_WRITE, OP_PCI_READ, OP_PCI_WRITE, OP_DISABLE_PCI, OP_ADD_DMA_PATTERN,
 OP_CLEAR_DMA_PATTERNS, OP_CLOCK_STEP) = range(10)
NUM_OPS = 10
PCI_HOST_BRIDGE_CFG = 0xCF8
PCI_HOST_BRIDGE_DATA = 0xCFC
PIO_LIMIT = 0xFFFF
# libqos's pc PCI bus: where qpci_iomap places I/O and memory BARs
PIO_ALLOC_START, PIO_ALLOC_LIMIT = 0xC000, 0x10000
MMIO_ALLOC_START, MMIO_ALLOC_LIMIT = 0xE0000000, 0x100000000
FUZZABLE_TYPES = ("i/o", "romd")  # mtree type column; ram, rom and ram device are never fuzzed
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
        return f"outl {PCI_HOST_BRIDGE_CFG:#x} {(1 << 31) | (devfn << 8) | offset:#x}"

    def _pci_read(self, p: bytes) -> list[str]:
        if len(p) < PCI_READ_FMT.size or not self.space.pci_devfns or self.pci_disabled:
            return []
        size, base, offset = PCI_READ_FMT.unpack_from(p)
        return [self._pci_select(base, offset), f"in{'bwl'[size % 3]} {PCI_HOST_BRIDGE_DATA:#x}"]

    def _pci_write(self, p: bytes) -> list[str]:
        if len(p) < PCI_WRITE_FMT.size or not self.space.pci_devfns or self.pci_disabled:
            return []
        size, base, offset, value = PCI_WRITE_FMT.unpack_from(p)
        width = "bwl"[size % 3]
        return [self._pci_select(base, offset), f"out{width} {PCI_HOST_BRIDGE_DATA:#x} {value & MASKS[width]:#x}"]

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


# ----------------------------------------------------------------------------- discovery

_RANGE = re.compile(r"\s+([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, ([^)]*)\): (.*)")
_REST = re.compile(r"(?P<name>.*?)(?: @[0-9a-f]+)?(?: \[disabled\])?"
                   r"(?: (?:owner|parent):\{(?:dev|obj)(?: id=[^ }]*)?(?: path=(?P<path>[^}]*))?\})?")


def parse_flat_views(text: str) -> dict[str, list[FlatRange]]:
    """``info mtree -f [-o]`` output: the ranges of each address space, by AS name. Owner paths
    are filled in when the output has them (``-o``, as QEMU prints it)."""
    views: dict[str, list[FlatRange]] = {}
    current: list[FlatRange] = []
    for line in text.splitlines():
        if line.startswith("FlatView #"):
            current = []
        elif m := re.match(r' AS "([^"]*)"', line):
            views[m.group(1)] = current
        elif m := _RANGE.fullmatch(line):
            start, last = int(m.group(1), 16), int(m.group(2), 16)
            rest = _REST.fullmatch(m.group(4))
            assert rest is not None  # every tail matches: all of its groups are optional
            current.append(FlatRange(start, last - start + 1, rest.group("name"), m.group(3), rest.group("path")))
    return views


def glob_match(pattern: str, text: str) -> bool:
    """``g_pattern_match_simple``: ``*`` and ``?`` wildcards, everything else literal."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None


def qom_objects(qmp: QMPConnection, root: str = "/machine") -> list[tuple[str, str]]:
    """(path, type) of every object under ``root``, depth first in qom-list order; IRQs and
    MemoryRegions are not walked (regions are matched through the flat views)."""
    found: list[tuple[str, str]] = []
    for prop in qmp.cmd("qom-list", {"path": root}):
        m = re.fullmatch(r"child<(.*)>", prop["type"])
        if m is None or m.group(1) in ("irq", "memory-region"):
            continue
        path = f"{root}/{prop['name']}"
        found.append((path, m.group(1)))
        found += qom_objects(qmp, path)
    return found


def select_ranges(ranges: list[FlatRange], patterns: list[str], matched: list[str]) -> list[FlatRange]:
    """The fuzzable ranges: not RAM/ROM, and either named by a pattern or owned by (a QOM
    descendant of) a matched object."""
    def wanted(r: FlatRange) -> bool:
        if r.kind not in FUZZABLE_TYPES:
            return False
        if any(glob_match(p, r.name.lower()) for p in patterns):
            return True
        return r.owner is not None and any(r.owner == m or r.owner.startswith(m + "/") for m in matched)
    return [r for r in ranges if wanted(r)]


def pci_devices(qmp: QMPConnection, objects: list[tuple[str, str]], patterns: list[str]) -> list[str]:
    """QOM paths of the matched PCI devices in QEMU's order (per pattern, walk order; a device
    matched again is moved the way ``g_ptr_array_remove_fast`` + ``add`` move it)."""
    try:
        pci_types = {t["name"] for t in qmp.cmd("qom-list-types", {"implements": "pci-device"})}
    except QMPError:
        return []
    found: list[str] = []
    for pattern in patterns:
        for path, type_name in objects:
            if type_name in pci_types and glob_match(pattern, type_name.lower()):
                if path in found:
                    i = found.index(path)
                    found[i] = found[-1]
                    found.pop()
                found.append(path)
    return found


@dataclass
class Matched:
    """What ``--objects`` selects before any range is known: the matched QOM objects, the
    patterns (lower case), the matched PCI devices' devfns, and warnings for the user."""

    patterns: list[str]
    objects: list[str]
    pci_devfns: list[int]
    warnings: list[str]


def match_objects(qmp: QMPConnection, patterns: list[str]) -> Matched:
    """Matches the patterns against the QOM types under ``/machine`` and finds the devfns
    (QOM property ``addr``) of the matched PCI devices."""
    patterns = [p.lower() for p in patterns]
    objects = qom_objects(qmp)
    matched = Matched(patterns, [path for path, t in objects if any(glob_match(p, t.lower()) for p in patterns)],
                      [], [])
    for path in pci_devices(qmp, objects, patterns):
        try:
            matched.pci_devfns.append(int(qmp.cmd("qom-get", {"path": path, "property": "addr"})))
        except QMPError as e:
            matched.warnings.append(f"PCI device {path}: no devfn ({e}); its config space and BARs are not fuzzed")
    return matched


def fuzz_space(qmp: QMPConnection, matched: Matched) -> FuzzSpace:
    """The fuzzable ranges of the current flat views (``info mtree -f -o``)."""
    views = parse_flat_views(qmp.cmd("human-monitor-command", {"command-line": "info mtree -f -o"}))
    if not any(r.owner for rs in views.values() for r in rs):
        matched.warnings.append("`info mtree -f -o` shows no owners: --objects matches MemoryRegion names only")
    return FuzzSpace(select_ranges(views.get("I/O", []), matched.patterns, matched.objects),
                     select_ranges(views.get("memory", []), matched.patterns, matched.objects),
                     list(matched.pci_devfns))


class PciSetup:
    """libqos's per-input PCI set-up (``qpci_device_find``, ``qpci_iomap`` of every BAR,
    ``qpci_device_enable``), run once interactively; its command lines are replayed before
    every input."""

    def __init__(self, client: QTestClient) -> None:
        self.client = client
        self.lines: list[str] = []
        self.pio_next, self.mmio_next = PIO_ALLOC_START, MMIO_ALLOC_START

    def _cmd(self, line: str) -> int:
        self.lines.append(line)
        reply = self.client.cmd(line)
        return int(reply[3:], 16) if reply.startswith("OK 0x") else 0

    def _select(self, devfn: int, offset: int) -> None:
        self._cmd(f"outl {PCI_HOST_BRIDGE_CFG:#x} {(1 << 31) | (devfn << 8) | offset:#x}")

    def _read(self, devfn: int, offset: int, width: str) -> int:
        self._select(devfn, offset)
        return self._cmd(f"in{width} {PCI_HOST_BRIDGE_DATA:#x}")

    def _write(self, devfn: int, offset: int, width: str, value: int) -> None:
        self._select(devfn, offset)
        self._cmd(f"out{width} {PCI_HOST_BRIDGE_DATA:#x} {value:#x}")

    def _map_bar(self, devfn: int, bar: int) -> bool:
        """``qpci_iomap``: size probe, then an address from the bus's allocator; returns whether
        the BAR is the low half of a 64-bit memory BAR (whose high half libqos leaves alone)."""
        reg = 0x10 + 4 * bar
        self._write(devfn, reg, "l", 0xFFFFFFFF)
        raw = self._read(devfn, reg, "l")
        is_io = bool(raw & 1)
        mask = raw & (~0x3 if is_io else ~0xF) & 0xFFFFFFFF
        if mask == 0:
            return False  # no BAR here (QEMU knows in-process and does not probe it)
        size = mask & -mask
        start, limit = (self.pio_next, PIO_ALLOC_LIMIT) if is_io else (self.mmio_next, MMIO_ALLOC_LIMIT)
        loc = (start + size - 1) // size * size
        if loc + size > limit:
            return False  # libqos would assert: the window is full
        if is_io:
            self.pio_next = loc + size
            self._write(devfn, reg, "l", loc | 1)
        else:
            self.mmio_next = loc + size
            self._write(devfn, reg, "l", loc)
        return not is_io and (raw >> 1) & 3 == 2

    def map_device(self, devfn: int) -> None:
        """Finds the device, maps each BAR that answers a size probe, enables I/O, memory and
        bus mastering."""
        if self._read(devfn, 0, "w") == 0xFFFF:
            return
        bar = 0
        while bar < 6:
            bar += 2 if self._map_bar(devfn, bar) else 1
        command = self._read(devfn, 4, "w")
        self._write(devfn, 4, "w", command | 0x7)
        self._read(devfn, 4, "w")


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


# ----------------------------------------------------------------------------- fresh-process replay

def replay(argv: Sequence[str], commands: Sequence[str], timeout: float, rss_limit_kib: int) -> tuple[str, str] | None:
    """Replays a trace on the stdin of a fresh ``-qtest stdio`` process (followed by
    ``endianness``, which must answer ``OK little``); returns (kind, message) of what it shows,
    or None. The input stays open, as with a ``< file`` replay (the emulator keeps running)."""
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: queue.Queue[str | None] = queue.Queue()
    err = bytearray()
    payload = "".join(c + "\n" for c in [*commands, "endianness"]).encode()
    threads = [threading.Thread(target=_feed, args=(proc.stdin, payload), daemon=True),
               threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True),
               threading.Thread(target=_collect, args=(proc.stderr, err), daemon=True)]
    for t in threads:
        t.start()
    try:
        outcome = _await_replies(proc, commands, lines, timeout)
        rss = peak_rss_kib(proc.pid)
    finally:
        proc.kill()
        proc.wait()
        for t in threads:
            t.join(timeout)
    if b"Traceback" in err:
        return "crash", "traceback on stderr: " + err.decode(errors="replace").strip().splitlines()[-1][:200]
    if outcome is None and rss > rss_limit_kib:
        return "memory", f"peak RSS {rss / 1024:.1f} MiB over the {rss_limit_kib / 1024:g} MiB bound"
    return outcome


def _feed(pipe: IO[bytes] | None, data: bytes) -> None:
    assert pipe is not None
    try:
        pipe.write(data)
        pipe.flush()
    except OSError:
        pass  # the process died: the reader sees its end


def _read_lines(pipe: IO[bytes] | None, out: queue.Queue[str | None]) -> None:
    assert pipe is not None
    for line in pipe:
        out.put(line.decode(errors="replace").rstrip("\n"))
    out.put(None)


def _collect(pipe: IO[bytes] | None, out: bytearray) -> None:
    assert pipe is not None
    while chunk := pipe.read1(1 << 16):  # type: ignore[attr-defined]
        out += chunk


def _await_replies(proc: subprocess.Popen[bytes], commands: Sequence[str], lines: queue.Queue[str | None],
                   timeout: float) -> tuple[str, str] | None:
    """Reads one reply per command plus the final ``endianness`` one and judges them."""
    replies: list[str] = []
    while len(replies) <= len(commands):
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            return "hang", f"no reply to {([*commands, 'endianness'])[len(replies)]!r} within {timeout:g} s"
        if line is None:
            status = proc.wait(timeout)
            return "crash", f"the emulator exited with status {status} after {len(replies)} replies"
        if not line.startswith("IRQ "):
            replies.append(line)
    problem = check_replies(commands, replies)
    if problem is None and replies[-1] != "OK little":
        problem = f"the server stopped serving: {replies[-1][:80]!r} to 'endianness'"
    return None if problem is None else ("invariant", problem)


def reduce_lines(lines: list[str], still_fails: Callable[[list[str]], bool], deadline: float,
                 max_trials: int = 200) -> list[str]:
    """Removes chunks of lines (halving the chunk size down to one line) while the trace still
    fails, within ``deadline`` (a ``time.monotonic()`` value) and ``max_trials`` replays."""
    trials = 0
    chunk = max(1, len(lines) // 2)
    while trials < max_trials and time.monotonic() < deadline:
        i = 0
        while i < len(lines) and trials < max_trials and time.monotonic() < deadline:
            candidate = lines[:i] + lines[i + chunk:]
            trials += 1
            if candidate and still_fails(candidate):
                lines = candidate
            else:
                i += chunk
        if chunk == 1:
            break
        chunk //= 2
    return lines


# ----------------------------------------------------------------------------- the target

class GenericFuzzTarget:
    """The ``qtest`` fuzz target: a long-running ``-accel qtest`` emulator, reset with QMP
    ``system_reset`` after every input and restarted after every finding."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.binary: str = args.binary
        self.machine_args = ["-M", args.machine, *shlex.split(args.args)]
        self.patterns: list[str] = args.objects.split()
        self.timeout: float = args.timeout
        self.rss_limit_kib = int(args.rss_limit_mib * 1024)
        self.minimise_time: float = args.minimise_time
        self.machine: QTestMachine | None = None
        self.space: FuzzSpace | None = None
        self.setup_lines: list[str] = []
        self.decoder: Decoder | None = None
        self.inputs = self.ops = self.commands = self.restarts = 0
        self.peak_rss_kib = 0
        self.pool: list[bytes] = []
        self.started = time.monotonic()
        self._stderr_seen = 0
        self._start()

    def replay_argv(self, quiet: bool = True) -> list[str]:
        """The command line a trace replays with (``-qtest stdio``, input on stdin)."""
        log = ["-qtest-log", "/dev/null"] if quiet else []
        return [self.binary, *self.machine_args, "-display", "none", "-accel", "qtest", "-qtest", "stdio", *log]

    def _start(self) -> None:
        self.machine = QTestMachine(self.binary, self.machine_args, accel_qtest=True, io_timeout=self.timeout)
        self._stderr_seen = 0
        if self.space is not None:
            return
        # BARs first: the ranges are those of the flat view the set-up leaves (BARs mapped)
        matched = match_objects(self.machine.qmp, self.patterns)
        setup = PciSetup(self.machine.qtest)
        for devfn in matched.pci_devfns:
            setup.map_device(devfn)
        space = fuzz_space(self.machine.qmp, matched)
        for warning in matched.warnings:
            sys.stderr.write(f"[qtest] warning: {warning}\n")
        if not space.pio and not space.mmio:
            self.machine.kill()
            raise SystemExit(f"No fuzzable memory regions found for --objects {' '.join(self.patterns)!r}")
        self.space, self.setup_lines, self.decoder = space, setup.lines, Decoder(space)
        self._reset()

    def _reset(self) -> None:
        assert self.machine is not None
        self.machine.qmp.cmd("system_reset")
        self.machine.qmp.wait_event("RESET", timeout=self.timeout)
        self.machine.qmp.clear_events()

    def _restart(self) -> None:
        if self.machine is not None:
            self.machine.kill()
        self.restarts += 1
        self._start()

    def generate(self, rng: random.Random) -> bytes:
        """A random input in QEMU's generic-fuzz encoding; one in ten is the crossover of an
        earlier input and a new one, as libFuzzer's custom crossover builds them."""
        data = generate_input(rng)
        if self.pool and rng.random() < 0.1:
            data = crossover(rng.choice(self.pool), data, MAX_INPUT) or data
        if len(self.pool) < 64:
            self.pool.append(data)
        else:
            self.pool[rng.randrange(64)] = data
        return data

    def trace(self, data: bytes) -> list[str]:
        """The qtest commands an input sends: the PCI set-up, then its ops."""
        assert self.decoder is not None
        return self.setup_lines + self.decoder.decode(data)[0]

    def run_one(self, data: bytes) -> Finding | None:
        """Runs one input, then resets the machine; a finding restarts the emulator."""
        assert self.decoder is not None
        lines, ops = self.decoder.decode(data)
        commands = self.setup_lines + lines
        self.inputs += 1
        self.ops += ops
        self.commands += len(commands)
        found = self._execute(commands)
        if found is None:
            return None
        self._restart()
        return self._finding(found[0], found[1], commands)

    def _execute(self, commands: list[str]) -> tuple[str, str] | None:
        machine = self.machine
        assert machine is not None
        try:
            problem = check_replies(commands, machine.qtest.pipeline(commands))
            if problem is not None:
                return "invariant", problem
            self._reset()
        except TimeoutError:
            return "hang", f"no reply within {self.timeout:g} s"
        except (ConnectionError, OSError, QMPError) as e:
            try:  # the connection closes a moment before the process can be reaped
                status = machine.wait(timeout=min(self.timeout, 5.0), check=False)
            except subprocess.TimeoutExpired:
                return "invariant", f"the server stopped serving: {e}"
            return "crash", f"the emulator exited with status {status}: {_last_line(machine.stderr_text())}"
        err = machine.stderr_text()
        new, self._stderr_seen = err[self._stderr_seen:], len(err)
        if "Traceback" in new:
            return "crash", "traceback on stderr: " + _last_line(new)
        rss = peak_rss_kib(machine.pid)
        self.peak_rss_kib = max(self.peak_rss_kib, rss)
        if rss > self.rss_limit_kib:
            return "memory", f"peak RSS {rss / 1024:.1f} MiB over the {self.rss_limit_kib / 1024:g} MiB bound"
        return None

    def _finding(self, kind: str, message: str, commands: list[str]) -> Finding:
        return Finding(kind, message, "".join(c + "\n" for c in commands).encode(), ".qtest",
                       shlex.join(self.replay_argv(quiet=False)) + " < THIS_FILE.qtest")

    def minimise(self, data: bytes, finding: Finding) -> Finding:
        """Replays the trace in a fresh ``-qtest stdio`` process and removes lines while the
        same kind of finding persists (at most ``--minimise-time`` seconds)."""
        lines = finding.reproducer.decode().splitlines()
        first = replay(self.replay_argv(), lines, self.timeout, self.rss_limit_kib)
        if first is None or first[0] != finding.kind:
            note = f"not reproduced by a fresh -qtest stdio replay (that gave {first}); trace not minimised"
            return Finding(finding.kind, f"{finding.message} [{note}]", finding.reproducer, finding.suffix,
                           finding.replay)

        def still_fails(candidate: list[str]) -> bool:
            got = replay(self.replay_argv(), candidate, self.timeout, self.rss_limit_kib)
            return got is not None and got[0] == finding.kind

        small = reduce_lines(lines, still_fails, time.monotonic() + self.minimise_time)
        return Finding(finding.kind, f"{finding.message} (trace minimised from {len(lines)} to {len(small)} lines)",
                       "".join(c + "\n" for c in small).encode(), finding.suffix, finding.replay)

    def close(self) -> None:
        """Stops the emulator and prints this worker's totals (ops, commands, peak RSS)."""
        if self.machine is not None:
            self.machine.quit(check=False)
            self.machine = None
        elapsed = max(time.monotonic() - self.started, 1e-6)
        sys.stderr.write(f"\n[qtest] worker {os.getpid()}: {self.inputs} inputs, {self.ops} ops "
                         f"({self.ops / elapsed:.0f} ops/s), {self.commands} qtest commands, "
                         f"{self.restarts} restarts, emulator peak RSS {self.peak_rss_kib // 1024} MiB\n")


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1][:200] if lines else "(no stderr)"


# ----------------------------------------------------------------------------- entry points

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``qtest`` target (the common ones come from :mod:`qtest.fuzz.common`)."""
    parser.add_argument("--machine", default="pc", help="machine type (-M)")
    parser.add_argument("--args", default="", help='extra emulator arguments, e.g. --args="-device sb16"')
    parser.add_argument("--objects", default="*",
                        help="space-separated globs for QOM type names and MemoryRegion names (QEMU_FUZZ_OBJECTS)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds without a reply that make a hang")
    parser.add_argument("--rss-limit-mib", type=float, default=1024, help="emulator peak RSS bound (VmHWM)")
    parser.add_argument("--minimise-time", type=float, default=60, help="seconds spent minimising each finding")
    parser.add_argument("--in-process", action="store_true",
                        help="run the machine in the fuzz worker, answering device DMA with the input's patterns")
    parser.add_argument("--avoid-double-fetch", action="store_true",
                        help="with --in-process: fill the parts of a DMA read around ranges already filled since "
                             "the last op (QEMU_AVOID_DOUBLE_FETCH)")


def make_target(args: argparse.Namespace) -> GenericFuzzTarget:
    """The target the runner's workers use (in process with ``--in-process``)."""
    if getattr(args, "in_process", False):
        from qtest.fuzz.inprocess import InProcessFuzzTarget

        return InProcessFuzzTarget(args)
    return GenericFuzzTarget(args)


def default_args(**overrides: Any) -> argparse.Namespace:
    """The target's options at their defaults (binary: ``$QTEST_QEMU_BINARY`` or
    ``emu-system-x86_64``), with ``overrides``."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    args.binary = default_binary()
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


_shared: GenericFuzzTarget | None = None


def fuzz_one_input(data: bytes) -> None:
    """Runs one input on a shared emulator (started on first use, default options); raises
    AssertionError with the finding and its qtest trace. For hypothesis and atheris."""
    global _shared
    if _shared is None:
        _shared = make_target(default_args())
        atexit.register(close_shared)
    finding = _shared.run_one(data)
    if finding is not None:
        raise AssertionError(f"{finding.kind}: {finding.message}\nqtest trace:\n{finding.reproducer.decode()}")


def close_shared() -> None:
    """Stops the emulator :func:`fuzz_one_input` uses (it restarts on the next call)."""
    global _shared
    if _shared is not None:
        _shared.close()
        _shared = None


def atheris_main(argv: list[str]) -> int:
    """``python -m qtest.fuzz.generic [libFuzzer options]``: the optional atheris backend. It runs
    the machine in process (``--in-process``), so coverage covers the emulator and DMA patterns
    are delivered."""
    global _shared
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        sys.stderr.write("atheris is not installed (pip install '.[fuzz]'): the atheris backend is unavailable\n")
        return 1
    _shared = make_target(default_args(in_process=True))
    atexit.register(close_shared)
    atheris.instrument_all()  # the emulator's modules are loaded now: their coverage guides
    atheris.Setup(argv, fuzz_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(atheris_main(sys.argv))
