"""Helpers of QEMU's migration tests (tests/qtest/migration-helpers.c), for A-B guests.

``wait_for_serial`` waits for the guest's ``B`` on a serial file; ``check_guests_ram`` checks the
A-B memory invariant: byte 0 of every 4 KiB page in [start, end) equals its predecessor's, except
at most once where it is exactly one less (the point where the incrementing loop stopped).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qtest.client import QTestClient

PAGE = 4096
TEST_MEM_START = 1 << 20
TEST_MEM_END = 100 << 20
AB_BOOTSECT = Path(__file__).resolve().parent.parent / "guests" / "ab-bootsect.bin"
AB_PASSES_OFFSET = 0x1F0  # u32 passes per B in the boot sector (guests/README.md)


class GuestError(AssertionError):
    """The guest did not behave as the A-B contract says."""


def ab_bootsect(path: str | os.PathLike[str], passes_per_b: int | None = None) -> str:
    """Writes the A-B boot sector to ``path`` (optionally with a different passes-per-B count)."""
    image = bytearray(AB_BOOTSECT.read_bytes())
    if passes_per_b is not None:
        image[AB_PASSES_OFFSET:AB_PASSES_OFFSET + 4] = passes_per_b.to_bytes(4, "little")
    Path(path).write_bytes(image)
    return os.fspath(path)


def wait_for_serial(path: str | os.PathLike[str], timeout: float = 120.0, start: int = 0) -> int:
    """Reads the serial file until a ``B`` shows up; ``A`` is allowed before it, anything else is an
    error. Returns the offset just after the ``B`` (pass it back as ``start`` to wait for the next)."""
    deadline = time.monotonic() + timeout
    pos = start
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(pos)
                data = f.read()
        except FileNotFoundError:
            data = b""
        for ch in data:
            pos += 1
            if ch == ord("B"):
                return pos
            if ch != ord("A"):
                raise GuestError(f"unexpected byte {ch:#04x} on the serial port at offset {pos - 1}")
        if time.monotonic() > deadline:
            raise GuestError(f"no 'B' on {path} within {timeout} s")
        time.sleep(0.001)  # QEMU's helper polls the same way: there is nothing to wait on


def guest_page_bytes(qt: QTestClient, start: int = TEST_MEM_START, end: int = TEST_MEM_END) -> bytes:
    """Byte 0 of each page in [start, end), read with pipelined ``readb`` commands."""
    replies = qt.pipeline([f"readb {addr:#x}" for addr in range(start, end, PAGE)], check=True)
    return bytes(int(r.split()[1], 16) & 0xFF for r in replies)


def check_guests_ram(qt: QTestClient, start: int = TEST_MEM_START, end: int = TEST_MEM_END) -> None:
    """QEMU's check_guests_ram: the VM must be stopped (the guest would change memory under us)."""
    values = guest_page_bytes(qt, start, end)
    bad = []
    steps = 0
    for i in range(1, len(values)):
        prev, cur = values[i - 1], values[i]
        if cur == prev:
            continue
        if (prev - cur) & 0xFF == 1 and steps == 0:
            steps = 1  # where the incrementing pass was interrupted
            continue
        bad.append((start + i * PAGE, prev, cur))
    if bad:
        lines = [f"Memory content inconsistency at {a:#x} first_byte = {c:#x} last_byte = {p:#x}"
                 for a, p, c in bad[:10]]
        raise GuestError(f"{len(bad)} bad pages:\n" + "\n".join(lines))
