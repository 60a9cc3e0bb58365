"""The QEMU migration stream (main channel, precopy): reading, writing and loading it, independent
of sockets and of QMP. Writing a stream is ``emu.migration.precopy``'s (the saver ``migrate`` uses).

Spec: ``migration-stream.md`` (§2 grammar, §3 configuration, §4 commands, §5 loader messages,
§6 vmdesc, §8 RAM, §9 XBZRLE). Test vectors: ``vectors/README.md``. RAM record flags:
``emu.migration.ram_flags``.

* :class:`StreamReader` / :class:`StreamWriter` sit on any object with ``read(n)`` / ``write(b)``
  (file, pipe, socket wrapper); short reads and short writes are handled.
* :func:`load_stream` loads a stream with QEMU 7.2's semantics and exact stderr messages; failures
  raise :class:`StreamError`. With a :class:`StreamTrace` it also reports what it walked: every
  item with its offsets and fields, every RAM record with its parts (for tests, analysis and the
  stream fuzzer, which split streams with it).

**RAM state after a failed load** (as in QEMU 7.2): every page record *before* the failing one has
been applied to the RAM blocks (RAM is written as records arrive; nothing is rolled back). The
failing record itself is not applied: a truncated PAGE is not written (QEMU would copy the partial
bytes) and an XBZRLE delta that fails to decode leaves the page as it was (QEMU may have patched part
of it). ``StreamError.records_applied`` tells how many page records were applied.

This module sits below the migration manager and the saver; it imports only ``vmstate`` and
``ram_flags`` of ``emu.migration`` (and ``multifd`` for its error type, at load time).
"""
from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from emu.migration import vmstate as vms
from emu.migration.errors import QemuTextError
from emu.migration.ram_flags import (
    ENCODING_FLAG_XBZRLE,
    RAM_FLAGS_MASK,
    RAM_SAVE_FLAG_COMPRESS_PAGE,
    RAM_SAVE_FLAG_CONTINUE,
    RAM_SAVE_FLAG_EOS,
    RAM_SAVE_FLAG_HOOK,
    RAM_SAVE_FLAG_MEM_SIZE,
    RAM_SAVE_FLAG_MULTIFD_FLUSH,
    RAM_SAVE_FLAG_PAGE,
    RAM_SAVE_FLAG_XBZRLE,
    RAM_SAVE_FLAG_ZERO,
)
from emu.migration.vmstate import LoadContext, SaveStateEntry

__all__ = [
    "PAGE_SIZE",
    "ChannelSink",
    "QEMU_VM_FILE_MAGIC",
    "QEMU_VM_FILE_VERSION",
    "LoadResult",
    "RamRecord",
    "StreamEOFError",
    "StreamError",
    "StreamItem",
    "StreamReader",
    "StreamTrace",
    "StreamWriter",
    "load_postcopy_channel",
    "load_stream",
    "machine_none_devices",
    "xbzrle_decode",
]

QEMU_VM_FILE_MAGIC = 0x5145564D
QEMU_VM_FILE_VERSION_COMPAT = 2
QEMU_VM_FILE_VERSION = 3
QEMU_VM_EOF = 0x00
QEMU_VM_SECTION_START = 0x01
QEMU_VM_SECTION_PART = 0x02
QEMU_VM_SECTION_END = 0x03
QEMU_VM_SECTION_FULL = 0x04
QEMU_VM_SUBSECTION = 0x05
QEMU_VM_VMDESCRIPTION = 0x06
QEMU_VM_CONFIGURATION = 0x07
QEMU_VM_COMMAND = 0x08
QEMU_VM_SECTION_FOOTER = 0x7E

PAGE_SIZE = 4096
PAGE_MASK = ~(PAGE_SIZE - 1) & 0xFFFFFFFFFFFFFFFF

RAM_IDSTR = "ram"
RAM_VERSION = 4

_SECTION_NAMES = {1: "START", 2: "PART", 3: "END", 4: "FULL"}

# MIG_CMD table of QEMU 7.2: cmd -> (name, fixed length or -1)
_MIG_CMDS = {
    0: ("INVALID", -1), 1: ("OPEN_RETURN_PATH", 0), 2: ("PING", 4), 3: ("POSTCOPY_ADVISE", -1),
    4: ("POSTCOPY_LISTEN", 0), 5: ("POSTCOPY_RUN", 0), 6: ("POSTCOPY_RAM_DISCARD", -1),
    7: ("PACKAGED", 4), 8: ("ENABLE_COLO", 0), 9: ("POSTCOPY_RESUME", 0), 10: ("RECV_BITMAP", -1),
}
MIG_CMD_MAX = 11
#: a step's "stop loading this (packaged) stream" (QEMU's LOADVM_QUIT)
LOADVM_QUIT = 1
# QEMU's PostcopyState numbers (they appear in its error texts)
PS_NONE, PS_ADVISE, PS_DISCARD, PS_LISTENING, PS_RUNNING, PS_END = range(6)


# ================================================================ errors

class StreamError(Exception):
    """A refused load. ``messages`` are QEMU 7.2's stderr lines (no program-name prefix), ending with
    ``load of migration failed: <strerror>``; ``errno_name`` is e.g. ``"EINVAL"``."""

    def __init__(self, messages: list[str], errno_name: str, records_applied: int = 0) -> None:
        self.messages = list(messages)
        self.errno_name = errno_name
        self.records_applied = records_applied
        super().__init__("\n".join(self.messages))


class StreamEOFError(EOFError):
    """The byte source ended before ``wanted`` bytes could be read; ``partial`` holds what was read."""

    def __init__(self, wanted: int, partial: bytes, offset: int) -> None:
        self.wanted = wanted
        self.partial = partial
        self.offset = offset
        super().__init__(f"migration stream ended at offset {offset + len(partial)}: wanted {wanted} bytes, "
                         f"got {len(partial)}")


# ================================================================ reader / writer

class _Prefetcher:
    """Reads a channel ahead on its own thread into recycled buffers, so the sender is never held
    up by a full socket while the loader applies pages (a socket buffers only ~200 KB).

    Each buffer keeps ``HEAD`` bytes free in front: the reader's unconsumed tail is copied there
    when it moves on to the next buffer, so the bytes themselves are read once and never copied.
    ``get`` returns ``(buffer, end)`` with data in ``buffer[HEAD:end]``, or ``None`` at the end."""

    HEAD = 64 << 10
    SIZE = 1 << 20
    COUNT = 16  # at most 16 MiB read ahead; allocated as needed (a new buffer costs page faults)

    def __init__(self, readinto: Callable[[Any], int], fileno: int) -> None:
        import queue
        import select
        import threading

        self._readinto = readinto
        # a buffer is handed over as soon as nothing more is readable: the reader must never
        # block while it holds bytes the loader may be waiting for
        self._more = select.poll()
        self._more.register(fileno, select.POLLIN)
        self._free: queue.Queue[bytearray | None] = queue.Queue()
        self._full: queue.Queue[tuple[bytearray, int] | BaseException | None] = queue.Queue()
        self._allocated = 0
        self._thread = threading.Thread(target=self._run, name="migration-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            if self._free.empty() and self._allocated < self.COUNT:
                self._allocated += 1
                buf: bytearray | None = bytearray(self.HEAD + self.SIZE)
            else:
                buf = self._free.get()
            if buf is None:  # stop()
                return
            end = self.HEAD
            k = 0
            error: BaseException | None = None
            with memoryview(buf) as view:
                while end < len(buf):
                    try:
                        k = self._readinto(view[end:])
                    except BaseException as e:  # noqa: BLE001 - handed to the loader, which raises it
                        error = e
                        break
                    if not k:
                        break
                    end += k
                    if end - self.HEAD >= self.SIZE // 4 or not self._more.poll(0):
                        break
            if end > self.HEAD:
                self._full.put((buf, end))  # what arrived before an error or the end still counts
            if error is not None or not k:
                self._full.put(error)  # None: end of stream
                return

    def get(self) -> tuple[bytearray, int] | None:
        item = self._full.get()
        if isinstance(item, BaseException) or item is None:
            self._full.put(item)  # the end, or the error, stays for every later read
        if isinstance(item, BaseException):
            raise item
        return item

    def recycle(self, buf: bytearray) -> None:
        if len(buf) == self.HEAD + self.SIZE:
            self._free.put(buf)

    def join(self, timeout: float) -> bool:
        """Waits up to ``timeout`` s for the thread to end by itself; True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float = 5) -> None:
        """Ends the thread (its channel must be shut down first, to wake a blocked read)."""
        self._free.put(None)
        self._thread.join(timeout)


class _BigEndianReads:
    """Integer reads over the class's ``_exact(n)`` (``n`` bytes, however it handles a short read)."""

    def _exact(self, n: int) -> bytes:
        raise NotImplementedError

    def u8(self) -> int:
        return self._exact(1)[0]

    def be16(self) -> int:
        return struct.unpack(">H", self._exact(2))[0]

    def be32(self) -> int:
        return struct.unpack(">I", self._exact(4))[0]

    def be64(self) -> int:
        return struct.unpack(">Q", self._exact(8))[0]


class StreamReader(_BigEndianReads):
    """Buffered exact reads over any object with ``read(n) -> bytes`` (short reads allowed; ``b""``
    means end of stream). Uses ``read1`` when the source has it so a pipe or socket never blocks for
    more than is available. ``offset`` counts consumed bytes.

    Sources with ``readinto`` (transport channels) read straight into the one buffer, which is
    reused: no per-read allocation (each would cost page faults) and no second copy."""

    def __init__(self, source: Any, chunk: int = 1 << 20, prefix: bytes = b"", prefetch: bool = False) -> None:
        """``prefix``: bytes already taken from ``source`` (a peeked magic) that come first.
        ``prefetch``: read a channel ahead on a thread (``_Prefetcher``); the reader then owns
        the channel's reading side."""
        self._src = source
        self._read = getattr(source, "read1", None) or source.read
        self._readinto = getattr(source, "readinto", None) if hasattr(source, "read_exactly") else None
        self._chunk = chunk
        self._buf = bytearray(max(chunk, len(prefix)))
        self._buf[:len(prefix)] = prefix
        self._pos = 0  # next byte to consume
        self._end = len(prefix)  # end of the bytes read so far
        self._eof = False
        self.offset = 0
        self._ahead = (_Prefetcher(self._readinto, source.fileno())
                       if self._readinto is not None and prefetch else None)

    @classmethod
    def from_bytes(cls, data: bytes) -> StreamReader:
        import io

        return cls(io.BytesIO(data))

    def _fill(self, n: int) -> bool:
        """Makes at least ``n`` bytes available if possible; False at end of stream."""
        if self._ahead is not None:
            return self._fill_ahead(n)
        while self._end - self._pos < n:
            if self._eof:
                return False
            have = self._end - self._pos
            if self._pos and len(self._buf) - self._end < self._chunk // 2:
                self._buf[:have] = self._buf[self._pos:self._end]  # the unconsumed tail to the front
                self._pos, self._end = 0, have
            room = len(self._buf) - self._end
            if room < min(n - have, self._chunk):
                # grow only once the room is used up, and at most by what is already held: a length
                # read from the stream must not decide how much memory a read takes before the
                # bytes are there
                self._buf.extend(bytes(min(n - have - room, max(self._chunk, have))))
                room = len(self._buf) - self._end
            if self._readinto is not None:
                k = self._readinto(memoryview(self._buf)[self._end:])
                if not k:
                    self._eof = True
                    return False
                self._end += k
                continue
            data = self._read(min(room, max(n - have, self._chunk)))
            if not data:
                self._eof = True
                return False
            self._buf[self._end:self._end + len(data)] = data
            self._end += len(data)
        return True

    def _fill_ahead(self, n: int) -> bool:
        """``_fill`` from the prefetcher: the next buffer becomes the current one, with the
        unconsumed tail copied in front of its data (or, for a tail longer than the room there,
        the two joined)."""
        ahead = self._ahead
        assert ahead is not None
        while self._end - self._pos < n:
            if self._eof:
                return False
            item = ahead.get()
            if item is None:
                self._eof = True
                return False
            nbuf, nend = item
            tail = self._end - self._pos
            old = self._buf
            if tail <= _Prefetcher.HEAD:
                start = _Prefetcher.HEAD - tail
                nbuf[start:_Prefetcher.HEAD] = old[self._pos:self._end]
                self._buf, self._pos, self._end = nbuf, start, nend
            else:  # a long item spans buffers: join (bounded by what was asked for)
                joined = bytearray(old[self._pos:self._end])
                joined += memoryview(nbuf)[_Prefetcher.HEAD:nend]
                ahead.recycle(nbuf)
                self._buf, self._pos, self._end = joined, 0, len(joined)
            ahead.recycle(old)
        return True

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or :class:`StreamEOFError` (the partial bytes are consumed)."""
        if n <= 0:
            return b""
        if not self._fill(n):
            partial = bytes(self._buf[self._pos:self._end])
            self._pos = self._end
            err = StreamEOFError(n, partial, self.offset)
            self.offset += len(partial)
            raise err
        out = bytes(self._buf[self._pos:self._pos + n])
        self._pos += n
        self.offset += n
        return out

    def peek(self, n: int, offset: int = 0) -> bytes:
        """Up to ``n`` bytes at ``offset`` from the current position, without consuming them."""
        self._fill(offset + n)
        return bytes(self._buf[self._pos + offset:min(self._pos + offset + n, self._end)])

    def at_eof(self) -> bool:
        return not self._fill(1)

    def close(self) -> None:
        """Stops reading ahead: shuts the channel down (waking a blocked read) and ends the
        thread. Without a prefetcher there is nothing to do; closing the source is the owner's."""
        if self._ahead is not None:
            shutdown = getattr(self._src, "shutdown", None)
            if shutdown is not None:
                shutdown()
            self._ahead.stop()

    def wait_end(self, timeout: float) -> bool:
        """Waits up to ``timeout`` s for the read-ahead thread to meet the end of the stream (the
        peer closed); True if it did (or there is no such thread)."""
        return self._ahead is None or self._ahead.join(timeout)

    def consume_buffered(self, apply: Callable[[Any, int], int]) -> int:
        """Lets ``apply(buffer, position)`` consume a prefix of what is already buffered (no read);
        it returns how many bytes it used. ``buffer`` ends where the buffered bytes end."""
        if self._end <= self._pos:
            return 0
        with memoryview(self._buf) as view:
            n = apply(view[:self._end], self._pos)
        self._pos += n
        self.offset += n
        return n

    _exact = read


class ChannelSink:
    """StreamWriter's ``write`` on a transport channel (which writes everything or raises)."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def write(self, data: Any) -> None:
        self.channel.write_all(data)


class StreamWriter:
    """Buffered writes to any object with ``write(b)`` (returning ``None`` or the count written;
    partial writes are retried). ``offset`` counts bytes accepted so far."""

    def __init__(self, sink: Any, buffer_size: int = 1 << 18) -> None:
        self._sink = sink
        self._buf = bytearray()
        self._limit = buffer_size
        self.offset = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        self.offset += n
        if len(self._buf) + n > self._limit:
            self.flush()
            if n >= self._limit:
                self._write_all(memoryview(data))
                return
        self._buf += data

    def u8(self, v: int) -> None:
        self.write(bytes((v & 0xFF,)))

    def be16(self, v: int) -> None:
        self.write(struct.pack(">H", v))

    def be32(self, v: int) -> None:
        self.write(struct.pack(">I", v))

    def be64(self, v: int) -> None:
        self.write(struct.pack(">Q", v))

    def flush(self) -> None:
        if self._buf:
            self._write_all(memoryview(self._buf))
            self._buf = bytearray()
        fl = getattr(self._sink, "flush", None)
        if fl is not None:
            fl()

    def _write_all(self, mv: memoryview) -> None:
        while len(mv):
            n = self._sink.write(mv)
            if n is None:
                return
            if n <= 0:
                raise OSError(errno.EPIPE, "migration stream sink accepted no bytes")
            mv = mv[n:]


# ================================================================ common pieces

def machine_none_devices(cpu_ticks_offset: int = 0, cpu_clock_offset: int = 0) -> list[SaveStateEntry]:
    """The non-RAM, non-globalstate handlers of a QEMU 7.2 ``-M none`` machine: ``timer`` (section id 0)."""
    return [vms.timer_entry(cpu_ticks_offset, cpu_clock_offset, section_id=0)]


# ================================================================ XBZRLE (§9), the destination's decoder

def _uleb_small(buf: bytes, i: int) -> tuple[int, int]:
    """QEMU ``uleb128_decode_small``: (value, bytes used) or (-1, -1) for a 3-byte value."""
    b0 = buf[i]
    if not b0 & 0x80:
        return b0, 1
    b1 = buf[i + 1] if i + 1 < len(buf) else 0
    if b1 & 0x80:
        return -1, -1
    return (b0 & 0x7F) | (b1 << 7), 2


def xbzrle_decode(src: bytes, dst: bytearray) -> int:
    """QEMU ``xbzrle_decode_buffer``: applies ``src`` to ``dst`` in place; bytes covered or -1."""
    slen, dlen = len(src), len(dst)
    i = d = 0
    while i < slen:
        if slen - i < 2:
            return -1
        count, used = _uleb_small(src, i)
        if used < 0 or (i and not count):
            return -1
        i += used
        d += count
        if d > dlen:
            return -1
        if slen - i < 2:
            return -1
        count, used = _uleb_small(src, i)
        if used < 0 or not count:
            return -1
        i += used
        if d + count > dlen or i + count > slen:
            return -1
        dst[d:d + count] = src[i:i + count]
        d += count
        i += count
    return d


# ================================================================ tracing a load

@dataclass
class RamRecord:
    """One RAM record as the loader read it: ``offset`` of its be64 word, its ``flags``, and its
    ``parts`` in stream order as (part, length): ``word``, ``name`` (a counted block name, absent
    with CONTINUE), then ``fill`` (ZERO), ``page`` (PAGE), ``encoding``/``delta_len``/``delta``
    (XBZRLE), or ``name``/``length`` pairs (MEM_SIZE, whose values ``sizes`` lists)."""

    offset: int
    flags: int
    parts: list[tuple[str, int]] = field(default_factory=list)
    sizes: list[tuple[str, int]] = field(default_factory=list)

    @property
    def kind(self) -> int:
        """The flags without CONTINUE (``RAM_SAVE_FLAG_ZERO``, ``..._PAGE``, ...)."""
        return self.flags & ~RAM_SAVE_FLAG_CONTINUE

    @property
    def end(self) -> int:
        """The offset after the parts read so far."""
        return self.offset + sum(n for _, n in self.parts)


@dataclass
class StreamItem:
    """One top-level item as the loader read it. ``kind``: header, config, START/PART/END/FULL,
    command, EOF, vmdesc. ``offset``..``end``: its bytes (``end`` stays ``None`` when the load
    stopped inside it; a PACKAGED command ends after its length, its nested items follow as items).
    Sections: ``section_id``, ``idstr`` (PART/END: the START's), ``instance_id`` and ``version_id``
    (START/FULL), ``body_size`` (bytes between header and footer), ``records`` (RAM sections).
    ``name``: the configuration's machine name or a command's name; ``length``: a command's or the
    vmdesc's payload length; ``value``: the header's magic or a command's number; ``version_id`` of
    the header: the stream version."""

    kind: str
    offset: int
    end: int | None = None
    section_id: int | None = None
    idstr: str | None = None
    instance_id: int | None = None
    version_id: int | None = None
    body_size: int | None = None
    name: str | None = None
    length: int | None = None
    value: int | None = None
    records: list[RamRecord] = field(default_factory=list)


class StreamTrace:
    """What one load walked (``load_stream(..., trace=StreamTrace())``): ``items`` in stream order,
    at absolute offsets (a PACKAGED command's nested stream too). A traced load applies RAM records
    one at a time in Python, since the C fast path for runs of records reports no offsets; what it
    loads is the same."""

    def __init__(self) -> None:
        self.items: list[StreamItem] = []

    def add(self, kind: str, offset: int, **fields: Any) -> StreamItem:
        """A new item that begins at ``offset``; the loader fills in the rest as it reads."""
        item = StreamItem(kind, offset, **fields)
        self.items.append(item)
        return item

    def record(self, offset: int, flags: int, word_end: int) -> RamRecord:
        """A RAM record of the current (last) item, whose word was read from ``offset`` to ``word_end``."""
        rec = RamRecord(offset, flags, [("word", word_end - offset)])
        self.items[-1].records.append(rec)
        return rec


# ================================================================ loading

class _QFile(_BigEndianReads):
    """QEMUFile read semantics over a :class:`StreamReader`: past the end, reads return zero bytes
    and set a sticky ``-EIO`` error (QEMU checks the error only at specific points).

    A length taken from the stream never decides how much is allocated before the bytes arrive:
    reads longer than ``PIECE`` go piecewise (QEMU's ``qemu_get_buffer`` too copies what arrives,
    in pieces), and such a read that comes up short returns only what arrived, unpadded, with the
    error set (a caller of a long read checks ``error`` before using it, as the VMState loader does)."""

    PIECE = 1 << 20

    def __init__(self, reader: StreamReader, base: int = 0) -> None:
        """``base``: where the reader's first byte stands in the outer stream (a nested one)."""
        self.r = reader
        self.base = base
        self.error = 0

    @property
    def offset(self) -> int:
        """The stream offset of the next byte to read (in the outermost stream)."""
        return self.base + self.r.offset

    def set_error(self, ret: int) -> None:
        if not self.error:
            self.error = ret

    def _read(self, n: int) -> bytes:
        """One read of at most ``PIECE`` bytes: all of them, or what arrived (error set)."""
        try:
            return self.r.read(n)
        except StreamEOFError as e:
            self.set_error(-errno.EIO)
            return e.partial
        except QemuTextError:
            # a channel that failed (a reset connection): QEMU's qemu_fill_buffer makes every
            # channel error EIO, so the load fails (or a postcopy pauses) like at an early end
            self.set_error(-errno.EIO)
            return b""
        except OSError as e:
            self.set_error(-(e.errno or errno.EIO))
            return b""

    def get_partial(self, n: int) -> bytes:
        """What is really there (may be short)."""
        if self.error:
            return b""
        if n <= self.PIECE:
            return self._read(n)
        pieces: list[bytes] = []
        while n > 0 and not self.error:
            piece = self._read(min(n, self.PIECE))
            pieces.append(piece)
            n -= len(piece)
        return b"".join(pieces)

    def get(self, n: int) -> bytes:
        """``n`` bytes, zero-padded after an error; a short read longer than ``PIECE`` is not padded."""
        d = self.get_partial(n)
        return d if len(d) == n or n > self.PIECE else d + bytes(n - len(d))

    def peek(self, n: int, offset: int = 0) -> bytes:
        if self.error:
            return b""
        try:
            return self.r.peek(n, offset)
        except QemuTextError:
            self.set_error(-errno.EIO)
            return b""
        except OSError as e:
            self.set_error(-(e.errno or errno.EIO))
            return b""

    def skip(self, n: int) -> None:
        """Consumes ``n`` bytes in pieces, without keeping them; stops at the first error."""
        while n > 0 and not self.error:
            n -= len(self._read(min(n, self.PIECE)))

    _exact = get

    def counted(self) -> tuple[bytes, bool]:
        n = self.u8()
        d = self.get_partial(n)
        return d, len(d) == n


class _RamHandler:
    """QEMU 7.2 ``ram_load`` / ``ram_load_precopy`` over ``emu.ram.RamBlock`` objects."""

    version_id = RAM_VERSION
    idstr = RAM_IDSTR
    instance_id = 0

    def __init__(self, blocks: dict[str, Any], stats: dict, multifd: Any = None,
                 trace: StreamTrace | None = None, postcopy: Any = None) -> None:
        self.blocks = blocks
        self.postcopy = postcopy
        #: after a postcopy ADVISE: zero pages are made present (never left unpopulated), since a
        #: page still missing at LISTEN is one the destination asks the source for
        self.populate_zero = False
        #: the postcopy preempt channel's handler: every record is placed through userfaultfd
        self.always_place = False
        self.last_block: Any | None = None
        self.stats = stats
        #: the multifd channels (``emu.migration.multifd.MultifdReceiver``), when enabled
        self.multifd = multifd
        #: QEMU's receivedmap: one byte per page, set by every ZERO/PAGE/XBZRLE record (and by
        #: the multifd channels, which share it)
        self.received: dict[str, bytearray] = (multifd.received if multifd is not None
                                               else postcopy.received if postcopy is not None else {})
        self.trace = trace
        self._rec: RamRecord | None = None  # the record being traced

    def load(self, f: _QFile, version_id: int, ctx: LoadContext) -> int:
        if version_id != RAM_VERSION:
            return -errno.EINVAL
        ret = 0
        flags = 0
        placing = self.always_place or (self.postcopy is not None and PS_LISTENING <= self.postcopy.state < PS_END)
        while not ret and not flags & RAM_SAVE_FLAG_EOS:
            if self.last_block is not None and not f.error and self.trace is None:
                # in postcopy through userfaultfd: a plain write to a missing page would wait forever
                self._apply_buffered_run(f, placing)
            start = f.offset
            word = f.be64()
            flags = word & RAM_FLAGS_MASK
            if self.trace is not None:
                self._rec = self.trace.record(start, flags, f.offset)
            ret = self._record(f, flags, word & PAGE_MASK, ctx, placing) or f.error
            if not ret and flags & ~RAM_SAVE_FLAG_CONTINUE in (RAM_SAVE_FLAG_ZERO, RAM_SAVE_FLAG_PAGE,
                                                               RAM_SAVE_FLAG_XBZRLE):
                self.stats["records_applied"] += 1
        return ret

    def _record(self, f: _QFile, flags: int, addr: int, ctx: LoadContext, placing: bool = False) -> int:
        """One record after its word: 0, or a negated errno (the message given to ``ctx``).
        ``placing``: postcopy is running, pages go in through userfaultfd."""
        if flags & RAM_SAVE_FLAG_COMPRESS_PAGE:  # no compress capability on this destination
            ctx.error("Received an unexpected compressed page")
            return -errno.EINVAL
        block: Any = None
        if flags & (RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_XBZRLE):
            block = self._block_from_stream(f, flags, ctx)
            if block is None or addr >= block.used_length:
                ctx.error(f"Illegal RAM offset {addr:x}")
                return -errno.EINVAL
        kind = flags & ~RAM_SAVE_FLAG_CONTINUE
        if placing:  # received once placed: a channel cut before the data leaves it missing
            return self._postcopy_record(f, kind, block, addr, flags, ctx)
        if block is not None:
            rmap = self.received.get(block.name)
            if rmap is None:
                rmap = self.received[block.name] = bytearray(block.used_length // PAGE_SIZE)
            rmap[addr >> 12] = 1
        if kind == RAM_SAVE_FLAG_MEM_SIZE:
            return self._mem_size(f, addr, ctx)
        if kind == RAM_SAVE_FLAG_ZERO:
            ch = f.u8()
            self._mark(f, "fill")
            if not f.error:
                self._zero_page(block, addr, ch)
        elif kind == RAM_SAVE_FLAG_PAGE:
            data = f.get_partial(PAGE_SIZE)
            self._mark(f, "page")
            if len(data) == PAGE_SIZE:
                block.write(addr, data)
                self.stats["normal_pages"] += 1
        elif kind == RAM_SAVE_FLAG_XBZRLE:
            if self._xbzrle(f, block, addr, ctx) < 0:
                ctx.error(f"Failed to decompress XBZRLE page at {addr:x}")
                return -errno.EINVAL
        elif kind == RAM_SAVE_FLAG_EOS:
            if self.multifd is not None and self.multifd.flush_after_each_section:
                return self._multifd_sync(ctx)
        elif kind == RAM_SAVE_FLAG_MULTIFD_FLUSH and self.multifd is not None:
            # 8.0+: the sync point once per round (7.2, without multifd, rejects the flag below)
            return self._multifd_sync(ctx)
        elif flags & RAM_SAVE_FLAG_HOOK:
            f.set_error(-errno.EINVAL)  # a hook without RDMA: silent EINVAL
        else:
            ctx.error(f"Unknown combination of migration flags: {flags:#x}")
            return -errno.EINVAL
        return 0

    def _postcopy_record(self, f: _QFile, kind: int, block: Any, addr: int, flags: int, ctx: LoadContext) -> int:
        """QEMU's ram_load_postcopy: only ZERO, PAGE and EOS; each page placed atomically."""
        if kind == RAM_SAVE_FLAG_ZERO:
            ch = f.u8()
            if not f.error:
                self.postcopy.place(block, addr, None, ch)
                self.stats["zero_pages"] += 1
        elif kind == RAM_SAVE_FLAG_PAGE:
            data = f.get_partial(PAGE_SIZE)
            if len(data) == PAGE_SIZE:
                self.postcopy.place(block, addr, data)
                self.stats["normal_pages"] += 1
        elif kind != RAM_SAVE_FLAG_EOS:
            ctx.error(f"Unknown combination of migration flags: {flags:#x} (postcopy mode)")
            return -errno.EINVAL
        return 0

    def _mark(self, f: _QFile, part: str) -> None:
        """Traces the part of the current record that was just read (up to ``f.offset``)."""
        if self._rec is not None:
            self._rec.parts.append((part, f.offset - self._rec.end))

    def _multifd_sync(self, ctx: LoadContext) -> int:
        """Waits until every multifd channel has delivered its pages up to this sync point."""
        from emu.migration.multifd import MultifdError

        try:
            self.multifd.sync()
        except MultifdError as e:
            ctx.error(str(e))
            return -errno.EIO
        return 0

    def _apply_buffered_run(self, f: _QFile, placing: bool = False) -> None:
        """The fast path: well-formed CONTINUE ZERO/PAGE records already buffered are applied in one
        C call (``placing``: through the postcopy userfaultfd); the record loop above sees only
        what C declined (other records, errors, a record split across reads)."""
        block = self.last_block
        rmap = self.received.get(block.name) if block is not None else None
        fast = getattr(block, "load_page_records", None)
        if rmap is None or fast is None:
            return
        counts = [0, 0]

        def apply(buf: bytearray, pos: int) -> int:
            if placing:
                n, counts[0], counts[1] = self.postcopy.place_run(block, buf, pos)
            else:
                n, counts[0], counts[1] = fast(buf, pos, rmap, self.populate_zero)
            return n

        if f.r.consume_buffered(apply):
            self.stats["zero_pages"] += counts[0]
            self.stats["normal_pages"] += counts[1]
            self.stats["records_applied"] += counts[0] + counts[1]

    def _block_from_stream(self, f: _QFile, flags: int, ctx: LoadContext) -> Any | None:
        if flags & RAM_SAVE_FLAG_CONTINUE:
            if self.last_block is None:
                ctx.error("Ack, bad migration stream!")
                return None
            return self.last_block
        raw = f.get(f.u8())
        self._mark(f, "name")
        name = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        block = self.blocks.get(name)
        if block is None:
            ctx.error(f"Can't find block {name}")
            return None
        self.last_block = block
        return block

    def _mem_size(self, f: _QFile, total: int, ctx: LoadContext) -> int:
        ret = 0
        while not ret and total:
            raw = f.get(f.u8())
            self._mark(f, "name")
            name = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
            length = f.be64()
            self._mark(f, "length")
            if self._rec is not None:
                self._rec.sizes.append((name, length))
            block = self.blocks.get(name)
            if block is None:
                ctx.error(f'Unknown ramblock "{name}", cannot accept migration')
                ret = -errno.EINVAL
            elif length != block.used_length:
                ctx.error(f"Size mismatch: {name}: {length:#x} != {block.used_length:#x}: Invalid argument")
                ret = -errno.EINVAL
            total = (total - length) & 0xFFFFFFFFFFFFFFFF
        return ret

    def _zero_page(self, block: Any, addr: int, ch: int) -> None:
        self.stats["zero_pages"] += 1
        page = addr >> 12
        # 7.2 writes only if the fill is non-zero or the page is not already zero; an untouched page
        # is zero and is left unpopulated (zero_pages answers it from pagemap without reading it),
        # unless postcopy needs it present (reading it maps the zero page)
        if ch == 0 and not self.populate_zero and block.zero_pages(page, 1) == b"\x01":
            return
        if ch == 0 and self.populate_zero and block.read(addr, PAGE_SIZE) == bytes(PAGE_SIZE):
            return
        block.fill(addr, ch, PAGE_SIZE)

    def _xbzrle(self, f: _QFile, block: Any, addr: int, ctx: LoadContext) -> int:
        enc = f.u8()
        self._mark(f, "encoding")
        xlen = f.be16()
        self._mark(f, "delta_len")
        if enc != ENCODING_FLAG_XBZRLE:
            ctx.error("Failed to load XBZRLE page - wrong compression!")
            return -1
        if xlen > PAGE_SIZE:
            ctx.error("Failed to load XBZRLE page - len overflow!")
            return -1
        delta = f.get(xlen)
        self._mark(f, "delta")
        page = bytearray(block.read(addr, PAGE_SIZE))
        if xbzrle_decode(delta, page) == -1:
            ctx.error("Failed to load XBZRLE page - decode error!")
            return -1
        if not f.error:
            block.write(addr, bytes(page))
            self.stats["xbzrle_pages"] += 1
        return 0


class _DeviceHandler:
    def __init__(self, entry: SaveStateEntry) -> None:
        self.entry = entry
        self.idstr = entry.idstr
        self.instance_id = entry.instance_id
        self.version_id = entry.vmsd.version_id

    def load(self, f: _QFile, version_id: int, ctx: LoadContext) -> int:
        return vms.load_state(f, self.entry.vmsd, self.entry.state, version_id, ctx)


@dataclass
class LoadResult:
    """A successful load. ``runstate``: what the destination enters (the received globalstate, or
    ``running``/``paused`` by ``autostart`` when none was received or it said ``running``).
    ``warnings``: QEMU's stderr lines. ``received_runstate``: the globalstate value or ``None``."""

    runstate: str
    warnings: list[str]
    received_runstate: str | None
    zero_pages: int = 0
    normal_pages: int = 0
    xbzrle_pages: int = 0
    sections: list[tuple[str, int]] = field(default_factory=list)


class _Loader:
    """QEMU 7.2 ``qemu_loadvm_state``: the top-level items, sections dispatched to their handlers.
    Each step returns 0 or a negated errno, its messages given to ``ctx``."""

    def __init__(self, blocks: dict[str, Any], devices: Sequence[SaveStateEntry], machine_name: str,
                 uuid: bytes | None, capabilities: Iterable[str], return_path: Any, multifd: Any = None,
                 trace: StreamTrace | None = None, postcopy: Any = None) -> None:
        self.ctx = LoadContext()
        self.stats = {"zero_pages": 0, "normal_pages": 0, "xbzrle_pages": 0, "records_applied": 0}
        self.trace = trace
        #: the destination's postcopy (``emu.migration.postcopy_incoming.PostcopyIncoming``) when
        #: postcopy-ram is on here, else None
        self.postcopy = postcopy
        self.ram = _RamHandler(blocks, self.stats, multifd, trace, postcopy)
        self.handlers: list[Any] = [self.ram] + [_DeviceHandler(e) for e in devices]
        self.loadvm: list[tuple[int, Any, int]] = []  # (section_id, handler, version), newest first
        self.machine_name = machine_name
        self.uuid = uuid
        self.capabilities = set(capabilities)
        self.return_path = return_path
        self.sections: list[tuple[str, int]] = []
        self.current: _QFile | None = None  # the stream being read (another after a recovery)

    def find_se(self, idstr: bytes, instance_id: int) -> Any | None:
        name = idstr.split(b"\0", 1)[0]
        for h in self.handlers:
            if h.idstr.encode() == name and h.instance_id == instance_id:
                return h
        return None

    def _traced(self, kind: str, offset: int, **fields: Any) -> StreamItem | None:
        """A new item of the trace (``None`` when the load is not traced)."""
        return self.trace.add(kind, offset, **fields) if self.trace is not None else None

    # ---- top level (qemu_loadvm_state)
    def run(self, f: _QFile) -> int:
        magic = f.be32()
        if magic != QEMU_VM_FILE_MAGIC:
            self.ctx.error("Not a migration stream")
            return -errno.EINVAL
        version = f.be32()
        self._traced("header", 0, end=f.offset, version_id=version, value=magic)
        if version == QEMU_VM_FILE_VERSION_COMPAT:
            self.ctx.error("SaveVM v2 format is obsolete and don't work anymore")
            return -errno.ENOTSUP
        if version != QEMU_VM_FILE_VERSION:
            self.ctx.error("Unsupported migration stream version")
            return -errno.ENOTSUP
        off = f.offset
        if f.u8() != QEMU_VM_CONFIGURATION:
            self.ctx.error("Configuration section missing")
            return -errno.EINVAL
        cfg: dict[str, Any] = {"local_machine": self.machine_name, "local_uuid": self.uuid,
                               "local_capabilities": self.capabilities}
        it = self._traced("config", off)
        ret = vms.load_state(f, vms.VMSTATE_CONFIGURATION, cfg, 0, self.ctx)
        if ret:
            return ret
        if it is not None:
            it.end, it.name = f.offset, bytes(cfg.get("name", b"")).decode("utf-8", "replace")
        ret = self.main(f)
        f = self.current or f  # a recovered postcopy goes on on another channel
        if ret == 0:
            ret = f.error
        if ret == 0 and not self.in_postcopy:
            self.vmdesc(f)  # a postcopy stream has none: the source waits for SHUT after EOF
        return ret

    @property
    def in_postcopy(self) -> bool:
        """Past LISTEN: RAM records are placed through userfaultfd (QEMU's postcopy_is_running)."""
        pc = self.postcopy
        return pc is not None and PS_LISTENING <= pc.state < PS_END

    def vmdesc(self, f: _QFile) -> None:
        """The vmdesc after EOF: skipped (its absence is only a message); errors here are ignored,
        as in QEMU."""
        off = f.offset
        t = f.u8()
        if t != QEMU_VM_VMDESCRIPTION:
            self.ctx.error(f"Expected vmdescription section, but got {t}")
            return
        n = f.be32()
        it = self._traced("vmdesc", off, length=n)
        f.skip(n)
        if it is not None and not f.error:
            it.end = f.offset

    def main(self, f: _QFile, nested: bool = False) -> int:
        """qemu_loadvm_state_main: items until EOF. POSTCOPY_RUN ends a ``nested`` (packaged)
        stream (QEMU's LOADVM_QUIT); the stream that carried the package goes on with the pages,
        which QEMU's listen thread would read. A stream that breaks during postcopy pauses until
        a recovered channel carries on (QEMU's postcopy_pause_incoming)."""
        if not nested:
            self.current = f
        while True:
            ret = self._items(f, nested)
            if ret >= 0 or nested or not self.in_postcopy:
                return ret
            lines, self.ctx.lines = list(self.ctx.lines), []
            reader = self.postcopy.paused(lines)
            if reader is None:
                self.ctx.lines = lines
                return ret
            f = self.current = _QFile(reader)
            self.ram.last_block = None

    def _items(self, f: _QFile, nested: bool) -> int:
        """The items of one stream until EOF, an error, or (``nested``) LOADVM_QUIT."""
        ret = 0
        while True:
            off = f.offset
            t = f.u8()
            if f.error:
                ret = f.error
                break
            if t in (QEMU_VM_SECTION_START, QEMU_VM_SECTION_FULL):
                ret = self.section_start_full(f, t, off)
            elif t in (QEMU_VM_SECTION_PART, QEMU_VM_SECTION_END):
                ret = self.section_part_end(f, t, off)
            elif t == QEMU_VM_COMMAND:
                ret = self.command(f, off)
            elif t == QEMU_VM_EOF:
                self._traced("EOF", off, end=f.offset)
                break
            else:
                self.ctx.error(f"Unknown savevm section type {t}")
                ret = -errno.EINVAL
            if ret < 0 or (ret == LOADVM_QUIT and nested):
                break
            ret = 0
        if ret < 0:
            f.set_error(ret)
        return ret

    def section_start_full(self, f: _QFile, kind: int, offset: int) -> int:
        section_id = f.be32()
        idstr, ok = f.counted()
        if not ok or not idstr:
            self.ctx.error(f"Unable to read ID string for section {section_id}")
            return -errno.EINVAL
        instance_id = f.be32()
        version_id = f.be32()
        if f.error:
            self.ctx.error(f"qemu_loadvm_section_start_full: Failed to read instance/version ID: {f.error}")
            return f.error
        it = self._traced(_SECTION_NAMES[kind], offset, section_id=section_id,
                          idstr=idstr.decode("utf-8", "replace"), instance_id=instance_id, version_id=version_id)
        shown = idstr.split(b"\0", 1)[0].decode("utf-8", "replace")
        se = self.find_se(idstr, instance_id)
        if se is None:
            self.ctx.error(f"Unknown savevm section or instance '{shown}' {instance_id}. Make sure that your "
                           "current VM setup matches your saved VM setup, including any hotplugged devices")
            return -errno.EINVAL
        if version_id > se.version_id:
            self.ctx.error(f"savevm: unsupported version {version_id} for '{shown}' v{se.version_id}")
            return -errno.EINVAL
        self.loadvm.insert(0, (section_id, se, version_id))
        self.sections.append((se.idstr, section_id))
        ret = self.body(f, se, version_id, it)
        if ret < 0:
            self.ctx.error(f"error while loading state for instance {instance_id:#x} of device '{shown}'")
            return ret
        return self.check_footer(f, se, section_id, it)

    def section_part_end(self, f: _QFile, kind: int, offset: int) -> int:
        section_id = f.be32()
        if f.error:
            self.ctx.error(f"qemu_loadvm_section_part_end: Failed to read section ID: {f.error}")
            return f.error
        le = next((x for x in self.loadvm if x[0] == section_id), None)
        it = self._traced(_SECTION_NAMES[kind], offset, section_id=section_id, idstr=le[1].idstr if le else None)
        if le is None:
            self.ctx.error(f"Unknown savevm section {_s32(section_id)}")
            return -errno.EINVAL
        _, se, version_id = le
        ret = self.body(f, se, version_id, it)
        if ret < 0:
            self.ctx.error(f"error while loading state section id {_s32(section_id)}({se.idstr})")
            return ret
        return self.check_footer(f, se, section_id, it)

    def body(self, f: _QFile, se: Any, version_id: int, it: StreamItem | None) -> int:
        """A section's body, loaded by its handler."""
        start = f.offset
        ret = se.load(f, version_id, self.ctx)
        if it is not None:
            it.body_size = f.offset - start
        return int(ret)

    def check_footer(self, f: _QFile, se: Any, section_id: int, it: StreamItem | None) -> int:
        mark = f.u8()
        if f.error:
            self.ctx.error(f"check_section_footer: Read section footer failed: {f.error}")
            return -errno.EINVAL
        if mark != QEMU_VM_SECTION_FOOTER:
            self.ctx.error(f"Missing section footer for {se.idstr}")
            return -errno.EINVAL
        rid = f.be32()
        if rid != section_id:
            self.ctx.error(f"Mismatched section id in footer for {se.idstr} - read {rid:#x} expected {section_id:#x}")
            return -errno.EINVAL
        if it is not None:
            it.end = f.offset
        return 0

    def command(self, f: _QFile, offset: int) -> int:
        cmd = f.be16()
        length = f.be16()
        if f.error:
            return f.error
        self._traced("command", offset, end=f.offset + length, value=cmd, length=length,
                     name=_MIG_CMDS[cmd][0] if cmd in _MIG_CMDS else None)
        if cmd >= MIG_CMD_MAX or cmd == 0:
            self.ctx.error(f"MIG_CMD {cmd:#x} unknown (len {length:#x})")
            return -errno.EINVAL
        name, want = _MIG_CMDS[cmd]
        if want != -1 and want != length:
            self.ctx.error(f"{name} received with bad length - expecting {want}, got {length}")
            return -errno.ERANGE
        if cmd == 1:  # OPEN_RETURN_PATH
            if self.return_path is None:
                self.ctx.error("CMD_OPEN_RETURN_PATH failed")
                return -errno.EPERM
            return 0
        if cmd == 2:  # PING
            value = f.be32()
            if self.return_path is None:
                self.ctx.error(f"CMD_PING ({value:#x}) received with no return path")
                return -errno.EPERM
            self.return_path.pong(value)
            return 0
        if self.postcopy is not None and cmd in (3, 4, 5, 6):
            return self._postcopy_command(f, cmd, name, length)
        if self.postcopy is not None and cmd in (9, 10):
            return self._postcopy_recovery_command(f, cmd, length)
        if cmd == 3:  # POSTCOPY_ADVISE, postcopy-ram off on this destination
            if length == 0:
                return 0
            f.skip(length)
            if length == 16:
                self.ctx.error("RAM postcopy is disabled but have 16 byte advise")
            else:
                self.ctx.error(f"CMD_POSTCOPY_ADVISE invalid length ({length})")
            return -errno.EINVAL
        if cmd == 7:  # PACKAGED: a nested stream that shares the loader state
            blen = f.be32()
            blob = f.get_partial(blen)
            if len(blob) != blen:
                self.ctx.error(f"CMD_PACKAGED: Buffer receive fail ret={len(blob)} length={blen}")
                return -errno.EAGAIN  # QEMU's count of bytes received is never negative [7.2-verified]
            ret = self.main(_QFile(StreamReader.from_bytes(blob), base=f.offset - len(blob)), nested=True)
            return 0 if ret == LOADVM_QUIT else ret
        if cmd in (4, 5, 6):  # postcopy commands in postcopy state NONE
            f.skip(length)
            self.ctx.error(f"CMD_{name} in wrong postcopy state (0)")
            return -errno.EPERM
        f.skip(length)
        self.ctx.error(f"MIG_CMD {name} is not supported by this destination")
        return -errno.ENOTSUP


    def _postcopy_command(self, f: _QFile, cmd: int, name: str, length: int) -> int:
        """ADVISE, RAM_DISCARD, LISTEN and RUN with postcopy-ram on (QEMU's loadvm_postcopy_*)."""
        pc = self.postcopy
        state = pc.state
        allowed = {3: (PS_NONE,), 6: (PS_ADVISE, PS_DISCARD), 4: (PS_ADVISE, PS_DISCARD), 5: (PS_LISTENING,)}[cmd]
        if state not in allowed:
            f.skip(length)
            self.ctx.error(f"CMD_{name} in wrong postcopy state ({state})")
            return -errno.EPERM if cmd != 3 else -errno.EINVAL
        if cmd == 3:
            return self._postcopy_advise(f, length)
        if cmd == 6:
            pc.state = PS_DISCARD
            return self._postcopy_discard(f, length)
        if cmd == 4:
            try:
                pc.listen(self.return_path)
            except Exception as e:  # noqa: BLE001 - userfaultfd or the return path refused
                self.ctx.error(f"postcopy_ram_incoming_setup: {e}")
                return -errno.EINVAL
            pc.state = PS_LISTENING
            return 0
        pc.state = PS_RUNNING
        pc.run()  # the devices loaded from the package, then the VM starts
        return LOADVM_QUIT

    def _postcopy_recovery_command(self, f: _QFile, cmd: int, length: int) -> int:
        """RECV_BITMAP (the destination answers with the block's receivedmap) and
        POSTCOPY_RESUME, as QEMU's loadvm_handle_recv_bitmap and loadvm_postcopy_handle_resume."""
        pc = self.postcopy
        if cmd == 9:
            if not pc.recovering:
                self.ctx.error("loadvm_postcopy_handle_resume: illegal resume received")
                return 0  # QEMU does not fail the load for this
            pc.resume()
            return 0
        raw, ok = f.counted()
        if not ok or not raw:
            self.ctx.error("loadvm_handle_recv_bitmap: failed to read block name")
            return -errno.EINVAL
        if f.error:
            return f.error
        if length != len(raw) + 1:
            self.ctx.error(f"loadvm_handle_recv_bitmap: invalid payload length ({length})")
            return -errno.EINVAL
        name = raw.decode("utf-8", "replace")
        if name not in pc.received:
            self.ctx.error(f"loadvm_handle_recv_bitmap: block '{name}' not found")
            return -errno.EINVAL
        if not pc.recovering:
            self.ctx.error("migrate_send_rp_recv_bitmap: MSG_RP_RECV_BITMAP only used for recovery")
            return 0
        pc.rp.recv_bitmap(name, pc.received[name])
        return 0

    def _postcopy_advise(self, f: _QFile, length: int) -> int:
        pc = self.postcopy
        if length == 0:
            self.ctx.error("RAM postcopy is enabled but have 0 byte advise")
            return -errno.EINVAL
        if length != 16:
            f.skip(length)
            self.ctx.error(f"CMD_POSTCOPY_ADVISE invalid length ({length})")
            return -errno.EINVAL
        remote_summary, remote_tps = f.be64(), f.be64()
        if f.error:
            return f.error
        if remote_summary != PAGE_SIZE:
            self.ctx.error(f"Postcopy needs matching RAM page sizes (s={remote_summary:x} d={PAGE_SIZE:x})")
            return -errno.EINVAL
        if remote_tps != PAGE_SIZE:
            self.ctx.error(f"Postcopy needs matching target page sizes (s={_s32(remote_tps & 0xFFFFFFFF)} "
                           f"d={PAGE_SIZE})")
            return -errno.EINVAL
        pc.state = PS_ADVISE
        pc.discard_all()  # the whole of RAM truly empty: the stream fills it
        self.ram.populate_zero = True  # a zero page must be present, or it would be asked for again
        return 0

    def _postcopy_discard(self, f: _QFile, length: int) -> int:
        if length < 1 + 1 + 1 + 1 + 2 * 8:
            f.skip(length)
            self.ctx.error(f"CMD_POSTCOPY_RAM_DISCARD invalid length ({length})")
            return -errno.EINVAL
        version = f.u8()
        if version != 0:
            f.skip(length - 1)
            self.ctx.error(f"CMD_POSTCOPY_RAM_DISCARD invalid version ({version})")
            return -errno.EINVAL
        raw, ok = f.counted()
        nil = f.u8()
        if not ok or f.error:
            self.ctx.error("CMD_POSTCOPY_RAM_DISCARD Failed to read RAMBlock ID")
            return -errno.EINVAL
        if nil != 0:
            self.ctx.error(f"CMD_POSTCOPY_RAM_DISCARD missing nil ({nil})")
            return -errno.EINVAL
        rest = length - 3 - len(raw)
        if rest < 0 or rest % 16:
            self.ctx.error(f"CMD_POSTCOPY_RAM_DISCARD invalid length ({rest})")
            return -errno.EINVAL
        name = raw.decode("utf-8", "replace")
        for _ in range(rest // 16):
            start, size = f.be64(), f.be64()
            if f.error:
                return f.error
            err = self.postcopy.discard(name, start, size)
            if err is not None:
                self.ctx.error(err)
                return -errno.EINVAL
        return 0


def load_postcopy_channel(reader: StreamReader, ram_blocks_by_name: dict[str, Any], postcopy: Any) -> list[str]:
    """The postcopy preempt channel (QEMU's postcopy_preempt_thread): RAM records with no
    section around them, each page placed as it comes, until the channel ends or breaks.
    Returns the messages of an error in the records (none when the channel just ended)."""
    ctx = LoadContext()
    stats = {"zero_pages": 0, "normal_pages": 0, "xbzrle_pages": 0, "records_applied": 0}
    handler = _RamHandler(ram_blocks_by_name, stats, postcopy=postcopy)
    handler.always_place = True
    f = _QFile(reader)
    while not handler.load(f, RAM_VERSION, ctx) and not f.error:
        pass
    return [] if f.error else ctx.lines  # the channel ending (or cut) is no error in the records


def _s32(v: int) -> int:
    return v - (1 << 32) if v & 0x80000000 else v


def load_stream(
    reader: StreamReader | Any,
    ram_blocks_by_name: dict[str, Any],
    devices: Sequence[SaveStateEntry] | None,
    machine_name: str,
    *,
    autostart: bool = True,
    uuid: bytes | None = None,
    capabilities: Iterable[str] = (),
    return_path: Any = None,
    multifd: Any = None,
    trace: StreamTrace | None = None,
    postcopy: Any = None,
) -> LoadResult:
    """Loads a precopy stream like a QEMU 7.2 destination (``-incoming``).

    ``devices``: the destination's non-RAM handlers (``None`` = ``-M none``: ``timer``); a
    ``globalstate`` handler is always registered. ``uuid``: the local ``-uuid`` (None = not set).
    ``capabilities``: enabled migration capabilities (only ``x-ignore-shared`` is validated).
    ``return_path``: the ``ReturnPathWriter`` if a return path exists (PING answers PONG).
    ``multifd``: the ``MultifdReceiver`` whose channels carry pages beside this stream.
    ``trace``: collects what the load walked, item by item (see :class:`StreamTrace`).
    ``postcopy``: the destination's ``PostcopyIncoming`` when postcopy-ram is on (its ``listen``
    takes ``return_path``'s writer; its ``run`` starts the VM).
    Returns :class:`LoadResult`; raises :class:`StreamError` with QEMU's exact messages.
    """
    if not isinstance(reader, StreamReader):
        reader = StreamReader(reader)
    if devices is None:
        devices = machine_none_devices()
    devices = list(devices)
    gs = next((e for e in devices if e.idstr == "globalstate" and e.instance_id == 0), None)
    if gs is None:
        gs = vms.SaveStateEntry("globalstate", 0, vms.VMSTATE_GLOBALSTATE, {})
        devices.append(gs)
    gs.state.clear()
    loader = _Loader(ram_blocks_by_name, devices, machine_name, uuid, capabilities, return_path, multifd, trace,
                     postcopy)
    f = _QFile(reader)
    ret = loader.run(f)
    lines = loader.ctx.lines
    if ret < 0:
        code = -ret
        lines = lines + [f"load of migration failed: {os.strerror(code)}"]
        raise StreamError(lines, errno.errorcode.get(code, str(code)), loader.stats["records_applied"])
    received = vms.globalstate_runstate(gs.state)
    if received is None or received == "running":
        runstate = "running" if autostart else "paused"
    else:
        runstate = received
    return LoadResult(runstate, list(lines), received, loader.stats["zero_pages"], loader.stats["normal_pages"],
                      loader.stats["xbzrle_pages"], loader.sections)
