"""Guest RAM blocks: anonymous mmap memory owned by the C core, with a dirty bitmap per block."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from emu._native import ffi, lib

if TYPE_CHECKING:
    # imported lazily at run time (numpy is slow to import); ``ndarray`` because the class's
    # ``numpy`` method shadows the module name inside the class body
    from numpy import ndarray

PAGE_SIZE = 4096


_PAGEMAP_FD: int | None = None


def _pagemap_fd() -> int:
    """This process's ``/proc/self/pagemap``, opened once (-1 where there is none)."""
    global _PAGEMAP_FD
    if _PAGEMAP_FD is None:
        try:
            _PAGEMAP_FD = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            _PAGEMAP_FD = -1
    return _PAGEMAP_FD


class RamError(ValueError):
    """A bad offset or length for a RAM block."""


class RamBlock:
    """One RAM (or ROM) block, like QEMU's RAMBlock: named, page-granular, lazily populated.

    The bytes live in C-owned anonymous memory; ``view()`` exposes them without a copy. Every
    write path (these methods, the flat-view dispatch, the vCPU hook) marks the dirty bitmap.
    """

    def __init__(self, name: str, size: int) -> None:
        if size <= 0:
            raise RamError(f"RAM block {name!r}: size must be positive")
        ptr = lib.mc_block_new(size)
        if ptr == ffi.NULL:
            raise MemoryError(f"cannot allocate RAM block {name!r} of {size} bytes")
        self._ptr = ffi.gc(ptr, lib.mc_block_free)
        self.name = name
        self.size: int = lib.mc_block_size(ptr)
        self.used_length = size
        #: writers that keep their own dirty log (a KVM vCPU): each is called to merge it into
        #: this block's bitmap (:meth:`merge_dirty`) before the bitmap is read
        self.dirty_sources: list[Callable[[RamBlock], None]] = []

    @property
    def ptr(self) -> Any:
        """The C ``mc_block *`` handle."""
        return self._ptr

    @property
    def host_address(self) -> int:
        """Host virtual address of byte 0 (for mapping into the vCPU)."""
        return int(ffi.cast("uintptr_t", lib.mc_block_host(self._ptr)))

    @property
    def pages(self) -> int:
        return self.size // PAGE_SIZE

    def view(self) -> memoryview:
        """A writable memoryview over the whole block (no copy; does not mark pages dirty)."""
        return memoryview(ffi.buffer(lib.mc_block_host(self._ptr), self.size))

    def numpy(self) -> ndarray:
        """A uint8 numpy array over the block (no copy; does not mark pages dirty)."""
        import numpy

        return numpy.frombuffer(self.view(), dtype=numpy.uint8)

    def read(self, offset: int, length: int) -> bytes:
        out = ffi.new("uint8_t[]", length) if length else ffi.NULL
        self._check(lib.mc_block_read(self._ptr, offset, out, length), offset, length)
        return bytes(ffi.buffer(out, length)) if length else b""

    def write(self, offset: int, data: bytes) -> None:
        self._check(lib.mc_block_write(self._ptr, offset, ffi.from_buffer(data), len(data)), offset, len(data))

    def fill(self, offset: int, byte: int, length: int) -> None:
        self._check(lib.mc_block_fill(self._ptr, offset, byte & 0xFF, length), offset, length)

    # ---- dirty tracking
    def set_dirty(self, offset: int, length: int) -> None:
        self._check(lib.mc_dirty_set(self._ptr, offset, length), offset, length)

    def set_all_dirty(self) -> None:
        lib.mc_dirty_set_all(self._ptr)

    def sync_dirty(self) -> None:
        """Merges the dirty logs of :attr:`dirty_sources` into the bitmap (QEMU's log_sync);
        :meth:`dirty_count` and :meth:`fetch_and_clear_dirty` do it first, the per-page tests
        do not."""
        for source in self.dirty_sources:
            source(self)

    def merge_dirty(self, first_page: int, bits: ndarray, npages: int) -> int:
        """ORs ``npages`` bits of the uint64 bitmap ``bits`` (bit i: page ``first_page + i``)
        into the dirty bitmap; returns how many were set."""
        if len(bits) * 64 < npages:
            raise RamError(f"merge_dirty: {len(bits)} words cannot hold {npages} pages")
        n = lib.mc_dirty_merge(self._ptr, first_page, ffi.cast("uint64_t *", ffi.from_buffer(bits)), npages)
        if n < 0:
            raise RamError(f"merge_dirty: pages {first_page}+{npages} out of range for {self.name!r}")
        return int(n)

    def dirty_count(self) -> int:
        self.sync_dirty()
        return int(lib.mc_dirty_count(self._ptr))

    def is_dirty(self, page: int) -> bool:
        r = lib.mc_dirty_test(self._ptr, page)
        if r < 0:
            raise RamError(f"page {page} out of range for {self.name!r}")
        return bool(r)

    def next_dirty(self, page: int = 0) -> int:
        """First dirty page >= page, or -1."""
        return int(lib.mc_dirty_find_next(self._ptr, page))

    def fetch_and_clear_dirty(self) -> ndarray:
        """Moves the bitmap out (uint64 words) and clears it, atomically per word (after
        :meth:`sync_dirty`)."""
        import numpy

        self.sync_dirty()
        words = int(lib.mc_block_bitmap_words(self._ptr))
        out = numpy.zeros(words, dtype=numpy.uint64)
        lib.mc_dirty_fetch_clear(self._ptr, ffi.cast("uint64_t *", ffi.from_buffer(out)), words)
        return out

    # ---- residency
    def populated_pages(self) -> int:
        """How many pages the kernel has actually backed (``mincore``)."""
        return int(lib.mc_block_populated(self._ptr))

    def discard(self, page: int, npages: int) -> None:
        """Returns pages to the kernel; they read as zero afterwards."""
        if lib.mc_block_discard(self._ptr, page, npages) < 0:
            raise RamError(f"discard of pages {page}+{npages} out of range for {self.name!r}")

    def zero_pages(self, page: int, npages: int) -> bytes:
        """One byte per page: 1 if the page is all zero (never-populated pages are recognised
        through ``/proc/self/pagemap`` without being read, so scanning does not populate them)."""
        out = ffi.new("uint8_t[]", max(npages, 1))
        scratch = ffi.new("uint64_t[]", max(npages, 1))
        if lib.mc_zero_pages_pm(self._ptr, page, npages, _pagemap_fd(), scratch, out) < 0:
            raise RamError(f"pages {page}+{npages} out of range for {self.name!r}")
        return bytes(ffi.buffer(out, npages))

    def load_page_records(self, buf: bytearray, pos: int, received: bytearray,
                          populate_zero: bool = False) -> tuple[int, int, int]:
        """Applies the run of CONTINUE ZERO/PAGE records of a migration stream starting at
        ``buf[pos]`` (in C, without the GIL); returns (bytes consumed, zero records, page records).
        Stops before anything else, which the caller's parser then handles. Zero records leave
        never-populated pages untouched (recognised through ``/proc/self/pagemap``) unless
        ``populate_zero`` (postcopy: a zero page must be present, reading it is enough)."""
        counts = ffi.new("uint64_t[2]")
        pagemap = -1 if populate_zero else _pagemap_fd()
        with ffi.from_buffer(buf) as src, ffi.from_buffer(received) as rmap:
            n = lib.mc_ram_load_run(self._ptr, src + pos, len(buf) - pos, rmap, len(received), pagemap, counts)
        return int(n), int(counts[0]), int(counts[1])

    def send_page_records(self, fd: int, wake_fd: int, page: int, npages: int, zero_map: bytes,
                          name: bytes | None) -> int:
        """Writes the records ``encode_page_records`` would build straight from guest memory to
        ``fd`` (writev in C, no copy; waits while a non-blocking fd is full). Returns the bytes
        written, or a negated errno (``-ECANCELED`` once ``wake_fd`` is readable)."""
        if len(zero_map) < npages:
            raise RamError(f"zero map of {len(zero_map)} bytes for {npages} pages")
        n = lib.mc_ram_send_run(self._ptr, page, npages, zero_map, name if name is not None else ffi.NULL,
                                len(name or b""), fd, wake_fd)
        if n == lib.MC_EINVAL:
            raise RamError(f"pages {page}+{npages} out of range for {self.name!r}")
        return int(n)

    def encode_page_records(self, page: int, npages: int, zero_map: bytes, name: bytes | None) -> bytearray:
        """Migration RAM records for ``npages`` pages from ``page`` (encoded in C): ZERO where
        ``zero_map`` says so, else PAGE with the bytes; the first names the block if ``name``."""
        if len(zero_map) < npages:
            raise RamError(f"zero map of {len(zero_map)} bytes for {npages} pages")
        zeros = zero_map[:npages].count(1)
        cap = zeros * 9 + (npages - zeros) * (8 + PAGE_SIZE) + (1 + len(name) if name is not None else 0)
        out = bytearray(cap)
        with ffi.from_buffer(out) as dst:
            n = lib.mc_ram_encode_run(self._ptr, page, npages, zero_map,
                                      name if name is not None else ffi.NULL, len(name or b""), dst, cap)
        if n < 0:
            raise RamError(f"pages {page}+{npages} out of range for {self.name!r}")
        return out

    def _check(self, rc: int, offset: int, length: int) -> None:
        if rc < 0:
            raise RamError(f"offset {offset:#x} length {length:#x} out of range for {self.name!r} ({self.size:#x})")

    def __repr__(self) -> str:
        return f"RamBlock({self.name!r}, {self.size:#x})"
