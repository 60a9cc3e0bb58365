"""``RamBlock.send_page_records``: page records written from guest memory with writev (C), the
same bytes ``encode_page_records`` builds, through a full non-blocking pipe and on cancel."""
from __future__ import annotations

import errno
import os
import random
import threading

import pytest

from emu.migration.precopy import encode_page_records
from emu.ram import RamBlock, RamError


def drain(fd: int, out: bytearray) -> threading.Thread:
    def run() -> None:
        while chunk := os.read(fd, 1 << 16):
            out.extend(chunk)
    t = threading.Thread(target=run)
    t.start()
    return t


@pytest.mark.parametrize("named", [True, False])
def test_writev_output_equals_the_encoded_records(named):
    rng = random.Random(3)
    block = RamBlock("pc.ram", 32 << 20)
    for _ in range(200):  # scattered data pages between long zero runs (header iovs merge)
        block.write(rng.randrange(0, 32 << 20, 4096), rng.randbytes(rng.randrange(1, 4096)))
    zmap = block.zero_pages(0, block.pages)
    expected = encode_page_records(block, 0, block.pages, zmap, named)
    r, w = os.pipe()
    os.set_blocking(w, False)  # the pipe fills up: C waits with poll() and resumes mid-record
    got = bytearray()
    t = drain(r, got)
    n = block.send_page_records(w, -1, 0, block.pages, zmap, b"pc.ram" if named else None)
    os.close(w)
    t.join()
    os.close(r)
    assert n == len(expected) and bytes(got) == bytes(expected)


def test_a_wake_fd_cancels_a_blocked_write():
    block = RamBlock("ram", 1 << 20)
    block.write(0, os.urandom(1 << 20))
    r, w = os.pipe()
    os.set_blocking(w, False)
    wake_r, wake_w = os.pipe()
    os.write(wake_w, b"x")  # nobody reads the pipe: the first full buffer waits, then sees this
    n = block.send_page_records(w, wake_r, 0, block.pages, block.zero_pages(0, block.pages), None)
    assert n == -errno.ECANCELED
    for fd in (r, w, wake_r, wake_w):
        os.close(fd)


def test_errors_are_negated_errno_and_bad_ranges_raise():
    block = RamBlock("ram", 1 << 16)
    r, w = os.pipe()
    os.close(r)
    assert block.send_page_records(w, -1, 0, 1, b"\0", None) == -errno.EPIPE
    os.close(w)
    with pytest.raises(RamError):
        block.send_page_records(1, -1, 15, 2, b"\0\0", None)
    with pytest.raises(RamError):
        block.send_page_records(1, -1, 0, 4, b"\0", None)  # zero map too short
