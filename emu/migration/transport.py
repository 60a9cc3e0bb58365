"""Migration transports: blocking byte channels for a migration thread (QEMU 9.1).

``open_outgoing(addr, ...)`` is the source side of ``migrate`` and returns a connected ``Channel``;
``listen_incoming(addr, ...)`` is the destination side of ``migrate-incoming`` and returns a
``Listener`` whose ``accept()`` gives the ``Channel`` the stream arrives on.  ``addr`` is a typed
``MigrationAddress`` from ``emu.migration.address``.

Transports, following QEMU 9.1 (file names below are QEMU's):

* socket ``inet`` / ``unix`` / ``vsock`` (migration/socket.c, util/qemu-sockets.c,
  io/net-listener.c, io/dns-resolver.c): the listener resolves the address and listens on every
  result (``0.0.0.0`` and ``::`` for an empty host), each trying ports ``port..to``;
  ``socket_address()`` reports what ``query-migrate`` shows as ``socket-address``.
  A unix listener unlinks a stale path first.
* socket ``fd`` (migration/fd.c): the source takes a ``getfd`` name (``monitor_get_fd``), the
  destination takes a name or, when it starts with a digit, a process fd number
  (``monitor_fd_param``).  The fd may be a socket or not (a regular file or a pipe; QEMU warns
  ``fd: migration to a file is deprecated. Use file: instead.``).  A destination fd that is a
  listening socket is accepted on (an extension: 9.1 would read from it and fail).
* ``exec`` (migration/exec.c, io/channel-command.c): argv spawned without a PATH search (GLib's
  ``g_spawn_async_with_pipes`` without ``G_SPAWN_SEARCH_PATH``), both stdin and stdout piped
  (``O_RDWR``); the source writes the child's stdin, the destination reads its stdout.  ``close()``
  reaps the child.
* ``file`` (migration/file.c at 9.1, after "migration: Fix file migration with fdset"): the source
  opens ``O_CREAT|O_WRONLY`` (mode 0600, no ``O_TRUNC``), ``ftruncate``s to the offset (so the
  bytes before it stay) and seeks there; the destination opens ``O_RDONLY`` and seeks.
  ``/dev/fdset/N`` dups a member of fd set N (util/osdep.c ``qemu_open_internal``).
* ``rdma``: not built in, as in a QEMU configured without RDMA.

Every failure is a ``TransportError`` whose message is QEMU's text where QEMU has one
(``error_setg_errno`` appends ``": " + strerror(errno)``).  Channels are file-descriptor based;
``shutdown()`` from another thread wakes a blocked ``read``/``write_all``/``accept``.
"""
from __future__ import annotations

import errno as _errno
import os
import re
import select
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Self

from emu.migration.address import (
    Exec,
    Fd,
    File,
    Inet,
    MigrationAddress,
    Socket,
    Unix,
    Vsock,
)
from emu.migration.errors import QemuTextError

__all__ = [
    "FD_FILE_DEPRECATED",
    "AcceptCancelled",
    "AcceptTimeout",
    "Channel",
    "Listener",
    "ListenerClosed",
    "TransportError",
    "listen_incoming",
    "open_outgoing",
]

FD_FILE_DEPRECATED = "fd: migration to a file is deprecated. Use file: instead."
_INT_MAX = (1 << 31) - 1
_UNIX_PATH_MAX = 108  # sizeof(struct sockaddr_un.sun_path) on Linux
_C_SPACE = " \t\n\v\f\r"


class TransportError(QemuTextError):
    """A transport failure; ``message`` is the text QMP / ``query-migrate`` report."""


class AcceptTimeout(TransportError):
    """``Listener.accept`` timed out."""


class AcceptCancelled(TransportError):
    """``Listener.accept`` was cancelled (cancel event set)."""


class ListenerClosed(TransportError):
    """``Listener.accept`` on (or interrupted by) a closed listener."""


def _errno_text(msg: str, err: BaseException | int | None) -> str:
    """``error_setg_errno``: ``msg + ": " + strerror(errno)``."""
    if isinstance(err, int):
        return f"{msg}: {os.strerror(err)}"
    if isinstance(err, OSError) and err.errno is not None:
        return f"{msg}: {os.strerror(err.errno)}"
    return msg


def _wake(fd: int) -> None:
    """Writes a byte to a wake pipe: a poll() waiting on its read end returns."""
    try:
        os.write(fd, b"x")
    except OSError:
        pass  # full (a wake is already pending) or closed: nothing more to wake


def _gai_text(err: BaseException) -> str:
    if isinstance(err, socket.gaierror) and err.strerror:
        return err.strerror
    return "Name or service not known"


# ---------------------------------------------------------------------------------------------
# channels


class Channel:
    """A bidirectional byte stream on one fd (socket, file, pipe) or a pair (exec).

    ``read(n)`` returns at most ``n`` bytes and ``b""`` at EOF or after ``shutdown()``;
    ``write_all`` writes everything or raises ``TransportError``.  ``kind`` is ``socket``,
    ``file`` or ``command`` (QEMU's QIOChannel type, which also picks the error wording:
    ``Unable to read from socket: ...``).  ``seekable`` is true for a channel on a seekable fd
    (a regular file), which then supports ``seek``/``tell``/``pread``/``pwrite``.
    """

    def __init__(self, kind: str, rfd: int, wfd: int | None = None, *, sock: socket.socket | None = None,
                 proc: subprocess.Popen[bytes] | None = None, name: str = "") -> None:
        self.kind = kind
        self.name = name
        self._rfd = rfd
        self._wfd = rfd if wfd is None else wfd
        self._sock = sock
        self._proc = proc
        self._lock = threading.Lock()
        self._closed = False
        self._shut = False
        self.returncode: int | None = None  # exec: the child's exit status once reaped
        self.warnings: list[str] = []
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.lseek(self._rfd, 0, os.SEEK_CUR)  # qio_channel_file_new_fd: seekable iff lseek works
            self.seekable = kind == "file"
        except OSError:
            self.seekable = False
        for fd in {self._rfd, self._wfd}:
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.set_blocking(fd, False)
            except OSError:
                pass  # a bad fd number: the first read/write reports it, as in QEMU

    # -- state

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def is_shut_down(self) -> bool:
        """Whether ``shutdown()`` has aborted the stream (reads end, writes fail)."""
        return self._shut

    def fileno(self) -> int:
        return self._rfd

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"Unable to use {self.kind}: channel is closed")

    def _wait(self, fd: int, event: int) -> None:
        """Blocks until ``fd`` is ready for ``event`` or the channel is shut down."""
        poller = select.poll()
        poller.register(fd, event)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            try:
                poller.poll()
                return
            except InterruptedError:
                continue

    # -- I/O

    def read(self, n: int = 65536) -> bytes:
        """At most ``n`` bytes; ``b""`` at end of stream or once shut down."""
        self._check_open()
        if n <= 0:
            return b""
        while True:
            if self._shut:
                return b""
            try:
                if self._sock is not None:
                    return self._sock.recv(n)
                return os.read(self._rfd, n)
            except (BlockingIOError, InterruptedError):
                self._wait(self._rfd, select.POLLIN)
                self._check_open()  # closed meanwhile: the fd number may belong to another file
            except OSError as e:
                if self._shut:
                    return b""
                raise TransportError(_errno_text(f"Unable to read from {self.kind}", e)) from None

    def readinto(self, buf: Any) -> int:
        """Reads into a writable buffer; the byte count, 0 at end of stream or once shut down."""
        self._check_open()
        view = memoryview(buf).cast("B")
        if not len(view):
            return 0
        while True:
            if self._shut:
                return 0
            try:
                if self._sock is not None:
                    return self._sock.recv_into(view)
                return os.readv(self._rfd, [view])
            except (BlockingIOError, InterruptedError):
                self._wait(self._rfd, select.POLLIN)
                self._check_open()  # closed meanwhile: the fd number may belong to another file
            except OSError as e:
                if self._shut:
                    return 0
                raise TransportError(_errno_text(f"Unable to read from {self.kind}", e)) from None

    def read_exactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or ``TransportError`` at a premature end of stream."""
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.readinto(view[got:])
            if k == 0:
                raise TransportError(f"Unexpected end of stream after {got} of {n} bytes")
            got += k
        return bytes(buf)

    def write_all(self, data: Any) -> None:
        """Writes all of ``data``; ``Unable to write to <kind>: <strerror>`` on failure."""
        self._check_open()
        view = memoryview(data).cast("B")
        while len(view):
            if self._shut:
                raise TransportError(_errno_text(f"Unable to write to {self.kind}", _errno.EPIPE))
            try:
                if self._sock is not None:
                    k = self._sock.send(view, socket.MSG_NOSIGNAL)
                else:
                    k = os.write(self._wfd, view)
            except (BlockingIOError, InterruptedError):
                self._wait(self._wfd, select.POLLOUT)
                continue
            except OSError as e:
                err = _errno.EPIPE if self._shut else e
                raise TransportError(_errno_text(f"Unable to write to {self.kind}", err)) from None
            view = view[k:]

    def peer_gone(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds; True as soon as the peer has hung up or reset the
        connection (or this channel was shut down), so that a sender pacing itself notices a dead
        destination at once. A peer that merely sends data does not count."""
        if self._shut:
            return True
        poller = select.poll()
        poller.register(self._wfd, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        poller.register(self._wake_r, select.POLLIN)
        try:
            return bool(poller.poll(max(0, int(timeout * 1000)))) or self._shut
        except InterruptedError:
            return self._shut

    def c_io(self, op: Callable[[int, int], int], write: bool = True) -> int:
        """Runs a C routine ``op(fd, wake_fd)`` that does this channel's I/O itself (writev/readv
        on the fd, waiting with poll() and giving up with -ECANCELED when shut down) and returns
        its result. A negated errno (-4095..-1) becomes the ``TransportError`` that ``write_all``
        would raise; for a read, -EPIPE (end of stream) is QEMU's short-read error. Other values
        (the routine's own codes) are returned as they are."""
        self._check_open()
        verb = f"Unable to write to {self.kind}" if write else f"Unable to read from {self.kind}"
        if self._shut:
            raise TransportError(_errno_text(verb, _errno.EPIPE))
        n = op(self._wfd if write else self._rfd, self._wake_r)
        if -4096 < n < 0:
            if not write and n == -_errno.EPIPE and not self._shut:
                raise TransportError("Unexpected end-of-file before all data were read")
            err = _errno.EPIPE if self._shut or n == -_errno.ECANCELED else -n
            raise TransportError(_errno_text(verb, err))
        return n

    def send_page_records(self, block: Any, page: int, npages: int, zero_map: bytes, name: bytes | None) -> int:
        """RAM page records written from guest memory without a copy (``RamBlock.send_page_records``);
        the byte count."""
        return self.c_io(lambda fd, wake: block.send_page_records(fd, wake, page, npages, zero_map, name))

    def flush(self) -> None:
        """Nothing is buffered; present for file-like callers."""

    # -- seeking (file channels)

    def _need_seekable(self) -> None:
        self._check_open()
        if not self.seekable:
            raise TransportError("Channel does not support random access")

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._need_seekable()
        try:
            return os.lseek(self._rfd, offset, whence)
        except OSError as e:  # io/channel-file.c qio_channel_file_seek
            raise TransportError(_errno_text(f"Unable to seek to offset {offset} whence {whence} in file", e)) from None

    def tell(self) -> int:
        return self.seek(0, os.SEEK_CUR)

    def pread(self, n: int, offset: int) -> bytes:
        self._need_seekable()
        try:
            return os.pread(self._rfd, n, offset)
        except OSError as e:
            raise TransportError(_errno_text("Unable to read from file", e)) from None

    def pwrite(self, data: Any, offset: int) -> None:
        self._need_seekable()
        view = memoryview(data).cast("B")
        try:
            while len(view):
                k = os.pwrite(self._wfd, view, offset)
                view, offset = view[k:], offset + k
        except OSError as e:
            raise TransportError(_errno_text("Unable to write to file", e)) from None

    # -- teardown

    def shutdown(self) -> None:
        """Aborts the stream (``migrate_cancel``): wakes a read/write blocked in another thread,
        which then sees end of stream (read) or ``Broken pipe`` (write).  The peer of a socket
        sees end of stream.  Safe to call from any thread, more than once."""
        with self._lock:
            if self._closed:
                return
            self._shut = True
            _wake(self._wake_w)
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        """Closes the fds; for exec, reaps the child (waiting for it as QEMU does, or terminating
        it when the channel was shut down).  Call ``shutdown()`` first if another thread may be
        blocked in I/O, and close once it has returned."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._sock is not None:
            self._sock.close()
        else:
            for fd in {self._rfd, self._wfd}:
                try:
                    os.close(fd)
                except OSError:
                    pass
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        if self._proc is not None:
            self.returncode = _reap(self._proc, abort=self._shut)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("shut down" if self._shut else "open")
        return f"<Channel {self.name or self.kind} fd={self._rfd} {state}>"


def _reap(proc: subprocess.Popen[bytes], abort: bool) -> int | None:
    """qio_channel_command_close waits for the child; the abort path (finalize) sends SIGTERM,
    then SIGKILL."""
    if not abort:
        return proc.wait()
    for sig in (None, "terminate", "kill"):
        if sig == "terminate":
            proc.terminate()
        elif sig == "kill":
            proc.kill()
        try:
            return proc.wait(timeout=0.5 if sig != "kill" else None)
        except subprocess.TimeoutExpired:
            continue
    return proc.returncode


def _socket_channel(sock: socket.socket, name: str) -> Channel:
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    return Channel("socket", sock.fileno(), sock=sock, name=name)


def _fd_channel(fd: int, name: str, warn: Callable[[str], None] | None) -> Channel:
    """``qio_channel_new_fd``: a socket channel for a socket, else a file channel (with the 9.1
    deprecation warning of migration/fd.c)."""
    if _fd_is_socket(fd):
        return _socket_channel(socket.socket(fileno=fd), name)
    chan = Channel("file", fd, name=name)
    chan.warnings.append(FD_FILE_DEPRECATED)
    if warn is not None:
        warn(FD_FILE_DEPRECATED)
    return chan


def _fd_is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# listeners


class Listener:
    """The destination end: ``accept()`` returns the next incoming ``Channel``.

    Socket listeners accept connections (any number; the caller closes the listener when it has
    all its channels).  fd/exec/file listeners hand out their one ready channel on the first
    ``accept()``.  ``socket_address()`` is the ``socket-address`` list of ``query-migrate``.
    """

    def __init__(self, *, socks: Iterable[socket.socket] = (), ready: Channel | None = None,
                 name: str = "migration-socket-listener") -> None:
        self._socks = list(socks)
        self._ready = ready
        self.name = name
        self._lock = threading.Lock()
        self._closed = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for s in self._socks:
            s.setblocking(False)
        self._addresses = [a for a in (_local_address(s) for s in self._socks) if a is not None]

    @property
    def closed(self) -> bool:
        return self._closed

    def socket_address(self) -> list[dict[str, Any]]:
        """QAPI ``SocketAddress`` dicts of the listening sockets (``socket_sockaddr_to_address``):
        inet ``{"type": "inet", "host", "port", "ipv4"|"ipv6": true}`` with the bound port,
        unix ``{"type": "unix", "path"}``, vsock ``{"type": "vsock", "cid", "port"}``.  Empty
        for fd, exec and file, which QEMU does not record."""
        return [dict(a) for a in self._addresses]

    def accept(self, timeout: float | None = None, cancel: threading.Event | None = None) -> Channel:
        """The next incoming channel.  ``AcceptTimeout`` after ``timeout`` seconds,
        ``AcceptCancelled`` when ``cancel`` is set (checked every 50 ms), ``ListenerClosed`` when
        the listener is or gets closed (``close()`` from another thread wakes it at once)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._ready is not None:
            # QEMU watches fd/exec/file channels for G_IO_IN: the migration starts with the data
            ready = select.poll()
            ready.register(self._ready.fileno(), select.POLLIN)
            ready.register(self._wake_r, select.POLLIN)
            while not self._closed and not ready.poll(self._slice(deadline, cancel)):
                if cancel is not None and cancel.is_set():
                    raise AcceptCancelled("Incoming migration was cancelled")
                if deadline is not None and time.monotonic() >= deadline:
                    raise AcceptTimeout("Timed out waiting for an incoming migration connection")
            with self._lock:
                chan, self._ready = self._ready, None
            if chan is not None:
                return chan
        poller = select.poll()
        with self._lock:
            if self._closed:
                raise ListenerClosed("The migration listener is closed")
            for s in self._socks:
                poller.register(s.fileno(), select.POLLIN)
            poller.register(self._wake_r, select.POLLIN)
        if not self._socks:
            # a one-shot listener whose channel was taken: nothing more will arrive
            self._block_until(poller, deadline, cancel)
            raise ListenerClosed("The migration listener is closed")
        while True:
            if cancel is not None and cancel.is_set():
                raise AcceptCancelled("Incoming migration was cancelled")
            slice_ms = self._slice(deadline, cancel)
            try:
                events = poller.poll(slice_ms)
            except InterruptedError:
                continue
            if self._closed:
                raise ListenerClosed("The migration listener is closed")
            for fd, _ev in events:
                for s in self._socks:
                    if s.fileno() == fd:
                        try:
                            conn, _peer = s.accept()
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError as e:
                            if self._closed:
                                raise ListenerClosed("The migration listener is closed") from None
                            # io/channel-socket.c qio_channel_socket_accept
                            raise TransportError(_errno_text("Unable to accept connection", e)) from None
                        return _socket_channel(conn, "migration-socket-incoming")
            if deadline is not None and time.monotonic() >= deadline:
                raise AcceptTimeout("Timed out waiting for an incoming migration connection")

    @staticmethod
    def _slice(deadline: float | None, cancel: threading.Event | None) -> int | None:
        parts = []
        if deadline is not None:
            parts.append(max(0, int((deadline - time.monotonic()) * 1000) + 1))
        if cancel is not None:
            parts.append(50)
        return min(parts) if parts else None

    def _block_until(self, poller: Any, deadline: float | None, cancel: threading.Event | None) -> None:
        while not self._closed:
            if cancel is not None and cancel.is_set():
                raise AcceptCancelled("Incoming migration was cancelled")
            if deadline is not None and time.monotonic() >= deadline:
                raise AcceptTimeout("Timed out waiting for an incoming migration connection")
            try:
                poller.poll(self._slice(deadline, cancel))
            except InterruptedError:
                pass

    def close(self) -> None:
        """Closes the listening sockets (and an unclaimed ready channel); wakes ``accept``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            _wake(self._wake_w)
            ready, self._ready = self._ready, None
        for s in self._socks:
            _listen_cleanup(s)
            s.close()
        if ready is not None:
            ready.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _local_address(sock: socket.socket) -> dict[str, Any] | None:
    """``socket_sockaddr_to_address`` on ``getsockname``."""
    try:
        name = sock.getsockname()
    except OSError:
        return None
    fam = sock.family
    if fam in (socket.AF_INET, socket.AF_INET6):
        host, port = socket.getnameinfo(name, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
        out: dict[str, Any] = {"type": "inet", "host": host, "port": port}
        out["ipv4" if fam == socket.AF_INET else "ipv6"] = True
        return out
    if fam == socket.AF_UNIX:
        if isinstance(name, bytes) and name[:1] == b"\0":  # Linux abstract socket
            return {"type": "unix", "path": os.fsdecode(name[1:]), "abstract": True,
                    "tight": len(name) < _UNIX_PATH_MAX}
        return {"type": "unix", "path": os.fsdecode(name)}
    if fam == getattr(socket, "AF_VSOCK", None):
        cid, port = name
        return {"type": "vsock", "cid": str(cid), "port": str(port)}
    return None


# ---------------------------------------------------------------------------------------------
# inet


def _inet_family(addr: Inet) -> int:
    """``inet_ai_family_from_address``."""
    if addr.ipv6 is False and addr.ipv4 is False:
        raise TransportError("Cannot disable IPv4 and IPv6 at same time")
    if addr.ipv6 and addr.ipv4:
        return socket.AF_INET6 if not addr.host else socket.AF_UNSPEC
    if addr.ipv6 or addr.ipv4 is False:
        return socket.AF_INET6
    if addr.ipv4 or addr.ipv6 is False:
        return socket.AF_INET
    return socket.AF_UNSPEC


def _proto(addr: Inet) -> int:
    return getattr(socket, "IPPROTO_MPTCP", 262) if addr.mptcp else 0


def _host_bytes(host: str) -> bytes:
    return host.encode("utf-8", "surrogateescape")


def _inet_connect(addr: Inet) -> socket.socket:
    """``inet_connect_saddr``: resolve, then try each result; the last error is reported."""
    family = _inet_family(addr)
    flags = socket.AI_CANONNAME | socket.AI_ADDRCONFIG | socket.AI_V4MAPPED
    try:
        infos = socket.getaddrinfo(_host_bytes(addr.host), _host_bytes(addr.port), family,
                                   socket.SOCK_STREAM, 0, flags)
    except (OSError, UnicodeError, ValueError) as e:
        raise TransportError(f"address resolution failed for {addr.host}:{addr.port}: {_gai_text(e)}") from None
    err = TransportError(f"address resolution failed for {addr.host}:{addr.port}: Name or service not known")
    for fam, kind, proto, _canon, sa in infos:
        proto = _proto(addr) or proto
        try:
            sock = socket.socket(fam, kind, proto)
        except OSError as e:
            err = TransportError(_errno_text(f"Failed to create socket family {fam}", e))
            continue
        try:
            sock.connect(sa)
        except OSError as e:
            sock.close()
            err = TransportError(_errno_text(f"Failed to connect to '{addr.host}:{addr.port}'", e))
            continue
        if addr.keep_alive:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError as e:
                sock.close()
                raise TransportError(_errno_text("Unable to set KEEPALIVE", e)) from None
        return sock
    raise err


def _inet_listen(addr: Inet, backlog: int) -> list[socket.socket]:
    """``qio_net_listener_open_sync``: resolve (io/dns-resolver.c), then ``inet_listen_saddr``
    on each numeric result; success if any listens, else the first error."""
    family = _inet_family(addr)
    flags = socket.AI_PASSIVE
    if addr.numeric:
        flags |= socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
    try:
        infos = socket.getaddrinfo(_host_bytes(addr.host) if addr.host else None,
                                   _host_bytes(addr.port) if addr.port else None,
                                   family, socket.SOCK_STREAM, 0, flags)
    except (OSError, UnicodeError, ValueError) as e:
        raise TransportError(f"address resolution failed for {addr.host}:{addr.port}: {_gai_text(e)}") from None
    socks: list[socket.socket] = []
    first: TransportError | None = None
    for fam, _kind, proto, _canon, sa in infos:
        try:
            socks.append(_inet_listen_one(addr, fam, proto, sa, backlog))
        except TransportError as e:
            first = first or e
    if not socks:
        raise first or TransportError("Failed to create a socket")
    return socks


def _inet_listen_one(addr: Inet, fam: int, proto: int, sa: tuple[Any, ...], backlog: int) -> socket.socket:
    """``inet_listen_saddr`` for one resolved address: try ports ``port..to``."""
    port_min = sa[1]
    port_max = addr.to if addr.to is not None else port_min
    proto = _proto(addr) or proto
    created = False
    last: OSError | None = None
    for p in range(port_min, port_max + 1):
        try:
            sock = socket.socket(fam, socket.SOCK_STREAM, proto)
        except OSError as e:
            last = e
            if p == port_min:
                continue
            raise TransportError(_errno_text("Failed to recreate failed listening socket", e)) from None
        created = True
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # create_fast_reuse_socket
        step = "Failed to bind socket"
        try:
            _try_bind(sock, addr, fam, (sa[0], p) + tuple(sa[2:]))
            step = "Failed to listen on socket"
            sock.listen(backlog)
        except OSError as e:
            sock.close()
            last = e
            if e.errno == _errno.EADDRINUSE:  # this port is taken: the next one
                continue
            raise TransportError(_errno_text(step, e)) from None
        return sock
    msg = "Failed to find an available port" if created else "Failed to create a socket"
    raise TransportError(_errno_text(msg, last))


def _try_bind(sock: socket.socket, addr: Inet, fam: int, sa: tuple[Any, ...]) -> None:
    """``try_bind``: IPV6_V6ONLY off unless exactly one family was asked for; an EADDRINUSE
    with it off is retried with it on (the IPv4 port may be the one taken)."""
    v6only = 0 if ((addr.ipv4 is None and addr.ipv6 is None) or (addr.ipv4 and addr.ipv6)) else 1
    while True:
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        try:
            sock.bind(sa)
            return
        except OSError as e:
            if fam == socket.AF_INET6 and e.errno == _errno.EADDRINUSE and not v6only:
                v6only = 1
                continue
            raise


# ---------------------------------------------------------------------------------------------
# unix and vsock


def _unix_sockaddr(addr: Unix, path: str) -> bytes:
    raw = os.fsencode(path)
    limit = _UNIX_PATH_MAX - 1 if addr.abstract else _UNIX_PATH_MAX
    if len(raw) > limit:
        raise TransportError(f"UNIX socket path '{path}' is too long")
    if addr.abstract:
        name = b"\0" + raw
        if addr.tight is False:
            name = name.ljust(_UNIX_PATH_MAX, b"\0")
        return name
    return raw


def _unix_connect(addr: Unix) -> socket.socket:
    """``unix_connect_saddr``."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as e:
        raise TransportError(_errno_text("Failed to create socket", e)) from None
    try:
        sock.connect(_unix_sockaddr(addr, addr.path))
    except TransportError:
        sock.close()
        raise
    except OSError as e:
        sock.close()
        raise TransportError(_errno_text(f"Failed to connect to '{addr.path}'", e)) from None
    return sock


def _listen_cleanup(sock: socket.socket) -> None:
    """QEMU's socket_listen_cleanup: a unix listener's path is unlinked when it closes."""
    try:
        if sock.family != socket.AF_UNIX:
            return
        path = sock.getsockname()
    except OSError:
        return
    if isinstance(path, str) and path and not path.startswith("\0"):
        try:
            os.unlink(path)
        except OSError:
            pass


def _unix_listen(addr: Unix, backlog: int) -> socket.socket:
    """``unix_listen_saddr``: an empty path gets a temporary name; a stale file is unlinked."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as e:
        raise TransportError(_errno_text("Failed to create Unix socket", e)) from None
    try:
        path = addr.path
        if not path and not addr.abstract:
            fd, path = tempfile.mkstemp(prefix="qemu-socket-")
            os.close(fd)
        name = _unix_sockaddr(addr, path)
        if not addr.abstract:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise TransportError(_errno_text(f"Failed to unlink socket {path}", e)) from None
        try:
            sock.bind(name)
        except OSError as e:
            raise TransportError(_errno_text(f"Failed to bind socket to {path}", e)) from None
        try:
            sock.listen(backlog)
        except OSError as e:
            raise TransportError(_errno_text("Failed to listen on socket", e)) from None
    except BaseException:
        sock.close()
        raise
    return sock


_UINT = re.compile(r"[ \t\n\v\f\r]*\+?([0-9]+)")


def _vsock_sockaddr(addr: Vsock) -> tuple[int, int]:
    """``vsock_parse_vaddr_to_sockaddr`` (``parse_uint_full``, at most UINT32_MAX)."""
    out = []
    for what, text in (("cid", addr.cid), ("port", addr.port)):
        m = _UINT.fullmatch(text)
        if m is None or int(m.group(1)) > 0xFFFFFFFF:
            raise TransportError(f"Failed to parse {what} '{text}'")
        out.append(int(m.group(1)))
    return out[0], out[1]


def _vsock_family() -> int:
    fam = getattr(socket, "AF_VSOCK", None)
    if fam is None:  # qemu-sockets.c vsock_unsupported() (QEMU built without CONFIG_AF_VSOCK)
        raise TransportError("socket family AF_VSOCK unsupported")
    return fam


def _vsock_connect(addr: Vsock) -> socket.socket:
    fam = _vsock_family()
    sa = _vsock_sockaddr(addr)
    try:
        sock = socket.socket(fam, socket.SOCK_STREAM)
    except OSError as e:
        raise TransportError(_errno_text(f"Failed to create socket family {fam}", e)) from None
    try:
        sock.connect(sa)
    except OSError as e:
        sock.close()
        raise TransportError(_errno_text(f"Failed to connect to '{addr.cid}:{addr.port}'", e)) from None
    return sock


def _vsock_listen(addr: Vsock, backlog: int) -> socket.socket:
    fam = _vsock_family()
    sa = _vsock_sockaddr(addr)
    try:
        sock = socket.socket(fam, socket.SOCK_STREAM)
    except OSError as e:
        raise TransportError(_errno_text("Failed to create socket", e)) from None
    for step, msg in ((lambda: sock.bind(sa), "Failed to bind socket"),
                      (lambda: sock.listen(backlog), "Failed to listen on socket")):
        try:
            step()
        except OSError as e:
            sock.close()
            raise TransportError(_errno_text(msg, e)) from None
    return sock


# ---------------------------------------------------------------------------------------------
# fd, exec, file


def _parse_fd(text: str) -> int | None:
    """``qemu_parse_fd``: strtol base 10 over the whole string, 0..INT_MAX."""
    m = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?[0-9]+)", text)
    if m is None:
        return None
    value = int(m.group(1))
    return value if 0 <= value <= _INT_MAX else None


def _take_named_fd(named_fds: Any, name: str) -> int:
    """``monitor_get_fd``: removes the name; the caller owns the fd."""
    fd = named_fds.take(name) if named_fds is not None else None
    if fd is None:
        raise TransportError(f"File descriptor named '{name}' has not been found")
    return fd


def _incoming_fd(named_fds: Any, text: str) -> int:
    """``monitor_fd_param``: a name unless it starts with a digit or there is no monitor."""
    if text[:1].isdigit() or named_fds is None:
        fd = _parse_fd(text)
        if fd is None:
            raise TransportError(f"Invalid file descriptor number '{text}'")
        return fd
    return _take_named_fd(named_fds, text)


def _is_listening(fd: int) -> bool:
    if not _fd_is_socket(fd):
        return False
    try:
        probe = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        return bool(probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False
    finally:
        probe.close()


def _spawn(args: tuple[str, ...]) -> subprocess.Popen[bytes]:
    """``qio_channel_command_new_spawn(argv, O_RDWR)``: GLib spawn without a PATH search, both
    pipes, stderr inherited."""
    if not args:
        raise TransportError("exec: empty command")
    prog = args[0]
    executable = prog if "/" in prog else os.path.join(".", prog)  # execv() semantics
    try:
        return subprocess.Popen(list(args), executable=executable, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, bufsize=0, close_fds=True)
    except OSError as e:
        # GLib gspawn.c: _("Failed to execute child process “%s” (%s)")
        reason = os.strerror(e.errno) if e.errno is not None else str(e)
        raise TransportError(f"Failed to execute child process \u201c{prog}\u201d ({reason})") from None
    except (ValueError, TypeError) as e:
        raise TransportError(f"Failed to execute child process \u201c{prog}\u201d ({e})") from None


def _exec_channel(args: tuple[str, ...], name: str) -> Channel:
    proc = _spawn(args)
    assert proc.stdin is not None and proc.stdout is not None
    rfd, wfd = os.dup(proc.stdout.fileno()), os.dup(proc.stdin.fileno())
    proc.stdout.close()
    proc.stdin.close()
    return Channel("command", rfd, wfd, proc=proc, name=name)


def _parse_fdset(path: str) -> int | None:
    return _parse_fd(path[len("/dev/fdset/"):])


def _qemu_open(path: str, flags: int, mode: int, fdsets: Any) -> int:
    """``qemu_open_internal`` (util/osdep.c at 9.1, with "monitor: Report errors from
    monitor_fdset_dup_fd_add"): ``/dev/fdset/N`` dups a set member with the same access mode."""
    if path.startswith("/dev/fdset/"):
        fdset_id = _parse_fdset(path)
        if fdset_id is None:
            raise TransportError(f"Could not parse fdset {path}")
        known = fdsets is not None and any(s.get("fdset-id") == fdset_id for s in fdsets.query())
        if not known:
            raise TransportError(f"Failed to find fdset /dev/fdset/{fdset_id}")
        try:
            return fdsets.dup_member(fdset_id, flags)
        except OSError:
            raise TransportError(f"Failed to find file descriptor with matching flags=0x{flags:x}") from None
    try:
        return os.open(path, flags | os.O_CLOEXEC, mode)
    except OSError as e:
        action = "create" if flags & os.O_CREAT else "open"
        raise TransportError(_errno_text(f"Could not {action} '{path}'", e)) from None


def _file_seek(fd: int, offset: int) -> None:
    try:
        os.lseek(fd, offset, os.SEEK_SET)
    except OSError as e:
        os.close(fd)
        raise TransportError(_errno_text(f"Unable to seek to offset {offset} whence 0 in file", e)) from None


def _file_outgoing(addr: File, fdsets: Any) -> Channel:
    """``file_start_outgoing_migration`` (9.1)."""
    fd = _qemu_open(addr.filename, os.O_CREAT | os.O_WRONLY, 0o600, fdsets)
    try:
        os.ftruncate(fd, addr.offset)
    except (OSError, OverflowError) as e:
        os.close(fd)
        raise TransportError(_errno_text(f"failed to truncate migration file to offset {addr.offset:x}",
                                         e if isinstance(e, OSError) else _errno.EFBIG)) from None
    if addr.offset:
        _file_seek(fd, addr.offset)
    return Channel("file", fd, name="migration-file-outgoing")


def _file_incoming(addr: File, fdsets: Any) -> Channel:
    """``file_start_incoming_migration`` (9.1)."""
    fd = _qemu_open(addr.filename, os.O_RDONLY, 0, fdsets)
    if addr.offset:
        _file_seek(fd, addr.offset)
    return Channel("file", fd, name="migration-file-incoming")


# ---------------------------------------------------------------------------------------------
# entry points


def open_outgoing(addr: MigrationAddress, *, named_fds: Any = None, fdsets: Any = None,
                  warn: Callable[[str], None] | None = None) -> Channel:
    """The source side of ``migrate``: a connected channel, or ``TransportError``.

    ``named_fds`` is the monitor's ``NamedFds`` (for ``fd:NAME``), ``fdsets`` the ``FdSets``
    (for ``file:/dev/fdset/N``); ``warn`` receives warning texts (``fd:`` on a non-socket).
    """
    if isinstance(addr, Socket):
        sa = addr.socket
        if isinstance(sa, Inet):
            return _socket_channel(_inet_connect(sa), "migration-socket-outgoing")
        if isinstance(sa, Unix):
            return _socket_channel(_unix_connect(sa), "migration-socket-outgoing")
        if isinstance(sa, Vsock):
            return _socket_channel(_vsock_connect(sa), "migration-socket-outgoing")
        if isinstance(sa, Fd):
            # migration/fd.c fd_start_outgoing_migration: monitor_get_fd (names only)
            fd = _take_named_fd(named_fds, sa.str)
            return _fd_channel(fd, "migration-fd-outgoing", warn)
        raise TransportError("Parameter 'uri' expects a valid migration protocol")
    if isinstance(addr, Exec):
        return _exec_channel(addr.args, "migration-exec-outgoing")
    if isinstance(addr, File):
        return _file_outgoing(addr, fdsets)
    # Rdma (not built in) or anything else: qmp_migrate's fallback, QERR_INVALID_PARAMETER_VALUE
    raise TransportError("Parameter 'uri' expects a valid migration protocol")


def listen_incoming(addr: MigrationAddress, *, named_fds: Any = None, fdsets: Any = None,
                    uri: str | None = None, backlog: int = 1,
                    warn: Callable[[str], None] | None = None) -> Listener:
    """The destination side of ``migrate-incoming``: a ``Listener``, or ``TransportError``.

    ``uri`` is the command's ``uri`` argument, quoted by the error for a transport that is not
    built in (rdma: ``unknown migration protocol: <uri>``, ``(null)`` for ``channels``).
    ``backlog`` is the listen queue (QEMU: 1, the multifd channel count with multifd).
    """
    if isinstance(addr, Socket):
        sa = addr.socket
        if isinstance(sa, Inet):
            return Listener(socks=_inet_listen(sa, backlog))
        if isinstance(sa, Unix):
            return Listener(socks=[_unix_listen(sa, backlog)])
        if isinstance(sa, Vsock):
            return Listener(socks=[_vsock_listen(sa, backlog)])
        if isinstance(sa, Fd):
            fd = _incoming_fd(named_fds, sa.str)
            if _is_listening(fd):
                sock = socket.socket(fileno=fd)
                listener = Listener(socks=[sock], name="migration-fd-listener")
                listener._addresses = []  # QEMU records no socket-address for fd:
                return listener
            return Listener(ready=_fd_channel(fd, "migration-fd-incoming", warn), name="migration-fd-incoming")
    if isinstance(addr, Exec):
        return Listener(ready=_exec_channel(addr.args, "migration-exec-incoming"), name="migration-exec-incoming")
    if isinstance(addr, File):
        return Listener(ready=_file_incoming(addr, fdsets), name="migration-file-incoming")
    # Rdma without CONFIG_RDMA: qemu_start_incoming_migration's fallback
    raise TransportError(f"unknown migration protocol: {uri if uri is not None else '(null)'}")


# ---------------------------------------------------------------------------------------------
# TLS (QEMU's migration_tls_channel_connect / migration_tls_channel_process_incoming)
# ---------------------------------------------------------------------------------------------

class TlsChannel(Channel):
    """The plaintext end of a TLS tunnel, as a socket channel (the C paths keep their fd I/O).
    It keeps the channel the handshake ran on: its wake pipe is the tunnel's cancel fd."""

    def __init__(self, sock: socket.socket, tunnel: Any, under: Channel) -> None:
        sock.setblocking(False)
        super().__init__("socket", sock.fileno(), sock=sock, name=f"{under.name}-tls")
        self.tunnel = tunnel
        self.under = under

    def shutdown(self) -> None:
        super().shutdown()
        self.tunnel.shutdown()

    #: how long a normal close waits for the tunnel to deliver what is still buffered
    DRAIN_TIMEOUT = 30.0
    #: then how long it waits for the peer to close too (a busy peer is not waited for longer)
    PEER_CLOSE_TIMEOUT = 1.0

    def close(self) -> None:
        """A normal close first lets the tunnel encrypt and hand to the socket everything written
        (and the TLS close_notify): the stream's last bytes may still sit in the socketpair. A
        channel shut down (cancel, failure) closes at once."""
        if not self.closed and not self.is_shut_down:
            try:
                self._sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
            except OSError:
                pass
            if self.tunnel.wait_sent(self.DRAIN_TIMEOUT):
                self.tunnel.wait(self.PEER_CLOSE_TIMEOUT)  # the peer's close_notify: nothing unread left
        super().close()
        self.tunnel.close()
        self.under.close()


def tls_upgrade(channel: Channel, creds: Any, *, hostname: str | None = None, authz: str | None = None,
                registry: Any = None) -> Channel:
    """Runs the TLS handshake on ``channel`` (client when ``creds`` is a client endpoint, with
    ``hostname`` for certificate checks; server with the ``authz`` object id) and returns the
    channel carrying the plaintext, which owns ``channel`` from then on; on failure ``channel`` is
    closed. A ``shutdown()`` of ``channel`` during the handshake cancels it. Raises
    ``TransportError`` with QEMU's text."""
    from emu.tls import TlsError, tls_wrap_fd

    if channel.kind != "socket":
        channel.close()
        raise TransportError("TLS migration is only supported over sockets by this emulator")
    try:
        fd = os.dup(channel.fileno())  # the tunnel owns this one
    except OSError as e:
        channel.close()
        raise TransportError(_errno_text("Unable to duplicate socket", e)) from None
    try:
        tunnel = tls_wrap_fd(fd, creds, hostname=hostname, authz=authz, cancel_fd=channel._wake_r,
                             registry=registry)
    except TlsError as e:
        os.close(fd)
        channel.close()
        raise TransportError(str(e)) from None
    return TlsChannel(socket.socket(fileno=tunnel.plain_fd), tunnel, channel)
