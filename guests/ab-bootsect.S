# ab-bootsect.S - the "A-B" migration test guest for qtest-emu.
#
# Written from the behavioural contract of QEMU's migration-test guest (see guests/README.md);
# it is not derived from QEMU's a-b-bootblock.S.
#
# Contract:
#   * loaded at 0x7c00 and entered in 16-bit real mode at 0000:7c00 (DL = 0x80, ignored);
#     uses no BIOS service at all;
#   * builds a flat 4 GiB GDT, enables A20 through port 0x92 ("fast A20"), enters 32-bit
#     protected mode, loads flat DS/FS/GS and leaves SS and ES as real mode left them (a 16-bit
#     stack just below 0x7c00), as QEMU's guest does;
#   * prints 'A' once on COM1 (0x3f8);
#   * then forever: increments byte 0 of every 4 KiB page in [MEM_START, MEM_END) - one "pass" -
#     and after every PASSES_PER_B passes prints 'B' on COM1.
#
# The three loop parameters live in a parameter block at a FIXED offset of the sector (0x1f0,
# i.e. guest address 0x7df0) so that tests can patch them in the image, or even in guest RAM
# while the guest runs: they are re-read from memory at the start of every pass (MEM_START,
# MEM_END) and after every 'B' (PASSES_PER_B).
#
# Build (see guests/Makefile):
#   as --32 -o ab-bootsect.o ab-bootsect.S
#   ld -m elf_i386 -Ttext 0x7c00 -e _start -o ab-bootsect.elf ab-bootsect.o
#   objcopy -O binary -j .text ab-bootsect.elf ab-bootsect.bin

        .set LOAD_ADDR,     0x7c00
        .set PARAM_OFFSET,  0x1f0          # offset of the parameter block in the sector

        # Defaults of the parameter block.
        .set PASSES_PER_B,  256            # QEMU 9.1's migration test: one 'B' per 256 passes
        .set MEM_START,     0x00100000     # 1 MiB
        .set MEM_END,       0x06400000     # 100 MiB (exclusive)
        .set PAGE_SIZE,     4096

        .set COM1_THR,      0x3f8          # transmit holding register
        .set COM1_LSR,      0x3fd          # line status register
        .set LSR_THRE,      0x20           # THR empty
        .set LSR_POLLS,     0x10000        # bounded poll: write anyway after this many reads

        .set CODE_SEL,      0x08
        .set DATA_SEL,      0x10

        .text
        .globl _start

# ---------------------------------------------------------------------------------------------
# 16-bit real mode, CS:IP = 0000:7c00
# ---------------------------------------------------------------------------------------------
        .code16
_start:
        cli
        xorw    %ax, %ax
        movw    %ax, %ds                   # lgdt below reads through DS
        movw    %ax, %ss
        movw    $LOAD_ADDR, %sp

        # Fast A20: set bit 1 of system control port A, keep bit 0 (fast reset) clear.
        inb     $0x92, %al
        orb     $0x02, %al
        andb    $0xfe, %al
        outb    %al, $0x92

        lgdtl   gdt_desc                   # 32-bit operand size: full 32-bit base

        movl    %cr0, %eax
        orl     $1, %eax                   # CR0.PE
        movl    %eax, %cr0

        ljmpl   $CODE_SEL, $pm_entry       # reload CS, leave real mode

# ---------------------------------------------------------------------------------------------
# 32-bit protected mode, flat segments
# ---------------------------------------------------------------------------------------------
        .code32
pm_entry:
        # SS and ES keep what real mode loaded (selector 0, base 0, limit 64 KiB, 16-bit), as in
        # QEMU's guest: a state no selector load can recreate, which migration must carry as is.
        # The stack is therefore 16-bit: SS:SP, just below the sector.
        movw    $DATA_SEL, %ax
        movw    %ax, %ds
        movw    %ax, %fs
        movw    %ax, %gs
        movl    $LOAD_ADDR, %esp

        movb    $'A', %al
        call    putc

        movl    passes_per_b, %ebx         # passes left until the next 'B'

pass:
        movl    mem_start, %eax
        movl    mem_end, %edi
page:
        incb    (%eax)                     # the workload: dirty byte 0 of the page
        addl    $PAGE_SIZE, %eax
        cmpl    %edi, %eax
        jb      page

        decl    %ebx                       # (a patched 0 therefore means 2^32 passes)
        jnz     pass

        movb    $'B', %al
        call    putc
        movl    passes_per_b, %ebx
        jmp     pass

# putc: write AL to COM1. Polls LSR.THRE a bounded number of times first, so that a port
# that reads as 0 (no UART) cannot hang the guest. Clobbers ECX, EDX.
putc:
        movb    %al, %ah
        movl    $LSR_POLLS, %ecx
        movw    $COM1_LSR, %dx
1:      inb     %dx, %al
        testb   $LSR_THRE, %al
        jnz     2f
        loop    1b
2:      movb    %ah, %al
        movw    $COM1_THR, %dx
        outb    %al, %dx
        ret

# ---------------------------------------------------------------------------------------------
# GDT: null, flat 4 GiB code (0x08), flat 4 GiB data (0x10)
# ---------------------------------------------------------------------------------------------
        .p2align 3
gdt:
        .quad   0x0000000000000000
        .quad   0x00cf9a000000ffff         # base 0, limit 0xfffff * 4K, present, ring 0, code RX, 32-bit
        .quad   0x00cf92000000ffff         # base 0, limit 0xfffff * 4K, present, ring 0, data RW, 32-bit
gdt_end:

gdt_desc:
        .word   gdt_end - gdt - 1
        .long   gdt

# ---------------------------------------------------------------------------------------------
# Parameter block at sector offset 0x1f0 (guest address 0x7df0), little-endian u32 each.
# ---------------------------------------------------------------------------------------------
        .org    PARAM_OFFSET
passes_per_b:                              # offset 0x1f0
        .long   PASSES_PER_B
mem_start:                                 # offset 0x1f4
        .long   MEM_START
mem_end:                                   # offset 0x1f8
        .long   MEM_END
        .ascii  "AB"                       # offset 0x1fc: tag, unused

        .org    510
        .byte   0x55, 0xaa
