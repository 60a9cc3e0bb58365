"""TLS for migration, as QEMU does it with GnuTLS: credentials objects, authz, sessions, tunnels.

The submodules, lowest layer first; each imports only modules above it in this list (directly,
never through this package), so the package has no import cycle:

* ``errors``    :class:`TlsError`
* ``gnutls``    the cffi ABI binding of ``libgnutls.so.30`` (opened lazily)
* ``base``      user-creatable QOM objects and their typed properties
* ``authz``     ``authz-simple``
* ``x509check`` the x509 ``sanity-check`` made at load time
* ``creds``     ``tls-creds-anon``, ``tls-creds-psk``, ``tls-creds-x509`` (loading ``dir``)
* ``registry``  ``/objects``: object-add/object-del, migration's credentials lookup
* ``session``   one GnuTLS session over an fd: handshake with cancel, QEMU's peer checks
* ``tunnel``    ``tls_wrap_fd``: a handshaken session pumped to a plaintext socketpair end

This package only re-exports the public names other packages use (``emu.tls.TlsError``, ...).
Every failure is a :class:`TlsError` whose message is QEMU's text.
"""
from __future__ import annotations

from emu.tls.errors import TlsError
from emu.tls.registry import (
    OBJECT_TYPES,
    ObjectRegistry,
    authz_is_allowed_by_id,
    create_object,
    get_authz,
    get_tls_creds,
    objects_registry,
)
from emu.tls.tunnel import TlsTunnel, tls_wrap_fd

__all__ = ["TlsError", "OBJECT_TYPES", "ObjectRegistry", "objects_registry", "create_object", "get_tls_creds",
           "get_authz", "authz_is_allowed_by_id", "TlsTunnel", "tls_wrap_fd"]
