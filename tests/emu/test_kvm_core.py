"""The KVM core (emu.kvm_core over csrc/kvm.c) running tiny hand-assembled real-mode guests.

Skipped as a whole only when /dev/kvm is absent or unusable; every test otherwise enters a guest.
"""
from __future__ import annotations

import errno
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from emu.kvm_core import Exit, Kvm, KvmError, KvmVcpu, KvmVm, kvm_available
from emu.ram import RamBlock

_REASON = kvm_available()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"KVM unusable: {_REASON}")

MIB = 1 << 20
BOOT = 0x7C00


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    k = Kvm()
    yield k
    k.close()


@pytest.fixture
def vm(kvm: Kvm) -> Iterator[KvmVm]:
    v = kvm.create_vm()
    yield v
    v.close()


def boot(vm: KvmVm, program: bytes, ram_size: int = MIB, map_size: int | None = None,
         log_dirty: bool = False) -> tuple[RamBlock, KvmVcpu]:
    """A RAM block with ``program`` at 0x7c00, mapped at guest 0, and vCPU 0 about to run it."""
    block = RamBlock("pc.ram", ram_size)
    block.write(BOOT, program)
    vm.map(0, 0, block, map_size, log_dirty=log_dirty)
    vcpu = vm.vcpu(0)
    vcpu.reset_real_mode(0, BOOT)
    vcpu.set_regs({"rsp": 0x7000})
    return block, vcpu


def run_until(vcpu: KvmVcpu, reason: str, limit: int = 100) -> Exit:
    """Runs past interrupted runs up to the first exit that is not ``intr``; it must be ``reason``."""
    for _ in range(limit):
        ex = vcpu.run()
        if ex.reason != "intr":
            assert ex.reason == reason, ex
            return ex
    raise AssertionError(f"no {reason} exit in {limit} runs")


def test_port_io_and_hlt_through_the_ram_block(vm: KvmVm) -> None:
    program = bytes([
        0xBA, 0xF8, 0x03,        # mov dx, 0x3f8
        0xB0, ord("B"),          # mov al, 'B'
        0xEE,                    # out dx, al
        0xEC,                    # in al, dx
        0xA2, 0x00, 0x80,        # mov [0x8000], al
        0xF4,                    # hlt
    ])
    block, vcpu = boot(vm, program)
    ex = run_until(vcpu, "io")
    assert (ex.direction, ex.port, ex.size, ex.count, ex.data) == ("out", 0x3F8, 1, 1, b"B")
    ex = run_until(vcpu, "io")
    assert (ex.direction, ex.port, ex.size, ex.count, ex.total) == ("in", 0x3F8, 1, 1, 1)
    vcpu.complete_in(b"Z")
    run_until(vcpu, "hlt")
    assert block.read(0x8000, 1) == b"Z"
    assert vcpu.regs()["rip"] == BOOT + len(program)


def test_string_out_reports_count_and_bytes(vm: KvmVm) -> None:
    program = bytes([
        0xBE, 0x00, 0x7E,        # mov si, 0x7e00
        0xB9, 0x05, 0x00,        # mov cx, 5
        0xBA, 0xE9, 0x00,        # mov dx, 0xe9
        0xF3, 0x6E,              # rep outsb
        0xF4,                    # hlt
    ])
    block, vcpu = boot(vm, program)
    block.write(0x7E00, b"hello")
    got = b""
    while True:
        ex = vcpu.run()
        if ex.reason == "hlt":
            break
        assert ex.reason in ("io", "intr"), ex
        if ex.reason == "io":
            assert (ex.direction, ex.port, ex.size, ex.total) == ("out", 0xE9, 1, ex.count)
            got += ex.data
    assert got == b"hello"


def test_regs_and_sregs_round_trip(vm: KvmVm) -> None:
    _, vcpu = boot(vm, bytes([0xF4]))
    vcpu.set_regs({"rax": 0x1234_5678_9ABC_DEF0, "rbx": 42})
    regs = vcpu.regs()
    assert (regs["rax"], regs["rbx"], regs["rip"], regs["rflags"]) == (0x1234_5678_9ABC_DEF0, 42, BOOT, 2)
    vcpu.reset_real_mode(0x07C0, 0)
    sregs = vcpu.sregs()
    assert (sregs["cs"]["base"], sregs["cs"]["selector"], sregs["cs"]["limit"]) == (0x7C00, 0x07C0, 0xFFFF)
    assert sregs["cr0"] & 1 == 0
    assert vcpu.regs()["rax"] == 0
    vcpu.set_sregs({"ds": {"selector": 0x10, "base": 0x100}, "cr2": 0xDEAD000})
    again = vcpu.sregs()
    assert (again["ds"]["selector"], again["ds"]["base"], again["cr2"]) == (0x10, 0x100, 0xDEAD000)
    assert again["cs"] == sregs["cs"]
    run_until(vcpu, "hlt")  # 07c0:0000 is the hlt at 0x7c00


def test_dirty_log(vm: KvmVm) -> None:
    program = bytes([
        0xC6, 0x06, 0x00, 0x50, 0x01,  # mov byte [0x5000], 1
        0xF4,                          # hlt
    ])
    block, vcpu = boot(vm, program, log_dirty=True)
    pages = block.size // 4096
    first = vm.dirty_log(0, pages)
    assert first.dtype.name == "uint64" and len(first) == pages // 64
    run_until(vcpu, "hlt")
    bits = vm.dirty_log(0, pages)
    assert (int(bits[0]) >> 5) & 1
    assert block.read(0x5000, 1) == b"\x01"
    assert (int(vm.dirty_log(0, pages)[0]) >> 5) & 1 == 0
    with pytest.raises(KvmError) as info:
        vm.dirty_log(0, pages - 64)  # a bitmap too small for the slot
    assert info.value.errno == errno.ENOSPC


def test_mmio_exit_outside_ram(vm: KvmVm) -> None:
    program = bytes([
        0xB8, 0x00, 0x90,                    # mov ax, 0x9000
        0x8E, 0xC0,                          # mov es, ax
        0x26, 0xC6, 0x06, 0x00, 0x00, 0x5A,  # mov byte [es:0], 0x5a
        0x26, 0xA0, 0x01, 0x00,              # mov al, [es:1]
        0xA2, 0x00, 0x80,                    # mov [0x8000], al
        0xF4,                                # hlt
    ])
    block, vcpu = boot(vm, program, map_size=0x80000)
    ex = run_until(vcpu, "mmio")
    assert (ex.is_write, ex.phys_addr, ex.length, ex.data) == (True, 0x90000, 1, b"\x5a")
    ex = run_until(vcpu, "mmio")
    assert (ex.is_write, ex.phys_addr, ex.length) == (False, 0x90001, 1)
    vcpu.complete_mmio_read(b"\xa5")
    run_until(vcpu, "hlt")
    assert block.read(0x8000, 1) == b"\xa5"
    assert block.read(0x90000, 1) == b"\x00"  # the unmapped half of the block never saw the write


def test_interrupt_injection_wakes_the_halted_guest(vm: KvmVm) -> None:
    program = bytes([
        0xFB,                          # sti
        0xF4,                          # hlt
        0xC6, 0x06, 0x02, 0x80, 0x01,  # mov byte [0x8002], 1
        0xF4,                          # hlt
    ])
    handler = bytes([
        0xC6, 0x06, 0x01, 0x80, 0x77,  # mov byte [0x8001], 0x77
        0xCF,                          # iret
    ])
    block, vcpu = boot(vm, program)
    block.write(0x7D00, handler)
    block.write(0x20 * 4, bytes([0x00, 0x7D, 0x00, 0x00]))  # IVT[0x20] = 0000:7d00
    run_until(vcpu, "hlt")
    assert block.read(0x8001, 2) == b"\x00\x00"
    if not vcpu.ready_for_interrupt():
        vcpu.request_interrupt_window(True)
        run_until(vcpu, "irq-window-open")
        vcpu.request_interrupt_window(False)
    assert vcpu.ready_for_interrupt()
    vcpu.inject_irq(0x20)
    run_until(vcpu, "hlt")
    assert block.read(0x8001, 2) == b"\x77\x01"


def test_interrupt_window_exit(vm: KvmVm) -> None:
    program = bytes([
        0xFA,                    # cli
        0xBA, 0xF8, 0x03,        # mov dx, 0x3f8
        0xEE,                    # out dx, al
        0xFB,                    # sti
        0xEB, 0xFE,              # jmp $ (interruptible: the window opens here)
    ])
    _, vcpu = boot(vm, program)
    run_until(vcpu, "io")
    assert not vcpu.ready_for_interrupt()  # IF is clear
    vcpu.request_interrupt_window(True)
    run_until(vcpu, "irq-window-open")
    assert vcpu.ready_for_interrupt()
    assert vcpu.regs()["rip"] == BOOT + len(program) - 2
    vcpu.request_interrupt_window(False)


def test_immediate_exit_kicks_a_spinning_guest(vm: KvmVm) -> None:
    _, vcpu = boot(vm, bytes([0xEB, 0xFE]))  # jmp $
    vcpu.set_immediate_exit(True)
    assert vcpu.run().reason == "intr"  # the flag alone: KVM_RUN returns before entering
    vcpu.set_immediate_exit(False)
    # a run already in the guest: the flag, then a signal to the vCPU thread (KVM_RUN -> EINTR)
    exits: list[Exit] = []
    started = threading.Event()

    def run_until_intr() -> None:
        started.set()
        while not exits or exits[-1].reason != "intr":
            exits.append(vcpu.run())

    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        thread = threading.Thread(target=run_until_intr)
        thread.start()
        started.wait()
        time.sleep(0.1)
        vcpu.set_immediate_exit(True)
        signal.pthread_kill(thread.ident or 0, signal.SIGUSR1)
        thread.join(10)
        assert not thread.is_alive()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert exits[-1].reason == "intr"
    assert all(ex.reason == "intr" for ex in exits)
    vcpu.set_immediate_exit(False)


def test_bad_arguments_raise(kvm: Kvm, vm: KvmVm) -> None:
    block = RamBlock("pc.ram", MIB)
    with pytest.raises(KvmError):
        vm.map(0, 0, block, 0x1001)  # unaligned size
    with pytest.raises(KvmError):
        vm.map(0, 0x800, block)  # unaligned guest address
    with pytest.raises(KvmError):
        vm.map(0, 0, block.host_address + 1, 4096)  # unaligned host address
    with pytest.raises(KvmError):
        vm.map(0, 0, block, 2 * MIB)  # larger than the block
    with pytest.raises(KvmError):
        vm.map(100000, 0, block)  # slot out of range
    with pytest.raises(KvmError):
        vm.dirty_log(0, 256)  # slot 0 not mapped with dirty logging
    with pytest.raises(KvmError):
        vm.vcpu(-1)
    with pytest.raises(KvmError):
        vm.vcpu(1 << 20)
    block2, vcpu = boot(vm, bytes([0xBA, 0xF8, 0x03, 0xEC, 0xF4]))  # mov dx, 0x3f8; in al, dx; hlt
    with pytest.raises(KvmError):
        vm.vcpu(0)  # already exists
    with pytest.raises(KvmError):
        vcpu.complete_in(b"Z")  # no IN pending yet
    ex = run_until(vcpu, "io")
    assert ex.direction == "in"
    with pytest.raises(KvmError):
        vcpu.complete_in(b"123456789")  # more than the 1-byte IN (and than 8 bytes)
    with pytest.raises(KvmError):
        vcpu.complete_mmio_read(b"\x00")  # no MMIO read pending
    with pytest.raises(KvmError):
        vcpu.inject_irq(256)
    with pytest.raises(KvmError):
        vcpu.set_regs({"rax": 1 << 64})
    with pytest.raises(KvmError):
        vcpu.set_regs({"xmm0": 1})
    with pytest.raises(KvmError):
        vcpu.set_sregs({"cs": 5})
    with pytest.raises(KvmError):
        vcpu.reset_real_mode(0x10000, 0)
    vcpu.complete_in(b"Z")
    run_until(vcpu, "hlt")
    assert vcpu.regs()["rax"] & 0xFF == ord("Z")
    vcpu.close()
    with pytest.raises(KvmError):
        vcpu.run()
    vm.close()
    with pytest.raises(KvmError):
        vm.vcpu(1)
