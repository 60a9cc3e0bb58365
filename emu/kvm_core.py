"""The low-level core of the KVM accelerator: /dev/kvm, VMs, memory slots, dirty logs, vCPUs.

A thin typed layer over ``csrc/kvm.c`` (QEMU's accel/kvm reduced to an x86 PC without in-kernel
irqchip): :class:`Kvm` opens ``/dev/kvm``, :meth:`Kvm.create_vm` gives a :class:`KvmVm` whose
slots map the pages of :class:`emu.ram.RamBlock` blocks (so qtest and migration see what the
guest sees), and :class:`KvmVcpu` runs the guest one ``KVM_RUN`` at a time, reporting each exit
as an :class:`Exit`. Nothing here is wired into the emulator; C failures raise :class:`KvmError`.
A leaf: imports only ``emu._native`` and ``emu.ram``.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from emu._native import ffi, lib
from emu.ram import RamBlock

if TYPE_CHECKING:
    from numpy import ndarray

#: Exit reason numbers (the kernel's KVM_EXIT_*) by the name :attr:`Exit.reason` gives them.
EXIT_NAMES = {
    lib.KVM_CORE_EXIT_UNKNOWN: "unknown",
    lib.KVM_CORE_EXIT_IO: "io",
    lib.KVM_CORE_EXIT_HLT: "hlt",
    lib.KVM_CORE_EXIT_MMIO: "mmio",
    lib.KVM_CORE_EXIT_IRQ_WINDOW_OPEN: "irq-window-open",
    lib.KVM_CORE_EXIT_SHUTDOWN: "shutdown",
    lib.KVM_CORE_EXIT_FAIL_ENTRY: "fail-entry",
    lib.KVM_CORE_EXIT_INTR: "intr",
    lib.KVM_CORE_EXIT_INTERNAL_ERROR: "internal-error",
    lib.KVM_CORE_EXIT_DIRTY_RING_FULL: "dirty-ring-full",
}
#: The segment registers of :meth:`KvmVcpu.sregs` (dicts of base, limit, selector, type...).
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
#: Its descriptor tables (dicts of base, limit).
DTABLES = ("gdt", "idt")
PAGE_SIZE = 4096


class KvmError(OSError):
    """A KVM call failed (``errno`` is the C core's errno) or was given a bad argument."""


def _check(rc: int, what: str) -> int:
    """``rc`` when it is not negative, else KvmError(-rc) naming ``what``."""
    if rc < 0:
        raise KvmError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


def _bad(what: str) -> KvmError:
    """The KvmError of a bad argument (EINVAL)."""
    return KvmError(errno.EINVAL, what)


def kvm_available() -> str | None:
    """None when /dev/kvm opens and creates a VM, else why not (QEMU's wording)."""
    fd = lib.kvm_open()
    if fd < 0:
        if -fd == errno.EPROTO:
            return "kvm version not supported"
        return f"Could not access KVM kernel module: {os.strerror(-fd)}"
    try:
        vm = lib.kvm_create_vm(fd)
        if vm < 0:
            return f"ioctl(KVM_CREATE_VM) failed: {-vm} {os.strerror(-vm)}"
        lib.kvm_close_vm(vm)
        return None
    finally:
        os.close(fd)


#: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (KVM_CLEAR_DIRTY_LOG)
CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168
#: KVM_CAP_DIRTY_LOG_RING and the size of one ring entry (struct kvm_dirty_gfn)
CAP_DIRTY_LOG_RING = 192
DIRTY_GFN_SIZE = 16


def kvm_dirty_ring_limit() -> int:
    """The most dirty-ring entries per vCPU this host's KVM takes (0: no dirty ring)."""
    kvm = Kvm()
    try:
        return kvm.check_extension(CAP_DIRTY_LOG_RING) // DIRTY_GFN_SIZE
    finally:
        kvm.close()


@dataclass
class Exit:
    """One ``KVM_RUN``'s outcome; only the fields of ``reason`` are meaningful.

    ``reason``: a name of :data:`EXIT_NAMES` (``exit-N`` for others), ``code`` its number.
    io: ``direction`` ("in"/"out"), ``port``, ``size``, ``count``, ``total`` (size * count bytes),
    ``data`` (the OUT bytes, at most 4096 of string I/O), ``is_write`` for an OUT. mmio: ``phys_addr``, ``length``,
    ``is_write``, ``data`` (the written bytes). internal-error: ``error`` is the suberror, ``extra``
    the kernel's extra data;
    fail-entry: the hardware entry failure reason.
    """

    reason: str
    code: int
    direction: str = ""
    port: int = 0
    size: int = 0
    count: int = 0
    total: int = 0
    phys_addr: int = 0
    length: int = 0
    is_write: bool = False
    data: bytes = b""
    error: int = 0
    extra: tuple[int, ...] = ()


def _exit_from_c(out: Any) -> Exit:
    """An :class:`Exit` from a filled ``kvm_core_exit``."""
    code = int(out.reason)
    ex = Exit(EXIT_NAMES.get(code, f"exit-{code}"), code)
    if code == lib.KVM_CORE_EXIT_IO:
        ex.direction = "out" if out.io_direction == lib.KVM_CORE_IO_OUT else "in"
        ex.port, ex.size, ex.count, ex.total = out.io_port, out.io_size, out.io_count, out.io_total
        ex.is_write = ex.direction == "out"
    elif code == lib.KVM_CORE_EXIT_MMIO:
        ex.phys_addr, ex.length, ex.is_write = out.mmio_phys_addr, out.mmio_len, bool(out.mmio_is_write)
    elif code in (lib.KVM_CORE_EXIT_INTERNAL_ERROR, lib.KVM_CORE_EXIT_FAIL_ENTRY):
        ex.error = out.error
        ex.extra = tuple(out.idata[i] for i in range(out.ndata))
    if out.data_len:
        ex.data = bytes(ffi.buffer(out.data, out.data_len))
    return ex


class Kvm:
    """The KVM system fd (``/dev/kvm``, API version 12)."""

    def __init__(self) -> None:
        self.fd: int = _check(lib.kvm_open(), "open /dev/kvm")

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 when the capability is absent, else its value."""
        return _check(lib.kvm_check_extension(self._fd(), cap), f"KVM_CHECK_EXTENSION {cap}")

    def create_vm(self) -> KvmVm:
        """A new VM (TSS and identity map placed as QEMU does on x86)."""
        return KvmVm(self, _check(lib.kvm_create_vm(self._fd()), "KVM_CREATE_VM"))

    def close(self) -> None:
        """Closes the system fd (VMs already created keep working)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _fd(self) -> int:
        if self.fd < 0:
            raise KvmError(errno.EBADF, "/dev/kvm is closed")
        return self.fd


class KvmVm:
    """A VM fd: memory slots, dirty logs, vCPUs. Made by :meth:`Kvm.create_vm`."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        self.kvm = kvm
        self.fd = fd
        self._blocks: dict[int, RamBlock] = {}  # keeps mapped blocks alive
        self._vcpus: list[KvmVcpu] = []
        self.ring_entries = 0  # dirty-ring entries per vCPU (0: dirty bitmaps)
        self.manual_protect = False  # KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled

    def enable_dirty_ring(self, entries: int) -> None:
        """KVM_CAP_DIRTY_LOG_RING, ``entries`` (a power of two) per vCPU, before any vCPU:
        dirty pages are then harvested from the vCPUs' rings, not read with :meth:`dirty_log`."""
        if self._vcpus:
            raise _bad("the dirty ring must be enabled before the first vCPU")
        _check(lib.kvm_enable_dirty_ring(self._fd(), entries), f"enabling a dirty ring of {entries} entries")
        self.ring_entries = entries

    def reset_dirty_rings(self) -> int:
        """KVM_RESET_DIRTY_RINGS: the pages harvested since the last reset are write-protected
        again (so their next write is logged); returns how many."""
        return _check(lib.kvm_reset_dirty_rings(self._fd()), "KVM_RESET_DIRTY_RINGS")

    def map(self, slot: int, guest_phys: int, block_or_host_addr: RamBlock | int, size: int | None = None,
            log_dirty: bool = False, readonly: bool = False) -> None:
        """Maps ``size`` bytes (default: the whole block) at ``guest_phys`` as memory slot ``slot``.

        A :class:`RamBlock` is mapped from its first byte (and kept alive while mapped); an int
        is a host address the caller keeps mapped. Size 0 deletes the slot. Everything must be
        page-aligned (KvmError otherwise). A ``readonly`` slot (ROM) turns guest writes into
        MMIO-write exits."""
        if isinstance(block_or_host_addr, RamBlock):
            block = block_or_host_addr
            size = block.size if size is None else size
            if not 0 <= size <= block.size:
                raise _bad(f"slot {slot}: {size:#x} bytes of block {block.name!r} ({block.size:#x} bytes)")
            host = block.host_address
        else:
            block, host = None, block_or_host_addr
            if size is None:
                raise _bad("map: a host address needs a size")
        if min(slot, guest_phys, size, host) < 0 or max(guest_phys, size, host) >= 1 << 64 or slot >= 1 << 32:
            raise _bad(f"map: slot {slot}, guest {guest_phys:#x}, size {size:#x} out of range")
        flags = (lib.KVM_CORE_LOG_DIRTY if log_dirty else 0) | (lib.KVM_CORE_READONLY if readonly else 0)
        _check(lib.kvm_set_memory(self._fd(), slot, guest_phys, size, host, flags), f"map slot {slot}")
        if block is not None and size:
            self._blocks[slot] = block
        else:
            self._blocks.pop(slot, None)

    def enable_manual_protect(self) -> bool:
        """KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, before any slot: :meth:`dirty_log` then leaves the
        pages writable until :meth:`clear_dirty_log` re-arms them. False where the kernel lacks it."""
        if self.kvm.check_extension(CAP_MANUAL_DIRTY_LOG_PROTECT2) <= 0:
            return False
        _check(lib.kvm_enable_manual_protect(self._fd()), "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2")
        self.manual_protect = True
        return True

    def clear_dirty_log(self, slot: int, bitmap: ndarray) -> None:
        """KVM_CLEAR_DIRTY_LOG: the pages set in ``bitmap`` (from :meth:`dirty_log`) log their
        next write again (manual protect only)."""
        buf = ffi.cast("uint64_t *", ffi.from_buffer(bitmap))
        _check(lib.kvm_clear_dirty_log(self._fd(), slot, buf, len(bitmap)), f"clearing the dirty log of slot {slot}")

    def dirty_log(self, slot: int, pages: int) -> ndarray:
        """KVM_GET_DIRTY_LOG of ``slot`` (mapped with ``log_dirty``): a numpy uint64 bitmap of
        ``pages`` bits (bit n: page n of the slot written since the previous call, which clears)."""
        import numpy

        if not 0 <= slot < 1 << 32 or pages <= 0:
            raise _bad(f"dirty_log: slot {slot}, {pages} pages")
        bitmap = numpy.zeros((pages + 63) // 64, dtype=numpy.uint64)
        buf = ffi.from_buffer("uint64_t[]", bitmap)
        _check(lib.kvm_get_dirty_log(self._fd(), slot, buf, len(bitmap)), f"dirty log of slot {slot}")
        return bitmap

    def vcpu(self, index: int) -> KvmVcpu:
        """Creates vCPU ``index`` (with the host's supported CPUID)."""
        if not 0 <= index < lib.KVM_CORE_MAX_VCPUS:
            raise _bad(f"vCPU index {index} out of range")
        ptr = lib.kvm_vcpu_new(self.kvm._fd(), self._fd(), index, self.ring_entries)
        if ptr == ffi.NULL:
            err = ffi.errno or errno.EIO
            raise KvmError(err, f"vCPU {index}: {os.strerror(err)}")
        vcpu = KvmVcpu(ffi.gc(ptr, lib.kvm_vcpu_free), index)
        self._vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        """Closes the vCPUs, then the VM fd (the mappings go with it)."""
        for vcpu in self._vcpus:
            vcpu.close()
        self._vcpus.clear()
        if self.fd >= 0:
            lib.kvm_close_vm(self.fd)
            self.fd = -1
        self._blocks.clear()

    def _fd(self) -> int:
        if self.fd < 0:
            raise KvmError(errno.EBADF, "the VM is closed")
        return self.fd


class KvmVcpu:
    """One vCPU: registers, ``KVM_RUN``, I/O completion, interrupt injection. Made by
    :meth:`KvmVm.vcpu`. Only :meth:`set_immediate_exit` may be called from another thread."""

    def __init__(self, ptr: Any, index: int) -> None:
        self._ptr: Any = ptr
        self.index = index
        self._exit = ffi.new("kvm_core_exit *")

    def regs(self) -> dict[str, int]:
        """rax..r15, rip, rflags."""
        out = ffi.new("kvm_core_regs *")
        _check(lib.kvm_vcpu_get_regs(self._vcpu(), out), "KVM_GET_REGS")
        return {name: getattr(out, name) for name, _ in ffi.typeof("kvm_core_regs").fields}

    def set_regs(self, regs: dict[str, int]) -> None:
        """Sets the registers named in ``regs``; the others keep their values."""
        cur = ffi.new("kvm_core_regs *")
        _check(lib.kvm_vcpu_get_regs(self._vcpu(), cur), "KVM_GET_REGS")
        _assign(cur, regs, "regs")
        _check(lib.kvm_vcpu_set_regs(self._vcpu(), cur), "KVM_SET_REGS")

    def sregs(self) -> dict[str, Any]:
        """Segments (dicts of base, limit, selector, type, present, dpl, db, s, l, g, avl,
        unusable), gdt/idt (dicts of base, limit), cr0, cr2, cr3, cr4, cr8, efer, apic_base."""
        out = ffi.new("kvm_core_sregs *")
        _check(lib.kvm_vcpu_get_sregs(self._vcpu(), out), "KVM_GET_SREGS")
        return _to_dict(out[0])

    def set_sregs(self, sregs: dict[str, Any]) -> None:
        """Sets the registers named in ``sregs`` (segments and tables may be partial dicts)."""
        cur = ffi.new("kvm_core_sregs *")
        _check(lib.kvm_vcpu_get_sregs(self._vcpu(), cur), "KVM_GET_SREGS")
        _assign(cur, sregs, "sregs")
        _check(lib.kvm_vcpu_set_sregs(self._vcpu(), cur), "KVM_SET_SREGS")

    def fpu(self) -> dict[str, Any]:
        """The x87/SSE state: ``fpr`` (8 x 16 bytes, ST(0) first), ``xmm`` (16 x 16 bytes),
        fcw, fsw, ftwx (abridged tags), last_opcode, last_ip, last_dp, mxcsr."""
        out = ffi.new("kvm_core_fpu *")
        _check(lib.kvm_vcpu_get_fpu(self._vcpu(), out), "KVM_GET_FPU")
        state: dict[str, Any] = {name: getattr(out, name) for name in
                                 ("fcw", "fsw", "ftwx", "last_opcode", "last_ip", "last_dp", "mxcsr")}
        state["fpr"] = bytes(ffi.buffer(out.fpr))
        state["xmm"] = bytes(ffi.buffer(out.xmm))
        return state

    def set_fpu(self, state: dict[str, Any]) -> None:
        """Sets the whole x87/SSE state (every key of :meth:`fpu`)."""
        cur = ffi.new("kvm_core_fpu *")
        for name in ("fpr", "xmm"):
            raw = bytes(state[name])
            if len(raw) != ffi.sizeof(getattr(cur, name)):
                raise _bad(f"fpu.{name}: {len(raw)} bytes")
            ffi.memmove(getattr(cur, name), raw, len(raw))
        _assign(cur, {k: v for k, v in state.items() if k not in ("fpr", "xmm")}, "fpu")
        _check(lib.kvm_vcpu_set_fpu(self._vcpu(), cur), "KVM_SET_FPU")

    def msrs(self, indexes: list[int]) -> dict[int, int]:
        """KVM_GET_MSRS: the values of ``indexes``; an MSR the kernel lacks is a KvmError."""
        n = len(indexes)
        if n > lib.KVM_CORE_MAX_MSRS:
            raise _bad(f"{n} MSRs in one call")
        idx, values = ffi.new("uint32_t[]", indexes), ffi.new("uint64_t[]", max(n, 1))
        got = _check(lib.kvm_vcpu_get_msrs(self._vcpu(), idx, values, n), "KVM_GET_MSRS")
        if got < n:
            raise KvmError(errno.EINVAL, f"KVM_GET_MSRS: MSR {indexes[got]:#x} is not supported")
        return {index: int(values[i]) for i, index in enumerate(indexes)}

    def set_msrs(self, msrs: dict[int, int]) -> None:
        """KVM_SET_MSRS: every one of ``msrs`` (index -> value) or a KvmError."""
        n = len(msrs)
        if n > lib.KVM_CORE_MAX_MSRS:
            raise _bad(f"{n} MSRs in one call")
        indexes = list(msrs)
        idx, values = ffi.new("uint32_t[]", indexes), ffi.new("uint64_t[]", [msrs[i] for i in indexes] or [0])
        got = _check(lib.kvm_vcpu_set_msrs(self._vcpu(), idx, values, n), "KVM_SET_MSRS")
        if got < n:
            raise KvmError(errno.EINVAL, f"KVM_SET_MSRS: MSR {indexes[got]:#x} = {msrs[indexes[got]]:#x} refused")

    def reset_real_mode(self, cs: int, ip: int) -> None:
        """Real mode at cs:ip (CS base cs * 16), other segments 0, registers 0, rflags 0x2."""
        if not (0 <= cs <= 0xffff and 0 <= ip <= 0xffff):
            raise _bad(f"real mode {cs:#x}:{ip:#x}")
        _check(lib.kvm_vcpu_reset_real_mode(self._vcpu(), cs, ip), "real-mode reset")

    def run(self) -> Exit:
        """One ``KVM_RUN`` (the GIL released), and why it returned."""
        _check(lib.kvm_vcpu_run(self._vcpu(), self._exit), "KVM_RUN")
        return _exit_from_c(self._exit)

    def complete_in(self, data: bytes) -> None:
        """The bytes of the pending port read (the last exit was an IN; at most its total)."""
        _check(lib.kvm_vcpu_complete_in(self._vcpu(), data, len(data)), "complete IN")

    def complete_mmio_read(self, data: bytes) -> None:
        """The bytes of the pending MMIO read (at most its length)."""
        _check(lib.kvm_vcpu_complete_mmio_read(self._vcpu(), data, len(data)), "complete MMIO read")

    def request_interrupt_window(self, on: bool) -> None:
        """With ``on``, runs exit as ``irq-window-open`` as soon as an interrupt can be injected."""
        lib.kvm_vcpu_request_interrupt_window(self._vcpu(), 1 if on else 0)

    def ready_for_interrupt(self) -> bool:
        """Whether :meth:`inject_irq` may be called now (as of the last exit)."""
        return _check(lib.kvm_vcpu_ready_for_interrupt(self._vcpu()), "ready for interrupt") == 1

    def inject_irq(self, vector: int) -> None:
        """KVM_INTERRUPT: external interrupt ``vector`` is delivered at the next entry."""
        if not 0 <= vector <= 255:
            raise _bad(f"interrupt vector {vector}")
        _check(lib.kvm_vcpu_inject_irq(self._vcpu(), vector), "KVM_INTERRUPT")

    def start_reaper(self, vm: KvmVm, pages: list[int], interval_us: int = 1000) -> KvmReaper:
        """A C thread that harvests this vCPU's dirty ring every ``interval_us`` (faster while it
        is busy) into bitmaps of its own: ``pages[s]`` pages for slot ``s`` (0: not logged)."""
        arr = ffi.new("uint64_t[]", pages or [0])
        ptr = lib.kvm_reaper_start(self._vcpu(), vm._fd(), arr, len(pages), interval_us)
        if ptr == ffi.NULL:
            err = ffi.errno or errno.EIO
            raise KvmError(err, f"dirty-ring reaper: {os.strerror(err)}")
        return KvmReaper(ptr, self)

    def set_immediate_exit(self, on: bool) -> None:
        """Thread-safe kick: with ``on`` the next ``KVM_RUN`` returns at once (an ``intr`` exit);
        to stop a run already in the guest, also signal its thread. Clear it before resuming."""
        lib.kvm_vcpu_set_immediate_exit(self._vcpu(), 1 if on else 0)

    def close(self) -> None:
        """Unmaps the run page and closes the vCPU fd."""
        if self._ptr is not None:
            ffi.release(self._ptr)
            self._ptr = None

    def _vcpu(self) -> Any:
        if self._ptr is None:
            raise KvmError(errno.EBADF, f"vCPU {self.index} is closed")
        return self._ptr


class KvmReaper:
    """A running dirty-ring reaper (:meth:`KvmVcpu.start_reaper`); :meth:`stop` it before the
    vCPU is closed."""

    def __init__(self, ptr: Any, vcpu: KvmVcpu) -> None:
        self._ptr: Any = ptr
        self._vcpu = vcpu  # the reaper reads its ring: keep it alive

    def collect(self, bitmaps: list[ndarray | None]) -> int:
        """Harvests once more and ORs the pages reaped so far into ``bitmaps[s]`` (uint64 words
        of at least the slot's pages; None: dropped); returns how many pages were moved."""
        if self._ptr is None:
            return 0
        ptrs = ffi.new("uint64_t *[]", max(len(bitmaps), 1))
        for i, bits in enumerate(bitmaps):
            if bits is not None:
                ptrs[i] = ffi.cast("uint64_t *", ffi.from_buffer(bits))
        return _check(lib.kvm_reaper_collect(self._ptr, ptrs), "collecting the dirty ring")

    @property
    def total(self) -> int:
        """Pages harvested since the start."""
        return int(lib.kvm_reaper_total(self._ptr)) if self._ptr is not None else 0

    def stop(self) -> None:
        """Stops and joins the thread."""
        if self._ptr is not None:
            lib.kvm_reaper_stop(self._ptr)
            self._ptr = None


def kick_signal() -> int:
    """The signal that kicks a vCPU thread out of ``KVM_RUN`` (its no-op handler installed;
    send it with ``signal.pthread_kill``)."""
    return _check(lib.kvm_kick_signal_init(), "installing the vCPU kick signal")


def _to_dict(value: Any) -> Any:
    """A C struct as a dict of its fields (nested structs as dicts), an int as itself."""
    if isinstance(value, int):
        return value
    return {name: _to_dict(getattr(value, name)) for name, _ in ffi.typeof(value).fields}


def _assign(target: Any, values: dict[str, Any], what: str) -> None:
    """Stores ``values`` into the C struct ``target`` field by field (nested dicts into nested
    structs); an unknown name or an out-of-range value is a KvmError."""
    fields = dict(ffi.typeof(target).item.fields if ffi.typeof(target).kind == "pointer"
                  else ffi.typeof(target).fields)
    for name, value in values.items():
        if name not in fields:
            raise _bad(f"{what}: no register {name!r}")
        if isinstance(value, dict):
            if fields[name].type.kind != "struct":
                raise _bad(f"{what}: {name} is not a structure")
            _assign(getattr(target, name), value, f"{what}.{name}")
            continue
        try:
            setattr(target, name, value)
        except (OverflowError, TypeError) as e:
            raise _bad(f"{what}.{name}: {e}") from None
