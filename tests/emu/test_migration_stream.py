"""The migration stream layer against real QEMU 7.2 data (../shared/vectors): the saver ``migrate``
runs (``PrecopySaver``) and the loader, whose trace also shows what it walked."""
from __future__ import annotations

import io
import json
import re
import struct
from collections import Counter
from pathlib import Path

import pytest
from xbzrle_reference import xbzrle_encode

from emu.migration import ram_flags
from emu.migration import vmstate as vms
from emu.migration.precopy import PrecopySaver
from emu.migration.ram_flags import (
    RAM_SAVE_FLAG_CONTINUE,
    RAM_SAVE_FLAG_EOS,
    RAM_SAVE_FLAG_MEM_SIZE,
    RAM_SAVE_FLAG_PAGE,
    RAM_SAVE_FLAG_XBZRLE,
    RAM_SAVE_FLAG_ZERO,
)
from emu.migration.stream import (
    QEMU_VM_SECTION_PART,
    StreamEOFError,
    StreamError,
    StreamItem,
    StreamReader,
    StreamTrace,
    StreamWriter,
    load_stream,
    machine_none_devices,
    xbzrle_decode,
)
from emu.ram import RamBlock

_SHARED = Path(__file__).resolve().parents[3] / "shared" / "vectors"
# ../shared/vectors when present, else the repository's copy of the same files (tests/vectors)
VECTORS = _SHARED if (_SHARED / "qemu72-none-16M.mig").is_file() else Path(__file__).resolve().parents[1] / "vectors"
MIG = VECTORS / "qemu72-none-16M.mig"
CASES = json.loads((VECTORS / "qemu72-load-errors.json").read_text())
PREFIX = "qemu-system-x86_64: "
MiB = 1 << 20

# ---------------------------------------------------------------- building blocks (vectors README §2.1)
PAT1 = bytes((i * 7 + 1) & 0xFF for i in range(4096))
PAT2 = b"QEMU-EMU" * 512
PAT2_NEW = bytearray(PAT2)
PAT2_NEW[100:104] = bytes.fromhex("deadbeef")
PAT2_NEW[4000] = 0x55
PAT2_NEW = bytes(PAT2_NEW)
DELTA = bytes.fromhex("6404deadbeefb81e0155")

H = bytes.fromhex("5145564d00000003")
EOF = b"\x00"


def be32(v: int) -> bytes:
    return struct.pack(">I", v)


def be64(v: int) -> bytes:
    return struct.pack(">Q", v)


def C(name: bytes) -> bytes:
    return b"\x07" + be32(len(name)) + name


def counted(s: bytes) -> bytes:
    return bytes((len(s),)) + s


EOS = be64(0x10)
MEM_SIZE = be64(0x1000004) + counted(b"ram") + be64(0x1000000)


def foot(sid: int) -> bytes:
    return b"\x7e" + be32(sid)


def hdr(kind: int, sid: int, idstr: bytes = b"ram", inst: int = 0, ver: int = 4) -> bytes:
    if kind in (1, 4):
        return bytes((kind,)) + be32(sid) + counted(idstr) + be32(inst) + be32(ver)
    return bytes((kind,)) + be32(sid)


def page1(name: bytes = b"ram") -> bytes:
    return be64(0x1008) + counted(name) + PAT1


def zero2(fill: int = 0) -> bytes:
    return be64(0x2022) + bytes((fill,))


PAGE2 = be64(0x3028) + PAT2
XBZ = be64(0x3060) + b"\x01" + struct.pack(">H", len(DELTA)) + DELTA


def RS(sid: int = 2, ver: int = 4, mem: bytes = MEM_SIZE, footer: int | None = None) -> bytes:
    return hdr(1, sid, ver=ver) + mem + EOS + foot(sid if footer is None else footer)


def RP(sid: int = 2, name: bytes = b"ram", fill: int = 0, xbz: bool = True) -> bytes:
    return hdr(2, sid) + page1(name) + zero2(fill) + PAGE2 + (XBZ if xbz else b"") + EOS + foot(sid)


def RE(sid: int = 2) -> bytes:
    return hdr(3, sid) + EOS + foot(sid)


def GS(rs: bytes) -> bytes:
    return hdr(4, 4, b"globalstate", 0, 1) + be32(len(rs) + 1) + rs.ljust(100, b"\0") + foot(4)


def no_footers(s: bytes, sid: int = 2) -> bytes:
    return s.replace(foot(sid), b"")


NONE = C(b"none")
MINIMAL = H + NONE + RS() + RP() + RE() + EOF
GS_DESC = (b'{"page_size": 4096, "devices": [{"name": "globalstate", "instance_id": 0, "vmsd_name": "globalstate", '
           b'"version": 1, "fields": [{"name": "size", "type": "uint32", "size": 4}, {"name": "runstate", '
           b'"type": "buffer", "size": 100}]}]}')
INNER = RS() + RP() + RE() + EOF
UUID_SUB = b"\x05" + counted(b"configuration/uuid") + be32(1) + bytes(range(16))
RAM_BODY_RECS = page1() + zero2() + PAGE2


def tail(*records: bytes) -> bytes:
    return b"".join(records) + EOS + foot(2)


STREAMS: dict[str, bytes] = {
    # accepted (README §2.2)
    "minimal": MINIMAL,
    "minimal_vmdesc": H + NONE + RS() + RP() + RE() + GS(b"paused") + EOF + b"\x06" + be32(len(GS_DESC)) + GS_DESC,
    "ram_single_full": H + NONE + hdr(4, 7) + MEM_SIZE + RAM_BODY_RECS + XBZ + EOS + foot(7) + EOF,
    "ram_start_only": H + NONE + hdr(1, 2) + MEM_SIZE + RAM_BODY_RECS + EOS + foot(2) + EOF,
    "no_mem_size": H + NONE + hdr(1, 2) + RAM_BODY_RECS + EOS + foot(2) + EOF,
    "no_ram_at_all": H + NONE + EOF,
    "machine_prefix": H + C(b"no") + RS() + RP() + RE() + EOF,
    "machine_empty": H + C(b"") + RS() + RP() + RE() + EOF,
    "zero_fill_nonzero": H + NONE + RS() + RP(fill=0xAB) + RE() + EOF,
    "cmd_packaged": H + NONE + bytes.fromhex("0800070004") + be32(len(INNER)) + INNER + EOF,
    "config_subsection_uuid": H + NONE + UUID_SUB + RS() + RP() + RE() + EOF,
    "trailing_garbage": MINIMAL + b"\x99garbage",
    "globalstate_running": H + NONE + RS() + RP() + RE() + GS(b"running") + EOF,
    "devices_before_ram": H + NONE + GS(b"paused") + RS() + RP() + RE() + EOF,
    "section_id_arbitrary": H + NONE + RS(1234) + RP(1234) + RE(1234) + EOF,
    # refused (README §2.3)
    "no_config": H + RS() + RP() + RE() + EOF,
    "wrong_machine": H + C(b"pc-i440fx-7.2") + RS() + RP() + RE() + EOF,
    "machine_longer": H + C(b"none-extra") + RS() + RP() + RE() + EOF,
    "bad_magic": bytes.fromhex("5145560000000003") + NONE + EOF,
    "version2": bytes.fromhex("5145564d00000002") + NONE + EOF,
    "version4": bytes.fromhex("5145564d00000004") + NONE + EOF,
    "no_footers": no_footers(MINIMAL),
    "wrong_footer_id": H + NONE + RS(footer=9) + EOF,
    "unknown_section": H + NONE + hdr(4, 3, b"foo", 0, 1) + be32(0) + foot(3) + EOF,
    "unknown_instance": H + NONE + hdr(4, 3, b"timer", 1, 2) + bytes(24) + foot(3) + EOF,
    "ram_version5": H + NONE + RS(ver=5) + EOF,
    "ram_version3": H + NONE + RS(ver=3) + EOF,
    "part_unknown_id": H + NONE + RP(9) + EOF,
    "unknown_block": H + NONE + RS(mem=be64(0x1000004) + counted(b"pc.ram") + be64(0x1000000)) + EOF,
    "wrong_block_size": H + NONE + RS(mem=be64(0x2000004) + counted(b"ram") + be64(0x2000000)) + EOF,
    "page_unknown_block": H + NONE + RS() + RP(name=b"nosuch", xbz=False) + EOF,
    "page_out_of_range": H + NONE + RS() + hdr(2, 2) + tail(be64(0x1000008) + counted(b"ram") + PAT1) + EOF,
    "continue_first": H + NONE + RS() + hdr(2, 2) + tail(be64(0x1028) + PAT1) + EOF,
    "unknown_ram_flag": H + NONE + RS() + hdr(2, 2) + be64(0x1100) + counted(b"ram") + be32(4) + be32(0)
    + EOS + foot(2) + EOF,
    "multifd_flush_flag": H + NONE + RS() + hdr(2, 2) + tail(be64(0x200), page1()) + EOF,
    "xbzrle_bad_encoding": H + NONE + RS() + hdr(2, 2)
    + tail(be64(0x3008) + counted(b"ram") + PAT2, be64(0x3060) + bytes.fromhex("020003000100")) + EOF,
    "missing_eof": MINIMAL[:-1],
    "missing_ram_eos": H + NONE + RS() + hdr(2, 2) + page1() + foot(2) + EOF,
    "truncated_page": H + NONE + RS() + hdr(2, 2) + page1()[:2000],
    "unknown_section_type": H + NONE + b"\x42" + EOF,
    "subsection_type_toplevel": H + NONE + b"\x05" + EOF,
    "cmd_unknown": H + NONE + bytes.fromhex("0800500000") + EOF,
    "cmd_ping_no_rp": H + NONE + bytes.fromhex("080002000400000007") + EOF,
    "cmd_ping_badlen": H + NONE + bytes.fromhex("08000200020007") + EOF,
    "config_subsection_unknown": H + NONE + b"\x05" + counted(b"configuration/bogus") + be32(1) + EOF,
}


def fresh_ram() -> RamBlock:
    return RamBlock("ram", 16 * MiB)


def expected_lines(case: dict) -> list[str]:
    return [ln.removeprefix(PREFIX) for ln in case["stderr"].split("\n") if ln]


def save_stopped(sink, blocks: list[RamBlock], runstate: str) -> PrecopySaver:
    """A stopped ``-M none`` source's stream, written by the saver ``migrate`` runs: its setup, one
    round with every page, then the completion (nothing is dirtied in between)."""
    saver = PrecopySaver(sink if isinstance(sink, StreamWriter) else StreamWriter(sink), blocks, "none")
    saver.start()
    saver.send_pages(PrecopySaver.all_pages(blocks), QEMU_VM_SECTION_PART, lambda sent: None)
    saver.finish(saver.sync(), machine_none_devices(), runstate)
    return saver


def traced(data: bytes, ram: RamBlock | None = None) -> list[StreamItem]:
    """The items the loader walks in ``data`` (loaded into ``ram`` or a fresh block)."""
    trace = StreamTrace()
    load_stream(io.BytesIO(data), {"ram": ram if ram is not None else fresh_ram()}, None, "none", trace=trace)
    return trace.items


_KIND_NAMES = {RAM_SAVE_FLAG_ZERO: "zero", RAM_SAVE_FLAG_PAGE: "page", RAM_SAVE_FLAG_XBZRLE: "xbzrle",
               RAM_SAVE_FLAG_EOS: "eos", RAM_SAVE_FLAG_MEM_SIZE: "mem_size"}


def ram_counts(item: StreamItem) -> Counter:
    """An item's RAM records by kind, plus how many page records carry the block name (named) or
    use CONTINUE (continue)."""
    counts: Counter = Counter(_KIND_NAMES.get(r.kind, "other") for r in item.records)
    for r in item.records:
        if r.kind in (RAM_SAVE_FLAG_ZERO, RAM_SAVE_FLAG_PAGE, RAM_SAVE_FLAG_XBZRLE):
            counts["continue" if r.flags & RAM_SAVE_FLAG_CONTINUE else "named"] += 1
    return counts


def assert_tiles(items: list[StreamItem], end: int) -> None:
    """Every item ends where the next begins (a PACKAGED command where its nested items do), the
    last at ``end``; a RAM section's records likewise, from its body up to its footer."""
    assert [i.end for i in items[:-1]] == [i.offset for i in items[1:]]
    assert items[-1].end == end
    for it in items:
        if it.records:
            recs = it.records
            assert [r.end for r in recs[:-1]] == [r.offset for r in recs[1:]]
            assert it.end is not None and it.body_size is not None
            assert recs[-1].end == it.end - 5 and recs[0].offset == it.end - 5 - it.body_size


# ---------------------------------------------------------------- the real stream (vectors README §1)

def test_save_is_byte_exact_against_qemu72_vector():
    out = io.BytesIO()
    saver = save_stopped(out, [fresh_ram()], "prelaunch")
    assert out.getvalue() == MIG.read_bytes()
    assert (saver.sent_zero, saver.sent_normal, saver.bytes_sent) == (4096, 0, 37645)


def test_save_through_short_writes():
    class Trickle:
        def __init__(self):
            self.buf = bytearray()

        def write(self, b):
            n = min(len(b), 1000)
            self.buf += bytes(b[:n])
            return n

    sink = Trickle()
    save_stopped(StreamWriter(sink, buffer_size=4096), [fresh_ram()], "prelaunch")
    assert bytes(sink.buf) == MIG.read_bytes()


def test_trace_of_the_vector_structure():
    data = MIG.read_bytes()
    items = traced(data)
    got = [(i.kind, i.offset, i.section_id, i.idstr, i.instance_id, i.version_id, i.body_size) for i in items]
    assert got == [
        ("header", 0x0, None, None, None, 3, None),
        ("config", 0x8, None, None, None, None, None),
        ("START", 0x11, 2, "ram", 0, 4, 28),
        ("PART", 0x43, 2, "ram", None, None, 36876),
        ("END", 0x9059, 2, "ram", None, None, 8),
        ("FULL", 0x906B, 0, "timer", 0, 2, 24),
        ("FULL", 0x909B, 4, "globalstate", 0, 1, 104),
        ("EOF", 0x9121, None, None, None, None, None),
        ("vmdesc", 0x9122, None, None, None, None, None),
    ]
    assert items[0].value == 0x5145564D
    assert items[1].name == "none"
    assert [r.sizes for r in items[2].records] == [[("ram", 16 * MiB)], []]
    assert ram_counts(items[2]) == {"mem_size": 1, "eos": 1}
    part = ram_counts(items[3])
    assert (part["zero"], part["page"], part["xbzrle"], part["named"], part["continue"]) == (4096, 0, 0, 1, 4095)
    assert ram_counts(items[4]) == {"eos": 1}
    assert items[3].records[0].parts == [("word", 8), ("name", 4), ("fill", 1)]
    assert items[3].records[1].parts == [("word", 8), ("fill", 1)]
    assert items[8].length == 486
    desc = json.loads(data[items[8].offset + 5:items[8].end])
    assert [d["name"] for d in desc["devices"]] == ["timer", "globalstate"]
    assert_tiles(items, len(data))


def test_trace_parts_of_every_record_kind_and_a_packaged_stream():
    data = STREAMS["cmd_packaged"]
    items = traced(data)
    assert [i.kind for i in items] == ["header", "config", "command", "START", "PART", "END", "EOF", "EOF"]
    cmd = items[2]
    assert (cmd.offset, cmd.end, cmd.value, cmd.name, cmd.length) == (17, 26, 7, "PACKAGED", 4)
    assert items[3].offset == 26  # nested items at their offsets in the outer stream
    assert_tiles(items, len(data))
    assert [r.parts for r in items[4].records] == [
        [("word", 8), ("name", 4), ("page", 4096)],
        [("word", 8), ("fill", 1)],
        [("word", 8), ("page", 4096)],
        [("word", 8), ("encoding", 1), ("delta_len", 2), ("delta", len(DELTA))],
        [("word", 8)],
    ]
    body = items[4].offset + 5  # after the PART header
    assert [r.offset for r in items[4].records][:2] == [body, body + 8 + 4 + 4096]


def test_trace_stops_before_trailing_bytes_and_inside_a_failing_item():
    items = traced(STREAMS["trailing_garbage"])
    assert_tiles(items, len(MINIMAL))  # the loader reads a vmdesc type byte and stops: no item
    trace = StreamTrace()
    with pytest.raises(StreamError):
        load_stream(io.BytesIO(STREAMS["truncated_page"]), {"ram": fresh_ram()}, None, "none", trace=trace)
    last = trace.items[-1]
    assert (last.kind, last.end, len(last.records)) == ("PART", None, 1)
    assert last.records[0].parts == [("word", 8), ("name", 4), ("page", 2000 - 12)]


def test_python_ram_flags_are_the_c_core_ones():
    header = (Path(__file__).resolve().parents[2] / "csrc" / "ram_flags.h").read_text()
    in_c = {m[1]: int(m[2], 16) for m in re.finditer(r"#define (RAM_(?:SAVE|ENCODING)_FLAG_\w+) (0x[0-9a-f]+)u", header)}
    in_py = {n: getattr(ram_flags, n) for n in ram_flags.__all__ if n.startswith("RAM_SAVE_FLAG_")}
    in_py["RAM_ENCODING_FLAG_XBZRLE"] = ram_flags.ENCODING_FLAG_XBZRLE
    assert in_c == in_py


def test_vmdesc_entries_match_vector():
    js = json.dumps({"page_size": 4096, "devices": [vms.vmdesc_device(vms.timer_entry()),
                                                     vms.vmdesc_device(vms.globalstate_entry("prelaunch"))]})
    assert js.encode() == MIG.read_bytes()[0x9127:]


def test_load_vector_into_fresh_ram():
    ram = fresh_ram()
    res = load_stream(io.BytesIO(MIG.read_bytes()), {"ram": ram}, None, "none")
    assert res.runstate == "prelaunch" and res.received_runstate == "prelaunch"
    assert res.warnings == []
    assert res.zero_pages == 4096 and res.normal_pages == 0
    assert ram.populated_pages() == 0
    assert ram.zero_pages(0, ram.pages) == b"\x01" * ram.pages


def test_load_vector_through_one_byte_reads():
    class Drip:
        def __init__(self, data):
            self.b = io.BytesIO(data)

        def read(self, n):
            return self.b.read(1)

    res = load_stream(StreamReader(Drip(MIG.read_bytes())), {"ram": fresh_ram()}, None, "none")
    assert res.runstate == "prelaunch"


def test_load_zero_record_clears_a_dirty_page():
    ram = fresh_ram()
    ram.write(0x5000, b"\x01" * 4096)
    load_stream(io.BytesIO(MIG.read_bytes()), {"ram": ram}, None, "none")
    assert ram.read(0x5000, 4096) == bytes(4096)


# ---------------------------------------------------------------- the 45 hand-made streams (vectors README §2)

def test_every_case_is_rebuilt():
    assert set(STREAMS) == set(CASES)


@pytest.mark.parametrize("trace", [None, StreamTrace], ids=["plain", "traced"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_qemu72_load_case(name, trace):
    """Each case as QEMU 7.2 loads it; a traced load (records one by one) ends the same way."""
    case = CASES[name]
    stream = STREAMS[name]
    assert len(stream) == case["bytes"]
    ram = fresh_ram()
    if trace is not None:
        trace = trace()
    if case["status"] == "completed":
        res = load_stream(io.BytesIO(stream), {"ram": ram}, None, "none", trace=trace)
        assert res.warnings == expected_lines(case)
        assert res.runstate == case["runstate"]
        fill = 0xAB if name == "zero_fill_nonzero" else 0
        p1, p2, p3 = ram.read(0x1000, 4096), ram.read(0x2000, 4096), ram.read(0x3000, 4096)
        assert {
            "page1000==PAT1": p1 == PAT1,
            "page2000==fill": p2 == bytes((fill,)) * 4096,
            "page3000==PAT2_NEW(xbzrle)": p3 == PAT2_NEW,
            "page3000==PAT2": p3 == PAT2,
        } == case["mem"]
    else:
        with pytest.raises(StreamError) as ei:
            load_stream(io.BytesIO(stream), {"ram": ram}, None, "none", trace=trace)
        lines = expected_lines(case)
        assert ei.value.messages == lines
        strerror = lines[-1].split(": ", 1)[1]
        assert {"Invalid argument": "EINVAL", "Operation not supported": "ENOTSUP", "Input/output error": "EIO",
                "Operation not permitted": "EPERM", "Numerical result out of range": "ERANGE",
                "No such file or directory": "ENOENT"}[strerror] == ei.value.errno_name


# ---------------------------------------------------------------- RAM state after a refused load

def test_ram_state_after_error_keeps_pages_before_the_failing_record():
    ram = fresh_ram()
    with pytest.raises(StreamError) as ei:
        load_stream(io.BytesIO(STREAMS["xbzrle_bad_encoding"]), {"ram": ram}, None, "none")
    assert ram.read(0x3000, 4096) == PAT2  # the PAGE before the bad XBZRLE record is loaded
    assert ei.value.records_applied == 1

    ram = fresh_ram()
    with pytest.raises(StreamError):
        load_stream(io.BytesIO(STREAMS["missing_ram_eos"]), {"ram": ram}, None, "none")
    assert ram.read(0x1000, 4096) == PAT1

    ram = fresh_ram()
    with pytest.raises(StreamError) as ei:
        load_stream(io.BytesIO(STREAMS["truncated_page"]), {"ram": ram}, None, "none")
    assert ei.value.records_applied == 0 and ram.populated_pages() == 0
    assert ram.read(0x1000, 4096) == bytes(4096)  # the truncated page is not half-written


# ---------------------------------------------------------------- round trips, XBZRLE, reader

def test_round_trip_with_data_pages():
    src = fresh_ram()
    src.write(0x1000, PAT1)
    src.write(0xFFF000, PAT2)
    out = io.BytesIO()
    saver = save_stopped(out, [src], "paused")
    assert saver.sent_normal == 2 and saver.sent_zero == 4094
    items = traced(out.getvalue())
    part = ram_counts(next(i for i in items if i.kind == "PART"))
    assert (part["page"], part["zero"], part["named"]) == (2, 4094, 1)
    assert_tiles(items, len(out.getvalue()))
    dst = fresh_ram()
    res = load_stream(io.BytesIO(out.getvalue()), {"ram": dst}, None, "none")
    assert res.runstate == "paused" and res.warnings == []
    assert dst.read(0x1000, 4096) == PAT1 and dst.read(0xFFF000, 4096) == PAT2
    # the 4094 ZERO records populate nothing: the destination holds what the source's two writes
    # populated (two pages, or their two huge pages with THP)
    assert dst.populated_pages() == src.populated_pages() in (2, 1024)


class _Trickle(io.RawIOBase):
    """A source that returns at most ``step`` bytes per read: records arrive split across reads."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.pos, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        out = self.data[self.pos:self.pos + min(n if n >= 0 else self.step, self.step)]
        self.pos += len(out)
        return out


@pytest.mark.parametrize("step", [1, 7, 4104, 5000, 1 << 20])
def test_c_record_runs_give_the_same_ram_whatever_the_read_sizes(step):
    """The C fast path applies only complete records already buffered; the Python parser takes the
    rest, so any split of the stream gives the same RAM, counts, and no extra populated pages."""
    import random

    rng = random.Random(step)
    src = fresh_ram()
    for page in rng.sample(range(4096), 40):
        src.write(page * 4096, rng.randbytes(4096))
    src.fill(0x500000, 0x5A, 3 * 4096)  # non-zero fill pages are ordinary pages on the wire
    out = io.BytesIO()
    save_stopped(out, [src], "paused")
    dst = fresh_ram()
    dst.fill(0x700000, 0x77, 4096)  # data the zero record for this page must clear
    res = load_stream(_Trickle(out.getvalue(), step), {"ram": dst}, None, "none")
    assert res.runstate == "paused"
    assert dst.read(0, 16 << 20) == src.read(0, 16 << 20)
    assert dst.populated_pages() == src.populated_pages()


def test_c_record_run_stops_at_an_out_of_range_page_with_the_parser_error():
    bad = H + NONE + RS() + hdr(2, 2) + tail(page1(), be64(0x2000000 | 0x22) + b"\x00") + EOF
    with pytest.raises(StreamError) as ei:
        load_stream(io.BytesIO(bad), {"ram": fresh_ram()}, None, "none")
    assert "Illegal RAM offset 2000000" in str(ei.value.messages)


def test_xbzrle_codec_matches_readme_delta():
    assert xbzrle_encode(PAT2, PAT2_NEW) == DELTA
    page = bytearray(PAT2)
    assert xbzrle_decode(DELTA, page) == 4001 and bytes(page) == PAT2_NEW
    assert xbzrle_encode(PAT2, PAT2) == b""
    assert xbzrle_encode(bytes(4096), bytes(range(256)) * 16) is None  # overflow -> normal page
    assert xbzrle_decode(b"\x00\x00", bytearray(16)) == -1  # nonzero-run of 0
    assert xbzrle_decode(b"\x01", bytearray(16)) == -1  # fewer than 2 bytes left
    assert xbzrle_decode(b"\x80\x80\x01\x01\x01", bytearray(16)) == -1  # 3-byte uleb


def test_xbzrle_decode_error_message():
    bad = H + NONE + RS() + hdr(2, 2) + tail(page1(), be64(0x1060) + b"\x01" + struct.pack(">H", 2) + b"\x00\x00") + EOF
    with pytest.raises(StreamError) as ei:
        load_stream(io.BytesIO(bad), {"ram": fresh_ram()}, None, "none")
    assert ei.value.messages == ["Failed to load XBZRLE page - decode error!", "Failed to decompress XBZRLE page at 1000",
                                 "error while loading state section id 2(ram)",
                                 "load of migration failed: Invalid argument"]


def test_globalstate_invalid_runstate():
    s = H + NONE + GS(b"bogus") + EOF
    with pytest.raises(StreamError) as ei:
        load_stream(io.BytesIO(s), {"ram": fresh_ram()}, None, "none")
    assert ei.value.messages == ["invalid parameter value: bogus",
                                 "error while loading state for instance 0x0 of device 'globalstate'",
                                 "load of migration failed: Invalid argument"]


def test_uuid_mismatch_and_autostart_off():
    s = H + NONE + UUID_SUB + EOF
    with pytest.raises(StreamError) as ei:
        load_stream(io.BytesIO(s), {"ram": fresh_ram()}, None, "none", uuid=bytes(16))
    assert ei.value.messages[0] == ("UUID received is 00010203-0405-0607-0809-0a0b0c0d0e0f and local is "
                                    "00000000-0000-0000-0000-000000000000")
    res = load_stream(io.BytesIO(H + NONE + EOF), {"ram": fresh_ram()}, None, "none", autostart=False)
    assert res.runstate == "paused"


def test_reader_eof_error_is_clear():
    r = StreamReader.from_bytes(b"abc")
    assert r.read(2) == b"ab"
    with pytest.raises(StreamEOFError) as ei:
        r.read(4)
    assert ei.value.partial == b"c" and ei.value.wanted == 4 and "offset 3" in str(ei.value)
