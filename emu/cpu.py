"""The x86 vCPU: Unicorn (QEMU's TCG in library form) running over our guest RAM.

RAM and ROM ranges of the flat view are mapped into Unicorn by pointer (no copies); MMIO ranges
go to the memory API's dispatch and port I/O to the ``io`` address space, under the machine
lock. Every guest store marks its page dirty through a C hook (``mc_uc_write_hook``). Execution
runs on its own thread; ``stop``, ``system_reset``, ``quit`` and migration's stop-and-copy make it
return at the next basic-block boundary (a C block hook checks a flag), so a stop never splits an
instruction and the guest resumes exactly where it was.

Boot is direct, not through firmware: the machine loads sector 0 of the boot disk at 0x7c00 and
the vCPU starts in real mode at 0000:7c00 with DL=0x80, which is what a boot-sector guest needs.
"""
from __future__ import annotations

import ctypes
import threading
from typing import TYPE_CHECKING, Any

from emu._native import ffi, lib

if TYPE_CHECKING:
    from emu.vm import VM

PAGE = 4096
NEVER = (1 << 64) - 1  # an "until" address no guest reaches


class VCPUError(Exception):
    """The vCPU cannot be set up (e.g. a memory map Unicorn cannot express)."""


class VCPU:
    """One x86 vCPU bound to a VM. ``start()`` begins the thread; it runs while the VM runs."""

    def __init__(self, vm: VM, entry: int = 0x7C00, dl: int = 0x80, dirty_tracking: bool = True) -> None:
        import unicorn
        from unicorn import x86_const as x86

        self.vm = vm
        self.machine = vm.machine
        self._x86 = x86
        self.uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
        self.entry, self.dl = entry, dl
        # Parking waits release the machine lock (QEMU's BQL does the same in pause_all_vcpus):
        # the vCPU may need it to finish the I/O access it is in.
        self._cond = threading.Condition(vm.lock)
        self._pause_requested = True  # until the VM runs (resume)
        self._paused = True
        self._quit = False
        self._halted = False
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        self._hooks: list[Any] = []  # keep ctypes callbacks alive
        self._map_memory()
        self._install_hooks(dirty_tracking)
        self.reset()

    # ---- set-up
    def _map_memory(self) -> None:
        import unicorn

        asp = self.machine.address_space_memory
        for fr in asp.iter_ranges():
            start, size = fr.start, fr.last - fr.start + 1
            if start % PAGE or size % PAGE:
                raise VCPUError(f"range {fr.mr.name} at {start:#x}+{size:#x} is not page aligned")
            if fr.mr.kind in ("ram", "rom"):
                block = fr.mr.block
                assert block is not None
                host = block.host_address + fr.mr.block_offset + fr.offset
                perms = unicorn.UC_PROT_ALL if fr.mr.kind == "ram" else unicorn.UC_PROT_READ | unicorn.UC_PROT_EXEC
                self.uc.mem_map_ptr(start, size, perms, host)
            else:
                read, write = self._mmio_callbacks(start)
                self.uc.mmio_map(start, size, read, None, write, None)

    def _install_hooks(self, dirty_tracking: bool) -> None:
        import unicorn

        x86 = self._x86
        self.uc.hook_add(unicorn.UC_HOOK_INSN, self._on_in, None, 1, 0, x86.UC_X86_INS_IN)
        self.uc.hook_add(unicorn.UC_HOOK_INSN, self._on_out, None, 1, 0, x86.UC_X86_INS_OUT)
        self.uc.hook_add(unicorn.UC_HOOK_MEM_UNMAPPED | unicorn.UC_HOOK_MEM_WRITE_PROT, self._on_bad_access)
        # Dirty tracking in C: the callback is mc_uc_write_hook, its user data the flat view.
        from unicorn.unicorn_py3.unicorn import uclib

        if dirty_tracking:  # off only to measure what it costs (bench/ab_bench.py)
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
    _REGS = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip", "eflags", "cr0", "cr3", "cr4",
             "cs", "ds", "es", "fs", "gs", "ss")

    def get_state(self) -> dict[str, int]:
        """Registers a destination needs to continue the guest (the vCPU must be paused)."""
        x86 = self._x86
        state = {r: int(self.uc.reg_read(getattr(x86, f"UC_X86_REG_{r.upper()}"))) for r in self._REGS}
        _, state["gdt_base"], state["gdt_limit"], _ = self.uc.reg_read(x86.UC_X86_REG_GDTR)
        _, state["idt_base"], state["idt_limit"], _ = self.uc.reg_read(x86.UC_X86_REG_IDTR)
        state["halted"] = int(self._halted)
        return state

    def set_state(self, state: dict[str, int]) -> None:
        """Loads registers saved by ``get_state``: descriptor tables and control registers first,
        so that segment selectors load their descriptors from the (already migrated) GDT."""
        x86 = self._x86
        uc = self.uc
        uc.reg_write(x86.UC_X86_REG_GDTR, (0, state["gdt_base"], state["gdt_limit"], 0))
        uc.reg_write(x86.UC_X86_REG_IDTR, (0, state["idt_base"], state["idt_limit"], 0))
        for r in ("cr0", "cr3", "cr4", "cs", "ss", "ds", "es", "fs", "gs", "eax", "ebx", "ecx", "edx", "esi",
                  "edi", "ebp", "esp", "eflags", "eip"):
            uc.reg_write(getattr(x86, f"UC_X86_REG_{r.upper()}"), state[r])
        self._halted = bool(state.get("halted"))
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

    # ---- run control
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vcpu0", daemon=True)
        self._thread.start()

    def resume(self) -> None:
        with self._cond:
            self._pause_requested = False
            self._cond.notify_all()

    def pause(self) -> None:
        """Stops guest execution and waits until the vCPU thread is parked (within a slice)."""
        with self._cond:
            self._pause_requested = True
            while not self._paused:
                self._kick()
                self._cond.wait(0.1)

    def quit(self) -> None:
        with self._cond:
            self._quit = True
            self._pause_requested = True
            self._cond.notify_all()
            self._kick()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _kick(self) -> None:
        """Makes a running emu_start return at the next block boundary."""
        self._ctl.stop = 1

    @property
    def thread_id(self) -> int | None:
        return self._thread.native_id if self._thread is not None else None

    def _run(self) -> None:
        import unicorn

        x86 = self._x86
        while True:
            with self._cond:
                self._paused = True
                self._cond.notify_all()
                while (self._pause_requested or self._halted or self.error) and not self._quit:
                    self._cond.wait()
                if self._quit:
                    return
                self._paused = False
                self._ctl.stop = 0
            if self._ctl.want_if:
                self._ctl.want_if = 0
                self._take_interrupt()
                with self.vm.lock:
                    if self.machine.interrupt_pending():
                        self._ctl.want_if = 1  # still pending (IF was clear, or more are queued)
            try:
                # Unicorn resumes at EIP in either mode (the engine was made in 32-bit mode)
                self.uc.emu_start(self.uc.reg_read(x86.UC_X86_REG_EIP), NEVER)
            except unicorn.UcError as e:
                if self.error is None:
                    self.error = f"vCPU stopped: {e}"
                self.vm.guest_error(self.error)
                continue  # parks: ``error`` is set until a reset
            if self._halted_at_hlt():
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
