"""The one error class of ``emu.tls``: its message is QEMU's text (``Error **`` style)."""
from __future__ import annotations

__all__ = ["TlsError"]


class TlsError(Exception):
    """A TLS, credentials or user-object failure; ``str(e)`` is QEMU's message."""
