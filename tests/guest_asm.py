"""Pieces of GNU as source shared by the boot-sector guests that tests assemble (the ``assemble``
fixture of the root conftest.py): the entry into flat protected mode and the global descriptor
table of a protected-mode guest.

Plain text only: it imports nothing of ``emu`` or ``qtest``. Test modules anywhere under ``tests/``
import it by bare name (the root conftest.py puts ``tests/`` on ``sys.path``).
"""
from __future__ import annotations

#: Flat 4 GiB segments at base 0, 32-bit (D/B set, 4 KiB granularity): code (execute/read), data (read/write).
FLAT_CODE32 = 0x00CF9A000000FFFF
FLAT_DATA32 = 0x00CF92000000FFFF


#: From the boot sector's first instruction into 32-bit protected mode with interrupts off: DS is 0
#: for ``lgdt``, then selector 0x08 (code, from :func:`gdt`) at ``pm``, where DS holds 0x10 (data)
#: and AX 0x10 for the guest's other segment loads. Needs ``gdt(FLAT_CODE32, FLAT_DATA32)``.
ENTER_FLAT_PM = r"""
.code16
start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    lgdt gdtd
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmp $8, $pm
.code32
pm:
    mov $16, %ax
    mov %ax, %ds
"""


def gdt(*descriptors: int, p2align: int = 3) -> str:
    """Source of a GDT labelled ``gdt`` (aligned to ``2**p2align`` bytes: the null descriptor, then
    ``descriptors``, which selectors 0x08, 0x10... name) and of its pseudo-descriptor for ``lgdt``,
    labelled ``gdtd``."""
    entries = "".join(f"        .quad   {d:#018x}\n" for d in descriptors)
    return (f"        .p2align {p2align}\n"
            "gdt:    .quad   0\n"
            f"{entries}"
            "gdtd:   .word   gdtd - gdt - 1\n"
            "        .long   gdt\n")
