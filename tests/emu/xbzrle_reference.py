"""A reference XBZRLE encoder in Python, for tests only: the product encodes in C
(``emu.migration.xbzrle.encode_page``, ``csrc/xbzrle.c``) and decodes with
``emu.migration.stream.xbzrle_decode``; tests compare the C encoder against this one."""
from __future__ import annotations

PAGE_SIZE = 4096


def _uleb_encode(v: int) -> bytes:
    """QEMU's ``uleb128_encode_small``: one byte below 0x80, two up to 0x3FFF."""
    if v < 0x80:
        return bytes((v,))
    if v > 0x3FFF:
        raise ValueError("uleb128 small overflow")
    return bytes((0x80 | (v & 0x7F), v >> 7))


def xbzrle_encode(old: bytes, new: bytes, limit: int = PAGE_SIZE) -> bytes | None:
    """Encodes ``new`` against ``old`` (zero-run / nonzero-run pairs). ``b""`` if identical,
    ``None`` on overflow (> ``limit`` bytes): a sender then sends a normal PAGE. Unlike QEMU it
    has no 'fewer than 2 bytes left' check before a trailing unchanged run."""
    n = len(new)
    out = bytearray()
    i = 0
    while i < n:
        j = i
        while j < n and old[j] == new[j]:
            j += 1
        if j == n:
            break
        zrun = j - i
        k = j
        while k < n and old[k] != new[k]:
            k += 1
        out += _uleb_encode(zrun) + _uleb_encode(k - j) + new[j:k]
        if len(out) > limit:
            return None
        i = k
    return bytes(out)
