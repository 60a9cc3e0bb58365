"""The GnuTLS binding: ``libgnutls.so.30`` opened with cffi in ABI mode, lazily.

This module owns the C declarations (only what ``emu.tls`` uses), the library handle and the
constants copied from GnuTLS 3.x's public headers (their values are part of the stable ABI). No
gnutls headers are needed at install time. The library is opened on first use of :func:`lib`;
when it cannot be loaded, :class:`GnuTLSUnavailable` says so in plain words.

cffi releases the GIL around every C call, so handshakes and record I/O in pump threads run in
parallel with the rest of the emulator.
"""
from __future__ import annotations

import threading
from typing import Any

import cffi

from emu.tls.errors import TlsError

__all__ = ["ffi", "lib", "strerror", "GnuTLSUnavailable"]

CDEF = """
typedef struct { unsigned char *data; unsigned int size; } gnutls_datum_t;
typedef void *gnutls_session_t;
typedef void *gnutls_certificate_credentials_t;
typedef void *gnutls_psk_server_credentials_t;
typedef void *gnutls_psk_client_credentials_t;
typedef void *gnutls_anon_server_credentials_t;
typedef void *gnutls_anon_client_credentials_t;
typedef void *gnutls_dh_params_t;
typedef void *gnutls_x509_crt_t;
typedef long time_t;

int gnutls_global_init(void);
const char *gnutls_strerror(int error);
const char *gnutls_check_version(const char *req_version);

int gnutls_init(gnutls_session_t *session, unsigned int flags);
void gnutls_deinit(gnutls_session_t session);
int gnutls_priority_set_direct(gnutls_session_t session, const char *priorities, const char **err_pos);
int gnutls_credentials_set(gnutls_session_t session, int type, void *cred);
void gnutls_certificate_server_set_request(gnutls_session_t session, int req);
void gnutls_transport_set_int2(gnutls_session_t session, int r, int s);
int gnutls_handshake(gnutls_session_t session);
void gnutls_handshake_set_timeout(gnutls_session_t session, unsigned int ms);
int gnutls_record_get_direction(gnutls_session_t session);
ssize_t gnutls_record_send(gnutls_session_t session, const void *data, size_t data_size);
ssize_t gnutls_record_recv(gnutls_session_t session, void *data, size_t data_size);
size_t gnutls_record_check_pending(gnutls_session_t session);
void gnutls_record_cork(gnutls_session_t session);
int gnutls_record_uncork(gnutls_session_t session, unsigned int flags);
int gnutls_bye(gnutls_session_t session, int how);

int gnutls_certificate_allocate_credentials(gnutls_certificate_credentials_t *res);
void gnutls_certificate_free_credentials(gnutls_certificate_credentials_t sc);
int gnutls_certificate_set_x509_trust_file(gnutls_certificate_credentials_t cred, const char *cafile, int type);
int gnutls_certificate_set_x509_key_file2(gnutls_certificate_credentials_t res, const char *certfile,
                                          const char *keyfile, int type, const char *pass, unsigned int flags);
int gnutls_certificate_set_x509_crl_file(gnutls_certificate_credentials_t res, const char *crlfile, int type);
void gnutls_certificate_set_dh_params(gnutls_certificate_credentials_t res, gnutls_dh_params_t dh_params);
int gnutls_certificate_verify_peers2(gnutls_session_t session, unsigned int *status);
const gnutls_datum_t *gnutls_certificate_get_peers(gnutls_session_t session, unsigned int *list_size);

int gnutls_psk_allocate_server_credentials(gnutls_psk_server_credentials_t *sc);
void gnutls_psk_free_server_credentials(gnutls_psk_server_credentials_t sc);
int gnutls_psk_set_server_credentials_file(gnutls_psk_server_credentials_t res, const char *password_file);
void gnutls_psk_set_server_dh_params(gnutls_psk_server_credentials_t res, gnutls_dh_params_t dh_params);
int gnutls_psk_allocate_client_credentials(gnutls_psk_client_credentials_t *sc);
void gnutls_psk_free_client_credentials(gnutls_psk_client_credentials_t sc);
int gnutls_psk_set_client_credentials(gnutls_psk_client_credentials_t res, const char *username,
                                      const gnutls_datum_t *key, int flags);
const char *gnutls_psk_server_get_username(gnutls_session_t session);

int gnutls_anon_allocate_server_credentials(gnutls_anon_server_credentials_t *sc);
void gnutls_anon_free_server_credentials(gnutls_anon_server_credentials_t sc);
void gnutls_anon_set_server_dh_params(gnutls_anon_server_credentials_t res, gnutls_dh_params_t dh_params);
int gnutls_anon_allocate_client_credentials(gnutls_anon_client_credentials_t *sc);
void gnutls_anon_free_client_credentials(gnutls_anon_client_credentials_t sc);

int gnutls_dh_params_init(gnutls_dh_params_t *dh_params);
void gnutls_dh_params_deinit(gnutls_dh_params_t dh_params);
int gnutls_dh_params_generate2(gnutls_dh_params_t params, unsigned int bits);
int gnutls_dh_params_import_raw(gnutls_dh_params_t dh_params, const gnutls_datum_t *prime,
                                const gnutls_datum_t *generator);
extern gnutls_datum_t gnutls_ffdhe_2048_group_prime;  /* const in C; read only here */
extern gnutls_datum_t gnutls_ffdhe_2048_group_generator;
int gnutls_dh_params_import_pkcs3(gnutls_dh_params_t params, const gnutls_datum_t *pkcs3_params, int format);

int gnutls_x509_crt_init(gnutls_x509_crt_t *cert);
void gnutls_x509_crt_deinit(gnutls_x509_crt_t cert);
int gnutls_x509_crt_import(gnutls_x509_crt_t cert, const gnutls_datum_t *data, int format);
int gnutls_x509_crt_list_import(gnutls_x509_crt_t *certs, unsigned int *cert_max, const gnutls_datum_t *data,
                                int format, unsigned int flags);
int gnutls_x509_crt_list_verify(const gnutls_x509_crt_t *cert_list, unsigned cert_list_length,
                                const gnutls_x509_crt_t *CA_list, unsigned CA_list_length,
                                const void *CRL_list, unsigned CRL_list_length,
                                unsigned int flags, unsigned int *verify);
int gnutls_x509_crt_get_dn(gnutls_x509_crt_t cert, char *buf, size_t *buf_size);
unsigned gnutls_x509_crt_check_hostname(gnutls_x509_crt_t cert, const char *hostname);
time_t gnutls_x509_crt_get_expiration_time(gnutls_x509_crt_t cert);
time_t gnutls_x509_crt_get_activation_time(gnutls_x509_crt_t cert);
int gnutls_x509_crt_get_basic_constraints(gnutls_x509_crt_t cert, unsigned int *critical, unsigned int *ca,
                                          int *pathlen);
int gnutls_x509_crt_get_key_usage(gnutls_x509_crt_t cert, unsigned int *key_usage, unsigned int *critical);
int gnutls_x509_crt_get_key_purpose_oid(gnutls_x509_crt_t cert, unsigned indx, void *oid, size_t *oid_size,
                                        unsigned int *critical);
"""

# ---- constants (gnutls/gnutls.h, gnutls/x509.h; GnuTLS 3.x ABI)
E_SUCCESS = 0
E_AGAIN = -28
E_INTERRUPTED = -52
E_SHORT_MEMORY_BUFFER = -51
E_REQUESTED_DATA_NOT_AVAILABLE = -56
E_PREMATURE_TERMINATION = -110
E_REHANDSHAKE = -37
E_WARNING_ALERT_RECEIVED = -16

SERVER = 1
CLIENT = 1 << 1
NONBLOCK = 1 << 3
NO_SIGNAL = 1 << 6

CRD_CERTIFICATE = 1
CRD_ANON = 2
CRD_PSK = 4

CERT_REQUEST = 1
SHUT_RDWR = 0
SHUT_WR = 1

X509_FMT_DER = 0
X509_FMT_PEM = 1
PSK_KEY_HEX = 1

CERT_INVALID = 1 << 1
CERT_REVOKED = 1 << 5
CERT_SIGNER_NOT_FOUND = 1 << 6
CERT_INSECURE_ALGORITHM = 1 << 8

KEY_DIGITAL_SIGNATURE = 128
KEY_KEY_CERT_SIGN = 4
KP_TLS_WWW_SERVER = "1.3.6.1.5.5.7.3.1"
KP_TLS_WWW_CLIENT = "1.3.6.1.5.5.7.3.2"
KP_ANY = "2.5.29.37.0"

LIBRARY = "libgnutls.so.30"

ffi = cffi.FFI()
ffi.cdef(CDEF)

_lib: Any = None
_lock = threading.Lock()


class GnuTLSUnavailable(TlsError):
    """The GnuTLS shared library could not be loaded."""


def lib() -> Any:
    """The opened library (opened and initialised on first call)."""
    global _lib
    if _lib is None:
        with _lock:
            if _lib is None:
                try:
                    handle = ffi.dlopen(LIBRARY)
                except OSError as e:
                    raise GnuTLSUnavailable(
                        f"TLS support requires GnuTLS: cannot load {LIBRARY} ({e}); "
                        "install the libgnutls30 package") from None
                ret = handle.gnutls_global_init()
                if ret < 0:
                    raise GnuTLSUnavailable(f"GnuTLS initialisation failed: {ret}")
                _lib = handle
    return _lib


def strerror(code: int) -> str:
    """GnuTLS's text for an error code (what QEMU puts after ``%s``)."""
    return ffi.string(lib().gnutls_strerror(code)).decode("utf-8", "replace")


def version() -> str:
    """The loaded library's version string."""
    return ffi.string(lib().gnutls_check_version(ffi.NULL)).decode()
