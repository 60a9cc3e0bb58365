"""Multifd channels in process: packets on the wire byte by byte, sender to receiver over socket
pairs, zero pages and the receivedmap, sync points, and every packet check with QEMU's text."""
from __future__ import annotations

import os
import socket
import struct
import threading
import uuid as uuidlib

import numpy as np
import pytest

from emu.migration.multifd import (
    FLAG_SYNC,
    HEADER_SIZE,
    MULTIFD_MAGIC,
    MultifdError,
    MultifdReceiver,
    MultifdSender,
    init_packet,
)
from emu.migration.transport import _socket_channel
from emu.ram import RamBlock

UUID = uuidlib.UUID("11111111-2222-3333-4444-555555555555").bytes


def pair() -> tuple:
    a, b = socket.socketpair()
    return _socket_channel(a, "src"), _socket_channel(b, "dst")


def test_init_packet_layout():
    pkt = init_packet(UUID, 3)
    assert len(pkt) == 64
    assert pkt[:8] == bytes.fromhex("1122334400000001")
    assert pkt[8:24] == UUID and pkt[24] == 3 and pkt[25:] == bytes(39)


def raw_packet(flags: int = 0, normal: int = 0, zero: int = 0, name: bytes = b"ram", offsets=(), num: int = 0,
               magic: int = MULTIFD_MAGIC, version: int = 1, alloc: int = 128, next_size: int | None = None) -> bytes:
    head = struct.pack(">IIIIIIQII", magic, version, flags, alloc, normal,
                       normal * 4096 if next_size is None else next_size, num, zero, 0)
    head += bytes(24) + name.ljust(256, b"\0")
    table = b"".join(struct.pack(">Q", o) for o in offsets)
    return head + table.ljust(8 * 128, b"\0")


class Rig:
    """A source and a destination block joined by ``n`` multifd channels."""

    def __init__(self, n: int = 2, size: int = 1 << 20, compression: str = "none") -> None:
        self.src = RamBlock("ram", size)
        self.dst = RamBlock("ram", size)
        chans = [pair() for _ in range(n)]
        self.received = {"ram": bytearray(size // 4096)}
        self.rx = MultifdReceiver({"ram": self.dst}, self.received, n, UUID, compression)
        self.tx = MultifdSender([c[0] for c in chans], UUID, compression, 1)
        for _, d in chans:
            head = d.read_exactly(4)
            self.rx.add_channel(d, head)

    def sync(self) -> None:
        """Both ends of one sync point (the source's sync returns once the packets are written)."""
        t = threading.Thread(target=self.tx.sync)
        t.start()
        self.rx.sync()
        t.join(10)

    def close(self) -> None:
        self.tx.close()
        self.rx.close()


@pytest.mark.parametrize("compression", ["none", "zlib", "zstd"])
def test_pages_cross_the_channels_and_land_before_the_sync_point(compression):
    rig = Rig(3, compression=compression)
    try:
        data = os.urandom(200 * 4096)
        rig.src.write(0x10000, data)
        pages = np.arange(16, 16 + 200, dtype=np.uint64)
        rig.tx.send(rig.src, pages[:128], 128)
        rig.tx.send(rig.src, pages[128:], 72)
        rig.sync()
        assert rig.dst.read(0x10000, len(data)) == data
        assert rig.received["ram"][16:216] == b"\x01" * 200 and rig.received["ram"].count(1) == 200
        assert rig.rx.pages == 200
        if compression == "none":  # headers plus raw pages, 3 SYNC packets; init packets not counted
            assert rig.tx.bytes_sent == 5 * HEADER_SIZE + 200 * 4096
        else:
            assert rig.tx.bytes_sent < 5 * HEADER_SIZE + 200 * 4096 + 4096
    finally:
        rig.close()


def test_zero_entries_clear_received_pages_and_leave_fresh_ones_untouched():
    rig = Rig(1)
    try:
        rig.src.write(0, b"\x55" * 8192)
        rig.tx.send(rig.src, np.array([0, 1], dtype=np.uint64), 2)
        rig.sync()
        assert rig.dst.read(0, 8192) == b"\x55" * 8192
        populated = rig.dst.populated_pages()
        # page 0 was received: the zero entry clears it; page 100 never was: only marked (9.1's fix)
        rig.tx.send(rig.src, np.array([0, 100], dtype=np.uint64), 0)
        rig.sync()
        assert rig.dst.read(0, 4096) == bytes(4096) and rig.dst.read(4096, 4096) == b"\x55" * 4096
        assert rig.received["ram"][100] == 1
        assert rig.dst.populated_pages() == populated
    finally:
        rig.close()


def test_sender_packet_bytes_on_the_wire():
    a, b = pair()
    block = RamBlock("ram", 1 << 16)
    block.write(0x3000, b"\xaa" * 4096)
    tx = MultifdSender([a], bytes(16))
    tx.send(block, np.array([3, 5], dtype=np.uint64), 1)
    tx.sync()
    assert b.read_exactly(64) == init_packet(bytes(16), 0)
    head = b.read_exactly(HEADER_SIZE)
    assert head == raw_packet(normal=1, zero=1, offsets=(0x3000, 0x5000), num=0)
    assert b.read_exactly(4096) == b"\xaa" * 4096
    sync = b.read_exactly(HEADER_SIZE)
    assert sync == raw_packet(flags=FLAG_SYNC, name=b"", num=1)
    tx.close()


def test_sender_refuses_a_page_outside_the_block():
    a, b = pair()
    block = RamBlock("ram", 1 << 16)
    tx = MultifdSender([a], bytes(16))
    tx.send(block, np.array([16], dtype=np.uint64), 1)
    with pytest.raises(MultifdError, match="page outside block ram"):
        tx.sync()
    tx.close()


def receiver(n: int = 2) -> MultifdReceiver:
    block = RamBlock("ram", 1 << 16)
    return MultifdReceiver({"ram": block}, {"ram": bytearray(16)}, n, UUID)


@pytest.mark.parametrize("packet,message", [
    (struct.pack(">II", 0x5145564D, 1) + bytes(56), "multifd: received packet magic 5145564d expected 11223344"),
    (struct.pack(">II", MULTIFD_MAGIC, 2) + bytes(56), "multifd: received packet version 2 expected 1"),
    (init_packet(bytes(16), 0), "multifd: received uuid '00000000-0000-0000-0000-000000000000' and expected uuid "
                                "'11111111-2222-3333-4444-555555555555' for channel 0"),
    # an id beyond the channel count: QEMU's message names the version (sic)
    (init_packet(UUID, 2), "multifd: received channel version 1 expected 1"),
])
def test_init_packet_checks(packet, message):
    rx = receiver()
    a, b = pair()
    a.write_all(packet)
    with pytest.raises(MultifdError) as e:
        rx.add_channel(b, b.read_exactly(4))
    assert str(e.value) == message


def test_a_channel_id_used_twice_is_refused():
    rx = receiver()
    (a1, b1), (a2, b2) = pair(), pair()
    a1.write_all(init_packet(UUID, 1))
    a2.write_all(init_packet(UUID, 1))
    rx.add_channel(b1, b1.read_exactly(4))
    with pytest.raises(MultifdError, match=r"^multifd: received id '1' already setup'$"):
        rx.add_channel(b2, b2.read_exactly(4))
    rx.close()


@pytest.mark.parametrize("packet,message", [
    (raw_packet(magic=0xDEADBEEF), "multifd: received packet magic deadbeef and expected magic 11223344"),
    (raw_packet(version=7), "multifd: received packet version 7 and expected version 1"),
    (raw_packet(alloc=129), "multifd: received packet with size 129 and expected a size of 128"),
    (raw_packet(alloc=4, normal=5, offsets=range(0, 5 * 4096, 4096)),
     "multifd: received packet with 5 pages and expected maximum pages are 4"),
    (raw_packet(zero=1, name=b"nosuch", offsets=(0,)), "multifd: unknown ram block nosuch"),
    (raw_packet(zero=1, offsets=(0x10000,)), "multifd: offset too long 65536 (max 10000)"),
    (raw_packet(zero=1, offsets=(0x1001,)), "multifd: offset too long 4097 (max 10000)"),
    (raw_packet(flags=2, normal=1, offsets=(0,)) + bytes(4096), "multifd 0: flags received 2 flags expected 0"),
])
def test_data_packet_checks_fail_the_sync_with_qemus_text(packet, message):
    rx = receiver(1)
    a, b = pair()
    a.write_all(init_packet(UUID, 0) + packet)
    rx.add_channel(b, b.read_exactly(4))
    with pytest.raises(MultifdError) as e:
        rx.sync()
    assert str(e.value) == message
    rx.close()
    assert rx.received["ram"] == bytearray(16)  # nothing applied


def test_a_channel_closed_at_a_packet_boundary_ends_quietly_but_mid_packet_is_an_error():
    rx = receiver(2)
    (a1, b1), (a2, b2) = pair(), pair()
    a1.write_all(init_packet(UUID, 0))
    a2.write_all(init_packet(UUID, 1) + raw_packet()[:100])
    rx.add_channel(b1, b1.read_exactly(4))
    rx.add_channel(b2, b2.read_exactly(4))
    a1.close()
    a2.close()
    with pytest.raises(MultifdError, match="unexpected end of channel"):
        rx.sync()
    rx.close()


def test_a_channel_that_ends_without_its_sync_fails_the_sync_point():
    rx = receiver(2)
    (a1, b1), (a2, b2) = pair(), pair()
    a1.write_all(init_packet(UUID, 0) + raw_packet(flags=FLAG_SYNC, name=b""))
    a2.write_all(init_packet(UUID, 1))
    rx.add_channel(b1, b1.read_exactly(4))
    rx.add_channel(b2, b2.read_exactly(4))
    a2.close()  # channel 1 is gone: its SYNC can never come
    with pytest.raises(MultifdError, match="^multifd: a channel was closed before its sync packet$"):
        rx.sync()
    rx.close()


def test_a_failing_channel_shuts_every_channel_and_tells_the_owner():
    rx = receiver(2)
    (a1, b1), (a2, b2) = pair(), pair()
    told = threading.Event()
    rx.on_error = told.set
    a1.write_all(init_packet(UUID, 0))
    a2.write_all(init_packet(UUID, 1) + raw_packet(magic=1))
    rx.add_channel(b1, b1.read_exactly(4))
    rx.add_channel(b2, b2.read_exactly(4))
    assert told.wait(10)
    assert rx.error == "multifd: received packet magic 1 and expected magic 11223344"
    assert a1.read(1) == b""  # the healthy channel was shut down too: its source sees the end
    rx.close()


@pytest.mark.parametrize("method", ["zlib", "zstd"])
def test_a_compressed_packet_may_not_inflate_past_its_page_count(method):
    """1 page announced, 64 MiB of zeros compressed into a few KiB: refused, not inflated."""
    import zlib

    import zstandard

    if method == "zlib":
        comp = zlib.compressobj(9)
        payload = comp.compress(bytes(64 << 20)) + comp.flush(zlib.Z_SYNC_FLUSH)
        flags = 2
    else:
        comp = zstandard.ZstdCompressor(level=19).compressobj()
        payload = comp.compress(bytes(64 << 20)) + comp.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        flags = 4
    assert len(payload) < 1 << 20
    block = RamBlock("ram", 1 << 16)
    rx = MultifdReceiver({"ram": block}, {"ram": bytearray(16)}, 1, UUID, method)
    a, b = pair()
    a.write_all(init_packet(UUID, 0) + raw_packet(flags=flags, normal=1, offsets=(0,), next_size=len(payload))
                + payload)
    rx.add_channel(b, b.read_exactly(4))
    with pytest.raises(MultifdError, match="compressed bytes does not hold 4096 bytes"):
        rx.sync()
    rx.close()
