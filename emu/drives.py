"""Disks from ``-drive`` and ``-device ide-hd``: which raw image the machine boots from, and the
IDE slots of ``-drive if=ide`` (empty CD-ROM drives included).

Only raw images are supported; the first disk on the IDE bus (``-drive file=...`` with the default
``if=ide``, or ``-drive if=none,id=X`` plus ``-device ide-hd,drive=X``) is the boot disk. Errors
use QEMU's wording.
"""
from __future__ import annotations

from dataclasses import dataclass

from emu.chardev import parse_opts
from emu.devices import migration_fault as fault_device
from emu.devices.catalog import MODELS

DRIVE_OPTS = frozenset({"file", "format", "if", "id", "index", "media", "cache", "aio", "readonly", "snapshot",
                        "bus", "unit", "discard", "werror", "rerror", "node-name", "auto-read-only"})
IDE_HD_PROPS = frozenset({"drive", "secs", "cyls", "heads", "bootindex", "bus", "unit", "serial", "model",
                          "id", "lcyls", "lheads", "lsecs", "logical_block_size", "physical_block_size",
                          "discard_granularity", "wwn", "rotation_rate"})


class DriveError(Exception):
    """``str()`` is the message after the option's location (``-drive ...: <message>``), or the
    message alone for an error QEMU reports without one (``option`` empty)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}" if option else message)


def _check_file(option: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise DriveError(option, f"Could not open '{path}': {e.strerror}") from None


def boot_disk(drives: list[str], devices: list[str], faults: list | None = None) -> str | None:
    """The path of the boot disk image (or None), checking every -drive and -device; test-only
    ``migration-fault`` devices are appended to ``faults``."""
    named: dict[str, str] = {}
    ide: list[str] = []
    for spec in drives:
        option = f"-drive {spec}"
        pairs, flags = parse_opts(spec)
        opts = dict(pairs)
        iface = opts.get("if", "ide")
        if iface not in ("ide", "none", "virtio", "scsi", "floppy", "pflash", "mtd", "sd"):
            raise DriveError(option, f"unsupported bus type '{iface}'")
        fmt = opts.get("format", "raw")
        if fmt != "raw":
            raise DriveError(option, f"Unknown driver '{fmt}'" if fmt not in ("qcow2", "vmdk", "vdi", "vpc", "qed")
                             else f"format '{fmt}' is not supported by this emulator")
        for key in list(opts) + flags:
            if key not in DRIVE_OPTS:
                raise DriveError(option, f"Block format 'raw' does not support the option '{key}'")
        if "file" not in opts:
            continue  # an empty drive (e.g. a CD-ROM without media)
        if opts.get("media") == "cdrom":
            raise DriveError(option, "CD-ROM media are not supported by this emulator")
        _check_file(option, opts["file"])
        if iface == "pflash":
            continue  # the board's flash (pflash_drives)
        if iface == "none":
            named[opts.get("id", "")] = opts["file"]
        elif iface == "ide":
            ide.append(opts["file"])
        else:
            raise DriveError(option, f"bus type '{iface}' is not supported by this emulator")
    for spec in devices:
        option = f"-device {spec}"
        pairs, _ = parse_opts(spec, implied="driver")
        opts = dict(pairs)
        driver = opts.pop("driver", "")
        if driver in MODELS and MODELS[driver].checked_here:
            continue  # a device the board creates (emu.devices.catalog)
        if driver == fault_device.DRIVER:
            try:
                fault = fault_device.parse_fault(opts)
            except ValueError as e:
                raise DriveError(option, str(e)) from None
            if faults is not None:
                faults.append(fault)
            continue
        if driver != "ide-hd":
            raise DriveError(option, f"'{driver}' is not a valid device model name")
        for key in opts:
            if key not in IDE_HD_PROPS:
                raise DriveError(option, f"Property 'ide-hd.{key}' not found")
        if "drive" not in opts:
            raise DriveError(option, "No drive specified")
        if opts["drive"] not in named:
            raise DriveError(option, f"Property 'ide-hd.drive' can't find value '{opts['drive']}'")
        ide.append(named[opts["drive"]])
    return ide[0] if ide else None


def pflash_drives(drives: list[str]) -> list[tuple[str, bool] | None]:
    """``-drive if=pflash``: (file, read-only) per unit (``unit=``/``index=``, else the next free)."""
    units: dict[int, tuple[str, bool]] = {}
    for spec in drives:
        pairs, _ = parse_opts(spec)
        opts = dict(pairs)
        if opts.get("if") != "pflash" or "file" not in opts:
            continue
        unit = int(opts.get("unit", opts.get("index", -1)))
        if unit < 0:
            unit = next(i for i in range(len(units) + 1) if i not in units)
        units[unit] = (opts["file"], opts.get("readonly", "off") in ("on", "true", "yes"))
    return [units.get(i) for i in range(max(units) + 1)] if units else []


def default_cdrom_wanted(devices: list[str]) -> bool:
    """Whether QEMU would add its default CD-ROM: not after a ``-device`` of a disk or CD model
    (default_driver_check). Whether its slot, IDE index 2, is still free is :func:`ide_drives`'s."""
    for spec in devices:
        pairs, _ = parse_opts(spec, implied="driver")
        if dict(pairs).get("driver") in ("ide-cd", "ide-hd", "scsi-cd", "scsi-hd"):
            return False
    return True


#: PIIX IDE: two buses of two units; a drive's index is bus * 2 + unit
IDE_UNITS_PER_BUS = 2


@dataclass(frozen=True)
class IdeDrive:
    """A ``-drive if=ide`` at its slot: ``media`` is ``disk`` or ``cdrom``; ``file`` None when empty."""

    index: int
    media: str
    file: str | None


def _number(option: str, opts: dict[str, str], key: str, default: int) -> int:
    if key not in opts:
        return default
    try:
        return int(opts[key], 0)
    except ValueError:
        raise DriveError(option, f"Parameter '{key}' expects a number") from None


def ide_drives(drives: list[str], ide_buses: int, default_cdrom: bool) -> list[IdeDrive]:
    """The ``-drive if=ide`` drives at the slots QEMU's drive_new gives them (``index=``, or
    ``bus=``/``unit=``, or the first free unit), then QEMU's default CD-ROM at index 2 when
    ``default_cdrom`` and that slot is free. ``ide_buses``: the board's IDE buses (0: a board
    without IDE, whose default interface is ``none``). QEMU's errors: a bad number, ``index``
    with ``bus``/``unit``, a unit too big, a taken slot, a slot the board lacks, an empty disk."""
    out: dict[tuple[int, int], IdeDrive] = {}
    for spec in drives:
        option = f"-drive {spec}"
        pairs, _ = parse_opts(spec)
        opts = dict(pairs)
        if opts.get("if", "ide" if ide_buses else "none") != "ide":
            continue
        bus = _number(option, opts, "bus", 0)
        unit = _number(option, opts, "unit", -1)
        index = _number(option, opts, "index", -1)
        if index != -1:
            if bus != 0 or unit != -1:
                raise DriveError(option, "index cannot be used with bus and unit")
            bus, unit = divmod(index, IDE_UNITS_PER_BUS)
        if unit == -1:
            unit = 0
            while (bus, unit) in out:
                unit += 1
                if unit >= IDE_UNITS_PER_BUS:
                    unit -= IDE_UNITS_PER_BUS
                    bus += 1
        if unit >= IDE_UNITS_PER_BUS:
            raise DriveError(option, f"unit {unit} too big (max is {IDE_UNITS_PER_BUS - 1})")
        if (bus, unit) in out:
            raise DriveError(option, f"drive with bus={bus}, unit={unit} (index={index}) exists")
        if bus < 0 or bus >= ide_buses:
            raise DriveError(option, f"machine type does not support if=ide,bus={bus},unit={unit}")
        media = "cdrom" if opts.get("media") == "cdrom" else "disk"
        out[bus, unit] = IdeDrive(bus * IDE_UNITS_PER_BUS + unit, media, opts.get("file"))
    if default_cdrom and ide_buses > 1 and (1, 0) not in out:
        out[1, 0] = IdeDrive(2, "cdrom", None)
    for drive in out.values():
        if drive.media == "disk" and drive.file is None:
            raise DriveError("", "Device needs media, but drive is empty")
    return sorted(out.values(), key=lambda d: d.index)
