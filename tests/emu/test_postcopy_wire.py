"""Postcopy's wire pieces, byte by byte: return-path messages (both ends), the RECV_BITMAP
bitmap, RAM_DISCARD commands, the PACKAGED blob, and the loader's postcopy command checks with
QEMU's texts."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from emu.migration import postcopy_outgoing as po
from emu.migration import return_path as rpm
from emu.migration.stream import StreamError, StreamReader, load_stream


class Pipe:
    """A channel whose writes become its reads (``write_all`` / ``read_exactly``)."""

    def __init__(self, data: bytes = b"") -> None:
        self.buf = bytearray(data)

    def write_all(self, data: bytes) -> None:
        self.buf += data

    def read_exactly(self, n: int) -> bytes:
        if len(self.buf) < n:
            raise EOFError(n)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def test_page_requests_name_the_block_only_when_it_changes() -> None:
    pipe = Pipe()
    w = rpm.ReturnPathWriter(pipe)
    w.request_pages("pc.ram", 0x5000, 4096)
    w.request_pages("pc.ram", 0x6000, 4096)
    w.request_pages("pc.bios", 0, 4096)
    assert bytes(pipe.buf[:4]) == struct.pack(">HH", rpm.RP_REQ_PAGES_ID, 13 + 6)
    t, payload = rpm.read_message(pipe)
    assert (t, rpm.decode_page_request(t, payload)) == (rpm.RP_REQ_PAGES_ID, ("pc.ram", 0x5000, 4096))
    t, payload = rpm.read_message(pipe)
    assert (t, rpm.decode_page_request(t, payload)) == (rpm.RP_REQ_PAGES, (None, 0x6000, 4096))
    t, payload = rpm.read_message(pipe)
    assert rpm.decode_page_request(t, payload) == ("pc.bios", 0, 4096)
    w.new_channel(pipe)  # after a recovery the next request names its block again
    w.request_pages("pc.bios", 4096, 4096)
    assert rpm.read_message(pipe)[0] == rpm.RP_REQ_PAGES_ID


def test_shut_pong_and_resume_ack_are_four_byte_values() -> None:
    pipe = Pipe()
    w = rpm.ReturnPathWriter(pipe)
    w.pong(3)
    w.shut(failed=True)
    w.resume_ack()
    assert bytes(pipe.buf) == bytes.fromhex("0002000400000003" "0001000400000001" "0006000400000001")


@pytest.mark.parametrize("head, text", [
    (struct.pack(">HH", 9, 0), "Received invalid message 0x0009 length 0x0000"),
    (struct.pack(">HH", rpm.RP_PONG, 2), "Received 'PONG' message (0x0002) with incorrect length 2 expecting 4"),
    (struct.pack(">HH", rpm.RP_REQ_PAGES, 13), "Received 'REQ_PAGES' message (0x0004) with incorrect length 13 "
                                               "expecting 12"),
])
def test_bad_return_path_messages_have_qemus_text(head: bytes, text: str) -> None:
    with pytest.raises(rpm.ReturnPathError) as e:
        rpm.read_message(Pipe(head + bytes(16)))
    assert e.value.message == text


def test_recv_bitmap_round_trips_and_checks_size_and_end_mark() -> None:
    received = bytearray(70)
    for page in (0, 1, 63, 64, 69):
        received[page] = 1
    pipe = Pipe()
    rpm.ReturnPathWriter(pipe).recv_bitmap("pc.ram", received)
    t, payload = rpm.read_message(pipe)
    assert (t, payload) == (rpm.RP_RECV_BITMAP, b"\x06pc.ram")  # the length covers the name only
    assert struct.unpack(">Q", bytes(pipe.buf[:8]))[0] == 16  # 70 bits: two little-endian words
    assert pipe.buf[8] == 0b11  # pages 0 and 1 in the first byte
    got = rpm.read_bitmap(pipe, 70, "pc.ram")
    assert list(np.flatnonzero(got)) == [0, 1, 63, 64, 69]
    with pytest.raises(rpm.ReturnPathError, match=r"bitmap size mismatch \(0x10 != 0x8\)"):
        rpm.read_bitmap(Pipe(rpm.encode_recv_bitmap(received)), 10, "pc.ram")
    bad = bytearray(rpm.encode_recv_bitmap(received))
    bad[-1] ^= 1
    with pytest.raises(rpm.ReturnPathError, match="end mark incorrect: 0x123456789abcdee"):
        rpm.read_bitmap(Pipe(bytes(bad)), 70, "pc.ram")


def test_discard_commands_carry_byte_ranges_twelve_per_command() -> None:
    dirty = np.zeros(100, dtype=bool)
    dirty[list(range(0, 26, 2))] = True  # 13 separate pages
    dirty[40:44] = True
    cmds = po.discard_commands("pc.ram", dirty)
    assert len(cmds) == 2
    first = cmds[0]
    assert first[:5] == struct.pack(">BHH", 8, 6, 2 + 6 + 1 + 12 * 16)
    assert first[5:14] == b"\x00\x06pc.ram\x00"
    assert struct.unpack(">QQ", first[14:30]) == (0, 4096)
    assert struct.unpack(">QQ", first[14 + 16:46]) == (2 * 4096, 4096)
    assert struct.unpack(">QQ", cmds[1][-16:]) == (40 * 4096, 4 * 4096)


def test_package_holds_listen_devices_ping_and_run() -> None:
    blob = po.package(b"DEV")
    assert blob[:5] == struct.pack(">BHH", 8, 7, 4)
    (n,) = struct.unpack(">I", blob[5:9])
    inner = blob[9:]
    assert len(inner) == n
    assert inner == (struct.pack(">BHH", 8, 4, 0) + b"DEV" + struct.pack(">BHHI", 8, 2, 4, 3)
                     + struct.pack(">BHH", 8, 5, 0))


class FakePostcopy:
    """The loader's view of the destination's postcopy, recording what it was asked to do."""

    def __init__(self, state: int = 0) -> None:
        self.state = state
        self.received: dict[str, bytearray] = {}
        self.calls: list[tuple] = []
        self.recovering = False

    def discard_all(self) -> None:
        self.calls.append(("discard_all",))

    def discard(self, name: str, start: int, length: int) -> str | None:
        self.calls.append(("discard", name, start, length))
        return None

    def paused(self, lines: list[str]) -> None:
        return None  # no recovery: the load fails


def _stream(*items: bytes) -> bytes:
    return struct.pack(">II", 0x5145564D, 3) + struct.pack(">BI", 7, 4) + b"none" + b"".join(items) + b"\x00"


def _load(data: bytes, pc: FakePostcopy) -> list[str]:
    try:
        load_stream(StreamReader.from_bytes(data), {}, None, "none", postcopy=pc)
    except StreamError as e:
        return e.messages
    return []


@pytest.mark.parametrize("items, state, text", [
    ([po.command(3, struct.pack(">QQ", 4096, 4096))], 1, "CMD_POSTCOPY_ADVISE in wrong postcopy state (1)"),
    ([po.command(3)], 0, "RAM postcopy is enabled but have 0 byte advise"),
    ([po.command(3, struct.pack(">QQ", 0x201000, 4096))], 0,
     "Postcopy needs matching RAM page sizes (s=201000 d=1000)"),
    ([po.command(3, struct.pack(">QQ", 4096, 8192))], 0, "Postcopy needs matching target page sizes (s=8192 d=4096)"),
    ([po.command(4)], 0, "CMD_POSTCOPY_LISTEN in wrong postcopy state (0)"),
    ([po.command(5)], 1, "CMD_POSTCOPY_RUN in wrong postcopy state (1)"),
    ([po.command(6, b"\x00\x02ab\x00" + bytes(16))], 3, "CMD_POSTCOPY_RAM_DISCARD in wrong postcopy state (3)"),
    ([po.command(6, b"\x01\x02ab\x00" + bytes(16))], 1, "CMD_POSTCOPY_RAM_DISCARD invalid version (1)"),
    ([po.command(6, b"\x00\x02ab\x01" + bytes(16))], 1, "CMD_POSTCOPY_RAM_DISCARD missing nil (1)"),
    ([po.command(6, b"\x00\x02ab\x00" + bytes(17))], 1, "CMD_POSTCOPY_RAM_DISCARD invalid length (17)"),
])
def test_postcopy_commands_in_the_wrong_state_or_shape_fail_with_qemus_text(items: list[bytes], state: int,
                                                                           text: str) -> None:
    pc = FakePostcopy(state)
    assert text in _load(_stream(*items), pc)


def test_advise_then_discard_reach_the_postcopy_state() -> None:
    pc = FakePostcopy()
    ranges = struct.pack(">QQQQ", 0, 4096, 8192, 8192)
    _load(_stream(po.postcopy_advise(), po.command(6, b"\x00\x06pc.ram\x00" + ranges)), pc)
    assert pc.calls == [("discard_all",), ("discard", "pc.ram", 0, 4096), ("discard", "pc.ram", 8192, 8192)]
    assert pc.state == 2  # DISCARD


def test_discard_ranges_are_checked_with_qemus_texts_and_make_pages_missing() -> None:
    from emu.migration.postcopy_incoming import PostcopyIncoming
    from emu.ram import RamBlock

    block = RamBlock("pc.ram", 16 * 4096)
    block.write(0, b"\xaa" * 4 * 4096)
    pc = PostcopyIncoming([block], vcpu_thread_id=lambda: None, blocktime=False)
    pc.received["pc.ram"][:4] = b"\x01" * 4
    assert pc.discard("nope", 0, 4096) == "ram_discard_range: Failed to find block 'nope'"
    assert pc.discard("pc.ram", 100, 4096).startswith("ram_block_discard_range: Unaligned start address: 0x")
    assert pc.discard("pc.ram", 4096, 16 * 4096) == "ram_block_discard_range: Overrun block 'pc.ram' (4096/10000/10000)"
    assert pc.discard("pc.ram", 0, 100) == "ram_block_discard_range: Unaligned length: 64"
    assert pc.discard("pc.ram", 4096, 2 * 4096) is None
    assert bytes(pc.received["pc.ram"][:4]) == b"\x01\x00\x00\x01"
    assert block.read(0, 4 * 4096) == b"\xaa" * 4096 + bytes(2 * 4096) + b"\xaa" * 4096  # missing reads as zero
    assert pc.missing_pages() == 14
    pc.close()


class ResetAfter:
    """A source whose connection is reset after ``data``: reads then raise the channel's error."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int) -> bytes:
        from emu.migration.transport import TransportError

        if not self.data:
            raise TransportError("Unable to read from socket: Connection reset by peer")
        out, self.data = self.data[:n], self.data[n:]
        return out


class PausingPostcopy(FakePostcopy):
    def paused(self, lines: list[str]) -> None:
        self.calls.append(("paused", lines))
        return None


def test_a_reset_connection_fails_the_load_with_eio_like_an_early_end() -> None:
    # QEMU's qemu_fill_buffer turns every channel error into EIO; before, the reset escaped the
    # loader as an exception and a postcopy destination exited instead of pausing
    data = _stream()[:-1]  # no EOF: the connection is reset there
    with pytest.raises(StreamError) as e:
        load_stream(StreamReader(ResetAfter(data)), {}, None, "none")
    assert e.value.messages[-1] == "load of migration failed: Input/output error"


def test_a_reset_connection_in_postcopy_pauses() -> None:
    pc = PausingPostcopy(state=4)  # LISTENING: past the package, pages are being placed
    with pytest.raises(StreamError):
        load_stream(StreamReader(ResetAfter(_stream()[:-1])), {}, None, "none", postcopy=pc)
    assert [c[0] for c in pc.calls] == ["paused"]
