"""The byte source ``emu.migration.vmstate.load_state`` reads, over a bytes object: the device
tests parse the section bodies their devices save with it."""
from __future__ import annotations


class ByteSource:
    """QEMUFile's reads as ``load_state`` uses them: ``get`` always returns ``n`` bytes (zero
    padded past the end), ``peek`` may be short, ``error`` is sticky (0 or a negative errno)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.error = data, 0, 0

    def get(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk + bytes(n - len(chunk))

    def peek(self, n: int, offset: int = 0) -> bytes:
        return self.data[self.pos + offset:self.pos + offset + n]

    def skip(self, n: int) -> None:
        self.pos += n

    def set_error(self, err: int) -> None:
        self.error = err
