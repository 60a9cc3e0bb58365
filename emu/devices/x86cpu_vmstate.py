"""The vCPU in QEMU 7.2's own migration format: the ``cpu_common`` and ``cpu`` sections.

QEMU 7.2's ``pc`` machine saves its (x86_64, TCG) vCPU as two sections, both instance 0 and in
this order: ``cpu_common`` (``vmstate_cpu_common``, version 1: ``halted`` and
``interrupt_request`` as uint32, plus two subsections) and ``cpu`` (``vmstate_x86_cpu``, version
12, minimum 11: 66 fields, plus subsections). This module describes both exactly as QEMU writes
and reads them (field order, types, versions, subsection names and ``needed`` rules), gives the
values QEMU saves for a freshly reset ``qemu64`` CPU, and converts between those fields and the
vCPU state dict of this emulator (``emu.cpu_state.read_state`` / ``emu.kvm_state``).

Field values are a ``dict`` keyed by the names of QEMU's ``CPUX86State``/``CPUState`` members
without ``env.`` (``regs``, ``eip``, ``cr0``... and ``halted``, ``interrupt_request`` of
``cpu_common``). The two halves of ``env.xmm_regs`` that QEMU saves in separate fields are
``xmm_regs`` (bits 0-127) and ``ymmh_regs`` (bits 128-255). Values are ints (signed for QEMU's
int32/int64 fields), lists for arrays (``regs``: 16 ints, ``xmm_regs``: 16 ``[q0, q1]``...) and
dicts for structures (segments: ``{"selector", "base", "limit", "flags"}``, x87 registers:
``{"mant", "exp"}``, MTRR pairs: ``{"base", "mask"}``).

Which fields the vCPU holds (:data:`HELD`): general registers, RIP, RFLAGS, hflags/hflags2, the
x87 unit (control, status with TOP, tags, registers, last opcode/IP/DP), segment caches with
their hidden parts (es..gs, ldt, tr), GDTR/IDTR base and limit, CR0/2/3/4, EFER, the SYSCALL and
SYSENTER MSRs, KERNEL_GS_BASE, MXCSR, XMM0-15, ``halted`` and the pending interrupt (bit
CPU_INTERRUPT_HARD of ``interrupt_request``). Every other field (debug registers, A20 mask,
SMBASE, PAT, SVM state, MTRRs, MCE, TSC, XCR0, YMM upper halves, GDTR/IDTR selector and flags...)
is only carried: :func:`from_qemu` returns it apart so that :func:`to_qemu` re-sends it unchanged.

Partly held: ``interrupt_request`` (only its CPU_INTERRUPT_HARD bit; CPU_INTERRUPT_POLL and the
others are carried), ``gdt``/``idt`` (base and limit; selector and flags carried) and ``hflags2``
(all but QEMU 7.2's VGIF bit, which the Unicorn vCPU, a QEMU 5, has no place for). The Unicorn
vCPU also records the x87 last instruction's CS and DS selectors, which QEMU 7.2 does not migrate:
:func:`to_qemu` returns them under :data:`NOT_IN_STREAM` keys (never saved) so that
``from_qemu(to_qemu(state))`` is ``state``; through a stream they arrive as 0.

Subsections: those a TCG ``qemu64`` CPU can produce are supported (:data:`SUPPORTED_SUBSECTIONS`:
``cpu_common/exception_index``, ``cpu_common/crash_occurred``, ``cpu/poll_control_msr`` (sent by
every TCG CPU: TCG leaves the MSR 0, QEMU sends it when not 1), ``cpu/fpop_ip_dp``,
``cpu/msr_ia32_misc_enable``, ``cpu/msr_smi_count``, ``cpu/svn_npt``, ``cpu/svm_guest``); every
other subsection of QEMU 7.2 (KVM-only state and paravirtual MSRs, Hyper-V, PMU, MPX, AVX-512,
PKRU, TSC frequency, nested KVM state, AMX...) is known by name but refused on load with a clear
error (:data:`REFUSED_SUBSECTIONS`), as this emulator's vCPU cannot hold that state. A name QEMU
7.2 does not have at all gives ``-ENOENT`` like in QEMU (the stream loader reports it).
"""
from __future__ import annotations

import copy
import errno
import struct
from collections.abc import Callable
from typing import Any

from emu.migration.vmstate import Field, LoadContext, SaveStateEntry, VMStateDescription

__all__ = [
    "CARRIED",
    "HELD",
    "NOT_IN_STREAM",
    "REFUSED_SUBSECTIONS",
    "SUPPORTED_SUBSECTIONS",
    "VMSTATE_CPU_COMMON_QEMU",
    "VMSTATE_CPU_QEMU",
    "cpu_entries",
    "from_qemu",
    "reset_fields",
    "to_qemu",
]

GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs")  # env.segs[R_ES..R_GS]
CPU_NB_REGS = 16
MCE_BANKS_DEF = 10
MSR_MTRRCAP_VCNT = 8
MSR_IA32_MISC_ENABLE_DEFAULT = 1
CPU_INTERRUPT_HARD = 0x0002
V_TPR_MASK = 0x0F
HF_CPL_MASK = 3
HF2_NPT_MASK = 1 << 6
HF2_VGIF_MASK = 1 << 8  # QEMU 6+: not in the Unicorn vCPU's (QEMU 5) hflags2
CR0_PE_MASK = 1
DESC_DPL_SHIFT = 13
DESC_DPL_MASK = 3 << DESC_DPL_SHIFT

# Offsets in our ``fpu`` buffer (QEMU 5's CPUX86State from fpstt to fpdp, 172 bytes)
_FPSTT, _FPUS, _FPUC, _FPTAGS, _FPREGS, _FPOP, _FPCS, _FPDS, _FPIP, _FPDP = 0, 4, 6, 8, 20, 148, 150, 152, 156, 164
FPU_SIZE = 172


# ---------------------------------------------------------------- value codecs (arrays, structs)

class _Codec:
    size = 0
    vmdesc_type = "struct"

    def pack(self, value: Any) -> bytes:
        raise NotImplementedError

    def unpack(self, data: bytes) -> Any:
        raise NotImplementedError


class _Scalar(_Codec):
    def __init__(self, type_name: str, fmt: str) -> None:
        self.type_name, self.fmt = type_name, fmt
        self.size = struct.calcsize(fmt)
        self.vmdesc_type = type_name

    def pack(self, value: Any) -> bytes:
        return struct.pack(self.fmt, int(value))

    def unpack(self, data: bytes) -> Any:
        return struct.unpack(self.fmt, data)[0]


class _Array(_Codec):
    def __init__(self, elem: _Codec, n: int) -> None:
        self.elem, self.n = elem, n
        self.size = elem.size * n
        self.vmdesc_type = elem.vmdesc_type

    def pack(self, value: Any) -> bytes:
        if len(value) != self.n:
            raise ValueError(f"expected {self.n} elements, got {len(value)}")
        return b"".join(self.elem.pack(v) for v in value)

    def unpack(self, data: bytes) -> Any:
        s = self.elem.size
        return [self.elem.unpack(data[i * s:(i + 1) * s]) for i in range(self.n)]


class _Struct(_Codec):
    def __init__(self, *members: tuple[str, _Codec]) -> None:
        self.members = members
        self.size = sum(c.size for _, c in members)

    def pack(self, value: Any) -> bytes:
        return b"".join(c.pack(value[name]) for name, c in self.members)

    def unpack(self, data: bytes) -> Any:
        out, at = {}, 0
        for name, c in self.members:
            out[name] = c.unpack(data[at:at + c.size])
            at += c.size
        return out


_U8, _U16 = _Scalar("uint8", ">B"), _Scalar("uint16", ">H")
_U32, _U64 = _Scalar("uint32", ">I"), _Scalar("uint64", ">Q")
_I32, _I64, _BOOL = _Scalar("int32", ">i"), _Scalar("int64", ">q"), _Scalar("bool", ">B")
_SEGMENT = _Struct(("selector", _U32), ("base", _U64), ("limit", _U32), ("flags", _U32))  # vmstate_segment
_FPREG = _Struct(("mant", _U64), ("exp", _U16))  # vmstate_fpreg (fpreg_tmp: tmp_mant, tmp_exp)
_XMM = _Array(_U64, 2)  # vmstate_xmm_reg / vmstate_ymmh_reg: two quadwords
_MTRR_VAR = _Struct(("base", _U64), ("mask", _U64))


def _field(name: str, codec: _Codec, version_id: int = 0) -> Field:
    if isinstance(codec, _Scalar):
        return Field(name, codec.type_name, version_id=version_id)

    def put(state: dict) -> bytes:
        return codec.pack(state[name])

    def get(f: Any, state: dict, ctx: LoadContext) -> int:
        state[name] = codec.unpack(f.get(codec.size))
        return 0

    return Field(name, codec.vmdesc_type, size=codec.size, version_id=version_id, put=put, get=get,
                 vmdesc_type=codec.vmdesc_type)


def _scalars(codec: _Codec, *names: str) -> list[Field]:
    return [_field(n, codec) for n in names]


# ---------------------------------------------------------------- cpu_common

VMSTATE_CPU_COMMON_QEMU = VMStateDescription(
    name="cpu_common", version_id=1, minimum_version_id=1,
    fields=_scalars(_U32, "halted", "interrupt_request"),
    subsections=[
        VMStateDescription("cpu_common/exception_index", 1, 1, [_field("exception_index", _I32)],
                           needed=lambda s: int(s.get("exception_index", -1)) != -1),  # tcg_enabled()
        VMStateDescription("cpu_common/crash_occurred", 1, 1, [_field("crash_occurred", _BOOL)],
                           needed=lambda s: bool(s.get("crash_occurred"))),
    ],
)


# ---------------------------------------------------------------- cpu

def _cpu_fields() -> list[Field]:
    """vmstate_x86_cpu's 66 fields (TARGET_X86_64: target_ulong is uint64)."""
    return [
        _field("regs", _Array(_U64, CPU_NB_REGS)),
        *_scalars(_U64, "eip", "eflags"),
        _field("hflags", _U32),
        *_scalars(_U16, "fpuc", "fpus_vmstate", "fptag_vmstate", "fpregs_format_vmstate"),
        _field("fpregs", _Array(_FPREG, 8)),
        _field("segs", _Array(_SEGMENT, 6)),
        *_scalars(_SEGMENT, "ldt", "tr", "gdt", "idt"),
        _field("sysenter_cs", _U32),
        *_scalars(_U64, "sysenter_esp", "sysenter_eip", "cr0", "cr2", "cr3", "cr4"),
        _field("dr", _Array(_U64, 8)),
        _field("a20_mask", _I32),
        _field("mxcsr", _U32),
        _field("xmm_regs", _Array(_XMM, CPU_NB_REGS)),
        *_scalars(_U64, "efer", "star", "lstar", "cstar", "fmask", "kernelgsbase"),
        _field("smbase", _U32),
        _field("pat", _U64),
        _field("hflags2", _U32),
        *_scalars(_U64, "vm_hsave", "vm_vmcb", "tsc_offset", "intercept"),
        *_scalars(_U16, "intercept_cr_read", "intercept_cr_write", "intercept_dr_read", "intercept_dr_write"),
        _field("intercept_exceptions", _U32),
        _field("v_tpr", _U8),
        _field("mtrr_fixed", _Array(_U64, 11)),
        _field("mtrr_deftype", _U64),
        _field("mtrr_var", _Array(_MTRR_VAR, MSR_MTRRCAP_VCNT)),
        _field("interrupt_injected", _I32),
        _field("mp_state", _U32),
        _field("tsc", _U64),
        _field("exception_nr", _I32),
        *_scalars(_U8, "soft_interrupt", "nmi_injected", "nmi_pending", "has_error_code"),
        _field("sipi_vector", _U32),
        *_scalars(_U64, "mcg_cap", "mcg_status", "mcg_ctl"),
        _field("mce_banks", _Array(_U64, MCE_BANKS_DEF * 4)),
        *_scalars(_U64, "tsc_aux", "system_time_msr", "wall_clock_msr"),
        _field("xcr0", _U64, version_id=12),
        _field("xstate_bv", _U64, version_id=12),
        _field("ymmh_regs", _Array(_XMM, CPU_NB_REGS), version_id=12),
    ]


def _cpu_pre_save(s: dict) -> None:
    """QEMU's cpu_pre_save, for the parts kept in the fields (the FPU forms are already there):
    v_tpr from int_ctl, and a real-mode CS DPL (old KVM) cleared in every data/code segment."""
    s["v_tpr"] = int(s.get("int_ctl", 0)) & V_TPR_MASK
    _fix_real_mode_dpl(s)


def _fix_real_mode_dpl(s: dict) -> None:
    segs = s.get("segs")
    if segs is None or int(s.get("cr0", 0)) & CR0_PE_MASK or not (segs[1]["flags"] >> DESC_DPL_SHIFT) & 3:
        return
    for seg in segs:
        seg["flags"] &= ~DESC_DPL_MASK


def _cpu_post_load(s: dict, version_id: int, ctx: LoadContext) -> int:
    """QEMU's cpu_post_load checks and fix-ups on the fields."""
    if s.get("fpregs_format_vmstate"):
        ctx.error("Unsupported old non-softfloat CPU state")
        return -errno.EINVAL
    _fix_real_mode_dpl(s)
    s["hflags"] = (s["hflags"] & ~HF_CPL_MASK) | ((s["segs"][2]["flags"] >> DESC_DPL_SHIFT) & HF_CPL_MASK)
    return 0


def _sub(name: str, fields: list[Field], needed: Callable[[dict], bool]) -> VMStateDescription:
    return VMStateDescription(name, 1, 1, fields, needed=needed)


def _refused(name: str, why: str) -> VMStateDescription:
    def pre_load(state: dict, ctx: LoadContext) -> int:
        ctx.error(f"{name}: this emulator's vCPU cannot hold this state ({why})")
        return -errno.EINVAL
    return VMStateDescription(name, 1, 1, [], needed=lambda s: False, pre_load=pre_load)


_KVM_PV, _KVM, _HV = "a KVM paravirtual MSR", "KVM-only state", "Hyper-V enlightenment"
_CPU_FEATURE = "a CPU feature the qemu64 model does not have"

#: vmstate_x86_cpu's subsections, in QEMU's order (x86_64 build with KVM support).
_CPU_SUBSECTIONS: list[VMStateDescription] = [
    _refused("cpu/exception_info", _KVM),
    _refused("cpu/async_pf_msr", _KVM_PV),
    _refused("cpu/async_pf_int_msr", _KVM_PV),
    _refused("cpu/async_pv_eoi_msr", _KVM_PV),
    _refused("cpu/steal_time_msr", _KVM_PV),
    # KVM's reset sets 1; TCG leaves 0, so a TCG CPU always sends this one
    _sub("cpu/poll_control_msr", [_field("poll_control_msr", _U64)],
         lambda s: int(s.get("poll_control_msr", 0)) != 1),
    _sub("cpu/fpop_ip_dp", [_field("fpop", _U16), _field("fpip", _U64), _field("fpdp", _U64)],
         lambda s: bool(s.get("fpop") or s.get("fpip") or s.get("fpdp"))),
    _refused("cpu/msr_tsc_adjust", _KVM),
    _refused("cpu/msr_tscdeadline", _KVM),
    _sub("cpu/msr_ia32_misc_enable", [_field("msr_ia32_misc_enable", _U64)],
         lambda s: int(s.get("msr_ia32_misc_enable", MSR_IA32_MISC_ENABLE_DEFAULT)) != MSR_IA32_MISC_ENABLE_DEFAULT),
    _refused("cpu/msr_ia32_feature_control", _KVM),
    _refused("cpu/msr_architectural_pmu", "performance counters"),
    _refused("cpu/mpx", _CPU_FEATURE),
    _refused("cpu/msr_hyperv_hypercall", _HV),
    _refused("cpu/msr_hyperv_vapic", _HV),
    _refused("cpu/msr_hyperv_time", _HV),
    _refused("cpu/msr_hyperv_crash", _HV),
    _refused("cpu/msr_hyperv_runtime", _HV),
    _refused("cpu/msr_hyperv_synic", _HV),
    _refused("cpu/msr_hyperv_stimer", _HV),
    _refused("cpu/msr_hyperv_reenlightenment", _HV),
    _refused("cpu/avx512", _CPU_FEATURE),
    _refused("cpu/xss", _KVM),
    _refused("cpu/umwait", _KVM),
    _refused("cpu/tsc_khz", "a fixed TSC frequency (tsc-frequency=)"),
    _sub("cpu/msr_smi_count", [_field("msr_smi_count", _U64)],  # x-migrate-smi-count is on for pc-7.2
         lambda s: bool(s.get("msr_smi_count"))),
    _refused("cpu/pkru", _CPU_FEATURE),
    _refused("cpu/pkrs", _CPU_FEATURE),
    _refused("cpu/spec_ctrl", _KVM),
    _refused("cpu/amd_tsc_scale_msr", _CPU_FEATURE),
    _refused("cpu/mcg_ext_ctl", "local machine-check exceptions (lmce=on)"),
    _refused("cpu/intel_pt", _CPU_FEATURE),
    _refused("cpu/virt_ssbd", _KVM),
    _sub("cpu/svn_npt", [_field("nested_cr3", _U64), _field("nested_pg_mode", _U32)],  # sic: QEMU's name
         lambda s: bool(int(s.get("hflags2", 0)) & HF2_NPT_MASK)),
    _sub("cpu/svm_guest", [_field("int_ctl", _U32)], lambda s: bool(s.get("int_ctl"))),  # tcg_enabled()
    _refused("cpu/nested_state", "nested KVM state"),
    _refused("cpu/msr_tsx_ctrl", _CPU_FEATURE),
    _refused("cpu/intel_sgx", _CPU_FEATURE),
    _refused("cpu/pdptrs", _KVM),
    _refused("cpu/msr_xfd", _CPU_FEATURE),
    _refused("cpu/intel_amx_xtile", _CPU_FEATURE),
    _refused("cpu/arch_lbr", _CPU_FEATURE),
    _refused("cpu/triple_fault", _KVM),
]

VMSTATE_CPU_QEMU = VMStateDescription(
    name="cpu", version_id=12, minimum_version_id=11, fields=_cpu_fields(),
    subsections=_CPU_SUBSECTIONS, pre_save=_cpu_pre_save, post_load=_cpu_post_load,
)

#: subsections loaded and saved (their fields are carried, or held: fpop/fpip/fpdp)
SUPPORTED_SUBSECTIONS = tuple(s.name for s in (*VMSTATE_CPU_COMMON_QEMU.subsections, *_CPU_SUBSECTIONS)
                              if s.fields)
#: subsections refused on load (never produced on save)
REFUSED_SUBSECTIONS = tuple(s.name for s in _CPU_SUBSECTIONS if not s.fields)


# ---------------------------------------------------------------- reset values

def _seg(selector: int, base: int, limit: int, flags: int) -> dict[str, int]:
    return {"selector": selector, "base": base, "limit": limit, "flags": flags}


def reset_fields() -> dict[str, Any]:
    """What QEMU 7.2 (TCG, ``-cpu qemu64``, ``-M pc``) saves for a reset CPU that never ran:
    the fields of both sections plus those of the supported subsections."""
    fields: dict[str, Any] = {
        # cpu_common
        "halted": 0, "interrupt_request": 0x10,  # CPU_INTERRUPT_POLL (from the APIC)
        "exception_index": -1, "crash_occurred": False,
        # cpu
        "regs": [0, 0, 0x60FB1, 0, 0, 0, 0, 0] + [0] * 8,  # EDX: CPUID(1).EAX of qemu64 (family 15 model 107)
        "eip": 0xFFF0, "eflags": 0x2, "hflags": 0x40, "fpuc": 0x37F, "fpus_vmstate": 0,
        "fptag_vmstate": 0, "fpregs_format_vmstate": 0,
        "fpregs": [{"mant": 0, "exp": 0} for _ in range(8)],
        "segs": [_seg(0, 0, 0xFFFF, 0x9300), _seg(0xF000, 0xFFFF0000, 0xFFFF, 0x9B00)]
        + [_seg(0, 0, 0xFFFF, 0x9300) for _ in range(4)],
        "ldt": _seg(0, 0, 0xFFFF, 0x8200), "tr": _seg(0, 0, 0xFFFF, 0x8B00),
        "gdt": _seg(0, 0, 0xFFFF, 0), "idt": _seg(0, 0, 0xFFFF, 0),
        "sysenter_cs": 0, "sysenter_esp": 0, "sysenter_eip": 0,
        "cr0": 0x60000010, "cr2": 0, "cr3": 0, "cr4": 0,
        "dr": [0, 0, 0, 0, 0, 0, 0xFFFF0FF0, 0x400],
        "a20_mask": -1, "mxcsr": 0x1F80,
        "xmm_regs": [[0, 0] for _ in range(CPU_NB_REGS)],
        "efer": 0, "star": 0, "lstar": 0, "cstar": 0, "fmask": 0, "kernelgsbase": 0,
        "smbase": 0x30000, "pat": 0x0007040600070406, "hflags2": 0x101,  # GIF | VGIF
        "vm_hsave": 0, "vm_vmcb": 0, "tsc_offset": 0, "intercept": 0,
        "intercept_cr_read": 0, "intercept_cr_write": 0, "intercept_dr_read": 0, "intercept_dr_write": 0,
        "intercept_exceptions": 0, "v_tpr": 0,
        "mtrr_fixed": [0] * 11, "mtrr_deftype": 0,
        "mtrr_var": [{"base": 0, "mask": 0} for _ in range(MSR_MTRRCAP_VCNT)],
        "interrupt_injected": -1, "mp_state": 0, "tsc": 0, "exception_nr": -1,
        "soft_interrupt": 0, "nmi_injected": 0, "nmi_pending": 0, "has_error_code": 0, "sipi_vector": 0,
        "mcg_cap": 0x100010A, "mcg_status": 0, "mcg_ctl": (1 << 64) - 1,  # MCG_CTL_P | MCG_SER_P, 10 banks
        "mce_banks": [(1 << 64) - 1, 0, 0, 0] * MCE_BANKS_DEF,  # every bank: MCi_CTL all ones
        "tsc_aux": 0, "system_time_msr": 0, "wall_clock_msr": 0,
        "xcr0": 1, "xstate_bv": 0,
        "ymmh_regs": [[0, 0] for _ in range(CPU_NB_REGS)],
        # supported subsections
        "fpop": 0, "fpip": 0, "fpdp": 0, "msr_ia32_misc_enable": MSR_IA32_MISC_ENABLE_DEFAULT,
        "poll_control_msr": 0, "msr_smi_count": 0, "nested_cr3": 0, "nested_pg_mode": 0, "int_ctl": 0,
    }
    return fields


# ---------------------------------------------------------------- conversions

#: QEMU fields (keys of :func:`reset_fields`) that our vCPU holds, wholly or in part
HELD = ("halted", "interrupt_request", "regs", "eip", "eflags", "hflags", "fpuc", "fpus_vmstate",
        "fptag_vmstate", "fpregs", "segs", "ldt", "tr", "gdt", "idt", "sysenter_cs", "sysenter_esp",
        "sysenter_eip", "cr0", "cr2", "cr3", "cr4", "mxcsr", "xmm_regs", "efer", "star", "lstar", "cstar",
        "fmask", "kernelgsbase", "hflags2", "fpop", "fpip", "fpdp")
#: keys of :func:`to_qemu`'s result that QEMU 7.2 does not migrate (saving ignores them): the
#: x87 last instruction's CS and data DS selectors, which the Unicorn vCPU records. They are
#: there so that from_qemu(to_qemu(state)) gives the state back; through a stream they read 0.
NOT_IN_STREAM = ("fpcs", "fpds")
#: QEMU fields our vCPU does not hold (only carried from one stream to the next). Of the held
#: ones, the parts carried too are: ``interrupt_request`` bits other than CPU_INTERRUPT_HARD, the
#: selector and flags of ``gdt``/``idt`` and the VGIF bit of ``hflags2``.
CARRIED = tuple(k for k in reset_fields() if k not in HELD)


def _u(raw: bytes, fmt: str, off: int) -> int:
    return int(struct.unpack_from(fmt, raw, off)[0])


def to_qemu(state: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Our vCPU state (``emu.cpu_state.read_state`` plus ``halted``/``interrupt_request``, or the
    KVM vCPU's) as QEMU 7.2 field values; the fields it does not hold come from ``base``
    (default: :func:`reset_fields`). The FPU goes into QEMU's saved forms as cpu_pre_save
    computes them (status word with TOP, abridged tag word, 80-bit registers as mantissa and
    exponent)."""
    q = copy.deepcopy(base) if base is not None else reset_fields()
    q["halted"] = int(state.get("halted", 0))
    ir = int(q.get("interrupt_request", 0)) & ~CPU_INTERRUPT_HARD
    q["interrupt_request"] = ir | (CPU_INTERRUPT_HARD if state.get("interrupt_request") else 0)
    q["regs"] = [int(state[r]) for r in GPRS]
    q["eip"], q["eflags"] = int(state["rip"]), int(state["rflags"])
    q["hflags"] = int(state["hflags"])
    q["hflags2"] = (int(state["hflags2"]) & ~HF2_VGIF_MASK) | (int(q["hflags2"]) & HF2_VGIF_MASK)
    fpu = bytes(state["fpu"])
    if len(fpu) != FPU_SIZE:
        raise ValueError("bad FPU state size")
    fpstt, fpus, fpuc = _u(fpu, "<I", _FPSTT), _u(fpu, "<H", _FPUS), _u(fpu, "<H", _FPUC)
    q["fpuc"] = fpuc
    q["fpus_vmstate"] = (fpus & ~0x3800) | (fpstt & 7) << 11
    q["fptag_vmstate"] = sum((0 if fpu[_FPTAGS + i] else 1) << i for i in range(8))
    q["fpregs_format_vmstate"] = 0
    q["fpregs"] = [{"mant": _u(fpu, "<Q", _FPREGS + 16 * i), "exp": _u(fpu, "<H", _FPREGS + 16 * i + 8)}
                   for i in range(8)]
    q["fpop"], q["fpip"], q["fpdp"] = _u(fpu, "<H", _FPOP), _u(fpu, "<Q", _FPIP), _u(fpu, "<Q", _FPDP)
    q["fpcs"], q["fpds"] = _u(fpu, "<H", _FPCS), _u(fpu, "<H", _FPDS)  # NOT_IN_STREAM
    q["segs"] = [_seg(*(int(state[f"{s}.{k}"]) for k in ("selector", "base", "limit", "flags"))) for s in SEGMENTS]
    for s in ("ldt", "tr"):
        q[s] = _seg(*(int(state[f"{s}.{k}"]) for k in ("selector", "base", "limit", "flags")))
    for t in ("gdt", "idt"):
        q[t] = dict(q[t], base=int(state[f"{t}.base"]), limit=int(state[f"{t}.limit"]))
    for name in ("cr0", "cr2", "cr3", "cr4", "efer", "mxcsr", "star", "lstar", "cstar", "fmask", "kernelgsbase",
                 "sysenter_esp", "sysenter_eip"):
        q[name] = int(state[name])
    q["sysenter_cs"] = int(state["sysenter_cs"]) & 0xFFFFFFFF
    xmm = bytes(state["xmm"])
    if len(xmm) != 16 * CPU_NB_REGS:
        raise ValueError("bad XMM state size")
    q["xmm_regs"] = [[_u(xmm, "<Q", 16 * i), _u(xmm, "<Q", 16 * i + 8)] for i in range(CPU_NB_REGS)]
    return q


def from_qemu(fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """QEMU 7.2 field values as (our vCPU state, the QEMU fields our vCPU does not hold). The
    second dict, given to :func:`to_qemu` as ``base``, re-sends those fields unchanged."""
    f = fields
    state: dict[str, Any] = {r: int(v) for r, v in zip(GPRS, f["regs"])}
    state["rip"], state["rflags"] = int(f["eip"]), int(f["eflags"])
    for s, seg in zip(SEGMENTS, f["segs"]):
        for k in ("selector", "base", "limit", "flags"):
            state[f"{s}.{k}"] = int(seg[k])
    for s in ("ldt", "tr"):
        for k in ("selector", "base", "limit", "flags"):
            state[f"{s}.{k}"] = int(f[s][k])
    for t in ("gdt", "idt"):
        state[f"{t}.base"], state[f"{t}.limit"] = int(f[t]["base"]), int(f[t]["limit"])
    for name in ("cr0", "cr2", "cr3", "cr4", "efer", "hflags"):
        state[name] = int(f[name])
    state["hflags2"] = int(f["hflags2"]) & ~HF2_VGIF_MASK
    fpu = bytearray(FPU_SIZE)
    fpus = int(f["fpus_vmstate"])
    struct.pack_into("<IHH", fpu, _FPSTT, (fpus >> 11) & 7, fpus & ~0x3800, int(f["fpuc"]))
    tags = int(f["fptag_vmstate"]) ^ 0xFF
    for i in range(8):
        fpu[_FPTAGS + i] = (tags >> i) & 1
        struct.pack_into("<QH", fpu, _FPREGS + 16 * i, int(f["fpregs"][i]["mant"]), int(f["fpregs"][i]["exp"]))
    struct.pack_into("<HHH", fpu, _FPOP, int(f.get("fpop", 0)), int(f.get("fpcs", 0)), int(f.get("fpds", 0)))
    struct.pack_into("<QQ", fpu, _FPIP, int(f.get("fpip", 0)), int(f.get("fpdp", 0)))
    state["fpu"] = bytes(fpu)
    state["mxcsr"] = int(f["mxcsr"])
    state["xmm"] = b"".join(struct.pack("<QQ", int(lo), int(hi)) for lo, hi in f["xmm_regs"])
    for name in ("star", "lstar", "cstar", "fmask", "kernelgsbase", "sysenter_cs", "sysenter_esp", "sysenter_eip"):
        state[name] = int(f[name])
    state["halted"] = int(f.get("halted", 0))
    state["interrupt_request"] = 1 if int(f.get("interrupt_request", 0)) & CPU_INTERRUPT_HARD else 0
    carried = {k: copy.deepcopy(v) for k, v in f.items() if k not in HELD and k not in NOT_IN_STREAM}
    carried["interrupt_request"] = int(f.get("interrupt_request", 0)) & ~CPU_INTERRUPT_HARD
    carried["hflags2"] = int(f["hflags2"]) & HF2_VGIF_MASK
    for t in ("gdt", "idt"):
        carried[t] = {"selector": int(f[t]["selector"]), "base": 0, "limit": 0, "flags": int(f[t]["flags"])}
    return state, carried


# ---------------------------------------------------------------- the sections

def cpu_entries(fields: dict[str, Any] | None = None, section_ids: tuple[int | None, int | None] = (None, None),
                ) -> list[SaveStateEntry]:
    """The ``cpu_common`` and ``cpu`` handlers (instance 0, in QEMU's order) over one shared
    fields dict (default: a copy of :func:`reset_fields`); saving sends its values, loading
    fills it (a field not in the stream, e.g. of an absent subsection, keeps its value)."""
    state = fields if fields is not None else reset_fields()
    return [SaveStateEntry("cpu_common", 0, VMSTATE_CPU_COMMON_QEMU, state, section_ids[0]),
            SaveStateEntry("cpu", 0, VMSTATE_CPU_QEMU, state, section_ids[1])]
