"""The x86 vCPU: Unicorn (QEMU's TCG in library form) running over our guest RAM.

RAM and ROM ranges of the flat view are mapped into Unicorn by pointer (no copies); MMIO ranges
go to the memory API's dispatch and port I/O to the ``io`` address space, under the machine
lock. Every guest store marks its page dirty through a C hook (``mc_uc_write_hook``). Execution
runs on its own thread; ``stop``, ``system_reset``, ``quit`` and migration's stop-and-copy make it
return at the next basic-block boundary (a C block hook checks a flag), so a stop never splits an
instruction and the guest resumes exactly where it was.

Run control, halting and auto-converge throttling are shared with the KVM vCPU
(``emu.vcpu_control``).

Boot is direct, not through firmware: the machine loads sector 0 of the boot disk at 0x7c00 and
the vCPU starts in real mode at 0000:7c00 with DL=0x80, which is what a boot-sector guest needs.
"""
from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any

from emu import cpu_state
from emu._native import ffi, lib
from emu.vcpu_control import VcpuControl, VCPUError

if TYPE_CHECKING:
    from emu.vm import VM

PAGE = 4096
NEVER = (1 << 64) - 1  # an "until" address no guest reaches

__all__ = ["VCPU", "VCPUError"]


class VCPU(VcpuControl):
    """One x86 vCPU bound to a VM, run by Unicorn. ``start()`` begins the thread; it runs while
    the VM runs."""

    accel = "tcg"

    def __init__(self, vm: VM, entry: int = 0x7C00, dl: int = 0x80, dirty_tracking: bool = True) -> None:
        import unicorn
        from unicorn import x86_const as x86

        try:
            cpu_state.check_layout(unicorn)
        except cpu_state.CpuStateError as e:
            raise VCPUError(str(e)) from None
        super().__init__(vm)
        self._unicorn = unicorn
        self._x86 = x86
        self.uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
        self.entry, self.dl = entry, dl
        self._hooks: list[Any] = []  # keep ctypes callbacks alive
        self._map_memory()
        self._install_hooks(dirty_tracking)
        self.reset()

    # ---- set-up
    def _map_memory(self) -> None:
        """RAM and ROM by pointer (PAM's read-only RAM without write permission); MMIO pages
        through the memory API. Unicorn maps whole pages, so an MMIO range smaller than a page
        (the HPET's 1 KiB) maps its page, whose other bytes dispatch as unassigned memory does."""
        import unicorn

        asp = self.machine.address_space_memory
        mmio_pages: list[list[int]] = []  # merged [first, last] page-aligned spans
        for fr in asp.iter_ranges():
            start, size = fr.start, fr.last - fr.start + 1
            if fr.mr.kind in ("ram", "rom"):
                if start % PAGE or size % PAGE:
                    raise VCPUError(f"range {fr.mr.name} at {start:#x}+{size:#x} is not page aligned")
                block = fr.mr.block
                assert block is not None
                host = block.host_address + fr.mr.block_offset + fr.offset
                writable = fr.mr.kind == "ram" and not fr.readonly
                perms = unicorn.UC_PROT_ALL if writable else unicorn.UC_PROT_READ | unicorn.UC_PROT_EXEC
                self.uc.mem_map_ptr(start, size, perms, host)
                continue
            first, last = start & ~(PAGE - 1), fr.last | (PAGE - 1)
            if mmio_pages and first <= mmio_pages[-1][1] + 1:
                mmio_pages[-1][1] = max(mmio_pages[-1][1], last)
            else:
                mmio_pages.append([first, last])
        for first, last in mmio_pages:
            read, write = self._mmio_callbacks(first)
            self.uc.mmio_map(first, last - first + 1, read, None, write, None)

    def _install_hooks(self, dirty_tracking: bool) -> None:
        import unicorn

        x86 = self._x86
        self.uc.hook_add(unicorn.UC_HOOK_INSN, self._on_in, None, 1, 0, x86.UC_X86_INS_IN)
        self.uc.hook_add(unicorn.UC_HOOK_INSN, self._on_out, None, 1, 0, x86.UC_X86_INS_OUT)
        self.uc.hook_add(unicorn.UC_HOOK_MEM_UNMAPPED | unicorn.UC_HOOK_MEM_WRITE_PROT, self._on_bad_access)
        # Dirty tracking in C: the callback is mc_uc_write_hook, its user data the flat view.
        from unicorn.unicorn_py3.unicorn import uclib

        if dirty_tracking:  # off only to measure what it costs (bench/ab_bench.py)
            # the hook walks the flat table without the machine lock: replaced tables are freed
            # only between runs (see _run)
            self.machine.address_space_memory.lockfree_readers += 1
            flat = int(ffi.cast("uintptr_t", self.machine.address_space_memory.flat))
            self._c_hook(uclib, unicorn.UC_HOOK_MEM_WRITE, "mc_uc_write_hook", flat)
        # Stops are requested through a flag that a C block hook checks: the stop then happens
        # exactly at a block boundary (see mc_uc_ctl in memcore.h for why not emu_stop/timeout).
        self._ctl = ffi.new("mc_uc_ctl *")
        self._ctl.emu_stop = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
        self._ctl.reg_read = ctypes.cast(uclib.uc_reg_read, ctypes.c_void_p).value
        self._ctl.eflags_reg = x86.UC_X86_REG_EFLAGS
        self._c_hook(uclib, unicorn.UC_HOOK_BLOCK, "mc_uc_block_hook", int(ffi.cast("uintptr_t", self._ctl)))

    def _c_hook(self, uclib: Any, kind: int, name: str, user_data: int) -> None:
        """Registers a C function of the memory core as a Unicorn hook on all addresses."""
        handle = ctypes.c_size_t()
        fn = int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))
        status = uclib.uc_hook_add(self.uc._uch, ctypes.byref(handle), kind, ctypes.c_void_p(fn),
                                   ctypes.c_void_p(user_data), 1, 0)
        if status != 0:
            raise VCPUError(f"cannot install the {name} hook (unicorn error {status})")

    def reset(self) -> None:
        """Real mode at 0000:entry, DL = boot drive, as after a BIOS hands over to a boot sector."""
        x86 = self._x86
        uc = self.uc
        uc.reg_write(x86.UC_X86_REG_CR0, 0x10)
        for reg in (x86.UC_X86_REG_CS, x86.UC_X86_REG_DS, x86.UC_X86_REG_ES, x86.UC_X86_REG_SS,
                    x86.UC_X86_REG_FS, x86.UC_X86_REG_GS):
            uc.reg_write(reg, 0)
        for reg in (x86.UC_X86_REG_EAX, x86.UC_X86_REG_EBX, x86.UC_X86_REG_ECX, x86.UC_X86_REG_ESI,
                    x86.UC_X86_REG_EDI, x86.UC_X86_REG_EBP):
            uc.reg_write(reg, 0)
        uc.reg_write(x86.UC_X86_REG_EDX, self.dl)
        uc.reg_write(x86.UC_X86_REG_ESP, 0x7C00)
        uc.reg_write(x86.UC_X86_REG_EFLAGS, 0x2)
        uc.reg_write(x86.UC_X86_REG_EIP, self.entry)
        self._halted = False
        self.error = None

    # ---- state for migration (the "cpu" section of our pc streams)
    def get_state(self) -> dict[str, Any]:
        """The full architectural state (``emu.cpu_state``) plus the halted and pending-interrupt
        flags; the vCPU must be paused."""
        state: dict[str, Any] = cpu_state.read_state(self.uc, self._unicorn)
        state["halted"] = int(self._halted)
        state["interrupt_request"] = int(self._ctl.want_if)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        """Loads a state saved by ``get_state``, in any mode (real, 16/32-bit protected, long),
        hidden segment parts included; the vCPU must be paused."""
        cpu_state.write_state(self.uc, self._unicorn, state)
        self._halted = bool(state.get("halted"))
        self._ctl.want_if = 1 if state.get("interrupt_request") else 0
        self.error = None

    # ---- interrupts
    def interrupt_request(self) -> None:
        """The machine has an interrupt for the CPU (any thread): it is taken at the next block
        boundary where EFLAGS.IF is set; a halted CPU wakes up."""
        with self._cond:
            self._ctl.want_if = 1
            self._halted = False
            self._cond.notify_all()

    def _take_interrupt(self) -> None:
        """Called between emu_start runs: inject the pending interrupt if IF allows it."""
        x86 = self._x86
        uc = self.uc
        if not uc.reg_read(x86.UC_X86_REG_EFLAGS) & 0x200:
            return
        with self.vm.lock:
            vector = self.machine.interrupt_vector()
        if vector is None:
            return
        self._deliver(vector)

    def _deliver(self, vector: int) -> None:
        """Enters the handler of ``vector`` as the CPU does: real-mode IVT, or a protected-mode
        interrupt/trap gate at the same privilege level (flat guests)."""
        x86 = self._x86
        uc = self.uc
        flags = uc.reg_read(x86.UC_X86_REG_EFLAGS)
        cs = uc.reg_read(x86.UC_X86_REG_CS)
        eip = uc.reg_read(x86.UC_X86_REG_EIP)
        mem = self.machine.address_space_memory
        if not uc.reg_read(x86.UC_X86_REG_CR0) & 1:
            ss = uc.reg_read(x86.UC_X86_REG_SS)
            sp = uc.reg_read(x86.UC_X86_REG_ESP) & 0xFFFF
            for value in (flags & 0xFFFF, cs, eip & 0xFFFF):
                sp = (sp - 2) & 0xFFFF
                mem.write_uint((ss << 4) + sp, value, 2)
            uc.reg_write(x86.UC_X86_REG_ESP, sp)
            target = mem.read_uint(vector * 4, 4)
            uc.reg_write(x86.UC_X86_REG_EFLAGS, flags & ~0x300)  # IF and TF off
            uc.reg_write(x86.UC_X86_REG_CS, target >> 16)
            uc.reg_write(x86.UC_X86_REG_EIP, target & 0xFFFF)
            return
        _, base, limit, _ = uc.reg_read(x86.UC_X86_REG_IDTR)
        if vector * 8 + 7 > limit:
            self.error = f"interrupt vector {vector:#x} beyond the IDT limit {limit:#x}"
            return
        gate = mem.read_uint(base + vector * 8, 8)
        offset = (gate & 0xFFFF) | ((gate >> 32) & 0xFFFF0000)
        selector = (gate >> 16) & 0xFFFF
        kind = (gate >> 40) & 0x1F
        esp = uc.reg_read(x86.UC_X86_REG_ESP)
        for value in (flags, cs, eip):
            esp = (esp - 4) & 0xFFFFFFFF
            mem.write_uint(esp, value, 4)  # flat stack segment
        uc.reg_write(x86.UC_X86_REG_ESP, esp)
        new_flags = flags & ~0x100  # TF off
        if kind == 0x0E:  # interrupt gate (a trap gate, 0x0F, leaves IF alone)
            new_flags &= ~0x200
        uc.reg_write(x86.UC_X86_REG_EFLAGS, new_flags)
        if selector != cs:
            uc.reg_write(x86.UC_X86_REG_CS, selector)
        uc.reg_write(x86.UC_X86_REG_EIP, offset)

    # ---- hooks (run on the vCPU thread)
    def _on_in(self, uc: Any, port: int, size: int, user_data: Any) -> int:
        with self.vm.lock:
            return self.machine.address_space_io.read_uint(port, size)

    def _on_out(self, uc: Any, port: int, size: int, value: int, user_data: Any) -> None:
        with self.vm.lock:
            self.machine.address_space_io.write_uint(port, value, size)

    def _mmio_callbacks(self, base: int) -> tuple[Any, Any]:
        """Unicorn MMIO callbacks for a range at ``base``: the memory API's dispatch, locked."""
        asp = self.machine.address_space_memory

        def read(uc: Any, offset: int, size: int, user_data: Any) -> int:
            with self.vm.lock:
                return asp.read_uint(base + offset, size)

        def write(uc: Any, offset: int, size: int, value: int, user_data: Any) -> None:
            with self.vm.lock:
                asp.write_uint(base + offset, value, size)

        self._hooks.extend((read, write))
        return read, write

    def _on_bad_access(self, uc: Any, access: int, address: int, size: int, value: int, user_data: Any) -> bool:
        self.error = f"guest access to unmapped or read-only memory at {address:#x} (size {size})"
        return False  # stops emulation; the VM enters internal-error

    # ---- run control (the thread and the parking are VcpuControl's)
    def _kick(self) -> None:
        """Makes a running emu_start return at the next block boundary."""
        self._ctl.stop = 1

    def _clear_kick(self) -> None:
        self._ctl.stop = 0

    def _run_guest(self) -> None:
        """Takes a pending interrupt, then runs guest code until a kick, a hlt or an error."""
        import unicorn

        x86 = self._x86
        if self._ctl.want_if:
            self._ctl.want_if = 0
            self._take_interrupt()
            with self.vm.lock:
                if self.machine.interrupt_pending():
                    self._ctl.want_if = 1  # still pending (IF was clear, or more are queued)
        with self.vm.lock:  # not inside a hook now: free the flat tables replaced meanwhile
            self.machine.address_space_memory.reclaim()
        try:
            # Unicorn resumes at EIP in either mode (the engine was made in 32-bit mode)
            self.uc.emu_start(self.uc.reg_read(x86.UC_X86_REG_EIP), NEVER)
        except unicorn.UcError as e:
            if self.error is None:
                self.error = f"vCPU stopped: {e}"
            self.vm.guest_error(self.error)
            return  # parks: ``error`` is set until a reset
        # A throttle tick stops the guest at a block start; the byte before it may happen to be
        # 0xf4, which must not be taken for a hlt (a real hlt racing a tick only wakes early).
        if not (self._ctl.stop and self._throttle_due) and self._halted_at_hlt():
            with self._cond:
                # waits for an interrupt (interrupt_request clears it) or a reset
                self._halted = not self._ctl.want_if

    def _halted_at_hlt(self) -> bool:
        x86 = self._x86
        eip = self.uc.reg_read(x86.UC_X86_REG_EIP)
        cs = self.uc.reg_read(x86.UC_X86_REG_CS)
        addr = eip if self.uc.reg_read(x86.UC_X86_REG_CR0) & 1 else (cs << 4) + eip
        try:
            return bytes(self.uc.mem_read(addr - 1, 1)) == b"\xf4"
        except Exception:  # noqa: BLE001 - unmapped: not a hlt
            return False
