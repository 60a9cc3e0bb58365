"""Machine types, by name and alias (``-M``)."""
from __future__ import annotations

from emu.machine.base import Machine, MachineError
from emu.machine.none import NoneMachine
from emu.machine.pc import PcMachine

MACHINE_TYPES: tuple[type[Machine], ...] = (PcMachine, NoneMachine)


def find_machine(name: str) -> type[Machine] | None:
    for cls in MACHINE_TYPES:
        if name == cls.name or name in cls.aliases:
            return cls
    return None


__all__ = ["Machine", "MachineError", "MACHINE_TYPES", "find_machine"]
