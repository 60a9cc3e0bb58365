"""The HPET (QEMU 7.2's ``hpet``): 1 KiB of MMIO at 0xfed00000, a 100 MHz main counter, 3 comparators.

Owns the register file and its timing: the capability/ID register (vendor 0x8086, revision 1, 64-bit
counter, legacy-replacement capable, 10 ns period), the configuration (enable, legacy replacement),
the interrupt status, the main counter (it follows the virtual clock while enabled), and per timer the
configuration/capability register (32/64-bit mode, periodic with the SETVAL accumulator, level or
edge, route field, FSB delivery), the comparator and the FSB route. Timing, wrap handling and IRQ
levels follow QEMU's arithmetic, including its quirks: the timer registers of index ``num_timers``
(one past the last) are accessible, a periodic timer that fires exactly on its comparator re-arms one
tick later, and the route field is not checked against the capability mask.

Outputs: ``irqs`` (QEMU's 32 ``sysbus-irq`` lines: GSIs), and GPIO out 0, the PIT's IRQ enable (low in
legacy replacement mode). Inputs: GPIO in 0 (the PIT's IRQ 0) and 1 (the RTC's IRQ 8), which the
HPET forwards to GSI 0 and 8 while it is not in legacy mode. FSB (MSI) delivery writes to ``dma``.
"""
from __future__ import annotations

import errno
from typing import Any

from emu.clock import INT64_MAX, VirtualClock
from emu.devices.base import Device
from emu.memory import AccessRules, AddressSpace, CallbackOps, MemoryRegion
from emu.migration.vmstate import Field, LoadContext, VMStateDescription

HPET_BASE = 0xFED00000
HPET_LEN = 0x400
HPET_CLK_PERIOD = 10  # ns
FS_PER_NS = 1_000_000
HPET_MIN_TIMERS, HPET_MAX_TIMERS = 3, 32
HPET_NUM_IRQ_ROUTES = 32
HPET_LEGACY_PIT_INT, HPET_LEGACY_RTC_INT = 0, 1
RTC_ISA_IRQ = 8

CFG_ENABLE, CFG_LEGACY = 0x001, 0x002
REG_ID, REG_PERIOD, REG_CFG, REG_STATUS, REG_COUNTER = 0x000, 0x004, 0x010, 0x020, 0x0F0
TN_CFG, TN_CMP, TN_ROUTE = 0x000, 0x008, 0x010
TN_TYPE_LEVEL, TN_ENABLE, TN_PERIODIC = 0x002, 0x004, 0x008
TN_PERIODIC_CAP, TN_SIZE_CAP, TN_SETVAL, TN_32BIT = 0x010, 0x020, 0x040, 0x100
TN_INT_ROUTE_MASK, TN_INT_ROUTE_SHIFT = 0x3E00, 9
TN_FSB_ENABLE, TN_FSB_CAP = 0x4000, 0x8000
CFG_WRITE_MASK, TN_CFG_WRITE_MASK = 0x3, 0x7F4E

_U32, _U64 = 0xFFFFFFFF, (1 << 64) - 1
_HI32 = _U64 ^ _U32
_TIMER_FIELDS = (("tn", "uint8"), ("config", "uint64"), ("cmp", "uint64"), ("fsb", "uint64"),
                 ("period", "uint64"), ("wrap_flag", "uint8"), ("qemu_timer", "int64"))


def _fixup(new: int, old: int, mask: int) -> int:
    """Writable bits from ``new``, the rest from ``old``."""
    return (new & mask) | (old & ~mask & _U64)


def _rising(old: int, new: int, mask: int) -> bool:
    return not old & mask and bool(new & mask)


def _falling(old: int, new: int, mask: int) -> bool:
    return bool(old & mask) and not new & mask


def _after32(a: int, b: int) -> bool:
    """``a`` is later than ``b`` in 32-bit wrapping arithmetic."""
    return (b - a) & _U32 >= 1 << 31


def _after64(a: int, b: int) -> bool:
    return (b - a) & _U64 >= 1 << 63


class HPETTimer:
    """One comparator (QEMU's ``HPETTimer``): software-visible registers plus hidden state."""

    def __init__(self, hpet: HPET, tn: int) -> None:
        self.hpet = hpet
        self.tn = tn
        self.config = 0
        self.cmp = 0
        self.fsb = 0
        self.period = 0  # the last value written to the comparator in periodic mode
        self.wrap_flag = 0  # a 32-bit one-shot first fires at the counter wrap, then at the comparator
        self.timer = hpet.clock.new_timer(self._expired)

    @property
    def is32(self) -> bool:
        return bool(self.config & TN_32BIT)

    @property
    def periodic(self) -> bool:
        return bool(self.config & TN_PERIODIC)

    def route(self) -> int:
        """The IRQ line this timer drives now (legacy replacement overrides timers 0 and 1)."""
        if self.tn <= 1 and self.hpet.config & CFG_LEGACY:
            return 0 if self.tn == 0 else RTC_ISA_IRQ  # legacy replacement: IRQ 0 and IRQ 8
        return (self.config & TN_INT_ROUTE_MASK) >> TN_INT_ROUTE_SHIFT

    def diff(self, current: int) -> int:
        """Ticks until the comparator, at least 1 (``hpet_calculate_diff``)."""
        if self.is32:
            d = (self.cmp - current) & _U32
            return d if 0 < d < 1 << 31 else 1
        d = (self.cmp - current) & _U64
        return d if 0 < d < 1 << 63 else 1

    def arm(self, ticks: int) -> None:
        """Fires ``ticks`` counter ticks from now; a distance beyond int64/2 ns disarms, as in QEMU."""
        if ticks < (INT64_MAX // 2) // HPET_CLK_PERIOD:
            self.timer.mod(self.hpet.clock.now() + ticks * HPET_CLK_PERIOD)
        else:
            self.timer.cancel()

    def set(self) -> None:
        """Arms for the comparator (or first for the 32-bit wrap) from now (``hpet_set_timer``)."""
        cur = self.hpet.ticks()
        self.wrap_flag = 0
        d = self.diff(cur)
        if self.is32 and not self.periodic:
            wrap_diff = _U32 - (cur & _U32)
            if wrap_diff < d & _U32:
                d = wrap_diff
                self.wrap_flag = 1
        self.arm(d)

    def delete(self) -> None:
        """Disarms the timer and withdraws its interrupt (``hpet_del_timer``)."""
        self.timer.cancel()
        self.hpet.update_irq(self, False)

    def _expired(self) -> None:
        cur = self.hpet.ticks()
        if self.periodic and self.period:
            if self.is32:
                while _after32(cur, self.cmp):
                    self.cmp = (self.cmp + self.period) & _U32
            else:
                while _after64(cur, self.cmp):
                    self.cmp = (self.cmp + self.period) & _U64
            self.arm(self.diff(cur))
        elif self.is32 and not self.periodic and self.wrap_flag:
            self.arm(self.diff(cur))
            self.wrap_flag = 0
        self.hpet.update_irq(self, True)

    def write_config(self, old: int, new: int) -> None:
        """A guest write of the low half of the configuration register."""
        if _rising(old, new, TN_FSB_ENABLE):
            self.hpet.update_irq(self, False)
        self.config = (self.config & _HI32) | (_fixup(new, old, TN_CFG_WRITE_MASK) & _U32)
        if new & TN_32BIT:
            self.cmp &= _U32
            self.period &= _U32
        if _rising(old, new, TN_ENABLE) and self.hpet.enabled:
            self.set()
        elif _falling(old, new, TN_ENABLE):
            self.delete()

    def write_cmp(self, value: int, high: bool) -> None:
        """A guest write of one half of the comparator (the period too in periodic mode)."""
        if not high and self.is32:
            value &= _U32
        shift, keep = (32, _U32) if high else (0, _HI32)
        if not self.periodic or self.config & TN_SETVAL:
            self.cmp = (self.cmp & keep) | (value << shift)
        # QEMU: the low half also sets the period of a periodic timer, the high half only without SETVAL
        if self.periodic and (not high or not self.config & TN_SETVAL):
            value &= (_U32 if self.is32 else _U64) >> 1
            self.period = ((self.period & keep) | (value << shift)) & _U64
        self.config &= ~TN_SETVAL
        if self.hpet.enabled:
            self.set()


class HPET(Device):
    """``hpet``: MMIO region ``mmio`` (at 0xfed00000), ``irqs`` (GPIO out list ``sysbus-irq``),
    ``pit_enabled`` (GPIO out 0), legacy inputs (GPIO in 0: PIT, 1: RTC)."""

    type_name = "hpet"
    type_parent = "sys-bus-device"

    def __init__(self, clock: VirtualClock, intcap: int = 0, timers: int = HPET_MIN_TIMERS, msi: bool = False,
                 hpet_offset_saved: bool = True, dma: AddressSpace | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.dma = dma
        self.num_timers = min(max(timers, HPET_MIN_TIMERS), HPET_MAX_TIMERS)
        self.intcap = intcap & _U32
        self.msi = msi
        self.hpet_offset_saved = hpet_offset_saved
        for name, kind, value in (("timers", "uint8", timers), ("msi", "bool", msi),
                                  ("hpet-intcap", "uint32", intcap), ("hpet-offset-saved", "bool", hpet_offset_saved)):
            self.add_property(name, kind, value, kind, static=True)
        self.irqs = self.init_gpio_out(HPET_NUM_IRQ_ROUTES, "sysbus-irq")
        self.pit_enabled = self.init_gpio_out(1)[0]
        self.init_gpio_in(self._legacy_irq, 2)
        # all timer slots exist, as in QEMU (register decoding reaches one past num_timers)
        self.timers = [HPETTimer(self, i) for i in range(HPET_MAX_TIMERS)]
        self.capability = (0x8086A001 | ((self.num_timers - 1) << 8)
                           | ((HPET_CLK_PERIOD * FS_PER_NS) << 32))
        self.config = self.isr = self.hpet_counter = self.hpet_offset = 0
        self.rtc_irq_level = 0
        # 32-bit registers only; 64-bit accesses are split in two by the bus
        self.mmio = MemoryRegion.io("hpet", HPET_LEN, CallbackOps(self._read, self._write,
                                                                  AccessRules(valid_min=4, valid_max=4)), owner=self)
        self.vmsd = self._build_vmsd()
        self.reset()

    @property
    def enabled(self) -> bool:
        return bool(self.config & CFG_ENABLE)

    def ticks(self) -> int:
        """The main counter derived from the virtual clock (meaningful while enabled)."""
        return ((self.clock.now() + self.hpet_offset) & _U64) // HPET_CLK_PERIOD

    def counter(self) -> int:
        """The main counter as the guest reads it."""
        return self.ticks() if self.enabled else self.hpet_counter

    def reset(self) -> None:
        for t in self.timers[:self.num_timers]:
            t.delete()
            t.cmp = _U64
            t.config = TN_PERIODIC_CAP | TN_SIZE_CAP | (TN_FSB_CAP if self.msi else 0) | (self.intcap << 32)
            t.period = 0
            t.wrap_flag = 0
        self.pit_enabled.set(1)
        self.hpet_counter = self.hpet_offset = self.config = 0
        self.rtc_irq_level = 0

    # ---- interrupts
    def update_irq(self, t: HPETTimer, assert_: bool) -> None:
        """Delivers (or withdraws) timer ``t``'s interrupt (QEMU's ``update_irq``)."""
        route = t.route()
        mask = 1 << t.tn
        fsb = bool(t.config & TN_FSB_ENABLE)
        if not assert_ or not t.config & TN_ENABLE or not self.enabled:
            self.isr &= ~mask
            if not fsb:
                self.irqs[route].lower()
        elif fsb:
            if self.dma is not None:
                self.dma.write_uint(t.fsb >> 32, t.fsb & _U32, 4)
        elif t.config & TN_TYPE_LEVEL:
            self.isr |= mask
            self.irqs[route].raise_()
        else:
            self.isr &= ~mask
            self.irqs[route].raise_()
            self.irqs[route].lower()

    def _legacy_irq(self, n: int, level: int) -> None:
        if n == HPET_LEGACY_PIT_INT:
            if not self.config & CFG_LEGACY:
                self.irqs[0].set(level)
        else:
            self.rtc_irq_level = level & 0xFF
            if not self.config & CFG_LEGACY:
                self.irqs[RTC_ISA_IRQ].set(level)

    # ---- registers
    def _timer_at(self, offset: int) -> HPETTimer | None:
        tid = (offset - 0x100) // 0x20
        return self.timers[tid] if tid <= self.num_timers else None  # QEMU's off-by-one kept

    def _read(self, offset: int, size: int) -> int:
        if 0x100 <= offset <= 0x3FF:
            t = self._timer_at(offset)
            if t is None:
                return 0
            reg = (offset - 0x100) % 0x20
            value = {TN_CFG: t.config, TN_CMP: t.cmp, TN_ROUTE: t.fsb}.get(reg & ~4, 0)
            return value >> 32 if reg & 4 else value & _U32
        if offset == REG_ID:
            return self.capability & _U32
        if offset == REG_PERIOD:
            return self.capability >> 32
        if offset == REG_CFG:
            return self.config & _U32
        if offset == REG_STATUS:
            return self.isr & _U32
        if offset in (REG_COUNTER, REG_COUNTER + 4):
            return (self.counter() >> (8 * (offset - REG_COUNTER))) & _U32
        return 0

    def _write(self, offset: int, value: int, size: int) -> None:
        value &= _U32
        if 0x100 <= offset <= 0x3FF:
            t = self._timer_at(offset)
            if t is not None:
                self._write_timer(t, (offset - 0x100) % 0x20, value)
        elif offset == REG_CFG:
            self._write_config(value)
        elif offset == REG_STATUS:
            cleared = value & self.isr
            for t in self.timers[:self.num_timers]:
                if cleared & (1 << t.tn):
                    self.update_irq(t, False)
        elif offset == REG_COUNTER:
            self.hpet_counter = (self.hpet_counter & _HI32) | value
        elif offset == REG_COUNTER + 4:
            self.hpet_counter = (self.hpet_counter & _U32) | (value << 32)

    def _write_timer(self, t: HPETTimer, reg: int, value: int) -> None:
        if reg == TN_CFG:
            t.write_config(t.config, value)
        elif reg in (TN_CMP, TN_CMP + 4):
            t.write_cmp(value, reg == TN_CMP + 4)
        elif reg == TN_ROUTE:
            t.fsb = (t.fsb & _HI32) | value
        elif reg == TN_ROUTE + 4:
            t.fsb = (value << 32) | (t.fsb & _U32)

    def _write_config(self, value: int) -> None:
        old = self.config
        self.config = (self.config & _HI32) | _fixup(value, old, CFG_WRITE_MASK)
        now = self.clock.now()
        if _rising(old, value, CFG_ENABLE):
            # the counter resumes from its stored value
            self.hpet_offset = (self.hpet_counter * HPET_CLK_PERIOD - now) & _U64
            for t in self.timers[:self.num_timers]:
                if t.cmp != _U64:
                    t.set()
        elif _falling(old, value, CFG_ENABLE):
            self.hpet_counter = self.ticks()
            for t in self.timers[:self.num_timers]:
                t.delete()
        # the PIT's and the RTC's own lines are cut off while the HPET replaces them
        if _rising(old, value, CFG_LEGACY):
            self.pit_enabled.set(0)
            self.irqs[0].lower()
            self.irqs[RTC_ISA_IRQ].lower()
        elif _falling(old, value, CFG_LEGACY):
            self.irqs[0].lower()
            self.pit_enabled.set(1)
            self.irqs[RTC_ISA_IRQ].set(self.rtc_irq_level)

    # ---- migration ("hpet" version 2; the timer struct array flattened as timer[i].field)
    def _build_vmsd(self) -> VMStateDescription:
        fields = [Field("config", "uint64"), Field("isr", "uint64"), Field("hpet_counter", "uint64"),
                  Field("num_timers", "uint8", version_id=2, get=self._get_num_timers)]
        fields += [Field(f"timer[{i}].{name}", kind) for i in range(self.num_timers) for name, kind in _TIMER_FIELDS]
        return VMStateDescription(
            name="hpet", version_id=2, minimum_version_id=1, fields=fields,
            pre_load=_pre_load,
            subsections=[
                VMStateDescription("hpet/rtc_irq_level", 1, 1, [Field("rtc_irq_level", "uint8")],
                                   needed=lambda s: bool(s.get("rtc_irq_level"))),
                VMStateDescription("hpet/offset", 1, 1, [Field("hpet_offset", "uint64")],
                                   needed=lambda s: bool(s.get("config", 0) & CFG_ENABLE)
                                   and bool(s.get("hpet_offset_saved"))),
            ])

    def _get_num_timers(self, f: Any, state: dict, ctx: LoadContext) -> int:
        """The timer count, checked as QEMU's "num_timers in range" validation does; the timer
        array is laid out for this device's count, so a stream with another count is refused."""
        n = f.get(1)[0]
        state["num_timers"] = n
        if not HPET_MIN_TIMERS <= n <= HPET_MAX_TIMERS:
            ctx.error("Input validation failed: num_timers in range")
            return -errno.EINVAL
        if n != self.num_timers:
            ctx.error(f"hpet: stream has {n} timers, this HPET has {self.num_timers}")
            return -errno.EINVAL
        return 0

    def save_vmstate(self) -> dict:
        if self.enabled:
            self.hpet_counter = self.ticks()  # QEMU's pre_save freezes the running counter
        state: dict = {"config": self.config, "isr": self.isr, "hpet_counter": self.hpet_counter,
                       "num_timers": self.num_timers, "rtc_irq_level": self.rtc_irq_level,
                       "hpet_offset": self.hpet_offset, "hpet_offset_saved": self.hpet_offset_saved}
        for t in self.timers[:self.num_timers]:
            for name, _ in _TIMER_FIELDS[:-1]:
                state[f"timer[{t.tn}].{name}"] = getattr(t, name)
            state[f"timer[{t.tn}].qemu_timer"] = t.timer.expire if t.timer.pending else -1
        return state

    def load_vmstate(self, state: dict) -> None:
        for key in ("config", "isr", "hpet_counter", "hpet_offset", "rtc_irq_level"):
            if key in state:
                setattr(self, key, int(state[key]))
        for t in self.timers[:self.num_timers]:
            for name, _ in _TIMER_FIELDS[:-1]:
                key = f"timer[{t.tn}].{name}"
                if key in state:
                    setattr(t, name, int(state[key]))
            expire = int(state.get(f"timer[{t.tn}].qemu_timer", -1))
            if expire != -1:
                t.timer.mod(expire)
            else:
                t.timer.cancel()
        if not self.hpet_offset_saved:
            self.hpet_offset = (self.hpet_counter * HPET_CLK_PERIOD - self.clock.now()) & _U64
        self.msi = bool(self.timers[0].config & TN_FSB_CAP)  # QEMU derives it from timer 0


def _pre_load(state: dict, ctx: LoadContext) -> int:
    state["num_timers"] = HPET_MIN_TIMERS  # version 1 streams carry no count: they have 3 timers
    return 0
