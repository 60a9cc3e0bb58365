"""A libqtest-style client for the qtest line protocol.

:class:`QTestClient` drives an emulator (ours or a real QEMU) over an
already-connected transport: a connected socket, or a pair of binary
file objects (e.g. the stdout/stdin pipes of ``-qtest stdio``).

Wire lines and reply handling follow libqtest (``spec/qtest-protocol.md``
§7.2-§7.3): asynchronous ``IRQ raise|lower N`` lines are skipped while the
level of line N is recorded; any reply other than ``OK ...`` raises
:class:`QTestError`; end of stream raises :class:`QTestEOF`.

Lines are bytes on the wire; this module decodes them as UTF-8 with
``surrogateescape``, so arbitrary bytes (QEMU echoes unknown commands raw)
round-trip through ``str``.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import types
from collections.abc import Callable, Mapping, Sequence
from typing import BinaryIO

__all__ = [
    "QTestClient",
    "QTestError",
    "QTestEOF",
    "parse_reply_int",
]

_ENC = "utf-8"
_ERRS = "surrogateescape"
_RECV_SIZE = 1 << 20
# A batch this small always fits in the kernel send buffer of a socket or
# pipe, so pipeline() can send it before reading without risking a deadlock.
_DIRECT_SEND_LIMIT = 16 * 1024


class QTestError(Exception):
    """The server answered something other than ``OK`` (``FAIL ...``/``ERR ...``).

    ``str(err)`` and ``err.reply`` are the reply line without its newline.
    """

    def __init__(self, reply: str, command: str | None = None) -> None:
        super().__init__(reply)
        self.reply = reply
        self.command = command


class QTestEOF(ConnectionError):
    """The qtest stream ended (the emulator closed the connection or died)."""


def parse_reply_int(reply: str) -> int:
    """Return the integer in token 1 of an ``OK <number>`` reply (base 0)."""
    parts = reply.split(" ")
    if len(parts) < 2 or parts[0] != "OK":
        raise QTestError(reply)
    try:
        return int(parts[1], 0)
    except ValueError:
        raise QTestError(reply) from None


_Reader = Callable[[memoryview], int]
_Writer = Callable[[bytes | bytearray | memoryview], None]


def _file_reader(f: BinaryIO) -> _Reader:
    """Build a ``readinto``-style function for a readable binary file."""
    if hasattr(f, "readinto1"):  # buffered: returns buffered bytes first, then one raw read
        return f.readinto1
    try:
        fd = f.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
    if fd >= 0:
        return lambda buf: os.readv(fd, [buf])
    return f.readinto  # type: ignore[attr-defined]  # typing.BinaryIO omits readinto; binary files have it


def _file_writer(f: BinaryIO) -> _Writer:
    """Build a "write everything" function for a writable binary file."""
    try:
        fd = f.fileno()
    except (AttributeError, OSError, ValueError):
        fd = -1
    if fd >= 0:
        try:
            f.flush()
        except (OSError, ValueError):
            pass

        def write_fd(data: bytes | bytearray | memoryview) -> None:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]

        return write_fd

    def write_file(data: bytes | bytearray | memoryview) -> None:
        f.write(data)
        f.flush()

    return write_file


class QTestClient:
    """Synchronous qtest client (the Python counterpart of libqtest's ``QTestState``).

    ``transport`` is a connected ``socket.socket`` or a ``(rfile, wfile)``
    pair of binary file objects. ``timeout`` (sockets only) bounds every
    blocking read/write; ``None`` blocks forever, as libqtest does.

    Not thread-safe: one caller at a time. After a timeout the reply stream
    may be out of step with the commands; close the client then.
    """

    def __init__(
        self,
        transport: socket.socket | tuple[BinaryIO, BinaryIO],
        timeout: float | None = None,
    ) -> None:
        self._sock: socket.socket | None
        if isinstance(transport, socket.socket):
            self._sock = transport
            transport.settimeout(timeout)
            self._recv_into: _Reader = transport.recv_into
            self._send: _Writer = transport.sendall
            self._files: tuple[BinaryIO, BinaryIO] | None = None
        else:
            rfile, wfile = transport
            self._sock = None
            self._files = (rfile, wfile)
            self._recv_into = _file_reader(rfile)
            self._send = _file_writer(wfile)
        self._rbuf = bytearray(_RECV_SIZE)
        self._rview = memoryview(self._rbuf)
        self._buf = bytearray()
        self._pos = 0
        self._levels: dict[int, bool] = {}
        self._big_endian: bool | None = None
        self.closed = False

    # ------------------------------------------------------------------ I/O

    @property
    def irq_levels(self) -> Mapping[int, bool]:
        """Read-only live view: IRQ number -> last level reported by ``IRQ`` lines."""
        return types.MappingProxyType(self._levels)

    def _fill(self) -> None:
        """Receive more bytes into the line buffer (compacting it first)."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        try:
            n = self._recv_into(self._rview)
        except (ConnectionResetError, BrokenPipeError) as e:
            raise QTestEOF(f"qtest connection lost: {e}") from e
        if not n:
            raise QTestEOF("qtest connection closed by the emulator")
        self._buf += self._rview[:n]

    def _readline(self) -> bytes:
        """Return the next line (any kind), without its newline."""
        buf = self._buf
        i = buf.find(b"\n", self._pos)
        while i < 0:
            scanned = len(buf) - self._pos
            self._fill()  # compacts: the unread part now starts at 0
            i = buf.find(b"\n", scanned)
        line = bytes(buf[self._pos : i])
        self._pos = i + 1
        if self._pos == len(buf):
            buf.clear()
            self._pos = 0
        return line

    def _record_irq(self, line: bytes) -> bool:
        """If ``line`` is an ``IRQ raise|lower N`` line, record it and return True."""
        if not line.startswith(b"IRQ "):
            return False
        parts = line.split(b" ")
        if len(parts) < 3 or parts[1] not in (b"raise", b"lower"):
            raise QTestError(line.decode(_ENC, _ERRS))
        try:
            n = int(parts[2], 0)
        except ValueError:
            raise QTestError(line.decode(_ENC, _ERRS)) from None
        if not 0 <= n < 256:
            raise QTestError(line.decode(_ENC, _ERRS))
        self._levels[n] = parts[1] == b"raise"
        return True

    def _reply(self) -> bytes:
        """Read the next non-IRQ line."""
        while True:
            line = self._readline()
            if not self._record_irq(line):
                return line

    def _send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._send(data)
        except (ConnectionResetError, BrokenPipeError) as e:
            raise QTestEOF(f"qtest connection lost: {e}") from e

    def _cmd(self, line: bytes) -> bytes:
        """Send one command line (``\\n`` included) and return its checked ``OK`` reply."""
        self._send_bytes(line)
        reply = self._reply()
        if reply == b"OK" or reply.startswith(b"OK "):
            return reply
        raise QTestError(reply.decode(_ENC, _ERRS), line[:-1].decode(_ENC, _ERRS))

    def _cmd_int(self, line: bytes) -> int:
        reply = self._cmd(line)
        try:
            return int(reply.split(b" ", 2)[1], 0)
        except (IndexError, ValueError):
            raise QTestError(reply.decode(_ENC, _ERRS), line[:-1].decode(_ENC, _ERRS)) from None

    # ------------------------------------------------------------ raw API

    def raw(self, line: str, check: bool = False) -> str:
        """Send ``line`` verbatim and return the reply line (no newline, IRQ lines skipped).

        With ``check=True`` a reply other than ``OK ...`` raises :class:`QTestError`.
        """
        data = line.encode(_ENC, _ERRS) + b"\n"
        if check:
            return self._cmd(data).decode(_ENC, _ERRS)
        self._send_bytes(data)
        return self._reply().decode(_ENC, _ERRS)

    def cmd(self, line: str) -> str:
        """Send ``line`` and return its ``OK ...`` reply; other replies raise :class:`QTestError`."""
        return self.raw(line, check=True)

    def pipeline(self, lines: Sequence[str], check: bool = False) -> list[str]:
        """Send all ``lines`` while reading their replies concurrently; return the replies.

        IRQ lines are filtered out (their levels recorded). Large batches are
        sent from a helper thread so that neither side can block the other
        (real QEMU stops reading when its output is not drained). With
        ``check=True`` the first non-``OK`` reply raises :class:`QTestError`
        after all replies have been read.
        """
        if not lines:
            return []
        payload = ("\n".join(lines) + "\n").encode(_ENC, _ERRS)
        count = len(lines)
        errors: list[BaseException] = []
        sender: threading.Thread | None = None
        if len(payload) <= _DIRECT_SEND_LIMIT:
            self._send_bytes(payload)
        else:

            def send() -> None:
                try:
                    self._send_bytes(payload)
                except BaseException as e:  # reported to the caller below
                    errors.append(e)

            sender = threading.Thread(target=send, name="qtest-pipeline", daemon=True)
            sender.start()
        replies: list[str] = []
        try:
            while len(replies) < count:
                replies.append(self._reply().decode(_ENC, _ERRS))
        finally:
            if sender is not None:
                if len(replies) < count:
                    # Reading failed: unblock the sender before joining it.
                    self._abort_send()
                sender.join()
        if errors:
            raise errors[0]
        if check:
            for cmd_line, reply in zip(lines, replies):
                if reply != "OK" and not reply.startswith("OK "):
                    raise QTestError(reply, cmd_line)
        return replies

    def _abort_send(self) -> None:
        try:
            if self._sock is not None:
                self._sock.shutdown(socket.SHUT_WR)
            elif self._files is not None:
                self._files[1].close()
        except OSError:
            pass

    # --------------------------------------------------------- typed API

    def endianness(self) -> str:
        """Send ``endianness``; return ``"little"`` or ``"big"`` (also cached for :attr:`big_endian`)."""
        reply = self._cmd(b"endianness\n").decode(_ENC, _ERRS)
        value = reply[3:]
        if value not in ("little", "big"):
            raise QTestError(reply, "endianness")
        self._big_endian = value == "big"
        return value

    @property
    def big_endian(self) -> bool:
        """Whether the target is big-endian (asks the server once if not known yet)."""
        if self._big_endian is None:
            self.endianness()
        assert self._big_endian is not None
        return self._big_endian

    def outb(self, port: int, value: int) -> None:
        """``outb 0x%x 0x%x``: write a byte to an I/O port."""
        self._cmd(b"outb 0x%x 0x%x\n" % (port, value))

    def outw(self, port: int, value: int) -> None:
        """``outw 0x%x 0x%x``: write a 16-bit word to an I/O port."""
        self._cmd(b"outw 0x%x 0x%x\n" % (port, value))

    def outl(self, port: int, value: int) -> None:
        """``outl 0x%x 0x%x``: write a 32-bit long to an I/O port."""
        self._cmd(b"outl 0x%x 0x%x\n" % (port, value))

    def inb(self, port: int) -> int:
        """``inb 0x%x``: read a byte from an I/O port."""
        return self._cmd_int(b"inb 0x%x\n" % port)

    def inw(self, port: int) -> int:
        """``inw 0x%x``: read a 16-bit word from an I/O port."""
        return self._cmd_int(b"inw 0x%x\n" % port)

    def inl(self, port: int) -> int:
        """``inl 0x%x``: read a 32-bit long from an I/O port."""
        return self._cmd_int(b"inl 0x%x\n" % port)

    def writeb(self, addr: int, value: int) -> None:
        """``writeb 0x%x 0x%x``: store a byte in guest memory."""
        self._cmd(b"writeb 0x%x 0x%x\n" % (addr, value))

    def writew(self, addr: int, value: int) -> None:
        """``writew 0x%x 0x%x``: store a target-endian 16-bit value."""
        self._cmd(b"writew 0x%x 0x%x\n" % (addr, value))

    def writel(self, addr: int, value: int) -> None:
        """``writel 0x%x 0x%x``: store a target-endian 32-bit value."""
        self._cmd(b"writel 0x%x 0x%x\n" % (addr, value))

    def writeq(self, addr: int, value: int) -> None:
        """``writeq 0x%x 0x%x``: store a target-endian 64-bit value."""
        self._cmd(b"writeq 0x%x 0x%x\n" % (addr, value))

    def readb(self, addr: int) -> int:
        """``readb 0x%x``: load a byte from guest memory."""
        return self._cmd_int(b"readb 0x%x\n" % addr)

    def readw(self, addr: int) -> int:
        """``readw 0x%x``: load a target-endian 16-bit value."""
        return self._cmd_int(b"readw 0x%x\n" % addr)

    def readl(self, addr: int) -> int:
        """``readl 0x%x``: load a target-endian 32-bit value."""
        return self._cmd_int(b"readl 0x%x\n" % addr)

    def readq(self, addr: int) -> int:
        """``readq 0x%x``: load a target-endian 64-bit value."""
        return self._cmd_int(b"readq 0x%x\n" % addr)

    def memread(self, addr: int, size: int) -> bytes:
        """``read 0x%x 0x%x`` (hex dump); ``size == 0`` sends nothing and returns ``b""``."""
        if size <= 0:
            return b""
        line = b"read 0x%x 0x%x\n" % (addr, size)
        reply = self._cmd(line)
        hexdata = reply[3:]
        if not hexdata.startswith(b"0x"):
            raise QTestError(reply.decode(_ENC, _ERRS), line[:-1].decode())
        try:
            data = bytes.fromhex(hexdata[2:].decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise QTestError(reply.decode(_ENC, _ERRS), line[:-1].decode()) from None
        if len(data) != size:
            raise QTestError(f"read returned {len(data)} bytes, expected {size}", line[:-1].decode())
        return data

    def memwrite(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """``write 0x%x 0x%x 0x<hex>``; empty data sends nothing."""
        size = len(data)
        if not size:
            return
        self._cmd(b"write 0x%x 0x%x 0x%s\n" % (addr, size, bytes(data).hex().encode("ascii")))

    def bufread(self, addr: int, size: int) -> bytes:
        """``b64read 0x%x 0x%x``: read ``size`` bytes, transferred as base64."""
        line = b"b64read 0x%x 0x%x\n" % (addr, size)
        reply = self._cmd(line)
        try:
            data = base64.b64decode(reply[3:], validate=True)
        except ValueError:
            raise QTestError(reply.decode(_ENC, _ERRS), line[:-1].decode()) from None
        if len(data) != size:
            raise QTestError(f"b64read returned {len(data)} bytes, expected {size}", line[:-1].decode())
        return data

    def bufwrite(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """``b64write 0x%x 0x%x <base64>``; empty data sends nothing (libqtest would abort)."""
        size = len(data)
        if not size:
            return
        self._cmd(b"b64write 0x%x 0x%x %s\n" % (addr, size, base64.b64encode(data)))

    def memset(self, addr: int, pattern: int, size: int) -> None:
        """``memset 0x%x 0x%x 0x%02x``: fill ``size`` bytes with ``pattern & 0xff``."""
        self._cmd(b"memset 0x%x 0x%x 0x%02x\n" % (addr, size, pattern & 0xFF))

    def clock_step(self, ns: int | None = None) -> int:
        """``clock_step [%d]``: advance the virtual clock (to the next deadline if ``ns`` is None).

        Returns the clock value in ns. Needs ``-accel qtest``.
        """
        if ns is None:
            return self._cmd_int(b"clock_step\n")
        return self._cmd_int(b"clock_step %d\n" % ns)

    def clock_set(self, ns: int) -> int:
        """``clock_set %d``: advance the virtual clock to ``ns``; returns the new clock value."""
        return self._cmd_int(b"clock_set %d\n" % ns)

    def irq_intercept_in(self, path: str) -> None:
        """``irq_intercept_in PATH``: report level changes of the device's GPIO inputs."""
        self._cmd(b"irq_intercept_in %s\n" % path.encode(_ENC, _ERRS))

    def irq_intercept_out(self, path: str, name: str | None = None) -> None:
        """``irq_intercept_out PATH [NAME]``: report level changes of the device's GPIO outputs."""
        if name is None:
            self._cmd(b"irq_intercept_out %s\n" % path.encode(_ENC, _ERRS))
        else:
            self._cmd(b"irq_intercept_out %s %s\n" % (path.encode(_ENC, _ERRS), name.encode(_ENC, _ERRS)))

    def set_irq_in(self, path: str, name: str | None, num: int, level: int) -> None:
        """``set_irq_in PATH NAME NUM LEVEL`` (``None`` name -> ``unnamed-gpio-in``)."""
        gpio = "unnamed-gpio-in" if name is None else name
        self._cmd(
            b"set_irq_in %s %s %d %d\n"
            % (path.encode(_ENC, _ERRS), gpio.encode(_ENC, _ERRS), num, level)
        )

    def get_irq(self, num: int) -> bool:
        """Level of intercepted IRQ ``num``, after an ``inb 0x0`` round trip drains pending IRQ lines."""
        self._cmd(b"inb 0x0\n")
        return self._levels.get(num, False)

    def module_load(self, prefix: str, libname: str) -> None:
        """``module_load PREFIX LIBNAME`` (bare ``FAIL`` raises :class:`QTestError`)."""
        self._cmd(b"module_load %s %s\n" % (prefix.encode(_ENC, _ERRS), libname.encode(_ENC, _ERRS)))

    # -------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the transport (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self._sock is not None:
            self._sock.close()
        elif self._files is not None:
            for f in self._files:
                try:
                    f.close()
                except OSError:
                    pass

    def __enter__(self) -> QTestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

