"""Auto-converge: when to throttle the guest's vCPUs during a precopy migration, and by how much.

A pure policy (no threads, no clock of its own): the migration loop calls ``on_sync`` after every
dirty-bitmap sync and applies the percentage it returns to the vCPU (``VCPU.set_throttle``). It
follows QEMU 9.1's migration/ram.c:

* ``migration_bitmap_sync``: the first sync of a migration only starts the measuring period.
  Pages newly dirtied by each sync are added up over the period; once a sync ends more than
  1000 ms after the period began (whole milliseconds, ``end > start + 1000``), the period is
  evaluated (``migration_trigger_throttle``), the dirty page rate is updated, and a new period
  begins (time, dirty page count and transferred bytes reset) whether or not anything triggered.
* ``migration_trigger_throttle``: the period is "high" when the bytes dirtied in it
  (pages x page size) exceed ``transferred-in-period x throttle-trigger-threshold / 100``.
  Each high period counts; on the second one (not necessarily consecutive: a low period does not
  reset the count) the count goes back to 0 and the guest is throttled down.
* ``mig_throttle_guest_down``: not throttling yet -> ``cpu-throttle-initial``; otherwise the
  current percentage + ``cpu-throttle-increment``, or with ``cpu-throttle-tailslow`` the smaller
  of that increment and the step that would bring the guest's CPU share down to the share at
  which it dirties exactly the threshold; capped at ``max-cpu-throttle`` (read at that moment),
  then clamped to 1..99 as ``cpu_throttle_set`` does.

QEMU makes a fresh RAMState for each migration and calls ``cpu_throttle_stop`` when the migration
ends, whatever the outcome (``migration_iteration_finish``): call ``reset`` at both points (and
``set_throttle(0)`` on the vCPU at the end). While the percentage is non-zero, query-migrate
shows it as ``cpu-throttle-percentage``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

PERIOD_MS = 1000  # the rate/throttle evaluation period of migration_bitmap_sync
THROTTLE_PCT_MIN = 1  # cpu_throttle_set's clamp (CPU_THROTTLE_PCT_MIN/MAX)
THROTTLE_PCT_MAX = 99

ParameterGetter = Callable[[str], Any]


class AutoConverge:
    """The auto-converge state of one migration (QEMU's RAMState period counters plus the
    throttle percentage it has set).

    ``parameter`` reads a migration parameter by its QAPI name (``MigrationConfig.parameter``);
    ``enabled`` says whether the ``auto-converge`` capability is on (default: always). Parameters
    are read when used, as QEMU does, so a ``migrate-set-parameters`` during the migration counts.
    """

    def __init__(self, parameter: ParameterGetter, enabled: Callable[[], bool] | None = None, *,
                 page_size: int = 4096) -> None:
        self._parameter = parameter
        self._enabled = enabled if enabled is not None else (lambda: True)
        self.page_size = page_size
        self.reset()

    def reset(self) -> None:
        """A new migration (fresh RAMState), or the end of one (cpu_throttle_stop): no throttle,
        no period started, no high periods counted."""
        self.percentage = 0  # the throttle this policy has set; 0 = not throttling
        self.dirty_rate_high_cnt = 0
        self.dirty_pages_rate = 0  # pages/s over the last complete period (query-migrate's field)
        self._period_start_ms: int | None = None
        self._dirty_pages_period = 0
        self._bytes_xfer_prev = 0

    @property
    def active(self) -> bool:
        """``cpu_throttle_active()``: query-migrate reports ``cpu-throttle-percentage`` only then."""
        return self.percentage != 0

    def on_sync(self, now: float, new_dirty_pages: int, bytes_transferred: int) -> int | None:
        """One bitmap sync has just finished.

        ``now``: monotonic time in seconds at the end of the sync; ``new_dirty_pages``: pages
        this sync newly added to the migration's dirty bitmap (QEMU's per-sync count, added up
        here over the period; the setup sync, whose bitmap starts all-dirty, adds none);
        ``bytes_transferred``: total bytes sent so far in this migration (query-migrate's
        ``transferred``). Returns the new throttle percentage when it changes, else None.
        """
        now_ms = round(now * 1e9) // 1_000_000  # whole milliseconds, as qemu_clock_get_ms
        if self._period_start_ms is None:
            self._period_start_ms = now_ms  # the first sync starts the period
        self._dirty_pages_period += new_dirty_pages
        if now_ms <= self._period_start_ms + PERIOD_MS:
            return None
        changed = self._trigger(bytes_transferred)
        self.dirty_pages_rate = self._dirty_pages_period * 1000 // (now_ms - self._period_start_ms)
        self._period_start_ms = now_ms
        self._dirty_pages_period = 0
        self._bytes_xfer_prev = bytes_transferred
        return changed

    # ---- QEMU's migration_trigger_throttle and mig_throttle_guest_down
    def _trigger(self, bytes_transferred: int) -> int | None:
        threshold = int(self._parameter("throttle-trigger-threshold"))
        bytes_xfer_period = max(bytes_transferred - self._bytes_xfer_prev, 0)
        bytes_dirty_period = self._dirty_pages_period * self.page_size
        bytes_dirty_threshold = bytes_xfer_period * threshold // 100
        if bytes_dirty_period <= bytes_dirty_threshold:
            return None
        self.dirty_rate_high_cnt += 1
        if self.dirty_rate_high_cnt < 2:
            return None
        self.dirty_rate_high_cnt = 0
        if not self._enabled():
            return None
        new = self.next_percentage(bytes_dirty_period, bytes_dirty_threshold)
        if new == self.percentage:
            return None
        self.percentage = new
        return new

    def next_percentage(self, bytes_dirty_period: int, bytes_dirty_threshold: int) -> int:
        """The percentage one throttle-down step sets (``bytes_dirty_period`` > threshold)."""
        now = self.percentage
        if not now:
            pct = int(self._parameter("cpu-throttle-initial"))
        else:
            increment = int(self._parameter("cpu-throttle-increment"))
            if self._parameter("cpu-throttle-tailslow"):
                # the CPU share at which the guest would dirty exactly the threshold (doubles,
                # truncated to an integer as QEMU's uint64_t assignment does)
                cpu_now = 100 - now
                cpu_ideal = int(cpu_now * (float(bytes_dirty_threshold) / float(bytes_dirty_period)))
                step = cpu_now - cpu_ideal
                inc = increment if step < 0 else min(step, increment)  # uint64_t wrap-around -> MIN
            else:
                inc = increment
            pct = min(now + inc, int(self._parameter("max-cpu-throttle")))
        return min(max(pct, THROTTLE_PCT_MIN), THROTTLE_PCT_MAX)
