"""The MC146818 real-time clock and its 128-byte CMOS NVRAM (ports 0x70/0x71), as QEMU 7.2's
``mc146818rtc``, plus the ``-rtc base=...,clock=...,driftfix=...`` option it is configured by.

The device owns: the time registers (BCD or binary, 12/24 h) counted from a base time on the
clock ``-rtc clock=`` selects, registers A-D (UIP, divider reset and its 500 ms rule, SET),
the periodic interrupt at the register-A rate, the alarm (with don't-care values), the
update-ended interrupt, the AF/PF/UF/IRQF flags of register C (cleared by reading it), the
century byte 0x32 (0x37 is its IBM PS/2 alias), reset, and the VMState section
``mc146818rtc`` version 3. Time keeping follows QEMU's: the guest time is
``base_rtc + (now - last_update) + offset`` on that clock, so a time the guest sets is kept as
a new base and keeps counting.

``clock=vm`` counts the board's ``VirtualClock`` (what qtest ``clock_step`` drives).
``clock=host`` and ``clock=rt`` count host wall-clock and monotonic time; their timers are
bridged onto the virtual clock and also caught up on every port access, since the main loop
has no host-clock timers (see ``_HostTimer``).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from emu.clock import Timer, VirtualClock
from emu.devices.base import Device
from emu.memory import AccessRules, CallbackOps, MemoryRegion
from emu.migration.vmstate import Field, LoadContext, VMStateDescription
from emu.qemu_opts import parse_items
from emu.qom import Property

__all__ = ["RTC", "RtcOptionError", "RtcOptions", "mktimegm", "parse_rtc_option"]

NS_PER_SEC = 1_000_000_000
U64 = 1 << 64

# Register indexes.
RTC_SECONDS, RTC_SECONDS_ALARM, RTC_MINUTES, RTC_MINUTES_ALARM = 0x00, 0x01, 0x02, 0x03
RTC_HOURS, RTC_HOURS_ALARM, RTC_DAY_OF_WEEK, RTC_DAY_OF_MONTH = 0x04, 0x05, 0x06, 0x07
RTC_MONTH, RTC_YEAR = 0x08, 0x09
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
RTC_CENTURY, RTC_PS2_CENTURY = 0x32, 0x37
TIME_REGS = frozenset({RTC_SECONDS, RTC_MINUTES, RTC_HOURS, RTC_DAY_OF_WEEK, RTC_DAY_OF_MONTH,
                       RTC_MONTH, RTC_YEAR, RTC_CENTURY})
ALARM_REGS = frozenset({RTC_SECONDS_ALARM, RTC_MINUTES_ALARM, RTC_HOURS_ALARM})

# Register bits.
REG_A_UIP = 0x80
REG_B_SET, REG_B_PIE, REG_B_AIE, REG_B_UIE = 0x80, 0x40, 0x20, 0x10
REG_B_SQWE, REG_B_DM, REG_B_24H = 0x08, 0x04, 0x02
REG_C_IRQF, REG_C_PF, REG_C_AF, REG_C_UF = 0x80, 0x40, 0x20, 0x10
REG_C_MASK = 0x70

RTC_CLOCK_RATE = 32768
#: UIP is reported during the last 244 us before an update (8 cycles of the 32 kHz clock).
UIP_HOLD_LENGTH = 8 * NS_PER_SEC // RTC_CLOCK_RATE
REINJECT_ON_ACK_COUNT = 20
MAX_CLOCK_JUMP = 60 * NS_PER_SEC  # QEMU's get_max_clock_jump()
SEC_PER_DAY = 86400
ISA_BASE, ISA_IRQ = 0x70, 8


# ---------------------------------------------------------------- C arithmetic helpers

def _u64(v: int) -> int:
    return v % U64


def _s64(v: int) -> int:
    v %= U64
    return v - U64 if v >= 1 << 63 else v


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def _cmod(a: int, b: int) -> int:
    """C remainder (takes the sign of the dividend)."""
    return a - b * _cdiv(a, b)


def _muldiv64(a: int, b: int, c: int) -> int:
    """QEMU's muldiv64 on an unsigned ``a``: a * b / c with a 128-bit intermediate."""
    return _u64(_u64(a) * b // c)


def periodic_period_to_clock(code: int) -> int:
    """Register A's rate code -> period in 32 kHz cycles (0: off; codes 1-2 act as 8-9)."""
    if not code:
        return 0
    if code <= 2:
        code += 7
    return 1 << (code - 1)


def periodic_clock_to_ns(clocks: int) -> int:
    return _muldiv64(clocks, NS_PER_SEC, RTC_CLOCK_RATE)


# ---------------------------------------------------------------- struct tm

class Tm(NamedTuple):
    """C ``struct tm`` fields the RTC uses: ``mon`` 0-11, ``year`` since 1900, ``wday`` 0 = Sunday."""

    sec: int
    min: int
    hour: int
    mday: int
    mon: int
    year: int
    wday: int = 0


def mktimegm(tm: Tm) -> int:
    """QEMU's ``mktimegm`` (util/cutils.c): no range checks, C integer arithmetic, int64 result."""
    y, m, d = tm.year + 1900, tm.mon + 1, tm.mday
    if m < 3:
        m += 12
        y -= 1
    days = d + _cdiv(153 * m - 457, 5) + 365 * y + _cdiv(y, 4) - _cdiv(y, 100) + _cdiv(y, 400) - 719469
    return _s64(86400 * days + 3600 * tm.hour + 60 * tm.min + tm.sec)


def gmtime(t: int) -> Tm:
    """``gmtime_r`` for any time_t (proleptic Gregorian calendar; works past Python's limits)."""
    days, secs = divmod(t, 86400)
    hour, rem = divmod(secs, 3600)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    mon = mp + 2 if mp < 10 else mp - 10  # 0-based, March-based months shifted back
    year = yoe + era * 400 + (1 if mon < 2 else 0)
    return Tm(rem % 60, rem // 60, hour, doy - (153 * mp + 2) // 5 + 1, mon, year - 1900, (days + 4) % 7)


def _localtime(t: int) -> Tm:
    lt = time.localtime(t)
    return Tm(lt.tm_sec, lt.tm_min, lt.tm_hour, lt.tm_mday, lt.tm_mon - 1, lt.tm_year - 1900, (lt.tm_wday + 1) % 7)


# ---------------------------------------------------------------- -rtc option

RTC_DATE_HINT = "valid formats: '2006-06-17T16:01:21' or '2006-06-17'\n"


class RtcOptionError(ValueError):
    """A refused ``-rtc``: ``str(e)`` is QEMU's message (already carrying the ``-rtc VALUE:``
    location when QEMU prints one), ``hint`` the unprefixed lines QEMU prints after it, and
    ``warnings`` the (message, hint) pairs QEMU printed before failing."""

    def __init__(self, message: str, hint: str = "", warnings: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.hint = hint
        self.warnings = warnings or []


@dataclass
class RtcOptions:
    """The configured ``-rtc``: what QEMU's ``configure_rtc`` derives from the option.

    ``base``: ``utc``, ``localtime`` or ``datetime`` (then ``start`` is the start time in
    seconds since the epoch); ``clock``: ``host``, ``rt`` or ``vm``; ``driftfix``: ``none`` or
    ``slew`` (the device's lost_tick_policy). ``warnings`` are (message, hint) pairs QEMU prints
    on stderr (short-form booleans); the message takes the ``<prog>: `` prefix, the hint not.
    """

    base: str = "utc"
    start: int | None = None
    clock: str = "host"
    driftfix: str = "none"
    warnings: list[tuple[str, str]] = field(default_factory=list)


def _scan_ints(text: str, seps: str) -> list[int]:
    """C ``sscanf`` with ``%d`` conversions separated by the literal characters ``seps``:
    the values converted before the first mismatch (leading blanks and a sign are allowed)."""
    values: list[int] = []
    pos = 0
    for i in range(len(seps) + 1):
        while pos < len(text) and text[pos] in " \t\n\r\f\v":
            pos += 1
        start = pos
        if pos < len(text) and text[pos] in "+-":
            pos += 1
        digits = pos
        while pos < len(text) and text[pos].isdigit() and text[pos].isascii():
            pos += 1
        if pos == digits:
            return values
        values.append(int(text[start:pos]))
        if i < len(seps):
            if pos >= len(text) or text[pos] != seps[i]:
                return values
            pos += 1
    return values


def parse_rtc_datetime(text: str) -> int:
    """``-rtc base=`` as a date: seconds since the epoch, or RtcOptionError as QEMU words it."""
    v = _scan_ints(text, "--T::")
    if len(v) != 6:
        v = _scan_ints(text, "--")[:3]
        if len(v) != 3:
            raise RtcOptionError("invalid datetime format", RTC_DATE_HINT)
        v += [0, 0, 0]
    # QEMU's sscanf stores into int fields: out-of-range numbers wrap as 32-bit ints.
    y, mo, d, h, mi, s = (_s64(x << 32) >> 32 for x in v)
    start = mktimegm(Tm(s, mi, h, d, mo - 1, y - 1900))
    if start == -1:
        raise RtcOptionError("invalid datetime format", RTC_DATE_HINT)
    return start


def _rtc_keyvals(value: str, warnings: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Parses one ``-rtc`` argument as QemuOpts does (bare ``x`` is ``x=on``, ``nox`` is ``x=off``)."""
    pairs = []
    for item in parse_items(value):
        warning = item.deprecation()
        if warning is not None:
            warnings.append((f"-rtc {value}: warning: {warning[0]}", warning[1] + "\n"))
        if item.key not in ("base", "clock", "driftfix"):
            raise RtcOptionError(f"-rtc {value}: Invalid parameter '{item.key}'", warnings=warnings)
        pairs.append((item.key, item.value))
    return pairs


def parse_rtc_option(*values: str) -> RtcOptions:
    """QEMU 7.2's ``-rtc``: each argument is one ``-rtc`` occurrence, in command-line order.

    The occurrences merge (the last value of a key wins), then are checked as ``configure_rtc``
    does. Raises RtcOptionError (a ValueError) with QEMU's texts: ``-rtc V: Invalid parameter
    'k'`` for an unknown key, ``invalid datetime format`` (+ hint) for a bad ``base``,
    ``invalid option value 'x'`` for a bad ``clock``/``driftfix``.
    """
    opts = RtcOptions()
    merged: dict[str, str] = {}
    for value in values:
        merged.update(_rtc_keyvals(value, opts.warnings))
    try:
        base = merged.get("base")
        if base in ("utc", "localtime"):
            opts.base = base
        elif base is not None:
            opts.base, opts.start = "datetime", parse_rtc_datetime(base)
        for key, choices in (("clock", ("host", "rt", "vm")), ("driftfix", ("none", "slew"))):
            val = merged.get(key)
            if val is not None:
                if val not in choices:
                    raise RtcOptionError(f"invalid option value '{val}'")
                setattr(opts, key, val)
    except RtcOptionError as e:
        e.warnings = opts.warnings
        raise
    return opts


# ---------------------------------------------------------------- the RTC's clock

class _HostTimer:
    """A timer on a host clock (QEMU_CLOCK_HOST/REALTIME), with the virtual clock's Timer API.

    The main loop runs only virtual-clock timers. When the virtual clock follows host time
    (no qtest accelerator), the deadline is bridged onto it and re-checked against host time
    when that fires. Under qtest it is not, because QEMU's host timers are no virtual-clock
    deadline (``clock_step`` without a length must not stop at them). In both cases the
    device calls ``RtcClock.run_due`` on each access, so what the guest reads is as if the
    timer had fired on time; an interrupt can be late until then, unless the main loop polls
    ``RtcClock.host_timeout``/``run_due`` as well.
    """

    def __init__(self, rtc_clock: RtcClock, callback: Callable[[], None]) -> None:
        self.rtc_clock = rtc_clock
        self.callback = callback
        self.expire: int | None = None
        vclock = rtc_clock.vclock
        self._bridge = None if vclock.manual else vclock.new_timer(self._bridged)

    def mod(self, expire_ns: int) -> None:
        self.expire = expire_ns
        if self._bridge is not None:
            vclock = self.rtc_clock.vclock
            self._bridge.mod(vclock.now() + max(0, expire_ns - self.rtc_clock.now()))

    def cancel(self) -> None:
        self.expire = None
        if self._bridge is not None:
            self._bridge.cancel()

    @property
    def pending(self) -> bool:
        return self.expire is not None

    def run_if_due(self) -> None:
        if self.expire is not None and self.rtc_clock.now() >= self.expire:
            self.cancel()
            self.callback()

    def _bridged(self) -> None:
        if self.expire is None:
            return
        if self.rtc_clock.now() >= self.expire:
            self.run_if_due()
        else:
            self.mod(self.expire)  # host time is behind (the wall clock was set back)


class RtcClock:
    """QEMU's ``rtc_clock`` and ``qemu_ref_timedate``: the nanosecond clock the RTC counts on
    (``vm``: the virtual clock; ``host``: host wall time; ``rt``: host monotonic time) and the
    reference date it starts from (``-rtc base=``)."""

    #: host wall-clock and monotonic time in ns (QEMU_CLOCK_HOST / QEMU_CLOCK_REALTIME)
    host_ns: Callable[[], int] = staticmethod(time.time_ns)
    mono_ns: Callable[[], int] = staticmethod(time.monotonic_ns)

    def __init__(self, vclock: VirtualClock, options: RtcOptions) -> None:
        self.vclock = vclock
        self.kind = options.clock
        self.base = options.base
        self._host_timers: list[_HostTimer] = []
        host_s = self.host_ns() // 1_000_000 // 1000
        self._ref_start = host_s  # rtc_ref_start_datetime
        self._rt_offset = self.mono_ns() // 1_000_000 // 1000
        self._host_offset = -1
        if options.base == "datetime" and options.start is not None:
            self._host_offset = host_s - options.start
            self._ref_start = options.start

    def now(self) -> int:
        """``qemu_clock_get_ns(rtc_clock)``."""
        if self.kind == "vm":
            return self.vclock.now()
        return self.host_ns() if self.kind == "host" else self.mono_ns()

    def new_timer(self, callback: Callable[[], None]) -> Timer | _HostTimer:
        if self.kind == "vm":
            return self.vclock.new_timer(callback)
        t = _HostTimer(self, callback)
        self._host_timers.append(t)
        return t

    def run_due(self) -> None:
        """Fires the host-clock timers whose time has come (nothing to do on the virtual clock)."""
        for t in sorted((t for t in self._host_timers if t.expire is not None), key=lambda t: t.expire or 0):
            t.run_if_due()

    def host_timeout(self) -> float | None:
        """Seconds until the next host-clock timer of the RTC (None: none, or ``clock=vm``)."""
        pending = [t.expire for t in self._host_timers if t.expire is not None]
        if not pending:
            return None
        return max(0.0, (min(pending) - self.now()) / 1e9)

    def _ref_seconds(self, kind: str) -> int:
        """``qemu_ref_timedate(clock)``: seconds of the reference date on that clock."""
        if kind == "host":
            value = self.host_ns() // 1_000_000 // 1000
            return value - self._host_offset if self.base == "datetime" else value
        if kind == "rt":
            return self.mono_ns() // 1_000_000 // 1000 - self._rt_offset + self._ref_start
        return self.vclock.now() // 1_000_000 // 1000 + self._ref_start

    def get_timedate(self) -> Tm:
        """``qemu_get_timedate(tm, 0)``: the reference date, in UTC or local time."""
        t = self._ref_seconds(self.kind)
        return _localtime(t) if self.base == "localtime" else gmtime(t)

    def timedate_diff(self, tm: Tm) -> int:
        """``qemu_timedate_diff``: seconds from the host's reference date to ``tm`` (RTC_CHANGE)."""
        if self.base == "localtime":
            seconds = int(time.mktime((tm.year + 1900, tm.mon + 1, tm.mday, tm.hour, tm.min, tm.sec, 0, 0, -1)))
        else:
            seconds = mktimegm(tm)
        return seconds - self._ref_seconds("host")


# ---------------------------------------------------------------- VMState

def _rtc_post_load_version(state: dict, version_id: int, ctx: LoadContext) -> int:
    state["version_id"] = version_id  # rtc post_load depends on the stream's version
    return 0


#: QEMU 7.2's vmstate_rtc. Timers are their int64 expiry (-1: not pending), as VMSTATE_TIMER_PTR.
#: The two VMSTATE_UNUSED fields are named as QEMU's vmdesc JSON numbers duplicate names.
VMSTATE_RTC = VMStateDescription(
    name="mc146818rtc",
    version_id=3,
    minimum_version_id=1,
    fields=[
        Field("cmos_data", "buffer", 128),
        Field("cmos_index", "uint8"),
        Field("unused[0]", "unused_buffer", 7 * 4),
        Field("periodic_timer", "int64", vmdesc_type="timer"),
        Field("next_periodic_time", "int64"),
        Field("unused[1]", "unused_buffer", 3 * 8),
        Field("irq_coalesced", "uint32", version_id=2),
        Field("period", "uint32", version_id=2),
        Field("base_rtc", "uint64", version_id=3),
        Field("last_update", "uint64", version_id=3),
        Field("offset", "int64", version_id=3),
        Field("update_timer", "int64", version_id=3, vmdesc_type="timer"),
        Field("next_alarm_time", "uint64", version_id=3),
    ],
    subsections=[
        VMStateDescription(
            name="mc146818rtc/irq_reinject_on_ack_count", version_id=1, minimum_version_id=1,
            fields=[Field("irq_reinject_on_ack_count", "uint16")],
            needed=lambda s: bool(s.get("irq_reinject_on_ack_count")),
        ),
    ],
    post_load=_rtc_post_load_version,
)


# ---------------------------------------------------------------- the device

def _alarm_any_minute(a_sec: int, cur_min: int, cur_sec: int) -> tuple[int, int]:
    """Alarm minute is don't-care: the next matching (minute, second) from now, in this minute or
    the next (the second may come out as 60: the callers wrap it as their hour rule says)."""
    if a_sec == -1:
        return cur_min, cur_sec + 1
    return (cur_min + 1 if cur_sec > a_sec else cur_min), a_sec


class RTC(Device):
    """The MC146818 RTC: ``io`` (2 ports, mapped at 0x70), ``irq`` (ISA IRQ 8), ``cmos`` (NVRAM).

    ``clock`` is the board's virtual clock; ``options`` the parsed ``-rtc`` (default: base=utc,
    clock=host); ``base_year`` as QEMU's property (the pc machine passes 2000, which QEMU turns
    into 0 so that the century byte counts). ``on_rtc_change(offset)`` (optional) is called when
    the guest sets the time, with QEMU's RTC_CHANGE offset (seconds from host time).
    """

    type_name = "mc146818rtc"
    type_parent = "isa-device"
    vmsd = VMSTATE_RTC

    def __init__(self, clock: VirtualClock | None = None, options: RtcOptions | None = None,
                 base_year: int = 0) -> None:
        super().__init__()
        self.options = options or RtcOptions()
        self.rtc_clock = RtcClock(clock if clock is not None else VirtualClock(manual=False), self.options)
        self.irq = self.init_gpio_out(1)[0]
        self.irq_level = 0
        self.cmos = bytearray(128)
        self.index = 0
        self.base_year = 0 if base_year == 2000 else base_year  # QEMU's historical 2000 -> 0 rule
        self.slew = self.options.driftfix == "slew"
        self.base_rtc = self.last_update = self.offset = 0
        self.next_periodic_time = self.next_alarm_time = 0
        self.period = self.irq_coalesced = self.irq_reinject_on_ack_count = 0
        self.on_rtc_change: Callable[[int], None] | None = None
        ops = CallbackOps(self._read, self._write, AccessRules(impl_max=1))
        self.io = MemoryRegion.io("rtc", 2, ops, owner=self)
        # QEMU covers the index port with its own region (coalesced I/O); same callbacks, so an
        # access starting there behaves as before, and `info mtree -f` shows both as QEMU does
        self.io.add_subregion(0, MemoryRegion.io("rtc-index", 1, ops, owner=self))
        self.cmos[REG_A], self.cmos[REG_B], self.cmos[REG_C], self.cmos[REG_D] = 0x26, REG_B_24H, 0, 0x80
        self._set_date_from_host()
        self.periodic_timer = self.rtc_clock.new_timer(self._periodic_fire)
        self.update_timer = self.rtc_clock.new_timer(self._update_fire)
        self.coalesced_timer = self.rtc_clock.new_timer(self._coalesced_fire)
        self._check_update_timer()
        for name, type_, value in (("base_year", "int32", self.base_year), ("iobase", "uint16", ISA_BASE),
                                   ("irq", "uint8", ISA_IRQ),
                                   ("lost_tick_policy", "LostTickPolicy", "slew" if self.slew else "discard")):
            self.add_property(name, type_, value, static=True)
        self._props["date"] = Property("date", "struct tm", self.get_date)

    # ---- board API
    def set_cmos(self, reg: int, value: int) -> None:
        """``rtc_set_memory``: stores a CMOS byte as is (the board's memory sizes, boot order...)."""
        if 0 <= reg <= 127:
            self.cmos[reg] = value & 0xFF

    def get_cmos(self, reg: int) -> int:
        """``rtc_get_memory``."""
        return self.cmos[reg & 0x7F]

    def get_date(self) -> dict[str, int]:
        """The ``date`` property (machine ``rtc-time``): the RTC's current date as a struct tm."""
        self._update_time()
        tm = self._get_time()
        return {"tm_year": tm.year, "tm_mon": tm.mon, "tm_mday": tm.mday, "tm_hour": tm.hour,
                "tm_min": tm.min, "tm_sec": tm.sec}

    def suspend(self) -> None:
        """The suspend notifier: CMOS 0x0F = 0xFE tells the BIOS to resume from S3."""
        self.set_cmos(0x0F, 0xFE)

    # ---- IRQ
    def _raise(self) -> bool:
        """Raises the IRQ; True when that is a new edge (our stand-in for APIC delivery)."""
        delivered = not self.irq_level
        self.irq_level = 1
        self.irq.raise_()
        return delivered

    def _lower(self) -> None:
        self.irq_level = 0
        self.irq.lower()

    # ---- time keeping
    def _running(self) -> bool:
        return not self.cmos[REG_B] & REG_B_SET and (self.cmos[REG_A] & 0x70) <= 0x20

    def _guest_ns(self) -> int:
        """The guest time in ns (uint64, as QEMU computes it)."""
        return _u64(self.base_rtc * NS_PER_SEC + self.rtc_clock.now() - self.last_update + self.offset)

    def _to_bcd(self, a: int) -> int:
        if self.cmos[REG_B] & REG_B_DM:
            return a & 0xFF
        return ((_cdiv(a, 10) << 4) | _cmod(a, 10)) & 0xFF

    def _from_bcd(self, a: int) -> int:
        if (a & 0xC0) == 0xC0:
            return -1  # alarm "don't care"
        if self.cmos[REG_B] & REG_B_DM:
            return a
        return (a >> 4) * 10 + (a & 0x0F)

    def _get_time(self) -> Tm:
        """The date the time registers hold."""
        c = self.cmos
        hour = self._from_bcd(c[RTC_HOURS] & 0x7F)
        if not c[REG_B] & REG_B_24H:
            hour %= 12
            if c[RTC_HOURS] & 0x80:
                hour += 12
        year = self._from_bcd(c[RTC_YEAR]) + self.base_year + self._from_bcd(c[RTC_CENTURY]) * 100 - 1900
        return Tm(self._from_bcd(c[RTC_SECONDS]), self._from_bcd(c[RTC_MINUTES]), hour,
                  self._from_bcd(c[RTC_DAY_OF_MONTH]), self._from_bcd(c[RTC_MONTH]) - 1, year,
                  self._from_bcd(c[RTC_DAY_OF_WEEK]) - 1)

    def _set_cmos_time(self, tm: Tm) -> None:
        """Writes ``tm`` into the time registers in the current mode."""
        c = self.cmos
        c[RTC_SECONDS] = self._to_bcd(tm.sec)
        c[RTC_MINUTES] = self._to_bcd(tm.min)
        if c[REG_B] & REG_B_24H:
            c[RTC_HOURS] = self._to_bcd(tm.hour)
        else:
            c[RTC_HOURS] = self._to_bcd(tm.hour % 12 or 12) | (0x80 if tm.hour >= 12 else 0)
        c[RTC_DAY_OF_WEEK] = self._to_bcd(tm.wday + 1)
        c[RTC_DAY_OF_MONTH] = self._to_bcd(tm.mday)
        c[RTC_MONTH] = self._to_bcd(tm.mon + 1)
        year = tm.year + 1900 - self.base_year
        c[RTC_YEAR] = self._to_bcd(_cmod(year, 100))
        c[RTC_CENTURY] = self._to_bcd(_cdiv(year, 100))

    def _set_time(self) -> None:
        """The guest set the time: the registers become the new base."""
        tm = self._get_time()
        self.base_rtc = _u64(mktimegm(tm))
        self.last_update = _u64(self.rtc_clock.now())
        if self.on_rtc_change is not None:
            self.on_rtc_change(self.rtc_clock.timedate_diff(tm))

    def _update_time(self) -> None:
        """Brings the time registers up to date (unless SET freezes them)."""
        guest_sec = _cdiv(_s64(self._guest_ns()), NS_PER_SEC)
        if not self.cmos[REG_B] & REG_B_SET:
            self._set_cmos_time(gmtime(guest_sec))

    def _set_date_from_host(self) -> None:
        tm = self.rtc_clock.get_timedate()
        self.base_rtc = _u64(mktimegm(tm))
        self.last_update = _u64(self.rtc_clock.now())
        self.offset = 0
        self._set_cmos_time(tm)

    def _update_in_progress(self) -> bool:
        if not self._running():
            return False
        expire = self.update_timer.expire
        if expire is not None and self.rtc_clock.now() >= expire - UIP_HOLD_LENGTH:
            self.cmos[REG_A] |= REG_A_UIP  # latched until the update timer runs
            return True
        return _cmod(_s64(self._guest_ns()), NS_PER_SEC) >= NS_PER_SEC - UIP_HOLD_LENGTH

    # ---- periodic interrupt
    def _periodic_ticks(self) -> int:
        if not self.cmos[REG_B] & REG_B_PIE:
            return 0
        return periodic_period_to_clock(self.cmos[REG_A] & 0x0F)

    def _periodic_update(self, current_time: int, old_period: int, period_change: bool) -> None:
        """(Re)arms the periodic timer; a rate change keeps the time since the last tick."""
        period = self.period = self._periodic_ticks()
        if not period:
            self.irq_coalesced = 0
            self.periodic_timer.cancel()
            return
        cur_clock = _muldiv64(current_time, RTC_CLOCK_RATE, NS_PER_SEC)
        lost_clock = 0
        if old_period and period_change:
            next_clock = _muldiv64(self.next_periodic_time, RTC_CLOCK_RATE, NS_PER_SEC)
            # QEMU asserts this is not negative; a restored state could break that, so clamp.
            lost_clock = max(0, cur_clock - (next_clock - old_period))
        if self.slew:
            old_coalesced = self.irq_coalesced
            lost_clock += old_coalesced * old_period
            self.irq_coalesced, lost_clock = divmod(lost_clock, period)
            self.irq_coalesced &= 0xFFFFFFFF
            if old_coalesced != self.irq_coalesced or old_period != period:
                self._coalesced_timer_update()
        else:
            lost_clock = min(lost_clock, period)  # lost ticks are dropped, time moves on
        self.next_periodic_time = _s64(periodic_clock_to_ns(cur_clock + period - lost_clock) + 1)
        self.periodic_timer.mod(self.next_periodic_time)

    def _periodic_fire(self) -> None:
        self._periodic_update(self.next_periodic_time, self.period, False)
        self.cmos[REG_C] |= REG_C_PF
        if self.cmos[REG_B] & REG_B_PIE:
            self.cmos[REG_C] |= REG_C_IRQF
            if not self.slew:
                self._raise()
                return
            if self.irq_reinject_on_ack_count >= REINJECT_ON_ACK_COUNT:
                self.irq_reinject_on_ack_count = 0
            if not self._raise():
                self.irq_coalesced += 1
                self._coalesced_timer_update()

    def _coalesced_timer_update(self) -> None:
        if not self.irq_coalesced:
            self.coalesced_timer.cancel()
            return
        parts = min(self.irq_coalesced, 7) + 1  # spread the lost ticks over the period
        self.coalesced_timer.mod(self.rtc_clock.now() + periodic_clock_to_ns(self.period // parts))

    def _coalesced_fire(self) -> None:
        if self.irq_coalesced:
            self.cmos[REG_C] |= REG_C_IRQF | REG_C_PF
            if self._raise():
                self.irq_coalesced -= 1
        self._coalesced_timer_update()

    # ---- update-ended and alarm
    def _check_update_timer(self) -> None:
        """Arms the update timer for the next second, or straight for the alarm when UF is
        already pending (nothing to report before), or stops it when nothing can change."""
        if (self.cmos[REG_A] & 0x60) == 0x60:
            self.update_timer.cancel()  # dividers in reset: no updates, no interrupts
            return
        now = self.rtc_clock.now()
        next_update = _u64(now + NS_PER_SEC - self._guest_ns() % NS_PER_SEC)
        next_alarm_sec = _s32(self._next_alarm())  # QEMU keeps it in an int
        self.next_alarm_time = _u64(next_update + (next_alarm_sec - 1) * NS_PER_SEC)
        c = self.cmos
        if not c[REG_A] & REG_A_UIP and c[REG_C] & REG_C_UF:
            if c[REG_B] & REG_B_SET or c[REG_C] & REG_C_AF:
                self.update_timer.cancel()
                return
            next_update = self.next_alarm_time
        if next_update != self.update_timer.expire:
            self.update_timer.mod(_s64(next_update))

    def _convert_hour(self, hour: int) -> int:
        hour &= 0xFF
        if not self.cmos[REG_B] & REG_B_24H:
            hour %= 12
            if self.cmos[RTC_HOURS] & 0x80:
                hour += 12
        return hour

    def _next_alarm(self) -> int:
        """Seconds from now to the next alarm match (1..86400 for sane registers)."""
        self._update_time()
        c = self.cmos
        a_sec, a_min = self._from_bcd(c[RTC_SECONDS_ALARM]), self._from_bcd(c[RTC_MINUTES_ALARM])
        a_hour = self._from_bcd(c[RTC_HOURS_ALARM])
        a_hour = -1 if a_hour == -1 else self._convert_hour(a_hour)
        cur_sec, cur_min = self._from_bcd(c[RTC_SECONDS]), self._from_bcd(c[RTC_MINUTES])
        cur_hour = self._convert_hour(self._from_bcd(c[RTC_HOURS]))
        if a_hour == -1:
            a_hour, a_min, a_sec = self._alarm_any_hour(a_min, a_sec, cur_hour, cur_min, cur_sec)
        elif cur_hour == a_hour:
            a_min, a_sec = self._alarm_this_hour(a_min, a_sec, cur_min, cur_sec)
        a_min = 0 if a_min == -1 else a_min  # remaining don't-cares match at :00
        a_sec = 0 if a_sec == -1 else a_sec
        if a_sec == 60:
            a_sec, a_min = 0, a_min + 1
        if a_min == 60:
            a_min, a_hour = 0, a_hour + 1
        a_hour = _cmod(a_hour, 24)
        sec = ((a_hour - cur_hour) * 60 + a_min - cur_min) * 60 + a_sec - cur_sec
        return sec + SEC_PER_DAY if sec <= 0 else sec

    @staticmethod
    def _alarm_any_hour(a_min: int, a_sec: int, cur_hour: int, cur_min: int, cur_sec: int) -> tuple[int, int, int]:
        """Alarm hour is don't-care: the next matching minute/second in this or the next hour."""
        a_hour = cur_hour
        if a_min == -1:
            a_min, a_sec = _alarm_any_minute(a_sec, cur_min, cur_sec)
        elif cur_min == a_min:
            if a_sec == -1:
                a_sec = cur_sec + 1
            elif cur_sec > a_sec:
                a_hour += 1
            if a_sec == 60:
                a_sec, a_hour = 0, a_hour + 1  # minutes are not don't-care: next hour
        elif cur_min > a_min:
            a_hour += 1
        return a_hour, a_min, a_sec

    @staticmethod
    def _alarm_this_hour(a_min: int, a_sec: int, cur_min: int, cur_sec: int) -> tuple[int, int]:
        """The alarm hour is the current one: the next matching minute/second in it."""
        if a_min == -1:
            a_min, a_sec = _alarm_any_minute(a_sec, cur_min, cur_sec)
            if a_sec == 60:
                a_sec, a_min = 0, a_min + 1
            a_min = _cmod(a_min, 60)  # the hour is fixed: wrap to the next day
        elif cur_min == a_min:
            if a_sec == -1:
                a_sec = cur_sec + 1
            a_sec = _cmod(a_sec, 60)
        return a_min, a_sec

    def _update_fire(self) -> None:
        """The update cycle ended: UF, AF when the alarm time is reached, IRQ if enabled."""
        if (self.cmos[REG_A] & 0x60) == 0x60:
            return  # cannot happen: entering divider reset stops the timer
        self._update_time()
        self.cmos[REG_A] &= ~REG_A_UIP
        irqs = REG_C_UF
        if _u64(self.rtc_clock.now()) >= self.next_alarm_time:
            irqs |= REG_C_AF
        new_irqs = irqs & ~self.cmos[REG_C]
        self.cmos[REG_C] |= irqs
        if new_irqs & self.cmos[REG_B]:
            self.cmos[REG_C] |= REG_C_IRQF
            self._raise()
        self._check_update_timer()

    # ---- port I/O
    def _read(self, offset: int, size: int) -> int:
        self.rtc_clock.run_due()
        if not offset & 1:
            return 0xFF  # the index port is write-only
        if self.index == RTC_PS2_CENTURY:
            self.index = RTC_CENTURY
        reg = self.index
        if reg in TIME_REGS:
            if self._running():
                self._update_time()
            return self.cmos[reg]
        if reg == REG_A:
            return self.cmos[REG_A] | (REG_A_UIP if self._update_in_progress() else 0)
        if reg == REG_C:
            return self._read_reg_c()
        return self.cmos[reg]

    def _read_reg_c(self) -> int:
        ret = self.cmos[REG_C]
        self._lower()
        self.cmos[REG_C] = 0
        if ret & (REG_C_UF | REG_C_AF):
            self._check_update_timer()
        if (self.irq_coalesced and self.cmos[REG_B] & REG_B_PIE
                and self.irq_reinject_on_ack_count < REINJECT_ON_ACK_COUNT):
            # driftfix=slew: a lost periodic tick is re-injected as soon as the last one is acked
            self.irq_reinject_on_ack_count += 1
            self.cmos[REG_C] |= REG_C_IRQF | REG_C_PF
            if self._raise():
                self.irq_coalesced -= 1
        return ret

    def _write(self, offset: int, value: int, size: int) -> None:
        self.rtc_clock.run_due()
        value &= 0xFF
        if not offset & 1:
            self.index = value & 0x7F  # bit 7 is the NMI mask, not part of the index
            return
        if self.index == RTC_PS2_CENTURY:
            self.index = RTC_CENTURY
        reg = self.index
        if reg in ALARM_REGS:
            self.cmos[reg] = value
            self._check_update_timer()
        elif reg in TIME_REGS:
            self.cmos[reg] = value
            if self._running():  # in SET mode or divider reset the new time counts later
                self._set_time()
                self._check_update_timer()
        elif reg == REG_A:
            self._write_reg_a(value)
        elif reg == REG_B:
            self._write_reg_b(value)
        elif reg not in (REG_C, REG_D):  # C and D are read-only
            self.cmos[reg] = value

    def _write_reg_a(self, value: int) -> None:
        c = self.cmos
        rate_changed = bool((c[REG_A] ^ value) & 0x0F)
        old_period = self._periodic_ticks()
        if (value & 0x60) == 0x60:
            if self._running():
                self._update_time()
            c[REG_A] &= ~REG_A_UIP
        elif (c[REG_A] & 0x60) == 0x60 and (value & 0x70) <= 0x20:
            # Leaving divider reset: the first update comes half a second later.
            if not c[REG_B] & REG_B_SET:
                self.offset = 500_000_000
                self._set_time()
            c[REG_A] &= ~REG_A_UIP
        c[REG_A] = (value & ~REG_A_UIP) | (c[REG_A] & REG_A_UIP)  # UIP is read-only
        if rate_changed:
            self._periodic_update(self.rtc_clock.now(), old_period, True)
        self._check_update_timer()

    def _write_reg_b(self, value: int) -> None:
        c = self.cmos
        pie_changed = bool((c[REG_B] ^ value) & REG_B_PIE)
        old_period = self._periodic_ticks()
        if value & REG_B_SET:
            if self._running():
                self._update_time()  # freeze the registers at the current time
            c[REG_A] &= ~REG_A_UIP
            value &= ~REG_B_UIE
        elif c[REG_B] & REG_B_SET and (c[REG_A] & 0x70) <= 0x20:
            # Leaving SET mode: the set time counts from now, within the current second.
            self.offset = self._guest_ns() % NS_PER_SEC
            self._set_time()
        if value & c[REG_C] & REG_C_MASK:
            c[REG_C] |= REG_C_IRQF  # a flag already set whose interrupt is now enabled
            self._raise()
        else:
            c[REG_C] &= ~REG_C_IRQF
            self._lower()
        c[REG_B] = value
        if pie_changed:
            self._periodic_update(self.rtc_clock.now(), old_period, True)
        self._check_update_timer()

    # ---- reset and migration
    def reset(self) -> None:
        """QEMU's rtc reset: interrupt enables and flags clear, the clock and NVRAM keep running
        (CMOS 0x0F is cleared unless it records an S3 suspend)."""
        if self.cmos[0x0F] != 0xFE:
            self.cmos[0x0F] = 0
        self.cmos[REG_B] &= ~(REG_B_PIE | REG_B_AIE | REG_B_SQWE)
        self.cmos[REG_C] &= ~(REG_C_UF | REG_C_IRQF | REG_C_PF | REG_C_AF)
        self._check_update_timer()
        if self.slew:
            self.irq_coalesced = self.irq_reinject_on_ack_count = 0
        self._lower()

    def save_vmstate(self) -> dict:
        """The ``mc146818rtc`` fields (the time registers are brought up to date first)."""
        self._update_time()
        expiry = {name: -1 if t.expire is None else t.expire
                  for name, t in (("periodic_timer", self.periodic_timer), ("update_timer", self.update_timer))}
        return {"cmos_data": bytes(self.cmos), "cmos_index": self.index, **expiry,
                "next_periodic_time": self.next_periodic_time, "irq_coalesced": self.irq_coalesced,
                "period": self.period, "base_rtc": self.base_rtc, "last_update": self.last_update,
                "offset": self.offset, "next_alarm_time": self.next_alarm_time,
                "irq_reinject_on_ack_count": self.irq_reinject_on_ack_count}

    def load_vmstate(self, state: dict) -> None:
        """Takes over a loaded ``mc146818rtc`` section (``state["version_id"]``: its version)."""
        self.cmos[:] = bytes(state["cmos_data"]).ljust(128, b"\0")[:128]
        self.index = int(state["cmos_index"]) & 0x7F
        for name in ("next_periodic_time", "irq_coalesced", "period", "base_rtc", "last_update", "offset",
                     "next_alarm_time", "irq_reinject_on_ack_count"):
            setattr(self, name, int(state.get(name, 0)))
        for name, timer in (("periodic_timer", self.periodic_timer), ("update_timer", self.update_timer)):
            expire = int(state.get(name, -1))
            if expire == -1:
                timer.cancel()
            else:
                timer.mod(expire)
        self._post_load(int(state.get("version_id", VMSTATE_RTC.version_id)))

    def _post_load(self, version_id: int) -> None:
        if version_id <= 2 or self.rtc_clock.kind == "rt":
            # Older streams (and a monotonic clock, meaningless across hosts) restart from the registers.
            self._set_time()
            self.offset = 0
            self._check_update_timer()
        self.period = self._periodic_ticks()
        now = self.rtc_clock.now()
        if now < self.next_periodic_time or now > self.next_periodic_time + MAX_CLOCK_JUMP:
            self._periodic_update(now, self.period, False)
        if version_id >= 2 and self.slew:
            self._coalesced_timer_update()

