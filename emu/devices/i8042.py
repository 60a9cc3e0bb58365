"""The i8042 PS/2 controller (ports 0x60/0x64) with the PS/2 keyboard and mouse behind it, as
QEMU 7.2's ``i8042`` (hw/input/pckbd.c, ``extended-state`` on, no ``kbd-throttle``) and its
``ps2-kbd``/``ps2-mouse`` children (hw/input/ps2.c) behave towards a guest.

The controller: status, mode (command byte), output port, the pending-source bits, the output
buffer and its source, the controller's own reply byte, the commands (self tests, mode byte,
output buffer writes 0xd2/0xd3, output port, A20, pulses/reset, interface enable/disable) and
IRQ 1/12 raised while the output buffer holds keyboard/mouse data. Each PS/2 device has QEMU's
256-byte ring (at most 16 queued bytes, keyboard command replies ahead of scancodes), the
keyboard its commands (ECHO, GET ID, scancode set, LEDs, typematic, enable/reset), the mouse its
commands (scaling, resolution, sample rate with IMPS/2 and IMEX detection, stream/remote, wrap,
status request, poll, enable/disable, reset).

Not modelled: host input (no key or mouse events reach the devices, so the keyboard never sends
scancodes and ``need_high_bit``/``modifiers`` stay 0; a mouse POLL sends an all-zero packet) and
the A20 output line (the output port's A20 bit is kept and reported only).

Migration: three sections in QEMU's order: ``ps2kbd`` (v3), ``ps2mouse`` (v2), ``pckbd`` (v3, its
``kbd`` struct laid out in place with the ``pckbd_outport`` and ``pckbd/extended_state``
subsections), listed by ``vmstate_sections``/``load_vmstate_sections``.
"""
from __future__ import annotations

from collections.abc import Callable

from emu.devices.base import Device
from emu.memory import AccessRules, CallbackOps, MemoryRegion
from emu.migration.vmstate import Field, VMStateDescription

STAT_OBF, STAT_SELFTEST, STAT_CMD, STAT_UNLOCKED, STAT_MOUSE_OBF = 0x01, 0x04, 0x08, 0x10, 0x20
MODE_KBD_INT, MODE_MOUSE_INT, MODE_DISABLE_KBD, MODE_DISABLE_MOUSE, MODE_KCC = 0x01, 0x02, 0x10, 0x20, 0x40
OUT_RESET, OUT_A20, OUT_OBF, OUT_MOUSE_OBF, OUT_ONES = 0x01, 0x02, 0x10, 0x20, 0xCC
PENDING_KBD_COMPAT, PENDING_AUX_COMPAT, PENDING_CTRL_KBD, PENDING_CTRL_AUX = 0x01, 0x02, 0x04, 0x08
PENDING_KBD, PENDING_AUX = MODE_DISABLE_KBD, MODE_DISABLE_MOUSE
OBSRC_KBD, OBSRC_MOUSE, OBSRC_CTRL = 0x01, 0x02, 0x04

PS2_BUFFER_SIZE, PS2_QUEUE_SIZE, PS2_QUEUE_HEADROOM = 256, 16, 8
ACK, RESEND, POR, KBD_ID = 0xFA, 0xFE, 0xAA, 0xAB
MOUSE_STATUS_REMOTE, MOUSE_STATUS_ENABLED, MOUSE_STATUS_SCALE21 = 0x40, 0x20, 0x10
#: QEMU's translate_table entries for the scancode set numbers (what GET SCANCODE reports translated)
_TRANSLATED_SET = {1: 0x43, 2: 0x41, 3: 0x3F}

#: one migration section: (idstr, instance_id, description, field values)
VMStateSection = tuple[str, int, VMStateDescription, dict]


class PS2Device:
    """QEMU's ``PS2State``: the command byte awaiting a parameter and the byte ring; ``irq`` is
    the device's line to the controller."""

    def __init__(self, irq: Callable[[int], None]) -> None:
        self.irq = irq
        self.data = bytearray(PS2_BUFFER_SIZE)
        self.reset()

    def reset(self) -> None:
        self.write_cmd = -1
        self.reset_queue()
        self.irq(0)

    def reset_queue(self) -> None:
        self.rptr = self.wptr = self.count = 0
        self.cwptr = -1  # end of the command reply queue (ahead of the scancodes), -1 when none

    def queue(self, *values: int) -> None:
        """Appends bytes (all or none, within the 16-byte limit) and raises the IRQ."""
        if PS2_QUEUE_SIZE - self.count < len(values):
            return
        for b in values:
            self.data[self.wptr] = b & 0xFF
            self.wptr = (self.wptr + 1) % PS2_BUFFER_SIZE
            self.count += 1
        self.irq(1)

    def cqueue(self, *values: int) -> None:
        """Queues a command reply in front of any pending scancodes."""
        self.rptr = (self.rptr - len(values)) & (PS2_BUFFER_SIZE - 1)
        self.cwptr = self.rptr
        for b in values:
            self.data[self.cwptr] = b & 0xFF
            self.cwptr = (self.cwptr + 1) % PS2_BUFFER_SIZE
            self.count += 1
        self.irq(1)

    def cqueue_reset(self) -> None:
        """Drops unread command replies (a new command supersedes them)."""
        if self.cwptr == -1:
            return
        self.count -= (self.cwptr - self.rptr) & (PS2_BUFFER_SIZE - 1)
        self.rptr, self.cwptr = self.cwptr, -1

    def read_data(self) -> int:
        """The next byte; with an empty queue the last one again (QEMU: for EMM386)."""
        if self.count == 0:
            return self.data[(self.rptr - 1) % PS2_BUFFER_SIZE]
        value = self.data[self.rptr]
        self.rptr = (self.rptr + 1) % PS2_BUFFER_SIZE
        self.count -= 1
        if self.rptr == self.cwptr:
            self.cwptr = -1
        self.irq(0)
        if self.count:
            self.irq(1)
        return value

    # ---- migration: QEMU's "PS2 Common State" struct (v3) and its post_load normalisation
    def save_common(self) -> dict:
        return {"write_cmd": self.write_cmd, "queue.rptr": self.rptr, "queue.wptr": self.wptr,
                "queue.count": self.count, "queue.data": bytes(self.data)}

    def load_common(self, state: dict) -> None:
        self.write_cmd = int(state.get("write_cmd", self.write_cmd))
        self.rptr = int(state.get("queue.rptr", self.rptr))
        self.count = int(state.get("queue.count", self.count))
        self.data = bytearray(bytes(state.get("queue.data", self.data)).ljust(PS2_BUFFER_SIZE, b"\0"))
        cwptr = int(state.get("queue.cwptr", -1))  # the keyboard's subsection; absent: none
        ccount = 0
        if cwptr != -1:
            ccount = min((cwptr - self.rptr) & (PS2_BUFFER_SIZE - 1), PS2_QUEUE_HEADROOM)
        self.count = min(max(self.count, ccount), ccount + PS2_QUEUE_SIZE)
        self.rptr &= PS2_BUFFER_SIZE - 1
        self.wptr = (self.rptr + self.count) & (PS2_BUFFER_SIZE - 1)
        self.cwptr = (self.rptr + ccount) & (PS2_BUFFER_SIZE - 1) if ccount else -1


class PS2Keyboard(PS2Device):
    """QEMU's ``ps2-kbd``: an MF2 keyboard answering the host's commands."""

    def __init__(self, irq: Callable[[int], None]) -> None:
        self.ledstate = 0  # neither survives a device reset in QEMU
        self.need_high_bit = 0
        super().__init__(irq)

    def reset(self) -> None:
        super().reset()
        self.scan_enabled, self.translate, self.scancode_set = 1, 0, 2

    def _reset_keyboard(self) -> None:
        self.scan_enabled, self.scancode_set = 1, 2
        self.reset_queue()
        self.ledstate = 0

    def write(self, val: int) -> None:
        """A byte from the controller (port 0x60 without a pending controller command)."""
        self.cqueue_reset()
        cmd, self.write_cmd = self.write_cmd, -1
        if cmd == 0xF0:  # scancode set: 0 reads it, 1-3 select
            if val == 0:
                self.cqueue(ACK, _TRANSLATED_SET[self.scancode_set] if self.translate else self.scancode_set)
            elif 1 <= val <= 3:
                self.scancode_set = val
                self.cqueue(ACK)
            else:
                self.cqueue(RESEND)
        elif cmd == 0xED:
            self.ledstate = val
            self.cqueue(ACK)
        elif cmd in (0xF3, 0xFC):  # rate, make/break parameters: acknowledged
            self.cqueue(ACK)
        else:
            self._command(val)

    def _command(self, val: int) -> None:
        if val == 0xF2:  # GET ID: MF2, translated or not
            self.cqueue(ACK, KBD_ID, 0x41 if self.translate else 0x83)
        elif val == 0xEE:
            self.cqueue(0xEE)  # echo
        elif val in (0xF0, 0xED, 0xF3, 0xFC):  # commands with a parameter byte
            self.write_cmd = val
            self.cqueue(ACK)
        elif val in (0xF5, 0xF6):  # reset and disable / enable scanning
            self._reset_keyboard()
            self.scan_enabled = 1 if val == 0xF6 else 0
            self.cqueue(ACK)
        elif val == 0xFF:
            self._reset_keyboard()
            self.cqueue(ACK, POR)
        elif val == 0xF4:
            self.scan_enabled = 1
            self.cqueue(ACK)
        elif val in (0x00, 0xFA):
            self.cqueue(ACK)
        else:  # 0x05 and everything unknown
            self.cqueue(RESEND)


class PS2Mouse(PS2Device):
    """QEMU's ``ps2-mouse``: a PS/2 mouse (IMPS/2 and IMEX by the sample-rate knock)."""

    def reset(self) -> None:
        super().reset()
        self.mouse_status = self.mouse_resolution = self.mouse_sample_rate = 0
        self.mouse_wrap = self.mouse_type = self.mouse_detect_state = 0
        self.mouse_dx = self.mouse_dy = self.mouse_dz = self.mouse_dw = 0
        self.mouse_buttons = 0

    def write(self, val: int) -> None:
        """A byte for the mouse (controller command 0xd4)."""
        cmd, self.write_cmd = self.write_cmd, -1
        if cmd == 0xF3:
            self._set_sample_rate(val)
        elif cmd == 0xE8:
            self.mouse_resolution = val
            self.queue(ACK)
        elif self.mouse_wrap and val != 0xFF:  # wrap mode echoes all but reset / reset wrap
            if val == 0xEC:
                self.mouse_wrap = 0
                self.queue(ACK)
            else:
                self.queue(val)
        else:
            self._command(val)

    def _command(self, val: int) -> None:
        status_bits = {0xE6: (MOUSE_STATUS_SCALE21, 0), 0xE7: (MOUSE_STATUS_SCALE21, 1),
                       0xEA: (MOUSE_STATUS_REMOTE, 0), 0xF0: (MOUSE_STATUS_REMOTE, 1),
                       0xF4: (MOUSE_STATUS_ENABLED, 1), 0xF5: (MOUSE_STATUS_ENABLED, 0)}
        if val in status_bits:
            bit, on = status_bits[val]
            self.mouse_status = self.mouse_status | bit if on else self.mouse_status & ~bit
            self.queue(ACK)
        elif val == 0xEE:
            self.mouse_wrap = 1
            self.queue(ACK)
        elif val == 0xF2:
            self.queue(ACK, self.mouse_type)
        elif val in (0xE8, 0xF3):
            self.write_cmd = val
            self.queue(ACK)
        elif val == 0xE9:
            self.queue(ACK, self.mouse_status, self.mouse_resolution, self.mouse_sample_rate)
        elif val == 0xEB:
            self.queue(ACK)
            self._send_packet()
        elif val in (0xF6, 0xFF):  # set defaults / reset
            self.mouse_sample_rate, self.mouse_resolution, self.mouse_status = 100, 2, 0
            if val == 0xF6:
                self.queue(ACK)
            else:
                self.mouse_type = 0
                self.reset_queue()
                self.queue(ACK, 0xAA, self.mouse_type)

    def _set_sample_rate(self, val: int) -> None:
        self.mouse_sample_rate = val
        state = self.mouse_detect_state
        if state == 1:
            self.mouse_detect_state = {100: 2, 200: 3}.get(val, 0)
        elif state in (2, 3):
            if val == 80:
                self.mouse_type = 3 if state == 2 else 4  # IMPS/2, IMEX
            self.mouse_detect_state = 0
        elif val == 200:
            self.mouse_detect_state = 1
        self.queue(ACK)

    def _send_packet(self) -> None:
        """A POLL reply (QEMU's ``ps2_mouse_send_packet``). Without host input the deltas and
        buttons are only what a migration stream brought."""
        if PS2_QUEUE_SIZE - self.count < (4 if self.mouse_type else 3):
            return
        dx, dy = max(-127, min(127, self.mouse_dx)), max(-127, min(127, self.mouse_dy))
        packet = [0x08 | (dx < 0) << 4 | (dy < 0) << 5 | (self.mouse_buttons & 7), dx & 0xFF, dy & 0xFF]
        if self.mouse_type == 3:
            dz = max(-127, min(127, self.mouse_dz))
            packet.append(dz & 0xFF)
            self.mouse_dz -= dz
        elif self.mouse_type == 4:  # no horizontal wheel input, so always the vertical form
            dz = max(-7, min(7, self.mouse_dz))
            packet.append((dz & 0x0F) | ((self.mouse_buttons & 0x18) << 1))
            self.mouse_dz -= dz
        else:
            self.mouse_dz = 0
        self.mouse_dw = 0
        self.queue(*packet)
        self.mouse_dx -= dx
        self.mouse_dy -= dy


# ---- migration descriptions (QEMU 7.2 hw/input/ps2.c and pckbd.c)
_PS2_COMMON_FIELDS = [Field("write_cmd", "int32"), Field("queue.rptr", "int32"), Field("queue.wptr", "int32"),
                      Field("queue.count", "int32"), Field("queue.data", "buffer", PS2_BUFFER_SIZE)]

VMSTATE_PS2_KEYBOARD = VMStateDescription(
    name="ps2kbd", version_id=3, minimum_version_id=2,
    fields=[*_PS2_COMMON_FIELDS, Field("scan_enabled", "int32"), Field("translate", "int32"),
            Field("scancode_set", "int32", version_id=3)],
    subsections=[
        VMStateDescription("ps2kbd/ledstate", 3, 2, [Field("ledstate", "int32")],
                           needed=lambda s: bool(s.get("ledstate"))),
        VMStateDescription("ps2kbd/need_high_bit", 1, 1, [Field("need_high_bit", "bool")],
                           needed=lambda s: bool(s.get("need_high_bit"))),
        VMStateDescription("ps2kbd/command_reply_queue", 0, 0, [Field("queue.cwptr", "int32")],
                           needed=lambda s: s.get("queue.cwptr", -1) != -1),
    ],
)

_MOUSE_FIELDS = (("mouse_status", "uint8"), ("mouse_resolution", "uint8"), ("mouse_sample_rate", "uint8"),
                 ("mouse_wrap", "uint8"), ("mouse_type", "uint8"), ("mouse_detect_state", "uint8"),
                 ("mouse_dx", "int32"), ("mouse_dy", "int32"), ("mouse_dz", "int32"), ("mouse_buttons", "uint8"))

VMSTATE_PS2_MOUSE = VMStateDescription(
    name="ps2mouse", version_id=2, minimum_version_id=2,
    fields=[*_PS2_COMMON_FIELDS, *(Field(name, kind) for name, kind in _MOUSE_FIELDS)],
)


def _outport_default(status: int) -> int:
    """QEMU's ``kbd_outport_default``: the output port the ``pckbd_outport`` subsection may omit."""
    return (OUT_RESET | OUT_A20 | OUT_ONES | (OUT_OBF if status & STAT_OBF else 0)
            | (OUT_MOUSE_OBF if status & STAT_MOUSE_OBF else 0))


#: QEMU's ``vmstate_kbd_isa`` ("pckbd" v3) with its ``kbd`` struct (``vmstate_kbd``) laid out in place
VMSTATE_PCKBD = VMStateDescription(
    name="pckbd", version_id=3, minimum_version_id=3,
    fields=[Field("write_cmd", "uint8"), Field("status", "uint8"), Field("mode", "uint8"),
            Field("pending_tmp", "uint8")],
    subsections=[
        VMStateDescription("pckbd_outport", 1, 1, [Field("outport", "uint8")],
                           needed=lambda s: s.get("outport") != _outport_default(int(s.get("status", 0)))),
        VMStateDescription("pckbd/extended_state", 0, 0,
                           [Field("migration_flags", "uint32"), Field("obsrc", "uint32"), Field("obdata", "uint8"),
                            Field("cbdata", "uint8")],
                           needed=lambda s: True),
    ],
)


class I8042(Device):
    """The controller: ``data_io`` (port 0x60) and ``cmd_io`` (port 0x64), IRQ outputs
    ``irq_kbd`` (ISA 1) and ``irq_mouse`` (ISA 12); the board sets ``reset_request``."""

    type_name = "i8042"
    type_parent = "isa-device"

    def __init__(self) -> None:
        super().__init__()
        self.irq_kbd, self.irq_mouse = self.init_gpio_out(2)
        rules = AccessRules(valid_max=4, impl_max=1)  # QEMU: impl 1 byte, any size accepted
        self.data_io = MemoryRegion.io("i8042-data", 1, CallbackOps(self._read_data, self._write_data, rules),
                                       owner=self)
        self.cmd_io = MemoryRegion.io("i8042-cmd", 1, CallbackOps(self._read_status, self._write_cmd, rules),
                                      owner=self)
        self.reset_request = lambda: None  # wired by the board: the guest's CPU reset
        self.pending = self.status = self.mode = self.outport = 0
        self.kbd = PS2Keyboard(lambda level: self._set_pending(PENDING_KBD, level))
        self.mouse = PS2Mouse(lambda level: self._set_pending(PENDING_AUX, level))
        self.write_cmd = self.obsrc = self.obdata = self.cbdata = 0
        self.reset()

    def reset(self) -> None:
        self.kbd.reset()
        self.mouse.reset()
        self.mode = MODE_KBD_INT | MODE_MOUSE_INT
        self.status = STAT_CMD | STAT_UNLOCKED
        self.outport = OUT_RESET | OUT_A20 | OUT_ONES
        self.pending = 0
        self._deassert_irq()

    # ---- output buffer and IRQ lines (QEMU's kbd_update_irq family)
    def _update_irq_lines(self) -> None:
        kbd = mouse = 0
        if self.status & STAT_OBF:
            if self.status & STAT_MOUSE_OBF:
                mouse = 1 if self.mode & MODE_MOUSE_INT else 0
            else:
                kbd = 1 if self.mode & MODE_KBD_INT and not self.mode & MODE_DISABLE_KBD else 0
        self.irq_kbd.set(kbd)
        self.irq_mouse.set(mouse)

    def _deassert_irq(self) -> None:
        self.status &= ~(STAT_OBF | STAT_MOUSE_OBF)
        self.outport &= ~(OUT_OBF | OUT_MOUSE_OBF)
        self._update_irq_lines()

    def _pending(self) -> int:
        """Pending sources whose interface is enabled (a disabled interface holds its data back)."""
        return self.pending & (~self.mode | ~(PENDING_KBD | PENDING_AUX)) & 0xFF

    def _update_irq(self) -> None:
        """Loads the output buffer flags from the highest pending source: controller replies
        first, then the keyboard, then the mouse."""
        pending = self._pending()
        self.status &= ~(STAT_OBF | STAT_MOUSE_OBF)
        self.outport &= ~(OUT_OBF | OUT_MOUSE_OBF)
        if pending:
            if pending & PENDING_CTRL_KBD:
                self.obsrc, aux = OBSRC_CTRL, False
            elif pending & PENDING_CTRL_AUX:
                self.obsrc, aux = OBSRC_CTRL, True
            elif pending & PENDING_KBD:
                self.obsrc, aux = OBSRC_KBD, False
            else:
                self.obsrc, aux = OBSRC_MOUSE, True
            self.status |= STAT_OBF | (STAT_MOUSE_OBF if aux else 0)
            self.outport |= OUT_OBF | (OUT_MOUSE_OBF if aux else 0)
        self._update_irq_lines()

    def _safe_update_irq(self) -> None:
        if not self.status & STAT_OBF and self._pending():
            self._update_irq()

    def _set_pending(self, bit: int, level: int) -> None:
        self.pending = self.pending | bit if level else self.pending & ~bit
        self._safe_update_irq()

    def _queue(self, byte: int, aux: bool = False) -> None:
        """A controller reply (extended state: one byte, replacing any unread one)."""
        self.cbdata = byte & 0xFF
        self.pending = (self.pending & ~(PENDING_CTRL_KBD | PENDING_CTRL_AUX)) | (
            PENDING_CTRL_AUX if aux else PENDING_CTRL_KBD)
        self._safe_update_irq()

    # ---- ports
    def _read_status(self, offset: int, size: int) -> int:
        return self.status

    def _read_data(self, offset: int, size: int) -> int:
        if self.status & STAT_OBF:
            self._deassert_irq()
            if self.obsrc & OBSRC_KBD:
                self.obdata = self.kbd.read_data()
            elif self.obsrc & OBSRC_MOUSE:
                self.obdata = self.mouse.read_data()
            elif self.obsrc & OBSRC_CTRL:
                self.obdata = self.cbdata
                self.pending &= ~(PENDING_CTRL_KBD | PENDING_CTRL_AUX)
                if self._pending():
                    self._update_irq()
        return self.obdata

    def _write_cmd(self, offset: int, value: int, size: int) -> None:
        value &= 0xFF
        if value & 0xF0 == 0xF0:  # pulse output port bits 3-0: only bit 0 (reset) matters
            value = 0xFE if not value & 1 else 0xFF
        replies = {0x20: lambda: self.mode, 0xA9: lambda: 0x00, 0xAB: lambda: 0x00, 0xC0: lambda: 0x80,
                   0xD0: lambda: self.outport}
        if value in replies:
            self._queue(replies[value]())
        elif value in (0x60, 0xD1, 0xD2, 0xD3, 0xD4):
            self.write_cmd = value
        elif value in (0xA7, 0xAD):
            self.mode |= MODE_DISABLE_MOUSE if value == 0xA7 else MODE_DISABLE_KBD
        elif value in (0xA8, 0xAE):
            self.mode &= ~(MODE_DISABLE_MOUSE if value == 0xA8 else MODE_DISABLE_KBD)
            self._safe_update_irq()
        elif value == 0xAA:
            self.status |= STAT_SELFTEST
            self._queue(0x55)
        elif value == 0xDD:
            self.outport &= ~OUT_A20
        elif value == 0xDF:
            self.outport |= OUT_A20
        elif value == 0xFE:
            self.reset_request()

    def _write_data(self, offset: int, value: int, size: int) -> None:
        value &= 0xFF
        cmd, self.write_cmd = self.write_cmd, 0
        if cmd == 0:
            self.kbd.write(value)
            self.mode &= ~MODE_DISABLE_KBD  # sending to the keyboard re-enables its interface
            self._safe_update_irq()
        elif cmd == 0x60:
            self.mode = value
            self.kbd.translate = 1 if value & MODE_KCC else 0
            self._update_irq_lines()
            self._safe_update_irq()
        elif cmd in (0xD2, 0xD3):
            self._queue(value, aux=cmd == 0xD3)
        elif cmd == 0xD1:
            self.outport = value
            if not value & OUT_RESET:
                self.reset_request()
        elif cmd == 0xD4:
            self.mouse.write(value)
            self.mode &= ~MODE_DISABLE_MOUSE
            self._safe_update_irq()

    # ---- migration: "ps2kbd", "ps2mouse", then "pckbd", each instance 0
    def vmstate_sections(self, saving: bool = True) -> list[VMStateSection]:
        """The sections this device saves, in QEMU's order: ``(idstr, instance, vmsd, state)``;
        ``state`` is empty when ``saving`` is False (the board only wants the section list)."""
        return [("ps2kbd", 0, VMSTATE_PS2_KEYBOARD, self._save_kbd() if saving else {}),
                ("ps2mouse", 0, VMSTATE_PS2_MOUSE, self._save_mouse() if saving else {}),
                ("pckbd", 0, VMSTATE_PCKBD, self._save_controller() if saving else {})]

    def load_vmstate_sections(self, states: dict[tuple[str, int], dict]) -> None:
        """Takes over the loaded sections, keyed by ``(idstr, instance)``; a part whose section
        the stream did not carry keeps its state, as in QEMU."""
        if states.get(("ps2kbd", 0)):
            self._load_kbd(states[("ps2kbd", 0)])
        if states.get(("ps2mouse", 0)):
            self._load_mouse(states[("ps2mouse", 0)])
        if states.get(("pckbd", 0)):
            self._load_controller(states[("pckbd", 0)])
        self._update_irq_lines()

    def _save_kbd(self) -> dict:
        k = self.kbd
        return {**k.save_common(), "scan_enabled": k.scan_enabled, "translate": k.translate,
                "scancode_set": k.scancode_set, "ledstate": k.ledstate, "need_high_bit": k.need_high_bit,
                "queue.cwptr": k.cwptr}

    def _load_kbd(self, state: dict) -> None:
        k = self.kbd
        k.load_common(state)
        k.scan_enabled = int(state.get("scan_enabled", k.scan_enabled))
        k.translate = int(state.get("translate", k.translate))
        k.scancode_set = int(state.get("scancode_set", 2))  # a version 2 stream: set 2
        k.ledstate = int(state.get("ledstate", 0))  # absent subsections mean the defaults
        k.need_high_bit = int(state.get("need_high_bit", 0))

    def _save_mouse(self) -> dict:
        return {**self.mouse.save_common(), **{name: getattr(self.mouse, name) for name, _ in _MOUSE_FIELDS}}

    def _load_mouse(self, state: dict) -> None:
        self.mouse.load_common(state)
        for name, _ in _MOUSE_FIELDS:
            setattr(self.mouse, name, int(state.get(name, getattr(self.mouse, name))))

    def _save_controller(self) -> dict:
        return {"write_cmd": self.write_cmd, "status": self.status, "mode": self.mode, "pending_tmp": self.pending,
                "outport": self.outport, "migration_flags": 0, "obsrc": self.obsrc, "obdata": self.obdata,
                "cbdata": self.cbdata}

    def _load_controller(self, state: dict) -> None:
        """QEMU's pre_load/post_load: absent subsections mean the default output port and, for a
        stream without extended state, a source and pending bits rebuilt from the compat bits."""
        for name in ("write_cmd", "status", "mode"):
            setattr(self, name, int(state.get(name, getattr(self, name))))
        self.outport = int(state["outport"]) if "outport" in state else _outport_default(self.status)
        self.pending = int(state.get("pending_tmp", 0))
        if "obsrc" in state:
            self.obsrc, self.obdata, self.cbdata = int(state["obsrc"]), int(state["obdata"]), int(state["cbdata"])
        else:
            self.obsrc = (OBSRC_MOUSE if self.status & STAT_MOUSE_OBF else OBSRC_KBD) if self.status & STAT_OBF else 0
            self.pending |= (PENDING_KBD if self.pending & PENDING_KBD_COMPAT else 0) | (
                PENDING_AUX if self.pending & PENDING_AUX_COMPAT else 0)
        self.pending &= PENDING_CTRL_KBD | PENDING_CTRL_AUX | PENDING_KBD | PENDING_AUX
