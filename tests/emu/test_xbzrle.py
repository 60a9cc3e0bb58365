"""Source-side XBZRLE in C: the page cache rules, QEMU's delta encoding, the record encoder, and
end-to-end passes whose records rebuild the source RAM through the destination loader."""
from __future__ import annotations

import io
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from xbzrle_reference import xbzrle_encode

from emu._native import ffi, lib
from emu.migration import ram_flags as rf
from emu.migration.stream import load_stream, xbzrle_decode
from emu.migration.xbzrle import (
    RECORD_MAX,
    XbzrleCache,
    XbzrleError,
    cache_size_error,
    encode_page,
    key_bases,
)
from emu.ram import PAGE_SIZE, RamBlock

ZERO, PAGE, CONT, XBZ = (rf.RAM_SAVE_FLAG_ZERO, rf.RAM_SAVE_FLAG_PAGE, rf.RAM_SAVE_FLAG_CONTINUE,
                         rf.RAM_SAVE_FLAG_XBZRLE)


def parse(buf: bytes | bytearray) -> list[tuple[int, int, bytes | None, bytes]]:
    """(offset, kind, name or None for CONTINUE, payload) per record; payload of XBZRLE = delta."""
    recs, i = [], 0
    while i < len(buf):
        word = struct.unpack_from(">Q", buf, i)[0]
        i += 8
        off, flags = word & ~0xFFF, word & 0xFFF
        name = None
        if not flags & CONT:
            n = buf[i]
            name = bytes(buf[i + 1:i + 1 + n])
            i += 1 + n
        kind = flags & ~CONT
        if kind == ZERO:
            payload = bytes(buf[i:i + 1])
            i += 1
        elif kind == PAGE:
            payload = bytes(buf[i:i + PAGE_SIZE])
            i += PAGE_SIZE
        else:
            assert kind == XBZ and buf[i] == 1
            n = struct.unpack_from(">H", buf, i + 1)[0]
            assert 1 <= n <= PAGE_SIZE
            payload = bytes(buf[i + 3:i + 3 + n])
            i += 3 + n
        recs.append((off, kind, name, payload))
    assert i == len(buf)
    return recs


def apply(recs: list, dst: RamBlock) -> None:
    """What a destination does with the records (XBZRLE decoded with the QEMU decoder port)."""
    for off, kind, _name, payload in recs:
        if kind == ZERO:
            assert payload == b"\x00"
            dst.fill(off, 0, PAGE_SIZE)
        elif kind == PAGE:
            dst.write(off, payload)
        else:
            page = bytearray(dst.read(off, PAGE_SIZE))
            assert xbzrle_decode(payload, page) != -1
            dst.write(off, bytes(page))


def page_of(b: RamBlock, p: int) -> bytes:
    return b.read(p * PAGE_SIZE, PAGE_SIZE)


def block_with(pages: int, seed: int, zero_every: int | None = 3) -> RamBlock:
    """Random pages, except every ``zero_every``-th page (from page 0) left zero."""
    rng = random.Random(seed)
    b = RamBlock("ram", pages * PAGE_SIZE)
    for p in range(pages):
        if zero_every is None or p % zero_every:
            b.write(p * PAGE_SIZE, rng.randbytes(PAGE_SIZE))
    return b


def run(c: XbzrleCache, b: RamBlock, gen: int, started: bool = True, last: bool = False, name: bytes | None = None,
        first: int = 0, n: int | None = None, base: int = 0) -> tuple[list, bool]:
    n = b.pages - first if n is None else n
    out, pending = c.encode_run(b, base, first, n, b.zero_pages(first, n), name, gen, started, last)
    return parse(out), pending


# ---------------------------------------------------------------- cache

@pytest.mark.parametrize("size,err", [
    (0, "cache size is smaller than target page size"),
    (4095, "cache size is smaller than target page size"),
    (3 * 4096, "number of pages is not a power of two"),
    (4096, None), (8192, None), (64 << 20, None),
    (4 * 4096 + 100, None),  # QEMU's cache_init only looks at size / page size
])
def test_cache_size_rule(size, err):
    assert cache_size_error(size) == err
    if err:
        with pytest.raises(XbzrleError, match=err):
            XbzrleCache(size)
        assert lib.xb_cache_new(size) == ffi.NULL
    else:
        c = XbzrleCache(size)
        assert c.slots == size // 4096 and c.cache_size == size


def test_age_rule_hits_and_slots():
    c = XbzrleCache(4 * PAGE_SIZE)
    a, b = 0x1000, 0x1000 + 4 * PAGE_SIZE  # same slot
    assert c.insert(a, b"A" * 4096, 5)
    assert not c.insert(b, b"B" * 4096, 6)  # 5 + 2 > 6: the other entry is still fresh
    assert c.insert(a, b"a" * 4096, 6)      # the same key is always replaced
    assert c.peek(a) == (b"a" * 4096, 6)
    assert not c.insert(b, b"B" * 4096, 7)
    assert c.is_cached(a, 9) and c.peek(a)[1] == 9  # a hit refreshes the age
    assert not c.is_cached(b, 9) and c.peek(b) is None
    assert not c.insert(b, b"B" * 4096, 10)
    assert c.insert(b, b"B" * 4096, 11)     # 9 + 2 > 11 is false: evicted
    assert c.peek(a) is None and c.peek(b) == (b"B" * 4096, 11)
    assert c.insert(0x2000, b"x" * 4096, 0)  # an empty slot always takes a page
    assert lib.xb_cache_insert(ffi.NULL, 0, b"x" * 4096, 0) < 0
    assert lib.xb_cache_insert(c._cache, 0x10, b"x" * 4096, 0) < 0  # keys are page-aligned


# ---------------------------------------------------------------- delta encoder

def test_encoder_bytes_and_qemu_overflow_limit():
    old = bytes(4096)
    new = bytearray(old)
    new[10:14] = b"abcd"
    new[200] = 1
    assert encode_page(old, bytes(new)) == bytes([10, 4]) + b"abcd" + bytes([0x80 | (186 & 0x7F), 1, 1, 1])
    assert encode_page(old, old) == b""
    first_changed = bytearray(old)
    first_changed[0] = 9
    assert encode_page(old, bytes(first_changed)) == b"\x00\x01\x09"  # starts with a zero run of 0

    def changed_run(start: int, length: int) -> bytes:
        p = bytearray(4096)
        p[start:start + length] = b"\xff" * length
        return bytes(p)
    # one changed run of L >= 128 bytes encodes in 1 + 2 + L bytes
    assert len(encode_page(old, changed_run(3, 4093))) == 4096          # fits exactly, nothing after it
    assert encode_page(old, changed_run(0, 4091)) is not None          # 4094 bytes, then 5 unchanged
    for length in (4092, 4093):  # 4095/4096 bytes followed by unchanged bytes: QEMU says overflow
        assert encode_page(old, changed_run(0, length)) is None
        assert len(xbzrle_encode(old, changed_run(0, length))) == length + 3  # the Python encoder does not
    assert encode_page(old, changed_run(0, 4096)) is None
    assert encode_page(old, bytes(range(256)) * 16) is None


def _qemu_expected(old: bytes, new: bytes) -> bytes | None:
    """QEMU's result from the Python reference encoder: it differs only by QEMU's extra
    'fewer than 2 bytes left' check before a trailing unchanged run."""
    py = xbzrle_encode(old, new)
    if py is not None and len(py) >= 4095 and old[-1] == new[-1]:
        return None
    return py


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       edits=st.lists(st.tuples(st.integers(0, 4095), st.integers(1, 300), st.booleans()), max_size=40))
def test_c_encoder_matches_reference_and_decodes(seed, edits):
    rng = random.Random(seed)
    old = rng.randbytes(4096) if seed % 3 else bytes(4096)
    new = bytearray(old)
    for off, length, keep_some in edits:
        for k in range(off, min(4096, off + length)):
            if not keep_some or rng.random() < 0.7:  # sometimes interleave equal bytes in a change
                new[k] = (new[k] + 1 + rng.randrange(255)) & 0xFF
    new = bytes(new)
    got = encode_page(old, new)
    assert got == _qemu_expected(old, new)
    if got:
        page = bytearray(old)
        assert xbzrle_decode(got, page) == page_end(old, new)
        assert bytes(page) == new


def page_end(old: bytes, new: bytes) -> int:
    """Bytes up to the end of the last changed byte (what the decoder reports covering)."""
    k = len(old)
    while k and old[k - 1] == new[k - 1]:
        k -= 1
    return k


# ---------------------------------------------------------------- record encoder

@pytest.mark.parametrize("name", [b"ram", None])
def test_first_round_is_mc_ram_encode_run_byte_for_byte(name):
    b = block_with(40, 1)
    z = b.zero_pages(0, 40)
    assert z.count(1) == 14
    c = XbzrleCache(1 << 20)
    out, pending = c.encode_run(b, 0, 0, 40, z, name, 1, False, False)
    assert bytes(out) == bytes(b.encode_page_records(0, 40, z, name))
    assert pending is False
    assert c.peek(0x1000) is None  # nothing cached before XBZRLE starts
    s = c.stats
    assert (s.zero, s.normal, s.pages, s.cache_miss, s.transferred) == (14, 26, 0, 0, len(out))
    part, _ = c.encode_run(b, 0, 5, 3, b.zero_pages(5, 3), None, 1, False, False)
    assert bytes(part) == bytes(b.encode_page_records(5, 3, b.zero_pages(5, 3), None))


def test_passes_miss_fill_then_encode_skip_and_zero():
    b = block_with(8, 2, zero_every=4)  # pages 0 and 4 are zero
    c = XbzrleCache(64 * PAGE_SIZE)
    before = [page_of(b, p) for p in range(8)]
    # second round: everything misses, PAGE records are sent from the freshly cached copies
    recs, _ = run(c, b, 2, name=b"ram")
    assert [k for _, k, _, _ in recs] == [ZERO, PAGE, PAGE, PAGE, ZERO, PAGE, PAGE, PAGE]
    assert [p for _, k, _, p in recs if k == PAGE] == [before[p] for p in (1, 2, 3, 5, 6, 7)]
    assert all(c.peek(p * PAGE_SIZE)[0] == before[p] for p in range(8))  # zero pages cached as zeros
    s = c.stats
    assert (s.cache_miss, s.pages, s.normal, s.zero) == (6, 0, 6, 2)
    # third round: small changes become XBZRLE records, unchanged pages are skipped
    b.write(2 * PAGE_SIZE + 100, b"hello")
    b.write(4 * PAGE_SIZE + 7, b"\x01")          # the zero page gets one byte: delta against zeros
    b.fill(5 * PAGE_SIZE, 0, PAGE_SIZE)          # a cached page becomes zero
    recs, _ = run(c, b, 3)
    kinds = {off // PAGE_SIZE: (k, p) for off, k, _, p in recs}
    assert sorted(kinds) == [0, 2, 4, 5]  # 1, 3, 6, 7 unchanged: skipped
    assert kinds[0] == (ZERO, b"\x00") and kinds[5] == (ZERO, b"\x00")
    assert kinds[2] == (XBZ, bytes([100, 5]) + b"hello") and kinds[4] == (XBZ, b"\x07\x01\x01")
    page = bytearray(before[2])
    xbzrle_decode(kinds[2][1], page)
    assert bytes(page) == page_of(b, 2) and c.peek(2 * PAGE_SIZE)[0] == page_of(b, 2)
    assert c.peek(5 * PAGE_SIZE) == (bytes(4096), 3)
    s = c.stats
    assert (s.pages, s.skipped, s.xbzrle, s.cache_miss, s.overflow) == (6, 4, 2, 6, 0)
    assert s.encoded == 7 + 3 and s.bytes == (7 + 3) + (3 + 3)
    # the page that went zero and comes back encodes against zeros
    b.write(5 * PAGE_SIZE + 4095, b"\x02")
    recs, _ = run(c, b, 4, first=5, n=1)
    assert recs == [(5 * PAGE_SIZE, XBZ, None, b"\xff\x1f\x01\x02")]


def test_overflow_sends_the_snapshot_and_updates_the_cache():
    b = block_with(2, 3, zero_every=None)
    c = XbzrleCache(2 * PAGE_SIZE)
    run(c, b, 2)
    new = random.Random(9).randbytes(PAGE_SIZE)
    b.write(PAGE_SIZE, new)
    recs, _ = run(c, b, 3, name=b"ram")
    assert recs == [(PAGE_SIZE, PAGE, b"ram", new)]  # page 0 skipped: the name goes on page 1
    assert c.peek(PAGE_SIZE) == (new, 3)
    s = c.stats
    assert (s.overflow, s.pages, s.skipped, s.bytes, s.normal) == (1, 2, 1, 4096, 3)


def test_name_goes_on_the_first_record_written_only():
    b = block_with(4, 4, zero_every=None)
    c = XbzrleCache(4 * PAGE_SIZE)
    run(c, b, 2)
    out, pending = c.encode_run(b, 0, 0, 4, b.zero_pages(0, 4), b"ram", 3, True, False)
    assert out == b"" and pending  # all pages identical: the name is still owed
    b.write(2 * PAGE_SIZE, b"\x55")
    recs, pending = run(c, b, 3, name=b"ram")
    assert not pending and [(o // PAGE_SIZE, k, n) for o, k, n, _ in recs] == [(2, XBZ, b"ram")]
    b.write(1 * PAGE_SIZE, b"\x56")
    b.write(3 * PAGE_SIZE, b"\x57")
    recs, pending = run(c, b, 3, name=b"ram")
    assert [(o // PAGE_SIZE, n) for o, _, n, _ in recs] == [(1, b"ram"), (3, None)]
    named, unnamed = (1 + 3) + 3 + 3, 3 + 3  # a named record's xbzrle bytes include the name
    assert c.stats.bytes == 2 * named + unnamed


def test_last_stage_neither_inserts_nor_updates():
    b = block_with(2, 5, zero_every=None)
    c = XbzrleCache(2 * PAGE_SIZE)
    run(c, b, 2, first=0, n=1)
    old0 = page_of(b, 0)
    b.write(0, b"\x99\x98")
    recs, _ = run(c, b, 3, last=True)
    assert [(o, k) for o, k, _, _ in recs] == [(0, XBZ), (PAGE_SIZE, PAGE)]
    assert recs[1][3] == page_of(b, 1)
    assert c.peek(0) == (old0, 3)  # hit: age refreshed, data left as it was
    assert c.peek(PAGE_SIZE) is None  # miss: not inserted
    assert c.stats.cache_miss == 2


def test_refused_insert_sends_from_ram_and_stays_uncached():
    b = block_with(2, 6, zero_every=None)
    c = XbzrleCache(PAGE_SIZE)  # one slot for both pages
    recs, _ = run(c, b, 2)
    assert [k for _, k, _, _ in recs] == [PAGE, PAGE]
    assert recs[1][3] == page_of(b, 1) and c.peek(0)[0] == page_of(b, 0) and c.peek(PAGE_SIZE) is None
    assert c.stats.cache_miss == 2
    recs, _ = run(c, b, 3)  # page 0 hits (age 3 now), page 1 is refused again
    assert [k for _, k, _, _ in recs] == [PAGE] and c.peek(0)[1] == 3 and c.stats.cache_miss == 3
    recs, _ = run(c, b, 4, first=1, n=1)  # 3 + 2 > 4: still refused
    assert c.peek(PAGE_SIZE) is None
    recs, _ = run(c, b, 5, first=1, n=1)  # 3 + 2 > 5 is false: page 1 takes the slot
    assert recs == [(PAGE_SIZE, PAGE, None, page_of(b, 1))]
    assert c.peek(PAGE_SIZE) == (page_of(b, 1), 5) and c.peek(0) is None
    b.fill(0, 0, PAGE_SIZE)  # a zero page's cache insert obeys the same rule: refused, harmless
    recs, _ = run(c, b, 6, first=0, n=1)
    assert recs == [(0, ZERO, None, b"\x00")] and c.peek(0) is None and c.peek(PAGE_SIZE)[1] == 5


def test_bad_arguments_are_errors_not_crashes():
    b = block_with(4, 7)
    c = XbzrleCache(4 * PAGE_SIZE)
    z = b.zero_pages(0, 4)
    for first, n in ((0, 5), (4, 1), (5, 0), (1, 2**64 - 1)):
        with pytest.raises(XbzrleError):
            c.encode_run(b, 0, first, n, z + bytes(8), None, 2, True, False)
    with pytest.raises(XbzrleError):
        c.encode_run(b, 0, 0, 4, z[:3], None, 2, True, False)
    with pytest.raises(XbzrleError):
        c.encode_run(b, 0, 0, 4, z, b"x" * 256, 2, True, False)
    with pytest.raises(XbzrleError):
        c.encode_run(b, 0x800, 0, 4, z, None, 2, True, False)  # key base not page-aligned
    with pytest.raises(XbzrleError):
        c.encode_run(b, 2**64 - 4096, 0, 4, z, None, 2, True, False)  # keys would wrap
    with pytest.raises(XbzrleError):
        c.encode_run(b, -4096, 0, 4, z, None, 2, True, False)
    assert c.stats == XbzrleCache(4096).stats  # nothing was counted by the failed calls
    # C level: a capacity short of the worst case is refused before anything changes
    st = ffi.new("xb_stats *")
    worst = 1 + 3 + z.count(1) * 9 + z.count(0) * RECORD_MAX
    out = ffi.new("uint8_t[]", worst)
    zmap, ram = ffi.from_buffer(z), ffi.from_buffer(b"ram")

    def run(cap: int, dst=out, name=ram, started: int = 1):
        return ffi.new("xb_run *", {"block": b.ptr, "key_base": 0, "page": 0, "npages": 4, "zero_map": zmap,
                                    "name": name, "name_len": 3 if name != ffi.NULL else 0, "name_pending": 1,
                                    "started": started, "last_stage": 0, "generation": 2, "out": dst, "cap": cap})

    short = run(worst - 1)
    assert lib.xb_encode_run(c._cache, short, st) == lib.MC_EINVAL
    assert short.name_pending == 1 and st.cache_miss == 0 and c.peek(PAGE_SIZE) is None
    assert lib.xb_encode_run(c._cache, run(worst, dst=ffi.NULL), st) == lib.MC_EINVAL
    assert lib.xb_encode_run(ffi.NULL, run(worst), st) < 0
    assert lib.xb_encode_run(c._cache, run(worst, name=ffi.NULL), st) < 0
    ok = run(worst)
    n = lib.xb_encode_run(c._cache, ok, st)
    assert 0 < n <= worst and ok.name_pending == 0 and st.cache_miss == z.count(0)
    # the first round needs only mc_ram_encode_run's capacity
    plain = 1 + 3 + z.count(1) * 9 + z.count(0) * (8 + PAGE_SIZE)
    assert lib.xb_encode_run(c._cache, run(plain, started=0), st) == plain


# ---------------------------------------------------------------- stats and rates

def test_rates_and_query_follow_qemu():
    b = block_with(4, 8, zero_every=None)
    c = XbzrleCache(4 * PAGE_SIZE)
    assert c.query() == {"cache-size": 4 * PAGE_SIZE, "bytes": 0, "pages": 0, "cache-miss": 0,
                         "cache-miss-rate": 0.0, "encoding-rate": 0.0, "overflow": 0}
    run(c, b, 1, started=False)  # 4 normal pages
    run(c, b, 2)                 # 4 misses
    c.update_rates()
    assert c.cache_miss_rate == 4 / 8 and c.encoding_rate == 0.0
    b.write(0, b"\x01")
    b.write(PAGE_SIZE, random.Random(1).randbytes(PAGE_SIZE))
    run(c, b, 3)  # page 0: XBZRLE (3 + 3 bytes), page 1: overflow, pages 2-3 skipped
    c.update_rates()
    assert c.cache_miss_rate == 0.0  # 2 target pages this period, no misses
    assert c.encoding_rate == 4 * 4096 / (6 + 4096)
    q = c.query()
    assert list(q) == ["cache-size", "bytes", "pages", "cache-miss", "cache-miss-rate", "encoding-rate", "overflow"]
    assert (q["bytes"], q["pages"], q["cache-miss"], q["overflow"]) == (6 + 4096, 4, 4, 1)
    run(c, b, 4)  # all skipped: no target pages, rates keep their values
    c.update_rates()
    assert c.encoding_rate == 4 * 4096 / (6 + 4096)
    c.update_rates(page_count=10)  # an explicit page count, nothing new: rates drop to 0
    assert c.cache_miss_rate == 0.0 and c.encoding_rate == 0.0


def test_resize_starts_empty_and_keeps_counters():
    b = block_with(4, 9, zero_every=None)
    c = XbzrleCache(4 * PAGE_SIZE)
    run(c, b, 2)
    with pytest.raises(XbzrleError):
        c.resize(3 * PAGE_SIZE)
    assert c.peek(0) is not None and c.cache_size == 4 * PAGE_SIZE  # a failed resize keeps the cache
    c.resize(8 * PAGE_SIZE)
    assert c.slots == 8 and c.cache_size == 8 * PAGE_SIZE and c.peek(0) is None
    recs, _ = run(c, b, 3)
    assert [k for _, k, _, _ in recs] == [PAGE] * 4 and c.stats.cache_miss == 8


def test_key_bases_do_not_overlap():
    blocks = [RamBlock("a", 5 * PAGE_SIZE), RamBlock("b", 64 * PAGE_SIZE), RamBlock("c", PAGE_SIZE)]
    assert key_bases(blocks) == [0, 64 * PAGE_SIZE, 128 * PAGE_SIZE]


# ---------------------------------------------------------------- end to end

def _mutate(rng: random.Random, b: RamBlock) -> None:
    for _ in range(rng.randrange(1, 12)):
        p = rng.randrange(b.pages) * PAGE_SIZE
        kind = rng.randrange(5)
        if kind == 0:
            b.write(p + rng.randrange(4000), rng.randbytes(rng.randrange(1, 90)))
        elif kind == 1:
            b.write(p, rng.randbytes(PAGE_SIZE))  # overflow
        elif kind == 2:
            b.fill(p, 0, PAGE_SIZE)  # goes zero
        elif kind == 3:
            for _ in range(20):
                b.write(p + rng.randrange(4096), bytes((rng.randrange(256),)))
        else:
            b.write(p, page_of(b, p // PAGE_SIZE))  # dirty but unchanged: skipped


def _dirty_runs(b: RamBlock) -> list[tuple[int, int]]:
    words = b.fetch_and_clear_dirty()
    pages = [p for p in range(b.pages) if int(words[p // 64]) >> (p % 64) & 1]
    runs: list[tuple[int, int]] = []
    for p in pages:
        if runs and runs[-1][0] + runs[-1][1] == p:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((p, 1))
    return runs


def _hdr(kind: int, sid: int = 2) -> bytes:
    if kind == 1:
        return bytes((1,)) + struct.pack(">I", sid) + b"\x03ram" + struct.pack(">II", 0, 4)
    return bytes((kind,)) + struct.pack(">I", sid)


@pytest.mark.parametrize("seed,cache_pages", [(1, 4), (2, 16), (3, 128), (4, 1)])
def test_passes_rebuild_the_source_through_the_loader(seed, cache_pages):
    """Several precopy rounds over two blocks: after each round the records applied to a
    destination copy give the source RAM byte for byte, and every cached page equals what the
    destination holds; the whole stream also loads through the QEMU 7.2 loader port."""
    rng = random.Random(seed)
    srcs = [RamBlock("pc.ram", 48 * PAGE_SIZE), RamBlock("vga.vram", 8 * PAGE_SIZE)]
    dsts = [RamBlock(s.name, s.size) for s in srcs]
    for s in srcs:
        for p in range(0, s.pages, 2):
            s.write(p * PAGE_SIZE, rng.randbytes(PAGE_SIZE))
        s.set_all_dirty()
    bases = key_bases(srcs)
    c = XbzrleCache(cache_pages * PAGE_SIZE)
    parts: list[bytes] = []
    last_sent: str | None = None
    rounds = 7
    for rnd in range(rounds):
        gen = rnd + 1
        last = rnd == rounds - 1
        body = bytearray()
        for s, d, base in zip(srcs, dsts, bases):
            for first, n in _dirty_runs(s):
                name = s.name.encode() if last_sent != s.name else None
                out, pending = c.encode_run(s, base, first, n, s.zero_pages(first, n), name, gen, rnd > 0, last)
                if not pending:
                    last_sent = s.name
                apply(parse(out), d)
                body += out
            assert d.read(0, d.size) == s.read(0, s.size)
            if not last:
                for p in range(s.pages):
                    hit = c.peek(base + p * PAGE_SIZE)
                    assert hit is None or hit[0] == page_of(d, p)
        parts.append(bytes(body))
        for s in srcs:
            _mutate(rng, s)
    st = c.stats
    assert st.zero > 0 and st.normal > 0 and (st.xbzrle > 0 or cache_pages == 1)
    assert st.pages == st.xbzrle + st.skipped + st.overflow  # every hit ends one of three ways

    total = sum(s.size for s in srcs)
    mem = struct.pack(">Q", total | 0x04) + b"".join(bytes((len(s.name),)) + s.name.encode()
                                                     + struct.pack(">Q", s.size) for s in srcs)
    eos, foot = struct.pack(">Q", 0x10), b"\x7e" + struct.pack(">I", 2)
    stream = (bytes.fromhex("5145564d00000003") + b"\x07" + struct.pack(">I", 4) + b"none"
              + _hdr(1) + mem + eos + foot
              + b"".join(_hdr(2) + p + eos + foot for p in parts)
              + _hdr(3) + eos + foot + b"\x00")
    fresh = {s.name: RamBlock(s.name, s.size) for s in srcs}
    res = load_stream(io.BytesIO(stream), fresh, None, "none")
    assert res.xbzrle_pages == st.xbzrle
    # the last round ran after the final mutation was not sent, so compare with the last-round copies
    for d in dsts:
        assert fresh[d.name].read(0, d.size) == d.read(0, d.size)
