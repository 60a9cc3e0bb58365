"""Character devices: the byte pipes that front-ends (qtest, QMP monitors, serial ports) talk through.

Backends follow QEMU's ``-chardev`` syntax: ``socket`` (unix ``path=`` or tcp ``host=``/``port=``,
client by default, ``server=on`` listens, ``wait=off`` does not block start-up, ``fd=N`` adopts an
inherited socket), ``stdio``, ``file`` (``path=``, ``input-path=``) and ``null``, plus the legacy
shorthands (``unix:PATH``, ``tcp:HOST:PORT``, ``stdio``, ``file:PATH``, ``chardev:ID``...).

All I/O is non-blocking on the main loop; output is queued, and a front-end's input is paused
while too much of its output is waiting (a client that stops reading stalls only itself).
"""
from __future__ import annotations

import array
import contextlib
import errno
import os
import select
import socket
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Protocol

from emu.main_loop import MainLoop
from emu.qemu_opts import parse_items

RECV_SIZE = 1 << 20
OUT_HIGH = 16 << 20  # pause input above this much queued output
OUT_LOW = 1 << 20    # resume below this
MAX_FDS = 16
SNDBUF = 4 << 20  # requested socket send buffer (the kernel caps it at net.core.wmem_max)
SPIN_MAX_NS = 2_000_000  # longest stretch one connection may keep the loop polling
MAX_UNIX_PATH = 107  # sun_path is 108 bytes with its NUL


class ChardevError(Exception):
    """A chardev could not be created or opened; the message is QEMU's."""


class Frontend(Protocol):
    """What a chardev's user implements."""

    def chr_open(self) -> None: ...

    def chr_read(self, data: bytes, fds: list[int]) -> None: ...

    def chr_close(self) -> None: ...


def parse_opts(text: str, implied: str | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """QemuOpts-style ``a=b,c,d=e`` (``,,`` escapes a comma). Returns (pairs, bare flags as
    written, e.g. ``nowait``)."""
    pairs: list[tuple[str, str]] = []
    flags: list[str] = []
    for item in parse_items(text, implied):
        if not item.bare:
            pairs.append((item.key, item.value))
        elif item.key:
            flags.append(item.key if item.value == "on" else "no" + item.key)
    return pairs, flags


def _bool_opt(opts: dict[str, str], key: str, default: bool) -> bool:
    v = opts.get(key)
    if v is None:
        return default
    if v in ("on", "yes", "true", ""):
        return True
    if v in ("off", "no", "false"):
        return False
    raise ChardevError(f"Parameter '{key}' expects 'on' or 'off'")


class Chardev:
    """Base chardev: one front-end, a non-blocking output queue, open/close events."""

    backend = "null"

    def __init__(self, loop: MainLoop, chr_id: str) -> None:
        self.loop = loop
        self.id = chr_id
        self.frontend: Frontend | None = None
        self.connected = False
        self.label = chr_id

    def attach(self, fe: Frontend) -> None:
        if self.frontend is not None:
            raise ChardevError(f"Device '{self.id}' is in use")
        self.frontend = fe
        if self.connected:
            fe.chr_open()

    def start(self) -> None:
        """Opens the backend (connects, listens...). Raises ChardevError."""

    def write(self, data: bytes | bytearray) -> None:
        """Queues output (any thread). Dropped while nothing is connected, as in QEMU."""

    def close(self) -> None:
        self.connected = False

    def disconnect(self) -> None:
        """Drops the current connection from our side (a server keeps listening)."""

    def filename(self) -> str:
        return self.backend

    # ---- helpers for subclasses
    def _opened(self) -> None:
        self.connected = True
        if self.frontend is not None:
            self.frontend.chr_open()

    def _closed(self) -> None:
        if self.connected:
            self.connected = False
            if self.frontend is not None:
                self.frontend.chr_close()

    def _deliver(self, data: bytes, fds: list[int]) -> None:
        if self.frontend is not None:
            self.frontend.chr_read(data, fds)
        else:
            for fd in fds:
                os.close(fd)


class NullChardev(Chardev):
    backend = "null"

    def start(self) -> None:
        self._opened()


class _StreamChardev(Chardev):
    """Shared machinery for fd-backed chardevs: reader callback, output queue, backpressure."""

    def __init__(self, loop: MainLoop, chr_id: str) -> None:
        super().__init__(loop, chr_id)
        self._in_fd = -1
        self._out_fd = -1
        # queued output: chunks handed over by writers (never copied), and their total size
        self._out: deque[memoryview] = deque()
        self._queued = 0
        self._paused = False
        self._sock: socket.socket | None = None
        self._unix = False
        self._rbuf = bytearray(RECV_SIZE)
        self._rview = memoryview(self._rbuf)

    def _start_io(self, in_fd: int, out_fd: int, sock: socket.socket | None = None) -> None:
        self._in_fd, self._out_fd, self._sock = in_fd, out_fd, sock
        self._unix = sock is not None and sock.family == socket.AF_UNIX
        self._out.clear()
        self._queued = 0
        self._paused = False
        self._opened()
        if in_fd >= 0 and self.connected:
            self._watch_input()

    def _watch_input(self) -> None:
        try:
            self.loop.add_reader(self._in_fd, self._on_readable)
        except PermissionError:
            # A regular file cannot be polled: read it in chunks from the loop instead.
            self.loop.call_soon_threadsafe(self._pump_file)

    @property
    def _wants_fds(self) -> bool:
        """Front-ends that take SCM_RIGHTS fds (QMP) say so; reading without them is cheaper."""
        return getattr(self.frontend, "wants_fds", False)

    def _pump_file(self) -> None:
        if self._in_fd < 0:
            return
        if self._paused:
            return  # _on_writable resumes
        try:
            data = os.read(self._in_fd, RECV_SIZE)
        except OSError:
            data = b""
        if not data:
            self._input_eof()
            return
        self._deliver(data, [])
        self.loop.call_soon_threadsafe(self._pump_file)

    def _on_readable(self) -> None:
        fds: list[int] = []
        try:
            if self._unix and self._wants_fds:
                data, fds = self._recv_unix()
            else:
                # into a reused buffer: a fresh RECV_SIZE allocation per read costs more than the copy
                n = os.readv(self._in_fd, [self._rbuf])
                data = bytes(self._rview[:n])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data and not fds:
            self._input_eof()
            return
        self._deliver(data, fds)
        spin = getattr(self.frontend, "spin_ns", 0)
        if spin and not fds:
            self._spin_read(spin)

    def _spin_read(self, budget_ns: int) -> None:
        """Polls the input for a short while after answering, instead of sleeping in epoll.

        A client that waits for each reply before sending the next command (a qtest round trip)
        usually answers within microseconds; catching that without a scheduler wakeup roughly
        halves the round-trip time. The budget restarts after every chunk and the GIL is
        released in each read, so an idle client costs at most ``budget_ns`` of CPU once.
        """
        now = time.perf_counter_ns()
        deadline = now + budget_ns
        hard_stop = now + SPIN_MAX_NS  # then back to the loop, so other chardevs are served too
        while self._in_fd >= 0 and not self._paused and self._out_fd >= 0 and not self._out:
            try:
                n = os.readv(self._in_fd, [self._rbuf])
            except (BlockingIOError, InterruptedError):
                if time.perf_counter_ns() > deadline:
                    return
                continue
            except OSError:
                n = 0
            if n == 0:
                self._input_eof()
                return
            self._deliver(bytes(self._rview[:n]), [])
            now = time.perf_counter_ns()
            if now > hard_stop:
                return
            deadline = now + budget_ns

    def _recv_unix(self) -> tuple[bytes, list[int]]:
        assert self._sock is not None
        fds = array.array("i")
        data, ancdata, _flags, _addr = self._sock.recvmsg(RECV_SIZE, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
        for level, ctype, cdata in ancdata:
            if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
                fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
        return data, list(fds)

    def _input_eof(self) -> None:
        if self._in_fd >= 0:
            self.loop.remove_reader(self._in_fd)
        self._disconnect()

    def disconnect(self) -> None:
        if self.connected:
            self.flush_blocking()
            self._disconnect()

    def _disconnect(self) -> None:
        """The peer went away (or input ended)."""
        self._stop_io()
        self._closed()

    def _stop_io(self) -> None:
        if self._in_fd >= 0:
            self.loop.remove_reader(self._in_fd)
        if self._out_fd >= 0:
            self.loop.remove_writer(self._out_fd)
        self._in_fd = self._out_fd = -1
        self._out.clear()
        self._queued = 0

    def write(self, data: bytes | bytearray) -> None:
        """Sends ``data`` (taking ownership: the caller must not modify it afterwards)."""
        if threading.get_ident() != self.loop._main_thread:
            self.loop.call_soon_threadsafe(lambda: self.write(data))
            return
        if not self.connected or self._out_fd < 0 or not data:
            return
        if not self._out:
            try:
                n = os.write(self._out_fd, data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self._disconnect()
                return
            if n == len(data):
                return
            view = memoryview(data)[n:]
            self.loop.add_writer(self._out_fd, self._on_writable)
        else:
            view = memoryview(data)
        self._out.append(view)
        self._queued += len(view)
        if self._queued > OUT_HIGH and not self._paused and self._in_fd >= 0:
            self._paused = True
            self.loop.remove_reader(self._in_fd)

    def _on_writable(self) -> None:
        while self._out:
            head = self._out[0]
            try:
                n = os.write(self._out_fd, head)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._disconnect()
                return
            self._queued -= n
            if n < len(head):
                self._out[0] = head[n:]
                break
            self._out.popleft()
        if not self._out:
            self.loop.remove_writer(self._out_fd)
        if self._paused and self._queued < OUT_LOW:
            self._paused = False
            if self._in_fd >= 0:
                self._watch_input()

    def flush_blocking(self, timeout: float = 5.0) -> None:
        """Writes out what is queued, waiting at most ``timeout`` for a slow reader (exit path)."""
        deadline = time.monotonic() + timeout
        while self._out and self._out_fd >= 0:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                _, ready, _ = select.select([], [self._out_fd], [], left)
            except (OSError, ValueError):
                break
            if ready:
                self._on_writable()
        self._out.clear()
        self._queued = 0


class SocketChardev(_StreamChardev):
    """``-chardev socket``: unix or tcp, client or server, or an inherited fd."""

    backend = "socket"

    def __init__(self, loop: MainLoop, chr_id: str, opts: dict[str, str]) -> None:
        super().__init__(loop, chr_id)
        self.opts = opts
        self.server = _bool_opt(opts, "server", False)
        self.wait = _bool_opt(opts, "wait", True)
        self.path = opts.get("path")
        self.host = opts.get("host")
        self.port = opts.get("port")
        self.fd = opts.get("fd")
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None  # the connected peer
        if self.fd is None and self.path is None:
            if self.host is None:
                raise ChardevError("chardev: socket: no host given")
            if self.port is None:
                raise ChardevError("chardev: socket: no port given")

    def _desc(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        if self.fd is not None:
            return f"fd:{self.fd}"
        return f"tcp:{self.host}:{self.port}"

    def filename(self) -> str:
        """QEMU's ``query-chardev`` filename: the live addresses, ``disconnected:`` while idle."""
        conn = self._conn
        if self.server:
            if self.path is not None:
                local = f"unix:{self.path}"  # (the listener was bound under a temporary name)
            else:
                local = _sock_desc(self._listener or conn, local=True) or self._desc()
            local += ",server=on"
        else:
            local = _sock_desc(conn, local=True) or self._desc()
        if conn is None:
            return "disconnected:" + local
        if conn.family == socket.AF_UNIX:
            return local
        peer = _sock_desc(conn, local=False)
        return f"{local} <-> {peer[4:]}" if peer else local

    def start(self) -> None:
        if self.fd is not None:
            try:
                fdnum = int(self.fd)
                sock = socket.socket(fileno=fdnum)
            except (ValueError, OSError) as e:
                raise ChardevError(f"File descriptor '{self.fd}' is not a socket") from e
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                self._listen_on(sock)
            else:
                self._connected_sock(sock)
            return
        if self.server:
            self._listen_on(self._make_listener())
            if self.wait:
                print(f"QEMU waiting for connection on: disconnected:{self.filename()}", file=sys.stderr, flush=True)
                assert self._listener is not None
                self._listener.setblocking(True)
                conn, _ = self._listener.accept()
                self._listener.setblocking(False)
                self._connected_sock(conn)
            return
        self._connected_sock(self._connect())

    @contextlib.contextmanager
    def _socket_errors(self, template: str) -> Iterator[None]:
        """Turn an OSError or ValueError of the block into QEMU's ChardevError: ``template`` with
        the socket's address as ``{where}`` and the error's text as ``{why}``."""
        try:
            yield
        except (OSError, ValueError) as e:
            where = self.path if self.path is not None else f"{self.host}:{self.port}"
            raise ChardevError(template.format(where=where, why=getattr(e, "strerror", None) or e)) from e

    def _make_listener(self) -> socket.socket:
        with self._socket_errors("Failed to bind socket to {where}: {why}"):
            return self._unix_listener(self.path) if self.path is not None else self._inet_listener()

    def _unix_listener(self, path: str) -> socket.socket:
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        if os.path.lexists(path):
            raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
        # Bind under a temporary name and rename once listening, so a client that sees the
        # path can always connect (QEMU has a window where connect() is refused).
        tmp = os.path.join(os.path.dirname(path) or ".", f".{os.getpid()}.{id(self) % 99991}.s")
        direct = len(os.fsencode(tmp)) > MAX_UNIX_PATH
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path if direct else tmp)
        sock.listen(1)
        if not direct:
            os.rename(tmp, path)
        return sock

    def _inet_listener(self) -> socket.socket:
        infos = socket.getaddrinfo(self.host or None, int(self.port or 0), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        fam, _, _, _, addr = infos[0]
        sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(1)
        return sock

    def _listen_on(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._listener = sock
        self.server = True
        self.loop.add_reader(sock.fileno(), self._on_accept)

    def _on_accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except OSError:  # includes EAGAIN: another wakeup took the connection
            return
        self._connected_sock(conn)

    def _connect(self) -> socket.socket:
        with self._socket_errors("Failed to connect to '{where}': {why}"):
            if self.path is None:
                return socket.create_connection((self.host or "localhost", int(self.port or 0)))
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.path)
            return sock

    def _connected_sock(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            # Big replies (a 22 MB b64read line) then take a few wakeups instead of a hundred.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        except OSError:
            pass
        if self._listener is not None:
            # one client at a time; others wait in the backlog, as with QEMU
            self.loop.remove_reader(self._listener.fileno())
        fd = sock.fileno()
        self._conn = sock
        self._start_io(fd, fd, sock)

    def _disconnect(self) -> None:
        conn = self._conn
        super()._disconnect()
        if conn is not None:
            conn.close()
            self._conn = None
        if self._listener is not None:
            self.loop.add_reader(self._listener.fileno(), self._on_accept)

    def close(self) -> None:
        self.flush_blocking()
        conn = self._conn
        self._stop_io()
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
            self._conn = None
        self.connected = False
        if self._listener is not None:
            self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            if self.path is not None and self.fd is None:
                try:
                    os.unlink(self.path)
                except OSError:
                    pass


class StdioChardev(_StreamChardev):
    backend = "stdio"

    def start(self) -> None:
        out = os.dup(1)
        os.set_blocking(out, False)
        # stdin too, as QEMU's char-stdio does: a blocking read would stall the main loop
        # (timers, QMP, signals) whenever the client pauses between lines
        try:
            os.set_blocking(0, False)
        except OSError:
            pass  # stdin closed: _start_io reports EOF
        self._start_io(0, out)

    def _input_eof(self) -> None:
        # EOF on stdin ends input only; output keeps flowing and QEMU keeps running.
        if self._in_fd >= 0:
            self.loop.remove_reader(self._in_fd)
        self._in_fd = -1
        if self.frontend is not None:
            self.frontend.chr_close()

    def close(self) -> None:
        self.flush_blocking()
        self._stop_io()
        self.connected = False


class FileChardev(_StreamChardev):
    """``-chardev file,path=OUT[,input-path=IN]``: output to a file, optional input from another."""

    backend = "file"

    def __init__(self, loop: MainLoop, chr_id: str, opts: dict[str, str]) -> None:
        super().__init__(loop, chr_id)
        if "path" not in opts:
            raise ChardevError("chardev: file: no filename given")
        self.path = opts["path"]
        self.input_path = opts.get("input-path")
        self.append = _bool_opt(opts, "append", False)

    def filename(self) -> str:
        return "file"

    def start(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if self.append else os.O_TRUNC)
        try:
            out = os.open(self.path, flags, 0o666)
            inp = os.open(self.input_path, os.O_RDONLY | os.O_CLOEXEC) if self.input_path else -1
        except OSError as e:
            raise ChardevError(f"Could not open '{e.filename}': {e.strerror}") from e
        self._start_io(inp, out)

    def _input_eof(self) -> None:
        if self._in_fd >= 0:
            self.loop.remove_reader(self._in_fd)
            os.close(self._in_fd)
        self._in_fd = -1
        if self.frontend is not None:
            self.frontend.chr_close()

    def close(self) -> None:
        self.flush_blocking()
        out = self._out_fd
        self._stop_io()
        if out >= 0:
            os.close(out)
        self.connected = False


BACKENDS = ("socket", "stdio", "file", "null")


def _sock_desc(sock: socket.socket | None, local: bool) -> str:
    """``unix:PATH`` or ``tcp:HOST:PORT`` of a socket's own (or peer) address, as QEMU prints it;
    a connected unix client's own address is unnamed, hence a bare ``unix:``."""
    if sock is None:
        return ""
    try:
        addr = sock.getsockname() if local else sock.getpeername()
    except OSError:
        return ""
    if sock.family == socket.AF_UNIX:
        return "unix:" + (addr if isinstance(addr, str) else addr.decode(errors="replace"))
    return f"tcp:{addr[0]}:{addr[1]}"


def create_chardev(loop: MainLoop, backend: str, chr_id: str, opts: dict[str, str]) -> Chardev:
    """A chardev from ``-chardev BACKEND,id=ID,...`` options."""
    if backend == "socket":
        return SocketChardev(loop, chr_id, opts)
    if backend == "stdio":
        return StdioChardev(loop, chr_id)
    if backend == "file":
        return FileChardev(loop, chr_id, opts)
    if backend == "null":
        return NullChardev(loop, chr_id)
    if backend in ("pty", "vc", "ringbuf", "memory", "pipe", "udp", "serial", "tty", "parallel", "spicevmc",
                   "msmouse", "wctablet", "braille", "testdev", "qemu-vdagent", "dbus", "mux", "console", "spiceport"):
        raise ChardevError(f"chardev backend '{backend}' is not supported by this emulator")
    raise ChardevError(f"'{backend}' is not a valid char driver name")


def parse_legacy(spec: str) -> tuple[str, dict[str, str]]:
    """QEMU's shorthand chardev syntax (``unix:P,server=on``, ``tcp:H:P``, ``stdio``...) → backend + opts."""
    if spec in ("null", "none"):
        return "null", {}
    if spec == "stdio":
        return "stdio", {}
    if spec.startswith("file:"):
        return "file", {"path": spec[5:]}
    if spec.startswith("unix:"):
        pairs, flags = parse_opts(spec[5:], implied="path")
        return "socket", _with_flags(dict(pairs), flags)
    if spec.startswith("tcp:"):
        pairs, flags = parse_opts(spec[4:], implied="addr")
        opts = _with_flags(dict(pairs), flags)
        addr = opts.pop("addr", "")
        host, sep, port = addr.rpartition(":")
        if not sep:
            raise ChardevError(f"chardev: invalid tcp address '{addr}'")
        opts["host"], opts["port"] = host.strip("[]"), port
        return "socket", opts
    if spec.startswith("/dev/"):
        return "file", {"path": spec, "input-path": spec}
    raise ChardevError(f"'{spec.split(':', 1)[0]}' is not a valid char driver name")


def _with_flags(opts: dict[str, str], flags: list[str]) -> dict[str, str]:
    for flag in flags:
        if flag in ("server", "wait", "nodelay", "telnet", "websocket"):
            opts[flag] = "on"
        elif flag.startswith("no") and flag[2:] in ("wait", "server", "delay"):
            opts[flag[2:]] = "off"
        else:
            raise ChardevError(f"Invalid parameter '{flag}'")
    return opts


__all__ = [
    "Chardev", "ChardevError", "Frontend", "SocketChardev", "StdioChardev", "FileChardev", "NullChardev",
    "create_chardev", "parse_legacy", "parse_opts",
]
