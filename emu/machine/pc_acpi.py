"""The pc board's ACPI tables in fw_cfg, kept current as QEMU's acpi_setup keeps them.

At machine-done the three blobs are published (``etc/acpi/tables``, ``etc/table-loader``,
``etc/acpi/rsdp``). The first select of any of them after a reset rebuilds all three from the
board as it is then (QEMU's acpi_build_update): the firmware reads them after it has programmed
the PIIX4 PM base, which the FADT holds. A system reset arms the rebuild again.

As in QEMU each blob also lives in a ROM RAM block (``/rom@etc/acpi/tables``...), whose used
length is the blob's size rounded up to a page, so the blobs migrate with RAM; after an incoming
migration fw_cfg serves the migrated bytes.
"""
from __future__ import annotations

from collections.abc import Callable

from emu.devices.acpi_build import (
    LOADER_FILE,
    RAM_BLOCK_MAX,
    RSDP_FILE,
    TABLE_FILE,
    AcpiBlobs,
    AcpiConfig,
    build_acpi,
)
from emu.devices.fw_cfg import FwCfgIo
from emu.migration.vmstate import Field, SaveStateEntry, VMStateDescription
from emu.qom import Property, QObject, QomError
from emu.ram import PAGE_SIZE, RamBlock

FILES = (TABLE_FILE, LOADER_FILE, RSDP_FILE)
#: acpi_setup's vmstate_register: whether the blobs were rebuilt since the last reset
VMSTATE_ACPI_BUILD = VMStateDescription(name="acpi_build", version_id=1, minimum_version_id=1,
                                        fields=[Field("patched", "uint8")])

OEM_ID_DEFAULT = "BOCHS "
OEM_TABLE_ID_DEFAULT = "BXPC    "


class OemIds:
    """The ``x-oem-id`` and ``x-oem-table-id`` machine properties (at most 6 and 8 bytes; QEMU's
    strncpy pads a shorter value with NULs, which the table headers carry)."""

    def __init__(self, owner: QObject) -> None:
        self.values = {"x-oem-id": OEM_ID_DEFAULT, "x-oem-table-id": OEM_TABLE_ID_DEFAULT}
        for name, size in (("x-oem-id", 6), ("x-oem-table-id", 8)):
            owner.define_property(Property(name, "string", self._getter(name), self._setter(name, size), "str"))

    def _getter(self, name: str) -> Callable[[], str]:
        return lambda: self.values[name]

    def _setter(self, name: str, size: int) -> Callable[[str], None]:
        def set_value(value: str) -> None:
            if len(value.encode()) > size:
                raise QomError(f"User specified {name} value is bigger than {size} bytes in size")
            self.values[name] = value
        return set_value

    def padded(self, name: str, size: int) -> bytes:
        """The value as the table headers carry it."""
        return self.values[name].encode().ljust(size, b"\0")


class PcAcpiTables:
    """The published blobs and the rebuild-on-first-select after each reset."""

    def __init__(self, fw_cfg: FwCfgIo, build_config: Callable[[], AcpiConfig]) -> None:
        self.fw_cfg = fw_cfg
        self.build_config = build_config
        blobs = build_acpi(build_config())
        self.data = {TABLE_FILE: bytearray(blobs.tables), LOADER_FILE: bytearray(blobs.loader),
                     RSDP_FILE: bytearray(blobs.rsdp)}
        self.ram = {name: RamBlock(f"/rom@{name}", _page_align(len(data))) for name, data in self.data.items()}
        for name, data in self.data.items():
            fw_cfg.add_file(name, data, select_cb=self.update)
            self.ram[name].write(0, bytes(data))
        self.patched = False

    def blocks(self) -> list[tuple[RamBlock, int]]:
        """The ROM blocks with their maximum lengths (acpi_add_rom_blob's)."""
        return [(self.ram[name], RAM_BLOCK_MAX[name]) for name in FILES]

    def migration_entry(self, saving: bool) -> SaveStateEntry:
        """The ``acpi_build`` section (instance 0)."""
        return SaveStateEntry("acpi_build", 0, VMSTATE_ACPI_BUILD, {"patched": int(self.patched)} if saving else {})

    def migration_loaded(self, entries: list[SaveStateEntry]) -> None:
        """fw_cfg serves the migrated blobs, at the sizes the fw_cfg/acpi_mr subsection carried
        (QEMU's fw_cfg data points into these blocks), and ``patched`` comes from the stream."""
        for e in entries:
            if e.idstr == "acpi_build" and e.state:
                self.patched = bool(e.state["patched"])
        for name in FILES:
            size = self.fw_cfg.acpi_mr_sizes.get(name) or len(self.data[name])
            block = self.ram[name]
            self.data[name][:] = block.read(0, min(size, block.used_length))
            self.fw_cfg.file_resized(name)

    def reset(self) -> None:
        """acpi_build_reset: the next select rebuilds."""
        self.patched = False

    def update(self) -> None:
        """acpi_build_update: rebuild once, in place (the fw_cfg items keep these buffers)."""
        if self.patched:
            return
        self.patched = True
        self._store(build_acpi(self.build_config()))

    def _store(self, blobs: AcpiBlobs) -> None:
        for name, new in ((TABLE_FILE, blobs.tables), (LOADER_FILE, blobs.loader), (RSDP_FILE, blobs.rsdp)):
            buf = self.data[name]
            resized = len(buf) != len(new)
            buf[:] = new
            block = self.ram[name]
            block.write(0, new[:block.used_length])
            if resized:  # QEMU resizes the ROM block and fw_cfg follows (fw_cfg_resized)
                self.fw_cfg.file_resized(name)


def _page_align(size: int) -> int:
    return (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
