"""The running VM's control surface: what the QMP monitor may ask of the system.

``SystemControl`` implements the monitor's ``MachineControl`` protocol (``emu.monitor.protocol``)
over the parts ``emu.assembly`` built: one method per command, VM errors turned into QAPI errors.
It holds no state of its own. It sits beside the assembly, above the machine state it reads; it
must not import the monitor (the protocol is structural) nor ``emu.system``/``emu.assembly``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from emu.errors import QapiError
from emu.machine import MACHINE_TYPES
from emu.vm import VM, VMError

if TYPE_CHECKING:
    from emu.chardev import Chardev
    from emu.migration.manager import MigrationManager
    from emu.monitor.fds import FdSets


class SystemControl:
    """The monitor's view of one emulator process: the VM, its chardevs, fd sets and migration."""

    def __init__(self, vm: VM, chardevs: Mapping[str, Chardev], fdsets: FdSets,
                 migration: MigrationManager) -> None:
        self.vm = vm
        self.fdsets = fdsets
        self._chardevs = chardevs  # the live table: chardevs added later are listed too
        self._migration = migration

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

    @property
    def accel(self) -> str:
        return self.vm.accel

    @property
    def migration(self) -> MigrationManager:
        """The VM's migration manager."""
        return self._migration

    @property
    def memory(self) -> Any:
        """The machine, for HMP's memory and tree dumps."""
        return self.vm.machine

    def stop(self) -> None:
        self.vm.stop()

    def cont(self) -> None:
        try:
            self.vm.cont()
        except VMError as e:
            raise QapiError(str(e)) from None

    def reset(self) -> None:
        self.vm.reset("host-qmp-system-reset")

    def powerdown(self) -> None:
        self.vm.powerdown()

    def set_actions(self, values: dict[str, str]) -> None:
        if values.get("watchdog") == "inject-nmi":
            raise QapiError("the watchdog action inject-nmi is not supported by this emulator (no NMI)")
        self.vm.actions.apply(values)

    def request_shutdown(self, reason: str) -> None:
        self.vm.request_shutdown(reason)

    def machine_types(self) -> list[dict[str, Any]]:
        """``query-machines``: one entry per machine type, the default first."""
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
                for label, chardev in self._chardevs.items()]
