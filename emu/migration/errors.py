"""The base of the migration errors whose text is QEMU's (``address.MigrationAddressError``,
``transport.TransportError``): ``message``, and ``desc`` for QMP, are that text.

A leaf of ``emu.migration``: it imports nothing.
"""
from __future__ import annotations

__all__ = ["QemuTextError"]


class QemuTextError(Exception):
    """An error whose ``message`` is QEMU's exact text; QMP reports it as ``desc``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def desc(self) -> str:
        return self.message
