"""The ``none`` machine: no CPU and no devices; RAM at address 0 when ``-m`` is given."""
from __future__ import annotations

from emu.machine.base import Machine
from emu.memory import MemoryRegion


class NoneMachine(Machine):
    name = "none"
    description = "empty machine"
    default_ram_size = 0
    default_ram_id = "ram"

    def init_board(self) -> None:
        if self.ram_size:
            block = self.new_ram("ram", self.ram_size)
            self.system_memory.add_subregion(0, MemoryRegion.ram("ram", self.ram_size, block))
