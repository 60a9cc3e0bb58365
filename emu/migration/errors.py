"""The base of the migration errors whose text is QEMU's (``address.MigrationAddressError``,
``transport.TransportError``): ``message``, and ``desc`` for QMP, are that text; and the
manager's refusal and cancellation signals, which the postcopy modules raise too.

A leaf of ``emu.migration``: it imports nothing.
"""
from __future__ import annotations

__all__ = ["MigrationCancelled", "MigrationError", "QemuTextError"]


class QemuTextError(Exception):
    """An error whose ``message`` is QEMU's exact text; QMP reports it as ``desc``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def desc(self) -> str:
        return self.message


class MigrationError(Exception):
    """A QMP-level refusal of a migration command; the text is QEMU's."""


class MigrationCancelled(Exception):
    """``migrate_cancel`` was noticed by the outgoing run: it ends ``cancelled``, not ``failed``."""
