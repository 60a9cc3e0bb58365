"""The MC146818 real-time clock and its 128-byte CMOS NVRAM (ports 0x70/0x71).

The time registers follow the host's UTC clock (QEMU's default ``-rtc base=utc``) in the mode
register B selects (BCD or binary, 12/24 h). Periodic/alarm/update interrupts come with the PC
devices work; the board's CMOS contents (memory sizes) are set by the machine.
"""
from __future__ import annotations

import time

from emu.devices.base import Device
from emu.memory import AccessRules, CallbackOps, MemoryRegion

REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
REG_CENTURY = 0x32
B_24H, B_BINARY = 0x02, 0x04


class RTC(Device):
    type_name = "mc146818rtc"
    type_parent = "isa-device"

    def __init__(self, base_year: int = 2000) -> None:
        super().__init__()
        self.irq = self.init_gpio_out(1)[0]
        self.cmos = bytearray(128)
        self.index = 0
        self.base_year = base_year
        self.io = MemoryRegion.io("rtc", 2, CallbackOps(self._read, self._write, AccessRules(valid_max=1, impl_max=1)),
                                  owner=self)
        self.cmos[REG_A] = 0x26  # 32.768 kHz divider, 1024 Hz rate
        self.cmos[REG_B] = B_24H
        self.cmos[REG_D] = 0x80  # battery good (valid RAM and time)

    def reset(self) -> None:
        # Only the interrupt enables and flags reset; the clock and NVRAM keep running.
        self.cmos[REG_B] &= ~0x70
        self.cmos[REG_C] = 0

    def set_cmos(self, reg: int, value: int) -> None:
        self.cmos[reg & 0x7F] = value & 0xFF

    def _to_mode(self, value: int) -> int:
        if self.cmos[REG_B] & B_BINARY:
            return value
        return ((value // 10) << 4) | (value % 10)

    def _time_reg(self, reg: int) -> int:
        t = time.gmtime()
        if reg == 0x00:
            return self._to_mode(t.tm_sec)
        if reg == 0x02:
            return self._to_mode(t.tm_min)
        if reg == 0x04:
            hour = t.tm_hour
            if self.cmos[REG_B] & B_24H:
                return self._to_mode(hour)
            pm = 0x80 if hour >= 12 else 0
            return self._to_mode(hour % 12 or 12) | pm
        if reg == 0x06:
            return self._to_mode((t.tm_wday + 1) % 7 + 1)  # 1 = Sunday
        if reg == 0x07:
            return self._to_mode(t.tm_mday)
        if reg == 0x08:
            return self._to_mode(t.tm_mon)
        if reg == 0x09:
            return self._to_mode(t.tm_year % 100)
        return self._to_mode(t.tm_year // 100)  # century

    def _read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF  # the index port is write-only
        reg = self.index
        if reg in (0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, REG_CENTURY):
            return self._time_reg(reg)
        value = self.cmos[reg]
        if reg == REG_C:
            self.cmos[REG_C] = 0  # reading C acknowledges the interrupt flags
            self.irq.lower()
        return value

    def _write(self, offset: int, value: int, size: int) -> None:
        if offset == 0:
            self.index = value & 0x7F  # bit 7 is the NMI mask
            return
        reg = self.index
        if reg in (REG_C, REG_D):
            return  # read-only
        if reg == REG_A:
            value = (value & 0x7F) | (self.cmos[REG_A] & 0x80)  # UIP is read-only
        self.cmos[reg] = value & 0xFF
