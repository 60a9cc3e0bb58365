"""The i8042 PS/2 controller (ports 0x60/0x64) with a minimal keyboard behind it.

Enough for firmware-style probing and QEMU's qtest uses: controller commands (self test, mode
byte, output-buffer writes 0xd2/0xd3, output port), keyboard commands acknowledged with 0xfa,
and IRQ 1/12 raised while the output buffer holds keyboard/mouse data.
"""
from __future__ import annotations

from collections import deque

from emu.devices.base import Device
from emu.memory import AccessRules, CallbackOps, MemoryRegion

STAT_OBF, STAT_SELFTEST, STAT_CMD, STAT_UNLOCKED, STAT_MOUSE_OBF = 0x01, 0x04, 0x08, 0x10, 0x20
MODE_KBD_INT, MODE_MOUSE_INT = 0x01, 0x02


class I8042(Device):
    type_name = "i8042"
    type_parent = "isa-device"

    def __init__(self) -> None:
        super().__init__()
        self.irq_kbd, self.irq_mouse = self.init_gpio_out(2)
        rules = AccessRules(valid_max=4, impl_max=1)  # QEMU: impl 1 byte, any size accepted
        self.data_io = MemoryRegion.io("i8042-data", 1, CallbackOps(self._read_data, self._write_data, rules), owner=self)
        self.cmd_io = MemoryRegion.io("i8042-cmd", 1, CallbackOps(self._read_status, self._write_cmd, rules), owner=self)
        self.reset_request = lambda: None  # wired by the board: command 0xfe pulses the reset line
        self.reset()

    def reset(self) -> None:
        self.status = STAT_CMD | STAT_UNLOCKED
        self.mode = MODE_KBD_INT | MODE_MOUSE_INT
        self.pending_cmd = 0
        self.outport = 0x03  # A20 enabled, not in reset
        self.queue: deque[tuple[int, bool]] = deque()  # (byte, from the mouse)
        self.data = 0
        self._update()

    def _push(self, byte: int, aux: bool = False) -> None:
        self.queue.append((byte & 0xFF, aux))
        self._update()

    def _update(self) -> None:
        kbd = mouse = 0
        if not self.status & STAT_OBF and self.queue:
            self.data, aux = self.queue.popleft()
            self.status |= STAT_OBF | (STAT_MOUSE_OBF if aux else 0)
            if not aux:
                self.status &= ~STAT_MOUSE_OBF
        if self.status & STAT_OBF:
            if self.status & STAT_MOUSE_OBF:
                mouse = 1 if self.mode & MODE_MOUSE_INT else 0
            else:
                kbd = 1 if self.mode & MODE_KBD_INT else 0
        self.irq_kbd.set(kbd)
        self.irq_mouse.set(mouse)

    def _read_status(self, offset: int, size: int) -> int:
        return self.status

    def _read_data(self, offset: int, size: int) -> int:
        value = self.data
        self.status &= ~(STAT_OBF | STAT_MOUSE_OBF)
        self._update()
        return value

    def _write_cmd(self, offset: int, value: int, size: int) -> None:
        if value == 0x20:
            self._push(self.mode)
        elif value in (0x60, 0xD1, 0xD2, 0xD3, 0xD4):
            self.pending_cmd = value
        elif value == 0xAA:
            self.status |= STAT_SELFTEST
            self._push(0x55)
        elif value in (0xA9, 0xAB):
            self._push(0x00)
        elif value == 0xAD:
            self.mode |= 0x10
        elif value == 0xAE:
            self.mode &= ~0x10
        elif value == 0xA7:
            self.mode |= 0x20
        elif value == 0xA8:
            self.mode &= ~0x20
        elif value == 0xD0:
            self._push(self.outport)
        elif value == 0xFE or (value & 0xF0 == 0xF0 and not value & 0x01):
            self.reset_request()

    def _write_data(self, offset: int, value: int, size: int) -> None:
        cmd, self.pending_cmd = self.pending_cmd, 0
        if cmd == 0x60:
            self.mode = value
            self._update()
        elif cmd == 0xD1:
            self.outport = value
            if not value & 0x01:
                self.reset_request()
        elif cmd == 0xD2:
            self._push(value)
        elif cmd == 0xD3:
            self._push(value, aux=True)
        elif cmd == 0xD4:
            self._push(0xFA, aux=True)  # mouse commands: acknowledged
        else:
            self._keyboard_command(value)

    def _keyboard_command(self, value: int) -> None:
        if value == 0xEE:
            self._push(0xEE)  # echo
        elif value == 0xF2:
            for b in (0xFA, 0xAB, 0x83):  # identify: MF2 keyboard
                self._push(b)
        elif value == 0xFF:
            self._push(0xFA)
            self._push(0xAA)  # reset: ack, then self-test passed
        else:
            self._push(0xFA)
