"""The memory model: a MemoryRegion tree flattened into a FlatView that the C core dispatches.

Follows the shape of QEMU's memory API: RAM, ROM, MMIO/IO (device ops with access-size rules),
aliases and containers, with subregion priorities. A flat view is the sorted list of visible,
non-overlapping ranges; it is compiled into a C table so that RAM and ROM accesses never enter
Python. Only MMIO ranges come back here, to the owning device's ops.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

from emu._native import ffi, lib
from emu.ram import RamBlock

ADDR_SPACE_END = 1 << 64
_ADDR_MASK = ADDR_SPACE_END - 1
_MAX_CHUNK = (1 << 62)


class MemoryOps(Protocol):
    """What an MMIO/IO region's owner implements. Values are little-endian integers."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, value: int, size: int) -> None: ...


class AccessRules:
    """QEMU's ``valid`` (what the bus accepts) and ``impl`` (what the callbacks handle) sizes."""

    __slots__ = ("valid_min", "valid_max", "valid_unaligned", "impl_min", "impl_max", "impl_unaligned")

    def __init__(self, valid_min: int = 1, valid_max: int = 4, valid_unaligned: bool = False, impl_min: int = 1,
                 impl_max: int = 4, impl_unaligned: bool = False) -> None:
        self.valid_min, self.valid_max, self.valid_unaligned = valid_min, valid_max, valid_unaligned
        self.impl_min, self.impl_max, self.impl_unaligned = impl_min, impl_max, impl_unaligned


class CallbackOps:
    """MemoryOps built from two callables, with access-size rules."""

    __slots__ = ("read_fn", "write_fn", "rules")

    def __init__(self, read_fn: Callable[[int, int], int], write_fn: Callable[[int, int, int], None],
                 rules: AccessRules | None = None) -> None:
        self.read_fn, self.write_fn = read_fn, write_fn
        self.rules = rules or AccessRules()

    def read(self, offset: int, size: int) -> int:
        return self.read_fn(offset, size)

    def write(self, offset: int, value: int, size: int) -> None:
        self.write_fn(offset, value, size)


class MemoryRegion:
    """A node of the memory tree. Use the ``ram``/``rom``/``io``/``alias``/``container`` constructors."""

    KINDS = ("container", "ram", "rom", "io", "alias")

    def __init__(self, name: str, size: int, kind: str) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown region kind {kind!r}")
        if not 0 < size <= ADDR_SPACE_END:
            raise ValueError(f"region {name!r}: size must be in 1..2^64")
        self.name = name
        self.size = size
        self.kind = kind
        self.enabled = True
        self.parent: MemoryRegion | None = None
        self.addr = 0
        self.priority = 0
        self.subregions: list[MemoryRegion] = []
        self.block: RamBlock | None = None
        self.block_offset = 0
        self.ops: Any = None
        self.rules = AccessRules()
        self.alias_target: MemoryRegion | None = None
        self.alias_offset = 0
        self.owner: Any = None
        self.readonly = False  # aliases only: see set_readonly
        self._listeners: list[Callable[[], None]] = []
        self._seq = 0

    # ---- constructors
    @classmethod
    def container(cls, name: str, size: int) -> MemoryRegion:
        return cls(name, size, "container")

    @classmethod
    def ram(cls, name: str, size: int, block: RamBlock | None = None, offset: int = 0) -> MemoryRegion:
        mr = cls(name, size, "ram")
        mr.block = block if block is not None else RamBlock(name, size)
        if offset < 0 or offset + size > mr.block.size:
            raise ValueError(f"region {name!r} does not fit its RAM block")
        mr.block_offset = offset
        return mr

    @classmethod
    def rom(cls, name: str, size: int, data: bytes = b"") -> MemoryRegion:
        mr = cls(name, size, "rom")
        mr.block = RamBlock(name, size)
        if data:
            mr.block.write(0, data[:size])
        return mr

    @classmethod
    def io(cls, name: str, size: int, ops: MemoryOps, rules: AccessRules | None = None,
           owner: Any = None) -> MemoryRegion:
        mr = cls(name, size, "io")
        mr.ops = ops
        mr.rules = rules or getattr(ops, "rules", None) or AccessRules()
        mr.owner = owner
        return mr

    @classmethod
    def alias(cls, name: str, target: MemoryRegion, offset: int, size: int) -> MemoryRegion:
        if offset < 0 or offset + size > target.size:
            raise ValueError(f"alias {name!r} exceeds its target {target.name!r}")
        mr = cls(name, size, "alias")
        mr.alias_target = target
        mr.alias_offset = offset
        return mr

    # ---- tree edits
    def add_subregion(self, addr: int, sub: MemoryRegion, priority: int = 0) -> None:
        if sub.parent is not None:
            raise ValueError(f"region {sub.name!r} already has a parent")
        if not 0 <= addr < ADDR_SPACE_END:
            raise ValueError("subregion address out of range")
        sub.parent, sub.addr, sub.priority = self, addr, priority
        self._seq += 1
        sub._seq = self._seq
        self.subregions.append(sub)
        self._changed()

    def del_subregion(self, sub: MemoryRegion) -> None:
        self.subregions.remove(sub)
        sub.parent = None
        self._changed()

    def set_enabled(self, enabled: bool) -> None:
        if self.enabled != enabled:
            self.enabled = enabled
            self._changed()

    def set_address(self, addr: int) -> None:
        self.addr = addr
        self._changed()

    def set_readonly(self, readonly: bool) -> None:
        """On an alias: the ranges it shows are flagged read-only (QEMU's memory_region_set_readonly,
        which PAM's read-only mode uses). As in QEMU 7.2, the flag is for the CPU's mappings
        (``FlatRange.readonly``): address-space writes (qtest, DMA) still reach the RAM behind it."""
        if self.kind != "alias":
            raise ValueError(f"region {self.name!r}: only aliases can be made read-only here")
        if self.readonly != readonly:
            self.readonly = readonly
            self._changed()

    def set_alias_offset(self, offset: int) -> None:
        assert self.alias_target is not None
        self.alias_offset = offset
        self._changed()

    def on_change(self, cb: Callable[[], None]) -> None:
        """Called (on the root) whenever anything below changes."""
        self._listeners.append(cb)

    def _changed(self) -> None:
        mr: MemoryRegion | None = self
        while mr is not None:
            for cb in mr._listeners:
                cb()
            mr = mr.parent

    def __repr__(self) -> str:
        return f"MemoryRegion({self.name!r}, {self.kind}, size={self.size:#x})"


class FlatRange(NamedTuple):
    """A visible piece of a terminal region: guest [start, last] maps to ``mr`` at ``offset``."""

    start: int
    last: int
    mr: MemoryRegion
    offset: int
    readonly: bool = False  # seen through a read-only alias


def render(root: MemoryRegion) -> list[FlatRange]:
    """Flattens the tree: higher priority wins, later-added wins ties, holes fall through."""
    out: list[FlatRange] = []

    def insert(start: int, last: int, mr: MemoryRegion, offset: int, readonly: bool) -> None:
        # Claim only the parts of [start, last] not yet claimed by something more visible.
        pieces: list[FlatRange] = []
        cur = start
        for fr in out:
            if fr.last < cur:
                continue
            if fr.start > last:
                break
            if fr.start > cur:
                pieces.append(FlatRange(cur, fr.start - 1, mr, offset + (cur - start), readonly))
            cur = fr.last + 1
            if cur > last:
                break
        if cur <= last:
            pieces.append(FlatRange(cur, last, mr, offset + (cur - start), readonly))
        if pieces:
            out.extend(pieces)
            out.sort(key=lambda fr: fr.start)

    def walk(mr: MemoryRegion, base: int, lo: int, hi: int, readonly: bool = False) -> None:
        # [lo, hi] is the clip window in guest addresses (inclusive); readonly: under a read-only alias.
        if not mr.enabled:
            return
        start = max(base, lo)
        last = min(base + mr.size - 1, hi)
        if start > last:
            return
        if mr.kind == "alias":
            assert mr.alias_target is not None
            walk(mr.alias_target, base - mr.alias_offset, start, last, readonly or mr.readonly)
            return
        for sub in sorted(mr.subregions, key=lambda s: (-s.priority, -s._seq)):
            walk(sub, base + sub.addr, start, last, readonly)
        if mr.kind in ("ram", "rom", "io"):
            insert(start, last, mr, start - base, readonly)

    walk(root, 0, 0, _ADDR_MASK)
    return out


_KIND_CODE = {"ram": lib.MC_KIND_RAM, "rom": lib.MC_KIND_ROM, "io": lib.MC_KIND_MMIO}


class AddressSpace:
    """A root region and its compiled flat view; the entry point for every guest access."""

    def __init__(self, name: str, root: MemoryRegion) -> None:
        self.name = name
        self.root = root
        self._flat = ffi.gc(lib.mc_flat_new(), lib.mc_flat_free)
        self.ranges: list[FlatRange] = []
        self._dirty = True
        self._scratch = ffi.new("int64_t *")
        #: readers of the C table that do not hold the machine lock (the vCPU's write hook)
        self.lockfree_readers = 0
        #: called with (addr, length) before a device reads guest memory (:meth:`dma_read`);
        #: the generic fuzzer fills that memory with its DMA patterns there, as QEMU's does
        self.dma_read_hook: Callable[[int, int], None] | None = None
        root.on_change(self._invalidate)
        self.commit()

    @property
    def flat(self) -> Any:
        """The C ``mc_flat *`` (valid after ``commit``)."""
        self._ensure()
        return self._flat

    def _invalidate(self) -> None:
        self._dirty = True

    def _ensure(self) -> None:
        if self._dirty:
            self.commit()

    def commit(self) -> None:
        """Re-renders the tree and hands the new table to C."""
        ranges = render(self.root)
        table = ffi.new("mc_range[]", max(len(ranges), 1))
        for i, fr in enumerate(ranges):
            t = table[i]
            t.start, t.last, t.kind, t.handle = fr.start, fr.last, _KIND_CODE[fr.mr.kind], i
            if fr.mr.block is not None:
                t.block = fr.mr.block.ptr
                t.offset = fr.mr.block_offset + fr.offset
        if lib.mc_flat_set(self._flat, table, len(ranges)) != 0:
            raise ValueError(f"address space {self.name}: C rejected the flat view")
        self.ranges = ranges
        self._dirty = False
        if not self.lockfree_readers:
            # every reader holds the machine lock, as the caller does: nobody walks the old table
            lib.mc_flat_reclaim(self._flat)

    def reclaim(self) -> None:
        """Frees the replaced flat tables; a lock-free reader calls it at a point where it is
        not walking one (the vCPU between two runs, with the machine lock held)."""
        lib.mc_flat_reclaim(self._flat)

    @property
    def retired_tables(self) -> int:
        """Replaced tables not freed yet (kept for lock-free readers)."""
        return int(lib.mc_flat_retired(self._flat))

    def lookup(self, addr: int) -> FlatRange | None:
        self._ensure()
        i = lib.mc_flat_lookup(self._flat, addr & _ADDR_MASK)
        return self.ranges[i] if i >= 0 else None

    # ---- bulk access (RAM in C; MMIO pieces dispatched here)
    def read(self, addr: int, length: int) -> bytearray:
        buf = bytearray(length)
        self.read_into(addr, buf)
        return buf

    def dma_read(self, addr: int, length: int) -> bytearray:
        """A device's read of guest memory (DMA); qtest and the vCPU use :meth:`read`."""
        if self.dma_read_hook is not None and length:
            self.dma_read_hook(addr & _ADDR_MASK, length)
        return self.read(addr, length)

    def read_into(self, addr: int, buf: bytearray | memoryview) -> None:
        self._transfer(addr, buf, lib.mc_as_read, self._mmio_read)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self._transfer(addr, data, lib.mc_as_write, self._mmio_write)

    def _transfer(self, addr: int, buf: bytes | bytearray | memoryview, c_access: Callable[..., int],
                  mmio_access: Callable[[int, int, Any, int], int]) -> None:
        """Move ``buf`` from or to [addr, addr + len(buf)): ``c_access`` (``mc_as_read`` or
        ``mc_as_write``) does the RAM runs and stops at each MMIO range, whose piece
        ``mmio_access`` dispatches here; unassigned memory ends the transfer."""
        self._ensure()
        length = len(buf)
        cbuf = ffi.from_buffer(buf)
        mmio = self._scratch
        done = 0
        while done < length:
            done += c_access(self._flat, (addr + done) & _ADDR_MASK, cbuf + done, length - done, mmio)
            if mmio[0] < 0:
                return
            done += mmio_access(mmio[0], (addr + done) & _ADDR_MASK, buf, done)

    def fill(self, addr: int, byte: int, length: int) -> None:
        self._ensure()
        mmio = self._scratch
        done = 0
        while done < length:
            # C takes at most 2^63 - 1 bytes per call; a longer fill wraps round the address space
            n = lib.mc_as_fill(self._flat, (addr + done) & _ADDR_MASK, byte & 0xFF,
                               min(length - done, _MAX_CHUNK), mmio)
            done += n
            if mmio[0] < 0:
                return
            fr = self.ranges[mmio[0]]
            at = (addr + done) & _ADDR_MASK
            piece = min(length - done, fr.last - at + 1)
            done += self._mmio_write(mmio[0], at, bytes([byte & 0xFF]) * piece, 0)

    def read_uint(self, addr: int, size: int) -> int:
        """A little-endian load of ``size`` bytes, as a CPU would do it."""
        return int.from_bytes(self.read(addr, size), "little")

    def write_uint(self, addr: int, value: int, size: int) -> None:
        self.write(addr, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    # ---- MMIO dispatch, following QEMU's access-size rules
    def _mmio_read(self, index: int, addr: int, buf: bytearray | memoryview, pos: int) -> int:
        """Read the MMIO piece at ``addr`` (in range ``index``) into ``buf[pos:]``; return its length."""
        fr = self.ranges[index]
        start = pos
        for off, size in _mmio_accesses(fr, addr, len(buf) - pos):
            buf[pos : pos + size] = _dispatch_read(fr.mr, off, size).to_bytes(size, "little")
            pos += size
        return pos - start

    def _mmio_write(self, index: int, addr: int, data: bytes | bytearray | memoryview, pos: int) -> int:
        """Write ``data[pos:]`` as the MMIO piece at ``addr`` (in range ``index``); return the bytes taken."""
        fr = self.ranges[index]
        start = pos
        for off, size in _mmio_accesses(fr, addr, len(data) - pos):
            _dispatch_write(fr.mr, off, int.from_bytes(data[pos : pos + size], "little"), size)
            pos += size
        return pos - start

    def covered(self, addr: int, length: int) -> bool:
        """True if every byte of [addr, addr+length) is mapped (RAM, ROM or MMIO)."""
        pos, end = addr, addr + length
        while pos < end:
            fr = self.lookup(pos)
            if fr is None:
                return False
            pos = fr.last + 1
        return True

    def iter_ranges(self) -> Iterator[FlatRange]:
        self._ensure()
        return iter(self.ranges)


def _mmio_accesses(fr: FlatRange, addr: int, left: int) -> Iterator[tuple[int, int]]:
    """(offset in the region, size) of each access that an MMIO piece of ``left`` bytes at ``addr``
    is split into, following QEMU's access-size rules.

    An access goes whole to the region of its first byte, even past that region's end (QEMU clamps
    only RAM accesses to their section: see address_space_translate_internal).
    """
    done = 0
    while done < left and addr + done <= fr.last:
        off = fr.offset + (addr - fr.start) + done
        size = _access_size(fr.mr.rules, off, left - done)
        yield off, size
        done += size


def _access_size(rules: AccessRules, offset: int, left: int) -> int:
    """Largest power-of-two access the region takes at this offset (QEMU's memory_access_size)."""
    limit = rules.valid_max
    if not rules.impl_unaligned:
        align = offset & -offset if offset else limit
        limit = min(limit, align)
    size = min(left, limit)
    return 1 << (size.bit_length() - 1)


def _dispatch_read(mr: MemoryRegion, offset: int, size: int) -> int:
    r = mr.rules
    if size < r.valid_min or size > r.valid_max or (not r.valid_unaligned and offset % size):
        return 0  # an invalid access reads as unassigned memory does
    step = max(min(size, r.impl_max), r.impl_min)
    mask = (1 << (8 * step)) - 1
    value = 0
    for i in range(0, size, step):
        value |= (mr.ops.read(offset + i, step) & mask) << (8 * i)
    return value & ((1 << (8 * size)) - 1)


def _dispatch_write(mr: MemoryRegion, offset: int, value: int, size: int) -> None:
    r = mr.rules
    if size < r.valid_min or size > r.valid_max or (not r.valid_unaligned and offset % size):
        return
    step = max(min(size, r.impl_max), r.impl_min)
    mask = (1 << (8 * step)) - 1
    for i in range(0, size, step):
        mr.ops.write(offset + i, (value >> (8 * i)) & mask, step)
