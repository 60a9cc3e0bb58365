"""Machine types, by name and alias (``-M``)."""
from __future__ import annotations

from emu.machine.base import Machine, MachineError
from emu.machine.none import NoneMachine
from emu.machine.pc import PcI440fx72Machine, PcMachine
from emu.qom import register_type

MACHINE_TYPES: tuple[type[Machine], ...] = (PcMachine, PcI440fx72Machine, NoneMachine)

register_type("machine", "object", abstract=True)
register_type("x86-machine", "machine", abstract=True)
register_type("generic-pc-machine", "x86-machine", abstract=True)
for _cls in MACHINE_TYPES:
    register_type(f"{_cls.name}-machine", _cls.machine_parent)


def find_machine(name: str) -> type[Machine] | None:
    for cls in MACHINE_TYPES:
        if name == cls.name or name in cls.aliases:
            return cls
    return None


__all__ = ["Machine", "MachineError", "MACHINE_TYPES", "find_machine"]
