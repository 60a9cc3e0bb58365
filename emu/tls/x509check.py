"""QEMU's x509 ``sanity-check``: our own certificate and the CA list, checked at load time.

Times, basic constraints, key usage, key purpose, and our certificate against the CA list, with
QEMU's texts (crypto/tlscredsx509.c), using GnuTLS's own certificate parser.
"""
from __future__ import annotations

import os
import time
from typing import Any

import emu.tls.gnutls as g
from emu.tls.errors import TlsError

__all__ = ["sanity_check", "load_cert", "cert_reason"]

MAX_CERTS = 16


def cert_reason(status: int) -> str:
    """The reason QEMU gives for a non-zero GnuTLS verification status (last match wins)."""
    reason = "Invalid certificate"
    if status & g.CERT_INVALID:
        reason = "The certificate is not trusted"
    if status & g.CERT_SIGNER_NOT_FOUND:
        reason = "The certificate hasn't got a known issuer"
    if status & g.CERT_REVOKED:
        reason = "The certificate has been revoked"
    if status & g.CERT_INSECURE_ALGORITHM:
        reason = "The certificate uses an insecure algorithm"
    return reason


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TlsError(f"Cannot load CA cert list {path}: Failed to open file \u201c{path}\u201d: "
                       f"{os.strerror(e.errno or 5)}") from None
    return data.split(b"\0", 1)[0]  # QEMU passes strlen(buf) bytes


def load_cert(path: str, is_server: bool) -> Any:
    lib = g.lib()
    p = g.ffi.new("gnutls_x509_crt_t *")
    ret = lib.gnutls_x509_crt_init(p)
    if ret < 0:
        raise TlsError(f"Unable to initialize certificate: {g.strerror(ret)}")
    try:
        data = _read(path)
        buf = g.ffi.new("unsigned char[]", data)
        datum = g.ffi.new("gnutls_datum_t *", {"data": buf, "size": len(data)})
        ret = lib.gnutls_x509_crt_import(p[0], datum, g.X509_FMT_PEM)
        if ret < 0:
            kind = "server" if is_server else "client"
            raise TlsError(f"Unable to import {kind} certificate {path}: {g.strerror(ret)}")
    except BaseException:
        lib.gnutls_x509_crt_deinit(p[0])
        raise
    return p[0]


def _load_ca_list(path: str) -> list[Any]:
    lib = g.lib()
    data = _read(path)
    certs = g.ffi.new("gnutls_x509_crt_t[]", MAX_CERTS)
    count = g.ffi.new("unsigned int *", MAX_CERTS)
    buf = g.ffi.new("unsigned char[]", data)
    datum = g.ffi.new("gnutls_datum_t *", {"data": buf, "size": len(data)})
    if lib.gnutls_x509_crt_list_import(certs, count, datum, g.X509_FMT_PEM, 0) < 0:
        raise TlsError(f"Unable to import CA certificate list {path}")
    return [certs[i] for i in range(count[0])]


def _check_times(cert: Any, path: str, is_server: bool, is_ca: bool) -> None:
    lib = g.lib()
    now = int(time.time())
    who = "CA" if is_ca else ("server" if is_server else "client")
    if lib.gnutls_x509_crt_get_expiration_time(cert) < now:
        raise TlsError(f"The {who} certificate {path} has expired")
    if lib.gnutls_x509_crt_get_activation_time(cert) > now:
        raise TlsError(f"The {who} certificate {path} is not yet active")


def _check_basic_constraints(cert: Any, path: str, is_server: bool, is_ca: bool) -> None:
    status = g.lib().gnutls_x509_crt_get_basic_constraints(cert, g.ffi.NULL, g.ffi.NULL, g.ffi.NULL)
    if status > 0:
        if not is_ca:
            need = "server" if is_server else "client"
            raise TlsError(f"The certificate {path} basic constraints show a CA, but we need one for a {need}")
    elif status == 0:
        if is_ca:
            raise TlsError(f"The certificate {path} basic constraints do not show a CA")
    elif status == g.E_REQUESTED_DATA_NOT_AVAILABLE:
        if is_ca:
            raise TlsError(f"The certificate {path} is missing basic constraints for a CA")
    else:
        raise TlsError(f"Unable to query certificate {path} basic constraints: {g.strerror(status)}")


def _check_key_usage(cert: Any, path: str, is_ca: bool) -> None:
    usage = g.ffi.new("unsigned int *")
    critical = g.ffi.new("unsigned int *")
    status = g.lib().gnutls_x509_crt_get_key_usage(cert, usage, critical)
    value = usage[0]
    if status < 0:
        if status != g.E_REQUESTED_DATA_NOT_AVAILABLE:
            raise TlsError(f"Unable to query certificate {path} key usage: {g.strerror(status)}")
        value = g.KEY_KEY_CERT_SIGN if is_ca else g.KEY_DIGITAL_SIGNATURE
    if is_ca:
        if not value & g.KEY_KEY_CERT_SIGN and critical[0]:
            raise TlsError(f"Certificate {path} usage does not permit certificate signing")
    elif not value & g.KEY_DIGITAL_SIGNATURE and critical[0]:
        raise TlsError(f"Certificate {path} usage does not permit digital signature")


def _check_key_purpose(cert: Any, path: str, is_server: bool) -> None:
    lib = g.lib()
    allow_client = allow_server = critical = False
    i = 0
    while True:
        size = g.ffi.new("size_t *", 0)
        status = lib.gnutls_x509_crt_get_key_purpose_oid(cert, i, g.ffi.NULL, size, g.ffi.NULL)
        if status == g.E_REQUESTED_DATA_NOT_AVAILABLE:
            if i == 0:
                allow_client = allow_server = True
            break
        if status != g.E_SHORT_MEMORY_BUFFER:
            raise TlsError(f"Unable to query certificate {path} key purpose: {g.strerror(status)}")
        buf = g.ffi.new("char[]", size[0])
        crit = g.ffi.new("unsigned int *")
        status = lib.gnutls_x509_crt_get_key_purpose_oid(cert, i, buf, size, crit)
        if status < 0:
            raise TlsError(f"Unable to query certificate {path} key purpose: {g.strerror(status)}")
        critical = critical or bool(crit[0])
        oid = g.ffi.string(buf).decode()
        if oid == g.KP_TLS_WWW_SERVER:
            allow_server = True
        elif oid == g.KP_TLS_WWW_CLIENT:
            allow_client = True
        elif oid == g.KP_ANY:
            allow_client = allow_server = True
        i += 1
    if is_server and not allow_server and critical:
        raise TlsError(f"Certificate {path} purpose does not allow use with a TLS server")
    if not is_server and not allow_client and critical:
        raise TlsError(f"Certificate {path} purpose does not allow use with a TLS client")


def _check_cert(cert: Any, path: str, is_server: bool, is_ca: bool) -> None:
    _check_times(cert, path, is_server, is_ca)
    _check_basic_constraints(cert, path, is_server, is_ca)
    _check_key_usage(cert, path, is_ca)
    if not is_ca:
        _check_key_purpose(cert, path, is_server)


def _check_pair(cert: Any, path: str, cacerts: list[Any], ca_path: str, is_server: bool) -> None:
    lib = g.lib()
    certs = g.ffi.new("gnutls_x509_crt_t[]", [cert])
    cas = g.ffi.new("gnutls_x509_crt_t[]", cacerts)
    status = g.ffi.new("unsigned int *")
    if lib.gnutls_x509_crt_list_verify(certs, 1, cas, len(cacerts), g.ffi.NULL, 0, 0, status) < 0:
        kind = "server" if is_server else "client"
        raise TlsError(f"Unable to verify {kind} certificate {path} against CA certificate {ca_path}")
    if status[0] != 0:
        raise TlsError(f"Our own certificate {path} failed validation against {ca_path}: {cert_reason(status[0])}")


def sanity_check(is_server: bool, ca_path: str, cert_path: str | None) -> None:
    """qcrypto_tls_creds_x509_sanity_check (TlsError with QEMU's text)."""
    lib = g.lib()
    cert = None
    cacerts: list[Any] = []
    try:
        if cert_path is not None and os.access(cert_path, os.R_OK):
            cert = load_cert(cert_path, is_server)
        if os.access(ca_path, os.R_OK):
            cacerts = _load_ca_list(ca_path)
        if cert is not None:
            _check_cert(cert, cert_path or "", is_server, False)
        for ca in cacerts:
            _check_cert(ca, ca_path, is_server, True)
        if cert is not None and cacerts:
            _check_pair(cert, cert_path or "", cacerts, ca_path, is_server)
    finally:
        if cert is not None:
            lib.gnutls_x509_crt_deinit(cert)
        for ca in cacerts:
            lib.gnutls_x509_crt_deinit(ca)
