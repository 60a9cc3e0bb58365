"""File descriptors handed to the emulator: ``getfd`` names and ``add-fd``/``-add-fd`` fd sets.

Fds arrive with SCM_RIGHTS on a QMP socket (stashed by the session) or are inherited at start-up
(``-add-fd fd=N,set=S``). Named fds belong to one monitor, as in QEMU; fd sets are global, and a
consumer (the migration ``fd:`` and ``file:/dev/fdset/N`` transports) takes a dup of a member.

A leaf of the monitor: it imports only ``emu.errors`` (the system that owns the fd sets imports it).
"""
from __future__ import annotations

import os
import threading

from emu.errors import QapiError


class FdSet:
    __slots__ = ("id", "fds", "opaque")

    def __init__(self, fdset_id: int) -> None:
        self.id = fdset_id
        self.fds: list[int] = []
        self.opaque: dict[int, str] = {}


class FdSets:
    """The process-wide fd sets (QEMU's mon_fdsets), kept sorted by id."""

    def __init__(self) -> None:
        self._sets: dict[int, FdSet] = {}
        self._lock = threading.Lock()

    def add(self, fd: int, fdset_id: int | None = None, opaque: str | None = None) -> tuple[int, int]:
        """Adds an fd (ownership passes to the set); returns (fdset-id, fd)."""
        with self._lock:
            if fdset_id is None:
                fdset_id = 0
                while fdset_id in self._sets:  # the lowest id not in use
                    fdset_id += 1
            fdset = self._sets.get(fdset_id)
            if fdset is None:
                fdset = self._sets[fdset_id] = FdSet(fdset_id)
            fdset.fds.append(fd)
            if opaque is not None:
                fdset.opaque[fd] = opaque
            return fdset_id, fd

    def remove(self, fdset_id: int, fd: int | None = None) -> None:
        with self._lock:
            fdset = self._sets.get(fdset_id)
            if fdset is not None:
                victims = list(fdset.fds) if fd is None else [f for f in fdset.fds if f == fd]
                if victims:
                    for f in victims:
                        fdset.fds.remove(f)
                        fdset.opaque.pop(f, None)
                        _close(f)
                    if not fdset.fds:
                        del self._sets[fdset_id]
                    return
        what = f"fdset-id:{fdset_id}" if fd is None else f"fdset-id:{fdset_id}, fd:{fd}"
        raise QapiError(f"File descriptor named '{what}' not found")

    def query(self) -> list[dict[str, object]]:
        with self._lock:
            out = []
            for fdset_id in sorted(self._sets):
                fdset = self._sets[fdset_id]
                fds = []
                for fd in fdset.fds:
                    info: dict[str, object] = {"fd": fd}
                    if fd in fdset.opaque:
                        info["opaque"] = fdset.opaque[fd]
                    fds.append(info)
                out.append({"fdset-id": fdset_id, "fds": fds})
            return out

    def dup_member(self, fdset_id: int, flags: int) -> int:
        """A dup of a member whose flags match ``flags`` (for ``/dev/fdset/N``): the same access
        mode and the same O_DIRECT, as QEMU's monitor_fdset_flags_match (an O_RDWR member does
        not serve an O_WRONLY open)."""
        import fcntl

        direct = getattr(os, "O_DIRECT", 0)
        want = flags & (os.O_ACCMODE | direct)
        with self._lock:
            fdset = self._sets.get(fdset_id)
            for fd in fdset.fds if fdset else []:
                if fcntl.fcntl(fd, fcntl.F_GETFL) & (os.O_ACCMODE | direct) == want:
                    return os.dup(fd)
        raise OSError(f"fdset {fdset_id} has no fd with matching access mode")

    def close_all(self) -> None:
        with self._lock:
            for fdset in self._sets.values():
                for fd in fdset.fds:
                    _close(fd)
            self._sets.clear()


class NamedFds:
    """One monitor's ``getfd`` names."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def set(self, name: str, fd: int) -> None:
        if name[:1].isdigit():
            _close(fd)
            raise QapiError("Parameter 'fdname' expects a name not starting with a digit")
        old = self._fds.get(name)
        if old is not None:
            _close(old)  # re-using a name replaces (and closes) the previous fd
        self._fds[name] = fd

    def close(self, name: str) -> None:
        fd = self._fds.pop(name, None)
        if fd is None:
            raise QapiError(f"File descriptor named '{name}' not found")
        _close(fd)

    def take(self, name: str) -> int | None:
        """Removes and returns the named fd (a consumer such as ``migrate fd:NAME`` owns it then)."""
        return self._fds.pop(name, None)

    def close_all(self) -> None:
        for fd in self._fds.values():
            _close(fd)
        self._fds.clear()


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
