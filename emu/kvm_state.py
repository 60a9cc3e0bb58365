"""The KVM vCPU's registers as the ``cpu`` section's state, and back (KVM <-> TCG migration).

The ``cpu`` section (``emu.migration.vmstate``) holds QEMU's ``CPUX86State`` fields as the Unicorn
vCPU reads them (``emu.cpu_state``). A KVM vCPU gives the same facts in the kernel's shapes:
``kvm_regs``, ``kvm_sregs``, ``kvm_fpu`` and MSRs (``emu.kvm_core``). The conversions are QEMU's
(target/i386/kvm/kvm.c ``get_seg``/``set_seg``, ``kvm_get_fpu``/``kvm_put_fpu``; ``hflags`` from
``x86_update_hflags``), with two corrections for states that come from TCG:

* the x87 registers: TCG keeps them by physical number, the kernel (FXSAVE) in stack order from
  ST(0), so they are rotated by the top-of-stack (QEMU copies them unrotated);
* segments TCG never loaded (flags 0) are not valid for a VM entry: in real mode every segment is
  given real-mode access rights, and a missing task register a 32-bit busy TSS, as a CPU has
  after reset.

Pure functions over dicts; imports only ``emu.cpu_state`` (names of the fields).
"""
from __future__ import annotations

import struct
from typing import Any

from emu.cpu_state import GPRS, MSRS, SEGMENTS

# SegmentCache.flags bits (QEMU's DESC_*)
DESC_TYPE_SHIFT, DESC_S, DESC_DPL_SHIFT, DESC_P = 8, 1 << 12, 13, 1 << 15
DESC_AVL, DESC_L_SHIFT, DESC_B_SHIFT, DESC_G = 1 << 20, 21, 22, 1 << 23
# hflags bits (QEMU's HF_*) that x86_update_hflags computes
HF_CPL_MASK, HF_CS32, HF_SS32, HF_ADDSEG, HF_PE = 3, 1 << 4, 1 << 5, 1 << 6, 1 << 7
HF_MP_SHIFT, HF_LMA, HF_CS64, HF_OSFXSR = 9, 1 << 14, 1 << 15, 1 << 22
HF_EFLAGS_COPY = (1 << 8) | (1 << 17) | (3 << 12)  # TF, VM, IOPL: same bits as in EFLAGS
HF2_GIF = 1  # the global interrupt flag, set outside SVM
EFLAGS_VM = 1 << 17
CR0_PE, CR4_OSFXSR, EFER_LMA = 1, 1 << 9, 1 << 10

# Offsets in the ``fpu`` buffer (CPUX86State from fpstt to fpdp, 172 bytes)
_FPSTT, _FPUS, _FPUC, _FPTAGS, _FPREGS, _FPOP, _FPIP, _FPDP = 0, 4, 6, 8, 20, 148, 156, 164
FPU_SIZE = 172


def _seg_flags(seg: dict[str, int]) -> int:
    """QEMU's get_seg: the kernel's segment fields as SegmentCache flags."""
    present = seg["present"] and not seg["unusable"]
    return ((seg["type"] << DESC_TYPE_SHIFT) | (DESC_P if present else 0) | (seg["dpl"] << DESC_DPL_SHIFT)
            | (seg["db"] << DESC_B_SHIFT) | (DESC_S if seg["s"] else 0) | (seg["l"] << DESC_L_SHIFT)
            | (DESC_G if seg["g"] else 0) | (DESC_AVL if seg["avl"] else 0))


def _seg_from_flags(selector: int, base: int, limit: int, flags: int) -> dict[str, int]:
    """QEMU's set_seg: a SegmentCache as the kernel's segment (not present means unusable)."""
    present = int(bool(flags & DESC_P))
    return {"selector": selector, "base": base, "limit": limit, "type": (flags >> DESC_TYPE_SHIFT) & 15,
            "present": present, "dpl": (flags >> DESC_DPL_SHIFT) & 3, "db": (flags >> DESC_B_SHIFT) & 1,
            "s": int(bool(flags & DESC_S)), "l": (flags >> DESC_L_SHIFT) & 1, "g": int(bool(flags & DESC_G)),
            "avl": int(bool(flags & DESC_AVL)), "unusable": 1 - present}


def update_hflags(state: dict[str, Any]) -> int:
    """QEMU's x86_update_hflags: the mode bits TCG derives from the registers."""
    cr0, eflags = state["cr0"], state["rflags"]
    cs_flags, ss_flags = state["cs.flags"], state["ss.flags"]
    hflags = (ss_flags >> DESC_DPL_SHIFT) & HF_CPL_MASK
    hflags |= HF_PE if cr0 & CR0_PE else 0
    hflags |= (cr0 << (HF_MP_SHIFT - 1)) & (7 << HF_MP_SHIFT)  # MP, EM, TS
    hflags |= eflags & HF_EFLAGS_COPY
    hflags |= HF_OSFXSR if state["cr4"] & CR4_OSFXSR else 0
    hflags |= HF_LMA if state["efer"] & EFER_LMA else 0
    if hflags & HF_LMA and cs_flags & (1 << DESC_L_SHIFT):
        return hflags | HF_CS32 | HF_SS32 | HF_CS64
    hflags |= HF_CS32 if cs_flags & (1 << DESC_B_SHIFT) else 0
    hflags |= HF_SS32 if ss_flags & (1 << DESC_B_SHIFT) else 0
    if not cr0 & CR0_PE or eflags & EFLAGS_VM or not hflags & HF_CS32:
        hflags |= HF_ADDSEG
    elif state["ds.base"] | state["es.base"] | state["ss.base"]:
        hflags |= HF_ADDSEG
    return hflags


def _fpu_to_state(fpu: dict[str, Any]) -> bytes:
    """The kernel's kvm_fpu as the ``fpu`` buffer (x87 registers back to physical order)."""
    out = bytearray(FPU_SIZE)
    top = (fpu["fsw"] >> 11) & 7
    struct.pack_into("<IHH", out, _FPSTT, top, fpu["fsw"] & ~0x3800, fpu["fcw"])
    for i in range(8):
        out[_FPTAGS + i] = 0 if fpu["ftwx"] >> i & 1 else 1  # QEMU's fptags: 1 = empty
        phys = (top + i) & 7
        out[_FPREGS + 16 * phys:_FPREGS + 16 * phys + 10] = fpu["fpr"][16 * i:16 * i + 10]
    struct.pack_into("<H", out, _FPOP, fpu["last_opcode"])
    struct.pack_into("<QQ", out, _FPIP, fpu["last_ip"], fpu["last_dp"])
    return bytes(out)


def _fpu_from_state(raw: bytes, xmm: bytes, mxcsr: int) -> dict[str, Any]:
    """The ``fpu`` buffer (and SSE registers) as the kernel's kvm_fpu."""
    if len(raw) != FPU_SIZE or len(xmm) != 256:
        raise ValueError("bad FPU/XMM state size")
    top, fpus, fpuc = struct.unpack_from("<IHH", raw, _FPSTT)
    top &= 7
    fpr = bytearray(128)
    ftwx = 0
    for i in range(8):
        ftwx |= (0 if raw[_FPTAGS + i] else 1) << i
        phys = (top + i) & 7
        fpr[16 * i:16 * i + 10] = raw[_FPREGS + 16 * phys:_FPREGS + 16 * phys + 10]
    (fpop,) = struct.unpack_from("<H", raw, _FPOP)
    fpip, fpdp = struct.unpack_from("<QQ", raw, _FPIP)
    return {"fpr": bytes(fpr), "xmm": bytes(xmm), "fcw": fpuc, "fsw": (fpus & ~0x3800) | (top << 11),
            "ftwx": ftwx, "last_opcode": fpop, "last_ip": fpip, "last_dp": fpdp, "mxcsr": mxcsr & 0xFFFF}


def to_cpu_state(regs: dict[str, int], sregs: dict[str, Any], fpu: dict[str, Any],
                 msrs: dict[int, int]) -> dict[str, Any]:
    """The ``cpu`` section's fields (without ``halted``/``interrupt_request``) of a KVM vCPU."""
    state: dict[str, Any] = {name: regs[name] for name in GPRS}
    state["rip"], state["rflags"] = regs["rip"], regs["rflags"]
    for seg in SEGMENTS:
        s = sregs[seg]
        state[f"{seg}.selector"], state[f"{seg}.base"], state[f"{seg}.limit"] = s["selector"], s["base"], s["limit"]
        state[f"{seg}.flags"] = _seg_flags(s)
    for table in ("gdt", "idt"):
        state[f"{table}.base"], state[f"{table}.limit"] = sregs[table]["base"], sregs[table]["limit"]
    for n in (0, 2, 3, 4):
        state[f"cr{n}"] = sregs[f"cr{n}"]
    state["efer"] = sregs["efer"]
    state["hflags"] = update_hflags(state)
    state["hflags2"] = HF2_GIF
    state["fpu"] = _fpu_to_state(fpu)
    state["mxcsr"] = fpu["mxcsr"]
    state["xmm"] = fpu["xmm"]
    for name, index in MSRS.items():
        state[name] = msrs[index]
    return state


def from_cpu_state(state: dict[str, Any]) -> tuple[dict[str, int], dict[str, Any], dict[str, Any], dict[int, int]]:
    """(regs, sregs, fpu, msrs) for a KVM vCPU from the ``cpu`` section's fields."""
    regs = {name: state[name] for name in GPRS}
    regs["rip"], regs["rflags"] = state["rip"], state["rflags"]
    real_mode = not state["cr0"] & CR0_PE or state["rflags"] & EFLAGS_VM
    sregs: dict[str, Any] = {}
    for seg in SEGMENTS:
        s = _seg_from_flags(state[f"{seg}.selector"], state[f"{seg}.base"], state[f"{seg}.limit"],
                            state[f"{seg}.flags"])
        if real_mode and seg not in ("ldt", "tr"):
            # real-mode (or virtual-8086) access rights, whatever TCG's cache says
            dpl = 3 if state["rflags"] & EFLAGS_VM else 0
            s.update(type=0xB if seg == "cs" else 3, present=1, unusable=0, s=1, dpl=dpl, db=0, l=0, g=0)
        if seg == "tr" and not s["present"]:
            s.update(type=0xB, present=1, unusable=0, s=0)  # a busy 32-bit TSS, as after reset
        sregs[seg] = s
    for table in ("gdt", "idt"):
        sregs[table] = {"base": state[f"{table}.base"], "limit": state[f"{table}.limit"]}
    for n in (0, 2, 3, 4):
        sregs[f"cr{n}"] = state[f"cr{n}"]
    sregs["efer"] = state["efer"]
    fpu = _fpu_from_state(bytes(state["fpu"]), bytes(state["xmm"]), state["mxcsr"])
    msrs = {index: state[name] for name, index in MSRS.items()}
    return regs, sregs, fpu, msrs
