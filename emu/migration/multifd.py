"""Multifd: RAM pages over extra channels beside the main stream (QEMU's migration/multifd.c).

Wire format (spec ``migration-stream.md`` §10): every multifd channel opens with a 64-byte init
packet, then carries packets with a fixed 1344-byte header (magic, version, flags, page counts,
packet number, block name, 128 be64 offsets) followed by the normal pages' bytes, raw or through a
per-channel zlib/zstd stream. Sync points on the main stream (each RAM EOS when
``multifd-flush-after-each-section`` is on, as 7.2 does; otherwise the ``MULTIFD_FLUSH`` records of
8.0+) need one SYNC packet from every channel, so pages sent before a sync point are in guest
memory before the main stream goes past it.

The page work (offset tables, gathering and scattering pages, zero pages) is in C
(``csrc/multifd.c``); Python handles one packet at a time on one thread per channel.
"""
from __future__ import annotations

import queue
import struct
import threading
import uuid as uuidlib
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from emu._native import ffi, lib

MULTIFD_MAGIC = 0x11223344
MULTIFD_VERSION = 1
PAGE_SIZE = 4096
PAGE_COUNT = 128  # MULTIFD_PACKET_SIZE (512 KiB) / page size
HEADER_SIZE = 320 + 8 * PAGE_COUNT  # 1344, whatever the page count
INIT_SIZE = 64
FLAG_SYNC = 1
#: MULTIFD_FLAG_* compression values (9.1 mask 0xf << 1: nocomp, zlib, zstd, qpl, uadk)
COMPRESSION_FLAGS = {"none": 0, "zlib": 1 << 1, "zstd": 2 << 1}
COMPRESSION_MASK = 0xF << 1
_PREFIX = struct.Struct(">IIIIIIQII")  # magic .. zero_pages, reserved: the first 40 bytes
_INIT = struct.Struct(">II16sB7x32x")


class MultifdError(Exception):
    """A multifd channel failed; the text is QEMU's."""


def init_packet(uuid: bytes, channel_id: int) -> bytes:
    """``MultiFDInit_t``: magic, version, the source's uuid, the channel id."""
    return _INIT.pack(MULTIFD_MAGIC, MULTIFD_VERSION, uuid, channel_id)


def _uuid_text(raw: bytes) -> str:
    return str(uuidlib.UUID(bytes=raw))


class _Compressor:
    """One channel's persistent zlib/zstd stream: each packet ends with a flush (QEMU's sync flush)."""

    def __init__(self, method: str, level: int) -> None:
        self.method = method
        self._z: Any  # a zlib or a zstd compression object: the same two calls on either
        if method == "zlib":
            self._z = zlib.compressobj(level)
        elif method == "zstd":
            import zstandard

            self._z = zstandard.ZstdCompressor(level=level).compressobj()

    def compress(self, data: memoryview) -> bytes:
        if self.method == "zlib":
            return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
        import zstandard

        return self._z.compress(data) + self._z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


class _FeedEmpty(Exception):
    """The current packet's compressed bytes are used up (not the end of the stream)."""


class _Feed:
    """The compressed bytes of the current packet, as a source for zstd's stream reader. It
    raises when they are used up instead of answering b"", which would end the stream."""

    def __init__(self) -> None:
        self.data = memoryview(b"")

    def read(self, n: int) -> bytes:
        if not len(self.data):
            raise _FeedEmpty
        chunk, self.data = self.data[:n], self.data[n:]
        return bytes(chunk)


class _Decompressor:
    """One channel's persistent zlib/zstd stream. Output is bounded by what the packet header
    announced, so a small hostile packet cannot inflate into gigabytes."""

    def __init__(self, method: str) -> None:
        self.method = method
        if method == "zlib":
            self._z = zlib.decompressobj()
        elif method == "zstd":
            import zstandard

            self._feed = _Feed()
            source: Any = self._feed  # zstd reads it as a file: only read() is used
            self._r = zstandard.ZstdDecompressor().stream_reader(source, read_size=1 << 16, read_across_frames=True)

    def decompress(self, data: bytes, expect: int) -> bytes:
        if self.method == "zlib":
            out = self._z.decompress(data, expect)
            left = len(self._z.unconsumed_tail)
        else:
            self._feed.data = memoryview(data)
            parts, got = [], 0
            try:
                while got < expect:
                    chunk = self._r.read(expect - got)
                    if not chunk:
                        break
                    parts.append(chunk)
                    got += len(chunk)
                left = len(self._r.read(1)) + len(self._feed.data)  # more output than announced?
            except _FeedEmpty:
                left = 0
            out = b"".join(parts)
        if len(out) != expect or left:
            raise MultifdError(f"multifd: packet of {len(data)} compressed bytes does not hold {expect} bytes")
        return out


def _each(channels: Sequence[Any], op: str) -> None:
    """``shutdown`` or ``close`` on every channel, best effort: one broken channel must not keep
    the others open."""
    for c in channels:
        try:
            getattr(c, op)()
        except Exception:  # noqa: BLE001
            pass


# ================================================================ sender

class _Job:
    __slots__ = ("block", "pages", "normal", "sync")

    def __init__(self, block: Any, pages: np.ndarray | None, normal: int, sync: bool) -> None:
        self.block, self.pages, self.normal, self.sync = block, pages, normal, sync


class MultifdSender:
    """The source's channels: ``send`` queues up to 128 pages of one block as one packet on the next
    channel (round robin); ``sync`` puts a SYNC packet on every channel and returns once each has
    been written. ``bytes_sent`` is query-migrate's ``multifd-bytes`` (init packets excluded)."""

    def __init__(self, channels: Sequence[Any], uuid: bytes, compression: str = "none", level: int = 1) -> None:
        self.channels = list(channels)
        self.uuid = uuid
        self.flags = COMPRESSION_FLAGS[compression]
        self.compression = compression
        self.level = level
        self.bytes_sent = 0
        self.error: str | None = None
        self._packet_num = 0
        self._next = 0
        self._lock = threading.Lock()
        self._queues: list[queue.Queue[_Job | None]] = [queue.Queue(maxsize=2) for _ in self.channels]
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"multifdsend_{i}", daemon=True)
                         for i in range(len(self.channels))]
        for t in self._threads:
            t.start()

    def _put(self, i: int, job: _Job | None) -> None:
        while True:
            if self.error is not None:
                raise MultifdError(self.error)
            try:
                self._queues[i].put(job, timeout=0.1)
                return
            except queue.Full:
                continue

    def send(self, block: Any, pages: np.ndarray, normal: int) -> None:
        """One packet: ``pages`` (page numbers in ``block``, at most 128), the first ``normal`` of
        them sent with their bytes, the rest listed as zero pages."""
        if len(pages) > PAGE_COUNT or not 0 <= normal <= len(pages):
            raise MultifdError(f"multifd: a packet holds at most {PAGE_COUNT} pages")
        i = self._next
        self._next = (i + 1) % len(self.channels)
        self._put(i, _Job(block, np.ascontiguousarray(pages, dtype=np.uint64), normal, False))

    def sync(self) -> None:
        """QEMU's multifd_send_sync_main: a SYNC packet on every channel, all written on return."""
        for i in range(len(self.channels)):
            self._put(i, _Job(None, None, 0, True))
        for q in self._queues:
            while q.unfinished_tasks and self.error is None:
                with q.all_tasks_done:
                    q.all_tasks_done.wait(0.1)
        if self.error is not None:
            raise MultifdError(self.error)

    def _run(self, i: int) -> None:
        chan = self.channels[i]
        q = self._queues[i]
        buf = bytearray(HEADER_SIZE + PAGE_COUNT * PAGE_SIZE)
        view = memoryview(buf)
        comp = _Compressor(self.compression, self.level) if self.compression != "none" else None
        try:
            chan.write_all(init_packet(self.uuid, i))
        except Exception as e:  # noqa: BLE001 - any channel failure fails the migration
            self._fail(e)
        while True:
            job = q.get()
            try:
                if job is None:
                    return
                if self.error is None:
                    self._write_packet(chan, job, buf, view, comp)
            except Exception as e:  # noqa: BLE001
                self._fail(e)
            finally:
                q.task_done()

    def _write_packet(self, chan: Any, job: _Job, buf: bytearray, view: memoryview, comp: _Compressor | None) -> None:
        with self._lock:
            num = self._packet_num
            self._packet_num += 1
        n = 0 if job.pages is None else len(job.pages)
        normal = job.normal
        buf[:HEADER_SIZE] = bytes(HEADER_SIZE)
        pages_ptr = ffi.NULL
        if n:
            name = job.block.name.encode()[:255]
            buf[64:64 + len(name)] = name
            pages_buf = ffi.from_buffer(job.pages)  # keeps the pointer's buffer referenced
            pages_ptr = ffi.cast("uint64_t *", pages_buf)
            with ffi.from_buffer(buf) as out:
                # without compression only the table: the pages go from guest memory by writev
                rc = lib.mf_fill_packet(job.block.ptr, pages_ptr, n, normal, out + 320,
                                        out + HEADER_SIZE if comp is not None else ffi.NULL)
            if rc < 0:
                raise MultifdError(f"multifd: page outside block {job.block.name}")
        flags = self.flags | (FLAG_SYNC if job.sync else 0)
        if comp is None:
            size = normal * PAGE_SIZE
            _PREFIX.pack_into(buf, 0, MULTIFD_MAGIC, MULTIFD_VERSION, flags, PAGE_COUNT, normal, size, num,
                              n - normal, 0)
            with ffi.from_buffer(buf) as hdr:
                chan.c_io(lambda fd, wake: lib.mf_send_packet(job.block.ptr if n else ffi.NULL, pages_ptr, normal,
                                                              hdr, HEADER_SIZE, fd, wake))
        else:
            data = comp.compress(view[HEADER_SIZE:HEADER_SIZE + normal * PAGE_SIZE]) if normal else b""
            size = len(data)
            _PREFIX.pack_into(buf, 0, MULTIFD_MAGIC, MULTIFD_VERSION, flags, PAGE_COUNT, normal, size, num,
                              n - normal, 0)
            chan.write_all(view[:HEADER_SIZE])
            if size:
                chan.write_all(data)
        with self._lock:
            self.bytes_sent += HEADER_SIZE + size

    def _fail(self, e: BaseException) -> None:
        if self.error is None:
            self.error = str(e) or type(e).__name__

    def shutdown(self) -> None:
        """Unblocks every channel (cancel): writes fail, threads end."""
        _each(self.channels, "shutdown")

    def close(self) -> None:
        """Ends the threads (after what is queued) and closes the channels."""
        for q in self._queues:
            try:
                q.put(None, timeout=5)
            except queue.Full:
                self.shutdown()
        for t in self._threads:
            t.join(5)
        _each(self.channels, "close")


# ================================================================ receiver

class MultifdReceiver:
    """The destination's channels: each runs a thread that applies packets to RAM; ``sync`` (called
    by the main stream's loader at each sync point) waits for one SYNC packet from every channel,
    then lets them go on. ``flush_after_each_section`` says where the sync points are."""

    def __init__(self, blocks: dict[str, Any], received: dict[str, bytearray], channels: int, uuid: bytes,
                 compression: str = "none", flush_after_each_section: bool = False) -> None:
        self.blocks = blocks
        self.received = received
        self.expected = channels
        self.uuid = uuid
        self.compression = compression
        self.flush_after_each_section = flush_after_each_section
        self.error: str | None = None
        self.pages = 0
        self._ids: set[int] = set()
        self._chans: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._cond = threading.Condition()
        self._synced = 0
        self._generation = 0
        self._ended = 0  # channels whose source closed them (no SYNC can come from those)
        self._closing = False
        #: called (once) when a channel fails: the owner shuts the main stream down with it
        self.on_error: Callable[[], None] | None = None

    @property
    def complete(self) -> bool:
        """All channels connected (the load starts only then, as in QEMU)."""
        return len(self._ids) >= self.expected

    def add_channel(self, chan: Any, head: bytes) -> None:
        """A new channel whose first 4 bytes (the magic) were ``head``: reads and checks the init
        packet, then starts its thread. ``MultifdError`` with QEMU's text when the packet is bad."""
        raw = head + chan.read_exactly(INIT_SIZE - len(head))
        magic, version, uuid, cid = _INIT.unpack(raw)
        if magic != MULTIFD_MAGIC:
            raise MultifdError(f"multifd: received packet magic {magic:x} expected {MULTIFD_MAGIC:x}")
        if version != MULTIFD_VERSION:
            raise MultifdError(f"multifd: received packet version {version} expected {MULTIFD_VERSION}")
        if uuid != self.uuid:
            raise MultifdError(f"multifd: received uuid '{_uuid_text(uuid)}' and expected uuid "
                               f"'{_uuid_text(self.uuid)}' for channel {cid}")
        if cid >= self.expected:
            # QEMU's text names the version (sic); it also lets id == channels through, past its array
            raise MultifdError(f"multifd: received channel version {version} expected {MULTIFD_VERSION}")
        if cid in self._ids:
            raise MultifdError(f"multifd: received id '{cid}' already setup'")
        self._ids.add(cid)
        self._chans.append(chan)
        t = threading.Thread(target=self._run, args=(chan, cid), name=f"multifdrecv_{cid}", daemon=True)
        self._threads.append(t)
        t.start()

    def _run(self, chan: Any, cid: int) -> None:
        header = bytearray(HEADER_SIZE)
        data = bytearray(PAGE_COUNT * PAGE_SIZE)
        decomp = _Decompressor(self.compression) if self.compression != "none" else None
        expect_flags = COMPRESSION_FLAGS[self.compression]
        try:
            while True:
                if not self._read_into(chan, header, eof_ok=True):
                    with self._cond:  # the source closed the channel: normal after the last sync
                        self._ended += 1
                        self._cond.notify_all()
                    return
                sync = self._apply(chan, cid, header, data, decomp, expect_flags)
                if sync:
                    self._wait_release()
        except Exception as e:  # noqa: BLE001 - any failure ends the load with its message
            self._fail(str(e))

    def _fail(self, message: str) -> None:
        """QEMU's multifd_recv_terminate_threads: the first error is kept, every channel is shut
        down (so the source's writes fail instead of filling a buffer no one reads) and the owner
        is told, so the main stream stops too."""
        with self._cond:
            if self._closing or self.error is not None:
                return
            self.error = message
            self._cond.notify_all()
        _each(self._chans, "shutdown")
        if self.on_error is not None:
            self.on_error()

    def _read_into(self, chan: Any, buf: bytearray, eof_ok: bool = False, size: int | None = None) -> bool:
        view = memoryview(buf)[: len(buf) if size is None else size]
        got = 0
        while got < len(view):
            k = chan.readinto(view[got:])
            if not k:
                if got == 0 and eof_ok:
                    return False
                raise MultifdError("multifd: unexpected end of channel")
            got += k
        return True

    def _apply(self, chan: Any, cid: int, header: bytearray, data: bytearray, decomp: _Decompressor | None,
               expect_flags: int) -> bool:
        magic, version, flags, pages_alloc, normal, next_size, _num, zero, _r = _PREFIX.unpack_from(header)
        if magic != MULTIFD_MAGIC:
            raise MultifdError(f"multifd: received packet magic {magic:x} and expected magic {MULTIFD_MAGIC:x}")
        if version != MULTIFD_VERSION:
            raise MultifdError(f"multifd: received packet version {version} and expected version {MULTIFD_VERSION}")
        if pages_alloc > PAGE_COUNT:
            raise MultifdError(f"multifd: received packet with size {pages_alloc} and expected a size of "
                               f"{PAGE_COUNT}")
        if normal > pages_alloc:
            raise MultifdError(f"multifd: received packet with {normal} pages and expected maximum pages are "
                               f"{pages_alloc}")
        if normal + zero > PAGE_COUNT:
            raise MultifdError(f"multifd: received packet with {zero} zero pages and expected maximum zero "
                               f"pages are {PAGE_COUNT - normal}")
        n = normal + zero
        block: Any = None
        if n:
            name = bytes(header[64:320]).split(b"\0", 1)[0].decode("utf-8", "replace")
            block = self.blocks.get(name)
            if block is None:
                raise MultifdError(f"multifd: unknown ram block {name}")
        if normal:
            comp = flags & COMPRESSION_MASK
            if comp != expect_flags:
                raise MultifdError(f"multifd {cid}: flags received {comp:x} flags expected {expect_flags:x}")
        if n:
            rmap = self.received.get(block.name)
            if rmap is None:
                raise MultifdError(f"multifd: unknown ram block {block.name}")
            if decomp is None:  # the pages go from the socket straight into guest memory (readv)
                with ffi.from_buffer(header) as hdr, ffi.from_buffer(rmap) as rm:
                    rc = chan.c_io(lambda fd, wake: lib.mf_recv_packet(block.ptr, block.used_length, hdr + 320, n,
                                                                       normal, fd, wake, rm), write=False)
            else:
                if next_size > 2 * PAGE_COUNT * PAGE_SIZE:
                    raise MultifdError(f"multifd {cid}: compressed packet of {next_size} bytes is too large")
                if normal:
                    out = decomp.decompress(chan.read_exactly(next_size), normal * PAGE_SIZE)
                    data[: len(out)] = out
                with ffi.from_buffer(header) as hdr, ffi.from_buffer(data) as src, ffi.from_buffer(rmap) as rm:
                    rc = lib.mf_apply_packet(block.ptr, block.used_length, hdr + 320, n, normal, src, rm)
            if rc <= -lib.MF_BADOFF_BASE:
                bad = -rc - lib.MF_BADOFF_BASE
                off = int.from_bytes(header[320 + 8 * bad:328 + 8 * bad], "big")
                raise MultifdError(f"multifd: offset too long {off} (max {block.used_length:x})")
            with self._cond:
                self.pages += n
        return bool(flags & FLAG_SYNC)

    def _wait_release(self) -> None:
        """A SYNC packet: tell the main thread, then wait until it has seen every channel's."""
        with self._cond:
            gen = self._generation
            self._synced += 1
            self._cond.notify_all()
            while self._generation == gen and not self._closing and self.error is None:
                self._cond.wait()

    def sync(self, cancelled: Callable[[], bool] = lambda: False) -> None:
        """QEMU's multifd_recv_sync_main: waits for a SYNC from every channel, then releases them."""
        with self._cond:
            while self._synced < self.expected:
                if self.error is not None:
                    raise MultifdError(self.error)
                if cancelled() or self._closing:
                    raise MultifdError("multifd: receive cancelled")
                if self._synced + self._ended >= self.expected and self._ended:
                    raise MultifdError("multifd: a channel was closed before its sync packet")
                self._cond.wait(0.1)
            self._synced -= self.expected
            self._generation += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Ends the channel threads and closes the channels (after the load, or on failure)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        _each(self._chans, "shutdown")
        for t in self._threads:
            t.join(5)
        _each(self._chans, "close")
