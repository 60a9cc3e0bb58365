"""The virtual clock (nanoseconds) and its ordered timers.

Under ``-accel qtest`` the clock moves only through ``clock_step``/``clock_set``; otherwise it
follows host monotonic time while the VM runs and stands still while it is stopped. Timers fire
in deadline order (ties in arming order); a stopped VM has no pending deadlines.
"""
from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable

INT64_MAX = (1 << 63) - 1


class Timer:
    """A one-shot timer on a clock; re-arm it from its callback for periodic behaviour."""

    __slots__ = ("clock", "callback", "expire", "_token")

    def __init__(self, clock: VirtualClock, callback: Callable[[], None]) -> None:
        self.clock = clock
        self.callback = callback
        self.expire: int | None = None
        self._token = 0

    def mod(self, expire_ns: int) -> None:
        """Arms (or re-arms) the timer for an absolute virtual time."""
        self.clock._arm(self, expire_ns)

    def cancel(self) -> None:
        self.expire = None
        self._token += 1

    @property
    def pending(self) -> bool:
        return self.expire is not None


class VirtualClock:
    """QEMU_CLOCK_VIRTUAL. ``manual`` is the qtest accelerator's mode."""

    def __init__(self, manual: bool) -> None:
        self.manual = manual
        self._ns = 0
        self.enabled = False  # runs only while the VM runs
        self._host_base = 0.0  # host time (ns) matching _ns when enabled and not manual
        self._heap: list[tuple[int, int, int, Timer]] = []
        self._seq = itertools.count()
        self.abort_check: Callable[[], bool] = lambda: False

    # ---- time
    def now(self) -> int:
        if self.enabled and not self.manual:
            return self._ns + (time.monotonic_ns() - int(self._host_base))
        return self._ns

    def enable(self, on: bool) -> None:
        """Starts or stops the clock with the VM (a stopped VM keeps its time)."""
        if on == self.enabled:
            return
        if not on:
            self._ns = self.now()
        self.enabled = on
        self._host_base = time.monotonic_ns()

    # ---- timers
    def new_timer(self, callback: Callable[[], None]) -> Timer:
        return Timer(self, callback)

    def _arm(self, timer: Timer, expire: int) -> None:
        timer._token += 1
        timer.expire = max(0, min(expire, INT64_MAX))
        heapq.heappush(self._heap, (timer.expire, next(self._seq), timer._token, timer))

    def _prune(self) -> None:
        while self._heap and (self._heap[0][3].expire is None or self._heap[0][2] != self._heap[0][3]._token):
            heapq.heappop(self._heap)

    def deadline(self) -> int | None:
        """The earliest pending timer, or None (always None while the clock is disabled)."""
        if not self.enabled:
            return None
        self._prune()
        return self._heap[0][0] if self._heap else None

    def _fire_due(self, now: int) -> bool:
        """Fires every timer due at ``now``; False when aborted (shutdown requested)."""
        while True:
            self._prune()
            if not self._heap or self._heap[0][0] > now:
                return True
            if self.abort_check():
                return False
            _, _, _, timer = heapq.heappop(self._heap)
            timer.expire = None
            timer.callback()

    # ---- qtest accelerator (manual mode)
    def advance_to(self, target: int) -> int:
        """Moves a manual clock forward to ``target``, firing timers in order; never goes back.

        Deadlines are visited one by one, so a long advance past a periodic timer costs one step
        per period; ``abort_check`` (set by the VM to its shutdown flag) stops the walk early.
        """
        target = min(target, INT64_MAX)
        while self._ns < target:
            nxt = self.deadline()
            step_to = target if nxt is None else max(self._ns, min(target, nxt))
            self._ns = step_to
            if self.enabled and not self._fire_due(step_to):
                break
        return self._ns

    def step(self, ns: int | None) -> int:
        """qtest ``clock_step``: by ns, or to the next deadline when ns is None (7.2 semantics)."""
        if ns is None:
            nxt = self.deadline()
            if nxt is None:
                return self._ns
            return self.advance_to(nxt)
        if ns <= 0:
            return self._ns
        return self.advance_to(min(self._ns + ns, INT64_MAX))

    def set(self, ns: int) -> int:
        """qtest ``clock_set``: moves to ns if it is in the future."""
        return self.advance_to(ns)

    # ---- host-driven mode
    def run_due(self) -> None:
        """Fires due timers (host-driven clock; called from the main loop)."""
        if self.enabled and not self.manual:
            self._fire_due(self.now())

    def host_timeout(self) -> float | None:
        """Seconds until the next deadline for the main loop's select, or None."""
        if self.manual:
            return None
        d = self.deadline()
        if d is None:
            return None
        return max(0.0, (d - self.now()) / 1e9)
