"""The MC146818 RTC (emu.devices.rtc) in-process, on a manual virtual clock.

The scenarios port QEMU 7.2's tests/qtest/rtc-test.c (which starts QEMU with ``-rtc clock=vm``);
the expected register values, timer expiries and error texts were checked against QEMU 7.2.
"""
from __future__ import annotations

import calendar
import random
import time

import pytest
from vmstate_source import ByteSource

from emu.clock import VirtualClock
from emu.devices.rtc import (
    RTC,
    UIP_HOLD_LENGTH,
    VMSTATE_RTC,
    RtcClock,
    RtcOptionError,
    RtcOptions,
    Tm,
    mktimegm,
    parse_rtc_option,
    periodic_clock_to_ns,
    periodic_period_to_clock,
)
from emu.irq import IRQ
from emu.memory import AddressSpace, MemoryRegion
from emu.migration import vmstate as vms

NS = 1_000_000_000
SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM = 0, 1, 2, 3, 4, 5
DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR, CENTURY = 6, 7, 8, 9, 0x32
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
UIP, SET, PIE, AIE, UIE, DM, H24 = 0x80, 0x80, 0x40, 0x20, 0x10, 0x04, 0x02
IRQF, PF, AF, UF = 0x80, 0x40, 0x20, 0x10


class Bench:
    """An RTC on ports 0x70/0x71 of its own I/O space, a manual virtual clock and its IRQ level."""

    def __init__(self, options: RtcOptions | None = None, base_year: int = 2000) -> None:
        self.clock = VirtualClock(manual=True)
        self.clock.enable(True)
        self.rtc = RTC(self.clock, options or RtcOptions(clock="vm"), base_year=base_year)
        self.level = 0
        self.edges = 0
        self.rtc.irq.connect(IRQ(self._on_irq, 8))
        root = MemoryRegion.container("io", 0x10000)
        root.add_subregion(0x70, self.rtc.io)
        self.io = AddressSpace("io", root)

    def _on_irq(self, n: int, level: int) -> None:
        if level and not self.level:
            self.edges += 1
        self.level = level

    def inb(self, port: int) -> int:
        return self.io.read_uint(port, 1)

    def outb(self, port: int, value: int) -> None:
        self.io.write_uint(port, value, 1)

    def read(self, reg: int) -> int:
        self.outb(0x70, reg)
        return self.inb(0x71)

    def write(self, reg: int, value: int) -> None:
        self.outb(0x70, reg)
        self.outb(0x71, value)

    def step(self, ns: int | None) -> int:
        return self.clock.step(ns)

    # rtc-test.c helpers
    def set_time(self, mode: int, h: int, m: int, s: int) -> None:
        self.write(REG_B, mode)
        self.write(REG_A, 0x76)
        for reg, value in ((HOURS, h), (MINUTES, m), (SECONDS, s)):
            self.write(reg, value)
        self.write(REG_A, 0x26)

    def set_datetime_bcd(self, h: int, mi: int, s: int, d: int, mo: int, y: int) -> None:
        for reg, value in ((HOURS, h), (MINUTES, mi), (SECONDS, s), (YEAR, y & 0xFF), (CENTURY, y >> 8),
                           (MONTH, mo), (DAY_OF_MONTH, d)):
            self.write(reg, value)

    def time(self) -> tuple[int, int, int]:
        return self.read(HOURS), self.read(MINUTES), self.read(SECONDS)

    def datetime_bcd(self) -> tuple[int, ...]:
        regs = (HOURS, MINUTES, SECONDS, DAY_OF_MONTH, MONTH, YEAR, CENTURY)
        return tuple(self.read(r) for r in regs)


@pytest.fixture
def b() -> Bench:
    return Bench()


BCD_2011 = (0x02, 0x04, 0x58, 0x02, 0x02, 0x11, 0x20)


# ---------------------------------------------------------------- -rtc option

def test_rtc_option_defaults_and_values() -> None:
    assert parse_rtc_option() == RtcOptions("utc", None, "host", "none")
    o = parse_rtc_option("base=localtime,clock=vm,driftfix=slew")
    assert (o.base, o.clock, o.driftfix) == ("localtime", "vm", "slew")
    assert parse_rtc_option("base=2006-06-17T16:01:21").start == 1150560081
    assert parse_rtc_option("base=2006-06-17").start == 1150502400
    # sscanf semantics: a short time falls back to the date form; junk after a match is ignored
    assert parse_rtc_option("base=2006-06-17T16:01").start == 1150502400
    assert parse_rtc_option("base=2006-6-7T1:2:3junk").start == mktimegm(Tm(3, 2, 1, 7, 5, 106))
    # occurrences merge; the last value wins before anything is checked
    assert parse_rtc_option("base=foo", "base=utc,clock=rt").clock == "rt"
    assert parse_rtc_option("clock=vm,").clock == "vm"


@pytest.mark.parametrize("arg, message, hint", [
    ("base=foo", "invalid datetime format", "valid formats: '2006-06-17T16:01:21' or '2006-06-17'\n"),
    ("base=1969-12-31T23:59:59", "invalid datetime format",
     "valid formats: '2006-06-17T16:01:21' or '2006-06-17'\n"),  # mktimegm's -1 means failure
    ("clock=bad", "invalid option value 'bad'", ""),
    ("clock=VM", "invalid option value 'VM'", ""),
    ("driftfix=bad", "invalid option value 'bad'", ""),
    ("foo=1", "-rtc foo=1: Invalid parameter 'foo'", ""),
    ("=x", "-rtc =x: Invalid parameter ''", ""),
])
def test_rtc_option_errors(arg: str, message: str, hint: str) -> None:
    with pytest.raises(RtcOptionError) as e:
        parse_rtc_option(arg)
    assert isinstance(e.value, ValueError)
    assert (str(e.value), e.value.hint) == (message, hint)


def test_rtc_option_short_form_booleans() -> None:
    with pytest.raises(RtcOptionError) as e:
        parse_rtc_option("noclock")
    assert str(e.value) == "invalid option value 'off'"
    assert e.value.warnings == [("-rtc noclock: warning: short-form boolean option 'noclock' deprecated",
                                 "Please use clock=off instead\n")]
    with pytest.raises(RtcOptionError) as e:
        parse_rtc_option("utc")
    assert str(e.value) == "-rtc utc: Invalid parameter 'utc'"
    assert e.value.warnings[0][0] == "-rtc utc: warning: short-form boolean option 'utc' deprecated"


# ---------------------------------------------------------------- power-on state and time base

def test_power_on_registers_from_datetime_base() -> None:
    b = Bench(RtcOptions(base="datetime", start=1150560081, clock="vm"))  # Sat 2006-06-17 16:01:21
    assert [b.read(r) for r in (REG_A, REG_B, REG_C, REG_D)] == [0x26, 0x02, 0x00, 0x80]
    assert [b.read(r) for r in (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR, CENTURY)] == \
        [0x21, 0x01, 0x16, 0x07, 0x17, 0x06, 0x06, 0x20]
    b.step(NS - 1)
    assert b.read(SECONDS) == 0x21
    b.step(1)
    assert b.read(SECONDS) == 0x22
    assert b.rtc.get_date() == {"tm_year": 106, "tm_mon": 5, "tm_mday": 17, "tm_hour": 16, "tm_min": 1, "tm_sec": 22}


def _rtc_seconds(b: Bench) -> int:
    b.write(REG_B, H24 | DM)
    return calendar.timegm((2000 + b.read(YEAR), b.read(MONTH), b.read(DAY_OF_MONTH), b.read(HOURS),
                            b.read(MINUTES), b.read(SECONDS)))


@pytest.mark.parametrize("clock", ["vm", "host", "rt"])
def test_utc_base_follows_host_time(clock: str) -> None:
    b = Bench(RtcOptions(clock=clock))
    assert abs(_rtc_seconds(b) - time.time()) <= 2


def test_localtime_base() -> None:
    b = Bench(RtcOptions(base="localtime", clock="vm"))
    local_now = calendar.timegm(time.localtime())
    assert abs(_rtc_seconds(b) - local_now) <= 2


class FakeHost:
    """Stands in for the host clocks (RtcClock.host_ns / mono_ns)."""

    def __init__(self) -> None:
        self.ns = 1_300_000_000 * NS + 250_000_000

    def __call__(self) -> int:
        return self.ns


def test_host_clock_counts_host_time_and_keeps_guest_set_time(monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost()
    monkeypatch.setattr(RtcClock, "host_ns", staticmethod(host))
    b = Bench(RtcOptions(clock="host"))
    b.write(REG_B, H24)
    b.write(REG_A, 0x76)
    b.set_datetime_bcd(0x02, 0x04, 0x58, 0x02, 0x02, 0x2011)
    b.write(REG_A, 0x26)
    b.step(10 * NS)  # virtual time does not drive clock=host
    assert b.datetime_bcd() == BCD_2011
    host.ns += 500_000_000  # the first update comes 500 ms after the divider reset
    assert b.read(SECONDS) == 0x59
    host.ns += 3600 * NS
    assert b.datetime_bcd() == (0x03, 0x04, 0x59, 0x02, 0x02, 0x11, 0x20)


def test_host_clock_timers_catch_up_on_access(monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost()
    monkeypatch.setattr(RtcClock, "host_ns", staticmethod(host))
    b = Bench(RtcOptions(clock="host"))
    b.read(REG_C)
    b.write(REG_B, H24 | UIE)
    host.ns += NS - 1  # the RTC's second starts at power-on, not at a host second
    assert b.read(REG_C) == 0
    host.ns += 1
    assert b.level == 0  # no virtual time passed and no access yet: the timer has not run
    assert b.read(REG_C) == IRQF | UF
    assert b.level == 0  # raised by the catch-up, lowered by the read of C
    assert b.edges == 1


def test_host_clock_timers_are_no_virtual_deadline_under_qtest(monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost()
    monkeypatch.setattr(RtcClock, "host_ns", staticmethod(host))
    b = Bench(RtcOptions(clock="host"))
    b.write(REG_B, H24 | UIE)
    assert b.rtc.update_timer.pending
    assert b.clock.deadline() is None  # clock_step without a length must not stop at it
    assert b.rtc.rtc_clock.host_timeout() == 1.0
    assert Bench(RtcOptions(clock="vm")).clock.deadline() == NS


def test_host_clock_timers_bridge_onto_a_host_driven_virtual_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeHost()
    monkeypatch.setattr(RtcClock, "host_ns", staticmethod(host))
    clock = VirtualClock(manual=False)
    clock.enable(True)
    rtc = RTC(clock, RtcOptions(clock="host"))
    assert rtc.update_timer.pending
    deadline = clock.deadline()
    assert deadline is not None and 0 < deadline - clock.now() <= NS
    clock.enable(False)


def test_rt_clock_starts_at_host_date_and_counts_monotonic(monkeypatch: pytest.MonkeyPatch) -> None:
    mono = FakeHost()
    mono.ns = 5 * NS
    monkeypatch.setattr(RtcClock, "mono_ns", staticmethod(mono))
    b = Bench(RtcOptions(base="datetime", start=1150560081, clock="rt"))
    assert b.read(SECONDS) == 0x21
    mono.ns += 2 * NS
    assert (b.read(MINUTES), b.read(SECONDS)) == (0x01, 0x23)


def test_rtc_change_offset() -> None:
    b = Bench()
    offsets: list[int] = []
    b.rtc.on_rtc_change = offsets.append
    b.write(REG_B, H24 | SET)
    b.set_datetime_bcd(0x02, 0x04, 0x58, 0x02, 0x02, 0x2011)
    assert offsets == []  # SET: nothing counts until it is cleared
    b.write(REG_B, H24)
    assert len(offsets) == 1
    assert abs(offsets[0] - (mktimegm(Tm(58, 4, 2, 2, 1, 111)) - time.time())) <= 2


# ---------------------------------------------------------------- rtc-test.c: basic

def test_basic_12h_bcd(b: Bench) -> None:
    b.set_time(0, 0x81, 0x59, 0x00)
    b.step(NS)
    assert b.time() == (0x81, 0x59, 0x01)
    b.step(59 * NS)
    assert b.time() == (0x82, 0x00, 0x00)
    b.set_time(0, 0x09, 0x59, 0x59)
    b.step(60 * NS)
    assert b.time() == (0x10, 0x00, 0x59)
    for start, after in ((0x12, 0x01), (0x92, 0x81), (0x11, 0x92), (0x91, 0x12)):  # 12AM, 12PM, 11AM, 11PM
        b.set_time(0, start, 0x59, 0x59)
        b.step(NS)
        assert b.time() == (after, 0x00, 0x00)


def test_basic_12h_dec(b: Bench) -> None:
    b.set_time(DM, 0x81, 59, 0)
    b.step(NS)
    assert b.time() == (0x81, 59, 1)
    b.step(59 * NS)
    assert b.time() == (0x82, 0, 0)
    for start, after in ((0x8C, 0x81), (0x0C, 0x01), (0x0B, 0x8C), (0x8B, 0x0C)):
        b.set_time(DM, start, 59, 59)
        b.step(NS)
        assert b.time() == (after, 0, 0)


@pytest.mark.parametrize("mode, fmt", [(H24, lambda v: int(str(v), 16)), (H24 | DM, lambda v: v)])
def test_basic_24h(b: Bench, mode: int, fmt) -> None:
    b.set_time(mode, fmt(9), fmt(59), 0)
    b.step(NS)
    assert b.time() == (fmt(9), fmt(59), 1)
    b.step(59 * NS)
    assert b.time() == (fmt(10), 0, 0)
    b.set_time(mode, fmt(9), fmt(59), 0)
    b.step(60 * NS)
    assert b.time() == (fmt(10), 0, 0)
    b.set_time(mode, fmt(23), fmt(59), 0)
    b.step(60 * NS)
    assert b.time() == (0, 0, 0)


def test_day_month_year_roll_over(b: Bench) -> None:
    b.write(REG_B, H24)
    b.write(REG_A, 0x76)
    b.set_datetime_bcd(0x23, 0x59, 0x59, 0x28, 0x02, 0x2000)  # leap year
    b.write(REG_A, 0x26)
    b.step(NS // 2)
    assert b.datetime_bcd() == (0x00, 0x00, 0x00, 0x29, 0x02, 0x00, 0x20)
    assert b.read(DAY_OF_WEEK) == 0x03  # Tuesday
    b.write(REG_A, 0x76)
    b.set_datetime_bcd(0x23, 0x59, 0x59, 0x31, 0x12, 0x2099)
    b.write(REG_A, 0x26)
    b.step(NS // 2)
    assert b.datetime_bcd() == (0x00, 0x00, 0x00, 0x01, 0x01, 0x00, 0x21)


# ---------------------------------------------------------------- rtc-test.c: set-year

def test_set_year_20xx(b: Bench) -> None:
    b.write(REG_B, H24)
    b.write(REG_A, 0x76)
    for reg, value in ((YEAR, 0x11), (CENTURY, 0x20), (MONTH, 0x02), (DAY_OF_MONTH, 0x02), (HOURS, 0x02),
                       (MINUTES, 0x04), (SECONDS, 0x58)):
        b.write(reg, value)
    b.write(REG_A, 0x26)
    for year in (0x11, 0x80, 0x11):  # 2080: no year-2038 overflow
        b.write(REG_A, 0x76)
        b.write(YEAR, year)
        b.write(REG_A, 0x26)
        h, m, s, d, mo, y, c = b.datetime_bcd()
        assert (h, m, d, mo, y, c) == (0x02, 0x04, 0x02, 0x02, year, 0x20)
        assert s >= 0x58


def test_set_year_1980_and_ps2_century_alias(b: Bench) -> None:
    b.write(REG_B, H24)
    b.write(REG_A, 0x76)
    b.set_datetime_bcd(0x02, 0x04, 0x58, 0x02, 0x02, 0x1980)
    b.write(REG_A, 0x26)
    assert b.datetime_bcd() == (0x02, 0x04, 0x58, 0x02, 0x02, 0x80, 0x19)
    b.outb(0x70, 0x37)  # IBM PS/2 century byte: an alias of 0x32 that moves the index there
    assert b.inb(0x71) == 0x19
    b.outb(0x71, 0x20)
    assert b.read(CENTURY) == 0x20 and b.read(YEAR) == 0x80


def test_base_year_1980_property() -> None:
    b = Bench(RtcOptions(base="datetime", start=1150560081, clock="vm"), base_year=1980)
    assert (b.read(YEAR), b.read(CENTURY)) == (0x26, 0x00)  # 2006 - 1980


# ---------------------------------------------------------------- rtc-test.c: alarm

def test_alarm_interrupt(b: Bench) -> None:
    b.write(REG_B, H24 | DM)
    assert b.level == 0
    b.read(REG_C)
    b.write(SECONDS_ALARM, (b.read(SECONDS) + 2) % 60)
    b.write(MINUTES_ALARM, 0xC0)
    b.write(HOURS_ALARM, 0xC0)
    b.write(REG_B, b.read(REG_B) | AIE)
    for _ in range(4):
        if b.level:
            break
        b.step(NS)
    assert b.level == 1
    assert b.read(REG_C) & AF
    assert b.level == 0
    assert b.read(REG_C) == 0


def _set_alarm_case(b: Bench, mode: int, alarm_hour: int, hour: int) -> None:
    b.write(REG_B, mode)
    b.write(REG_A, 0x76)
    b.write(HOURS_ALARM, alarm_hour)
    b.write(HOURS, hour)
    b.write(MINUTES, 0x59 if hour == 0x81 else 0)
    b.write(SECONDS, 0)
    b.read(REG_C)
    b.write(REG_A, 0x26)


def test_alarm_am_pm(b: Bench) -> None:
    b.write(MINUTES_ALARM, 0xC0)
    b.write(SECONDS_ALARM, 0xC0)
    _set_alarm_case(b, 0, 0x82, 0x81)  # BCD 12 h: alarm at 2 PM, time 1:59 PM
    b.step(60 * NS)
    assert b.read(HOURS) == 0x82
    assert b.read(REG_C) & AF
    _set_alarm_case(b, DM, 0x82, 3)  # binary 12 h: 3 AM, alarm 2 PM
    b.step(3600 * 11 * NS)
    assert b.read(HOURS) == 0x82
    assert b.read(REG_C) & AF
    _set_alarm_case(b, DM, 2, 3)  # alarm 2 AM must not match 2 PM
    b.step(3600 * 11 * NS)
    assert b.read(HOURS) == 0x82
    assert b.read(REG_C) & AF == 0


def test_alarm_exact_time_and_update_irq(b: Bench) -> None:
    b.write(REG_B, H24)
    b.write(REG_A, 0x76)
    b.set_datetime_bcd(0x10, 0x00, 0x00, 0x01, 0x01, 0x2020)
    b.write(SECONDS_ALARM, 0x03)
    b.write(MINUTES_ALARM, 0x00)
    b.write(HOURS_ALARM, 0x10)
    b.write(REG_A, 0x26)  # time counts from 10:00:00.5
    b.write(REG_B, H24 | AIE)
    b.step(2 * NS + NS // 2 - 1)
    assert b.level == 0
    b.step(1)
    assert b.level == 1 and b.read(SECONDS) == 0x03
    assert b.read(REG_C) == IRQF | AF | UF
    b.write(REG_B, H24 | UIE)
    b.step(NS - 1)
    assert b.level == 0
    b.step(1)
    assert b.level == 1
    assert b.read(REG_C) == IRQF | UF


def test_enabling_an_interrupt_whose_flag_is_set_raises_at_once(b: Bench) -> None:
    b.read(REG_C)
    b.step(NS)  # UF is set, UIE off: no IRQ
    assert b.level == 0
    b.write(REG_B, H24 | UIE)
    assert b.level == 1 and b.read(REG_C) == IRQF | UF
    b.write(REG_B, H24 | SET | UIE)  # SET drops UIE
    assert b.read(REG_B) == H24 | SET


# ---------------------------------------------------------------- rtc-test.c: update

def test_register_b_set_flag(b: Bench) -> None:
    if b.read(REG_A) & UIP:
        b.step(UIP_HOLD_LENGTH + NS // 5)
    assert b.read(REG_A) & UIP == 0
    b.write(REG_B, H24 | SET)
    b.set_datetime_bcd(0x02, 0x04, 0x58, 0x02, 0x02, 0x2011)
    assert b.datetime_bcd() == BCD_2011
    b.step(NS)
    assert b.datetime_bcd() == BCD_2011  # SET holds the time
    b.write(REG_B, b.read(REG_B) & ~SET)
    assert b.datetime_bcd() == BCD_2011
    b.step(NS)
    assert b.datetime_bcd() == (0x02, 0x04, 0x59, 0x02, 0x02, 0x11, 0x20)


def test_divider_reset(b: Bench) -> None:
    b.write(REG_B, H24)
    b.write(REG_A, 0x76)
    b.set_datetime_bcd(0x02, 0x04, 0x58, 0x02, 0x02, 0x2011)
    assert b.datetime_bcd() == BCD_2011
    b.step(NS)
    assert b.datetime_bcd() == BCD_2011
    b.write(REG_A, 0x26)  # the first update ends 500 ms after the divider reset
    b.step(500_000_000 - UIP_HOLD_LENGTH - 1)
    assert b.read(REG_A) & UIP == 0
    assert b.datetime_bcd() == BCD_2011
    b.step(1)
    assert b.read(REG_A) == 0x26 | UIP
    b.step(UIP_HOLD_LENGTH)
    assert b.read(REG_A) == 0x26
    assert b.datetime_bcd() == (0x02, 0x04, 0x59, 0x02, 0x02, 0x11, 0x20)


def test_uip_stuck(b: Bench) -> None:
    b.write(REG_B, H24)
    b.write(REG_A, 0x76)
    b.set_datetime_bcd(0x02, 0x04, 0x58, 0x02, 0x02, 0x2011)
    b.write(REG_A, 0x26)
    b.read(REG_C)
    b.step(500_000_000)
    assert b.read(REG_A) & UIP == 0
    assert b.datetime_bcd() == (0x02, 0x04, 0x59, 0x02, 0x02, 0x11, 0x20)
    b.write(HOURS_ALARM, 0x02)  # UF is set: the update timer now aims at the alarm
    b.write(MINUTES_ALARM, 0xC0)
    b.write(SECONDS_ALARM, 0xC0)
    b.step(NS - UIP_HOLD_LENGTH // 2)
    assert b.read(REG_A) & UIP  # latched: the alarm fires soon
    b.write(HOURS_ALARM, 0x03)  # moving the alarm away must not leave UIP stuck
    b.step(UIP_HOLD_LENGTH)
    assert b.read(REG_A) & UIP == 0


# ---------------------------------------------------------------- rtc-test.c: periodic

def test_periodic_interrupt_rate_switching(b: Bench) -> None:
    b.write(REG_B, b.read(REG_B) & ~(PIE | AIE | UIE))
    b.write(REG_A, 13)  # 8 Hz
    b.write(REG_B, b.read(REG_B) | PIE)
    start = now = b.step(None)
    for _ in range(50):
        for code in (13, 15):  # 8 Hz, 2 Hz
            b.write(REG_A, code)
            while not b.level:
                now = b.step(None)
            assert b.read(REG_C) & PF
    expected = periodic_clock_to_ns(50 * (periodic_period_to_clock(13) + periodic_period_to_clock(15)))
    assert abs((now - start) - expected) <= NS // 2


def test_periodic_interrupt_exact_period(b: Bench) -> None:
    b.write(REG_A, 0x2F)  # 2 Hz
    b.write(REG_B, H24 | PIE)
    assert b.rtc.periodic_timer.expire == 500_000_001
    b.step(500_000_000)
    assert b.level == 0
    b.step(1)
    assert b.level == 1
    assert b.read(REG_C) == IRQF | PF and b.level == 0
    b.write(REG_B, H24)  # PIE off: the timer stops
    assert not b.rtc.periodic_timer.pending
    assert periodic_period_to_clock(1) == 128 and periodic_period_to_clock(3) == 4  # 256 Hz, 8192 Hz


def test_periodic_flag_without_interrupt_enable(b: Bench) -> None:
    b.write(REG_A, 0x2F)
    b.write(REG_B, H24 | PIE)
    b.rtc.reset()  # clears PIE but the running timer still sets PF once
    b.step(NS // 2 + 1)
    assert b.level == 0
    assert b.read(REG_C) == PF
    assert not b.rtc.periodic_timer.pending


def test_driftfix_slew_reinjects_unacknowledged_ticks() -> None:
    b = Bench(RtcOptions(clock="vm", driftfix="slew"))
    b.write(REG_A, 0x2E)  # 4 Hz
    b.write(REG_B, H24 | PIE)
    b.step(NS // 4 + 1)
    assert b.edges == 1
    b.step(NS // 4)  # a second tick while the first is not acknowledged: it is coalesced
    assert b.rtc.irq_coalesced == 1
    assert b.read(REG_C) == IRQF | PF
    assert b.level == 1 and b.edges == 2  # re-injected on the acknowledgement
    assert b.rtc.irq_coalesced == 0
    plain = Bench()
    plain.write(REG_A, 0x2E)
    plain.write(REG_B, H24 | PIE)
    plain.step(NS // 2 + 1)
    assert plain.read(REG_C) == IRQF | PF
    assert plain.level == 0 and plain.edges == 1


# ---------------------------------------------------------------- ports, NVRAM, reset

def test_ports_nvram_and_read_only_registers(b: Bench) -> None:
    assert b.inb(0x70) == 0xFF  # the index port reads as 0xff
    b.write(0x40, 0x5A)
    b.write(0x7F, 0xA5)
    assert (b.read(0x40), b.read(0x7F)) == (0x5A, 0xA5)
    b.outb(0x70, 0x80 | REG_A)  # bit 7 masks NMIs; the index is the low 7 bits
    assert b.inb(0x71) & 0x7F == 0x26
    b.write(REG_C, 0xFF)
    b.write(REG_D, 0x00)
    assert (b.read(REG_C), b.read(REG_D)) == (0x00, 0x80)
    b.write(REG_A, 0xA6)  # UIP cannot be written
    assert b.rtc.cmos[REG_A] == 0x26
    b.io.write_uint(0x70, 0x3355, 2)  # a word access is two byte accesses: index 0x55, data 0x33
    assert b.read(0x55) == 0x33
    b.outb(0x70, 0x55)
    assert b.io.read_uint(0x70, 2) == 0x33FF
    b.rtc.set_cmos(0x10, 0x1FF)
    assert b.rtc.get_cmos(0x10) == 0xFF and b.read(0x10) == 0xFF


def test_reset(b: Bench) -> None:
    b.write(0x0F, 0x05)
    b.write(0x20, 0x77)
    b.write(REG_A, 0x2F)
    b.write(REG_B, H24 | DM | PIE | AIE | UIE | 0x08)
    b.step(NS)
    assert b.level == 1
    b.rtc.reset()
    assert b.level == 0
    assert (b.read(REG_A), b.read(REG_B), b.read(REG_C)) == (0x2F, H24 | DM | UIE, 0)
    assert (b.read(0x0F), b.read(0x20)) == (0x00, 0x77)
    b.rtc.suspend()
    b.rtc.reset()
    assert b.read(0x0F) == 0xFE  # an S3 resume marker survives reset


def test_fuzz_registers() -> None:
    rng = random.Random(1234)
    b = Bench()
    for _ in range(1000):
        reg, val = rng.randrange(16), rng.randrange(256)
        b.write(reg, val)
        b.read(reg)
        if rng.random() < 0.05:
            b.step(rng.randrange(2 * NS))
    assert b.read(REG_D) == 0x80
    b.rtc.reset()
    b.set_time(H24, 0x12, 0x00, 0x00)  # still a working clock
    b.write(REG_B, H24)
    b.step(NS // 2 + 2 * NS)  # 12:00:00.5 when the divider restarts
    assert b.time() == (0x12, 0x00, 0x03)


# ---------------------------------------------------------------- migration

#: QEMU 7.2's vmdesc for the section (a ``-M pc`` migration stream)
QEMU_VMDESC_FIELDS = [
    ("cmos_data", "buffer", 128), ("cmos_index", "uint8", 1), ("unused[0]", "unused_buffer", 28),
    ("periodic_timer", "timer", 8), ("next_periodic_time", "int64", 8), ("unused[1]", "unused_buffer", 24),
    ("irq_coalesced", "uint32", 4), ("period", "uint32", 4), ("base_rtc", "uint64", 8),
    ("last_update", "uint64", 8), ("offset", "int64", 8), ("update_timer", "timer", 8),
    ("next_alarm_time", "uint64", 8),
]


def test_vmstate_layout_matches_qemu() -> None:
    desc = vms.vmdesc_fields(VMSTATE_RTC)
    assert (desc["vmsd_name"], desc["version"]) == ("mc146818rtc", 3)
    assert [(f["name"], f["type"], f["size"]) for f in desc["fields"]] == QEMU_VMDESC_FIELDS
    rtc = Bench().rtc
    assert rtc.vmstate_id() == ("mc146818rtc", 0)
    assert len(vms.save_state(VMSTATE_RTC, rtc.save_vmstate())) == 245  # no subsection by default


def _qemu_migration_scenario(b: Bench) -> None:
    b.write(REG_B, 0x02)
    b.write(REG_A, 0x76)
    b.set_datetime_bcd(0x02, 0x04, 0x58, 0x02, 0x02, 0x2011)
    b.write(REG_A, 0x2D)
    b.write(REG_B, 0x42)
    b.write(SECONDS_ALARM, 0x05)
    b.write(MINUTES_ALARM, 0xC0)
    b.write(HOURS_ALARM, 0xC0)
    b.step(1_700_000_123)
    b.write(REG_B, 0x62)
    b.step(333_333_333)
    b.outb(0x70, 0x37)


def test_vmstate_values_match_qemu() -> None:
    b = Bench()
    _qemu_migration_scenario(b)
    st = b.rtc.save_vmstate()
    # what QEMU 7.2 put in its stream after the same qtest commands
    assert {k: st[k] for k in ("cmos_index", "periodic_timer", "next_periodic_time", "irq_coalesced", "period",
                               "base_rtc", "last_update", "offset", "update_timer", "next_alarm_time")} == {
        "cmos_index": 0x37, "periodic_timer": 2125000001, "next_periodic_time": 2125000001, "irq_coalesced": 0,
        "period": 4096, "base_rtc": 1296612298, "last_update": 0, "offset": 500000000,
        "update_timer": 6500000000, "next_alarm_time": 6500000000}
    assert st["cmos_data"][:14] == bytes([0x00, 0x05, 0x05, 0xC0, 0x02, 0xC0, 0x04, 0x02, 0x02, 0x11,
                                          0x2D, 0x62, 0xD0, 0x80])


def test_vmstate_round_trip_continues_the_clock() -> None:
    src = Bench()
    _qemu_migration_scenario(src)
    src.rtc.irq_reinject_on_ack_count = 3  # present only when non-zero, as a subsection
    data = vms.save_state(VMSTATE_RTC, src.rtc.save_vmstate())
    assert b"mc146818rtc/irq_reinject_on_ack_count" in data
    dst = Bench()
    dst.clock.advance_to(src.clock.now())
    state: dict = {}
    assert vms.load_state(ByteSource(data), VMSTATE_RTC, state, 3, vms.LoadContext()) == 0
    dst.rtc.load_vmstate(state)
    assert dst.rtc.irq_reinject_on_ack_count == 3
    assert dst.rtc.update_timer.expire == 6500000000
    # QEMU's post_load re-arms the periodic timer from "now" when its expiry lies ahead
    now_clock = src.clock.now() * 32768 // NS
    assert dst.rtc.periodic_timer.expire == periodic_clock_to_ns(now_clock + 4096) + 1
    for bench in (src, dst):
        bench.step(NS)
    assert src.datetime_bcd() == dst.datetime_bcd() == (0x02, 0x05, 0x01, 0x02, 0x02, 0x11, 0x20)
    assert src.read(REG_C) == dst.read(REG_C) == IRQF | PF | UF
    for bench in (src, dst):
        bench.step(6_500_000_000 - bench.clock.now())  # the alarm (hh:mm:05) is due at 6.5 s
    assert src.read(REG_C) == dst.read(REG_C) == IRQF | PF | AF | UF


def test_vmstate_version_1_restarts_from_registers() -> None:
    src = Bench()
    _qemu_migration_scenario(src)
    state = src.rtc.save_vmstate()
    state["version_id"] = 1  # base_rtc/offset/timers are not in a version 1 stream
    state.update(base_rtc=0, last_update=0, offset=0, update_timer=-1)
    dst = Bench()
    dst.rtc.load_vmstate(state)
    assert dst.datetime_bcd() == (0x02, 0x05, 0x00, 0x02, 0x02, 0x11, 0x20)
    assert dst.rtc.update_timer.pending
