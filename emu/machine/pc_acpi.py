"""The pc board's ACPI tables in fw_cfg, kept current as QEMU's acpi_setup keeps them.

At machine-done the three blobs are published (``etc/acpi/tables``, ``etc/table-loader``,
``etc/acpi/rsdp``). The first select of any of them after a reset rebuilds all three from the
board as it is then (QEMU's acpi_build_update): the firmware reads them after it has programmed
the PIIX4 PM base, which the FADT holds. A system reset arms the rebuild again.
"""
from __future__ import annotations

from collections.abc import Callable

from emu.devices.acpi_build import LOADER_FILE, RSDP_FILE, TABLE_FILE, AcpiBlobs, AcpiConfig, build_acpi
from emu.devices.fw_cfg import FwCfgIo
from emu.qom import Property, QObject, QomError

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
        for name, data in self.data.items():
            fw_cfg.add_file(name, data, select_cb=self.update)
        self.patched = False

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
            if resized:  # QEMU resizes the ROM block and fw_cfg follows (fw_cfg_resized)
                self.fw_cfg.file_resized(name)
