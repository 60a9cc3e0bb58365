"""TLS credentials objects: ``tls-creds-anon``, ``tls-creds-psk``, ``tls-creds-x509`` (QEMU 7.2/9.1).

Each object has QEMU's properties (``dir``, ``endpoint``, ``verify-peer``, ``priority``, plus
``username`` for PSK and ``sanity-check``/``passwordid`` for x509; ``loaded`` reads back), and
``complete()`` loads the files of ``dir`` into GnuTLS credentials exactly as QEMU does, with its
error texts: ``ca-cert.pem``, optional ``ca-crl.pem``, ``server-cert.pem``/``server-key.pem`` or
optional ``client-cert.pem``/``client-key.pem``, optional ``dh-params.pem`` (otherwise RFC 7919's
2048-bit group, where QEMU generates parameters), and ``keys.psk`` lines ``username:hexkey``.
"""
from __future__ import annotations

import errno
import os
import threading
from typing import Any, ClassVar, Literal, overload

import emu.tls.gnutls as g
from emu.tls.base import PropSpec, UserObject
from emu.tls.errors import TlsError
from emu.tls.x509check import sanity_check

__all__ = ["TlsCreds", "TlsCredsAnon", "TlsCredsPsk", "TlsCredsX509", "ENDPOINTS", "DEFAULT_PRIORITY"]

ENDPOINTS = ("client", "server")
#: QEMU's CONFIG_TLS_PRIORITY (meson option ``tls_priority``; Debian's build keeps ``NORMAL``)
DEFAULT_PRIORITY = "NORMAL"

CA_CERT = "ca-cert.pem"
CA_CRL = "ca-crl.pem"
SERVER_CERT = "server-cert.pem"
SERVER_KEY = "server-key.pem"
CLIENT_CERT = "client-cert.pem"
CLIENT_KEY = "client-key.pem"
DH_PARAMS = "dh-params.pem"
PSKFILE = "keys.psk"
MAX_CERTS = 16

_dh_lock = threading.Lock()
_generated_dh: Any = None


def _check(ret: int, text: str) -> None:
    if ret < 0:
        raise TlsError(f"{text}: {g.strerror(ret)}")


def _glib_read(path: str) -> bytes:
    """g_file_get_contents, with GLib's error texts (raised as OSError-free TlsError text)."""
    try:
        if "\0" in path:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        with open(path, "rb") as f:
            return f.read()
    except IsADirectoryError:
        raise _GError(f"Error reading file \u201c{path}\u201d: Is a directory") from None
    except OSError as e:
        raise _GError(f"Failed to open file \u201c{path}\u201d: {os.strerror(e.errno or errno.EIO)}") from None


class _GError(Exception):
    """A GLib file error (its message is GError's)."""


def _generated_dh_params() -> Any:
    """The DH parameters used when ``dh-params.pem`` is absent. QEMU generates fresh 2048-bit
    parameters per object there (``gnutls_dh_params_generate2``), which takes from one to many
    seconds; we import RFC 7919's 2048-bit group (``ffdhe2048``, shipped by GnuTLS) instead:
    same size, instant, and a vetted safe prime. One set serves the whole process (parameters are
    public and only referenced by the credentials)."""
    global _generated_dh
    with _dh_lock:
        if _generated_dh is None:
            lib = g.lib()
            p = g.ffi.new("gnutls_dh_params_t *")
            _check(lib.gnutls_dh_params_init(p), "Unable to initialize DH parameters")
            ret = lib.gnutls_dh_params_import_raw(p[0], g.ffi.addressof(lib, "gnutls_ffdhe_2048_group_prime"),
                                                  g.ffi.addressof(lib, "gnutls_ffdhe_2048_group_generator"))
            if ret < 0:
                lib.gnutls_dh_params_deinit(p[0])
                raise TlsError(f"Unable to generate DH parameters: {g.strerror(ret)}")
            _generated_dh = p[0]
        return _generated_dh


class TlsCreds(UserObject):
    """QEMU's abstract ``tls-creds``: the common properties and file lookup."""

    type_name = "tls-creds"
    type_parent = "object"
    type_abstract = True
    PROPS: ClassVar[tuple[PropSpec, ...]] = (
        # the order QEMU 7.2's qom-list shows
        PropSpec("endpoint", "QCryptoTLSCredsEndpoint", "endpoint", ENDPOINTS),
        PropSpec("dir", "string", "dir"),
        PropSpec("verify-peer", "bool", "verify_peer"),
        PropSpec("priority", "string", "priority"),
    )
    #: what QEMU appends to the priority string for this credential type (None: nothing)
    PRIORITY_ADDITIONAL: ClassVar[str | None] = None

    def __init__(self) -> None:
        self.verify_peer = True
        self.dir: str | None = None
        self.endpoint = "client"
        self.priority: str | None = None
        self._dh_params: Any = None  # owned here (loaded from dh-params.pem), else shared/None
        self._own_dh = False
        super().__init__()

    # ---- QEMU's helpers
    @overload
    def get_path(self, filename: str, required: Literal[True]) -> str: ...

    @overload
    def get_path(self, filename: str, required: bool) -> str | None: ...

    def get_path(self, filename: str, required: bool) -> str | None:
        """qcrypto_tls_creds_get_path: ``dir/filename`` if it exists (None when optional)."""
        if self.dir is None:
            if required:
                raise TlsError("Missing 'dir' property value")
            return None
        path = f"{self.dir}/{filename}"
        try:
            if "\0" in path:  # QEMU's C string ends there: a name that cannot exist
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
            os.stat(path)
        except OSError as e:
            if e.errno == errno.ENOENT and not required:
                return None
            raise TlsError(f"Unable to access credentials {path}: {os.strerror(e.errno or errno.EIO)}") from None
        return path

    def load_dh_params(self, filename: str | None) -> Any:
        """qcrypto_tls_creds_get_dh_params_file."""
        if filename is None:
            self._dh_params, self._own_dh = _generated_dh_params(), False
            return self._dh_params
        try:
            contents = _glib_read(filename)
        except _GError as e:
            raise TlsError(str(e)) from None
        lib = g.lib()
        p = g.ffi.new("gnutls_dh_params_t *")
        _check(lib.gnutls_dh_params_init(p), "Unable to initialize DH parameters")
        buf = g.ffi.new("unsigned char[]", contents)
        datum = g.ffi.new("gnutls_datum_t *", {"data": buf, "size": len(contents)})
        ret = lib.gnutls_dh_params_import_pkcs3(p[0], datum, g.X509_FMT_PEM)
        if ret < 0:
            lib.gnutls_dh_params_deinit(p[0])
            raise TlsError(f"Unable to load DH parameters from {filename}: {g.strerror(ret)}")
        self._dh_params, self._own_dh = p[0], True
        return p[0]

    def _free_dh(self) -> None:
        if self._dh_params is not None and self._own_dh:
            g.lib().gnutls_dh_params_deinit(self._dh_params)
        self._dh_params, self._own_dh = None, False

    # ---- what sessions use
    @property
    def loaded(self) -> bool:
        return self.handle() is not None

    def handle(self) -> Any:
        """The GnuTLS credentials handle for this endpoint (None until loaded)."""
        raise NotImplementedError

    @property
    def credentials_type(self) -> int:
        raise NotImplementedError

    def session_priority(self) -> str:
        """The priority string QEMU's tlssession.c builds for this credential type."""
        base = self.priority if self.priority is not None else DEFAULT_PRIORITY
        return base if self.PRIORITY_ADDITIONAL is None else f"{base}:{self.PRIORITY_ADDITIONAL}"

    def complete(self) -> None:
        try:
            self.load()
        except BaseException:
            self.finalize()
            raise

    def load(self) -> None:
        raise NotImplementedError


_LOADED = PropSpec("loaded", "bool", "loaded", writable=False)


class _SidedCreds(TlsCreds):
    """Credentials GnuTLS keeps as one type per side (anon, psk): a server handle or a client one.

    ``GNUTLS_KIND`` names the family of ``gnutls_<kind>_{allocate,free}_<side>_credentials``.
    """

    GNUTLS_KIND: ClassVar[str]

    def __init__(self) -> None:
        self._server: Any = None
        self._client: Any = None
        super().__init__()

    def handle(self) -> Any:
        return self._server if self.endpoint == "server" else self._client

    def _allocate(self, side: str) -> Any:
        """A new ``side`` ("server" or "client") credentials handle (QEMU's error text)."""
        p = g.ffi.new(f"gnutls_{self.GNUTLS_KIND}_{side}_credentials_t *")
        _check(getattr(g.lib(), f"gnutls_{self.GNUTLS_KIND}_allocate_{side}_credentials")(p),
               "Cannot allocate credentials")
        return p[0]

    def finalize(self) -> None:
        lib = g.lib()
        if self._client is not None:
            getattr(lib, f"gnutls_{self.GNUTLS_KIND}_free_client_credentials")(self._client)
        if self._server is not None:
            getattr(lib, f"gnutls_{self.GNUTLS_KIND}_free_server_credentials")(self._server)
        self._client = self._server = None
        self._free_dh()


class TlsCredsAnon(_SidedCreds):
    """``tls-creds-anon``: anonymous DH (no authentication)."""

    type_name = "tls-creds-anon"
    type_parent = "tls-creds"
    PROPS = TlsCreds.PROPS + (_LOADED,)
    PRIORITY_ADDITIONAL = "+ANON-DH"
    GNUTLS_KIND = "anon"

    @property
    def credentials_type(self) -> int:
        return g.CRD_ANON

    def load(self) -> None:
        if self.endpoint == "server":
            dhparams = self.get_path(DH_PARAMS, False)
            self._server = self._allocate("server")
            g.lib().gnutls_anon_set_server_dh_params(self._server, self.load_dh_params(dhparams))
        else:
            self._client = self._allocate("client")


class TlsCredsPsk(_SidedCreds):
    """``tls-creds-psk``: pre-shared keys from ``dir/keys.psk`` (client user default ``qemu``)."""

    type_name = "tls-creds-psk"
    type_parent = "tls-creds"
    PROPS = TlsCreds.PROPS + (PropSpec("username", "string", "username"), _LOADED)
    PRIORITY_ADDITIONAL = "+ECDHE-PSK:+DHE-PSK:+PSK"
    GNUTLS_KIND = "psk"

    def __init__(self) -> None:
        self.username: str | None = None
        super().__init__()

    @property
    def credentials_type(self) -> int:
        return g.CRD_PSK

    @staticmethod
    def lookup_key(pskfile: str, username: str) -> bytes:
        """The hex key of ``username`` in a ``keys.psk`` file (QEMU's lookup_key)."""
        try:
            content = _glib_read(pskfile)
        except _GError as e:
            raise TlsError(f"Cannot read PSK file {pskfile}: {e}") from None
        prefix = username.encode() + b":"
        for line in content.split(b"\n"):
            if line.startswith(prefix):
                return line[len(prefix):].split(b"\0", 1)[0]
        raise TlsError(f"Username {username} not found in PSK file {pskfile}")

    def load(self) -> None:
        lib = g.lib()
        if self.endpoint == "server":
            if self.username is not None:
                raise TlsError("username should not be set when endpoint=server")
            dhparams = self.get_path(DH_PARAMS, False)
            pskfile = self.get_path(PSKFILE, True)
            self._server = self._allocate("server")
            dh = self.load_dh_params(dhparams)
            _check(lib.gnutls_psk_set_server_credentials_file(self._server, pskfile.encode()),
                   "Cannot set PSK server credentials")
            lib.gnutls_psk_set_server_dh_params(self._server, dh)
        else:
            pskfile = self.get_path(PSKFILE, True)
            username = self.username if self.username is not None else "qemu"
            key = self.lookup_key(pskfile, username)
            self._client = self._allocate("client")
            keybuf = g.ffi.new("unsigned char[]", key)
            datum = g.ffi.new("gnutls_datum_t *", {"data": keybuf, "size": len(key)})
            _check(lib.gnutls_psk_set_client_credentials(self._client, username.encode(), datum, g.PSK_KEY_HEX),
                   "Cannot set PSK client credentials")


class TlsCredsX509(TlsCreds):
    """``tls-creds-x509``: certificates; ``sanity-check`` (default on) checks them at load."""

    type_name = "tls-creds-x509"
    type_parent = "tls-creds"
    PROPS = TlsCreds.PROPS + (PropSpec("sanity-check", "bool", "sanity_check"),
                              PropSpec("passwordid", "string", "passwordid"), _LOADED)
    PRIORITY_ADDITIONAL = None

    def __init__(self) -> None:
        self.sanity_check = True
        self.passwordid: str | None = None
        self._data: Any = None
        super().__init__()

    @property
    def credentials_type(self) -> int:
        return g.CRD_CERTIFICATE

    def handle(self) -> Any:
        return self._data

    def load(self) -> None:
        if self.endpoint == "server":
            cacert = self.get_path(CA_CERT, True)
            cacrl = self.get_path(CA_CRL, False)
            cert: str | None = self.get_path(SERVER_CERT, True)
            key: str | None = self.get_path(SERVER_KEY, True)
            dhparams = self.get_path(DH_PARAMS, False)
        else:
            cacert = self.get_path(CA_CERT, True)
            cacrl = None
            cert = self.get_path(CLIENT_CERT, False)
            key = self.get_path(CLIENT_KEY, False)
            dhparams = None
        if self.sanity_check:
            sanity_check(self.endpoint == "server", cacert, cert)
        lib = g.lib()
        p = g.ffi.new("gnutls_certificate_credentials_t *")
        ret = lib.gnutls_certificate_allocate_credentials(p)
        if ret < 0:
            raise TlsError(f"Cannot allocate credentials: '{g.strerror(ret)}'")
        self._data = p[0]
        ret = lib.gnutls_certificate_set_x509_trust_file(self._data, cacert.encode(), g.X509_FMT_PEM)
        if ret < 0:
            raise TlsError(f"Cannot load CA certificate '{cacert}': {g.strerror(ret)}")
        if cert is not None and key is not None:
            if self.passwordid is not None:
                # QEMU looks the password up in a 'secret' object; secrets are not implemented
                raise TlsError(f"No secret with id '{self.passwordid}'")
            ret = lib.gnutls_certificate_set_x509_key_file2(self._data, cert.encode(), key.encode(),
                                                            g.X509_FMT_PEM, g.ffi.NULL, 0)
            if ret < 0:
                raise TlsError(f"Cannot load certificate '{cert}' & key '{key}': {g.strerror(ret)}")
        if cacrl is not None:
            ret = lib.gnutls_certificate_set_x509_crl_file(self._data, cacrl.encode(), g.X509_FMT_PEM)
            if ret < 0:
                raise TlsError(f"Cannot load CRL '{cacrl}': {g.strerror(ret)}")
        if self.endpoint == "server":
            lib.gnutls_certificate_set_dh_params(self._data, self.load_dh_params(dhparams))

    def finalize(self) -> None:
        if self._data is not None:
            g.lib().gnutls_certificate_free_credentials(self._data)
        self._data = None
        self._free_dh()
