"""The 8254 programmable interval timer (ports 0x40-0x43), counting as QEMU 7.2's ``isa-pit`` does.

Owns the three channels clocked at 1.193182 MHz from the virtual clock, with QEMU's ``muldiv64``
integer arithmetic so that counts, output levels and IRQ 0 transition times match QEMU exactly for a
given clock value (including its rounding artefacts). The six modes (and QEMU's handling of the
undefined modes 6 and 7), the LSB/MSB/word access modes, the counter latch, the status latch and the
read-back command, and the gate inputs (channel 2's gate comes from port 0x61, see ``pcspk``).

Like QEMU, the BCD bit is stored and reported in the status byte but the counter always counts in
binary, a gate at 0 does not stop counting (only rising edges restart modes 1, 2, 3 and 5), and a
mode change does not re-arm the IRQ timer. Channel 0's output drives GPIO out 0 from a virtual-clock
timer; GPIO in 0 is QEMU's ``pit_irq_control`` line, through which the HPET switches IRQ 0 off while
it is in legacy replacement mode.
"""
from __future__ import annotations

from emu.clock import VirtualClock
from emu.devices.base import Device
from emu.memory import AccessRules, CallbackOps, MemoryRegion
from emu.migration.vmstate import Field, VMStateDescription
from emu.qom import register_type

PIT_FREQ = 1193182
NANOSECONDS_PER_SECOND = 1_000_000_000
RW_STATE_LSB, RW_STATE_MSB, RW_STATE_WORD0, RW_STATE_WORD1 = 1, 2, 3, 4
_U64 = (1 << 64) - 1

# Per-channel fields of QEMU's "pit channel" vmsd (version 2), in order.
_CHANNEL_FIELDS = (
    ("count", "int32"), ("latched_count", "uint16"), ("count_latched", "uint8"), ("status_latched", "uint8"),
    ("status", "uint8"), ("read_state", "uint8"), ("write_state", "uint8"), ("write_latch", "uint8"),
    ("rw_mode", "uint8"), ("mode", "uint8"), ("bcd", "uint8"), ("gate", "uint8"),
    ("count_load_time", "int64"), ("next_transition_time", "int64"),
)

register_type("pit-common", "isa-device", abstract=True)


def muldiv64(a: int, b: int, c: int) -> int:
    """QEMU's ``muldiv64``: ``a * b / c`` with a 128-bit intermediate, ``a`` taken as uint64."""
    return ((a & _U64) * b // c) & _U64


def _s64(value: int) -> int:
    value &= _U64
    return value - (1 << 64) if value >> 63 else value


class PITChannel:
    """One counter's state (QEMU's ``PITChannelState``)."""

    def __init__(self) -> None:
        self.count = 0  # the initial count; 0x10000 stands for a written 0
        self.latched_count = 0
        self.count_latched = 0  # 0, or the RW state the latched count is read out in
        self.status_latched = 0
        self.status = 0
        self.read_state = 0
        self.write_state = 0
        self.write_latch = 0
        self.rw_mode = 0
        self.mode = 0
        self.bcd = 0
        self.gate = 0
        self.count_load_time = 0
        self.next_transition_time = 0
        self.irq_disabled = 0

    def _ticks(self, now: int) -> int:
        """PIT clock ticks since the count was loaded (or the gate restarted it)."""
        return muldiv64(now - self.count_load_time, PIT_FREQ, NANOSECONDS_PER_SECOND)

    def _period(self) -> int:
        # A count of 0 never comes from the guest (it loads as 0x10000); only a hand-made migration
        # stream could bring one, which QEMU would divide by. Count it as the full period instead.
        return self.count or 0x10000

    def out(self, now: int) -> int:
        """The OUT pin level at virtual time ``now`` (QEMU's ``pit_get_out``)."""
        d, count = self._ticks(now), self._period()
        if self.mode == 1:
            return int(d < count)
        if self.mode == 2:
            return int(d % count == 0 and d != 0)
        if self.mode == 3:
            return int(d % count < ((count + 1) >> 1))
        if self.mode in (4, 5):
            return int(d == count)
        return int(d >= count)  # mode 0, and QEMU's default for 6 and 7

    def next_transition(self, now: int) -> int:
        """Virtual time of OUT's next change after ``now``, or -1 (``pit_get_next_transition_time``)."""
        d, count = self._ticks(now), self._period()
        if self.mode == 2:
            base = d - d % count
            nxt = base + count if (d - base == 0 and d != 0) else base + count + 1
        elif self.mode == 3:
            base = d - d % count
            half = (count + 1) >> 1
            nxt = base + half if d - base < half else base + count
        elif self.mode in (4, 5):
            if d < count:
                nxt = count
            elif d == count:
                nxt = count + 1
            else:
                return -1
        elif d < count:  # modes 0 and 1 (and 6, 7)
            nxt = count
        else:
            return -1
        when = (self.count_load_time + muldiv64(nxt, NANOSECONDS_PER_SECOND, PIT_FREQ)) & _U64
        if when <= now & _U64:
            when = (now + 1) & _U64  # rounding put the edge in the past: QEMU fires a ns later
        return _s64(when)

    def current_count(self, now: int) -> int:
        """The counting element as the guest reads it (``pit_get_count``)."""
        d, count = self._ticks(now), self._period()
        if self.mode in (0, 1, 4, 5):
            return (count - d) & 0xFFFF
        if self.mode == 3:
            return count - (2 * d) % count  # QEMU's approximation, also for odd counts
        return count - d % count


class PIT(Device):
    """The ``isa-pit`` device: I/O region ``io`` (4 bytes, at ``iobase``), ``irq`` (channel 0's OUT,
    GPIO out 0) and the IRQ enable input (GPIO in 0, driven by the HPET's legacy mode)."""

    type_name = "isa-pit"
    type_parent = "pit-common"

    def __init__(self, clock: VirtualClock, iobase: int = 0x40) -> None:
        super().__init__()
        self.clock = clock
        self.channels = [PITChannel() for _ in range(3)]
        self.irq = self.init_gpio_out(1)[0]
        self.init_gpio_in(self._irq_control, 1)
        self.add_property("iobase", "uint32", iobase, "uint32", static=True)
        # Byte-wide registers; a wider access is split into consecutive ports, as in QEMU.
        self.io = MemoryRegion.io("pit", 4, CallbackOps(self._read, self._write, AccessRules(impl_max=1)),
                                  owner=self)
        self._timer = clock.new_timer(self._on_timer)
        self.reset()

    # ---- board-facing API
    def reset(self) -> None:
        now = self.clock.now()
        for i, ch in enumerate(self.channels):
            ch.mode = 3
            ch.gate = int(i != 2)
            ch.count_load_time = now
            ch.count = 0x10000
        ch0 = self.channels[0]
        if not ch0.irq_disabled:
            ch0.next_transition_time = ch0.next_transition(now)
            self._timer.mod(ch0.next_transition_time)

    def set_gate(self, channel: int, level: int) -> None:
        """A channel's GATE input (``pit_set_gate``); ``level`` is 0 or 1."""
        ch = self.channels[channel]
        # A rising edge restarts counting in modes 1, 2, 3 and 5; modes 0 and 4 ignore the gate.
        if ch.mode in (1, 2, 3, 5) and ch.gate < level:
            ch.count_load_time = self.clock.now()
            self._irq_timer_update(channel, ch.count_load_time)
        ch.gate = level

    def channel_info(self, channel: int) -> tuple[int, int, int, int]:
        """(gate, mode, initial count, out) of a channel now (``pit_get_channel_info``)."""
        ch = self.channels[channel]
        return ch.gate, ch.mode, ch.count, ch.out(self.clock.now())

    # ---- IRQ 0
    def _irq_timer_update(self, channel: int, now: int) -> None:
        if channel != 0:
            return  # only channel 0 has an IRQ timer
        ch = self.channels[0]
        if ch.irq_disabled:
            return
        expire = ch.next_transition(now)
        self.irq.set(ch.out(now))
        ch.next_transition_time = expire
        if expire != -1:
            self._timer.mod(expire)
        else:
            self._timer.cancel()

    def _on_timer(self) -> None:
        self._irq_timer_update(0, self.channels[0].next_transition_time)

    def _irq_control(self, n: int, enable: int) -> None:
        ch = self.channels[0]
        if enable:
            ch.irq_disabled = 0
            self._irq_timer_update(0, self.clock.now())
        else:
            ch.irq_disabled = 1
            self._timer.cancel()

    # ---- registers
    def _load_count(self, channel: int, value: int) -> None:
        ch = self.channels[channel]
        ch.count_load_time = self.clock.now()
        ch.count = value or 0x10000
        self._irq_timer_update(channel, ch.count_load_time)

    def _latch_count(self, ch: PITChannel) -> None:
        if not ch.count_latched:  # a second latch command before the read-out is ignored
            ch.latched_count = ch.current_count(self.clock.now()) & 0xFFFF
            ch.count_latched = ch.rw_mode

    def _read_back(self, value: int) -> None:
        now = self.clock.now()
        for i, ch in enumerate(self.channels):
            if not value & (2 << i):
                continue
            if not value & 0x20:
                self._latch_count(ch)
            if not value & 0x10 and not ch.status_latched:
                # QEMU reports neither the null-count flag nor a BCD counter state
                ch.status = (ch.out(now) << 7) | (ch.rw_mode << 4) | (ch.mode << 1) | ch.bcd
                ch.status_latched = 1

    def _control(self, value: int) -> None:
        channel = value >> 6
        if channel == 3:
            self._read_back(value)
            return
        ch = self.channels[channel]
        access = (value >> 4) & 3
        if access == 0:
            self._latch_count(ch)
            return
        ch.rw_mode = ch.read_state = ch.write_state = access
        ch.mode = (value >> 1) & 7
        ch.bcd = value & 1

    def _write(self, offset: int, value: int, size: int) -> None:
        offset &= 3
        value &= 0xFF
        if offset == 3:
            self._control(value)
            return
        ch = self.channels[offset]
        if ch.write_state == RW_STATE_MSB:
            self._load_count(offset, value << 8)
        elif ch.write_state == RW_STATE_WORD0:
            ch.write_latch = value
            ch.write_state = RW_STATE_WORD1
        elif ch.write_state == RW_STATE_WORD1:
            self._load_count(offset, ch.write_latch | (value << 8))
            ch.write_state = RW_STATE_WORD0
        else:  # LSB, and the state before any control word
            self._load_count(offset, value)

    def _read_latched(self, ch: PITChannel) -> int:
        if ch.count_latched == RW_STATE_MSB:
            ch.count_latched = 0
            return ch.latched_count >> 8
        if ch.count_latched == RW_STATE_WORD0:
            ch.count_latched = RW_STATE_MSB
            return ch.latched_count & 0xFF
        ch.count_latched = 0
        return ch.latched_count & 0xFF

    def _read(self, offset: int, size: int) -> int:
        offset &= 3
        if offset == 3:
            return 0  # the mode/command register is write-only
        ch = self.channels[offset]
        if ch.status_latched:
            ch.status_latched = 0
            return ch.status
        if ch.count_latched:
            return self._read_latched(ch)
        count = ch.current_count(self.clock.now())
        if ch.read_state == RW_STATE_WORD0:
            ch.read_state = RW_STATE_WORD1
            return count & 0xFF
        if ch.read_state == RW_STATE_WORD1:
            ch.read_state = RW_STATE_WORD0
            return (count >> 8) & 0xFF
        if ch.read_state == RW_STATE_MSB:
            return (count >> 8) & 0xFF
        return count & 0xFF

    # ---- migration ("i8254" version 3)
    vmsd = VMStateDescription(
        name="i8254", version_id=3, minimum_version_id=2,
        fields=[Field("channels[0].irq_disabled", "uint32", version_id=3)]
        + [Field(f"channels[{i}].{name}", kind) for i in range(3) for name, kind in _CHANNEL_FIELDS]
        # QEMU's trailing "formerly irq_timer" field repeats channel 0's next transition time
        + [Field("channels[0].next_transition_time", "int64")],
    )

    def save_vmstate(self) -> dict:
        state: dict = {"channels[0].irq_disabled": self.channels[0].irq_disabled}
        for i, ch in enumerate(self.channels):
            for name, _ in _CHANNEL_FIELDS:
                state[f"channels[{i}].{name}"] = getattr(ch, name)
        return state

    def load_vmstate(self, state: dict) -> None:
        for i, ch in enumerate(self.channels):
            for name, _ in _CHANNEL_FIELDS:
                setattr(ch, name, int(state.get(f"channels[{i}].{name}", getattr(ch, name))))
        ch0 = self.channels[0]
        # a version 2 stream has no irq_disabled: the field keeps its local value, as in QEMU
        ch0.irq_disabled = int(state.get("channels[0].irq_disabled", ch0.irq_disabled))
        if ch0.next_transition_time != -1 and not ch0.irq_disabled:
            self._timer.mod(ch0.next_transition_time)
        else:
            self._timer.cancel()
