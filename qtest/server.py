"""The qtest protocol server: QEMU's line protocol, answered byte for byte as QEMU 7.2 answers it.

Where real QEMU aborts, segfaults or hangs (qtest-protocol.md §13) this server answers one
``FAIL <reason>`` line instead and keeps serving. It is transport-free: a chardev feeds it bytes
(``feed``) and takes its output through the ``write`` callback.
"""
from __future__ import annotations

import binascii
import time
from collections.abc import Callable
from typing import IO

from emu._native import ffi, lib
from emu.devices.base import Device
from emu.irq import IRQ, UNNAMED_IN
from emu.qom import resolve_path
from emu.vm import VM
from qtest.numbers import U64_MAX, NumberError, strtoi, strtoi64, strtou64

# Largest buffer one command may allocate (read, b64read, write, b64write); real QEMU dies past
# what malloc gives it, we answer FAIL.
MAX_TRANSFER = 256 << 20
# A pending line that must be kept whole (its first MAX_TOKENS tokens are still arriving) and grows
# past this is dropped up to its newline and answered with FAIL. QEMU has no limit.
MAX_LINE = 1 << 30
# Echo of an unknown command word is cut here (QEMU echoes megabytes).
MAX_ECHO = 256

ERR_SIZE = b"ERR invalid argument size\n"
# Scratch space for the C fast path's replies.
FAST_OUT = 1 << 20
# Lines longer than this are handled through memoryviews instead of copies, and a pending line
# longer than this is checked for a tail that can be dropped unread.
BIG_LINE = 1 << 16
# b64read replies above this many bytes of data are encoded and sent in pieces of this size.
B64_CHUNK = 3 << 18
# Largest b64write decode buffer kept between commands.
SCRATCH_MAX = 64 << 20
# Tokens a line is split into: no command reads past words[4] (set_irq_in); QEMU ignores the rest.
MAX_TOKENS = 6
# Commands whose token at this index is bulk data (hex or base64), kept uncopied in a long line.
_BULK_ARG = {b"write": 3, b"b64write": 3}
# No QOM tree is this deep: a path with more components cannot resolve, so it is not split up
# (a 16 MiB "a/a/a..." path would become millions of strings).
MAX_QOM_DEPTH = 256

#: What the server hands the transport: bytes, or a bytearray it gives up (never modified afterwards).
Output = bytes | bytearray
#: A command handler: the line's tokens in, its reply out (None: it sent a streamed reply itself).
Handler = Callable[[list[bytes]], Output | None]


def _tokenize(buf: bytes | bytearray, start: int, end: int,
              view: memoryview | None = None) -> list[bytes | memoryview]:
    """The first ``MAX_TOKENS`` tokens of ``buf[start:end]``, split on every single space as QEMU's
    ``g_strsplit`` does (no command reads further; the rest of the line is never split).

    Every token is ``bytes``, so any parser may take it, except the data argument of ``write`` and
    ``b64write``: given ``view`` (a memoryview of ``buf``), that one stays a view, so that a
    multi-megabyte argument is never copied."""
    words: list[bytes | memoryview] = []
    bulk = -1
    pos = start
    while len(words) < MAX_TOKENS:
        sp = buf.find(b" ", pos, end)
        stop = end if sp < 0 else sp
        if view is not None and len(words) == bulk:
            words.append(view[pos:stop])
        else:
            word = bytes(buf[pos:stop])
            if not words:
                bulk = _BULK_ARG.get(word, -1)
            words.append(word)
        if sp < 0:
            break
        pos = sp + 1
    return words


class _B64Stream:
    """Decoder state for the argument of a ``b64write`` line that is still arriving."""

    __slots__ = ("start", "pos", "end", "size", "out", "state")

    _scratch = bytearray()  # reused output buffer: a fresh 16 MiB bytearray costs ~7 ms to zero

    def __init__(self, start: int, size: int) -> None:
        self.start = self.pos = start  # offset of the argument in the line buffer
        self.end = -1  # offset of the space ending it, once seen
        self.size = size
        if size <= SCRATCH_MAX:
            if len(_B64Stream._scratch) < size:
                _B64Stream._scratch = bytearray(size)
            self.out = _B64Stream._scratch  # only its first SIZE bytes are ever used
        else:
            self.out = bytearray(size)
        self.state = ffi.new("mc_b64_state *")

    def decode(self, buf: bytes | bytearray, stop: int) -> None:
        if stop > self.pos:
            lib.mc_glib_b64_decode_step(self.state, ffi.from_buffer(buf) + self.pos, stop - self.pos,
                                        ffi.from_buffer(self.out), self.size)
            self.pos = stop


class QTestFail(Exception):
    """Ends a command with ``FAIL <reason>``."""

    def __init__(self, reason: bytes) -> None:
        super().__init__(reason)
        self.reason = reason


class QTestLog:
    """``-qtest-log``: QEMU's ``[I|R|S +secs]`` lines, flushed per line so a crash loses nothing."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self._t0: float | None = None

    def _elapsed(self) -> float:
        # QEMU restarts its stopwatch on OPENED; between clients it reads as 0.
        return time.monotonic() - self._t0 if self._t0 is not None else 0.0

    def _put(self, *pieces: bytes | bytearray | memoryview) -> None:
        try:
            for piece in pieces:  # written in pieces: a multi-megabyte line is not copied
                self.stream.write(piece)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a broken log never stops the server

    def opened(self) -> None:
        self._t0 = time.monotonic()
        self._put(b"[I 0.000000] OPENED\n")

    def closed(self) -> None:
        self._put(b"[I +%.6f] CLOSED\n" % self._elapsed())
        self._t0 = None

    def received(self, line: bytes | memoryview, dropped: int = 0) -> None:
        """``[R +t] line``; a line whose tail the server dropped unread (``dropped`` bytes after its
        last token that matters) ends with a note saying so instead of that tail."""
        end = b" [... %d bytes dropped]\n" % dropped if dropped else b"\n"
        self._put(b"[R +%.6f] " % self._elapsed(), line, end)

    def sent(self, text: Output) -> None:
        self._put(b"[S +%.6f] %s" % (self._elapsed(), text))

    def raw(self, text: Output) -> None:
        self._put(text)


class IrqInterceptor:
    """The one device whose GPIOs report to the qtest client (it survives reconnects)."""

    def __init__(self, device: Device) -> None:
        self.device = device


class QTestServer:
    """One qtest endpoint bound to a VM. Call ``opened``/``feed``/``closed`` from the transport."""

    def __init__(self, vm: VM, *, log: QTestLog | None = None, write: Callable[[Output], None] | None = None) -> None:
        self.vm = vm
        self.machine = vm.machine
        self.mem = vm.machine.address_space_memory
        self.io = vm.machine.address_space_io
        self.log = log
        self.write = write
        self.connected = False
        self._buf = bytearray()
        self._scan = 0
        self._skip_line = False
        # the incomplete line at the front of the buffer: separators found in it, where the search
        # goes on, and whether (and how much of) its tail is being dropped
        self._seps: list[int] = []
        self._sep_scan = 0
        self._dropping = False
        self._dropped = 0
        self._out = bytearray()
        self._batching = False
        self._levels: dict[int, int] = {}
        self._stream: _B64Stream | None = None
        self._active_stream: _B64Stream | None = None
        self._fast_out = ffi.new("char[]", FAST_OUT)
        self._fast_counts = ffi.new("uint64_t[2]")
        self.intercepted: Device | None = None
        self._handlers: dict[bytes, Handler] = {
            b"irq_intercept_out": self._irq_intercept_out,
            b"irq_intercept_in": self._irq_intercept_in,
            b"set_irq_in": self._set_irq_in,
            b"outb": self._out_port, b"outw": self._out_port, b"outl": self._out_port,
            b"inb": self._in_port, b"inw": self._in_port, b"inl": self._in_port,
            b"writeb": self._write_n, b"writew": self._write_n, b"writel": self._write_n, b"writeq": self._write_n,
            b"readb": self._read_n, b"readw": self._read_n, b"readl": self._read_n, b"readq": self._read_n,
            b"read": self._read_hex,
            b"b64read": self._b64read,
            b"write": self._write_hex,
            b"memset": self._memset,
            b"b64write": self._b64write,
            b"endianness": self._endianness,
            b"module_load": self._module_load,
        }
        if vm.qtest_accel:
            self._handlers[b"clock_step"] = self._clock_step
            self._handlers[b"clock_set"] = self._clock_set

    # ------------------------------------------------------------------ transport side
    def opened(self) -> None:
        """A client connected (or stdio opened)."""
        self.connected = True
        self._levels.clear()
        # A partial line left by an earlier client must not glue onto this one's first line.
        self._reset_input()
        if self.log:
            self.log.opened()

    def closed(self) -> None:
        if not self.connected:
            return
        self.connected = False
        self._reset_input()
        if self.log:
            self.log.closed()

    def _reset_input(self, skip_line: bool = False) -> None:
        self._buf.clear()
        self._scan = 0
        self._skip_line = skip_line
        self._stream = None
        self._new_pending_line()

    def _new_pending_line(self) -> None:
        """The incomplete line at the front of the buffer changed: forget what was learnt of it."""
        self._seps.clear()
        self._sep_scan = 0
        self._dropping = False
        self._dropped = 0

    def feed(self, data: bytes) -> None:
        """Processes every complete line in ``data`` (plus what was buffered) in arrival order.

        Cost is linear in the input. A pending line is kept whole only up to what its reply can
        depend on: its first ``MAX_TOKENS`` tokens (an over-long command word: its first
        ``MAX_ECHO`` bytes); the rest is dropped as it arrives (``_limit_pending``)."""
        if self._dropping:
            data = self._drop_tail(data)
            if not data:
                return
        if not self._buf and self.log is None and not self._skip_line and data.endswith(b"\n"):
            # The usual round trip: whole lines and nothing buffered. Let C answer them straight
            # from ``data``; only what it cannot answer goes through the buffer below.
            done = self._feed_fast(data, 0)
            if done == len(data):
                self._flush()
                return
            data = data[done:]
        buf = self._buf
        buf += data
        self._batching = True
        try:
            start = self._run_lines(buf)
            if start:
                del buf[:start]
                self._stream = None
                self._new_pending_line()
            self._scan = len(buf)
            if len(buf) > BIG_LINE:
                self._limit_pending(buf)
        finally:
            self._batching = False
            self._flush()

    def _run_lines(self, buf: bytearray) -> int:
        """Runs the complete lines of ``buf`` from ``self._scan`` on; returns where the first
        incomplete line starts."""
        start = 0
        scan = self._scan
        # Without a log, runs of plain RAM reads/writes are answered in C (same bytes out).
        fast = self.log is None
        while True:
            nl = buf.find(b"\n", scan)
            if nl < 0:
                return start
            if fast and not self._skip_line:
                done = self._feed_fast(buf, start)
                if done != start:
                    start = scan = done
                    continue
            if self._skip_line:
                self._skip_line = False
                self._reply(b"FAIL line too long\n")
            else:
                self._run_line(buf, start, nl)
            start = scan = nl + 1

    def _run_line(self, buf: bytearray, start: int, nl: int) -> None:
        dropped = self._dropped if start == 0 else 0  # only the line at the front can have lost a tail
        if nl - start <= BIG_LINE:
            self.process_line(bytes(buf[start:nl]), dropped=dropped)
            return
        # the decode of a streamed b64write belongs to the line that began the buffer
        self._active_stream = self._stream if start == 0 else None
        self._stream = None
        with memoryview(buf) as view:  # no copy of a multi-megabyte line
            if self.log:
                self.log.received(view[start:nl], dropped)
            self._dispatch(_tokenize(buf, start, nl, view))
        self._active_stream = None

    def _limit_pending(self, buf: bytearray) -> None:
        """Bounds the incomplete line at the front of ``buf`` (longer than ``BIG_LINE``)."""
        self._stream_b64(buf)
        cut = self._cut_point(buf)
        if cut >= 0:
            # nothing past ``cut`` can change the reply: drop it now and the rest as it arrives
            self._dropped += len(buf) - cut
            del buf[cut:]
            self._scan = len(buf)
            self._dropping = True
        elif len(buf) > MAX_LINE:
            # drop the runaway line; its newline, when it comes, gets one FAIL
            self._reset_input(skip_line=True)

    def _cut_point(self, buf: bytearray) -> int:
        """Where the pending line may be cut without changing its reply, or -1: after its
        ``MAX_TOKENS``-th token, or (a command word longer than any command) after the part of
        the word that the ``Unknown command`` reply echoes. The separators found so far are kept,
        so each byte is scanned once."""
        seps = self._seps
        while len(seps) < MAX_TOKENS:
            sp = buf.find(b" ", self._sep_scan)
            if sp < 0:
                self._sep_scan = len(buf)
                break
            seps.append(sp)
            self._sep_scan = sp + 1
        if len(seps) == MAX_TOKENS:
            return seps[-1]
        if (seps[0] if seps else len(buf)) > MAX_ECHO:
            return MAX_ECHO
        return -1

    def _drop_tail(self, data: bytes) -> bytes:
        """Discards the dropped line's bytes up to its newline; returns what follows (with it)."""
        nl = data.find(b"\n")
        if nl < 0:
            self._dropped += len(data)
            return b""
        self._dropped += nl
        self._dropping = False
        return data[nl:]

    def _stream_b64(self, buf: bytearray) -> None:
        """Decodes a big ``b64write`` argument while it is still arriving (the incomplete line at
        the start of ``buf``), so that only its tail is left to decode when the newline comes."""
        st = self._stream
        if st is None:
            if not buf.startswith(b"b64write "):
                return
            p2 = buf.find(b" ", 9, 100)
            p3 = buf.find(b" ", p2 + 1, p2 + 100) if p2 > 0 else -1
            if p3 < 0:
                return
            try:
                size = strtou64(bytes(buf[p2 + 1 : p3]))
            except NumberError:
                return  # the handler reports it once the line is complete
            if size > MAX_TRANSFER:
                return
            st = self._stream = _B64Stream(p3 + 1, size)
        if st.end >= 0:
            return
        space = buf.find(b" ", st.pos)
        stop = len(buf) if space < 0 else space
        st.decode(buf, stop)
        if space >= 0:
            st.end = space  # an extra token follows: the argument is complete

    def _feed_fast(self, buf: bytes | bytearray, start: int) -> int:
        """Lets C answer the lines it can from ``start``; returns where Python takes over."""
        if start >= len(buf):
            return start
        counts = self._fast_counts
        with self.vm.lock:
            flat = self.mem.flat
            while True:
                lines = lib.mc_qtest_fast(flat, ffi.from_buffer(buf) + start, len(buf) - start, self._fast_out,
                                          FAST_OUT, counts, counts + 1)
                if not lines:
                    return start
                self._out += ffi.buffer(self._fast_out, counts[1])
                start += counts[0]
                if counts[0] == 0 or start >= len(buf):
                    return start

    def _flush(self) -> None:
        if self._out:
            out, self._out = self._out, bytearray()  # handed over to the transport, not copied
            if self.write is not None and self.connected:
                self.write(out)

    def _reply(self, text: Output) -> None:
        if self.log and self.connected:
            if text is ERR_SIZE:
                self.log.raw(text)  # QEMU <= 9.2 logs this one without the [S +t] prefix
            else:
                self.log.sent(text)
        if len(text) > FAST_OUT:
            self._flush()  # a big reply goes out as it is, without a copy into the queue
            if self.write is not None and self.connected:
                self.write(text)
            return
        self._out += text
        if not self._batching:
            self._flush()

    # ------------------------------------------------------------------ commands
    def process_line(self, line: bytes, *, dropped: int = 0) -> None:
        """Runs one command line (without its newline) and queues the reply. ``dropped``: bytes of
        the line that were discarded after its last token that matters (for the log)."""
        if self.log:
            self.log.received(line, dropped)
        if not line:
            self._reply(b"FAIL empty command\n")
            return
        self._dispatch(line.split(b" ", MAX_TOKENS)[:MAX_TOKENS])

    def _dispatch(self, words: list[bytes] | list[bytes | memoryview]) -> None:
        handler = self._handlers.get(bytes(words[0]))
        if handler is None:
            self._reply(b"FAIL Unknown command '%s'\n" % bytes(words[0][:MAX_ECHO]))
            return
        try:
            with self.vm.lock:
                reply = handler(words)  # type: ignore[arg-type]
        except QTestFail as e:
            reply = b"FAIL " + e.reason + b"\n"
        except NumberError as e:
            token = bytes(e.token[:MAX_ECHO])
            reply = (b"FAIL number out of range '%s'\n" if e.out_of_range else b"FAIL invalid number '%s'\n") % token
        except IndexError:
            reply = b"FAIL missing argument\n"
        if reply is not None:  # None: the handler sent its (streamed) reply itself
            self._reply(reply)

    @staticmethod
    def _need(words: list[bytes], n: int) -> None:
        if len(words) <= n:
            raise IndexError

    def _endianness(self, words: list[bytes]) -> bytes:
        return b"OK little\n"

    # ---- port I/O
    def _out_port(self, words: list[bytes]) -> bytes:
        self._need(words, 2)
        addr = strtou64(words[1])
        value = strtou64(words[2])
        if addr > 0xFFFF:
            raise QTestFail(b"port out of range")
        size = {b"b": 1, b"w": 2, b"l": 4}[words[0][-1:]]
        self.io.write_uint(addr, value, size)
        return b"OK\n"

    def _in_port(self, words: list[bytes]) -> bytes:
        self._need(words, 1)
        addr = strtou64(words[1])
        if addr > 0xFFFF:
            raise QTestFail(b"port out of range")
        size = {b"b": 1, b"w": 2, b"l": 4}[words[0][-1:]]
        return b"OK 0x%04x\n" % self.io.read_uint(addr, size)

    # ---- sized memory access
    def _write_n(self, words: list[bytes]) -> bytes:
        self._need(words, 2)
        addr = strtou64(words[1])
        value = strtou64(words[2])
        size = {b"b": 1, b"w": 2, b"l": 4, b"q": 8}[words[0][-1:]]
        self.mem.write_uint(addr, value, size)
        return b"OK\n"

    def _read_n(self, words: list[bytes]) -> bytes:
        self._need(words, 1)
        addr = strtou64(words[1])
        size = {b"b": 1, b"w": 2, b"l": 4, b"q": 8}[words[0][-1:]]
        return b"OK 0x%016x\n" % self.mem.read_uint(addr, size)

    # ---- bulk memory
    @staticmethod
    def _check_size(size: int) -> None:
        if size > MAX_TRANSFER:
            raise QTestFail(b"size too large")

    def _read_hex(self, words: list[bytes]) -> bytes:
        self._need(words, 2)
        addr = strtou64(words[1])
        size = strtou64(words[2])
        self._check_size(size)
        data = self.mem.read(addr, size)
        return b"OK 0x" + binascii.hexlify(data) + b"\n"

    def _b64read(self, words: list[bytes]) -> Output | None:
        self._need(words, 2)
        addr = strtou64(words[1])
        size = strtou64(words[2])
        self._check_size(size)
        flat = self.mem.flat
        if (size > B64_CHUNK and self.log is None and self.write is not None and self.connected
                and not lib.mc_as_touches_mmio(flat, addr, size)):
            self._b64read_streamed(flat, addr, size)
            return None
        enc = (size + 2) // 3 * 4
        reply = bytearray(enc + 4)
        reply[:3] = b"OK "
        reply[-1] = 10
        if lib.mc_as_b64encode(flat, addr, size, ffi.from_buffer(reply) + 3) < 0:
            reply[3:-1] = binascii.b2a_base64(self.mem.read(addr, size), newline=False)  # MMIO in range
        return reply

    def _b64read_streamed(self, flat: object, addr: int, size: int) -> None:
        """Encodes and sends a big reply in pieces, so the client reads the first while the next
        is encoded (the range holds no MMIO: the caller checked, under the lock)."""
        assert self.write is not None
        first = True
        done = 0
        while done < size:
            n = min(B64_CHUNK, size - done)  # a multiple of 3 except the last: padding only at the end
            piece = bytearray((n + 2) // 3 * 4 + (3 if first else 0) + (1 if done + n == size else 0))
            lib.mc_as_b64encode(flat, (addr + done) & U64_MAX, n, ffi.from_buffer(piece) + (3 if first else 0))
            if first:
                piece[:3] = b"OK "
                self._flush()  # anything queued before this reply goes first
            if done + n == size:
                piece[-1] = 10
            self.write(piece)
            first = False
            done += n

    def _bulk_write_args(self, words: list[bytes]) -> tuple[int, int, bytes] | None:
        """``write``/``b64write ADDR SIZE DATA``: (addr, size, data), or None when DATA is shorter
        than 3 bytes (QEMU's ``ERR invalid argument size``). DATA may be a memoryview of a long line."""
        self._need(words, 3)
        addr = strtou64(words[1])
        size = strtou64(words[2])
        if len(words[3]) < 3:
            return None
        self._check_size(size)
        return addr, size, words[3]

    def _write_hex(self, words: list[bytes]) -> bytes:
        args = self._bulk_write_args(words)
        if args is None:
            return ERR_SIZE
        addr, size, hexdata = args
        data = bytearray(size)
        if size:
            lib.mc_qtest_hex_decode(ffi.from_buffer(hexdata), len(hexdata), ffi.from_buffer(data), size)
            self.mem.write(addr, data)
        return b"OK\n"

    def _memset(self, words: list[bytes]) -> bytes:
        self._need(words, 3)
        addr = strtou64(words[1])
        size = strtou64(words[2])
        pattern = strtou64(words[3])
        if size:
            self.mem.fill(addr, pattern & 0xFF, size)
        return b"OK\n"

    def _b64write(self, words: list[bytes]) -> bytes:
        args = self._bulk_write_args(words)
        if args is None:
            return ERR_SIZE
        addr, size, text = args
        st = self._active_stream
        if st is not None and isinstance(text, memoryview) and st.size == size:
            line = text.obj
            st.decode(line, st.start + len(text))  # only the tail that arrived with the newline
            out, n = memoryview(st.out)[:size], st.state.total
        else:
            out = bytearray(len(text) // 4 * 3 + 3)
            n = lib.mc_glib_b64_decode(ffi.from_buffer(text), len(text), ffi.from_buffer(out))
        if n != size:
            if self.log and self.connected:
                self.log.sent(b"b64write: data length mismatch (told %d, found %d)\n" % (size, n))
            # QEMU decodes in place and writes SIZE bytes anyway: the decoded bytes, then the rest
            # of the argument's own text; past its end we write zeros instead of heap contents.
            head = bytes(out[: min(n, size)]) + (bytes(text[n:size]) if n < size else b"")
            data: bytes | memoryview = head + bytes(size - len(head))
        else:
            data = memoryview(out)[:n]
        if size:
            self.mem.write(addr, data)
        return b"OK\n"

    # ---- clock (qtest accelerator only)
    def _clock_step(self, words: list[bytes]) -> bytes:
        ns = strtoi64(words[1]) if len(words) > 1 else None
        return b"OK %d\n" % self.machine.clock.step(ns)

    def _clock_set(self, words: list[bytes]) -> bytes:
        self._need(words, 1)
        return b"OK %d\n" % self.machine.clock.set(strtoi64(words[1]))

    def _module_load(self, words: list[bytes]) -> bytes:
        self._need(words, 2)
        # Everything is built in: QEMU without module support answers OK for every name.
        return b"OK\n"

    # ---- IRQs
    def _resolve_device(self, path: bytes) -> Device:
        if path.count(b"/") > MAX_QOM_DEPTH:
            while b"//" in path:  # resolution skips empty components: only the others count
                path = path.replace(b"//", b"/")
            if path.count(b"/") > MAX_QOM_DEPTH:
                raise QTestFail(b"Unknown device")
        obj = resolve_path(self.machine.root, path.decode("utf-8", "surrogateescape"))
        if not isinstance(obj, Device):
            raise QTestFail(b"Unknown device")
        return obj

    def _claim(self, words: list[bytes]) -> Device | None:
        """``irq_intercept_* QOM_PATH``: the device if it is newly intercepted, None if it already
        was; FAIL if another device is."""
        self._need(words, 1)
        dev = self._resolve_device(words[1])
        if self.intercepted is not None:
            if self.intercepted is dev:
                return None
            raise QTestFail(b"IRQ intercept already enabled")
        self.intercepted = dev
        return dev

    def _irq_intercept_in(self, words: list[bytes]) -> bytes:
        dev = self._claim(words)
        if dev is not None:  # 7.2: only the unnamed input list; the original handler still sees every change
            for line in dev.gpio_in.get(None, []):
                line.handler = self._make_interceptor(line.handler)
        return b"OK\n"

    def _irq_intercept_out(self, words: list[bytes]) -> bytes:
        dev = self._claim(words)
        if dev is not None:  # 7.2 ignores NAME and redirects the unnamed output list, forwarding to the old target
            for out in dev.gpio_out.get(None, []):
                target = out.target
                out.connect(IRQ(self._make_interceptor(target.set if target else None, forward_n=False), out.n))
        return b"OK\n"

    def _make_interceptor(self, orig: Callable[..., None] | None, forward_n: bool = True) -> Callable[[int, int], None]:
        def handler(n: int, level: int) -> None:
            if orig is not None:
                if forward_n:
                    orig(n, level)
                else:
                    orig(level)
            self.irq_changed(n, level)

        return handler

    def irq_changed(self, n: int, level: int) -> None:
        """An intercepted line moved: report it if its level differs from the last one reported."""
        if self._levels.get(n, 0) != level:
            self._levels[n] = level
            self._reply(b"IRQ raise %d\n" % n if level else b"IRQ lower %d\n" % n)

    def _set_irq_in(self, words: list[bytes]) -> bytes:
        self._need(words, 4)
        dev = self._resolve_device(words[1])
        name = words[2].decode("utf-8", "surrogateescape")
        num = strtoi(words[3])
        level = strtoi(words[4])
        line = dev.get_gpio_in(None if name == UNNAMED_IN else name, num)
        if line is None:
            raise QTestFail(b"no such GPIO")
        line.set(level)
        return b"OK\n"
