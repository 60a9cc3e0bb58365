"""QEMU's authorization objects: the abstract ``authz`` type and ``authz-simple``.

The TLS session asks an authz object whether a peer identity (an x509 distinguished name as
GnuTLS formats it) is allowed; ``authz-simple`` allows exactly one identity.
"""
from __future__ import annotations

from emu.tls.base import PropSpec, UserObject
from emu.tls.errors import TlsError

__all__ = ["QAuthZ", "AuthzSimple"]


class QAuthZ(UserObject):
    """Base of the authorization drivers (QEMU's ``authz``)."""

    type_name = "authz"
    type_parent = "object"
    type_abstract = True

    def is_allowed(self, identity: str) -> bool:
        raise NotImplementedError


class AuthzSimple(QAuthZ):
    """``authz-simple``: one allowed identity, compared exactly."""

    type_name = "authz-simple"
    type_parent = "authz"
    PROPS = (PropSpec("identity", "string", "identity"),)

    def __init__(self) -> None:
        self.identity: str | None = None
        super().__init__()

    def complete(self) -> None:
        if self.identity is None:
            raise TlsError("The 'identity' property must be set")

    def is_allowed(self, identity: str) -> bool:
        return identity == self.identity
