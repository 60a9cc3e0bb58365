"""Wires QMP sessions to chardevs and the VM: one session per connection, VM events to all.

It is given the machine as a ``MachineControl`` (``emu.control.SystemControl`` in the emulator)
and must not import the system or assembly layers above it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emu.monitor.fds import NamedFds
from emu.monitor.protocol import MachineControl, QmpServer, QmpSession
from emu.monitor.registry import build_registry

if TYPE_CHECKING:
    from emu.chardev import Chardev
    from emu.vm import VM


def make_qmp_server(control: MachineControl, vm: VM) -> QmpServer:
    """A QMP server over ``control`` with every command registered; the VM's events go to its sessions."""
    server = QmpServer(control, registry=build_registry())
    vm.add_event_sink(server.emit_event)
    return server


class MonitorFrontend:
    """A chardev front-end that runs a fresh QMP session for each connection."""

    wants_fds = True  # getfd/add-fd take fds passed with SCM_RIGHTS

    def __init__(self, server: QmpServer, chardev: Chardev, pretty: bool = False) -> None:
        self.server = server
        self.chardev = chardev
        self.pretty = pretty
        self.session: QmpSession | None = None
        self.named_fds = NamedFds()  # getfd names outlive a connection, as QEMU's monitor's do

    def chr_open(self) -> None:
        self.session = self.server.new_session(self.chardev.write, self.chardev.disconnect, pretty=self.pretty)
        self.session.named_fds = self.named_fds  # type: ignore[attr-defined]
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
