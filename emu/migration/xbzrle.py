"""Source-side XBZRLE: QEMU's page cache, delta encoder and page records, run in C (``csrc/xbzrle.c``).

Use (precopy sender, QEMU 7.2/9.1 ``ram_save_target_page`` order, spec §8.3 and §9):

* Create one :class:`XbzrleCache` per migration when the ``xbzrle`` capability is on
  (``xbzrle-cache-size`` bytes); on a ``xbzrle-cache-size`` change while migrating call
  :meth:`XbzrleCache.resize` (QEMU 9.1 drops every entry, so all pages miss once; counters stay).
* Encode every run of dirty pages with :meth:`XbzrleCache.encode_run`, also in the first round
  (``started=False``: plain ZERO/PAGE records, byte-identical to ``mc_ram_encode_run``), so that
  the counters see every page. ``started`` becomes true once the page walk has wrapped past the
  last block (QEMU's ``xbzrle_started``); ``last_stage`` is the completion stage (VM stopped);
  ``generation`` is ``dirty-sync-count``.
* ``key_base``: the block's base in a ram_addr-like space, page-aligned and such that blocks do not
  overlap (see :func:`key_bases`). Keys only choose cache slots, so any such layout is correct;
  QEMU's layout only changes which pages of different blocks compete for a slot.
* Call :meth:`XbzrleCache.update_rates` where QEMU's ``migration_bitmap_sync`` does, i.e. at a
  bitmap sync when at least 1000 ms have passed since the previous rate period, and report
  :meth:`XbzrleCache.query` as query-migrate's ``xbzrle-cache``.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from emu._native import ffi, lib

PAGE_SIZE = 4096
#: worst case for one non-zero page's record when XBZRLE is active (be64, u8, be16, 4096-byte delta)
RECORD_MAX: int = lib.XB_RECORD_MAX
#: a ZERO record with CONTINUE
ZERO_RECORD: int = lib.XB_ZERO_RECORD
#: QEMU's default ``xbzrle-cache-size``
DEFAULT_CACHE_SIZE = 64 << 20
#: QEMU's ``find_ram_offset`` places blocks at multiples of 64 pages
_RAM_ADDR_ALIGN = 64 * PAGE_SIZE


class XbzrleError(ValueError):
    """A bad cache size or a bad argument to the encoder (page range, zero map)."""


def cache_size_error(size_bytes: int) -> str | None:
    """QEMU's ``cache_init`` check: its error message for ``size_bytes``, or ``None`` if valid."""
    if size_bytes < PAGE_SIZE:
        return "cache size is smaller than target page size"
    n = size_bytes // PAGE_SIZE
    if n & (n - 1):
        return "number of pages is not a power of two"
    return None


def key_bases(blocks: Sequence[Any]) -> list[int]:
    """Cache key bases for ``blocks`` in order, laid out like QEMU's ram_addr offsets for blocks
    allocated one after the other: each block starts at the previous end rounded up to 64 pages."""
    bases, end = [], 0
    for b in blocks:
        base = -(-end // _RAM_ADDR_ALIGN) * _RAM_ADDR_ALIGN
        bases.append(base)
        end = base + int(b.size)
    return bases


def encode_page(old: bytes, new: bytes) -> bytes | None:
    """QEMU's XBZRLE delta of page ``new`` against ``old`` (4096 bytes each), encoded in C:
    ``b""`` if identical, ``None`` on overflow (QEMU's limit: the page is then sent as PAGE)."""
    if len(old) != PAGE_SIZE or len(new) != PAGE_SIZE:
        raise XbzrleError("XBZRLE pages are 4096 bytes")
    dst = ffi.new("uint8_t[]", PAGE_SIZE)
    n = lib.xb_encode_page(ffi.from_buffer(old), ffi.from_buffer(new), dst)
    return None if n < 0 else bytes(ffi.buffer(dst, n))


@dataclass(frozen=True)
class XbzrleStats:
    """A snapshot of the encoder's counters (cumulative since the cache object was created).

    ``pages``, ``bytes``, ``cache_miss``, ``overflow``: QEMU's ``xbzrle_counters``. ``pages`` counts
    cache hits (XBZRLE sent, skipped as identical, or overflowed); ``bytes`` is per XBZRLE record its
    length without the be64 word (delta + 3, plus 1 + name length when named) and 4096 per overflow.
    ``encoded``: delta bytes only. ``xbzrle``/``normal``/``zero``: records written by kind (``normal``
    includes misses and overflows, as QEMU's ``normal`` counter); ``skipped``: identical pages;
    ``transferred``: all record bytes written.
    """

    pages: int
    bytes: int
    cache_miss: int
    overflow: int
    encoded: int
    xbzrle: int
    skipped: int
    normal: int
    zero: int
    transferred: int

    @property
    def target_pages(self) -> int:
        """Pages written as records: what QEMU adds to ``target_page_count`` (a skipped page is 0)."""
        return self.zero + self.normal + self.xbzrle


_STAT_FIELDS = tuple(f.name for f in fields(XbzrleStats))


class XbzrleCache:
    """QEMU's XBZRLE state for one migration: the page cache plus the counters and rates.

    Encoding and resizing hold an internal lock (QEMU's ``XBZRLE.lock``), so ``resize`` may be called
    from the monitor thread while the migration thread encodes; the C work runs without the GIL.
    """

    def __init__(self, size_bytes: int = DEFAULT_CACHE_SIZE) -> None:
        self._lock = threading.Lock()
        self._cache = self._new_cache(size_bytes)
        self._size = size_bytes
        self._st = ffi.new("xb_stats *")
        #: query-migrate's per-period rates, updated by update_rates()
        self.cache_miss_rate = 0.0
        self.encoding_rate = 0.0
        self._prev_target = self._prev_miss = self._prev_pages = self._prev_bytes = 0

    @staticmethod
    def _new_cache(size_bytes: int) -> Any:
        err = cache_size_error(size_bytes)
        if err is not None:
            raise XbzrleError(err)
        c = lib.xb_cache_new(size_bytes)
        if c == ffi.NULL:
            raise MemoryError(f"cannot allocate an XBZRLE cache of {size_bytes} bytes")
        return ffi.gc(c, lib.xb_cache_free)

    @property
    def cache_size(self) -> int:
        """The ``xbzrle-cache-size`` this cache was made with (query-migrate ``cache-size``)."""
        return self._size

    @property
    def slots(self) -> int:
        return int(lib.xb_cache_slots(self._cache))

    def resize(self, size_bytes: int) -> None:
        """QEMU 9.1 ``xbzrle_cache_resize``: a new, empty cache (entries are not carried over);
        counters and rates are kept. Same size: nothing happens. Raises :class:`XbzrleError`."""
        if size_bytes == self._size:
            return
        new = self._new_cache(size_bytes)
        with self._lock:
            self._cache, self._size = new, size_bytes

    def encode_run(self, block: Any, key_base: int, page: int, npages: int, zero_map: bytes | bytearray,
                   name: bytes | None, generation: int, started: bool, last_stage: bool) -> tuple[bytearray, bool]:
        """RAM records for pages ``page .. page+npages-1`` of ``block`` (an :class:`emu.ram.RamBlock`).

        ``zero_map``: one byte per page, non-zero = all-zero page (``RamBlock.zero_pages``).
        ``name``: the block name if the next record must carry it (the block differs from the last one
        sent on this channel), else ``None``. Returns ``(records, name_still_pending)``: the name goes
        on the first record actually written, so a run of only skipped pages leaves it pending.
        See ``xb_encode_run`` in ``csrc/xbzrle.h`` for the per-page rules.
        """
        if npages < 0 or len(zero_map) < npages:
            raise XbzrleError(f"zero map of {len(zero_map)} bytes for {npages} pages")
        if name is not None and len(name) > 255:
            raise XbzrleError("block name longer than 255 bytes")
        zeros = npages - bytes(zero_map[:npages]).count(0)
        cap = zeros * ZERO_RECORD + (npages - zeros) * RECORD_MAX + (1 + len(name) if name is not None else 0)
        out = bytearray(cap)
        try:
            with (self._lock, ffi.from_buffer(out) as dst, ffi.from_buffer(zero_map) as zmap,
                  ffi.from_buffer(name or b"") as name_buf):
                run = ffi.new("xb_run *", {
                    "block": block.ptr, "key_base": key_base, "page": page, "npages": npages, "zero_map": zmap,
                    "name": name_buf if name is not None else ffi.NULL, "name_len": len(name or b""),
                    "name_pending": name is not None, "started": bool(started), "last_stage": bool(last_stage),
                    "generation": generation, "out": dst, "cap": cap})
                n = lib.xb_encode_run(self._cache, run, self._st)
        except OverflowError:  # a negative or > 64-bit page, key base or generation
            n = -1
        if n < 0:
            raise XbzrleError(f"pages {page}+{npages} (key base {key_base:#x}) invalid for {block!r}")
        del out[n:]
        return out, bool(run.name_pending)

    @property
    def stats(self) -> XbzrleStats:
        return XbzrleStats(*(int(getattr(self._st, f)) for f in _STAT_FIELDS))

    def update_rates(self, page_count: int | None = None) -> None:
        """QEMU's ``migration_update_rates`` (xbzrle part), run at a bitmap sync that closes a rate
        period (>= 1000 ms after the previous one).

        ``page_count``: target pages sent in the period (QEMU's ``target_page_count`` delta; it counts
        pages sent by ``ram_save_iterate``, not the completion stage, and 0 for skipped pages).
        ``None`` uses the records this cache encoded since the previous call. With 0 pages the
        rates keep their values. ``cache-miss-rate`` = misses / page_count; ``encoding-rate`` =
        (hit pages x 4096) / xbzrle bytes over the period, 0 if there were no hits or no bytes.
        """
        st = self.stats
        if page_count is None:
            page_count = st.target_pages - self._prev_target
        self._prev_target = st.target_pages
        if not page_count:
            return
        self.cache_miss_rate = (st.cache_miss - self._prev_miss) / page_count
        self._prev_miss = st.cache_miss
        encoded = st.bytes - self._prev_bytes
        if st.pages == self._prev_pages or not encoded:
            self.encoding_rate = 0.0
        else:
            self.encoding_rate = (st.pages - self._prev_pages) * PAGE_SIZE / encoded
        self._prev_pages, self._prev_bytes = st.pages, st.bytes

    def query(self) -> dict[str, int | float]:
        """query-migrate's ``xbzrle-cache`` (XBZRLECacheStats, in QAPI member order)."""
        st = self.stats
        return {"cache-size": self._size, "bytes": st.bytes, "pages": st.pages, "cache-miss": st.cache_miss,
                "cache-miss-rate": self.cache_miss_rate, "encoding-rate": self.encoding_rate,
                "overflow": st.overflow}

    # ---- page_cache.c primitives (tests, diagnostics)
    def is_cached(self, key: int, generation: int) -> bool:
        """``cache_is_cached``: a hit also refreshes the entry's age to ``generation``."""
        with self._lock:
            return bool(lib.xb_cache_is_cached(self._cache, key, generation))

    def insert(self, key: int, data: bytes, generation: int) -> bool:
        """``cache_insert``: False if refused (another key's entry is younger than 2 generations)."""
        if len(data) != PAGE_SIZE:
            raise XbzrleError("cache pages are 4096 bytes")
        with self._lock:
            return lib.xb_cache_insert(self._cache, key, ffi.from_buffer(data), generation) == 0

    def peek(self, key: int) -> tuple[bytes, int] | None:
        """(cached page, age) for ``key``, or ``None``; changes nothing."""
        data, age = ffi.new("uint8_t[]", PAGE_SIZE), ffi.new("uint64_t *")
        with self._lock:
            if not lib.xb_cache_peek(self._cache, key, data, age):
                return None
        return bytes(ffi.buffer(data, PAGE_SIZE)), int(age[0])
