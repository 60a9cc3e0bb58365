"""``StreamReader(prefetch=True)``: a channel read ahead on a thread into recycled buffers gives
the same bytes as a plain read, hands over the last bytes without waiting for end of stream, joins
items longer than a buffer's headroom, and reports end of stream and errors."""
from __future__ import annotations

import os
import random
import socket
import threading

import pytest

from emu.migration.stream import StreamEOFError, StreamReader, _Prefetcher
from emu.migration.transport import TransportError, _socket_channel


def pair():
    a, b = socket.socketpair()
    return _socket_channel(a, "src"), _socket_channel(b, "dst")


def writer(chan, data: bytes, close: bool = True) -> threading.Thread:
    def run() -> None:
        chan.write_all(data)
        if close:
            chan.close()
    t = threading.Thread(target=run)
    t.start()
    return t


def test_reads_match_the_data_across_many_buffers():
    rng = random.Random(1)
    data = rng.randbytes(5 * _Prefetcher.SIZE + 12345)
    src, dst = pair()
    t = writer(src, data)
    r = StreamReader(dst, prefix=b"QEVM", prefetch=True)
    got = [r.read(4)]
    sizes = [1, 7, 4104, 9, 100_000, _Prefetcher.HEAD + 5, 3 * _Prefetcher.SIZE]  # some longer than HEAD
    while True:
        n = sizes[len(got) % len(sizes)]
        try:
            got.append(r.read(n))
        except StreamEOFError as e:
            got.append(e.partial)
            break
    t.join(10)
    assert b"".join(got) == b"QEVM" + data and r.at_eof()


def test_the_last_bytes_arrive_without_end_of_stream():
    """The sender stops but keeps the channel open: the reader must not hold the tail back."""
    src, dst = pair()
    data = os.urandom(300_000)
    t = writer(src, data, close=False)
    r = StreamReader(dst, prefetch=True)
    assert r.read(len(data)) == data
    t.join(10)
    src.close()
    assert r.at_eof()


def test_consume_buffered_sees_only_buffered_bytes():
    src, dst = pair()
    t = writer(src, b"abcdef")
    r = StreamReader(dst, prefetch=True)
    assert r.peek(2) == b"ab"
    seen = []
    assert r.consume_buffered(lambda buf, pos: seen.append(bytes(buf[pos:])) or 3) == 3
    assert seen == [b"abcdef"] and r.read(3) == b"def"
    t.join(10)


def test_a_read_error_reaches_the_loader():
    class Broken:
        def __init__(self) -> None:
            self.r, self.w = os.pipe()

        def readinto(self, buf) -> int:
            raise TransportError("Unable to read from socket: Connection reset by peer")

        def read_exactly(self, n: int) -> bytes:  # marks a transport channel
            raise AssertionError

        def read(self, n: int) -> bytes:
            raise AssertionError

        def fileno(self) -> int:
            return self.r

    r = StreamReader(Broken(), prefetch=True)
    with pytest.raises(TransportError, match="Connection reset by peer"):
        r.read(1)


def test_bytes_before_an_error_still_count_and_the_error_stays():
    class Flaky:
        def __init__(self) -> None:
            self.r, self.w = os.pipe()
            self.calls = 0

        def readinto(self, buf) -> int:
            self.calls += 1
            if self.calls == 1:
                buf[:100] = bytes(range(100))
                os.write(self.w, b"x")  # "more is readable": the reader goes on in the same buffer
                return 100
            raise TransportError("Unable to read from socket: Connection reset by peer")

        def read_exactly(self, n: int) -> bytes:
            raise AssertionError

        def read(self, n: int) -> bytes:
            raise AssertionError

        def fileno(self) -> int:
            return self.r

    r = StreamReader(Flaky(), prefetch=True)
    assert r.read(100) == bytes(range(100))
    for _ in range(2):  # not only once: a later read must not block
        with pytest.raises(TransportError, match="Connection reset by peer"):
            r.read(1)


def test_close_ends_the_reading_thread():
    src, dst = pair()
    r = StreamReader(dst, prefetch=True)
    src.write_all(b"abc")
    assert r.read(3) == b"abc"
    r.close()  # the thread was blocked reading more: shut down and joined
    assert not r._ahead._thread.is_alive()
    src.close()
    dst.close()
