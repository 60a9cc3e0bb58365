"""The 16550A UART as QEMU 7.2 models it (hw/char/serial.c, serial-isa.c): QOM type ``isa-serial``.

Owns the register file (RBR/THR, IER, IIR, FCR, LCR, MCR, LSR, MSR, SCR, divisor latch), the
16-byte receive and transmit FIFOs with their trigger levels, the interrupt priority logic and
IRQ output levels, loopback mode, the receive character-timeout timer, and the ``serial``
VMState section (version 3 with QEMU's subsections).

Timing as QEMU 7.2 has it: transmission is synchronous (a THR write goes straight through the
shift register to ``output``, so THRE/TEMT are set again before the write returns, exactly as
QEMU does with a backend that accepts the byte). Only the receive timeout (4 character times,
computed from LCR and the divisor in single precision like QEMU) runs on the virtual clock.
Not modelled: backends that refuse bytes (QEMU's ``tsr_retry`` watch path; ``output`` must accept
everything), modem-line polling of host tty backends (QEMU's ``poll_msl`` is -1 for every
backend we have, so MSR keeps DCD|DSR|CTS unless :meth:`Serial16550.set_modem_lines` is
called), break *output* (LCR bit 6 is stored only) and the ``wakeup`` property.
"""
from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable

from emu.clock import VirtualClock
from emu.devices.base import Device
from emu.memory import AccessRules, CallbackOps, MemoryRegion
from emu.migration.vmstate import Field, LoadContext, VMStateDescription, load_state, save_state

FIFO_LENGTH = 16
NS_PER_SEC = 1_000_000_000

LCR_DLAB = 0x80
IER_MSI, IER_RLSI, IER_THRI, IER_RDI = 0x08, 0x04, 0x02, 0x01
IIR_NO_INT, IIR_ID = 0x01, 0x06
IIR_MSI, IIR_THRI, IIR_RDI, IIR_RLSI, IIR_CTI = 0x00, 0x02, 0x04, 0x06, 0x0C
IIR_FE = 0xC0  # both "FIFOs enabled" bits
MCR_LOOP, MCR_OUT2, MCR_OUT1, MCR_RTS, MCR_DTR = 0x10, 0x08, 0x04, 0x02, 0x01
MSR_DCD, MSR_RI, MSR_DSR, MSR_CTS = 0x80, 0x40, 0x20, 0x10
MSR_TERI, MSR_ANY_DELTA = 0x04, 0x0F
LSR_TEMT, LSR_THRE, LSR_BI, LSR_OE, LSR_DR = 0x40, 0x20, 0x10, 0x02, 0x01
LSR_INT_ANY = 0x1E  # BI, FE, PE, OE
FCR_XFR, FCR_RFR, FCR_FE = 0x04, 0x02, 0x01
FCR_STICKY = 0xC9  # trigger level, DMA mode and enable are kept; the reset bits self-clear
TRIGGER_LEVELS = {0x00: 1, 0x40: 4, 0x80: 8, 0xC0: 14}
RESET_CHAR_TIME = (NS_PER_SEC // 9600) * 10  # serial_reset's integer formula, until LCR/DLL/DLM change


def _f32(x: float) -> float:
    """Rounds to IEEE single precision (QEMU computes the character time with C ``float``)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


class Fifo8:
    """QEMU's ``Fifo8`` ring (data, head, num): the layout the migration stream carries."""

    def __init__(self, capacity: int) -> None:
        self.data = bytearray(capacity)
        self.head = 0
        self.num = 0

    def reset(self) -> None:
        self.head = self.num = 0

    def is_full(self) -> bool:
        return self.num == len(self.data)

    def push(self, byte: int) -> None:
        self.data[(self.head + self.num) % len(self.data)] = byte & 0xFF
        self.num += 1

    def pop(self) -> int:
        byte = self.data[self.head]
        self.head = (self.head + 1) % len(self.data)
        self.num -= 1
        return byte


class Serial16550(Device):
    """One 16550A. ``output`` receives each transmitted byte (outside loopback); ``clock`` is the
    machine's virtual clock (without it the receive timeout never fires); ``instance_id`` the
    VMState instance (0 for the first UART created). ``io`` is the 8-port region, ``irq`` the
    interrupt output; :meth:`receive` takes bytes from the chardev."""

    type_name = "isa-serial"
    type_parent = "isa-device"

    def __init__(self, output: Callable[[bytes], None] | None = None, clock: VirtualClock | None = None,
                 baudbase: int = 115200, instance_id: int = 0) -> None:
        super().__init__()
        self.output = output
        self.instance_id = instance_id  # QEMU numbers the "serial" sections in creation order
        self.clock = clock if clock is not None else VirtualClock(manual=True)
        self.baudbase = baudbase
        self.irq = self.init_gpio_out(1)[0]
        # QEMU: impl 1 byte, valid any size and unaligned (a word access is two byte accesses)
        rules = AccessRules(valid_max=4, valid_unaligned=True, impl_max=1)
        self.io = MemoryRegion.io("serial", 8, CallbackOps(self._read, self._write, rules), owner=self)
        self.recv_fifo, self.xmit_fifo = Fifo8(FIFO_LENGTH), Fifo8(FIFO_LENGTH)
        self.fifo_timeout_timer = self.clock.new_timer(self._fifo_timeout)
        self.backlog: deque[int] = deque()  # chardev bytes the UART cannot take yet
        # QEMU's reset leaves FCR (and its trigger level), THR and TSR alone: only power-on clears them.
        self.fcr = self.thr = self.tsr = self.recv_fifo_itl = 0
        self.reset()

    # ---------------------------------------------------------------- reset and parameters
    def reset(self) -> None:
        self.divider = 0x0C  # 9600 baud, 8N1
        self.rbr = self.ier = self.lcr = self.scr = 0
        self.iir = IIR_NO_INT
        self.lsr = LSR_TEMT | LSR_THRE
        self.msr = MSR_DCD | MSR_DSR | MSR_CTS
        self.mcr = MCR_OUT2
        self.thr_ipending = self.timeout_ipending = 0
        self.char_transmit_time = RESET_CHAR_TIME
        self.fifo_timeout_timer.cancel()
        self.recv_fifo.reset()
        self.xmit_fifo.reset()
        self.irq.lower()

    def _update_parameters(self) -> None:
        """The character time (start + data + parity + stop bits at the divisor's speed)."""
        frame = 1 + (self.lcr & 0x03) + 5 + (2 if self.lcr & 0x04 else 1) + (1 if self.lcr & 0x08 else 0)
        speed = 3500.0 if self.divider == 0 else _f32(_f32(self.baudbase) / self.divider)
        self.char_transmit_time = int(_f32(_f32(NS_PER_SEC / speed) * frame))

    def _arm_timeout(self) -> None:
        self.fifo_timeout_timer.mod(self.clock.now() + self.char_transmit_time * 4)

    # ---------------------------------------------------------------- interrupts
    def _pending_iir(self) -> int:
        """The highest-priority pending source: line status, timeout, data, THRE, modem status."""
        if self.ier & IER_RLSI and self.lsr & LSR_INT_ANY:
            return IIR_RLSI
        if self.ier & IER_RDI and self.timeout_ipending:
            return IIR_CTI  # masked by RDI, as on real 16550As
        if self.ier & IER_RDI and self.lsr & LSR_DR and (
                not self.fcr & FCR_FE or self.recv_fifo.num >= self.recv_fifo_itl):
            return IIR_RDI
        if self.ier & IER_THRI and self.thr_ipending:
            return IIR_THRI
        if self.ier & IER_MSI and self.msr & MSR_ANY_DELTA:
            return IIR_MSI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        pending = self._pending_iir()
        self.iir = pending | (self.iir & 0xF0)
        self.irq.set(0 if pending == IIR_NO_INT else 1)

    # ---------------------------------------------------------------- transmit and receive
    def _xmit(self, load: bool = True) -> None:
        """Moves everything waiting through the shift register (synchronously, as QEMU does).
        ``load=False`` first sends the byte already in TSR (a transfer migrated mid-retry)."""
        while True:
            if load:
                self._load_tsr()
            load = True
            if self.mcr & MCR_LOOP:
                self._receive1(bytes([self.tsr]))
            elif self.output is not None:
                self.output(bytes([self.tsr]))
            if self.lsr & LSR_THRE:
                break
        self.lsr |= LSR_TEMT

    def _load_tsr(self) -> None:
        if self.fcr & FCR_FE:
            self.tsr = self.xmit_fifo.pop()
            if not self.xmit_fifo.num:
                self.lsr |= LSR_THRE
        else:
            self.tsr = self.thr
            self.lsr |= LSR_THRE
        if self.lsr & LSR_THRE and not self.thr_ipending:
            self.thr_ipending = 1
            self._update_irq()

    def _recv_fifo_put(self, byte: int) -> None:
        if self.recv_fifo.is_full():
            self.lsr |= LSR_OE  # an overrun keeps the FIFO's contents
        else:
            self.recv_fifo.push(byte)

    def _receive1(self, data: bytes) -> None:
        if self.fcr & FCR_FE:
            for byte in data:
                self._recv_fifo_put(byte)
            self.lsr |= LSR_DR
            self._arm_timeout()
        else:
            if self.lsr & LSR_DR:
                self.lsr |= LSR_OE
            self.rbr = data[0]
            self.lsr |= LSR_DR
        self._update_irq()

    def can_receive(self) -> int:
        """How many bytes the UART takes now (QEMU's ``serial_can_receive``: up to the trigger
        level while below it, then one at a time; one in non-FIFO mode when RBR is empty)."""
        if self.fcr & FCR_FE:
            num = self.recv_fifo.num
            if num >= FIFO_LENGTH:
                return 0
            return self.recv_fifo_itl - num if num <= self.recv_fifo_itl else 1
        return 0 if self.lsr & LSR_DR else 1

    def receive(self, data: bytes) -> None:
        """Bytes from the chardev. What the UART cannot take yet waits here and is delivered
        as the guest reads RBR (the chardev's flow control in QEMU), never dropped."""
        self.backlog.extend(data)
        self._accept_input()

    def _accept_input(self) -> None:
        while self.backlog:
            n = min(self.can_receive(), len(self.backlog))
            if n <= 0:
                return
            self._receive1(bytes(self.backlog.popleft() for _ in range(n)))

    def receive_break(self) -> None:
        """A break condition from the backend: a NUL byte with BI and DR."""
        self.rbr = 0
        self._recv_fifo_put(0)  # QEMU queues it even with the FIFO off
        self.lsr |= LSR_BI | LSR_DR
        self._update_irq()

    def set_modem_lines(self, cts: bool, dsr: bool, dcd: bool, ri: bool) -> None:
        """New modem input levels from a backend that has them (QEMU's ``serial_update_msl``):
        sets the delta bits (TERI only on a falling RI) and re-evaluates the interrupt."""
        old = self.msr
        new = (old & 0x0F) | (MSR_CTS if cts else 0) | (MSR_DSR if dsr else 0) | (MSR_DCD if dcd else 0) \
            | (MSR_RI if ri else 0)
        if new != old:
            new |= (new >> 4) ^ (old >> 4)
            if new & MSR_TERI and not old & MSR_RI:
                new &= ~MSR_TERI
            self.msr = new
            self._update_irq()

    def _fifo_timeout(self) -> None:
        if self.recv_fifo.num:
            self.timeout_ipending = 1
            self._update_irq()

    # ---------------------------------------------------------------- register access
    def _write(self, offset: int, value: int, size: int) -> None:
        value &= 0xFF
        if offset in (0, 1) and self.lcr & LCR_DLAB:
            shift = 8 * offset
            self.divider = (self.divider & ~(0xFF << shift)) | (value << shift)
            self._update_parameters()
        elif offset == 0:
            self._write_thr(value)
        elif offset == 1:
            self._write_ier(value)
        elif offset == 2:
            self._write_fcr(value)
        elif offset == 3:
            self.lcr = value
            self._update_parameters()
        elif offset == 4:
            self.mcr = value & 0x1F
        elif offset == 7:
            self.scr = value
        # LSR and MSR are read-only

    def _write_thr(self, value: int) -> None:
        self.thr = value
        if self.fcr & FCR_FE:
            if self.xmit_fifo.is_full():
                self.xmit_fifo.pop()  # a transmit overrun overwrites the oldest byte
            self.xmit_fifo.push(value)
        self.thr_ipending = 0
        self.lsr &= ~(LSR_THRE | LSR_TEMT)
        self._update_irq()
        self._xmit()

    def _write_ier(self, value: int) -> None:
        changed = (self.ier ^ value) & 0x0F
        self.ier = value & 0x0F
        # Enabling THRI while THR is empty raises the interrupt again (Windows relies on it).
        if changed & IER_THRI:
            self.thr_ipending = 1 if self.ier & IER_THRI and self.lsr & LSR_THRE else 0
        if changed:
            self._update_irq()

    def _write_fcr(self, value: int) -> None:
        if (value ^ self.fcr) & FCR_FE:
            value |= FCR_XFR | FCR_RFR  # switching the FIFOs on or off flushes them
        if value & FCR_RFR:
            self.lsr &= ~(LSR_DR | LSR_BI)
            self.fifo_timeout_timer.cancel()
            self.timeout_ipending = 0
            self.recv_fifo.reset()
        if value & FCR_XFR:
            self.lsr |= LSR_THRE
            self.thr_ipending = 1
            self.xmit_fifo.reset()
        self._set_fcr(value & FCR_STICKY)
        self._update_irq()

    def _set_fcr(self, value: int) -> None:
        self.fcr = value
        if value & FCR_FE:
            self.iir |= IIR_FE
            self.recv_fifo_itl = TRIGGER_LEVELS[value & 0xC0]
        else:
            self.iir &= ~IIR_FE

    def _read(self, offset: int, size: int) -> int:
        if offset in (0, 1) and self.lcr & LCR_DLAB:
            return (self.divider >> (8 * offset)) & 0xFF
        if offset == 0:
            return self._read_rbr()
        if offset == 1:
            return self.ier
        if offset == 2:
            ret = self.iir
            if ret & IIR_ID == IIR_THRI:
                self.thr_ipending = 0  # reading IIR acknowledges THRE
                self._update_irq()
            return ret
        if offset == 3:
            return self.lcr
        if offset == 4:
            return self.mcr
        if offset == 5:
            ret = self.lsr
            if self.lsr & (LSR_BI | LSR_OE):
                self.lsr &= ~(LSR_BI | LSR_OE)
                self._update_irq()
            return ret
        if offset == 6:
            return self._read_msr()
        return self.scr

    def _read_rbr(self) -> int:
        if self.fcr & FCR_FE:
            ret = self.recv_fifo.pop() if self.recv_fifo.num else 0
            if self.recv_fifo.num == 0:
                self.lsr &= ~(LSR_DR | LSR_BI)
            else:
                self._arm_timeout()
            self.timeout_ipending = 0
        else:
            ret = self.rbr
            self.lsr &= ~(LSR_DR | LSR_BI)
        self._update_irq()
        if not self.mcr & MCR_LOOP:
            self._accept_input()  # loopback takes nothing from the chardev
        return ret

    def _read_msr(self) -> int:
        if self.mcr & MCR_LOOP:
            # the modem outputs drive the inputs: OUT2->DCD, OUT1->RI, RTS->CTS, DTR->DSR
            return ((self.mcr & 0x0C) << 4) | ((self.mcr & MCR_RTS) << 3) | ((self.mcr & MCR_DTR) << 5)
        ret = self.msr
        if self.msr & MSR_ANY_DELTA:
            self.msr &= 0xF0
            self._update_irq()
        return ret

    # ---------------------------------------------------------------- migration
    def vmstate_id(self) -> tuple[str, int]:
        return "serial", self.instance_id

    def save_vmstate(self) -> dict:
        timer = self.fifo_timeout_timer
        return {
            "divider": self.divider, "rbr": self.rbr, "ier": self.ier, "iir": self.iir, "lcr": self.lcr,
            "mcr": self.mcr, "lsr": self.lsr, "msr": self.msr, "scr": self.scr, "fcr_vmstate": self.fcr,
            "thr_ipending": self.thr_ipending, "tsr_retry": 0, "thr": self.thr, "tsr": self.tsr,
            **_fifo_fields("recv_fifo", self.recv_fifo), **_fifo_fields("xmit_fifo", self.xmit_fifo),
            "fifo_timeout_timer": timer.expire if timer.pending else -1,
            "timeout_ipending": self.timeout_ipending, "poll_msl": -1, "modem_status_poll": -1,
        }

    def load_vmstate(self, state: dict) -> None:
        for name in ("divider", "rbr", "ier", "iir", "lcr", "mcr", "lsr", "msr", "scr", "thr", "tsr",
                     "timeout_ipending"):
            setattr(self, name, int(state.get(name, 0)))
        self.thr_ipending = int(state["thr_ipending"])
        for name, fifo in (("recv_fifo", self.recv_fifo), ("xmit_fifo", self.xmit_fifo)):
            fifo.data[:] = bytes(state.get(f"{name}.data", bytes(FIFO_LENGTH)))[:FIFO_LENGTH].ljust(FIFO_LENGTH, b"\0")
            fifo.head = int(state.get(f"{name}.head", 0)) % FIFO_LENGTH
            fifo.num = min(int(state.get(f"{name}.num", 0)), FIFO_LENGTH)
        expire = int(state.get("fifo_timeout_timer", -1))
        if expire == -1:
            self.fifo_timeout_timer.cancel()
        else:
            self.fifo_timeout_timer.mod(expire)
        self._set_fcr(int(state.get("fcr_vmstate", 0)))
        self._update_parameters()
        self.irq.set(0 if self.iir & 0x0F == IIR_NO_INT else 1)
        if int(state.get("tsr_retry", 0)) > 0:
            self._xmit(load=False)  # the source's backend was busy: send what TSR holds now


def _fifo_fields(name: str, fifo: Fifo8) -> dict:
    return {f"{name}.data": bytes(fifo.data), f"{name}.head": fifo.head, f"{name}.num": fifo.num}


# ---------------------------------------------------------------- QEMU's "serial" section (v3)

def _serial_pre_load(state: dict, ctx: LoadContext) -> int:
    state["thr_ipending"] = -1
    state["poll_msl"] = -1
    state["tsr_retry"] = 0
    for key in [k for k in state if k.startswith(("recv_fifo.", "xmit_fifo.")) or k == "fifo_timeout_timer"]:
        del state[key]  # subsections absent from the stream mean empty FIFOs and no timer
    state["timeout_ipending"] = 0
    return 0


def _serial_post_load(state: dict, version_id: int, ctx: LoadContext) -> int:
    if version_id < 3:
        state["fcr_vmstate"] = 0
    if state["thr_ipending"] == -1:
        state["thr_ipending"] = int(state.get("iir", 0) & IIR_ID == IIR_THRI)
    retry = int(state.get("tsr_retry", 0))
    if retry > 0:
        if state.get("lsr", 0) & LSR_TEMT:
            ctx.error(f"inconsistent state in serial device (tsr empty, tsr_retry={retry}")
            return -1
    elif not state.get("lsr", 0) & LSR_TEMT:
        ctx.error("inconsistent state in serial device (tsr not empty, tsr_retry=0")
        return -1
    return 0


def _thr_ipending_needed(s: dict) -> bool:
    if not s.get("ier", 0) & IER_THRI:
        return False  # THRE is sampled again when the interrupt is enabled
    return int(s.get("thr_ipending", 0)) != int(s.get("iir", 0) & IIR_ID == IIR_THRI)


def _fifo8_fields(name: str) -> list[Field]:
    return [Field(f"{name}.data", "buffer", FIFO_LENGTH, version_id=1), Field(f"{name}.head", "uint32"),
            Field(f"{name}.num", "uint32")]


def _sub(name: str, fields: list[Field], needed: Callable[[dict], bool]) -> VMStateDescription:
    return VMStateDescription(f"serial/{name}", 1, 1, fields, needed=needed)


#: QEMU's ``vmstate_serial`` (the SerialState inside isa-serial).
VMSTATE_SERIAL_STATE = VMStateDescription(
    name="serial", version_id=3, minimum_version_id=2,
    fields=[Field("divider", "uint16", version_id=2)]
    + [Field(n, "uint8") for n in ("rbr", "ier", "iir", "lcr", "mcr", "lsr", "msr", "scr")]
    + [Field("fcr_vmstate", "uint8", version_id=3)],
    subsections=[
        _sub("thr_ipending", [Field("thr_ipending", "int32")], _thr_ipending_needed),
        _sub("tsr", [Field("tsr_retry", "uint32"), Field("thr", "uint8"), Field("tsr", "uint8")],
             lambda s: int(s.get("tsr_retry", 0)) != 0),
        _sub("recv_fifo", _fifo8_fields("recv_fifo"), lambda s: int(s.get("recv_fifo.num", 0)) != 0),
        _sub("xmit_fifo", _fifo8_fields("xmit_fifo"), lambda s: int(s.get("xmit_fifo.num", 0)) != 0),
        _sub("fifo_timeout_timer", [Field("fifo_timeout_timer", "int64")],
             lambda s: int(s.get("fifo_timeout_timer", -1)) != -1),
        _sub("timeout_ipending", [Field("timeout_ipending", "int32")],
             lambda s: int(s.get("timeout_ipending", 0)) != 0),
        _sub("poll", [Field("poll_msl", "int32"), Field("modem_status_poll", "int64")],
             lambda s: int(s.get("poll_msl", -1)) >= 0),
    ],
    pre_load=_serial_pre_load,
    post_load=_serial_post_load,
)


def _put_serial_state(state: dict) -> bytes:
    return save_state(VMSTATE_SERIAL_STATE, state)


def _get_serial_state(f: object, state: dict, ctx: LoadContext) -> int:
    # VMSTATE_STRUCT loads the inner state at the inner vmsd's own version, whatever the section's.
    return load_state(f, VMSTATE_SERIAL_STATE, state, VMSTATE_SERIAL_STATE.version_id, ctx)


#: QEMU's ``vmstate_isa_serial``: section "serial" v3 (minimum 2), one struct field ``state``.
#: The stream bytes are QEMU's; the vmdesc entry of ``state`` lacks QEMU's nested "struct" object.
VMSTATE_ISA_SERIAL = VMStateDescription(
    name="serial", version_id=3, minimum_version_id=2,
    fields=[Field("state", "struct", get=_get_serial_state, put=_put_serial_state, vmdesc_type="struct")],
)

Serial16550.vmsd = VMSTATE_ISA_SERIAL
