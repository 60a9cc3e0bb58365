"""A fake ``MachineControl`` for in-process QMP tests: QEMU-like run-state changes and events.

Shared by tests/emu/test_qmp_protocol.py and tests/property/test_qmp_fuzz.py (which puts this
directory on ``sys.path``). What it lacks (qom, chardevs, migration, ...) raises AttributeError,
which a session answers as an internal error.
"""
from __future__ import annotations

from emu.errors import QapiError
from emu.monitor.protocol import QmpServer


class FakeMachine:
    """A MachineControl with QEMU-like runstate changes and event emission; set ``server`` before
    running commands that emit events."""

    def __init__(self, runstate: str = "prelaunch") -> None:
        self.server: QmpServer | None = None
        self.runstate = runstate
        self.shutdown_reason: str | None = None

    @property
    def running(self) -> bool:
        return self.runstate == "running"

    def _emit(self, name: str, data: dict[str, object] | None = None) -> None:
        assert self.server is not None
        self.server.emit_event(name, data)

    def stop(self) -> None:
        if self.runstate == "running":
            self.runstate = "paused"
            self._emit("STOP")

    def cont(self) -> None:
        if self.runstate == "shutdown":
            raise QapiError("Resetting the Virtual Machine is required")
        if self.runstate != "running":
            self.runstate = "running"
            self._emit("RESUME")

    def reset(self) -> None:
        self._emit("RESET", {"guest": False, "reason": "host-qmp-system-reset"})

    def powerdown(self) -> None:
        self._emit("POWERDOWN")

    def request_shutdown(self, reason: str) -> None:
        self.shutdown_reason = reason

    def main_loop_iteration(self) -> bool:
        """What the main loop does after dispatching: True when it exits."""
        if self.shutdown_reason is None:
            return False
        self._emit("SHUTDOWN", {"guest": False, "reason": self.shutdown_reason})
        assert self.server is not None
        self.server.close_all()
        return True
