"""QEMU's ``qemu_strto*`` number syntax (C ``strtoull``/``strtoll`` with base 0, whole token consumed)."""
from __future__ import annotations

import re

U64_MAX = (1 << 64) - 1
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1

# What libqtest sends: 0x followed by hex digits. Parsed without the general machinery.
_FAST_HEX = re.compile(rb"0x[0-9a-fA-F]{1,16}\Z")
_WS = b" \t\n\v\f\r"


class NumberError(ValueError):
    """``invalid`` (EINVAL: no digits or trailing garbage) or out of range (ERANGE)."""

    def __init__(self, token: bytes, out_of_range: bool) -> None:
        super().__init__(token)
        self.token = token
        self.out_of_range = out_of_range


def _parse_magnitude(tok: bytes) -> tuple[bool, int]:
    """(negative, magnitude) of a C base-0 integer that must use the whole token."""
    s = tok.lstrip(_WS)
    neg = False
    if s[:1] in (b"+", b"-"):
        neg = s[:1] == b"-"
        s = s[1:]
    if s[:2] in (b"0x", b"0X") and len(s) > 2 and s[2:3] in b"0123456789abcdefABCDEF":
        digits, base = s[2:], 16
        allowed = b"0123456789abcdefABCDEF"
    elif s[:1] == b"0":
        digits, base = s, 8
        allowed = b"01234567"
    else:
        digits, base = s, 10
        allowed = b"0123456789"
    if not digits or digits.strip(allowed):
        raise NumberError(tok, False)
    if len(digits.lstrip(b"0")) > 22:  # longer than any 64-bit value in any base; skip int()
        raise NumberError(tok, True)
    return neg, int(digits, base)


def strtou64(tok: bytes) -> int:
    """``qemu_strtou64``/``qemu_strtoul`` (LP64): negative values wrap modulo 2^64."""
    if _FAST_HEX.match(tok):
        return int(tok[2:], 16)
    neg, mag = _parse_magnitude(tok)
    if mag > U64_MAX:
        raise NumberError(tok, True)
    return (-mag) & U64_MAX if neg else mag


def strtoi64(tok: bytes) -> int:
    """``qemu_strtoi64``: signed 64-bit, ERANGE outside it."""
    neg, mag = _parse_magnitude(tok)
    val = -mag if neg else mag
    if not I64_MIN <= val <= I64_MAX:
        raise NumberError(tok, True)
    return val


def strtoi(tok: bytes) -> int:
    """``qemu_strtoi``: signed 32-bit, ERANGE outside it."""
    val = strtoi64(tok)
    if not I32_MIN <= val <= I32_MAX:
        raise NumberError(tok, True)
    return val
