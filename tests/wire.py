"""Raw clients for the tests that watch the wire: bytes out, lines in, nothing interpreted that a test
asserts on.

The tests of the emulator as a process, and the compatibility tests against real QEMU, talk to qtest and
QMP sockets directly because the bytes are what they check. This module owns what they share:

- line framing over one connected stream (:class:`LineClient`), over a socket or over an in-process
  session (:class:`Loopback`);
- a qtest client whose replies are lists of raw lines (:class:`QtestClient`) and a QMP client that reads
  one JSON message per CRLF-terminated line (:class:`QmpClient`);
- the unix-socket plumbing of a test that starts an emulator: listen and accept, connect, wait for a path
  (every wait bounded, and an emulator that died is reported at once with its status), and an emulator
  process with a private short directory and its stderr in a file (:class:`Emulator`).

It must not import ``emu`` or ``qtest``: it is what the tests check those with (``qtest.client`` and
``qtest.machine`` are the product's clients; these are the tests' own, deliberately naive ones). Test
modules anywhere under ``tests/`` import it by bare name: the root ``conftest.py`` puts ``tests/`` on
``sys.path``.
"""
from __future__ import annotations

import array
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, Self

TIMEOUT = 30.0
#: The last line of a :meth:`QtestClient.reply` cut short by the peer closing the connection.
EOF_LINE = b"<EOF>"

StrPath = str | os.PathLike[str]


class ByteStream(Protocol):
    """What a :class:`LineClient` needs of its socket (a :class:`Loopback` has it too)."""

    def sendall(self, data: bytes, /) -> None: ...

    def recv(self, bufsize: int, /) -> bytes: ...

    def settimeout(self, value: float | None, /) -> None: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------

class LineClient:
    """Bytes out, ``\\n``-terminated lines in, over one connected stream."""

    #: Large enough that a reply of several MiB (b64read) takes a few reads, not thousands.
    RECV_SIZE = 1 << 22

    def __init__(self, sock: ByteStream, timeout: float | None = TIMEOUT, *, reset_is_eof: bool = False) -> None:
        """``reset_is_eof``: a connection reset by the peer reads as its end, instead of raising."""
        sock.settimeout(timeout)
        self.sock = sock
        self.buf = bytearray()
        self.reset_is_eof = reset_is_eof

    def send(self, data: bytes | str, fds: Sequence[int] = ()) -> None:
        """Sends ``data`` (a str as UTF-8) whole; ``fds`` go with its first byte (SCM_RIGHTS)."""
        if isinstance(data, str):
            data = data.encode()
        if not fds:
            self.sock.sendall(data)
            return
        assert isinstance(self.sock, socket.socket), "descriptors travel over a unix socket only"
        sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        self.sock.sendall(data[sent:])

    def readline(self) -> bytes | None:
        """The next line without its ``\\n`` (a ``\\r`` before it is kept); None once the peer has closed
        the connection with no whole line left."""
        start = 0
        while (end := self.buf.find(b"\n", start)) < 0:
            start = len(self.buf)  # what was searched once is not searched again
            chunk = self._recv()
            if not chunk:
                return None
            self.buf += chunk
        line = bytes(self.buf[:end])
        del self.buf[:end + 1]
        return line

    def line(self) -> bytes:
        """The next line, as :meth:`readline`; EOFError when the peer closed first."""
        line = self.readline()
        if line is None:
            raise EOFError("the peer closed the connection")
        return line

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(self.RECV_SIZE)
        except ConnectionResetError:
            if self.reset_is_eof:
                return b""
            raise

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class QtestClient(LineClient):
    """A raw qtest client: a command is one line out; its reply is the lines up to the first that is not
    an ``IRQ`` notification (those are kept, in order), as bytes without ``\\n``."""

    def reply(self) -> list[bytes]:
        """The lines up to and including the first non-``IRQ`` one; :data:`EOF_LINE` ends the list
        when the peer closed first."""
        out = []
        while (line := self.readline()) is not None:
            out.append(line)
            if not line.startswith(b"IRQ "):
                return out
        out.append(EOF_LINE)
        return out

    def cmd(self, line: bytes | str) -> list[bytes]:
        """Sends ``line`` and ``\\n`` (a str as Latin-1: one byte a character); returns its reply."""
        self.send((line.encode("latin-1") if isinstance(line, str) else line) + b"\n")
        return self.reply()


def qmp_request(name: str, args: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """``{"execute": name, "arguments": args, **extra}``, without ``arguments`` when ``args`` is None."""
    req: dict[str, Any] = {"execute": name}
    if args is not None:
        req["arguments"] = args
    req.update(extra)
    return req


class QmpClient(LineClient):
    """A raw QMP client: requests go out as compact JSON with nothing after them; every message that
    comes in is one CRLF-terminated line (checked). Events that arrive while :meth:`cmd` waits for its
    reply are kept in ``events``."""

    def __init__(self, sock: ByteStream, timeout: float | None = TIMEOUT) -> None:
        super().__init__(sock, timeout)
        self.events: list[dict[str, Any]] = []

    @classmethod
    def connect(cls, path: StrPath, negotiate: bool = True) -> QmpClient:
        """A client of the monitor listening on unix socket ``path``, greeted (see :meth:`greet`)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(os.fspath(path))
        except BaseException:
            sock.close()
            raise
        client = cls(sock)
        client.greet(negotiate)
        return client

    def greet(self, negotiate: bool = True) -> dict[str, Any]:
        """Reads the greeting (which must be one) and, unless told not to, negotiates capabilities;
        returns the greeting."""
        greeting = self.recv()
        assert "QMP" in greeting, greeting
        if negotiate:
            assert self.cmd("qmp_capabilities") == {"return": {}}
        return greeting

    def recv(self) -> dict[str, Any]:
        """The next message; EOFError when the peer closed first."""
        line = self.line()
        assert line.endswith(b"\r"), line
        msg: dict[str, Any] = json.loads(line)
        return msg

    def cmd(self, name: str, args: dict[str, Any] | None = None, fds: Sequence[int] = (),
            **extra: Any) -> dict[str, Any]:
        """Executes ``name`` (``fds`` passed along); its reply, ``return`` or ``error`` alike."""
        self.send(json.dumps(qmp_request(name, args, **extra)), fds)
        while "event" in (msg := self.recv()):
            self.events.append(msg)
        return msg


class Loopback:
    """A :class:`ByteStream` over an in-process session instead of a socket: what a client sends is fed
    to the session at once, and ``recv`` returns what the session wrote since the last one. ``b""``
    (nothing written) reads as the end of the stream, so ``readline()`` returns None when the session has
    nothing more to say. ``close`` calls of the session are counted in ``closes``::

        loop = Loopback()
        session = server.new_session(loop.write, loop.hang_up)
        loop.feed = session.feed
        session.opened()
        qmp = QmpClient(loop)
    """

    def __init__(self) -> None:
        self.feed: Callable[[bytes], None] | None = None
        self.written: list[bytes] = []
        self.closes = 0

    def write(self, data: bytes) -> None:
        """The session's output callback."""
        self.written.append(bytes(data))

    def hang_up(self) -> None:
        """The session's close callback."""
        self.closes += 1

    def sendall(self, data: bytes, /) -> None:
        assert self.feed is not None, "set feed to the session's input first"
        self.feed(data)

    def recv(self, bufsize: int, /) -> bytes:
        data = b"".join(self.written)
        self.written.clear()
        return data

    def settimeout(self, value: float | None, /) -> None:
        """Nothing here ever waits."""

    def close(self) -> None:
        """The test's end has nothing to release."""


# --------------------------------------------------------------------------------------
# Emulator processes and their sockets
# --------------------------------------------------------------------------------------

def short_dir(prefix: str) -> Path:
    """A new private directory under /tmp: unix socket paths in it fit AF_UNIX's 107 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def listen_unix(path: StrPath) -> socket.socket:
    """A socket listening on ``path`` (backlog 1), for an emulator to connect to."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(os.fspath(path))
        s.listen(1)
    except BaseException:
        s.close()
        raise
    s.settimeout(TIMEOUT)
    return s


def program(proc: subprocess.Popen[bytes]) -> str:
    """The program ``proc`` runs, for messages."""
    args = proc.args
    return os.fsdecode(args[0] if isinstance(args, list | tuple) else args)  # type: ignore[arg-type]


def piped_stderr(proc: subprocess.Popen[bytes]) -> Callable[[], str]:
    """What an exited ``proc`` wrote to its stderr pipe ("" when its stderr is not a pipe)."""
    def read() -> str:
        return proc.stderr.read().decode("utf-8", "replace") if proc.stderr is not None else ""
    return read


def exited(proc: subprocess.Popen[bytes], stderr: Callable[[], str] | None = None) -> RuntimeError:
    """The error for an emulator that exited while the test waited for it, quoting the end of its
    stderr (by default, read from its stderr pipe)."""
    text = (stderr or piped_stderr(proc))()
    return RuntimeError(f"{program(proc)} exited with status {proc.returncode}: {text[-2000:]}")


def accept(listener: socket.socket, proc: subprocess.Popen[bytes], timeout: float = TIMEOUT,
           stderr: Callable[[], str] | None = None) -> socket.socket:
    """The connection ``proc`` makes to ``listener``. The accept polls (0.25 s) only to notice a process
    that died during start-up at once rather than at the timeout."""
    deadline = time.monotonic() + timeout
    listener.settimeout(0.25)
    while True:
        try:
            return listener.accept()[0]
        except TimeoutError:
            pass
        if proc.poll() is not None:
            raise exited(proc, stderr)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{program(proc)} did not connect within {timeout}s")


def connect_unix(path: StrPath, proc: subprocess.Popen[bytes], timeout: float = TIMEOUT,
                 stderr: Callable[[], str] | None = None) -> socket.socket:
    """A connection to the socket ``proc`` listens on at ``path``, once it exists and accepts: nothing
    tells a test when the emulator has created it, so this polls (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(os.fspath(path))
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
        if proc.poll() is not None:
            raise exited(proc, stderr)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{program(proc)}: no socket at {os.fspath(path)} within {timeout}s")
        time.sleep(0.005)


def wait_path(path: Path, proc: subprocess.Popen[bytes], timeout: float = TIMEOUT,
              stderr: Callable[[], str] | None = None) -> None:
    """Waits until ``proc`` has created ``path`` (a listening socket is complete once visible)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise exited(proc, stderr)
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout}s"
        time.sleep(0.01)


class Emulator:
    """An emulator process that a test talks to over unix sockets in its own short directory (``dir``),
    with its stderr kept in a file there; :meth:`close` ends the process and removes the directory."""

    def __init__(self, binary: str, prefix: str = "em") -> None:
        self.binary = binary
        self.dir = short_dir(prefix)
        self.errpath = self.dir / "err"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, argv: Sequence[str], listen: StrPath | None = None) -> socket.socket | None:
        """Starts ``binary argv``; with ``listen``, listens on that path first and returns the
        connection the emulator makes to it. On any failure the emulator is closed."""
        listener = None
        try:
            if listen is not None:
                listener = listen_unix(listen)
            with open(self.errpath, "wb") as err:
                self.proc = subprocess.Popen([self.binary, *argv], stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=err)
            return None if listener is None else accept(listener, self.proc, TIMEOUT, self.stderr)
        except BaseException:
            self.close()
            raise
        finally:
            if listener is not None:
                listener.close()

    def connect_unix(self, path: StrPath) -> socket.socket:
        """A connection to the socket the emulator listens on at ``path`` (see :func:`connect_unix`)."""
        assert self.proc is not None, "not started"
        return connect_unix(path, self.proc, TIMEOUT, self.stderr)

    def stderr(self) -> str:
        """What the emulator wrote to stderr so far."""
        try:
            return self.errpath.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def close(self, sig: int = signal.SIGTERM) -> int | None:
        """Ends the emulator if it still runs (``sig``, then SIGKILL after 10 s) and removes the
        directory; returns its exit status (None if it never started)."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            rc = self.proc.returncode
        shutil.rmtree(self.dir, ignore_errors=True)
        return rc

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
