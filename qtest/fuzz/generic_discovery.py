"""Discovery for the ``qtest`` fuzz target: what a running emulator lets the fuzzer touch.

This module owns finding the fuzzable ranges (QMP ``info mtree -f -o``, ``qom-list`` of
``/machine``, ``qom-list-types``, ``qom-get addr``), with ``--objects`` glob patterns matched as
QEMU_FUZZ_OBJECTS does (RAM and ROM are never fuzzed), and libqos's PCI set-up of the matched
devices (BARs mapped, I/O, memory and bus mastering enabled). It talks to the emulator only
through the QMP and qtest clients it is given; it must not import the fuzz target modules.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from emu.devices.pci import CONFIG_DATA_PORT
from qtest.client import QTestClient
from qtest.fuzz.generic_ops import FlatRange, FuzzSpace, pci_select_line
from qtest.machine import QMPConnection, QMPError

# libqos's pc PCI bus: where qpci_iomap places I/O and memory BARs
PIO_ALLOC_START, PIO_ALLOC_LIMIT = 0xC000, 0x10000
MMIO_ALLOC_START, MMIO_ALLOC_LIMIT = 0xE0000000, 0x100000000
FUZZABLE_TYPES = ("i/o", "romd")  # mtree type column; ram, rom and ram device are never fuzzed

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
        self._cmd(pci_select_line(devfn, offset))

    def _read(self, devfn: int, offset: int, width: str) -> int:
        self._select(devfn, offset)
        return self._cmd(f"in{width} {CONFIG_DATA_PORT:#x}")

    def _write(self, devfn: int, offset: int, width: str, value: int) -> None:
        self._select(devfn, offset)
        self._cmd(f"out{width} {CONFIG_DATA_PORT:#x} {value:#x}")

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
