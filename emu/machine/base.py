"""The board skeleton every machine type shares: QOM root, address spaces, RAM, clock, devices."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emu.clock import VirtualClock
from emu.devices.base import Device
from emu.devices.migration_fault import MigrationFault
from emu.machine.options import BoardOptions
from emu.memory import AccessRules, AddressSpace, CallbackOps, MemoryRegion
from emu.qom import Container, QObject
from emu.ram import RamBlock

IO_SPACE_SIZE = 0x10000


def _unassigned_io_read(offset: int, size: int) -> int:
    return (1 << (8 * size)) - 1  # an empty ISA bus floats high


def _unassigned_io_write(offset: int, value: int, size: int) -> None:
    pass


class MachineError(Exception):
    """The machine cannot be built as configured (the message is QEMU's). ``prefixed`` is False for
    the few messages QEMU prints without its program name."""

    def __init__(self, message: str, prefixed: bool = True) -> None:
        super().__init__(message)
        self.prefixed = prefixed


class Machine(QObject):
    """A machine: ``/machine`` in the QOM tree, with ``memory`` and ``io`` address spaces.

    Subclasses build their board in ``init_board``; devices plug in with ``add_device``.
    """

    name = "none"
    aliases: tuple[str, ...] = ()
    #: the machine type's compat properties (QEMU's hw_compat_X_Y) that this emulator applies,
    #: as -global DRIVER.PROP values under the command line's own -global options
    compat_globals: dict[tuple[str, str], str] = {}
    description = ""
    default_ram_size = 0
    has_cpu = False
    #: QEMU gives this board default devices (serial, parallel, floppy, CD-ROM, VGA, NIC) unless
    #: -nodefaults; the none machine has none (no_serial, no_parallel... and no display)
    has_default_devices = False
    machine_parent = "machine"  # QOM parent of this machine's type
    max_cpus = 1
    #: IDE buses for ``-drive if=ide`` (0: none, and ``-drive`` defaults to ``if=none``)
    ide_buses = 0
    default_cpu_type: str | None = None
    default_ram_id: str | None = None
    acpi = False
    cpus: list  # the CPU devices (none on machines without one)

    def __init__(self, ram_size: int | None, manual_clock: bool, bios: str | None = None,
                 options: BoardOptions | None = None) -> None:
        super().__init__()
        self.bios_path = bios
        self.options = options or BoardOptions()
        self.migration_faults: list[MigrationFault] = []  # test-only -device migration-fault
        self.root = Container()  # the QOM root "/"
        self.root.add_child("machine", self)
        for name in ("unattached", "peripheral", "peripheral-anon"):
            self.add_child(name, Container())
        self.ram_size = self.default_ram_size if ram_size is None else ram_size
        self.clock = VirtualClock(manual=manual_clock)
        self.system_memory = MemoryRegion.container("system", 1 << 64)
        self.system_io = MemoryRegion.io(
            "io", IO_SPACE_SIZE,
            # QEMU's unassigned_io_ops: accesses bounded by their alignment
            CallbackOps(_unassigned_io_read, _unassigned_io_write,
                        AccessRules(valid_min=1, valid_max=4, impl_min=1, impl_max=4, valid_unaligned=True)),
        )
        self.ram_blocks: list[RamBlock] = []
        self._ram_max: list[int] = []  # each block's maximum length, for the order
        self.devices: list[Device] = []
        self._unattached = 0
        self.cpus = []
        # A few of QEMU's machine properties (settable with -machine and qom-set).
        for name, qom_type, qapi_type, value in (
                ("usb", "bool", "bool", False), ("graphics", "bool", "bool", True),
                ("dump-guest-core", "bool", "bool", True), ("mem-merge", "bool", "bool", True),
                ("kernel", "string", "str", ""), ("initrd", "string", "str", ""), ("append", "string", "str", ""),
                ("dtb", "string", "str", "")):
            self.add_property(name, qom_type, value, qapi_type)
        # Set by the VM: how a device asks for a system reset (reason as in QMP's RESET event).
        self.request_reset: Callable[[str], None] = lambda reason: None
        # Set by the VM as well: a device ends the process (isa-debug-exit), reports a guest
        # panic (pvpanic: "panicked"/"crash-loaded"), or a watchdog expired.
        self.exit_request: Callable[[int], None] = lambda status: None
        self.panic_event: Callable[[str], None] = lambda kind: None
        self.watchdog_expired: Callable[[], None] = lambda: None
        # the address spaces follow later changes of their regions (DMA engines keep them)
        self.address_space_memory = AddressSpace("memory", self.system_memory)
        self.address_space_io = AddressSpace("I/O", self.system_io)
        self.init_board()

    @property
    def type_name(self) -> str:  # type: ignore[override]
        return f"{self.name}-machine"

    def init_board(self) -> None:
        """Builds RAM, ROM and devices; the base board has nothing."""

    def new_ram(self, name: str, size: int) -> RamBlock:
        block = RamBlock(name, size)
        self.register_ram_block(block)
        return block

    def register_ram_block(self, block: RamBlock, max_length: int | None = None) -> None:
        """Adds a block to the migrated list in QEMU's ram_list order: by maximum length,
        largest first, a new block after those at least as large (ram_block_add). A ROM or
        resizable block's maximum can exceed its used length."""
        size = block.used_length if max_length is None else max_length
        index = next((i for i, n in enumerate(self._ram_max) if n < size), len(self._ram_max))
        self.ram_blocks.insert(index, block)
        self._ram_max.insert(index, size)

    def add_device(self, dev: Device, name: str | None = None, parent: QObject | None = None) -> Device:
        """Places a device in the QOM tree (``/machine/unattached/device[N]`` by default)."""
        if name is None:
            parent = self.children["unattached"]
            name = f"device[{self._unattached}]"
            self._unattached += 1
        (parent or self).add_child(name, dev)
        self.devices.append(dev)
        return dev

    def reset(self) -> None:
        for dev in self.devices:
            dev.reset()

    def add_user_device(self, spec: Any) -> Device:
        """``-device``: this board has no bus for it (``spec`` is a catalog DeviceSpec)."""
        from emu.devices.catalog import MODELS

        raise MachineError(f"No '{MODELS[spec.driver].bus}' bus found for device '{spec.driver}'")

    def user_device_parent(self, spec: Any) -> tuple[QObject, str]:
        """Where a ``-device`` goes in the QOM tree: ``/machine/peripheral/ID``, or
        ``/machine/peripheral-anon/device[N]`` without an id."""
        if spec.id is not None:
            return self.children["peripheral"], spec.id
        anon = self.children["peripheral-anon"]
        return anon, f"device[{len(anon.children)}]"

    def machine_done(self) -> None:
        """Called once every device exists (QEMU's machine-init-done notifiers)."""

    def boot(self) -> None:
        """What the firmware would do before the guest runs; nothing on a bare board."""

    def powerdown(self) -> None:
        """``system_powerdown`` reaches the board's powerdown notifiers; a bare board has none."""

    # ---- migration: the non-RAM sections this board saves and loads
    def migration_entries(self, saving: bool) -> list:
        """SaveStateEntry handlers (``timer`` on every board, as QEMU's ``-M none`` has)."""
        from emu.migration.vmstate import timer_entry

        if saving:
            self.migration_setup("save-state")
        return [timer_entry(), *self._device_entries(saving)]

    def _device_entries(self, saving: bool) -> list:
        """The devices' sections in creation order (as QEMU registers them when devices are
        realized)."""
        from emu.migration.vmstate import SaveStateEntry

        return [SaveStateEntry(idstr, instance, vmsd, state)
                for dev in self.devices for idstr, instance, vmsd, state in dev.vmstate_sections(saving)]

    def migration_loaded(self, entries: list) -> None:
        """Applies the loaded sections (after RAM is in place); a device whose sections the
        stream did not carry keeps its state, as in QEMU."""
        by_id = {(e.idstr, e.instance_id): e for e in entries}
        for dev in self.devices:
            states = {(i, n): by_id[i, n].state for i, n, _, _ in dev.vmstate_sections(saving=False)
                      if (i, n) in by_id and by_id[i, n].state}
            if states:
                dev.load_vmstate_sections(states)
        self.migration_setup("post-load")

    def migration_setup(self, stage: str) -> None:
        """Each handler's ``save-setup``/``load-setup`` step (raises ``MigrationSetupError``), and
        the test-only ``save-state``/``post-load`` fault points."""
        for fault in self.migration_faults:
            fault.check(stage)

    # ---- interrupts to the CPU (boards with interrupt controllers override these)
    def interrupt_pending(self) -> bool:
        return False

    def interrupt_vector(self) -> int | None:
        """The CPU's interrupt acknowledge: the vector to take now, or None."""
        return None
