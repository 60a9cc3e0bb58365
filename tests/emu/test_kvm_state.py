"""KVM <-> ``cpu`` section conversions (emu.kvm_state), checked against the Unicorn vCPU's own
reading of the same architectural state (emu.cpu_state)."""
from __future__ import annotations

import struct

import pytest
import unicorn
from unicorn import x86_const as x86

from emu import cpu_state, kvm_state
from emu.kvm_core import kvm_available


def unicorn_protected_state() -> dict:
    """A Unicorn engine in flat 32-bit protected mode with x87 values pushed, read as a state."""
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
    uc.mem_map(0, 0x10000)
    gdt = struct.pack("<QQQ", 0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF)
    uc.mem_write(0x1000, gdt)
    # fninit; fld1; fldpi; mov $0x10,%ax; mov %ax,%ds; hlt  (run in protected mode below)
    code = bytes.fromhex("dbe3d9e8d9eb66b810008ed8f4")
    uc.mem_write(0x2000, code)
    uc.reg_write(x86.UC_X86_REG_GDTR, (0, 0x1000, len(gdt) - 1, 0))
    uc.reg_write(x86.UC_X86_REG_CR0, 0x11)
    uc.reg_write(x86.UC_X86_REG_CS, 8)
    uc.reg_write(x86.UC_X86_REG_SS, 0x10)
    uc.reg_write(x86.UC_X86_REG_ESP, 0x8000)
    uc.emu_start(0x2000, 0x2000 + len(code) - 1)
    return cpu_state.read_state(uc, unicorn)


def same(back: dict, state: dict, key: str) -> bool:
    """Equal, except the descriptor's limit bits 19:16 that TCG keeps in a segment's flags (the
    kernel has the limit only, as QEMU's get_seg) and the last x87 instruction's selectors."""
    if key.endswith(".flags"):
        return back[key] == state[key] & ~0xF0000
    if key == "fpu":  # nor the x87 CS/DS selectors (FXSAVE's 64-bit format, QEMU's kvm_fpu)
        return back[key] == state[key][:150] + bytes(4) + state[key][154:]
    return back[key] == state[key]


def test_round_trip_keeps_every_field_tcg_gives():
    state = unicorn_protected_state()
    regs, sregs, fpu, msrs = kvm_state.from_cpu_state(state)
    back = kvm_state.to_cpu_state(regs, sregs, fpu, msrs)
    for key in ("rip", "rsp", "rflags", "cr0", "cs.flags", "ss.flags", "ds.flags", "gdt.base", "gdt.limit",
                "fpu", "xmm", "mxcsr", "hflags"):
        assert same(back, state, key), key


def test_x87_registers_are_rotated_into_stack_order():
    """After fld1; fldpi the stack top is 6: ST(0) = pi lives in physical register 6, ST(1) = 1.0
    in register 7. The kernel's fpr[] is in stack order."""
    state = unicorn_protected_state()
    _, _, fpu, _ = kvm_state.from_cpu_state(state)
    assert (fpu["fsw"] >> 11) & 7 == 6
    one = (1 << 63).to_bytes(8, "little") + (0x3FFF).to_bytes(2, "little")
    assert fpu["fpr"][16:26] == one  # ST(1)
    assert fpu["fpr"][8:10] == (0x4000).to_bytes(2, "little")  # ST(0) = pi: exponent 0x4000
    assert fpu["ftwx"] == 0b1100_0000  # physical registers 6 and 7 in use


def test_hflags_match_tcg_for_real_and_protected_mode():
    state = unicorn_protected_state()
    assert kvm_state.update_hflags(state) == state["hflags"] & ~(1 << 3)  # all but the interrupt shadow
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
    uc.reg_write(x86.UC_X86_REG_CR0, 0x10)
    uc.reg_write(x86.UC_X86_REG_CS, 0)
    uc.reg_write(x86.UC_X86_REG_SS, 0)
    real = cpu_state.read_state(uc, unicorn)
    assert kvm_state.update_hflags(real) == real["hflags"]


def test_real_mode_segments_get_real_mode_access_rights_and_tr_a_tss():
    """TCG leaves never-loaded segments with flags 0; a VM entry needs valid ones."""
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
    uc.reg_write(x86.UC_X86_REG_CR0, 0x10)
    state = cpu_state.read_state(uc, unicorn)
    assert state["es.flags"] == 0 and state["tr.flags"] == 0
    _, sregs, _, _ = kvm_state.from_cpu_state(state)
    assert sregs["es"]["present"] == 1 and sregs["es"]["type"] == 3 and not sregs["es"]["unusable"]
    assert sregs["cs"]["type"] == 0xB
    assert sregs["tr"]["type"] == 0xB and sregs["tr"]["present"] == 1


@pytest.mark.skipif(kvm_available() is not None, reason=f"no usable /dev/kvm here: {kvm_available()}")
def test_a_kvm_vcpu_takes_and_gives_back_the_tcg_state():
    from emu.kvm_core import Kvm

    state = unicorn_protected_state()
    kvm = Kvm()
    vm = kvm.create_vm()
    try:
        cpu = vm.vcpu(0)
        regs, sregs, fpu, msrs = kvm_state.from_cpu_state(state)
        cpu.set_sregs(sregs)
        cpu.set_regs(regs)
        cpu.set_fpu(fpu)
        cpu.set_msrs(msrs)
        back = kvm_state.to_cpu_state(cpu.regs(), cpu.sregs(), cpu.fpu(), cpu.msrs(list(cpu_state.MSRS.values())))
        for key in ("rip", "rsp", "cr0", "cs.flags", "ss.flags", "ds.flags", "gdt.base", "fpu", "xmm"):
            assert same(back, state, key), key
    finally:
        vm.close()
        kvm.close()
