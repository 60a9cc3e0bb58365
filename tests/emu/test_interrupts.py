"""Interrupts into the vCPU (Unicorn and KVM): the 8259 PIC in real mode and the IOAPIC in flat
protected mode. Under KVM they go in with KVM_INTERRUPT once the guest opens an interrupt window,
and a guest halted in ``hlt`` wakes up.

The guests are assembled with GNU binutils (the ``assemble`` fixture); the interrupt source is
the i8042, as in QEMU's transcripts: ``outb 0x64 0xd2`` then ``outb 0x60 X`` raises IRQ 1."""
from __future__ import annotations

import os

import pytest
from guest_asm import ENTER_FLAT_PM, FLAT_CODE32, FLAT_DATA32, gdt
from pc_guest import PcGuest, accel_params

PIC_GUEST = r"""
.code16
start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x7c00, %sp
    movw $isr, 0x21*4          # IRQ1 -> vector 0x21 once the PIC is programmed below
    movw $0, 0x21*4+2
    mov $0x11, %al ; out %al, $0x20    # ICW1: edge, cascade, ICW4
    mov $0x20, %al ; out %al, $0x21    # ICW2: master base 0x20
    mov $0x04, %al ; out %al, $0x21    # ICW3: slave on IR2
    mov $0x01, %al ; out %al, $0x21    # ICW4: 8086 mode
    mov $0x11, %al ; out %al, $0xa0
    mov $0x28, %al ; out %al, $0xa1
    mov $0x02, %al ; out %al, $0xa1
    mov $0x01, %al ; out %al, $0xa1
    mov $0xfd, %al ; out %al, $0x21    # only IRQ1
    mov $0xff, %al ; out %al, $0xa1
    mov $'R', %al
    mov $0x3f8, %dx
    out %al, %dx                       # ready
    sti
idle:
    hlt
    jmp idle
isr:
    push %ax
    push %dx
    in $0x60, %al                      # the byte the test put in the keyboard buffer
    mov $0x3f8, %dx
    out %al, %dx
    mov $0x20, %al
    out %al, $0x20                     # EOI
    pop %dx
    pop %ax
    iret
.org 510
.byte 0x55, 0xaa
"""

IOAPIC_GUEST = ENTER_FLAT_PM + r"""
    mov %ax, %es
    mov %ax, %ss
    mov $0x7c00, %esp
    mov $isr, %eax                     # interrupt gate for vector 0x30
    mov $idt+0x30*8, %edi
    mov %ax, (%edi)
    movw $8, 2(%edi)
    movw $0x8e00, 4(%edi)
    shr $16, %eax
    mov %ax, 6(%edi)
    lidt idtdesc
    mov $0xff, %al ; out %al, $0x21    # the PIC stays masked: the IOAPIC delivers
    mov $0xff, %al ; out %al, $0xa1
    movl $0x12, 0xfec00000             # redirection entry of pin 1, low half
    movl $0x30, 0xfec00010             # vector 0x30, fixed, edge, unmasked
    mov $'P', %al
    mov $0x3f8, %dx
    out %al, %dx
    sti
idle:
    hlt
    jmp idle
isr:
    push %eax
    push %edx
    in $0x60, %al
    mov $0x3f8, %dx
    out %al, %dx
    pop %edx
    pop %eax
    iret
""" + gdt(FLAT_CODE32, FLAT_DATA32) + r"""
idtdesc:
    .word 0x30*8+7
    .long idt
.org 510
.byte 0x55, 0xaa
idt:
"""


class Run(PcGuest):
    def __init__(self, image: bytes, accel: str) -> None:
        super().__init__(image, 64 << 20, accel=accel)

    def wait_for(self, text: bytes, timeout: float = 30) -> None:
        self.wait_until(lambda out: text in out, timeout)

    def key(self, byte: int) -> None:
        with self.vm.lock:  # what qtest's outb does
            self.machine.address_space_io.write_uint(0x64, 0xD2, 1)
            self.machine.address_space_io.write_uint(0x60, byte, 1)



@pytest.mark.parametrize("accel", accel_params())
@pytest.mark.parametrize("source,ready", [(PIC_GUEST, b"R"), (IOAPIC_GUEST, b"P")], ids=["pic-real-mode", "ioapic-flat-pm"])
def test_keyboard_interrupt_reaches_the_guest_handler(assemble, source, ready, accel):
    if accel == "kvm" and source is IOAPIC_GUEST and os.path.exists("/sys/module/kvm_pvm"):
        pytest.skip("this host's KVM (PVM) cannot run a protected-mode iret of a non-paged guest: QEMU 7.2 "
                    "stops there with the same 'KVM internal error. Suberror: 1' (see test_kvm_accel.py)")
    run = Run(assemble(source), accel)
    try:
        run.wait_for(ready)
        for ch in b"XYZ":
            run.key(ch)
            run.wait_for(ready + b"XYZ"[: b"XYZ".index(ch) + 1])
        assert bytes(run.serial) == ready + b"XYZ"
    finally:
        run.close()


@pytest.mark.parametrize("accel", accel_params())
def test_masked_pic_input_is_not_delivered(assemble, accel):
    run = Run(assemble(PIC_GUEST), accel)
    try:
        run.wait_for(b"R")
        with run.vm.lock:
            run.machine.address_space_io.write_uint(0x21, 0xFF, 1)  # mask IRQ1 behind the guest's back
        run.key(ord("X"))
        with run.vm.lock:
            assert run.machine.pic.master.irr & 0x02  # latched...
            assert not run.machine.interrupt_pending()  # ...but not offered to the CPU
        assert bytes(run.serial) == b"R"
        with run.vm.lock:
            run.machine.address_space_io.write_uint(0x21, 0xFD, 1)  # unmask: the latched edge fires
        run.wait_for(b"RX")
    finally:
        run.close()
