"""QEMU 7.2's ``cpu_common`` and ``cpu`` sections (emu/devices/x86cpu_vmstate.py): their layout,
load/save symmetry, refused subsections, and the conversion from and to a real Unicorn vCPU's
state (protected and long mode, with x87 and SSE registers in use)."""
from __future__ import annotations

import copy
import errno
import struct
from typing import Any

import pytest
from guest_asm import FLAT_CODE32, FLAT_DATA32, gdt
from pc_guest import PcGuest
from vmstate_source import ByteSource

from emu.devices.x86cpu_vmstate import (
    CARRIED,
    HELD,
    NOT_IN_STREAM,
    REFUSED_SUBSECTIONS,
    SUPPORTED_SUBSECTIONS,
    VMSTATE_CPU_COMMON_QEMU,
    VMSTATE_CPU_QEMU,
    cpu_entries,
    from_qemu,
    reset_fields,
    to_qemu,
)
from emu.migration.vmstate import LoadContext, load_state, save_state

RAM = 4 << 20
#: QEMU 7.2's section bodies for a reset qemu64 CPU: 8 bytes, and 1817 bytes of fields plus the
#: cpu/poll_control_msr subsection (TCG leaves the MSR 0, and it is sent when not 1).
COMMON_SIZE, CPU_SIZE = 8, 1817 + 2 + len("cpu/poll_control_msr") + 4 + 8

# x87: three values pushed (TOP = 5), SSE: XMM1 and XMM3 loaded, in flat 32-bit protected mode.
PROTECTED_FPU = r"""
        .code16
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        lgdtl   gdtd
        movl    %cr0, %eax
        orl     $1, %eax
        movl    %eax, %cr0
        ljmpl   $0x08, $pm32
        .code32
pm32:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movl    $0x7000, %esp
        fninit
        fld1
        fldpi
        fildl   val
        movdqu  xmmval, %xmm1
        movdqu  xmmval2, %xmm3
        movl    $0x11223344, %ebx
        xorl    %esi, %esi
1:      incl    %esi
        testl   $0x3ff, %esi
        jnz     1b
        movb    $'F', %al
        movw    $0x3f8, %dx
        outb    %al, %dx
        jmp     1b
        .p2align 4
xmmval: .quad   0x0123456789abcdef, 0xfedcba9876543210
xmmval2: .quad  0x1111222233334444, 0x5555666677778888
val:    .long   -12345
""" + gdt(FLAT_CODE32, FLAT_DATA32)

CODE64 = 0x00209A0000000000
DATA64 = 0x0000920000000000
# Long mode (identity-mapped 2 MiB page), 64-bit registers, x87 and XMM9 in use.
LONG_MODE_FPU = r"""
        .code16
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $0x7000, %sp
        movl    $0x1000, %edi
        xorl    %eax, %eax
        movl    $0xc00, %ecx
        rep stosl
        movl    $0x2003, 0x1000
        movl    $0x3003, 0x2000
        movl    $0x0083, 0x3000
        movl    $0x1000, %eax
        movl    %eax, %cr3
        movl    %cr4, %eax
        orl     $0x220, %eax            # PAE, OSFXSR
        movl    %eax, %cr4
        movl    $0xc0000080, %ecx
        rdmsr
        orl     $0x100, %eax
        wrmsr
        lgdtl   gdtd
        movl    %cr0, %eax
        orl     $0x80000001, %eax
        movl    %eax, %cr0
        ljmpl   $0x08, $lm64
        .code64
lm64:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %ss
        movq    $0x7000, %rsp
        movq    $0x123456789abcdef0, %r9
        movq    %r9, %xmm9
        fninit
        fldpi
        fldl2e
        xorq    %r8, %r8
1:      incq    %r8
        testq   $0x3ff, %r8
        jnz     1b
        movb    $'L', %al
        movw    $0x3f8, %dx
        outb    %al, %dx
        jmp     1b
""" + gdt(CODE64, DATA64)

GUESTS = {"protected32": (PROTECTED_FPU, 32, b"F"), "long": (LONG_MODE_FPU, 64, b"L")}


def vcpu_state(assemble, name: str) -> dict[str, Any]:
    """The state of a real Unicorn vCPU, stopped while running guest ``name``."""
    source, bits, mark = GUESTS[name]
    image = assemble(source, bits=bits)
    guest = PcGuest(image + bytes(510 - len(image)) + b"\x55\xaa", RAM)
    try:
        guest.wait_until(lambda out: out.count(mark) >= 2, 30)
        guest.vm.stop()
        return guest.vcpu.get_state()
    finally:
        guest.close()


def without_fpcs_fpds(fpu: bytes) -> bytes:
    return fpu[:150] + bytes(4) + fpu[154:]


def save_both(fields: dict[str, Any]) -> tuple[bytes, bytes]:
    f = copy.deepcopy(fields)
    return save_state(VMSTATE_CPU_COMMON_QEMU, f), save_state(VMSTATE_CPU_QEMU, f)


def load_both(common: bytes, cpu: bytes, version: int = 12) -> tuple[int, dict[str, Any], list[str]]:
    fields, ctx = reset_fields(), LoadContext()
    ret = load_state(ByteSource(common), VMSTATE_CPU_COMMON_QEMU, fields, 1, ctx)
    if ret == 0:
        ret = load_state(ByteSource(cpu), VMSTATE_CPU_QEMU, fields, version, ctx)
    return ret, fields, ctx.lines


def test_the_descriptions_are_qemus():
    assert (VMSTATE_CPU_QEMU.name, VMSTATE_CPU_QEMU.version_id, VMSTATE_CPU_QEMU.minimum_version_id) == ("cpu", 12, 11)
    assert len(VMSTATE_CPU_QEMU.fields) == 66
    assert [f.name for f in VMSTATE_CPU_QEMU.fields[:4]] == ["regs", "eip", "eflags", "hflags"]
    assert [f.name for f in VMSTATE_CPU_QEMU.fields if f.version_id == 12] == ["xcr0", "xstate_bv", "ymmh_regs"]
    assert (VMSTATE_CPU_COMMON_QEMU.name, VMSTATE_CPU_COMMON_QEMU.version_id) == ("cpu_common", 1)
    assert [f.name for f in VMSTATE_CPU_COMMON_QEMU.fields] == ["halted", "interrupt_request"]
    assert len(VMSTATE_CPU_QEMU.subsections) == 43  # x86_64 with CONFIG_KVM
    assert "cpu/svn_npt" in SUPPORTED_SUBSECTIONS and "cpu/msr_hyperv_synic" in REFUSED_SUBSECTIONS
    assert set(HELD) | set(CARRIED) == set(reset_fields())
    entries = cpu_entries()
    assert [(e.idstr, e.instance_id, e.version_id) for e in entries] == [("cpu_common", 0, 1), ("cpu", 0, 12)]
    assert entries[0].state is entries[1].state


def test_reset_fields_save_to_qemus_sizes():
    common, cpu = save_both(reset_fields())
    assert common == struct.pack(">II", 0, 0x10)
    assert len(cpu) == CPU_SIZE
    assert cpu.endswith(bytes([5, 20]) + b"cpu/poll_control_msr" + struct.pack(">IQ", 1, 0))


def _busy_fields() -> dict[str, Any]:
    """Fields with a value in every supported subsection."""
    f = reset_fields()
    f.update(halted=1, interrupt_request=0x12, exception_index=14, crash_occurred=True, fpop=0x5D9, fpip=0x7C40,
             fpdp=0x9000, msr_ia32_misc_enable=0x801, msr_smi_count=3, hflags2=0x141, nested_cr3=0x5000,
             nested_pg_mode=1, int_ctl=0x105, poll_control_msr=5, v_tpr=5)
    f["regs"] = list(range(1, 17))
    f["ymmh_regs"][7] = [1, 2]
    f["segs"][1] = {"selector": 8, "base": 0, "limit": 0xFFFFFFFF, "flags": 0xCF9B00}
    f["mtrr_var"][3] = {"base": 0x6, "mask": 0xFFF800800}
    f["fpregs"][2] = {"mant": 0xC90FDAA22168C000, "exp": 0x4000}
    return f


@pytest.mark.parametrize("fields", [reset_fields(), _busy_fields()], ids=["reset", "busy"])
def test_load_of_save_gives_the_fields_back(fields):
    common, cpu = save_both(fields)
    ret, loaded, lines = load_both(common, cpu)
    assert (ret, lines) == (0, [])
    assert loaded == fields


def test_the_subsections_sent_follow_the_needed_rules():
    _, cpu = save_both(_busy_fields())
    names = [cpu[i + 2:i + 2 + cpu[i + 1]].decode() for i in range(len(cpu) - 2)
             if cpu[i] == 5 and cpu[i + 2:i + 6] == b"cpu/"]
    assert names == ["cpu/poll_control_msr", "cpu/fpop_ip_dp", "cpu/msr_ia32_misc_enable", "cpu/msr_smi_count",
                     "cpu/svn_npt", "cpu/svm_guest"]
    f = reset_fields()
    f["poll_control_msr"] = 1  # KVM's reset value: not sent
    assert len(save_both(f)[1]) == 1817
    common, _ = save_both(_busy_fields())
    assert b"cpu_common/exception_index" in common and b"cpu_common/crash_occurred" in common


def test_pre_save_takes_v_tpr_from_int_ctl_and_fixes_a_real_mode_dpl():
    f = reset_fields()
    f["int_ctl"] = 0x10A
    for seg in f["segs"]:
        seg["flags"] |= 3 << 13
    _, cpu = save_both(f)
    ret, loaded, _ = load_both(save_both(f)[0], cpu)
    assert ret == 0 and loaded["v_tpr"] == 0xA
    assert all(not seg["flags"] >> 13 & 3 for seg in loaded["segs"])


def test_a_version_11_stream_leaves_the_xsave_fields():
    f = _busy_fields()
    v11 = copy.deepcopy(VMSTATE_CPU_QEMU)
    v11.version_id = 11
    cpu = save_state(v11, copy.deepcopy(f))
    assert len(cpu) == len(save_both(f)[1]) - 16 - 16 * 16
    ret, loaded, _ = load_both(save_both(f)[0], cpu, version=11)
    assert ret == 0
    assert loaded["ymmh_regs"] == reset_fields()["ymmh_regs"] and loaded["xcr0"] == 1
    assert loaded["regs"] == f["regs"]


def _with_subsection(cpu: bytes, name: bytes, body: bytes, version: int = 1) -> bytes:
    return cpu + bytes([5, len(name)]) + name + struct.pack(">I", version) + body


@pytest.mark.parametrize("name", REFUSED_SUBSECTIONS)
def test_a_subsection_this_vcpu_cannot_hold_is_refused_clearly(name):
    common, cpu = save_both(reset_fields())
    ret, _, lines = load_both(common, _with_subsection(cpu, name.encode(), bytes(16)))
    assert ret == -errno.EINVAL
    assert lines == [lines[0]] and lines[0].startswith(f"{name}: this emulator's vCPU cannot hold this state")


def test_an_unknown_subsection_fails_without_a_crash():
    common, cpu = save_both(reset_fields())
    ret, _, lines = load_both(common, _with_subsection(cpu, b"cpu/not_in_qemu_7_2", bytes(8)))
    assert ret == -errno.ENOENT and lines == []  # reported by the stream loader, as QEMU does
    ret, _, lines = load_both(common, _with_subsection(cpu, b"cpu/fpop_ip_dp", b"\x00"))  # cut short
    assert ret == 0 or ret < 0  # no exception: the section footer check catches the rest
    ret, _, lines = load_both(common, cpu[:100])
    assert ret == 0 or ret < 0
    ret, _, lines = load_both(common, cpu, version=10)
    assert ret == -errno.EINVAL and "too old" in lines[0]


def test_an_old_fpu_format_is_refused():
    f = reset_fields()
    f["fpregs_format_vmstate"] = 1
    ret, _, lines = load_both(*save_both(f))
    assert ret == -errno.EINVAL and lines == ["Unsupported old non-softfloat CPU state"]


def test_post_load_takes_the_cpl_from_ss():
    f = reset_fields()
    f["segs"][2]["flags"] |= 3 << 13
    f["cr0"] |= 1
    ret, loaded, _ = load_both(*save_both(f))
    assert ret == 0 and loaded["hflags"] & 3 == 3


@pytest.mark.parametrize("guest", sorted(GUESTS))
def test_a_unicorn_vcpu_state_round_trips_through_qemus_format(assemble, guest):
    state = vcpu_state(assemble, guest)
    fpu = state["fpu"]
    assert struct.unpack_from("<I", fpu, 0)[0] in (5, 6)  # values on the x87 stack
    assert any(state["xmm"])
    q = to_qemu(state)
    assert q["fpus_vmstate"] >> 11 & 7 == struct.unpack_from("<I", fpu, 0)[0]
    assert q["fptag_vmstate"] in (0b11100000, 0b11000000)
    assert q["regs"][3 if guest == "protected32" else 9] in (0x11223344, 0x123456789ABCDEF0)
    assert q["hflags2"] & 0x100  # QEMU 7.2's VGIF, which the Unicorn vCPU has no bit for
    back, carried = from_qemu(q)
    assert back == state
    assert back.keys() == state.keys()
    assert set(carried) >= set(CARRIED)
    assert to_qemu(back, carried) == q
    # through the bytes of the two sections
    ret, loaded, lines = load_both(*save_both(q))
    assert (ret, lines) == (0, [])
    assert loaded == {k: v for k, v in q.items() if k not in NOT_IN_STREAM}
    # the x87 last CS/DS selectors are not in QEMU's format: they come back 0
    assert from_qemu(loaded)[0] == dict(state, fpu=without_fpcs_fpds(fpu))
    if guest == "long":
        assert q["efer"] & 0x500 == 0x500 and q["segs"][1]["flags"] & (1 << 21)
        assert q["xmm_regs"][9] == [0x123456789ABCDEF0, 0]
    else:
        assert q["cr0"] & 1 and q["xmm_regs"][1] == [0x0123456789ABCDEF, 0xFEDCBA9876543210]


def test_a_state_from_qemus_fields_runs_on_a_unicorn_vcpu(assemble):
    """from_qemu gives a state the vCPU takes: it goes on running the guest."""
    state = vcpu_state(assemble, "long")
    back, _ = from_qemu(load_both(*save_both(to_qemu(state)))[1])
    image = assemble(LONG_MODE_FPU, bits=64)
    dest = PcGuest(image + bytes(510 - len(image)) + b"\x55\xaa", RAM, start_paused=True)
    try:
        # the guest's page tables and code are rebuilt by booting a copy up to the same point
        src = PcGuest(image + bytes(510 - len(image)) + b"\x55\xaa", RAM)
        try:
            src.wait_until(lambda out: out.count(b"L") >= 1, 30)
            src.vm.stop()
            dest.machine.ram_blocks[0].view()[:] = src.machine.ram_blocks[0].view()
        finally:
            src.close()
        dest.vcpu.set_state(back)
        assert dest.vcpu.get_state() == back
        dest.vm.cont()
        dest.wait_until(lambda out: out.count(b"L") >= 2, 30)
        dest.vm.stop()
        assert dest.vcpu.error is None
        assert dest.vcpu.get_state()["r9"] == 0x123456789ABCDEF0
    finally:
        dest.close()


def test_to_qemu_keeps_the_carried_fields_and_the_other_interrupt_bits():
    base = reset_fields()
    base.update(smbase=0xA0000, tsc_aux=7, interrupt_request=0x10 | 0x2)
    base["dr"][7] = 0x401
    state, carried = from_qemu(base)
    assert state["interrupt_request"] == 1
    state["interrupt_request"] = 0
    q = to_qemu(state, carried)
    assert q["interrupt_request"] == 0x10 and q["smbase"] == 0xA0000 and q["dr"][7] == 0x401 and q["tsc_aux"] == 7
    assert q["gdt"] == base["gdt"]
