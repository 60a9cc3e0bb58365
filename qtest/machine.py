"""Launch an emulator for qtest, the way libqtest's ``qtest_init``/``qtest_quit`` do.

:class:`QTestMachine` listens on two short-path unix sockets, starts the binary
with libqtest's command line (``spec/qtest-protocol.md`` §7.1), accepts both
connections, sends ``endianness``, and negotiates QMP. ``quit()`` sends SIGTERM,
waits up to 30 s, then SIGKILLs, and checks the exit status.

Also here: :class:`QMPConnection`, a small synchronous QMP client (no
dependency on ``qemu.qmp``), and :func:`qtest_stdio`, which replays a qtest
script through ``-qtest stdio`` (crash reproducers, compatibility checks).
"""

from __future__ import annotations

import collections
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from qtest.client import QTestClient, QTestError

__all__ = [
    "DEFAULT_BINARY_NAME",
    "ExitStatusError",
    "LOG_TO_STDERR",
    "LaunchError",
    "QMPConnection",
    "QMPEOF",
    "QMPError",
    "QTestMachine",
    "default_binary",
    "probe_binary",
    "qtest_stdio",
    "short_tempdir",
]

DEFAULT_BINARY_NAME = "emu-system-x86_64"
SOCKET_TIMEOUT = 50.0  # libqtest's SOCKET_TIMEOUT: time allowed to connect/handshake
WAITPID_TIMEOUT = 30.0  # libqtest's WAITPID_TIMEOUT: time allowed to exit on SIGTERM
_MAX_UNIX_PATH = 107
LOG_TO_STDERR = "stderr"  # qtest_log value: omit -qtest-log, so the log goes to stderr


def default_binary() -> str:
    """``$QTEST_QEMU_BINARY`` if set, else ``emu-system-x86_64`` (resolved on PATH if found)."""
    env = os.environ.get("QTEST_QEMU_BINARY")
    if env:
        return env
    return shutil.which(DEFAULT_BINARY_NAME) or DEFAULT_BINARY_NAME


def probe_binary(
    binary: str | os.PathLike[str],
    extra_args: Sequence[str] = (),
    *,
    accel_qtest: bool = False,
    timeout: float = 30.0,
) -> str | None:
    """Smoke-test ``binary``: launch it (qtest + QMP handshakes), run ``readb 0x0``, quit.

    Returns None if all of that worked with exit status 0, else a short
    description of the failure. Lets test suites skip, with a visible reason,
    a binary that is installed but not usable yet.
    """
    try:
        with QTestMachine(binary, extra_args, accel_qtest=accel_qtest, timeout=timeout, io_timeout=timeout) as m:
            m.qtest.readb(0)
    except (LaunchError, ExitStatusError, QTestError, QMPError, OSError) as e:
        lines = str(e).strip().splitlines()
        return " | ".join(lines[:1] + lines[-3:])
    return None


def short_tempdir(prefix: str = "qt") -> str:
    """Create a private temp dir whose socket paths fit ``AF_UNIX``'s 107-byte limit.

    Uses the system temp dir when it is short enough, else ``/tmp``.
    """
    base = tempfile.gettempdir()
    if len(base) > 60 and os.path.isdir("/tmp"):
        base = "/tmp"
    return tempfile.mkdtemp(prefix=prefix, dir=base)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


class LaunchError(RuntimeError):
    """The emulator could not be started or did not complete the qtest/QMP handshake.

    Attributes: ``argv``, ``exit_code`` (None if it never ran or is still
    running), ``stderr`` (captured text).
    """

    def __init__(self, message: str, argv: Sequence[str], exit_code: int | None, stderr: str) -> None:
        detail = message
        if exit_code is not None:
            detail += f" (exit code {exit_code})"
        if stderr.strip():
            detail += "\n--- emulator stderr ---\n" + _tail(stderr)
        super().__init__(detail)
        self.argv = list(argv)
        self.exit_code = exit_code
        self.stderr = stderr


class ExitStatusError(RuntimeError):
    """``quit()`` found an exit status other than the expected one (or death by a signal)."""

    def __init__(self, status: int, expected: int, stderr: str) -> None:
        if status < 0:
            what = f"emulator died from signal {-status} ({signal.Signals(-status).name})"
        else:
            what = f"emulator exited with status {status}, expected {expected}"
        if stderr.strip():
            what += "\n--- emulator stderr ---\n" + _tail(stderr)
        super().__init__(what)
        self.status = status
        self.expected = expected
        self.stderr = stderr


class QMPError(Exception):
    """A QMP command returned ``{"error": {"class": ..., "desc": ...}}``."""

    def __init__(self, error_class: str, desc: str, reply: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{error_class}: {desc}")
        self.error_class = error_class
        self.desc = desc
        self.reply = dict(reply) if reply is not None else {}


class QMPEOF(ConnectionError):
    """The QMP stream ended."""


class QMPConnection:
    """A synchronous QMP client over a connected stream socket.

    Messages are read as ``\\n``-terminated JSON lines (QEMU sends ``\\r\\n``);
    events that arrive while waiting for a reply are queued for
    :meth:`wait_event`/:meth:`get_events`. Commands are sent without an ``id``
    and with a trailing newline, as libqtest does.
    """

    def __init__(self, sock: socket.socket, *, timeout: float | None = None, read_greeting: bool = True) -> None:
        self._sock = sock
        self.timeout = timeout
        self._buf = bytearray()
        self._events: collections.deque[dict[str, Any]] = collections.deque()
        self.greeting: dict[str, Any] | None = None
        self.closed = False
        if read_greeting:
            greeting = self._recv_msg(self._deadline(timeout))
            if "QMP" not in greeting:
                raise QMPError("GreetingError", f"unexpected greeting {greeting!r}", greeting)
            self.greeting = greeting

    # -------------------------------------------------------------- wire

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        return None if timeout is None else time.monotonic() + timeout

    def _recv_msg(self, deadline: float | None) -> dict[str, Any]:
        """Read the next JSON message (event or reply)."""
        while True:
            i = self._buf.find(b"\n")
            while i >= 0:
                line = bytes(self._buf[:i]).strip()
                del self._buf[: i + 1]
                if line:
                    msg = json.loads(line)
                    if not isinstance(msg, dict):
                        raise QMPError("ProtocolError", f"not a JSON object: {line!r}")
                    return msg
                i = self._buf.find(b"\n")
            if deadline is None:
                self._sock.settimeout(None)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("timed out waiting for a QMP message")
                self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                raise TimeoutError("timed out waiting for a QMP message") from None
            except (ConnectionResetError, BrokenPipeError) as e:
                raise QMPEOF(f"QMP connection lost: {e}") from e
            if not data:
                raise QMPEOF("QMP connection closed by the emulator")
            self._buf += data

    def send(self, msg: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
        """Send one message (compact JSON + ``\\n``), optionally with fds via SCM_RIGHTS."""
        data = json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        self.send_raw(data, fds)

    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send raw bytes; ``fds`` (at most 16, like libqmp) travel with the first byte."""
        self._sock.settimeout(self.timeout)
        try:
            if fds:
                sent = socket.send_fds(self._sock, [data], list(fds))
                data = data[sent:]
            if data:
                self._sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError) as e:
            raise QMPEOF(f"QMP connection lost: {e}") from e

    def send_fd_scm(self, fd: int) -> None:
        """Pass ``fd`` the way ``qemu.qmp`` does: one space byte carrying SCM_RIGHTS."""
        self.send_raw(b" ", [fd])

    def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """Return the next non-event message (events are queued)."""
        deadline = self._deadline(self.timeout if timeout is None else timeout)
        while True:
            msg = self._recv_msg(deadline)
            if "event" in msg:
                self._events.append(msg)
                continue
            return msg

    # ---------------------------------------------------------- commands

    def cmd_raw(
        self, name: str, arguments: Mapping[str, Any] | None = None, fds: Sequence[int] = ()
    ) -> dict[str, Any]:
        """Execute ``name`` and return the whole reply (``{"return": ...}`` or ``{"error": ...}``)."""
        msg: dict[str, Any] = {"execute": name}
        if arguments:
            msg["arguments"] = dict(arguments)
        self.send(msg, fds)
        return self.receive()

    def cmd(self, name: str, arguments: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Any:
        """Execute ``name`` with ``arguments``/``kwargs``; return ``reply["return"]``.

        Hyphenated argument names go in the ``arguments`` dict. Raises
        :class:`QMPError` on an error reply.
        """
        args = {**(arguments or {}), **kwargs}
        return self._check(self.cmd_raw(name, args))

    def cmd_fds(self, name: str, fds: Sequence[int], arguments: Mapping[str, Any] | None = None, /,
                **kwargs: Any) -> Any:
        """Like :meth:`cmd`, passing ``fds`` with the command (e.g. ``getfd``, ``add-fd``)."""
        args = {**(arguments or {}), **kwargs}
        return self._check(self.cmd_raw(name, args, fds))

    @staticmethod
    def _check(reply: dict[str, Any]) -> Any:
        if "error" in reply:
            err = reply["error"] if isinstance(reply["error"], dict) else {}
            raise QMPError(str(err.get("class", "")), str(err.get("desc", "")), reply)
        if "return" not in reply:
            raise QMPError("ProtocolError", f"reply without return: {reply!r}", reply)
        return reply["return"]

    def negotiate(self, enable: Sequence[str] | None = None) -> None:
        """Send libqtest's ``{"execute": "qmp_capabilities"}`` and require a ``return``."""
        msg: dict[str, Any] = {"execute": "qmp_capabilities"}
        if enable:
            msg["arguments"] = {"enable": list(enable)}
        self.send_raw(json.dumps(msg).encode() + b"\n")
        self._check(self.receive())

    # ------------------------------------------------------------ events

    def wait_event(
        self,
        name: str | None = None,
        timeout: float | None = 60.0,
        match: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """Return (and dequeue) the first event named ``name`` (any if None) matching ``match``.

        Queued events are searched first; others read meanwhile stay queued.
        Raises ``TimeoutError`` after ``timeout`` seconds (None: wait forever).
        """

        def wanted(ev: dict[str, Any]) -> bool:
            return (name is None or ev.get("event") == name) and (match is None or match(ev))

        for ev in self._events:
            if wanted(ev):
                self._events.remove(ev)
                return ev
        deadline = self._deadline(timeout)
        while True:
            msg = self._recv_msg(deadline)
            if "event" not in msg:
                raise QMPError("ProtocolError", f"unexpected reply while waiting for an event: {msg!r}", msg)
            if wanted(msg):
                return msg
            self._events.append(msg)

    def get_events(self, wait: float | None = None) -> list[dict[str, Any]]:
        """Return and clear queued events; with ``wait``, first wait that long for at least one."""
        if wait is not None and not self._events:
            try:
                self._events.append(self.wait_event(None, wait))
            except TimeoutError:
                pass
        events = list(self._events)
        self._events.clear()
        return events

    def clear_events(self) -> None:
        """Drop all queued events."""
        self._events.clear()

    @property
    def pending_events(self) -> Sequence[dict[str, Any]]:
        """Snapshot of queued events (not dequeued)."""
        return tuple(self._events)

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if not self.closed:
            self.closed = True
            self._sock.close()

    def __enter__(self) -> QMPConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------ launcher

_preexec_cache: list[Callable[[], None] | None] = []


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn setting PR_SET_PDEATHSIG=SIGKILL (Linux), as libqtest < 10.2 does."""
    if not _preexec_cache:
        fn: Callable[[], None] | None = None
        try:
            import ctypes

            prctl = ctypes.CDLL(None, use_errno=True).prctl
            pr_set_pdeathsig = 1

            def fn() -> None:
                prctl(pr_set_pdeathsig, int(signal.SIGKILL))

        except (OSError, AttributeError):
            fn = None
        _preexec_cache.append(fn)
    return _preexec_cache[0]


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Finalizer: never leave an emulator running when its machine object is gone."""
    if proc.poll() is None:
        try:
            proc.kill()
        except OSError:
            pass
        proc.wait()


class QTestMachine:
    """One emulator process driven over qtest + QMP, like libqtest's ``QTestState``.

    The constructor launches the process unless ``launch=False`` (then call
    :meth:`launch`, or use the object as a context manager). Arguments:

    * ``binary``: emulator path (default :func:`default_binary`);
    * ``extra_args``: appended after libqtest's standard arguments;
    * ``accel_qtest``: append ``-accel qtest`` (libqtest always does; Debian's
      QEMU lacks that accelerator, so pass False for it);
    * ``qtest_log``: ``-qtest-log`` target (None -> ``/dev/null``; the string
      ``"stderr"`` omits the option, so the log goes to the emulator's stderr,
      which QEMU leaves unbuffered, unlike a ``/dev/fd/2`` file);
    * ``timeout``: seconds allowed for connecting and the handshakes (50 s);
    * ``io_timeout``: timeout of later qtest/QMP I/O (None: block, as libqtest);
    * ``expected_status``: exit status :meth:`quit` requires (0);
    * ``qmp_handshake``: read the greeting and negotiate capabilities;
    * ``die_with_parent``: SIGKILL the emulator if the launching thread dies.
    """

    def __init__(
        self,
        binary: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        *,
        accel_qtest: bool = True,
        qtest_log: str | os.PathLike[str] | None = None,
        timeout: float = SOCKET_TIMEOUT,
        io_timeout: float | None = None,
        expected_status: int = 0,
        env: Mapping[str, str] | None = None,
        qmp_handshake: bool = True,
        die_with_parent: bool = True,
        launch: bool = True,
    ) -> None:
        self.binary = os.fspath(binary) if binary is not None else default_binary()
        self.extra_args = list(extra_args)
        self.accel_qtest = accel_qtest
        self.qtest_log = os.fspath(qtest_log) if qtest_log is not None else None
        self.timeout = timeout
        self.io_timeout = io_timeout
        self.expected_status = expected_status
        self.env = dict(env) if env is not None else None
        self.qmp_handshake = qmp_handshake
        self.die_with_parent = die_with_parent
        self.tmpdir: str | None = None
        self.exitcode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._qtest: QTestClient | None = None
        self._qmp: QMPConnection | None = None
        self._stderr_cache: str | None = None
        self._finalizer: weakref.finalize | None = None
        if launch:
            self.launch()

    # ----------------------------------------------------------- helpers

    @property
    def qtest_socket_path(self) -> str:
        """Path of the qtest socket (inside :attr:`tmpdir`)."""
        assert self.tmpdir is not None, "not launched"
        return os.path.join(self.tmpdir, "qtest.sock")

    @property
    def qmp_socket_path(self) -> str:
        """Path of the QMP socket (inside :attr:`tmpdir`)."""
        assert self.tmpdir is not None, "not launched"
        return os.path.join(self.tmpdir, "qmp.sock")

    @property
    def stderr_path(self) -> str:
        """File receiving the emulator's stderr (removed by :meth:`quit`)."""
        assert self.tmpdir is not None, "not launched"
        return os.path.join(self.tmpdir, "stderr.log")

    @property
    def log_path(self) -> str | None:
        """The ``-qtest-log`` file, or None when logging is off or goes to stderr."""
        return None if self.qtest_log == LOG_TO_STDERR else self.qtest_log

    def _log_args(self) -> list[str]:
        if self.qtest_log == LOG_TO_STDERR:
            return []
        return ["-qtest-log", self.qtest_log if self.qtest_log is not None else "/dev/null"]

    def build_argv(self) -> list[str]:
        """The full command line (needs :attr:`tmpdir`)."""
        argv = [
            self.binary,
            "-qtest", f"unix:{self.qtest_socket_path}",
            *self._log_args(),
            "-chardev", f"socket,path={self.qmp_socket_path},id=char0",
            "-mon", "chardev=char0,mode=control",
            "-display", "none",
            *self.extra_args,
        ]  # fmt: skip
        if self.accel_qtest:
            argv += ["-accel", "qtest"]
        return argv

    @property
    def argv(self) -> list[str]:
        """The command line used (or to be used) for this machine."""
        return self.build_argv()

    @property
    def qtest(self) -> QTestClient:
        """The qtest client."""
        if self._qtest is None:
            raise RuntimeError("machine is not running")
        return self._qtest

    @property
    def qmp(self) -> QMPConnection:
        """The QMP connection."""
        if self._qmp is None:
            raise RuntimeError("machine is not running")
        return self._qmp

    @property
    def pid(self) -> int:
        """PID of the emulator process."""
        if self._proc is None:
            raise RuntimeError("machine was not launched")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def stderr_text(self) -> str:
        """Everything the emulator wrote to stderr so far (kept after :meth:`quit`)."""
        if self._stderr_cache is not None:
            return self._stderr_cache
        if self.tmpdir is None:
            return ""
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------ launch

    def launch(self) -> None:
        """Start the emulator and complete the qtest and QMP handshakes.

        Raises :class:`LaunchError` (with exit code and stderr) on failure.
        """
        if self._proc is not None:
            raise RuntimeError("already launched")
        self.tmpdir = short_tempdir()
        argv = self.build_argv()
        listeners: list[socket.socket] = []
        try:
            for path in (self.qtest_socket_path, self.qmp_socket_path):
                if len(path.encode()) > _MAX_UNIX_PATH:
                    raise LaunchError(f"socket path too long: {path}", argv, None, "")
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listeners.append(s)
                s.bind(path)
                s.listen(1)
            with open(self.stderr_path, "wb") as err:
                try:
                    self._proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=err,
                        stderr=err,
                        env=self.env,
                        close_fds=True,
                        preexec_fn=_pdeathsig_preexec() if self.die_with_parent else None,
                    )
                except OSError as e:
                    raise LaunchError(f"cannot execute {self.binary!r}: {e}", argv, None, str(e)) from e
            self._finalizer = weakref.finalize(self, _reap, self._proc)
            qtest_sock, qmp_sock = self._accept(listeners, argv)
        except BaseException:
            for s in listeners:
                s.close()
            self._abort_launch()
            raise
        for s in listeners:
            s.close()
        for path in (self.qtest_socket_path, self.qmp_socket_path):
            try:
                os.unlink(path)
            except OSError:
                pass
        self._qtest = QTestClient(qtest_sock, timeout=self.timeout)
        try:
            self._qtest.endianness()
            if self.qmp_handshake:
                self._qmp = QMPConnection(qmp_sock, timeout=self.timeout)
                self._qmp.negotiate()
            else:
                self._qmp = QMPConnection(qmp_sock, timeout=self.timeout, read_greeting=False)
        except (OSError, QTestError, QMPError, ValueError) as e:
            qmp_sock.close()
            code = self._abort_launch()
            self._qtest = self._qmp = None
            raise LaunchError(f"handshake with {self.binary!r} failed: {e}", argv, code, self.stderr_text()) from e
        qtest_sock.settimeout(self.io_timeout)
        self._qmp.timeout = self.io_timeout

    def _accept(self, listeners: list[socket.socket], argv: list[str]) -> tuple[socket.socket, socket.socket]:
        """Accept the emulator's qtest and QMP connections (either order), watching for its exit."""
        assert self._proc is not None
        conns: dict[int, socket.socket] = {}
        deadline = time.monotonic() + self.timeout
        pidfd = -1
        try:
            pidfd = os.pidfd_open(self._proc.pid)
        except (AttributeError, OSError):
            pass
        try:
            with selectors.DefaultSelector() as sel:
                for i, s in enumerate(listeners):
                    sel.register(s, selectors.EVENT_READ, i)
                if pidfd >= 0:
                    sel.register(pidfd, selectors.EVENT_READ, -1)
                while len(conns) < len(listeners):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise LaunchError(
                            f"{self.binary!r} did not connect within {self.timeout} s", argv, None, self.stderr_text()
                        )
                    # Without a pidfd, poll the child's exit every 50 ms.
                    ready = sel.select(remaining if pidfd >= 0 else min(remaining, 0.05))
                    for key, _ in ready:
                        if key.data >= 0 and key.data not in conns:
                            conn, _addr = listeners[key.data].accept()
                            conns[key.data] = conn
                            sel.unregister(listeners[key.data])
                    if len(conns) < len(listeners) and self._proc.poll() is not None:
                        raise LaunchError(
                            f"{self.binary!r} exited before connecting", argv, self._proc.returncode, self.stderr_text()
                        )
        except BaseException:
            for c in conns.values():
                c.close()
            raise
        finally:
            if pidfd >= 0:
                os.close(pidfd)
        return conns[0], conns[1]

    def _abort_launch(self) -> int | None:
        """Kill a half-started emulator; return its exit code (if it had exited by itself)."""
        code: int | None = None
        if self._proc is not None:
            try:
                # Give an emulator that is already failing a moment to exit by itself.
                code = self._proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self.exitcode = self._proc.returncode
        if self._qtest is not None:
            self._qtest.close()
        self._cleanup()
        return code

    # -------------------------------------------------------------- quit

    def set_expected_status(self, status: int) -> None:
        """Set the exit status :meth:`quit` requires (libqtest's ``qtest_set_expected_status``)."""
        self.expected_status = status

    def quit(self, check: bool = True, timeout: float = WAITPID_TIMEOUT) -> int | None:
        """Stop the emulator: SIGTERM, wait up to ``timeout`` s, then SIGKILL.

        Returns the exit status (negative: killed by that signal); None if it
        was never launched. With ``check``, a status other than
        :attr:`expected_status` raises :class:`ExitStatusError`. Idempotent.
        """
        proc = self._proc
        if proc is None:
            return None
        if self.exitcode is None:
            # Close our ends first: an emulator blocked writing to us could not handle SIGTERM.
            if self._qtest is not None:
                self._qtest.close()
            if self._qmp is not None:
                self._qmp.close()
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.exitcode = proc.returncode
            self._cleanup()
        if check and self.exitcode != self.expected_status:
            raise ExitStatusError(self.exitcode, self.expected_status, self.stderr_text())
        return self.exitcode

    def kill(self) -> int | None:
        """SIGKILL the emulator without checking its status; return the status."""
        proc = self._proc
        if proc is None:
            return None
        if self.exitcode is None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            self.exitcode = proc.returncode
            if self._qtest is not None:
                self._qtest.close()
            if self._qmp is not None:
                self._qmp.close()
            self._cleanup()
        return self.exitcode

    def wait(self, timeout: float | None = WAITPID_TIMEOUT, check: bool = True) -> int:
        """Wait for the emulator to exit by itself (e.g. after QMP ``quit``); check its status."""
        if self._proc is None:
            raise RuntimeError("machine was not launched")
        self._proc.wait(timeout=timeout)
        return self.quit(check=check)  # type: ignore[return-value]

    def _cleanup(self) -> None:
        """Cache stderr and remove the temp dir."""
        if self.tmpdir is None:
            return
        self._stderr_cache = self.stderr_text()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        if self._finalizer is not None:
            self._finalizer.detach()

    def __enter__(self) -> QTestMachine:
        if self._proc is None:
            self.launch()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # Don't let a status complaint hide the exception already in flight.
        self.quit(check=exc_type is None)

    def __repr__(self) -> str:
        state = "not launched" if self._proc is None else f"pid {self._proc.pid}"
        if self.exitcode is not None:
            state += f", exit {self.exitcode}"
        return f"<QTestMachine {self.binary} ({state})>"


# --------------------------------------------------------------- -qtest stdio


def _count_reply_lines(script: bytes) -> int:
    """Lines the server will answer: complete lines before any NUL byte."""
    nul = script.find(b"\0")
    return (script if nul < 0 else script[:nul]).count(b"\n")


def qtest_stdio(
    binary: str | os.PathLike[str],
    args: Iterable[str],
    script: bytes,
    timeout: float = 60.0,
    *,
    expected_replies: int | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[bytes, bytes, int]:
    """Run ``binary -qtest stdio *args`` with ``script`` on stdin; return (stdout, stderr, returncode).

    QEMU does not exit on stdin EOF, so stdout is read until as many non-IRQ
    lines as the script has complete lines (or ``expected_replies``) have
    arrived, or stdout ends (e.g. a crash); then the process gets SIGTERM
    (SIGKILL after 10 s). The return code is negative for death by a signal.
    Raises ``subprocess.TimeoutExpired`` (carrying the partial output) if
    the replies do not arrive within ``timeout`` seconds.
    """
    want = _count_reply_lines(script) if expected_replies is None else expected_replies
    argv = [os.fspath(binary), "-qtest", "stdio", *args]
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf, env=env)
        assert proc.stdin is not None and proc.stdout is not None

        def feed() -> None:
            assert proc.stdin is not None
            try:
                proc.stdin.write(script)
            except (BrokenPipeError, OSError):
                pass
            try:
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass

        writer = threading.Thread(target=feed, name="qtest-stdio-feed", daemon=True)
        writer.start()
        out = bytearray()
        replies = 0
        scanned = 0
        timed_out = False
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while replies < want:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not sel.select(remaining):
                    timed_out = True
                    break
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                out += chunk
                end = out.rfind(b"\n") + 1
                if end > scanned:
                    for line in bytes(out[scanned:end]).split(b"\n")[:-1]:
                        if not line.startswith(b"IRQ "):
                            replies += 1
                    scanned = end
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        writer.join()
        # Whatever was still buffered (e.g. output printed at exit).
        rest = proc.stdout.read()
        proc.stdout.close()
        out += rest
        errf.seek(0)
        err = errf.read()
    if timed_out:
        raise subprocess.TimeoutExpired(argv, timeout, output=bytes(out), stderr=err)
    return bytes(out), err, proc.returncode

