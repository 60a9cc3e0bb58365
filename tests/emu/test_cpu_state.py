"""The vCPU's architectural state round-trips in every x86 mode (emu/cpu_state.py).

Each guest runs on one pc machine until it has printed on COM1, is paused, and its RAM and its CPU
(as the CPU device's QEMU ``cpu_common``/``cpu`` section bytes) are put into a second, fresh
machine, which must report the very same state and then go on running the guest where the first
one stopped. The guests are built so that a wrong hidden
segment part or a wrong mode makes them fault or print the wrong thing.
"""
from __future__ import annotations

from typing import Any

import pytest
from guest_asm import FLAT_CODE32, FLAT_DATA32, gdt
from pc_guest import PcGuest
from vmstate_source import ByteSource

from emu.migration.vmstate import LoadContext, load_state, save_state

RAM = 4 << 20
CODE16 = 0x00009A000000FFFF  # base 0, limit 64 KiB
DATA16_AT_0X20000 = 0x000092020000FFFF  # base 0x20000, limit 64 KiB
CODE64 = 0x00209A0000000000  # 64-bit code (L set)
DATA64 = 0x0000920000000000

REAL_MODE = r"""
        .code16
        cli
        movw    $0x1234, %ax
        movw    %ax, %ds                # DS base 0x12340
        movw    $0x2000, %ax
        movw    %ax, %es
        xorw    %ax, %ax
        movw    %ax, %ss
        movw    $0x7000, %sp
        xorl    %esi, %esi
1:      incl    %esi
        movl    %esi, %ds:0             # at 0x12340
        testl   $0x3ff, %esi
        jnz     1b
        movb    $'R', %al
        movw    $0x3f8, %dx
        outb    %al, %dx
        jmp     1b
"""

PROTECTED_16 = r"""
        .code16
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        lgdtl   gdtd
        movl    %cr0, %eax
        orl     $1, %eax
        movl    %eax, %cr0
        ljmp    $0x08, $pm16            # a 16-bit code segment
pm16:
        movw    $0x10, %ax              # data, base 0x20000
        movw    %ax, %ds
        movw    %ax, %ss
        movw    $0x8000, %sp
        xorl    %esi, %esi
1:      incl    %esi
        movl    %esi, 0                 # at 0x20000
        pushw   %si
        popw    %di
        testl   $0x3ff, %esi
        jnz     1b
        movb    $'P', %al
        movw    $0x3f8, %dx
        outb    %al, %dx
        jmp     1b
""" + gdt(CODE16, DATA16_AT_0X20000)

# As QEMU's A-B guest: protected mode without reloading SS, so SS keeps its real-mode cache (a
# 16-bit stack). ESP's upper half is set: with a 32-bit stack the calls would go to unmapped memory.
PROTECTED_32 = r"""
        .code16
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %ss
        lgdtl   gdtd
        movl    %cr0, %eax
        orl     $1, %eax
        movl    %eax, %cr0
        ljmpl   $0x08, $pm32
        .code32
pm32:
        movw    $0x10, %ax
        movw    %ax, %ds
        movl    $0x40007000, %esp       # SS.B = 0: only SP (0x7000) is used
        xorl    %esi, %esi
1:      incl    %esi
        movl    %esi, 0x100000
        call    step
        testl   $0x3ff, %esi
        jnz     1b
        movb    $'F', %al
        movw    $0x3f8, %dx
        outb    %al, %dx
        jmp     1b
step:   addl    $3, %edi
        ret
""" + gdt(FLAT_CODE32, FLAT_DATA32)

# Long mode: identity-mapped first 2 MiB (one large page), EFER.LME, paging, a 64-bit code segment.
LONG_MODE = r"""
        .code16
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $0x7000, %sp
        movl    $0x1000, %edi           # PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000
        xorl    %eax, %eax
        movl    $0xc00, %ecx
        rep stosl
        movl    $0x2003, 0x1000
        movl    $0x3003, 0x2000
        movl    $0x0083, 0x3000         # 2 MiB page at 0, present, writable
        movl    $0x1000, %eax
        movl    %eax, %cr3
        movl    %cr4, %eax
        orl     $0x20, %eax             # PAE
        movl    %eax, %cr4
        movl    $0xc0000080, %ecx
        rdmsr
        orl     $0x100, %eax            # LME
        wrmsr
        lgdtl   gdtd
        movl    %cr0, %eax
        orl     $0x80000001, %eax       # PG | PE
        movl    %eax, %cr0
        ljmpl   $0x08, $lm64
        .code64
lm64:
        movw    $0x10, %ax
        movw    %ax, %ds
        movw    %ax, %ss
        movq    $0x123456789a, %r9
        movq    $0x7000, %rsp
        xorq    %r8, %r8
1:      incq    %r8
        movq    %r8, 0x5000
        pushq   %r8
        popq    %r10
        addq    %r9, %r11
        testq   $0x3ff, %r8
        jnz     1b
        movb    $'L', %al
        movw    $0x3f8, %dx
        outb    %al, %dx
        jmp     1b
""" + gdt(CODE64, DATA64)


def migrate(source: PcGuest) -> tuple[dict[str, Any], PcGuest]:
    """Pauses ``source`` and copies its RAM and its CPU's sections (as bytes, through QEMU's
    format) into a new machine (still paused)."""
    source.vm.stop()
    state = source.vcpu.get_state()
    bodies = [(name, vmsd, save_state(vmsd, fields))
              for name, _, vmsd, fields in source.machine.cpus[0].vmstate_sections(saving=True)]
    assert [name for name, _, _ in bodies] == ["cpu_common", "cpu"]
    dest = PcGuest(bytes(512), RAM, start_paused=True)
    dest.machine.ram_blocks[0].view()[:] = source.machine.ram_blocks[0].view()
    cpu = dest.machine.cpus[0]
    sections = cpu.vmstate_sections(saving=False)
    for (_, vmsd, body), (name, _instance, _, fields) in zip(bodies, sections):
        assert load_state(ByteSource(body), vmsd, fields, vmsd.version_id, LoadContext()) == 0, name
    cpu.load_vmstate_sections({(name, instance): fields for name, instance, _, fields in sections})
    return state, dest


@pytest.mark.parametrize("source, mark, counter", [
    (REAL_MODE, b"R", "rsi"), (PROTECTED_16, b"P", "rsi"), (PROTECTED_32, b"F", "rsi"), (LONG_MODE, b"L", "r8"),
], ids=["real", "protected16", "protected32-real-ss", "long"])
def test_state_round_trips_and_the_guest_goes_on(assemble, source, mark, counter):
    image = assemble(source, bits=64 if source is LONG_MODE else 32)
    guest = PcGuest(image + bytes(510 - len(image)) + b"\x55\xaa", RAM)
    dest = None
    try:
        guest.wait_until(lambda out: out.count(mark) >= 2, 30)
        state, dest = migrate(guest)
        got = dest.vcpu.get_state()
        # every field, hidden segment parts included; the x87 last CS/DS selectors are not in
        # QEMU's stream and arrive as 0
        assert got == dict(state, fpu=state["fpu"][:150] + bytes(4) + state["fpu"][154:])
        before = state[counter]
        dest.vm.cont()
        dest.wait_until(lambda out: out.count(mark) >= 2, 30)
        dest.vm.stop()
        after = dest.vcpu.get_state()
        assert dest.vcpu.error is None
        assert after[counter] > before  # the loop went on from where the source stopped
        for key in ("cr0", "cr3", "cr4", "efer", "cs.selector", "cs.flags", "ss.flags", "ss.base",
                    "ds.base", "gdt.base", "gdt.limit"):
            assert after[key] == state[key], key
        if source is LONG_MODE:
            assert state["efer"] & 0x500 == 0x500  # LME and LMA
            assert after["r9"] == 0x123456789A  # 64-bit registers survive
        if source is PROTECTED_32:
            assert state["ss.selector"] == 0 and not state["ss.flags"] & (1 << 22)  # real-mode SS, 16-bit
            assert state["cr0"] & 1
    finally:
        guest.close()
        if dest is not None:
            dest.close()


def test_a_state_of_the_wrong_size_is_refused():
    dest = PcGuest(bytes(512), RAM, start_paused=True)
    try:
        state = dest.vcpu.get_state()
        state["fpu"] = b"\0" * 3
        with pytest.raises(ValueError):
            dest.vcpu.set_state(state)
    finally:
        dest.close()
