"""The x86 vCPU under KVM (``-accel kvm``): the guest runs natively on this host's /dev/kvm.

Memory: every RAM and ROM range of the flat view becomes a KVM memory slot over the very pages
of its :class:`emu.ram.RamBlock` (qtest, QMP and migration see what the guest sees); ROM and
PAM's read-only RAM are read-only slots, whose writes come back as MMIO exits. Writable slots
keep KVM's dirty log (with manual protect where the kernel has it: KVM_GET_DIRTY_LOG, then
KVM_CLEAR_DIRTY_LOG of the pages taken), merged into the block's dirty bitmap whenever that bitmap
is read (:attr:`emu.ram.RamBlock.dirty_sources`), so precopy, multifd, XBZRLE and auto-converge work as
under TCG. With ``-accel kvm,dirty-ring-size=N`` the pages come from the vCPU's dirty ring instead
(reaped continuously by a C thread that re-arms them with KVM_RESET_DIRTY_RINGS, collected at
each read of a bitmap and at each dirty-ring-full exit), which also counts the vCPU's own dirty pages
(``dirty_pages``, for the ``dirty-ring`` dirty-rate measurement) and lets a dirty-page limit slow
the vCPU: pages written beyond the limit are paid for with sleeps before the guest runs again.

Exits: port I/O goes to the ``io`` address space and MMIO to the memory API's dispatch, under the
machine lock, as the Unicorn vCPU's hooks do; ``hlt`` halts the vCPU until an interrupt; a triple
fault (``shutdown``) asks for a guest reset, as QEMU does; an internal error or a failed entry
stops the VM in ``internal-error`` with QEMU's message.

Interrupts come from our PIC/IOAPIC models, not an in-kernel irqchip: they are injected with
KVM_INTERRUPT when the vCPU can take one, else an interrupt-window exit is asked for (QEMU's
``kvm_arch_pre_run`` without ``kernel_irqchip``). The machine has only legacy PIC/IOAPIC
devices and boot-sector guests, so the user-space path needs no kernel LAPIC, PIT or routing,
and a migration carries all interrupt state in our own device sections.

Stops: a kick sets ``immediate_exit`` and signals the vCPU thread (QEMU's SIG_IPI), so a
``KVM_RUN`` in progress returns at once and one about to start does not enter the guest; a
pending I/O is completed first (the kernel does it before looking at ``immediate_exit``).
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from emu import kvm_state
from emu.cpu_state import MSRS
from emu.kvm_core import Exit, Kvm, KvmError, KvmReaper, KvmVcpu, KvmVm, kick_signal
from emu.ram import PAGE_SIZE, RamBlock
from emu.vcpu_control import VcpuControl, VCPUError

if TYPE_CHECKING:
    from emu.vm import VM

#: KVM_INTERNAL_ERROR_EMULATION, the suberror QEMU names
INTERNAL_ERROR_EMULATION = 1
#: the period of the dirty-rate measurement behind a dirty-page limit (QEMU's DIRTYLIMIT_CALC_TIME_MS)
DIRTYLIMIT_CALC_TIME_NS = 1_000_000_000


class KvmVCPU(VcpuControl):
    """One x86 vCPU run by KVM, bound to a VM. ``start()`` begins the thread; it runs while the
    VM runs. Raises :class:`VCPUError` when KVM cannot set it up."""

    accel = "kvm"

    def __init__(self, vm: VM, entry: int = 0x7C00, dl: int = 0x80, dirty_ring_size: int = 0) -> None:
        super().__init__(vm)
        self.entry, self.dl = entry, dl
        self._want_irq = False  # an interrupt waits for injection
        self._ident: int | None = None  # the vCPU thread's pthread id (for the kick signal)
        self._slots: dict[RamBlock, list[tuple[int, int, int]]] = {}  # block -> (slot, first page, pages)
        #: dirty ring (``-accel kvm,dirty-ring-size=N``): the C reaper, per-slot bitmaps to collect
        #: its pages into, one collection at a time
        self.dirty_ring_size = dirty_ring_size
        self._reaper: KvmReaper | None = None
        self._reaped_before = 0  # pages reaped by the reapers of earlier VMs (see _rebuild)
        self._empty_fulls = 0  # ring-full exits in a row that found nothing to harvest
        self.rebuilds = 0  # VMs recreated after a ring overflow
        self._logged_pages = 0  # pages set in the dirty logs merged so far (no ring)
        self._ring_bits: list[np.ndarray | None] = []
        self._ring_lock = threading.Lock()
        #: the dirty-page limit in MiB/s (0: none) and the last measured dirty rate (MiB/s)
        self.dirty_limit = 0
        self.current_rate = 0
        try:
            self._signal = kick_signal()
            self.kvm = Kvm()
            self._build_vm()
        except KvmError as e:
            raise VCPUError(f"KVM: {e}") from None
        self.reset()

    # ---- set-up
    def _build_vm(self) -> None:
        """The KVM VM: its memory slots, the vCPU and, with a dirty ring, the ring's reaper."""
        self.kvm_vm: KvmVm = self.kvm.create_vm()
        if self.dirty_ring_size:
            self.kvm_vm.enable_dirty_ring(self.dirty_ring_size)
        else:  # as QEMU: a sync leaves pages writable until it re-arms exactly those it took
            self.kvm_vm.enable_manual_protect()
        self._map_memory()
        self.cpu: KvmVcpu = self.kvm_vm.vcpu(0)
        if self.dirty_ring_size:
            pages = [len(b) * 64 if b is not None else 0 for b in self._ring_bits]
            self._reaper = self.cpu.start_reaper(self.kvm_vm, pages)

    def _release_vm(self) -> None:
        """Stops the reaper and closes the VM (the blocks stop asking it for dirty pages)."""
        for block in self._slots:
            block.dirty_sources.remove(self._sync_dirty)
        self._slots.clear()
        self._ring_bits = []
        if self._reaper is not None:
            self._reaped_before += self._reaper.total
            self._reaper.stop()  # before the vCPU whose ring it reads
            self._reaper = None
        self.kvm_vm.close()

    def _rebuild(self) -> None:
        """Recovers from an overflowed dirty ring (on the vCPU thread, or with the vCPU parked).

        Some hosts' KVM let a running guest push entries past the ring's end without the
        ring-full exit; the kernel's count of used entries then never drops below the soft limit
        and every KVM_RUN returns at once. Nothing resets that count but a new VM: the CPU state
        moves into one over the same memory, and every guest page is marked dirty, since which
        pages the lost entries named is unknown."""
        state = self.get_state()
        with self._ring_lock:
            self._release_vm()
            self._build_vm()
            for block in self._slots:
                block.set_all_dirty()
        self.set_state(state)
        self.rebuilds += 1
        sys.stderr.write("warning: KVM's dirty ring overflowed (this host's KVM did not stop the vCPU at the "
                         "ring's soft limit): the VM was recreated and all guest RAM marked dirty\n")

    def _map_memory(self) -> None:
        """A slot for each RAM/ROM range of the flat view; writable RAM logs dirty pages."""
        asp = self.machine.address_space_memory
        slot = 0
        for fr in asp.iter_ranges():
            if fr.mr.kind not in ("ram", "rom"):
                continue  # MMIO: exits
            start, size = fr.start, fr.last - fr.start + 1
            if start % PAGE_SIZE or size % PAGE_SIZE:
                raise VCPUError(f"range {fr.mr.name} at {start:#x}+{size:#x} is not page aligned")
            block = fr.mr.block
            assert block is not None
            offset = fr.mr.block_offset + fr.offset
            writable = fr.mr.kind == "ram" and not fr.readonly
            self.kvm_vm.map(slot, start, block.host_address + offset, size, log_dirty=writable,
                            readonly=not writable)
            self._ring_bits.append(None)
            if writable:
                if block not in self._slots:
                    self._slots[block] = []
                    block.dirty_sources.append(self._sync_dirty)
                self._slots[block].append((slot, offset // PAGE_SIZE, size // PAGE_SIZE))
                if self.dirty_ring_size:
                    self._ring_bits[slot] = np.zeros((size // PAGE_SIZE + 63) // 64, dtype=np.uint64)
            slot += 1

    def _sync_dirty(self, block: RamBlock) -> None:
        """KVM's dirty log of ``block``'s slots, merged into its bitmap (any thread). With a
        dirty ring, the ring is harvested (into every block)."""
        if self.dirty_ring_size:
            self.harvest()
            return
        for slot, first, pages in self._slots.get(block, ()):
            try:
                bits = self.kvm_vm.dirty_log(slot, pages)
            except KvmError:
                if self.kvm_vm.fd < 0:
                    return  # closed at quit: nothing more is written
                raise
            if self.kvm_vm.manual_protect and bits.any():
                self.kvm_vm.clear_dirty_log(slot, bits)
            n = block.merge_dirty(first, bits, pages)
            with self._ring_lock:  # any thread syncs
                self._logged_pages += n

    @property
    def dirty_pages(self) -> int:
        """Pages KVM reported written so far: harvested from the dirty ring (QEMU's
        ``cpu->dirty_pages``), or set in the dirty logs merged (QEMU's ``total_dirty_pages``)."""
        if not self.dirty_ring_size:
            return self._logged_pages
        reaper = self._reaper
        return self._reaped_before + (reaper.total if reaper is not None else 0)

    def harvest(self) -> int:
        """Moves the pages the reaper collected (and the ring's newest) into the RAM blocks'
        bitmaps (QEMU's kvm_dirty_ring_reap); any thread. Returns the pages moved."""
        if self._reaper is None:
            return 0
        with self._ring_lock:
            n = self._reaper.collect(self._ring_bits)
            if n:
                for block, slots in self._slots.items():
                    for slot, first, pages in slots:
                        bits = self._ring_bits[slot]
                        assert bits is not None
                        if bits.any():
                            block.merge_dirty(first, bits, pages)
                            bits[:] = 0
            return n

    def _limiter(self) -> None:
        """The dirty-limit thread (ring mode): measures the vCPU's dirty rate once per second
        (``current_rate``) from the reaper's count and enforces :attr:`dirty_limit`: the pages
        written, at the limit's rate, take until some time, and the vCPU does not run before it.
        (The ring itself is emptied by the C reaper: some hosts' KVM let a running guest fill it
        past its soft limit without a ring-full exit, which leaves the vCPU stuck for good, so it
        is reaped from a thread that no Python lock can hold up.)"""
        period_start = time.monotonic_ns()
        period_pages = last_pages = self.dirty_pages
        paid_until = period_start  # the writes so far, at the limit's rate, take until then
        while not self._quit:
            time.sleep(0.002)
            now, total = time.monotonic_ns(), self.dirty_pages
            written, last_pages = total - last_pages, total
            limit = self.dirty_limit
            if limit:
                rate = limit * (1 << 20) / PAGE_SIZE  # pages per second
                # at most 100 ms of unused allowance carries over
                paid_until = max(paid_until, now - 100_000_000) + int(written / rate * 1e9)
                if paid_until > now:
                    self.sleep_until(paid_until)
            else:
                paid_until = now
            if now - period_start >= DIRTYLIMIT_CALC_TIME_NS:
                self.current_rate = ((total - period_pages) * PAGE_SIZE >> 20) * 1_000_000_000 // (now - period_start)
                period_start, period_pages = now, total

    def set_dirty_limit(self, rate: int) -> None:
        """Limits the vCPU's dirty-page rate to ``rate`` MiB/s (0: no limit), as QEMU's dirtylimit."""
        self.dirty_limit = max(0, int(rate))
        if not self.dirty_limit:
            self.cancel_sleep()

    def close(self) -> None:
        """Releases the VM (after :meth:`quit`); the blocks' last dirty pages are merged first."""
        for block in self._slots:
            self._sync_dirty(block)
        self._release_vm()
        self.kvm.close()

    # ---- state
    def reset(self) -> None:
        """Real mode at 0000:entry, DL = boot drive, SP 0x7c00, as the Unicorn vCPU starts."""
        self.cpu.reset_real_mode(0, self.entry)
        self.cpu.set_regs({"rdx": self.dl, "rsp": 0x7C00})
        self._halted = False
        self._want_irq = False
        self.error = None

    def get_state(self) -> dict[str, Any]:
        """The ``cpu`` section's state (as the Unicorn vCPU gives it); the vCPU must be paused."""
        cpu = self.cpu
        state = kvm_state.to_cpu_state(cpu.regs(), cpu.sregs(), cpu.fpu(), cpu.msrs(list(MSRS.values())))
        state["halted"] = int(self._halted)
        state["interrupt_request"] = int(self._want_irq)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Loads a ``cpu`` section's state (from a KVM or a TCG process); the vCPU must be paused."""
        regs, sregs, fpu, msrs = kvm_state.from_cpu_state(state)
        try:
            self.cpu.set_sregs(sregs)
            self.cpu.set_regs(regs)
            self.cpu.set_fpu(fpu)
            self.cpu.set_msrs(msrs)
        except KvmError as e:
            raise VCPUError(f"KVM cannot load the CPU state: {e}") from None
        self._halted = bool(state.get("halted"))
        self._want_irq = bool(state.get("interrupt_request"))
        self.error = None

    # ---- interrupts
    def interrupt_request(self) -> None:
        """The machine has an interrupt for the CPU (any thread): injected as soon as the guest
        can take it; a halted CPU wakes up; a running one is kicked to inject it."""
        with self._cond:
            self._want_irq = True
            self._halted = False
            self._cond.notify_all()
        self._kick()

    def _inject(self) -> None:
        """Before a KVM_RUN: inject the pending interrupt if the vCPU is ready, and ask for an
        interrupt-window exit while one still waits."""
        cpu = self.cpu
        if self._want_irq and cpu.ready_for_interrupt():
            with self.vm.lock:
                vector = self.machine.interrupt_vector()
                self._want_irq = self.machine.interrupt_pending()
            if vector is not None:
                cpu.inject_irq(vector)
        cpu.request_interrupt_window(self._want_irq)

    # ---- run control
    def _kick(self) -> None:
        """immediate_exit, then the signal: a KVM_RUN in the guest returns, the next one does not enter."""
        try:
            self.cpu.set_immediate_exit(True)
        except KvmError:
            pass  # the VM is being recreated (_rebuild): its new vCPU starts without the flag
        ident = self._ident
        if ident is not None and ident != threading.get_ident():
            try:
                signal.pthread_kill(ident, self._signal)
            except (ProcessLookupError, OSError):
                pass  # the thread has ended

    def _clear_kick(self) -> None:
        self.cpu.set_immediate_exit(False)

    def start(self) -> None:
        super().start()
        if self.dirty_ring_size:
            threading.Thread(target=self._limiter, name="kvm-dirty-limit", daemon=True).start()

    def _run(self) -> None:
        self._ident = threading.get_ident()
        try:
            super()._run()
        finally:
            self._ident = None

    def _run_guest(self) -> None:
        """KVM_RUN until a kick (an ``intr`` exit), a hlt, a triple fault or an error."""
        cpu = self.cpu
        while True:
            self._inject()
            try:
                ex = cpu.run()
            except KvmError as e:
                self._fail(f"KVM_RUN failed: {e}")
                return
            reason = ex.reason
            if reason == "io":
                self._port_io(ex)
            elif reason == "mmio":
                self._mmio(ex)
            elif reason == "irq-window-open":
                continue
            elif reason == "dirty-ring-full":
                # a full ring that has nothing to harvest, again and again, has overflowed
                self._empty_fulls = 0 if self.harvest() else self._empty_fulls + 1
                if self._empty_fulls >= 3:
                    self._empty_fulls = 0
                    self._rebuild()
                    return  # run on with the new vCPU
            elif reason == "intr":
                return  # kicked: park if asked to, then run on
            elif reason == "hlt":
                with self._cond:
                    self._halted = not self._want_irq  # interrupt_request or a reset wakes it
                return
            elif reason == "shutdown":
                # a triple fault: QEMU's qemu_system_reset_request(SHUTDOWN_CAUSE_GUEST_RESET)
                with self._cond:
                    self._halted = True  # until the reset
                self.machine.request_reset("guest-reset")
                return
            elif reason == "internal-error":
                text = f"KVM internal error. Suberror: {ex.error}"
                text += "".join(f"\nextra data[{i}]: {v:#018x}" for i, v in enumerate(ex.extra))
                if ex.error == INTERNAL_ERROR_EMULATION:
                    text += "\nemulation failure"
                self._fail(text)
                return
            elif reason == "fail-entry":
                self._fail(f"KVM: entry failed, hardware error {ex.error:#x}")
                return
            else:
                self._fail(f"KVM: unknown exit reason {ex.code}")
                return

    def _fail(self, text: str) -> None:
        """Stops the vCPU (parked until a reset) and the VM in ``internal-error``."""
        self.error = text
        self.vm.guest_error(text, raw=True)

    def _port_io(self, ex: Exit) -> None:
        """An IN or OUT (string I/O: ``count`` accesses of ``size`` bytes) on the io space."""
        io = self.machine.address_space_io
        size = ex.size
        with self.vm.lock:
            if ex.is_write:
                for i in range(ex.count):
                    io.write_uint(ex.port, int.from_bytes(ex.data[i * size:(i + 1) * size], "little"), size)
                return
            data = b"".join(io.read_uint(ex.port, size).to_bytes(size, "little") for _ in range(ex.count))
        self.cpu.complete_in(data)

    def _mmio(self, ex: Exit) -> None:
        """An access outside RAM (or a write to ROM) through the memory API's dispatch."""
        asp = self.machine.address_space_memory
        with self.vm.lock:
            if ex.is_write:
                asp.write_uint(ex.phys_addr, int.from_bytes(ex.data, "little"), ex.length)
                return
            value = asp.read_uint(ex.phys_addr, ex.length)
        self.cpu.complete_mmio_read(value.to_bytes(ex.length, "little"))
