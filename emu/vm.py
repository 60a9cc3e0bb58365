"""The running VM: a machine plus its run state, events and shutdown requests.

This is the machine-level API the monitor and the qtest server call (one function per command);
it owns QEMU's RunState transitions and emits the STOP/RESUME/RESET/SHUTDOWN events.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from emu.actions import RunstateActions, guest_panicked_action
from emu.machine.base import Machine

EventSink = Callable[[str, "dict[str, Any] | None"], None]


# ShutdownCause values that count as guest-initiated (those after host-ui in QEMU's enum)
GUEST_CAUSES = frozenset({"guest-shutdown", "guest-reset", "guest-panic", "subsystem-reset", "snapshot-load"})


class VMError(Exception):
    """A machine-level request that cannot be done in the current state."""


class VM:
    """Run state and lifecycle of one machine (QEMU's runstate.c, in small)."""

    def __init__(self, machine: Machine, *, start_paused: bool, qtest_accel: bool, name: str | None = None,
                 uuid: str | None = None) -> None:
        self.machine = machine
        self.qtest_accel = qtest_accel
        self.accel = "qtest" if qtest_accel else "tcg"  # the accelerator (kvm: set by the assembly)
        self.name = name
        self.uuid = uuid
        # The big lock (QEMU's BQL): held by whoever touches machine state.
        self.lock = threading.RLock()
        self.runstate = "prelaunch" if start_paused else "running"
        self.shutdown_requested: str | None = None
        self.autostart = not start_paused  # QEMU's autostart: what an incoming migration resumes into
        self.exit_code = 0
        self._event_sinks: list[EventSink] = []
        self._shutdown_hooks: list[Callable[[], None]] = []
        self.vcpu: Any = None  # a VcpuControl (Unicorn or KVM) while an accelerator runs guest code
        #: what guest reboots, shutdowns, panics and watchdog expiries do (-action, set-action):
        #: reboot "shutdown" (-no-reboot) turns a guest reset into a shutdown; shutdown "pause"
        #: (-no-shutdown) stops a shutdown the guest (not the host) asks for in the ``shutdown``
        #: run state instead of ending the process
        self.actions = RunstateActions()
        # How work is handed to the main loop (set by the system; direct call without one).
        self.defer: Callable[[Callable[[], None]], None] = lambda fn: fn()
        machine.clock.abort_check = lambda: self.shutdown_requested is not None
        machine.request_reset = self.request_reset
        machine.exit_request = self.exit_now
        machine.panic_event = self.guest_panicked
        machine.watchdog_expired = self.watchdog_fired
        machine.clock.enable(self.running)

    # ---- events
    def add_event_sink(self, sink: EventSink) -> None:
        self._event_sinks.append(sink)

    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        for sink in self._event_sinks:
            sink(name, data)

    def on_shutdown_request(self, hook: Callable[[], None]) -> None:
        """Called when a shutdown is requested (the main loop uses it to wake up)."""
        self._shutdown_hooks.append(hook)

    # ---- run state
    @property
    def running(self) -> bool:
        return self.runstate == "running"

    def attach_vcpu(self, vcpu: Any) -> None:
        """Gives the VM a vCPU; it runs whenever the VM runs."""
        with self.lock:
            self.vcpu = vcpu
            if self.machine.cpus:
                self.machine.cpus[0].vcpu = vcpu  # the QOM CPU reports the vCPU's thread
            vcpu.start()
            if self.running:
                vcpu.resume()

    def stop(self) -> None:
        """QMP ``stop``: pauses a running VM (no-op otherwise, as in QEMU)."""
        with self.lock:
            if self.runstate == "running":
                if self.vcpu is not None:
                    self.vcpu.pause()  # returns once guest code no longer runs
                self.runstate = "paused"
                self.machine.clock.enable(False)
                self.emit("STOP")
            elif self.runstate == "inmigrate":
                self.autostart = False  # the incoming migration must not resume the VM

    def cont(self) -> None:
        """QMP ``cont``: resumes a paused or prelaunch VM."""
        with self.lock:
            if self.runstate in ("shutdown", "guest-panicked", "internal-error"):
                raise VMError("Resetting the Virtual Machine is required")
            if self.runstate == "inmigrate":
                self.autostart = True  # resume once the incoming migration completes
                return
            if self.runstate != "running":
                self.runstate = "running"
                self.machine.clock.enable(True)
                self.emit("RESUME")
                if self.vcpu is not None:
                    self.vcpu.resume()

    def reset(self, reason: str = "host-qmp-system-reset") -> None:
        """``system_reset``: devices to their power-on state and the guest restarted. A VM that is
        not running comes out of it in ``prelaunch``, as QEMU's main loop does after a reset."""
        with self.lock:
            if self.vcpu is not None:
                self.vcpu.pause()
            self.machine.reset()
            self.machine.boot()
            if self.vcpu is not None:
                self.vcpu.reset()
            self.emit("RESET", {"guest": reason in GUEST_CAUSES, "reason": reason})
            if self.runstate == "internal-error":
                self.runstate = "paused"
            if self.runstate not in ("running", "inmigrate", "finish-migrate"):
                self.runstate = "prelaunch"
            if self.running and self.vcpu is not None:
                self.vcpu.resume()

    def request_reset(self, reason: str) -> None:
        """A reset asked for by a device (the guest): done by the main loop, after the access that
        asked for it, as QEMU's qemu_system_reset_request does."""
        if self.actions.reboot == "shutdown" and reason != "subsystem-reset":
            self.defer(lambda: self.request_shutdown(reason))
        else:
            self.defer(lambda: self.reset(reason))

    def guest_error(self, message: str, raw: bool = False) -> None:
        """The vCPU hit something it cannot execute: QEMU's ``internal-error`` run state. The
        message is printed as ``vCPU error: message``, or as is with ``raw`` (KVM's own texts)."""

        def stop() -> None:
            with self.lock:
                if self.runstate == "running":
                    self.runstate = "internal-error"
                    self.machine.clock.enable(False)
                    self.emit("STOP")
            sys.stderr.write(f"{message}\n" if raw else f"vCPU error: {message}\n")

        self.defer(stop)

    def set_runstate(self, state: str) -> None:
        """Enters a run state that stops the VM without a command (``postmigrate``...)."""
        with self.lock:
            if self.running:
                self.stop()
            self.runstate = state

    def finish_incoming(self, received: str) -> None:
        """An incoming migration completed: run if the source ran and autostart allows it, else
        enter the state received (QEMU's process_incoming_migration_bh)."""
        with self.lock:
            self.runstate = "paused" if received == "running" else received
            if received == "running" and self.autostart:
                self.cont()

    # ---- what guest-visible devices ask of the VM (called from device handlers)
    def exit_now(self, status: int) -> None:
        """``isa-debug-exit``: the process ends at once with ``status``, as QEMU's exit() does
        (no SHUTDOWN event); buffered output is flushed first."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    def guest_panicked(self, kind: str) -> None:
        """pvpanic events, as QEMU 7.2's qemu_system_guest_panicked / _crashloaded."""
        if kind != "panicked":
            self.emit("GUEST_CRASHLOADED", {"action": "run"})
            return
        action = guest_panicked_action(self.actions)
        self.emit("GUEST_PANICKED", {"action": action})
        if action == "run":
            return

        def stop() -> None:
            self.set_runstate("guest-panicked")
            if action == "poweroff":
                if self.actions.panic == "exit-failure":
                    self.exit_code = 1
                self.request_shutdown("guest-panic")

        self.defer(stop)

    def watchdog_fired(self) -> None:
        """A watchdog expired: the WATCHDOG event, then ``-watchdog-action`` (QEMU's
        watchdog_perform_action; ``inject-nmi`` is refused on the command line)."""
        action = self.actions.watchdog
        self.emit("WATCHDOG", {"action": action})
        if action == "reset":
            self.request_reset("guest-reset")
        elif action == "shutdown":
            self.defer(self.powerdown)
        elif action == "poweroff":
            self.exit_now(0)
        elif action == "pause":
            self.defer(lambda: self.set_runstate("watchdog"))
        elif action == "debug":
            sys.stderr.write("watchdog: timer fired\n")

    def powerdown(self) -> None:
        """``system_powerdown``: the event, then the board's ACPI power button (QEMU's
        qemu_system_powerdown); a guest without ACPI ignores it."""
        self.emit("POWERDOWN")
        self.machine.powerdown()

    def request_shutdown(self, reason: str) -> None:
        """Ends the process (QMP ``quit``, SIGTERM...): SHUTDOWN goes out at once (QEMU 7.2 sends it
        before the ``quit`` reply), then the main loop stops and the chardevs close."""
        if self.shutdown_requested is not None:
            return
        if self.actions.shutdown == "pause" and reason in GUEST_CAUSES | {"host-ui"}:
            # QEMU's quit and signals always end the process; other shutdowns only stop the VM
            self.emit("SHUTDOWN", {"guest": reason in GUEST_CAUSES, "reason": reason})
            self.set_runstate("shutdown")
            return
        self.shutdown_requested = reason
        self.machine.clock.enable(False)
        self.emit("SHUTDOWN", {"guest": reason in GUEST_CAUSES, "reason": reason})
        for hook in self._shutdown_hooks:
            hook()


def event_timestamp() -> dict[str, int]:
    """QMP's event timestamp: wall clock seconds and microseconds."""
    now = time.time()
    seconds = int(now)
    return {"seconds": seconds, "microseconds": int((now - seconds) * 1_000_000)}
