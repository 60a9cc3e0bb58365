"""Pieces of GNU as source shared by the boot-sector guests that tests assemble (the ``assemble``
fixture of the root conftest.py): today, the global descriptor table of a protected-mode guest.

Plain text only: it imports nothing of ``emu`` or ``qtest``. Test modules anywhere under ``tests/``
import it by bare name (the root conftest.py puts ``tests/`` on ``sys.path``).
"""
from __future__ import annotations

#: Flat 4 GiB segments at base 0, 32-bit (D/B set, 4 KiB granularity): code (execute/read), data (read/write).
FLAT_CODE32 = 0x00CF9A000000FFFF
FLAT_DATA32 = 0x00CF92000000FFFF


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
