"""qtest-style port accessors for in-process device benches that keep their I/O address space
in ``self.io``."""
from __future__ import annotations

from emu.memory import AddressSpace


class PortIO:
    """``inb``/``inw``/``inl`` and ``outb``/``outw``/``outl`` on ``self.io``."""

    io: AddressSpace

    def inb(self, port: int) -> int:
        return self.io.read_uint(port, 1)

    def inw(self, port: int) -> int:
        return self.io.read_uint(port, 2)

    def inl(self, port: int) -> int:
        return self.io.read_uint(port, 4)

    def outb(self, port: int, value: int) -> None:
        self.io.write_uint(port, value, 1)

    def outw(self, port: int, value: int) -> None:
        self.io.write_uint(port, value, 2)

    def outl(self, port: int, value: int) -> None:
        self.io.write_uint(port, value, 4)
