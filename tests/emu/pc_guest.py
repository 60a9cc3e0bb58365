"""An in-process ``pc`` machine running a boot sector on a vCPU (Unicorn or KVM), for the vCPU tests.

Serial output is collected; waits use a condition on it, never sleeps.
"""
from __future__ import annotations

import threading

from emu.machine import find_machine
from emu.vm import VM


class PcGuest:
    """A pc machine with ``ram`` bytes of RAM booting ``image`` (sector 0) on ``accel`` (tcg or
    kvm, with a dirty ring of ``dirty_ring_size`` entries), running at once unless ``start_paused``."""

    def __init__(self, image: bytes, ram: int, start_paused: bool = False, accel: str = "tcg",
                 dirty_ring_size: int = 0) -> None:
        from emu.cpu import VCPU
        from emu.kvm_vcpu import KvmVCPU

        self.machine = find_machine("pc")(ram, manual_clock=False)
        self.machine.attach_boot_disk(image)
        self.serial = bytearray()
        self.changed = threading.Condition()
        self.machine.add_serial(0, self._out)
        self.machine.boot()
        self.vm = VM(self.machine, start_paused=start_paused, qtest_accel=False)
        self.vcpu = KvmVCPU(self.vm, dirty_ring_size=dirty_ring_size) if accel == "kvm" else VCPU(self.vm)
        self.vm.attach_vcpu(self.vcpu)

    def _out(self, data: bytes) -> None:
        with self.changed:
            self.serial += data
            self.changed.notify_all()

    def wait_until(self, ready, timeout: float) -> None:
        """Waits until ``ready(serial)`` holds; fails with what the guest printed."""
        with self.changed:
            assert self.changed.wait_for(lambda: ready(self.serial), timeout), bytes(self.serial)

    def close(self) -> None:
        self.vcpu.quit()
        if hasattr(self.vcpu, "close"):
            self.vcpu.close()  # KVM: the VM's fds


def accel_params() -> list:
    """``tcg`` and ``kvm`` as pytest params, kvm skipped (with the reason) where /dev/kvm is not usable."""
    import pytest

    from emu.kvm_core import kvm_available

    why = kvm_available()
    return ["tcg", pytest.param("kvm", marks=pytest.mark.skipif(why is not None, reason=f"no usable /dev/kvm: {why}"))]
