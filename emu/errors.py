"""Error types that cross layers: the QAPI error a QMP command fails with.

A leaf: it imports nothing from ``emu``, so the machine state and the services (migration
parameters, the running system's control surface) raise the monitor's error without importing
the monitor.
"""
from __future__ import annotations

__all__ = ["QapiError"]


class QapiError(Exception):
    """A QMP error reply: ``{"error": {"class": cls, "desc": desc}}`` (QEMU's ``Error **`` of a QMP command).

    Raise it from command handlers and from the machine-level functions they call. ``cls`` is one
    of QEMU's ``QapiErrorClass`` names (``GenericError``, ``CommandNotFound``,
    ``DeviceNotActive``, ``DeviceNotFound``, ``KVMMissingCap``).
    """

    def __init__(self, desc: str, cls: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.cls = cls

    def __repr__(self) -> str:
        return f"QapiError({self.desc!r}, {self.cls!r})"
