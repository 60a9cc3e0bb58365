"""The x86 architectural state of a Unicorn vCPU, read and written as a whole (for migration).

Unicorn's register API cannot restore every state a real CPU can be in: a segment register's
hidden part (base, limit, flags) is only ever loaded from a selector, and Unicorn refuses loads
that the CPU would fault on (SS = 0 in protected mode, which is exactly where QEMU's own A-B guest
runs: it enters protected mode without reloading SS). The 64-bit registers are not reachable in a
32-bit engine either. So the state goes through Unicorn's saved context (``uc_context_save``), a
copy of QEMU's ``CPUX86State``: the fields are read and patched at their offsets there and the
context is restored, which sets the hidden parts exactly as they were. EFLAGS goes through the
register API (it splits the lazily computed condition codes), and the TLB is flushed afterwards.

The offsets are those of the pinned Unicorn (2.1.4, QEMU 5's ``CPUX86State`` built for x86_64);
:func:`check_layout` verifies them against values written through the register API once per
process, so another Unicorn build fails with a clear error instead of restoring garbage.

This module owns the byte layout only; the field names are the ones of the ``cpu`` section's
VMState description (``emu.migration.vmstate``), and it imports nothing from the emulator.
"""
from __future__ import annotations

import ctypes
import struct
from typing import Any

#: general registers in CPUX86State order (R_EAX=0, R_ECX=1, R_EDX=2, R_EBX=3, R_ESP...)
GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
#: segment caches in CPUX86State order: segs[R_ES..R_GS], then ldt and tr
SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs", "ldt", "tr")
#: MSRs that live outside the context's fixed offsets, moved through the register API
MSRS = {"star": 0xC0000081, "lstar": 0xC0000082, "cstar": 0xC0000083, "fmask": 0xC0000084,
        "kernelgsbase": 0xC0000102, "sysenter_cs": 0x174, "sysenter_esp": 0x175, "sysenter_eip": 0x176}

# Offsets in CPUX86State (the context data; a SegmentCache is selector u32, base u64, limit u32,
# flags u32: 24 bytes)
_REGS, _RIP, _HFLAGS, _HFLAGS2 = 0, 128, 176, 180
_SEGS = 184  # es cs ss ds fs gs ldt tr, then gdt (376) and idt (400)
_SEG_SIZE = 24
_GDT, _IDT = 376, 400
_CR = 424  # cr[0..8], u64 each
_EFER = 592
_FPU, _FPU_END = 604, 776  # fpstt, fpus, fpuc, fptags, fpregs[8], fpop, fpcs, fpds, fpip, fpdp
_MXCSR = 816
_XMM, _XMM_STRIDE = 824, 64  # xmm_regs[16] (ZMMReg); the low 16 bytes are the XMM register
FPU_SIZE = _FPU_END - _FPU
XMM_SIZE = 16 * 16

_CONTEXT_HEADER = 40  # struct uc_context before its data (size, mode, arch, snapshot level, ...)

_layout_checked = False


class CpuStateError(Exception):
    """The Unicorn library does not have the context layout this module was written for."""


def _u32(raw: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", raw, off)[0])


def _u64(raw: bytes, off: int) -> int:
    return int(struct.unpack_from("<Q", raw, off)[0])


def _context_bytes(uc: Any) -> tuple[Any, bytes]:
    ctx = uc.context_save()
    return ctx, bytes(ctx)[_CONTEXT_HEADER:]


def check_layout(uc_module: Any) -> None:
    """Verifies the offsets on a scratch engine (once per process); raises CpuStateError."""
    global _layout_checked
    if _layout_checked:
        return
    x86 = uc_module.x86_const
    uc = uc_module.Uc(uc_module.UC_ARCH_X86, uc_module.UC_MODE_32)
    uc.reg_write(x86.UC_X86_REG_CR0, 0x10)
    uc.reg_write(x86.UC_X86_REG_ES, 0x1234)  # real mode: base 0x12340, limit 0xffff
    uc.reg_write(x86.UC_X86_REG_EIP, 0x89ABCDEF)
    uc.reg_write(x86.UC_X86_REG_EBX, 0x13572468)
    uc.reg_write(x86.UC_X86_REG_GDTR, (0, 0x00ABC000, 0x37, 0))
    uc.reg_write(x86.UC_X86_REG_IDTR, (0, 0x00DEF000, 0x7FF, 0))
    uc.reg_write(x86.UC_X86_REG_CR3, 0x5000)
    uc.reg_write(x86.UC_X86_REG_MSR, (0xC0000080, 0x100))
    uc.reg_write(x86.UC_X86_REG_MXCSR, 0x1F81)
    uc.reg_write(x86.UC_X86_REG_FPCW, 0x27E)
    xmm1 = 0x0123456789ABCDEF_FEDCBA9876543210
    uc.reg_write(x86.UC_X86_REG_XMM1, xmm1)
    _, raw = _context_bytes(uc)
    seg_es = _SEGS
    checks = [
        (_u64(raw, _RIP), 0x89ABCDEF), (_u64(raw, _REGS + 3 * 8), 0x13572468),
        (_u32(raw, seg_es), 0x1234), (_u64(raw, seg_es + 8), 0x12340), (_u32(raw, seg_es + 16), 0xFFFF),
        (_u64(raw, _GDT + 8), 0xABC000), (_u32(raw, _GDT + 16), 0x37),
        (_u64(raw, _IDT + 8), 0xDEF000), (_u32(raw, _IDT + 16), 0x7FF),
        (_u64(raw, _CR), int(uc.reg_read(x86.UC_X86_REG_CR0))), (_u64(raw, _CR + 3 * 8), 0x5000),
        (_u64(raw, _EFER), 0x100), (_u32(raw, _MXCSR), 0x1F81),
        (int(struct.unpack_from("<H", raw, _FPU + 6)[0]), 0x27E),
        (int.from_bytes(raw[_XMM + _XMM_STRIDE:_XMM + _XMM_STRIDE + 16], "little"), xmm1),
    ]
    if any(got != want for got, want in checks):
        raise CpuStateError(f"unicorn {uc_module.__version__}: the vCPU context layout is not the one "
                            "this emulator reads (it needs unicorn==2.1.4)")
    _layout_checked = True


def read_state(uc: Any, uc_module: Any) -> dict[str, int | bytes]:
    """The architectural state of a stopped engine, keyed by the ``cpu`` section's field names."""
    x86 = uc_module.x86_const
    _, raw = _context_bytes(uc)
    state: dict[str, int | bytes] = {name: _u64(raw, _REGS + 8 * i) for i, name in enumerate(GPRS)}
    state["rip"] = _u64(raw, _RIP)
    state["rflags"] = int(uc.reg_read(x86.UC_X86_REG_EFLAGS))  # with the lazily computed flags
    for i, seg in enumerate(SEGMENTS):
        off = _SEGS + i * _SEG_SIZE
        state[f"{seg}.selector"] = _u32(raw, off)
        state[f"{seg}.base"] = _u64(raw, off + 8)
        state[f"{seg}.limit"] = _u32(raw, off + 16)
        state[f"{seg}.flags"] = _u32(raw, off + 20)
    for table, off in (("gdt", _GDT), ("idt", _IDT)):
        state[f"{table}.base"] = _u64(raw, off + 8)
        state[f"{table}.limit"] = _u32(raw, off + 16)
    for n in (0, 2, 3, 4):
        state[f"cr{n}"] = _u64(raw, _CR + 8 * n)
    state["efer"] = _u64(raw, _EFER)
    state["hflags"] = _u32(raw, _HFLAGS)
    state["hflags2"] = _u32(raw, _HFLAGS2)
    state["fpu"] = raw[_FPU:_FPU_END]
    state["mxcsr"] = _u32(raw, _MXCSR)
    state["xmm"] = b"".join(raw[_XMM + i * _XMM_STRIDE:_XMM + i * _XMM_STRIDE + 16] for i in range(16))
    for name, index in MSRS.items():
        state[name] = int(uc.reg_read(x86.UC_X86_REG_MSR, index))
    return state


def write_state(uc: Any, uc_module: Any, state: dict[str, Any]) -> None:
    """Puts a state from :func:`read_state` into a stopped engine, hidden segment parts included."""
    x86 = uc_module.x86_const
    ctx, raw = _context_bytes(uc)
    data = bytearray(raw)
    for i, name in enumerate(GPRS):
        struct.pack_into("<Q", data, _REGS + 8 * i, state[name])
    struct.pack_into("<Q", data, _RIP, state["rip"])
    for i, seg in enumerate(SEGMENTS):
        off = _SEGS + i * _SEG_SIZE
        struct.pack_into("<I", data, off, state[f"{seg}.selector"])
        struct.pack_into("<Q", data, off + 8, state[f"{seg}.base"])
        struct.pack_into("<II", data, off + 16, state[f"{seg}.limit"], state[f"{seg}.flags"])
    for table, off in (("gdt", _GDT), ("idt", _IDT)):
        struct.pack_into("<Q", data, off + 8, state[f"{table}.base"])
        struct.pack_into("<I", data, off + 16, state[f"{table}.limit"])
    for n in (0, 2, 3, 4):
        struct.pack_into("<Q", data, _CR + 8 * n, state[f"cr{n}"])
    struct.pack_into("<Q", data, _EFER, state["efer"])
    struct.pack_into("<II", data, _HFLAGS, state["hflags"], state["hflags2"])
    fpu = bytes(state["fpu"])
    xmm = bytes(state["xmm"])
    if len(fpu) != FPU_SIZE or len(xmm) != XMM_SIZE:
        raise ValueError("bad FPU/XMM state size")
    data[_FPU:_FPU_END] = fpu
    struct.pack_into("<I", data, _MXCSR, state["mxcsr"])
    for i in range(16):
        off = _XMM + i * _XMM_STRIDE
        data[off:off + 16] = xmm[16 * i:16 * i + 16]
    ctypes.memmove(ctx.context.value + _CONTEXT_HEADER, bytes(data), len(data))
    uc.context_restore(ctx)
    uc.reg_write(x86.UC_X86_REG_EFLAGS, state["rflags"])
    for name, index in MSRS.items():
        uc.reg_write(x86.UC_X86_REG_MSR, (index, state[name]))
    uc.ctl(uc_module.UC_CTL_TLB_FLUSH, uc_module.UC_CTL_IO_WRITE)  # no translation of the old mode stays
