"""Auto-converge: the policy (emu/migration/throttle.py) against hand-computed QEMU 9.1 sequences,
and the vCPU throttle (emu/vcpu_control.py) on the A-B guest, under Unicorn and KVM.

vCPU tests synchronise on events (serial output, the vCPU's condition), never on sleeps; where a
sleep must be shown to be cut short, the throttle timeslice is made 1 s so that the 99 % sleep
lasts 99 s, far beyond any wait in the test.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest
from pc_guest import accel_params

from emu.migration.params import MigrationConfig
from emu.migration.throttle import AutoConverge

PAGE = 4096
MB = 1_000_000


# ---------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------

def policy(**params: Any) -> tuple[AutoConverge, MigrationConfig]:
    config = MigrationConfig()
    if params:
        config.set_parameters({k.replace("_", "-"): v for k, v in params.items()})
    return AutoConverge(config.parameter), config


class Run:
    """Drives a policy with syncs: ``period(dirty_pages, sent_bytes)`` is one evaluated period
    (a sync 1.5 s after the previous evaluation), whose outcome it returns."""

    def __init__(self, ac: AutoConverge) -> None:
        self.ac = ac
        self.t = 100.0
        self.sent = 0
        assert ac.on_sync(self.t, 0, 0) is None  # the setup sync starts the period

    def period(self, dirty_pages: int, sent: int) -> int | None:
        self.t += 1.5
        self.sent += sent
        return self.ac.on_sync(self.t, dirty_pages, self.sent)


HIGH = (1000, MB)  # 4.096 MB dirtied vs 1 MB sent: far above any threshold
LOW = (0, MB)


def test_defaults_throttle_on_every_second_high_period_up_to_99():
    ac, _ = policy()  # initial 20, increment 10, max 99, threshold 50
    run = Run(ac)
    outcomes = [run.period(*HIGH) for _ in range(20)]
    assert outcomes == [None, 20, None, 30, None, 40, None, 50, None, 60, None, 70, None, 80, None, 90,
                        None, 99, None, None]  # 90 + 10 capped at max-cpu-throttle 99, then unchanged
    assert ac.percentage == 99 and ac.active


def test_qemu_auto_converge_test_parameters():
    """test_migrate_auto_converge's 5/25/95: 5, 30, 55, 80, 95 (min(95, 80 + 25))."""
    ac, _ = policy(cpu_throttle_initial=5, cpu_throttle_increment=25, max_cpu_throttle=95)
    run = Run(ac)
    outcomes = [run.period(*HIGH) for _ in range(12)]
    assert [o for o in outcomes if o is not None] == [5, 30, 55, 80, 95]
    assert outcomes[1::2] == [5, 30, 55, 80, 95, None]


def test_two_hits_need_not_be_consecutive():
    ac, _ = policy()
    run = Run(ac)
    assert run.period(*HIGH) is None and ac.dirty_rate_high_cnt == 1
    for _ in range(3):
        assert run.period(*LOW) is None  # a low period leaves the count alone
    assert ac.dirty_rate_high_cnt == 1
    assert run.period(*HIGH) == 20 and ac.dirty_rate_high_cnt == 0


def test_trigger_threshold_is_strictly_greater_than_sent_times_threshold():
    # threshold 50 of 1 MB sent = 500000 bytes; 122 pages = 499712, 123 pages = 503808
    ac, _ = policy()
    run = Run(ac)
    assert run.period(122, MB) is None and ac.dirty_rate_high_cnt == 0
    assert run.period(123, MB) is None and ac.dirty_rate_high_cnt == 1
    # exactly equal is not high: 100 % of 409600 bytes sent = 100 pages
    ac, _ = policy(throttle_trigger_threshold=100)
    run = Run(ac)
    assert run.period(100, 100 * PAGE) is None and ac.dirty_rate_high_cnt == 0
    assert run.period(101, 100 * PAGE) is None and ac.dirty_rate_high_cnt == 1
    # integer arithmetic: 999 bytes x 1 % = 9 bytes (9.99 truncated); 1 page is above it
    ac, _ = policy(throttle_trigger_threshold=1)
    run = Run(ac)
    assert run.period(1, 999) is None and ac.dirty_rate_high_cnt == 1


def test_nothing_sent_in_the_period_makes_any_dirtying_high():
    ac, _ = policy()
    run = Run(ac)
    assert run.period(1, 0) is None and run.period(1, 0) == 20
    assert run.period(0, 0) is None and ac.dirty_rate_high_cnt == 0  # 0 > 0 is false


def test_periods_last_more_than_1000_ms_and_accumulate_their_syncs():
    ac, _ = policy()
    t0 = 50.0
    assert ac.on_sync(t0, 0, 0) is None
    # syncs within the period only add up dirty pages (1000 ms exactly is not "more than")
    for dt in (0.2, 0.6, 1.0):
        assert ac.on_sync(t0 + dt, 300, 0) is None
    assert ac.dirty_rate_high_cnt == 0
    assert ac.on_sync(t0 + 1.001, 100, MB) is None  # 1001 ms: evaluated, 1000 pages vs 1 MB sent
    assert ac.dirty_rate_high_cnt == 1
    assert ac.dirty_pages_rate == 1000 * 1000 // 1001
    # the new period starts at 1.001 s with nothing dirtied and the transferred mark at 1 MB
    assert ac.on_sync(t0 + 2.0, 1000, 2 * MB) is None  # 999 ms into it: not evaluated
    assert ac.dirty_rate_high_cnt == 1
    assert ac.on_sync(t0 + 2.002, 0, 2 * MB) == 20  # 1001 ms: 1000 pages vs 1 MB -> second hit
    # period counters were reset: a period with only the new sync's pages against its own bytes
    assert ac.on_sync(t0 + 3.5, 122, 3 * MB) is None and ac.dirty_rate_high_cnt == 0


def test_only_transferred_bytes_of_the_period_count():
    ac, _ = policy()
    assert ac.on_sync(0.0, 0, 0) is None
    assert ac.on_sync(2.0, 0, 500 * MB) is None  # a huge first period: low
    # 200 pages = 819200 bytes vs (501 MB - 500 MB) * 50 % = 500000: high although the total is 501 MB
    assert ac.on_sync(4.0, 200, 501 * MB) is None and ac.dirty_rate_high_cnt == 1


def test_first_sync_only_starts_the_period():
    ac, _ = policy()
    assert ac.on_sync(10.0, 10_000, 0) is None  # counted into the period, not evaluated
    assert ac.dirty_rate_high_cnt == 0
    assert ac.on_sync(11.5, 0, MB) is None and ac.dirty_rate_high_cnt == 1


def tailslow_after_initial(dirty_pages: int, sent: int, **params: Any) -> int | None:
    ac, _ = policy(cpu_throttle_tailslow=True, **params)
    run = Run(ac)
    run.period(*HIGH)
    assert run.period(*HIGH) == ac.percentage == params.get("cpu_throttle_initial", 20)
    run.period(dirty_pages, sent)
    return run.period(dirty_pages, sent)


def test_tailslow_takes_the_smaller_of_increment_and_ideal_step():
    # at 20 %: cpu_now = 80. dirty 1000 pages = 4096000 bytes.
    # threshold bytes = sent * 50 / 100; ideal = int(80 * threshold / dirty)
    # sent 7372800 -> threshold 3686400 = 0.9 x dirty -> ideal int(72.00000000000001) = 72 -> step 8 -> 28
    assert tailslow_after_initial(1000, 7_372_800) == 28
    # sent 7782400 -> 0.95 x dirty -> ideal 76 -> step 4 -> 24
    assert tailslow_after_initial(1000, 7_782_400) == 24
    # sent 4096000 -> 0.5 x dirty -> ideal 40 -> step 40, increment 10 wins -> 30
    assert tailslow_after_initial(1000, 4_096_000) == 30
    # nothing sent: ideal 0, step 80 -> the increment
    assert tailslow_after_initial(1000, 0) == 30
    # truncation: sent 8110080 -> threshold 4055040 = 0.99 x dirty -> 80 x 0.99 = 79.2 -> 79 -> step 1
    assert tailslow_after_initial(1000, 8_110_080) == 21


def test_tailslow_is_still_capped_at_max():
    ac, _ = policy(cpu_throttle_tailslow=True, cpu_throttle_initial=90, cpu_throttle_increment=50,
                   max_cpu_throttle=95)
    run = Run(ac)
    assert [run.period(*HIGH) for _ in range(4)] == [None, 90, None, 95]  # step min(10 - 0, 50) = 10 -> cap


def test_max_cpu_throttle_is_read_when_throttling():
    ac, config = policy(cpu_throttle_initial=10, cpu_throttle_increment=30, max_cpu_throttle=99)
    run = Run(ac)
    assert [run.period(*HIGH) for _ in range(4)] == [None, 10, None, 40]
    config.set_parameters({"max-cpu-throttle": 25})  # lowered during the migration
    assert [run.period(*HIGH) for _ in range(2)] == [None, 25]  # min(40 + 30, 25): it goes down


def test_disabled_capability_counts_but_never_throttles():
    config = MigrationConfig()
    ac = AutoConverge(config.parameter, lambda: config.capability("auto-converge"))
    run = Run(ac)
    assert [run.period(*HIGH) for _ in range(4)] == [None, None, None, None]
    assert ac.percentage == 0 and not ac.active and ac.dirty_rate_high_cnt == 0
    assert ac.dirty_pages_rate == 1000 * 1000 // 1500


def test_reset_forgets_everything():
    ac, _ = policy()
    run = Run(ac)
    assert [run.period(*HIGH) for _ in range(5)] == [None, 20, None, 30, None]
    assert ac.dirty_rate_high_cnt == 1
    ac.reset()  # migration end (cpu_throttle_stop) or a new migration (fresh RAMState)
    assert ac.percentage == 0 and ac.dirty_rate_high_cnt == 0 and ac.dirty_pages_rate == 0
    run = Run(ac)  # the next sync starts a new period
    assert [run.period(*HIGH) for _ in range(2)] == [None, 20]  # initial again, after two hits


def test_parameter_getter_can_be_any_callable():
    values: dict[str, Any] = {"throttle-trigger-threshold": 50, "cpu-throttle-initial": 42,
                              "cpu-throttle-increment": 7, "max-cpu-throttle": 50, "cpu-throttle-tailslow": False}
    get: Callable[[str], Any] = values.__getitem__
    run = Run(AutoConverge(get))
    assert [run.period(*HIGH) for _ in range(6)] == [None, 42, None, 49, None, 50]


# ---------------------------------------------------------------------------------------------
# The vCPU throttle
# ---------------------------------------------------------------------------------------------

def test_sleep_and_period_match_qemus_double_arithmetic():
    from emu.vcpu_control import throttle_period_ns, throttle_sleep_time_ns

    # pct/(1-pct) x 10 ms + 1 ns, truncated; period 10 ms / (1 - pct)
    assert throttle_sleep_time_ns(20) == 2_500_001 and throttle_period_ns(20) == 12_500_000
    assert throttle_sleep_time_ns(50) == 10_000_001 and throttle_period_ns(50) == 20_000_000
    assert throttle_sleep_time_ns(80) == 40_000_001 and throttle_period_ns(80) == 50_000_000
    # 0.99 / 0.01000000000000001 = 98.99999999999991: the +1 ns rounds the sleep up to 990 ms
    assert throttle_sleep_time_ns(99) == 990_000_000 and throttle_period_ns(99) == 999_999_999
    assert throttle_sleep_time_ns(95) == 190_000_000


MEM_START, MEM_END = 1 << 20, 16 << 20  # a short pass: a B every few milliseconds


class Guest:
    """A pc machine running the A-B sector over 1..16 MiB, one pass per B."""

    def __init__(self, accel: str) -> None:
        from pc_guest import PcGuest

        from qtest.migration import AB_BOOTSECT, AB_PASSES_OFFSET

        image = bytearray(AB_BOOTSECT.read_bytes())
        struct.pack_into("<III", image, AB_PASSES_OFFSET, 1, MEM_START, MEM_END)  # guests/README.md
        self.pc = PcGuest(bytes(image), 32 << 20, accel=accel)
        self.vm, self.vcpu = self.pc.vm, self.pc.vcpu

    def bs(self) -> int:
        with self.pc.changed:
            return self.pc.serial.count(b"B")

    def wait_b(self, count: int, timeout: float = 60) -> None:
        """Waits until ``count`` more Bs than now were printed (guest progress)."""
        target = self.bs() + count
        self.pc.wait_until(lambda out: out.count(b"B") >= target, timeout)

    def wait_vcpu(self, ready: Callable[[], bool], timeout: float = 60) -> None:
        """Waits on the vCPU's condition (notified when a throttle sleep begins)."""
        with self.vcpu._cond:
            assert self.vcpu._cond.wait_for(ready, timeout)

    def asleep_at_99(self) -> None:
        """Once the guest runs, throttles it at 99 % with 1 s slices (each sleep lasts 99 s) and waits
        until the vCPU has begun its first sleep."""
        self.wait_b(1)
        self.vcpu.throttle_timeslice_ns = 1_000_000_000
        self.vcpu.set_throttle(99)
        self.wait_vcpu(lambda: self.vcpu.throttle_sleeps >= 1)

    def close(self) -> None:
        self.pc.close()


@pytest.fixture(params=accel_params())
def guest(request):
    g = Guest(request.param)
    yield g
    g.close()


def test_percentage_is_clamped_and_zero_turns_it_off(guest):
    vcpu = guest.vcpu
    assert vcpu.throttle_percentage == 0 and vcpu._throttle_thread is None
    vcpu.set_throttle(150)
    assert vcpu.throttle_percentage == 99
    vcpu.set_throttle(-5)
    assert vcpu.throttle_percentage == 0
    vcpu.set_throttle(0)  # already off: nothing happens
    assert vcpu.throttle_percentage == 0


def test_unthrottled_guest_never_sleeps(guest):
    guest.wait_b(3)
    assert guest.vcpu.throttle_sleeps == 0 and guest.vcpu.throttle_sleep_ns == 0
    assert guest.vcpu._throttle_thread is None


def test_throttled_guest_sleeps_between_slices_and_still_progresses(guest):
    vcpu = guest.vcpu
    guest.wait_b(1)
    vcpu.set_throttle(50)  # the first tick is immediate: the next block boundary sleeps
    guest.wait_b(2)  # at least one whole pass after the tick
    assert vcpu.throttle_sleeps >= 1 and vcpu.throttle_sleep_ns > 0
    seen = vcpu.throttle_sleeps
    guest.wait_vcpu(lambda: vcpu.throttle_sleeps >= seen + 3)  # the timer keeps ticking
    guest.wait_b(2)  # and the guest keeps running between sleeps
    assert guest.pc.serial.startswith(b"AB")


def test_set_throttle_zero_ends_the_sleep_and_stops_sleeping(guest):
    vcpu = guest.vcpu
    guest.asleep_at_99()
    before = guest.bs()
    vcpu.set_throttle(0)
    guest.wait_b(1, timeout=30)  # runs again long before the 99 s are up
    assert guest.bs() > before
    sleeps, slept = vcpu.throttle_sleeps, vcpu.throttle_sleep_ns
    assert sleeps == 1 and 0 < slept
    guest.wait_b(3)
    assert (vcpu.throttle_sleeps, vcpu.throttle_sleep_ns) == (sleeps, slept)  # no more sleeping
    with vcpu._throttle_cond:
        assert vcpu._throttle_cond.wait_for(lambda: vcpu._throttle_thread is None, 30)  # timer gone


def test_stop_during_a_throttle_sleep_returns_and_cont_runs_at_once(guest):
    vcpu = guest.vcpu
    guest.asleep_at_99()
    guest.vm.stop()  # the sleep holds no lock the pause needs
    assert guest.vm.runstate == "paused" and vcpu._paused
    snapshot = guest.bs()
    guest.vm.cont()
    # the pause ended the sleep (QEMU: cpu->stop), and the next tick is ~100 s away
    guest.wait_b(2, timeout=30)
    assert guest.bs() >= snapshot + 2
    assert vcpu.throttle_percentage == 99  # a pause does not change the throttle


def test_reset_during_a_throttle_sleep(guest):
    guest.asleep_at_99()
    guest.vm.reset("host-qmp-system-reset")
    guest.pc.wait_until(lambda out: out.count(b"A") == 2, 30)  # restarted without waiting 99 s


def test_quit_during_a_throttle_sleep_ends_the_vcpu_thread(guest):
    vcpu = guest.vcpu
    guest.asleep_at_99()
    vcpu.quit()  # joins the vCPU thread for at most 5 s; the sleep has 99 s left
    assert vcpu._thread is not None and not vcpu._thread.is_alive()
    with vcpu._throttle_cond:
        assert vcpu._throttle_cond.wait_for(lambda: vcpu._throttle_thread is None, 30)


def test_pausing_while_throttled_is_consistent(guest):
    """Stops still land on block boundaries with throttle ticks in between (memory check)."""
    vcpu = guest.vcpu
    guest.wait_b(1)
    vcpu.set_throttle(30)
    block = guest.pc.machine.ram_blocks[0]
    for _ in range(5):
        guest.wait_vcpu(lambda n=vcpu.throttle_sleeps: vcpu.throttle_sleeps > n)
        guest.vm.stop()
        values = bytes(block.view()[MEM_START:MEM_END:PAGE])
        steps = [(a - b) & 0xFF for a, b in pairwise(values) if a != b]
        assert len(steps) <= 1 and all(d == 1 for d in steps)
        guest.vm.cont()
