"""A TLS tunnel: the rest of the emulator keeps doing plain fd I/O on one end of a socketpair.

The migration code (and its C core) reads and writes sockets directly, so after the handshake
:func:`tls_wrap_fd` creates a ``socketpair``, hands one end to the caller (``plain_fd``) and runs
two pump threads on the other end:

* ``tx``: plaintext end -> ``gnutls_record_send``; EOF on the plaintext side sends TLS
  close_notify (``gnutls_bye(SHUT_WR)``), so the peer's plaintext side sees EOF;
* ``rx``: ``gnutls_record_recv`` -> plaintext end; the peer's close_notify, or the connection
  closing without one, shuts the plaintext end for writing, so the caller reads EOF; a plaintext
  end that the caller closed entirely stops it.

Both pumps move up to 256 KiB per step (GnuTLS releases the GIL inside every call). Every wait is
a ``poll`` that also watches a wake pipe (and the caller's cancel fd), so :meth:`TlsTunnel.shutdown`
or a TLS error stops both at once: the first error is kept in ``error`` *before* the plaintext
end is shut down, so a caller that sees EOF or EPIPE can ask why. When both pumps have finished,
the TLS socket is closed.
"""
from __future__ import annotations

import os
import select
import socket
import threading
from typing import Any

import emu.tls.gnutls as g
from emu.tls.authz import QAuthZ
from emu.tls.creds import TlsCreds
from emu.tls.errors import TlsError
from emu.tls.registry import ObjectRegistry, get_authz
from emu.tls.session import Cancelled, TlsSession

__all__ = ["TlsTunnel", "tls_wrap_fd", "CHUNK"]

CHUNK = 256 * 1024
SOCKBUF = 4 << 20
_HUP = select.POLLHUP | select.POLLERR | select.POLLNVAL


class _TunnelError(Exception):
    """A TLS-side failure of a pump (message: QEMU's channel text)."""


class _PlainClosed(Exception):
    """The caller closed its plaintext end."""


def _shutdown_fd(fd: int, how: int) -> None:
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return
    try:
        sock.shutdown(how)
    except OSError:
        pass
    finally:
        sock.detach()


class TlsTunnel:
    """Pumps between ``plain_fd`` (the caller's, blocking, caller closes it) and a TLS session on
    ``fd`` (owned by the tunnel from now on). Build it with :func:`tls_wrap_fd`."""

    def __init__(self, session: TlsSession, fd: int, cancel_fd: int | None = None) -> None:
        self.session = session
        self.fd = fd
        self.cancel_fd = cancel_fd
        self.error: str | None = None
        self.peername = session.peername
        self._lock = threading.Lock()
        self._closing = False
        self._released = False
        self._running = 2
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        inner, outer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (inner, outer):
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                try:
                    s.setsockopt(socket.SOL_SOCKET, opt, SOCKBUF)
                except OSError:
                    pass
        inner.setblocking(False)
        self._inner = inner
        self.plain_fd: int = outer.detach()
        self._done = threading.Event()
        self._tx_done = threading.Event()  # the plaintext -> TLS pump has ended
        self._threads = [threading.Thread(target=self._tx, name="tls-tx", daemon=True),
                         threading.Thread(target=self._rx, name="tls-rx", daemon=True)]
        for t in self._threads:
            t.start()

    # ---- public
    def shutdown(self) -> None:
        """Stop both directions now (cancel): the peer and the plaintext side see the end."""
        with self._lock:
            self._closing = True
        self._abort()

    def wait_sent(self, timeout: float | None = None) -> bool:
        """Wait until the plaintext -> TLS pump has ended (after the caller's EOF: everything it
        wrote is encrypted and handed to the socket, close_notify too, or an error ended it)."""
        return self._tx_done.wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until both pumps have finished (True) or ``timeout`` passes (False)."""
        return self._done.wait(timeout)

    def close(self) -> None:
        """shutdown(), join the pumps, release the TLS session and sockets (not ``plain_fd``)."""
        self.shutdown()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join()
        self._release()
        with self._lock:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    # ---- internals
    def _wakes(self) -> list[int]:
        return [w for w in (self._wake_r, self.cancel_fd) if w is not None and w >= 0]

    def _wait(self, fds: dict[int, int]) -> dict[int, int]:
        """poll ``fds`` (fd -> events) plus the wake fds; Cancelled when a wake fd fires."""
        poller = select.poll()
        for fd, ev in fds.items():
            poller.register(fd, ev)
        wakes = self._wakes()
        for w in wakes:
            poller.register(w, select.POLLIN)
        while True:
            ready = poller.poll()
            out: dict[int, int] = {}
            for fd, ev in ready:
                if fd in wakes:
                    raise Cancelled("TLS tunnel shut down")
                out[fd] = out.get(fd, 0) | ev
            if out:
                return out

    def _fail(self, message: str) -> None:
        with self._lock:
            if self.error is None and not self._closing:
                self.error = message
        self._abort()

    def _abort(self) -> None:
        with self._lock:  # under the lock: _release cannot close (and recycle) the fds meanwhile
            if self._wake_w >= 0:
                try:
                    os.write(self._wake_w, b"x")
                except OSError:
                    pass
            if self._released:
                return
            _shutdown_fd(self.fd, socket.SHUT_RDWR)
            try:
                self._inner.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _thread_done(self) -> None:
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            self._release()
            self._done.set()

    def _release(self) -> None:
        with self._lock:
            if self._released or self._running > 0:
                return
            self._released = True
            self.session.free()
            try:
                os.close(self.fd)
            except OSError:
                pass
            self._inner.close()

    # ---- plaintext -> TLS
    def _tx(self) -> None:
        buf = bytearray(CHUNK)
        cbuf = g.ffi.from_buffer(buf)
        inner = self._inner.fileno()
        try:
            while True:
                try:
                    n = self._inner.recv_into(buf)
                except BlockingIOError:
                    self._wait({inner: select.POLLIN})
                    continue
                except OSError:
                    n = 0  # reset by the caller: an end all the same
                if n == 0:
                    self.session.bye(self._wakes())
                    return
                self._send_all(cbuf, n)
        except Cancelled:
            pass
        except _TunnelError as e:
            self._fail(str(e))
        except Exception as e:  # never leave the other pump waiting forever
            self._fail(f"Cannot write to TLS channel: {e}")
        finally:
            self._tx_done.set()
            self._thread_done()

    def _send_all(self, cbuf: Any, n: int) -> None:
        """Encrypt ``n`` bytes into records while corked (no I/O), then flush them in one go."""
        self.session.cork()
        off = 0
        while off < n:
            r = self.session.send(cbuf + off, n - off)
            if r > 0:
                off += r
            elif r != g.E_INTERRUPTED:
                raise _TunnelError(f"Cannot write to TLS channel: {g.strerror(r)}")
        while True:
            r = self.session.uncork()
            if r >= 0:
                return
            if r in (g.E_AGAIN, g.E_INTERRUPTED):
                self._wait({self.fd: select.POLLOUT})
            else:
                raise _TunnelError(f"Cannot write to TLS channel: {g.strerror(r)}")

    # ---- TLS -> plaintext
    def _rx(self) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        cbuf = g.ffi.from_buffer(buf)
        inner = self._inner.fileno()
        try:
            while True:
                filled, eof, blocked = 0, False, False
                while filled < CHUNK:
                    r = self.session.recv(cbuf + filled, CHUNK - filled)
                    if r > 0:
                        filled += r
                    elif r == 0 or r == g.E_PREMATURE_TERMINATION:
                        eof = True  # close_notify, or the peer closed without one
                        break
                    elif r == g.E_AGAIN:
                        blocked = True
                        break
                    elif r == g.E_INTERRUPTED:
                        continue
                    else:
                        raise _TunnelError(f"Cannot read from TLS channel: {g.strerror(r)}")
                if filled:
                    self._write_plain(view[:filled], inner)
                if eof:
                    try:
                        self._inner.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                if blocked:
                    ready = self._wait({self.fd: select.POLLIN, inner: 0})
                    if ready.get(inner, 0) & _HUP:
                        return  # the caller closed its end: nobody to deliver to
        except (Cancelled, _PlainClosed):
            pass
        except _TunnelError as e:
            self._fail(str(e))
        except Exception as e:
            self._fail(f"Cannot read from TLS channel: {e}")
        finally:
            self._thread_done()

    def _write_plain(self, data: memoryview, inner: int) -> None:
        while data:
            try:
                n = self._inner.send(data)
            except BlockingIOError:
                self._wait({inner: select.POLLOUT})
                continue
            except OSError:
                raise _PlainClosed() from None
            data = data[n:]


def tls_wrap_fd(fd: int, creds: TlsCreds, *, hostname: str | None = None, authz: QAuthZ | str | None = None,
                cancel_fd: int | None = None, registry: ObjectRegistry | None = None) -> TlsTunnel:
    """Handshake on the connected socket ``fd`` as ``creds.endpoint`` and return the running
    tunnel (its ``plain_fd`` carries the plaintext). ``hostname``: what a client checks the server
    certificate against; ``authz``: an authz object or id (ids are looked up in ``registry``, an
    ``ObjectRegistry``, at check time as QEMU does); ``cancel_fd``: readable means stop (handshake
    and pumps). On success the tunnel owns ``fd``; on failure (TlsError with QEMU's text) the
    caller still does, back in blocking mode."""
    lookup = None
    if isinstance(authz, str):
        def lookup(authz_id: str) -> QAuthZ:
            if registry is None:
                raise TlsError(f"Cannot find QAuthZ object ID {authz_id}")
            return get_authz(registry, authz_id)
    session = TlsSession(creds, fd, creds.endpoint, hostname=hostname, authz=authz, authz_lookup=lookup)
    try:
        session.handshake([cancel_fd])
    except BaseException:
        session.free()
        try:
            os.set_blocking(fd, True)
        except OSError:
            pass
        raise
    return TlsTunnel(session, fd, cancel_fd)
