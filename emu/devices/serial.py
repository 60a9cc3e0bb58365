"""The 16550A UART (COM1 at 0x3f8, IRQ 4) as far as polling guests need it.

Transmit goes straight to the chardev (the transmitter is always ready: LSR reports THRE and
TEMT); received bytes queue in RBR with DR set. The register file (IER, LCR, MCR, SCR, divisor)
reads back what was written. Interrupts and the FIFO come with the full PC device model.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

from emu.devices.base import Device
from emu.memory import AccessRules, CallbackOps, MemoryRegion

LSR_DR, LSR_THRE, LSR_TEMT = 0x01, 0x20, 0x40
LCR_DLAB = 0x80
MSR_INIT = 0xB0  # DCD, DSR and CTS asserted, as QEMU's UART reports with a connected backend


class Serial16550(Device):
    type_name = "isa-serial"
    type_parent = "isa-device"

    def __init__(self, output: Callable[[bytes], None] | None = None) -> None:
        super().__init__()
        self.output = output
        self.irq = self.init_gpio_out(1)[0]
        self.io = MemoryRegion.io("serial", 8, CallbackOps(self._read, self._write, AccessRules(valid_max=1, impl_max=1)),
                                  owner=self)
        self.rx: deque[int] = deque()
        self.reset()

    def reset(self) -> None:
        self.ier = self.lcr = self.mcr = self.scr = 0
        self.divisor = 0x0C  # 9600 baud
        self.rx.clear()

    def receive(self, data: bytes) -> None:
        """Bytes from the chardev for the guest to read."""
        self.rx.extend(data)

    def _read(self, offset: int, size: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if offset == 0:
            if dlab:
                return self.divisor & 0xFF
            return self.rx.popleft() if self.rx else 0
        if offset == 1:
            return self.divisor >> 8 if dlab else self.ier
        if offset == 2:
            return 0x01  # no interrupt pending
        if offset == 3:
            return self.lcr
        if offset == 4:
            return self.mcr
        if offset == 5:
            return LSR_THRE | LSR_TEMT | (LSR_DR if self.rx else 0)
        if offset == 6:
            return MSR_INIT
        return self.scr

    def _write(self, offset: int, value: int, size: int) -> None:
        dlab = self.lcr & LCR_DLAB
        if offset == 0:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
            elif self.output is not None:
                self.output(bytes([value]))
        elif offset == 1:
            if dlab:
                self.divisor = (self.divisor & 0x00FF) | (value << 8)
            else:
                self.ier = value & 0x0F
        elif offset == 3:
            self.lcr = value
        elif offset == 4:
            self.mcr = value & 0x1F
        elif offset == 7:
            self.scr = value
