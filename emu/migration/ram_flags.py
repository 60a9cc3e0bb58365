"""The RAM section's record flags (QEMU 9.1 ``migration/ram.c`` ``RAM_SAVE_FLAG_*``), defined once
for every Python module that writes or reads RAM records (saver, loader, multifd, the stream fuzzer).

A record starts with a be64 word: the page offset in its high bits, these flags in the low 12 bits
(offsets are page-aligned). The C core has the same values in ``csrc/ram_flags.h``; a test compares
the two. This module owns nothing else and imports nothing.
"""
from __future__ import annotations

__all__ = [
    "ENCODING_FLAG_XBZRLE",
    "RAM_FLAGS_MASK",
    "RAM_SAVE_FLAG_COMPRESS_PAGE",
    "RAM_SAVE_FLAG_CONTINUE",
    "RAM_SAVE_FLAG_EOS",
    "RAM_SAVE_FLAG_FULL",
    "RAM_SAVE_FLAG_HOOK",
    "RAM_SAVE_FLAG_MEM_SIZE",
    "RAM_SAVE_FLAG_MULTIFD_FLUSH",
    "RAM_SAVE_FLAG_PAGE",
    "RAM_SAVE_FLAG_XBZRLE",
    "RAM_SAVE_FLAG_ZERO",
]

RAM_SAVE_FLAG_FULL = 0x01  # obsolete, never written
RAM_SAVE_FLAG_ZERO = 0x02  # a page of one fill byte (u8 follows)
RAM_SAVE_FLAG_MEM_SIZE = 0x04  # the block list: (counted name, be64 length) pairs
RAM_SAVE_FLAG_PAGE = 0x08  # a whole page follows
RAM_SAVE_FLAG_EOS = 0x10  # end of the section's part
RAM_SAVE_FLAG_CONTINUE = 0x20  # same block as the previous record: no name follows
RAM_SAVE_FLAG_XBZRLE = 0x40  # an XBZRLE delta follows (encoding u8, be16 length, delta)
RAM_SAVE_FLAG_HOOK = 0x80  # obsolete (RDMA hook)
RAM_SAVE_FLAG_COMPRESS_PAGE = 0x100  # obsolete (compression), refused
RAM_SAVE_FLAG_MULTIFD_FLUSH = 0x200  # 8.0+: every multifd channel synced

#: the bits of a record word that hold flags (the rest is the page offset)
RAM_FLAGS_MASK = 0xFFF
#: the XBZRLE record's encoding byte
ENCODING_FLAG_XBZRLE = 0x1
