"""The vCPU in-process, under Unicorn (tcg) and KVM: the A-B guest runs, stops exactly, dirties
exactly its pages (KVM: through its dirty log merged into the RAM block's bitmap)."""
from __future__ import annotations

import threading
import time

import pytest
from pc_guest import PcGuest, accel_params

from emu.kvm_core import kvm_available
from qtest.migration import AB_BOOTSECT, AB_PASSES_OFFSET, PAGE, TEST_MEM_END, TEST_MEM_START


class Guest(PcGuest):
    """A pc machine running the A-B sector (one pass per B unless told otherwise)."""

    def __init__(self, passes: int = 1, accel: str = "tcg", dirty_ring_size: int = 0) -> None:
        image = bytearray(AB_BOOTSECT.read_bytes())
        image[AB_PASSES_OFFSET:AB_PASSES_OFFSET + 4] = passes.to_bytes(4, "little")
        super().__init__(bytes(image), 150 << 20, accel=accel, dirty_ring_size=dirty_ring_size)

    def wait_b(self, count: int = 1, timeout: float = 60) -> None:
        target = self.serial.count(b"B") + count
        self.wait_until(lambda out: out.count(b"B") >= target, timeout)

    def pages(self) -> bytes:
        block = self.machine.ram_blocks[0]
        view = block.view()
        return bytes(view[TEST_MEM_START:TEST_MEM_END:PAGE])



@pytest.fixture(params=accel_params())
def guest(request):
    g = Guest(accel=request.param)
    yield g
    g.close()


def consistent(values: bytes) -> bool:
    steps = sum(1 for a, b in zip(values, values[1:]) if a != b)
    drops = [(a - b) & 0xFF for a, b in zip(values, values[1:]) if a != b]
    return steps <= 1 and all(d == 1 for d in drops)


def test_ab_guest_prints_a_then_b_and_keeps_memory_consistent_across_many_stops(guest):
    guest.wait_b(2)
    assert guest.serial.startswith(b"AB")
    for _ in range(20):  # stops land at block boundaries: no instruction ever runs twice
        guest.vm.stop()
        snap = guest.pages()
        assert consistent(snap), "memory check failed after a stop"
        assert guest.pages() == snap  # nothing runs while stopped
        guest.vm.cont()
        time.sleep(0.005)  # let it run a little between stops (the point is to stop it mid-pass)
    guest.vm.stop()
    assert consistent(guest.pages()) and guest.pages()[0] != 0


def test_guest_writes_mark_exactly_the_pages_they_touch(guest):
    guest.wait_b(1)
    guest.vm.stop()
    block = guest.machine.ram_blocks[0]
    block.fetch_and_clear_dirty()
    guest.vm.cont()
    guest.wait_b(2)  # at least one full pass with tracking on
    guest.vm.stop()
    words = block.fetch_and_clear_dirty()
    import numpy as np

    bits = np.unpackbits(words.view(np.uint8), bitorder="little")[: block.pages]
    dirty = set(np.flatnonzero(bits).tolist())
    test_pages = set(range(TEST_MEM_START // PAGE, TEST_MEM_END // PAGE))
    assert test_pages <= dirty  # every page the loop increments
    assert len(dirty - test_pages) <= 2  # plus the stack page (the sector is not written)


def test_reset_restarts_the_guest(guest):
    guest.wait_b(1)
    guest.vm.reset("host-qmp-system-reset")
    with guest.changed:  # the restarted guest prints A again
        assert guest.changed.wait_for(lambda: guest.serial.count(b"A") == 2, 60), bytes(guest.serial)
    guest.wait_b(1)
    assert guest.serial.count(b"A") == 2 and guest.serial.rindex(b"B") > guest.serial.rindex(b"A")


def test_qom_cpu_reports_the_vcpu_thread(guest):
    cpu = guest.machine.cpus[0]
    assert cpu.thread_id == guest.vcpu.thread_id != threading.get_native_id()


@pytest.mark.skipif(kvm_available() is not None, reason=f"no usable /dev/kvm: {kvm_available()}")
def test_kvm_vm_rebuilt_after_a_ring_overflow_runs_on_with_all_ram_dirty():
    """The recovery from an overflowed dirty ring (hosts whose KVM lets a guest push past the
    ring's end): the CPU state moves into a new VM over the same memory, every page is marked
    dirty, and the guest goes on where it was without a reboot."""
    g = Guest(accel="kvm", dirty_ring_size=4096)
    try:
        g.wait_b(2)
        g.vm.stop()
        before = g.pages()
        reaped = g.vcpu.dirty_pages
        block = g.machine.ram_blocks[0]
        block.fetch_and_clear_dirty()
        g.vcpu._rebuild()
        assert g.vcpu.rebuilds == 1 and g.vcpu.dirty_pages >= reaped
        assert block.dirty_count() == block.pages  # what the lost entries named is unknown
        assert g.pages() == before and consistent(before)
        g.vm.cont()
        g.wait_b(2)
        g.vm.stop()
        assert consistent(g.pages()) and g.serial.count(b"A") == 1
        assert g.vcpu.dirty_pages > reaped  # the new ring is reaped too
    finally:
        g.close()
