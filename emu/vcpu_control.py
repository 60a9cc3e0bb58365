"""What every vCPU accelerator shares: its thread, exact stops, halting and auto-converge throttling.

:class:`VcpuControl` is the base of the Unicorn vCPU (``emu.cpu``, QEMU's TCG) and the KVM vCPU
(``emu.kvm_vcpu``). The thread parks (waiting on a condition of the machine lock, as QEMU's
``pause_all_vcpus`` releases the BQL) while the VM is paused, the CPU is halted or an error
stopped it; otherwise it calls the accelerator's :meth:`VcpuControl._run_guest`, which runs
guest code until :meth:`VcpuControl._kick` asks it to return. A kick never splits an instruction:
Unicorn stops at a block boundary, KVM at an exit, and the guest resumes exactly where it was.

Auto-converge throttling (QEMU's system/cpu-throttle.c): ``set_throttle(pct)`` starts a timer
thread that, every ``10 ms / (1 - pct/100)``, kicks the vCPU and has it sleep
``pct/(1-pct) x 10 ms`` before it runs guest code again. The sleep waits on the vCPU's
condition (the machine lock released), so a pause, reset or quit never waits for it.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emu.vm import VM

# vCPU throttling (QEMU's cpu-throttle.c)
CPU_THROTTLE_PCT_MIN = 1
CPU_THROTTLE_PCT_MAX = 99
CPU_THROTTLE_TIMESLICE_NS = 10_000_000


def throttle_sleep_time_ns(pct: int, timeslice_ns: int = CPU_THROTTLE_TIMESLICE_NS) -> int:
    """How long a vCPU throttled at ``pct`` percent sleeps per tick: pct/(1-pct) timeslices,
    computed in doubles as QEMU does (plus its 1 ns against 0.99999... rounding)."""
    p = pct / 100
    return int(p / (1 - p) * timeslice_ns + 1)


def throttle_period_ns(pct: int, timeslice_ns: int = CPU_THROTTLE_TIMESLICE_NS) -> int:
    """Time between two throttle ticks: one timeslice of guest run time plus the sleep."""
    return int(timeslice_ns / (1 - pct / 100))


class VCPUError(Exception):
    """The vCPU cannot be set up (a memory map the accelerator cannot express, a failed ioctl...)."""


class VcpuControl:
    """Thread, run control and throttling of one vCPU bound to a VM; subclasses run the guest.

    A subclass implements :meth:`_run_guest` (run until kicked, halted or failed; called with no
    lock held), :meth:`_kick` (make a run in progress return soon; any thread) and
    :meth:`_clear_kick` (called, ``_cond`` held, before each run), plus ``reset``, ``get_state``,
    ``set_state`` and ``interrupt_request``."""

    #: the accelerator's name, as QEMU's ``-accel`` calls it
    accel = ""

    def __init__(self, vm: VM) -> None:
        self.vm = vm
        self.machine = vm.machine
        # Parking waits release the machine lock (QEMU's BQL does the same in pause_all_vcpus):
        # the vCPU may need it to finish the I/O access it is in.
        self._cond = threading.Condition(vm.lock)
        self._pause_requested = True  # until the VM runs (resume)
        self._paused = True
        self._quit = False
        self._halted = False
        self._thread: threading.Thread | None = None
        self.error: str | None = None
        # Throttling: the percentage (0 = off), the timer thread with its own condition (never the
        # machine lock) and next tick, and the tick -> vCPU flag (QEMU's throttle_thread_scheduled).
        self.throttle_timeslice_ns = CPU_THROTTLE_TIMESLICE_NS
        self._throttle_pct = 0
        self._throttle_cond = threading.Condition()
        self._throttle_thread: threading.Thread | None = None
        self._throttle_deadline = 0
        self._throttle_due = False
        self._pause_gen = 0  # bumped by every pause(): ends a throttle sleep in progress
        self.throttle_sleep_ns = 0  # total time spent in throttle sleeps
        self.throttle_sleeps = 0  # number of throttle sleeps begun
        # A sleep asked for by a dirty-page limit (sleep_until): the monotonic time the vCPU may
        # run again (0: none), taken before the next run
        self._sleep_until = 0
        self.limit_sleep_ns = 0  # total time spent in those sleeps

    # ---- what the accelerator provides
    def _run_guest(self) -> None:
        raise NotImplementedError

    def _kick(self) -> None:
        raise NotImplementedError

    def _clear_kick(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def get_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def set_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def interrupt_request(self) -> None:
        raise NotImplementedError

    # ---- run control
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vcpu0", daemon=True)
        self._thread.start()

    def resume(self) -> None:
        with self._cond:
            self._pause_requested = False
            self._cond.notify_all()

    def pause(self) -> None:
        """Stops guest execution and waits until the vCPU thread is parked (within a slice)."""
        with self._cond:
            self._pause_requested = True
            self._pause_gen += 1  # a throttle sleep in progress ends (QEMU: cpu->stop)
            self._cond.notify_all()
            while not self._paused:
                self._kick()
                self._cond.wait(0.1)

    def quit(self) -> None:
        with self._cond:
            self._quit = True
            self._pause_requested = True
            self._cond.notify_all()
            self._kick()
        with self._throttle_cond:
            self._throttle_cond.notify_all()  # the timer thread ends
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    @property
    def thread_id(self) -> int | None:
        return self._thread.native_id if self._thread is not None else None

    def _run(self) -> None:
        """The vCPU thread: park while it must not run, else run the guest until kicked."""
        while True:
            with self._cond:
                self._paused = True
                self._cond.notify_all()
                while True:
                    while (self._pause_requested or self._halted or self.error) and not self._quit:
                        self._cond.wait()
                    if self._quit:
                        return
                    # Clear the kick before looking at _throttle_due: the timer sets them in the
                    # other order, so a tick landing in between still stops the next run.
                    self._clear_kick()
                    if not self._throttle_due and not self._sleep_until:
                        break
                    if self._throttle_due:
                        self._throttle_sleep()
                    if self._sleep_until:
                        self._limit_sleep()
                    # then re-check everything: a pause may have come
                self._paused = False
            self._run_guest()

    # ---- sleeps of a dirty-page limit
    def sleep_until(self, deadline_ns: int) -> None:
        """Keeps the vCPU from running guest code before ``deadline_ns`` (``time.monotonic_ns``;
        any thread): a running vCPU is kicked. A pause, reset or quit ends the sleep;
        :meth:`cancel_sleep` drops it."""
        with self._cond:
            if deadline_ns <= self._sleep_until:
                return
            self._sleep_until = deadline_ns
        self._kick()

    def cancel_sleep(self) -> None:
        """Drops a requested sleep, and ends one in progress."""
        with self._cond:
            self._sleep_until = 0
            self._cond.notify_all()

    def _limit_sleep(self) -> None:
        """The requested sleep, ``_cond`` held by the vCPU thread (waiting releases the machine
        lock); a later deadline set meanwhile extends it."""
        gen = self._pause_gen
        start = time.monotonic_ns()
        while self._sleep_until and not self._quit and self._pause_gen == gen:
            left = self._sleep_until - time.monotonic_ns()
            if left <= 0:
                break
            self._cond.wait(left / 1e9)
        self._sleep_until = 0
        self.limit_sleep_ns += time.monotonic_ns() - start

    # ---- throttling (QEMU's cpu_throttle_set / cpu_throttle_stop)
    @property
    def throttle_percentage(self) -> int:
        """The current throttle percentage, 0 when not throttled (``cpu_throttle_get_percentage``)."""
        return self._throttle_pct

    def set_throttle(self, pct: int) -> None:
        """Throttles the vCPU to ``pct`` percent (clamped to 1..99, as cpu_throttle_set does);
        0 stops throttling (cpu_throttle_stop) and ends a sleep in progress. Starting from 0 the
        first tick happens here; changing an active percentage takes effect at the next tick."""
        pct = 0 if pct <= 0 else min(max(int(pct), CPU_THROTTLE_PCT_MIN), CPU_THROTTLE_PCT_MAX)
        with self._throttle_cond:
            was = self._throttle_pct
            self._throttle_pct = pct
            if pct and not was:
                self._throttle_tick()
                if self._throttle_thread is None and not self._quit:
                    self._throttle_thread = threading.Thread(target=self._throttle_timer, name="vcpu0-throttle",
                                                             daemon=True)
                    self._throttle_thread.start()
            self._throttle_cond.notify_all()
        if not pct and was:
            with self._cond:
                self._cond.notify_all()  # a sleeping vCPU re-checks and runs at once

    def _throttle_tick(self) -> None:
        """cpu_throttle_timer_tick (``_throttle_cond`` held): asks the vCPU for one sleep unless
        the previous one is still pending, and arms the next tick one period later."""
        # QEMU's timer runs on the virtual clock, which stands still while the VM is stopped
        if not self._throttle_due and not self._pause_requested:
            self._throttle_due = True
            self._kick()  # after _throttle_due: see the order in _run
        self._throttle_deadline = time.monotonic_ns() + throttle_period_ns(self._throttle_pct,
                                                                           self.throttle_timeslice_ns)

    def _throttle_timer(self) -> None:
        """The throttle timer thread: ticks until the throttle is stopped or the vCPU quits."""
        cond = self._throttle_cond
        with cond:
            while True:
                if not self._throttle_pct or self._quit:
                    self._throttle_thread = None
                    return
                left = self._throttle_deadline - time.monotonic_ns()
                if left > 0:
                    cond.wait(left / 1e9)
                else:
                    self._throttle_tick()

    def _throttle_sleep(self) -> None:
        """One throttle sleep (cpu_throttle_thread), called with ``_cond`` held by the vCPU thread.
        Waiting on ``_cond`` releases the machine lock; a pause, quit or set_throttle(0) ends it."""
        pct = self._throttle_pct
        if pct:
            self.throttle_sleeps += 1
            self._cond.notify_all()  # lets observers see the sleep begin
            gen = self._pause_gen
            start = time.monotonic_ns()
            end = start + throttle_sleep_time_ns(pct, self.throttle_timeslice_ns)
            while self._throttle_pct and not self._quit and self._pause_gen == gen:
                left = end - time.monotonic_ns()
                if left <= 0:
                    break
                self._cond.wait(left / 1e9)
            self.throttle_sleep_ns += time.monotonic_ns() - start
        self._throttle_due = False
