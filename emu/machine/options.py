"""What the command line tells a board beyond RAM size and accelerator: boot order, RTC, UUID...

The CLI fills a ``BoardOptions``; the machine reads it while it builds its devices. Values are
already validated (errors are the CLI's job), so the board only applies them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from emu.firmware_path import FIRMWARE_PATH


@dataclass
class BoardOptions:
    """Board configuration from ``-boot``, ``-rtc``, ``-uuid``, ``-smp``, ``-no-fd-bootchk``...

    ``boot_order`` is ``-boot order=`` (QEMU's default ``cad``), ``boot_once`` the order for the
    first boot only (restored at the first reset), ``fd_bootchk`` False with ``-no-fd-bootchk``.
    """

    boot_order: str = "cad"
    boot_once: str | None = None
    fd_bootchk: bool = True
    boot_menu: bool = False
    boot_splash: str | None = None  # -boot splash=FILE
    boot_strict: bool = False
    splash_time: int | None = None  # -boot splash-time=, ms
    reboot_timeout: int | None = None  # -boot reboot-timeout=, ms (-1: no reboot)
    uuid: bytes | None = None
    nographic: bool = False
    nb_cpus: int = 1
    max_cpus: int = 1
    nodefaults: bool = False
    hpet: bool = True  # -no-hpet / -machine hpet=off
    acpi: bool = True  # -no-acpi / -machine acpi=off: no PIIX4 PM and no ACPI tables
    data_dirs: tuple[str, ...] = FIRMWARE_PATH  # -L directories, then the firmware path
    rtc: object | None = None  # emu.devices.rtc.RtcOptions
    devices: list = field(default_factory=list)  # parsed -device specs the board creates
    pflash: list = field(default_factory=list)  # -drive if=pflash: per unit, (path, readonly) or None
