"""userfaultfd for the destination of a postcopy migration (QEMU's postcopy-ram.c, host side).

Guest RAM registered with a :class:`Userfault` in MISSING mode: a thread that touches a page nobody
has placed yet blocks in the kernel, and a fault event is queued on the userfaultfd. The fault
thread sleeps in :func:`wait_readable` and reads those events (:meth:`Userfault.read_faults`); the
loading thread places pages atomically (:meth:`Userfault.place`, :meth:`Userfault.place_zero`),
which wakes the waiters. :func:`discard` makes pages missing again. The work is the C core's
(``csrc/uffd.c``), called without the GIL.

:func:`unsupported_reason` says whether this host can do postcopy at all, in QEMU's words.
"""
from __future__ import annotations

import errno
import functools
import mmap
import os
import select
from types import TracebackType
from typing import Any

from emu._native import ffi, lib

__all__ = ["PAGE_SIZE", "FEATURES", "Userfault", "UserfaultError", "discard", "unsupported_reason",
           "wait_readable"]

#: userfaultfd's page size: addresses and lengths are multiples of it.
PAGE_SIZE = 4096
#: The optional features :class:`Userfault` can ask for, by name.
FEATURES: dict[str, int] = {"thread-id": int(lib.UF_FEATURE_THREAD_ID)}

_LIMIT = 1 << 64
_HINTS = {
    errno.EINVAL: "address and length must be multiples of 4096, the length non-zero",
    errno.ENOENT: "not inside a range registered with this userfaultfd",
    errno.ENOTSUP: "the range does not support UFFDIO_COPY and UFFDIO_ZEROPAGE",
}


class UserfaultError(OSError):
    """A userfaultfd operation failed; ``errno`` says why."""


def _error(code: int, what: str, hints: bool = True) -> UserfaultError:
    """The exception of errno ``code`` (the C core's return value, negated) for ``what``, with a
    hint at the usual cause of a range operation's error when ``hints``."""
    hint = _HINTS.get(code) if hints else None
    text = f"{what}: {os.strerror(code)}" + (f" ({hint})" if hint else "")
    return UserfaultError(code, text)


def _check_range(what: str, host_addr: int, length: int) -> None:
    """Raises for a range C could not even be given (negative, or past 2**64)."""
    if host_addr < 0 or length < 0 or host_addr + length > _LIMIT:
        raise _error(errno.EINVAL, what)


def _name(op: str, host_addr: int, length: int) -> str:
    return f"{op} {host_addr:#x}+{length:#x}"


class Userfault:
    """One userfaultfd (non-blocking, close-on-exec), opened with the API handshake done.

    ``features_wanted`` names optional features (see :data:`FEATURES`); those the kernel offers
    are granted (``features``). Calls are safe from several threads (the kernel serialises them)
    except :meth:`close`, which must not race with the others.
    """

    def __init__(self, features_wanted: frozenset[str] = frozenset({"thread-id"})) -> None:
        unknown = sorted(features_wanted - FEATURES.keys())
        if unknown:
            raise ValueError(f"unknown userfaultfd features {unknown}; known: {sorted(FEATURES)}")
        wanted = 0
        for name in features_wanted:
            wanted |= FEATURES[name]
        got = ffi.new("uint64_t *")
        fd = int(lib.uf_open(wanted, got))
        if fd < 0:
            raise _error(-fd, "Userfaultfd not available", hints=False)
        self._fd = fd
        #: the features granted, by name
        self.features = frozenset(name for name, bit in FEATURES.items() if int(got[0]) & bit)

    @property
    def has_thread_id(self) -> bool:
        """Fault events carry the faulting thread's id (``threading.get_native_id()``)."""
        return "thread-id" in self.features

    def fileno(self) -> int:
        """The userfaultfd (readable while a fault is pending); UserfaultError once closed."""
        if self._fd < 0:
            raise UserfaultError(errno.EBADF, "userfaultfd is closed")
        return self._fd

    def _range_op(self, op: str, call: Any, host_addr: int, length: int) -> int:
        """``call(fd, host_addr, length)`` of the C core for the range; its non-negative result,
        or :class:`UserfaultError` named after ``op``."""
        what = _name(op, host_addr, length)
        _check_range(what, host_addr, length)
        rc = int(call(self.fileno(), host_addr, length))
        if rc < 0:
            raise _error(-rc, what)
        return rc

    def register(self, host_addr: int, length: int) -> None:
        """Registers ``length`` bytes at ``host_addr`` (page aligned) in MISSING mode; transparent
        huge pages are turned off there first (a missing page must stay 4 KiB)."""
        self._range_op("UFFDIO_REGISTER", lib.uf_register, host_addr, length)

    def unregister(self, host_addr: int, length: int) -> None:
        """Unregisters the range; threads waiting on its missing pages wake up and see zeros."""
        self._range_op("UFFDIO_UNREGISTER", lib.uf_unregister, host_addr, length)

    def read_faults(self, max: int = 64) -> list[tuple[int, int]]:
        """The pending page faults, up to ``max``, without blocking: (page address, thread id),
        the thread id 0 without the ``thread-id`` feature. Empty when none is pending."""
        if max <= 0:
            return []
        addrs = ffi.new("uint64_t[]", max)
        tids = ffi.new("uint32_t[]", max)
        n = int(lib.uf_read_faults(self.fileno(), addrs, tids, max))
        if n < 0:
            raise _error(-n, "reading userfaultfd events")
        return [(int(addrs[i]), int(tids[i])) for i in range(n)]

    def place(self, host_addr: int, data: bytes | bytearray | memoryview) -> bool:
        """Places ``data`` (a multiple of 4096 bytes, passed to C without a copy) at ``host_addr``
        with UFFDIO_COPY, waking whoever waits there. True if every page was placed, False if
        some page was already present (that page is left as it was)."""
        view = memoryview(data)
        length = view.nbytes
        what = _name("UFFDIO_COPY", host_addr, length)
        _check_range(what, host_addr, length)
        fd = self.fileno()
        with ffi.from_buffer("uint8_t[]", view) as src:
            rc = int(lib.uf_place(fd, host_addr, src, length))
        if rc < 0:
            raise _error(-rc, what)
        return rc == 0

    def place_zero(self, host_addr: int, length: int) -> bool:
        """Places zero pages with UFFDIO_ZEROPAGE; True/False as :meth:`place`."""
        return self._range_op("UFFDIO_ZEROPAGE", lib.uf_place_zero, host_addr, length) == 0

    def place_run(self, host_addr: int, used_length: int, buf: bytearray | memoryview, pos: int,
                  received: bytearray) -> tuple[int, int, int]:
        """Places the run of CONTINUE ZERO/PAGE records of a migration stream at ``buf[pos:]``
        into the block at ``host_addr`` (``used_length`` bytes), page by page in C, marking
        ``received`` (one byte per page); stops before anything else. Returns (bytes consumed,
        zero records, page records)."""
        counts = ffi.new("uint64_t[2]")
        with ffi.from_buffer(buf) as src, ffi.from_buffer(received) as rmap:
            n = int(lib.uf_place_run(self.fileno(), host_addr, used_length, src + pos, len(buf) - pos, rmap,
                                     len(received), counts))
        if n < 0:
            raise _error(-n, _name("UFFDIO_COPY run", host_addr, used_length))
        return n, int(counts[0]), int(counts[1])

    def wake(self, host_addr: int, length: int) -> None:
        """Wakes the threads waiting on a page of the range (UFFDIO_WAKE)."""
        self._range_op("UFFDIO_WAKE", lib.uf_wake, host_addr, length)

    def close(self) -> None:
        """Closes the fd (idempotent). The kernel then drops its registrations and wakes every
        waiter: their missing pages read as zero."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Userfault:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        # a forgotten userfaultfd would leave its ranges registered with nobody to serve them
        if getattr(self, "_fd", -1) >= 0:
            self.close()


def discard(host_addr: int, length: int) -> None:
    """Drops the pages of the range (MADV_DONTNEED): registered, they are missing again, else they
    read as zero. ``length`` 0 does nothing."""
    what = _name("MADV_DONTNEED", host_addr, length)
    _check_range(what, host_addr, length)
    rc = int(lib.uf_discard(host_addr, length))
    if rc < 0:
        raise _error(-rc, what)


def wait_readable(fd: int, wakeup_fd: int | None, timeout: float | None) -> bool:
    """Sleeps until ``fd`` (a userfaultfd) is readable, ``wakeup_fd`` (a pipe or eventfd the owner
    writes to, e.g. on shutdown; None or negative: none) is, or ``timeout`` seconds pass (None:
    no limit). True when ``fd`` is readable (or in error: reading it then says why)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if wakeup_fd is not None and wakeup_fd >= 0:
        poller.register(wakeup_fd, select.POLLIN)
    ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
    return any(ready == fd for ready, _ in poller.poll(ms))


@functools.cache
def unsupported_reason() -> str | None:
    """None if postcopy's userfaultfd works here (open, API handshake, MISSING registration of
    anonymous memory with UFFDIO_COPY and UFFDIO_ZEROPAGE), else the reason, as QEMU words it
    after ``Postcopy is not supported: ``. Probed once."""
    try:
        uf = Userfault(frozenset())
    except UserfaultError as e:
        return f"Userfaultfd not available: {os.strerror(e.errno or errno.EIO)}"
    with uf, mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) as area:
        with ffi.from_buffer(area) as p:
            addr = int(ffi.cast("uintptr_t", p))
        rc = int(lib.uf_register(uf.fileno(), addr, PAGE_SIZE))
        if rc == -errno.ENOTSUP:
            return "Missing userfault map features: UFFDIO_COPY/UFFDIO_ZEROPAGE"
        if rc < 0:
            return f"postcopy_ram_supported_by_host userfault register: {os.strerror(-rc)}"
        rc = int(lib.uf_unregister(uf.fileno(), addr, PAGE_SIZE))
        if rc < 0:
            return f"postcopy_ram_supported_by_host userfault unregister: {os.strerror(-rc)}"
    return None
