"""userfaultfd (emu.migration.userfault over csrc/uffd.c): placement into registered RAM, real
faults from another thread, discard, bad arguments, and the postcopy support probe.

The test thread never touches a missing registered page itself (it would block on its own fault):
a missing page is only read by a helper thread, which the test releases by placing the page (or,
on failure, by closing the userfaultfd, which wakes every waiter).
"""
from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from emu._native import lib as native_lib
from emu.migration import userfault
from emu.migration.userfault import Userfault, UserfaultError, discard, unsupported_reason, wait_readable
from emu.ram import RamBlock

PAGE = 4096
TIMEOUT = 10.0  # a failing test gives up after this; a passing one never waits for it


def pattern(seed: int, pages: int = 1) -> bytes:
    return bytes((seed + i * 7) & 0xFF for i in range(pages * PAGE))


@pytest.fixture
def uffd() -> Iterator[Userfault]:
    uf = Userfault()
    yield uf
    uf.close()  # wakes any helper thread still waiting on a page


@pytest.fixture
def block(uffd: Userfault) -> RamBlock:
    """64 pages of guest RAM, registered with ``uffd`` (so every page starts missing)."""
    b = RamBlock("uf", 64 * PAGE)
    uffd.register(b.host_address, b.size)
    return b


@pytest.fixture
def wake() -> Iterator[tuple[int, int]]:
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    yield r, w
    os.close(r)
    os.close(w)


class Reader:
    """A thread reading ``length`` bytes at ``offset`` of a block (in C, without the GIL)."""

    def __init__(self, block: RamBlock, offset: int, length: int) -> None:
        self.result: bytes | None = None
        self.thread = threading.Thread(target=self._run, args=(block, offset, length), daemon=True)
        self.thread.start()
        assert self.thread.native_id is not None
        self.tid: int = self.thread.native_id

    def _run(self, block: RamBlock, offset: int, length: int) -> None:
        self.result = block.read(offset, length)

    def join(self) -> bytes | None:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the reader is still blocked on its page"
        return self.result


def next_faults(uf: Userfault, wake_r: int) -> list[tuple[int, int]]:
    """Waits (bounded) for the fault thread's wake-up and reads what is pending."""
    assert wait_readable(uf.fileno(), wake_r, TIMEOUT), "no fault arrived"
    return uf.read_faults()


def test_the_handshake_grants_thread_ids(uffd: Userfault) -> None:
    assert uffd.has_thread_id and uffd.features == {"thread-id"}
    with Userfault(frozenset()) as plain:
        assert not plain.has_thread_id and plain.fileno() >= 0
    with pytest.raises(ValueError, match="unknown userfaultfd features"):
        Userfault(frozenset({"no-such-feature"}))


def test_place_then_read_back(uffd: Userfault, block: RamBlock) -> None:
    data = pattern(3)
    assert uffd.place(block.host_address + 3 * PAGE, data) is True
    assert block.read(3 * PAGE, PAGE) == data
    assert uffd.place(block.host_address + 3 * PAGE, pattern(9)) is False  # present: left alone
    assert block.read(3 * PAGE, PAGE) == data
    assert uffd.place_zero(block.host_address + 5 * PAGE, PAGE) is True
    assert block.read(5 * PAGE, PAGE) == bytes(PAGE)
    assert uffd.place_zero(block.host_address + 5 * PAGE, PAGE) is False
    # 4 KiB placements, not 2 MiB huge pages: exactly the two pages are there
    assert block.populated_pages() == 2
    assert uffd.read_faults() == []


def test_place_takes_writable_buffers_and_runs_of_pages(uffd: Userfault, block: RamBlock) -> None:
    assert uffd.place(block.host_address + 9 * PAGE, bytearray(pattern(1))) is True
    run = pattern(40, pages=4)
    # pages 8..11 with page 9 already present: the others are placed, page 9 stays
    assert uffd.place(block.host_address + 8 * PAGE, memoryview(run)) is False
    assert block.read(8 * PAGE, 4 * PAGE) == run[:PAGE] + pattern(1) + run[2 * PAGE:]
    assert uffd.place_zero(block.host_address + 16 * PAGE, 8 * PAGE) is True
    assert block.read(16 * PAGE, 8 * PAGE) == bytes(8 * PAGE)


def test_a_fault_is_reported_and_resolved_by_placing(uffd: Userfault, block: RamBlock,
                                                     wake: tuple[int, int]) -> None:
    reader = Reader(block, 7 * PAGE + 100, 16)
    faults = next_faults(uffd, wake[0])
    assert faults == [(block.host_address + 7 * PAGE, reader.tid)]
    data = pattern(77)
    assert uffd.place(block.host_address + 7 * PAGE, data) is True
    assert reader.join() == data[100:116]


def test_a_fault_without_thread_ids(wake: tuple[int, int]) -> None:
    with Userfault(frozenset()) as uf:
        b = RamBlock("uf", 4 * PAGE)
        uf.register(b.host_address, b.size)
        reader = Reader(b, 2 * PAGE, 8)
        assert next_faults(uf, wake[0]) == [(b.host_address + 2 * PAGE, 0)]
        assert uf.place_zero(b.host_address + 2 * PAGE, PAGE) is True
        assert reader.join() == bytes(8)


def test_discard_makes_a_page_missing_again(uffd: Userfault, block: RamBlock, wake: tuple[int, int]) -> None:
    host = block.host_address + 2 * PAGE
    assert uffd.place(host, pattern(5)) is True
    assert block.read(2 * PAGE, PAGE) == pattern(5)
    discard(host, PAGE)
    assert block.populated_pages() == 0
    reader = Reader(block, 2 * PAGE, PAGE)
    assert [addr for addr, _ in next_faults(uffd, wake[0])] == [host]
    assert uffd.place(host, pattern(6)) is True  # a fresh placement: the page was gone
    assert reader.join() == pattern(6)


def test_wait_readable_wakes_for_the_owner_and_times_out(uffd: Userfault, wake: tuple[int, int]) -> None:
    assert wait_readable(uffd.fileno(), wake[0], 0) is False
    assert wait_readable(uffd.fileno(), None, 0.001) is False
    os.write(wake[1], b"x")
    assert wait_readable(uffd.fileno(), wake[0], None) is False  # the wake-up, not a fault


def test_unregister_releases_a_waiting_reader(uffd: Userfault, block: RamBlock, wake: tuple[int, int]) -> None:
    reader = Reader(block, 4 * PAGE, 4)
    assert len(next_faults(uffd, wake[0])) == 1
    uffd.unregister(block.host_address, block.size)
    assert reader.join() == bytes(4)  # no longer registered: an ordinary zero page


@pytest.mark.parametrize("call", [
    lambda uf, b: uf.place(b.host_address + 1, pattern(0)),                # unaligned address
    lambda uf, b: uf.place(b.host_address, b"x" * 100),                    # not whole pages
    lambda uf, b: uf.place(b.host_address, b""),                           # nothing
    lambda uf, b: uf.place_zero(b.host_address, PAGE + 1),
    lambda uf, b: uf.place_zero(-PAGE, PAGE),
    lambda uf, b: uf.place_zero(2**64 - PAGE, 2 * PAGE),                   # wraps
    lambda uf, b: uf.register(b.host_address + 100, PAGE),
    lambda uf, b: uf.register(b.host_address, 0),
    lambda uf, b: uf.unregister(b.host_address, 3),
    lambda uf, b: uf.wake(b.host_address + 8, PAGE),
    lambda uf, b: discard(b.host_address + 8, PAGE),
    lambda uf, b: discard(b.host_address, PAGE - 1),
])
def test_bad_arguments_are_errors(uffd: Userfault, block: RamBlock, call: Any) -> None:
    with pytest.raises(UserfaultError) as info:
        call(uffd, block)
    assert info.value.errno == errno.EINVAL


def test_placing_outside_the_registered_range(uffd: Userfault, block: RamBlock) -> None:
    other = RamBlock("other", 4 * PAGE)  # mapped, never registered
    with pytest.raises(UserfaultError, match="not inside a range registered") as info:
        uffd.place(other.host_address, pattern(1))
    assert info.value.errno == errno.ENOENT
    with pytest.raises(UserfaultError):  # the last page of the block and the one past it
        uffd.place_zero(block.host_address + block.size - PAGE, 2 * PAGE)
    assert other.read(0, 4) == bytes(4)  # untouched


def test_a_closed_userfault(block: RamBlock) -> None:
    uf = Userfault()
    uf.close()
    uf.close()
    with pytest.raises(UserfaultError) as info:
        uf.place_zero(block.host_address, PAGE)
    assert info.value.errno == errno.EBADF
    assert uf.read_faults(max=0) == []


def test_postcopy_is_supported_here() -> None:
    assert unsupported_reason() is None


class _FakeLib:
    """The C core with some functions replaced."""

    def __init__(self, **overrides: Any) -> None:
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        return self._overrides.get(name, getattr(native_lib, name))


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    unsupported_reason.cache_clear()
    yield
    unsupported_reason.cache_clear()


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"uf_open": lambda wanted, got: -errno.EPERM}, "Userfaultfd not available: Operation not permitted"),
    ({"uf_register": lambda fd, start, length: -errno.ENOTSUP},
     "Missing userfault map features: UFFDIO_COPY/UFFDIO_ZEROPAGE"),
    ({"uf_register": lambda fd, start, length: -errno.EINVAL},
     "postcopy_ram_supported_by_host userfault register: Invalid argument"),
])
def test_the_reason_postcopy_is_not_supported(monkeypatch: pytest.MonkeyPatch, fresh_probe: None,
                                              overrides: dict[str, Any], reason: str) -> None:
    monkeypatch.setattr(userfault, "lib", _FakeLib(**overrides))
    assert unsupported_reason() == reason
    assert unsupported_reason() == reason  # cached
