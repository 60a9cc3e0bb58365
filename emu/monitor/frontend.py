"""Wires QMP sessions to chardevs and the VM: one session per connection, VM events to all."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emu.monitor.protocol import QmpError, QmpServer, QmpSession
from emu.vm import VM, VMError

if TYPE_CHECKING:
    from emu.chardev import Chardev
    from emu.system import System


class VmControl:
    """The monitor's view of the VM (``MachineControl``): VM errors become QMP errors."""

    def __init__(self, vm: VM) -> None:
        self.vm = vm

    @property
    def runstate(self) -> str:
        return self.vm.runstate

    @property
    def running(self) -> bool:
        return self.vm.running

    @property
    def qom_root(self) -> Any:
        return self.vm.machine.root

    def stop(self) -> None:
        with self.vm.lock:
            self.vm.stop()

    def cont(self) -> None:
        try:
            with self.vm.lock:
                self.vm.cont()
        except VMError as e:
            raise QmpError(str(e)) from None

    def request_shutdown(self, reason: str) -> None:
        self.vm.request_shutdown(reason)


def make_qmp_server(system: System) -> QmpServer:
    server = QmpServer(VmControl(system.vm))
    server.system = system  # type: ignore[attr-defined]  # for commands that need more than MachineControl
    system.vm.add_event_sink(server.emit_event)
    return server


class MonitorFrontend:
    """A chardev front-end that runs a fresh QMP session for each connection."""

    wants_fds = True  # getfd/add-fd take fds passed with SCM_RIGHTS

    def __init__(self, server: QmpServer, chardev: Chardev, pretty: bool = False) -> None:
        self.server = server
        self.chardev = chardev
        self.pretty = pretty
        self.session: QmpSession | None = None

    def chr_open(self) -> None:
        self.session = self.server.new_session(self.chardev.write, self.chardev.disconnect, pretty=self.pretty)
        self.session.opened()

    def chr_read(self, data: bytes, fds: list[int]) -> None:
        if self.session is not None:
            self.session.feed(data, fds)

    def chr_close(self) -> None:
        if self.session is not None:
            self.session.closed()
            self.session = None


def attach_monitor(server: QmpServer, chardev: Chardev, pretty: bool = False) -> None:
    chardev.attach(MonitorFrontend(server, chardev, pretty))
