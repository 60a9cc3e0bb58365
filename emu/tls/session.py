"""One TLS session over a connected socket fd (QEMU's crypto/tlssession.c, in Python over GnuTLS).

GnuTLS reads and writes the fd itself (``gnutls_transport_set_int2``); the fd is put in
non-blocking mode and every wait is a ``poll`` that also watches wake-up fds (a cancel fd, a
shutdown pipe), so a handshake or a transfer never hangs once someone asks it to stop.
After the handshake, :meth:`TlsSession.check_credentials` makes QEMU's checks: for x509 with
``verify-peer``, the peer's chain, validity times, its DN against the authz object, and (clients)
the hostname, which may be an IP address.
"""
from __future__ import annotations

import os
import select
from collections.abc import Callable, Iterable
from typing import Any

import emu.tls.gnutls as g
from emu.tls.authz import QAuthZ
from emu.tls.creds import TlsCreds, TlsCredsAnon, TlsCredsPsk, TlsCredsX509
from emu.tls.errors import TlsError
from emu.tls.x509check import cert_reason

__all__ = ["TlsSession", "wait_fd", "Cancelled"]

AuthzLookup = Callable[[str], QAuthZ]


class Cancelled(TlsError):
    """A wait was interrupted by a wake-up fd (cancel or shutdown)."""


def wait_fd(fd: int, events: int, wake_fds: Iterable[int | None]) -> int:
    """Block until ``fd`` has ``events`` (returns the revents) or a wake fd is readable
    (raises Cancelled). POLLHUP/POLLERR on ``fd`` count as ready: the next I/O call reports."""
    poller = select.poll()
    poller.register(fd, events)
    wakes = [w for w in wake_fds if w is not None]
    for w in wakes:
        poller.register(w, select.POLLIN)
    while True:
        ready = poller.poll()
        revents = 0
        for rfd, ev in ready:
            if rfd in wakes and rfd != fd:
                raise Cancelled("TLS session cancelled")
            if rfd == fd:
                revents |= ev
        if revents:
            return revents


class TlsSession:
    """A GnuTLS session for ``creds`` on ``fd`` as ``endpoint`` (``client``/``server``).

    ``hostname``: what a client checks the server's certificate against. ``authz``: an authz
    object, or an authz id resolved (QEMU-style, at check time) through ``authz_lookup``.
    The fd stays owned by the caller; :meth:`free` releases the GnuTLS session.
    """

    def __init__(self, creds: TlsCreds, fd: int, endpoint: str, *, hostname: str | None = None,
                 authz: QAuthZ | str | None = None, authz_lookup: AuthzLookup | None = None) -> None:
        self.creds, self.fd, self.endpoint = creds, fd, endpoint
        self.hostname, self.authz, self.authz_lookup = hostname, authz, authz_lookup
        self.peername: str | None = None
        self.handshake_complete = False
        self._keep: list[Any] = []
        lib = g.lib()
        if creds.endpoint != endpoint:
            raise TlsError("Credentials endpoint doesn't match session")
        p = g.ffi.new("gnutls_session_t *")
        ret = lib.gnutls_init(p, (g.SERVER if endpoint == "server" else g.CLIENT) | g.NO_SIGNAL)
        if ret < 0:
            raise TlsError(f"Cannot initialize TLS session: {g.strerror(ret)}")
        self.handle: Any = p[0]
        try:
            self._configure(lib)
        except BaseException:
            self.free()
            raise
        os.set_blocking(fd, False)
        lib.gnutls_transport_set_int2(self.handle, fd, fd)

    def _configure(self, lib: Any) -> None:
        creds = self.creds
        if not isinstance(creds, (TlsCredsAnon, TlsCredsPsk, TlsCredsX509)):
            raise TlsError(f"Unsupported TLS credentials type {creds.type_name}")
        prio = creds.session_priority()
        ret = lib.gnutls_priority_set_direct(self.handle, prio.encode(), g.ffi.NULL)
        if ret < 0:
            if isinstance(creds, TlsCredsX509):
                raise TlsError(f"Cannot set default TLS session priority {prio}: {g.strerror(ret)}")
            raise TlsError(f"Unable to set TLS session priority {prio}: {g.strerror(ret)}")
        handle = creds.handle()
        if handle is None:
            raise TlsError(f"Cannot set session credentials: {g.strerror(-32)}")
        ret = lib.gnutls_credentials_set(self.handle, creds.credentials_type, handle)
        if ret < 0:
            raise TlsError(f"Cannot set session credentials: {g.strerror(ret)}")
        if isinstance(creds, TlsCredsX509) and self.endpoint == "server":
            # requests, but does not enforce, a client certificate: check_credentials enforces
            lib.gnutls_certificate_server_set_request(self.handle, g.CERT_REQUEST)

    # ---- handshake
    def handshake(self, wake_fds: Iterable[int | None] = ()) -> None:
        """Run the handshake to completion (TlsError ``TLS handshake failed: ...``), then QEMU's
        credential checks. A readable wake fd aborts with Cancelled."""
        lib = g.lib()
        wakes = list(wake_fds)
        while True:
            ret = lib.gnutls_handshake(self.handle)
            if ret == 0:
                break
            if ret in (g.E_AGAIN, g.E_INTERRUPTED):
                outgoing = lib.gnutls_record_get_direction(self.handle)
                try:
                    wait_fd(self.fd, select.POLLOUT if outgoing else select.POLLIN, wakes)
                except Cancelled:
                    raise Cancelled("TLS handshake cancelled") from None
                continue
            raise TlsError(f"TLS handshake failed: {g.strerror(ret)}")
        self.handshake_complete = True
        self.check_credentials()

    # ---- QEMU's post-handshake checks
    def check_credentials(self) -> None:
        if isinstance(self.creds, TlsCredsX509):
            if self.creds.verify_peer:
                self._check_certificate()
        elif not isinstance(self.creds, (TlsCredsAnon, TlsCredsPsk)):
            raise TlsError(f"Unexpected credential type {self.creds.type_name}")

    def _resolve_authz(self) -> QAuthZ | None:
        if self.authz is None or isinstance(self.authz, QAuthZ):
            return self.authz
        if self.authz_lookup is None:
            raise TlsError(f"Cannot find QAuthZ object ID {self.authz}")
        return self.authz_lookup(self.authz)

    def _check_certificate(self) -> None:
        import time

        lib = g.lib()
        now = int(time.time())
        status = g.ffi.new("unsigned int *")
        ret = lib.gnutls_certificate_verify_peers2(self.handle, status)
        if ret < 0:
            raise TlsError(f"Verify failed: {g.strerror(ret)}")
        if status[0] != 0:
            raise TlsError(cert_reason(status[0]))
        ncerts = g.ffi.new("unsigned int *")
        certs = lib.gnutls_certificate_get_peers(self.handle, ncerts)
        if certs == g.ffi.NULL:
            raise TlsError("No certificate peers")
        for i in range(ncerts[0]):
            p = g.ffi.new("gnutls_x509_crt_t *")
            ret = lib.gnutls_x509_crt_init(p)
            if ret < 0:
                raise TlsError(f"Cannot initialize certificate: {g.strerror(ret)}")
            cert = p[0]
            try:
                ret = lib.gnutls_x509_crt_import(cert, certs + i, g.X509_FMT_DER)
                if ret < 0:
                    raise TlsError(f"Cannot import certificate: {g.strerror(ret)}")
                if lib.gnutls_x509_crt_get_expiration_time(cert) < now:
                    raise TlsError("The certificate has expired")
                if lib.gnutls_x509_crt_get_activation_time(cert) > now:
                    raise TlsError("The certificate is not yet activated")
                if i == 0:
                    self._check_peer(cert)
            finally:
                lib.gnutls_x509_crt_deinit(cert)

    def _check_peer(self, cert: Any) -> None:
        lib = g.lib()
        size = g.ffi.new("size_t *", 1024)
        buf = g.ffi.new("char[]", size[0])
        ret = lib.gnutls_x509_crt_get_dn(cert, buf, size)
        if ret == g.E_SHORT_MEMORY_BUFFER:
            buf = g.ffi.new("char[]", size[0])
            ret = lib.gnutls_x509_crt_get_dn(cert, buf, size)
        if ret < 0:
            raise TlsError(f"Cannot get client distinguished name: {g.strerror(ret)}")
        self.peername = g.ffi.string(buf).decode("utf-8", "replace")
        authz = self._resolve_authz()
        if authz is not None and not authz.is_allowed(self.peername):
            raise TlsError(f"TLS x509 authz check for {self.peername} is denied")
        if self.hostname is not None:
            if not lib.gnutls_x509_crt_check_hostname(cert, self.hostname.encode()):
                raise TlsError(f"Certificate does not match the hostname {self.hostname}")
        elif self.creds.endpoint == "client":
            raise TlsError("No hostname for certificate validation")

    # ---- record layer (used by the tunnel)
    def send(self, data: Any, size: int) -> int:
        """gnutls_record_send: bytes sent, or a negative GnuTLS code (E_AGAIN...)."""
        return int(g.lib().gnutls_record_send(self.handle, data, size))

    def cork(self) -> None:
        """Collect the following records in memory (one write for a whole chunk)."""
        g.lib().gnutls_record_cork(self.handle)

    def uncork(self) -> int:
        """Flush corked records: bytes flushed, or a negative GnuTLS code (E_AGAIN: call again)."""
        return int(g.lib().gnutls_record_uncork(self.handle, 0))

    def recv(self, buf: Any, size: int) -> int:
        """gnutls_record_recv: bytes read, 0 at a clean end, or a negative GnuTLS code."""
        return int(g.lib().gnutls_record_recv(self.handle, buf, size))

    def bye(self, wake_fds: Iterable[int | None] = ()) -> None:
        """Send close_notify (GNUTLS_SHUT_WR); errors are ignored, as the peer may be gone."""
        if not self.handshake_complete or self.handle is None:
            return
        lib = g.lib()
        while True:
            ret = lib.gnutls_bye(self.handle, g.SHUT_WR)
            if ret not in (g.E_AGAIN, g.E_INTERRUPTED):
                return
            try:
                wait_fd(self.fd, select.POLLOUT, wake_fds)
            except Cancelled:
                return

    def free(self) -> None:
        if self.handle is not None:
            g.lib().gnutls_deinit(self.handle)
            self.handle = None
