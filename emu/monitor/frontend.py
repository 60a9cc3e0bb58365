"""Wires QMP sessions to chardevs and the VM: one session per connection, VM events to all."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emu.monitor.fds import NamedFds
from emu.monitor.protocol import QmpError, QmpServer, QmpSession
from emu.vm import VMError

if TYPE_CHECKING:
    from emu.chardev import Chardev
    from emu.system import System


class VmControl:
    """The monitor's view of the machine (``MachineControl``): one method per command, VM errors
    turned into QMP errors. It reads the live system; it holds no state of its own."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.vm = system.vm
        self.fdsets = system.fdsets

    @property
    def runstate(self) -> str:
        return self.vm.runstate

    @property
    def running(self) -> bool:
        return self.vm.running

    @property
    def qom_root(self) -> Any:
        return self.vm.machine.root

    @property
    def name(self) -> str | None:
        return self.vm.name

    @property
    def uuid(self) -> str | None:
        return self.vm.uuid

    def stop(self) -> None:
        self.vm.stop()

    def cont(self) -> None:
        try:
            self.vm.cont()
        except VMError as e:
            raise QmpError(str(e)) from None

    def reset(self) -> None:
        self.vm.reset("host-qmp-system-reset")

    def powerdown(self) -> None:
        self.vm.powerdown()

    def set_actions(self, values: dict[str, str]) -> None:
        if values.get("watchdog") == "inject-nmi":
            raise QmpError("the watchdog action inject-nmi is not supported by this emulator (no NMI)")
        self.vm.actions.apply(values)

    def request_shutdown(self, reason: str) -> None:
        self.vm.request_shutdown(reason)

    def machine_types(self) -> list[dict[str, Any]]:
        from emu.machine import MACHINE_TYPES

        out = []
        for cls in MACHINE_TYPES:
            info: dict[str, Any] = {"name": cls.name}
            if cls.aliases:
                info["alias"] = cls.aliases[0]
            if cls is MACHINE_TYPES[0]:
                info["is-default"] = True
            info.update({"cpu-max": cls.max_cpus, "hotpluggable-cpus": cls.has_cpu, "numa-mem-supported": False,
                         "deprecated": False})
            if cls.default_cpu_type:
                info["default-cpu-type"] = cls.default_cpu_type
            if cls.default_ram_id:
                info["default-ram-id"] = cls.default_ram_id
            info["acpi"] = cls.acpi
            out.append(info)
        return out

    def cpus(self) -> list[dict[str, Any]]:
        return [{"cpu-index": i, "qom-path": cpu.path, "thread-id": cpu.thread_id, "props": cpu.topology(),
                 "target": "x86_64"} for i, cpu in enumerate(self.vm.machine.cpus)]

    def chardevs(self) -> list[dict[str, Any]]:
        # a front-end (monitor, qtest, serial) keeps its side open whether or not a peer is connected
        return [{"label": label, "filename": chardev.filename(), "frontend-open": chardev.frontend is not None}
                for label, chardev in self.system.chardevs.items()]

    @property
    def migration(self) -> Any:
        """The VM's MigrationManager."""
        return self.system.migration

    @property
    def memory(self) -> Any:
        """The machine, for HMP's memory and tree dumps."""
        return self.vm.machine


def make_qmp_server(system: System) -> QmpServer:
    import emu.migration.commands  # noqa: F401 - registers the migration commands

    server = QmpServer(VmControl(system))
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
