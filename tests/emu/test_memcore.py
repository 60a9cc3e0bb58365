"""The C core: RAM blocks, dirty bitmaps, bounds checks, zero detection, flat-view dispatch, codecs."""
from __future__ import annotations

import os

import numpy as np
import pytest

from emu._native import ffi, lib
from emu.ram import PAGE_SIZE, RamBlock, RamError

MiB = 1 << 20


def test_block_is_lazily_populated_and_rounded_to_pages():
    b = RamBlock("ram", 64 * MiB + 1)
    assert b.size == 64 * MiB + PAGE_SIZE
    assert b.populated_pages() == 0
    assert b.read(0, 16) == bytes(16)  # reading the zero page populates nothing writable
    b.write(5 * PAGE_SIZE + 3, b"x")
    # the written page (plus possibly a shared zero page), or its 2 MiB huge page where the host
    # gives RAM transparent huge pages (MADV_HUGEPAGE, as QEMU asks for)
    assert b.populated_pages() in (1, 2, 512, 513)


def test_write_read_fill_roundtrip_and_view_shares_memory():
    b = RamBlock("ram", MiB)
    b.write(100, b"hello")
    assert b.read(100, 5) == b"hello"
    assert bytes(b.view()[100:105]) == b"hello"
    b.fill(200, 0x1AB, 3)
    assert b.read(199, 5) == b"\x00\xab\xab\xab\x00"
    arr = b.numpy()
    arr[300] = 7
    assert b.read(300, 1) == b"\x07"


@pytest.mark.parametrize("offset,length", [(MiB, 1), (MiB - 1, 2), (0, MiB + 1), (2**64 - 1, 2), (2**63, 2**63)])
def test_out_of_range_access_is_an_error_not_a_crash(offset, length):
    b = RamBlock("ram", MiB)
    if length <= 4:
        with pytest.raises(RamError):
            b.write(offset, b"\0" * length)
        with pytest.raises(RamError):
            b.read(offset, length)
    with pytest.raises(RamError):
        b.fill(offset, 0, length)
    with pytest.raises(RamError):
        b.set_dirty(offset, length)


def test_every_write_path_marks_dirty_pages():
    b = RamBlock("ram", MiB)
    assert b.dirty_count() == 0
    b.write(PAGE_SIZE - 1, b"ab")  # straddles pages 0 and 1
    assert b.is_dirty(0) and b.is_dirty(1) and not b.is_dirty(2)
    b.fill(10 * PAGE_SIZE, 1, 3 * PAGE_SIZE)
    assert [b.is_dirty(p) for p in range(9, 14)] == [False, True, True, True, False]
    assert b.dirty_count() == 5
    assert b.next_dirty(0) == 0 and b.next_dirty(2) == 10 and b.next_dirty(13) == -1


def test_fetch_and_clear_moves_the_bitmap_atomically():
    b = RamBlock("ram", 4 * MiB)  # 1024 pages = 16 words
    pages = [0, 63, 64, 500, 1023]
    for p in pages:
        b.write(p * PAGE_SIZE, b"x")
    words = b.fetch_and_clear_dirty()
    assert words.dtype == np.uint64 and len(words) == 16
    bits = np.unpackbits(words.view(np.uint8), bitorder="little")
    assert list(np.flatnonzero(bits)) == pages
    assert b.dirty_count() == 0 and b.next_dirty() == -1


def test_dirty_bitmap_of_odd_page_count_never_reports_phantom_pages():
    b = RamBlock("ram", 65 * PAGE_SIZE)
    b.set_all_dirty()
    assert b.dirty_count() == 65
    assert b.next_dirty(64) == 64 and b.next_dirty(65) == -1
    with pytest.raises(RamError):
        b.is_dirty(65)


def test_zero_scan_does_not_populate_untouched_pages():
    """Never-populated pages are known zero from pagemap; populated ones are read (zero or not)."""
    b = RamBlock("ram", 1024 * PAGE_SIZE)
    assert b.zero_pages(0, 1024) == b"\x01" * 1024
    assert b.populated_pages() == 0
    b.fill(5 * PAGE_SIZE, 0, PAGE_SIZE)  # populated, yet zero
    b.write(9 * PAGE_SIZE + 17, b"\x02")
    populated = b.populated_pages()
    assert populated in (2, 512)  # the two pages, or the huge page holding both (THP)
    flags = b.zero_pages(0, 1024)
    assert [i for i, z in enumerate(flags) if not z] == [9]
    assert b.populated_pages() == populated  # the scan read, it did not populate


def test_zero_detection_and_discard():
    b = RamBlock("ram", 16 * PAGE_SIZE)
    b.write(3 * PAGE_SIZE + 4095, b"\x01")
    b.write(7 * PAGE_SIZE, b"\x80")
    flags = b.zero_pages(0, 16)
    assert [i for i, z in enumerate(flags) if not z] == [3, 7]
    b.discard(3, 1)
    assert b.read(3 * PAGE_SIZE + 4095, 1) == b"\0"
    with pytest.raises(RamError):
        b.zero_pages(10, 7)
    with pytest.raises(RamError):
        b.discard(16, 1)


@pytest.mark.parametrize("length", [0, 1, 7, 8, 9, 31, 32, 33, 4096])
def test_is_zero_all_alignments(length):
    buf = bytearray(length + 16)
    for start in range(8):
        assert lib.mc_is_zero(ffi.from_buffer(buf) + start, length) == 1
        if length:
            buf[start + length - 1] = 1
            assert lib.mc_is_zero(ffi.from_buffer(buf) + start, length) == 0
            buf[start + length - 1] = 0


def _flat(ranges):
    f = ffi.gc(lib.mc_flat_new(), lib.mc_flat_free)
    table = ffi.new("mc_range[]", max(len(ranges), 1))
    for i, (start, last, kind, block, offset) in enumerate(ranges):
        table[i].start, table[i].last, table[i].kind, table[i].handle = start, last, kind, i
        table[i].block = block.ptr if block else ffi.NULL
        table[i].offset = offset
    return f, lib.mc_flat_set(f, table, len(ranges))


def test_flat_set_rejects_bad_tables():
    b = RamBlock("ram", PAGE_SIZE)
    assert _flat([(0, PAGE_SIZE, lib.MC_KIND_RAM, b, 0)])[1] == lib.MC_EINVAL  # one byte too long
    assert _flat([(0, 0xFFF, lib.MC_KIND_RAM, b, 1)])[1] == lib.MC_EINVAL  # offset pushes past the end
    assert _flat([(0x10, 0x20, lib.MC_KIND_MMIO, None, 0), (0x20, 0x30, lib.MC_KIND_MMIO, None, 0)])[1] == lib.MC_EINVAL
    assert _flat([(0x30, 0x20, lib.MC_KIND_MMIO, None, 0)])[1] == lib.MC_EINVAL
    assert _flat([(0, 0xFFF, 99, b, 0)])[1] == lib.MC_EINVAL
    assert _flat([(0, 0xFFF, lib.MC_KIND_RAM, None, 0)])[1] == lib.MC_EINVAL
    assert _flat([(0, 0xFFF, lib.MC_KIND_RAM, b, 0), (2**64 - 16, 2**64 - 1, lib.MC_KIND_MMIO, None, 0)])[1] == 0


def test_as_access_stops_at_mmio_and_handles_the_top_of_the_address_space():
    ram = RamBlock("ram", 2 * PAGE_SIZE)
    rom = RamBlock("rom", PAGE_SIZE)
    rom.write(0, b"R" * PAGE_SIZE)
    f, rc = _flat([
        (0x1000, 0x2FFF, lib.MC_KIND_RAM, ram, 0),
        (0x4000, 0x4003, lib.MC_KIND_MMIO, None, 0),
        (2**64 - PAGE_SIZE, 2**64 - 1, lib.MC_KIND_ROM, rom, 0),
    ])
    assert rc == 0
    mmio = ffi.new("int64_t *")
    data = bytes(range(256)) * 64
    buf = ffi.from_buffer(data)
    # write from the gap before RAM into RAM, stopping at the MMIO range
    assert lib.mc_as_write(f, 0x800, buf, 0x4000, mmio) == 0x3800 and mmio[0] == 1
    assert ram.read(0, 4) == data[0x800:0x804]
    out = bytearray(0x4000)
    assert lib.mc_as_read(f, 0x800, ffi.from_buffer(out), 0x4000, mmio) == 0x3800 and mmio[0] == 1
    assert out[:0x800] == bytes(0x800) and out[0x800:0x2800] == data[0x800:0x2800] and out[0x2800:0x3800] == bytes(0x1000)
    # ROM: readable, writes dropped; addresses wrap from 2^64 - 1 to 0 (as in QEMU)
    assert lib.mc_as_write(f, 2**64 - 4, buf, 0x1008, mmio) == 0x1008 and mmio[0] == -1
    assert ram.read(0, 4) == data[0x1004:0x1008]
    out = bytearray(0x1008)
    assert lib.mc_as_read(f, 2**64 - 4, ffi.from_buffer(out), 0x1008, mmio) == 0x1008
    assert out[:4] == b"RRRR" and out[4:0x1004] == bytes(0x1000) and out[0x1004:] == data[0x1004:0x1008]
    assert lib.mc_as_fill(f, 0x1000, 0x5A, 2**40, mmio) == 0x3000 and mmio[0] == 1
    assert ram.read(0x1FFF, 1) == b"\x5a"
    assert lib.mc_as_read(f, 0, ffi.NULL, 2**63, mmio) == lib.MC_EINVAL


@pytest.mark.parametrize("data,size,expect", [
    (b"0x01020304", 4, "01020304"), (b"0x0102", 4, "01020000"), (b"0xa", 4, "00000000"),
    (b"0xzz11", 2, "ff11"), (b"abcd", 2, "cd00"), (b"0xABcd", 2, "abcd"), (b"0x1234567890", 2, "1234"),
    (b"0x123", 2, "1200"), (b"0xg1a-zz", 3, "f1ffff"), (b"0x", 0, ""), (b"0x0", 1, "00"),
])
def test_qtest_hex_decode_matches_qemu(data, size, expect):
    out = bytearray(size)
    lib.mc_qtest_hex_decode(data, len(data), ffi.from_buffer(out) if size else ffi.NULL, size)
    assert out.hex() == expect


@pytest.mark.parametrize("text,expect", [
    (b"AQIDBA==", "01020304"), (b"AQID", "010203"), (b"!!BAUG!!", "040506"), (b"CA\tkK", "08090a"),
    (b"DA=0O", "0c34"), (b"////////", "ffffffffffff"), (b"-_-_", ""), (b"AA", ""), (b"QQ==", "41"), (b"QUI=", "4142"),
])
def test_glib_base64_decode_quirks(text, expect):
    out = bytearray(len(text) // 4 * 3 + 3)
    n = lib.mc_glib_b64_decode(text, len(text), ffi.from_buffer(out))
    assert out[:n].hex() == expect


def test_glib_base64_decode_agrees_with_binascii_on_canonical_input():
    import binascii

    data = os.urandom(100_003)
    text = binascii.b2a_base64(data, newline=False)
    out = bytearray(len(text) // 4 * 3 + 3)
    n = lib.mc_glib_b64_decode(text, len(text), ffi.from_buffer(out))
    assert bytes(out[:n]) == data


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(text=st.binary(max_size=200).map(lambda b: bytes(c for c in b if c != 0)) | st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_! \t", max_size=200).map(str.encode),
    cuts=st.lists(st.integers(0, 200), max_size=6), cap=st.integers(0, 160))
def test_resumable_base64_decoder_equals_one_shot(text, cuts, cap):
    whole = bytearray(len(text) // 4 * 3 + 3)
    n = lib.mc_glib_b64_decode(text, len(text), ffi.from_buffer(whole))
    state = ffi.new("mc_b64_state *")
    out = bytearray(max(cap, 1))
    points = sorted({c % (len(text) + 1) for c in cuts})
    total = 0
    for a, b in zip([0] + points, points + [len(text)]):
        total = lib.mc_glib_b64_decode_step(state, text[a:b], b - a, ffi.from_buffer(out), cap)
    assert total == n
    assert out[: min(n, cap)] == whole[: min(n, cap)]


def test_page_record_encoder_checks_its_arguments_and_encodes_both_kinds():
    b = RamBlock("ram", 4 * PAGE_SIZE)
    b.write(PAGE_SIZE, b"\x07" * PAGE_SIZE)
    zmap = b.zero_pages(0, 4)
    out = b.encode_page_records(0, 2, zmap, b"ram")
    # named ZERO record for page 0 (no CONTINUE), then a CONTINUE PAGE record for page 1
    assert out == (0x02).to_bytes(8, "big") + b"\x03ram" + b"\x00" + (0x1000 | 0x28).to_bytes(8, "big") \
        + b"\x07" * PAGE_SIZE
    with pytest.raises(RamError):
        b.encode_page_records(3, 2, zmap, None)  # past the end of the block
    with pytest.raises(RamError):
        b.encode_page_records(0, 4, zmap[:2], None)  # zero map shorter than the run
