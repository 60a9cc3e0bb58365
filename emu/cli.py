"""QEMU-compatible command line: ``emu-system-x86_64 [options]``.

Parses the options that libqtest, QEMUMachine and QEMUQtestMachine pass (and the common ones
users type) into a ``Config``. Errors use QEMU's wording, ``<prog>: <option> <arg>: <message>``
on stderr and exit status 1. Building and running the system is ``emu.assembly``'s job.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

from emu.actions import ACTION_HELP_TEXT, ActionError
from emu.chardev import ChardevError, parse_opts
from emu.config import ChardevSpec, Config

VERSION_TEXT = (
    "QEMU emulator version 9.1.0 (qtest-emu 0.1.0)\n"
    "Copyright (c) 2003-2024 Fabrice Bellard and the QEMU Project developers\n"
)

MACHINE_PROPS = frozenset({
    "type", "accel", "usb", "graphics", "dump-guest-core", "mem-merge", "memory-backend", "kernel_irqchip",
    "kernel-irqchip", "smm", "vmport", "hpet", "sata", "pit", "i8042", "acpi", "suppress-vmdesc", "firmware",
    "confidential-guest-support", "hmat", "nvdimm", "max-ram-below-4g", "smbus", "default-bus-bypass-iommu",
    "pcspk-audiodev", "fd-bootindex", "kernel", "initrd", "append", "dtb", "dumpdtb", "phandle-start",
    "pflash0", "pflash1", "sgx-epc", "boot", "memory-encryption", "igd-passthru", "x-oem-id", "x-oem-table-id",
})
# -machine properties that take effect here (board options, QOM properties of the machine)
MACHINE_PROPS_HONOURED = frozenset({"type", "accel", "usb", "graphics", "dump-guest-core", "mem-merge", "hpet", "acpi",
                                    "x-oem-id", "x-oem-table-id"})
# the others, with the values that match this board as it is (QEMU's default here, or what the
# board lacks anyway); any other value configures something not modelled and is warned about
_ON, _OFF = frozenset({"on", "yes", "true", "auto"}), frozenset({"off", "no", "false"})
MACHINE_PROPS_AS_IS: dict[str, frozenset[str]] = {
    "smm": _ON, "pit": _ON, "i8042": _ON, "smbus": _ON, "vmport": _OFF, "suppress-vmdesc": _OFF,
    "nvdimm": _OFF, "hmat": _OFF, "igd-passthru": _OFF, "default-bus-bypass-iommu": _OFF,
    "kernel_irqchip": _OFF, "kernel-irqchip": _OFF, "kernel": frozenset({""}),
    "initrd": frozenset({""}), "append": frozenset({""}), "dtb": frozenset({""}),
}
UUID_RE = re.compile(r"\A[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
SIZE_HELP = ("Parameter 'size' expects a non-negative number below 2^64\n"
             "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
             "and exabytes, respectively.")


class CliError(Exception):
    """A command-line error; ``str()`` is the message without the program name."""


class EarlyHelp(Exception):
    """A help request met while reading the options (``-boot help``): QEMU prints it on stdout
    and exits at once, with ``status`` (0, but 1 for ``-action help``)."""

    def __init__(self, text: str, status: int = 0) -> None:
        super().__init__(text)
        self.status = status


def parse_size(text: str, default_suffix: str = "M") -> int:
    """qemu_strtosz: a number (possibly fractional) with an optional k/M/G/T/P/E suffix."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)([kKmMgGtTpPeEbB]?)", text)
    if not m:
        raise ValueError(text)
    num, suffix = m.group(1), (m.group(2) or default_suffix).upper()
    mult = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}[suffix]
    if "." in num:
        if suffix == "B":
            raise ValueError(text)
        value = int(float(num) * mult)
    else:
        value = int(num) * mult
    if value >= 1 << 64:
        raise ValueError(text)
    return value


def _opts(text: str, implied: str | None = None) -> dict[str, str]:
    pairs, flags = parse_opts(text, implied)
    opts = dict(pairs)
    for flag in flags:
        opts[flag[2:] if flag.startswith("no") else flag] = "off" if flag.startswith("no") else "on"
    return opts


def parse_args(argv: list[str]) -> Config:
    """Parses argv (without the program name). Raises CliError with QEMU's message."""
    cfg = Config()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            raise CliError(f"{arg}: Could not open '{arg}': No such file or directory")
        name = arg[2:] if arg.startswith("--") else arg[1:]
        option = OPTIONS.get(name)
        if option is None:
            raise CliError(f"{arg}: invalid option")
        if option.on_arg is None:
            assert option.on_flag is not None
            option.on_flag(cfg, name)
            continue
        if i >= len(argv):
            raise CliError(f"{arg}: requires an argument")
        value = argv[i]
        i += 1
        try:
            option.on_arg(cfg, name, value)
        except CliError as e:
            if getattr(e, "bare", False):
                raise
            raise CliError(f"{arg} {value}: {e}") from None
    _device_help(cfg)
    if cfg.list_data_dirs and cfg.action is None:  # after -device help, as QEMU checks them
        from emu.firmware_path import data_dirs

        cfg.action = "print-help-text"
        cfg.help_text = "".join(f"{d}\n" for d in data_dirs(cfg.data_dirs))
    if cfg.rtc_values:
        _rtc(cfg)
    if cfg.boot_keyval:
        from emu.devices.fw_cfg import BootOptionError, boot_options_from_keyval

        try:
            cfg.boot = boot_options_from_keyval(cfg.boot_keyval)
        except BootOptionError as e:
            raise _bare(str(e)) from None
    if cfg.action_opts.where is not None:
        _resolve_actions(cfg)
    return cfg


def _resolve_actions(cfg: Config) -> None:
    """QEMU runs ``set-action`` with the merged group once the options are read; an error points
    at the group's first option."""
    where = cfg.action_opts.where
    try:
        cfg.actions = cfg.action_opts.resolve()
    except ActionError as e:
        raise _bare(f"{where}: {e}") from None
    if cfg.actions.watchdog == "inject-nmi":
        raise _bare(f"{where}: the watchdog action inject-nmi is not supported by this emulator (no NMI)")
    for message, hint in cfg.action_opts.warnings:
        cfg.notes.append(f"{message}\n{hint}")


def _add_action(cfg: Config, where: str, text: str) -> None:
    """One option of the ``action`` group; an unknown key fails at once (after the
    option's deprecation warnings, as QEMU prints them), ``help`` prints the keys and exits 1."""
    try:
        cfg.action_opts.add(where, text)
    except ActionError as e:
        # the option's warnings were printed before the error: the error's own prefix comes last
        shown = "".join(f"{m}\n{h}\n{prog_name()}: " for m, h in cfg.action_opts.warnings)
        raise _bare(shown + f"{where}: {e}") from None
    if cfg.action_opts.wants_help:
        raise EarlyHelp(ACTION_HELP_TEXT, status=1)


def _rtc(cfg: Config) -> None:
    """All ``-rtc`` options merge into one, checked once all options are read (as QEMU does)."""
    from emu.devices.rtc import RtcOptionError, parse_rtc_option

    try:
        cfg.rtc = parse_rtc_option(*cfg.rtc_values)
    except RtcOptionError as e:
        raise _bare(str(e) + ("\n" + e.hint.rstrip("\n") if e.hint else "")) from None
    for message, hint in cfg.rtc.warnings:
        cfg.notes.append(f"{message}\n{hint}".rstrip("\n"))


def _device_help(cfg: Config) -> None:
    """``-device help`` / ``-device NAME,help``: QEMU answers once all options are read, on
    stdout (an unknown NAME is reported on stderr), and exits 0 without building a machine."""
    from emu.devices.catalog import DeviceSpecError, device_help

    for spec, opts in zip(cfg.devices, cfg.device_opts):
        try:
            text = device_help(opts)
        except DeviceSpecError as e:
            cfg.action = "print-help-text"
            cfg.notes.append(f"-device {spec}: {e}")
            return
        if text is not None:
            cfg.action = "print-help-text"
            cfg.help_text = text
            return


def _opt_data_dir(cfg: Config, name: str, value: str) -> None:
    """``-L DIR`` adds a firmware directory (searched before the built-in ones); ``-L help``
    lists them all once the options are read."""
    if value in ("help", "?"):
        cfg.list_data_dirs = True
    else:
        cfg.data_dirs.append(value)


def _bare(message: str) -> CliError:
    """An error QEMU prints without the ``-option value:`` location."""
    err = CliError(message)
    err.bare = True  # type: ignore[attr-defined]
    return err


def _opt_machine(cfg: Config, name: str, value: str) -> None:
    opts = _opts(value, implied="type")
    for key in opts:
        if key not in MACHINE_PROPS:
            from emu.machine import find_machine

            mtype = opts.get("type", cfg.machine)
            mcls = find_machine(mtype)
            raise _bare(f"Property '{mcls.name if mcls else mtype}-machine.{key}' not found")
    for key, val in opts.items():
        if key not in MACHINE_PROPS_HONOURED and val not in MACHINE_PROPS_AS_IS.get(key, ()):
            cfg.warnings.append(f"-machine {key}={val}: not modelled by this emulator, ignored")
    if "type" in opts:
        cfg.machine = opts.pop("type")
    if "accel" in opts:
        for a in opts.pop("accel").split(":"):
            if a:
                cfg.accels.append(a)
                cfg.accel_props.append(({}, f"-machine accel={a}"))
    cfg.machine_props.update(opts)


def _opt_accel(cfg: Config, name: str, value: str) -> None:
    """``-accel NAME[,prop=value...]``: the properties are checked when the accelerator is tried."""
    opts = _opts(value, implied="accel")
    cfg.accels.append(opts.pop("accel", ""))
    cfg.accel_props.append((opts, f"-accel {value}"))


def _opt_enable_kvm(cfg: Config, name: str) -> None:
    cfg.accels.append("kvm")
    cfg.accel_props.append(({}, "-enable-kvm"))


def _opt_memory(cfg: Config, name: str, value: str) -> None:
    opts = _opts(value, implied="size")
    try:
        cfg.ram_size = parse_size(opts.get("size", "0"))
    except ValueError:
        raise CliError(SIZE_HELP) from None


def _opt_chardev(cfg: Config, name: str, value: str) -> None:
    pairs, flags = parse_opts(value, implied="backend")
    opts = dict(pairs)
    for flag in flags:
        if flag.startswith("no") and flag[2:] in ("wait", "server", "delay"):
            opts[flag[2:]] = "off"
        else:
            opts[flag] = "on"
    backend = opts.pop("backend", "")
    if "id" not in opts:
        raise CliError("chardev: no id specified")
    cfg.chardevs.append(ChardevSpec(backend, opts.pop("id"), opts))


def _opt_mon(cfg: Config, name: str, value: str) -> None:
    opts = _opts(value, implied="chardev")
    if "chardev" not in opts:
        raise CliError("Parameter 'chardev' is missing")
    cfg.monitors.append(opts)


def _opt_monitor(cfg: Config, name: str, value: str) -> None:
    if value not in ("none", "null"):
        cfg.hmp.append(value)


def _opt_display(cfg: Config, name: str, value: str) -> None:
    disp = value.split(",", 1)[0]
    if disp not in ("none", "default"):
        raise CliError(f"Display '{disp}' is not available")
    cfg.display = disp


def _opt_vga(cfg: Config, name: str, value: str) -> None:
    if value not in ("none", "std", "cirrus", "vmware", "qxl", "virtio"):
        raise CliError(f"{value}: unknown vga type")
    cfg.default_vga = False
    if value != "none":
        cfg.warnings.append(f"-vga {value}: {_NO_DISPLAY}")


def _opt_serial(cfg: Config, name: str, value: str) -> None:
    cfg.serials.append(value)
    cfg.default_serial = False


def _opt_parallel(cfg: Config, name: str, value: str) -> None:
    cfg.parallels.append(value)
    cfg.default_parallel = False


def _opt_net(cfg: Config, name: str, value: str) -> None:
    """-nic, -net and -netdev replace QEMU's default NIC; only ``-nic none`` / ``-net none``
    (no network at all) is what this emulator has."""
    cfg.default_net = False
    if not (name in ("nic", "net") and value.split(",", 1)[0] == "none"):
        cfg.warnings.append(f"-{name} {value}: {_NO_NET}")


def _opt_uuid(cfg: Config, name: str, value: str) -> None:
    if not UUID_RE.match(value):
        raise CliError("failed to parse UUID string: wrong format")
    cfg.uuid = value.lower()


def _opt_global(cfg: Config, name: str, value: str) -> None:
    # qemu_global_option: DRIVER.PROPERTY=VALUE, or driver=,property=,value=
    key, eq, val = value.partition("=")
    if eq and "." in key and not key.startswith(("driver", "property", "value")):
        driver, prop = key.split(".", 1)
    else:
        opts = _opts(value)
        driver, prop, val = opts.get("driver", ""), opts.get("property", ""), opts.get("value", "")
    cfg.globals[(driver, prop)] = val


def _opt_add_fd(cfg: Config, name: str, value: str) -> None:
    opts = _opts(value)
    for key in ("fd", "set"):
        if key in opts and not opts[key].removeprefix("-").isdigit():
            raise CliError(f"Parameter '{key}' expects a number")
    if int(opts.get("fd", -1)) < 0:
        raise CliError("fd option is required and must be non-negative")
    fd = int(opts["fd"])
    if fd <= 2:
        raise CliError("fd cannot be a standard I/O stream")
    try:
        os.fstat(fd)
    except OSError:
        raise CliError("fd is not valid or already in use") from None
    if int(opts.get("set", -1)) < 0:
        raise CliError("set option is required and must be non-negative")
    cfg.add_fds.append(opts)


def _opt_run_with(cfg: Config, name: str, value: str) -> None:
    for key, val in _opts(value).items():
        if key == "exit-with-parent":
            cfg.exit_with_parent = val in ("on", "yes", "true")
        elif key not in ("async-teardown", "chroot", "user"):
            raise CliError(f"Invalid parameter '{key}'")


def _opt_object(cfg: Config, name: str, value: str) -> None:
    opts = _opts(value, implied="qom-type")
    qom_type = opts.get("qom-type", "")
    from emu.tls.registry import OBJECT_TYPES

    if qom_type != "qtest" and qom_type not in OBJECT_TYPES:
        raise CliError(f"Parameter 'qom-type' does not accept value '{qom_type}'")
    if "id" not in opts:
        raise CliError("Parameter 'id' is missing")
    if qom_type == "qtest":
        cfg.qtest_objects.append(opts)
    else:  # TLS credentials and authz, created once the machine exists
        cfg.user_objects.append((value, opts))


def _opt_device(cfg: Config, name: str, value: str) -> None:
    from emu.devices.catalog import DeviceSpecError, parse_device_opts

    try:
        opts = parse_device_opts(value, cfg.device_ids)
    except DeviceSpecError as e:
        raise CliError(str(e) + (f"\n{e.hint}" if e.hint else "")) from None
    for message, hint in opts.warnings:
        cfg.notes.append(f"-device {value}: warning: {message}\n{hint}")
    cfg.devices.append(value)
    cfg.device_opts.append(opts)


def _opt_drive(cfg: Config, name: str, value: str) -> None:
    if name in ("drive", "blockdev"):
        cfg.drives.append(value)
    elif name == "cdrom":  # QEMU's CDROM_OPTS at IDE index 2
        cfg.drives.append(f"file={value},index=2,media=cdrom")
    else:  # -hda FILE ... -hdd FILE
        cfg.drives.append(f"file={value},index={ord(name[-1]) - ord('a')}")


def _opt_boot(cfg: Config, name: str, value: str) -> None:
    from emu.devices.fw_cfg import BOOT_HELP_TEXT, BootOptionError, merge_boot_keyval, parse_boot_keyval

    try:
        values, wants_help = parse_boot_keyval(value)
        merge_boot_keyval(cfg.boot_keyval, values)
    except BootOptionError as e:
        raise _bare(str(e)) from None
    if wants_help:
        raise EarlyHelp(BOOT_HELP_TEXT)


def _opt_action(cfg: Config, name: str, value: str) -> None:
    """``-action K=V,...``; ``-watchdog-action V`` is ``watchdog=V`` (set as is, commas included)."""
    text = value if name == "action" else "watchdog=" + value.replace(",", ",,")
    _add_action(cfg, f"-{name} {value}", text)


def _opt_smp(cfg: Config, name: str, value: str) -> None:
    cpus = _opts(value, implied="cpus").get("cpus", "1")
    if cpus not in ("1", ""):
        cfg.warnings.append(f"-smp {value}: one vCPU is emulated")


FlagHandler = Callable[[Config, str], None]  # (config, option name)
ArgHandler = Callable[[Config, str, str], None]  # (config, option name, argument)


class Option:
    """One command-line option: whether it takes an argument and what it does."""

    __slots__ = ("on_arg", "on_flag")

    def __init__(self, on_flag: FlagHandler | None, on_arg: ArgHandler | None) -> None:
        self.on_flag, self.on_arg = on_flag, on_arg


def flag(handler: FlagHandler) -> Option:
    """An option without an argument."""
    return Option(handler, None)


def arg(handler: ArgHandler) -> Option:
    """An option with one argument."""
    return Option(None, handler)


def ignored(takes_arg: bool) -> Option:
    """Accepted without effect: what it configures does not exist here, so the result is what
    QEMU gives too (no display, sound, HPET, ACPI or firmware to configure; drives are only read;
    every device migrates; memory and logging options only tune the host side)."""
    return arg(lambda cfg, name, value: None) if takes_arg else flag(lambda cfg, name: None)


def not_modelled(takes_arg: bool, why: str) -> Option:
    """Accepted, but it configures something this emulator does not model: a warning says so."""
    if takes_arg:
        return arg(lambda cfg, name, value: cfg.warnings.append(f"-{name} {value}: {why}"))
    return flag(lambda cfg, name: cfg.warnings.append(f"-{name}: {why}"))


def refused(takes_arg: bool, why: str) -> Option:
    """Would change what the guest sees in a way we cannot honour: refused."""
    def refuse_arg(cfg: Config, name: str, value: str) -> None:
        raise CliError(why)  # located as "-name value: " by the caller

    def refuse_flag(cfg: Config, name: str) -> None:
        raise _bare(f"-{name}: {why}")
    return arg(refuse_arg) if takes_arg else flag(refuse_flag)


def _set(attr: str, value: object = True) -> FlagHandler:
    """A flag that sets ``cfg.<attr>`` to ``value``."""
    return lambda cfg, name: setattr(cfg, attr, value)


def _store(attr: str) -> ArgHandler:
    """An option whose argument is stored as it is."""
    return lambda cfg, name, value: setattr(cfg, attr, value)


def _append(attr: str) -> ArgHandler:
    """A repeatable option: each argument is appended to a list."""
    return lambda cfg, name, value: getattr(cfg, attr).append(value)


def _daemonize(cfg: Config, name: str) -> None:
    raise _bare("-daemonize is not supported by this emulator")


_NO_KERNEL_BOOT = "direct kernel boot is not supported by this emulator (boot from a disk image)"
_NO_DISPLAY, _NO_9P, _NO_NET = "there is no display", "there is no 9p", "there are no network devices"
_NO_SEMIHOSTING, _NO_GDB = "there is no semihosting", "there is no gdbstub"

#: every option the command line knows; any other is an invalid option
OPTIONS: dict[str, Option] = {
    # the machine, its memory and accelerators
    "M": arg(_opt_machine), "machine": arg(_opt_machine), "m": arg(_opt_memory),
    "accel": arg(_opt_accel),
    "enable-kvm": flag(_opt_enable_kvm),
    "S": flag(_set("start_paused")), "nodefaults": flag(_set("nodefaults")),
    "name": arg(lambda cfg, name, value: setattr(cfg, "name", _opts(value, implied="guest").get("guest"))),
    "uuid": arg(_opt_uuid), "global": arg(_opt_global), "run-with": arg(_opt_run_with),
    "bios": arg(_store("bios")), "L": arg(_opt_data_dir), "rtc": arg(_append("rtc_values")), "boot": arg(_opt_boot),
    "no-fd-bootchk": flag(_set("fd_bootchk", False)), "no-hpet": flag(_set("no_hpet")),
    "no-acpi": flag(_set("no_acpi")),
    "smp": arg(_opt_smp), "pidfile": arg(_store("pidfile")),
    "version": flag(_set("action", "version")), "help": flag(_set("action", "help")),
    "h": flag(_set("action", "help")), "daemonize": flag(_daemonize),
    # runstate actions
    "action": arg(_opt_action), "watchdog-action": arg(_opt_action),
    "no-reboot": flag(lambda cfg, name: _add_action(cfg, "-no-reboot", "reboot=shutdown")),
    "no-shutdown": flag(lambda cfg, name: _add_action(cfg, "-no-shutdown", "shutdown=pause")),
    # front ends and character devices
    "qtest": arg(_store("qtest")), "qtest-log": arg(_store("qtest_log")), "chardev": arg(_opt_chardev),
    "mon": arg(_opt_mon), "monitor": arg(_opt_monitor), "serial": arg(_opt_serial),
    "parallel": arg(_opt_parallel),
    "qmp": arg(lambda cfg, name, value: cfg.qmp.append((value, False))),
    "qmp-pretty": arg(lambda cfg, name, value: cfg.qmp.append((value, True))),
    "display": arg(_opt_display), "vga": arg(_opt_vga), "nographic": flag(_set("nographic")),
    # objects, devices, drives, migration
    "object": arg(_opt_object), "device": arg(_opt_device), "add-fd": arg(_opt_add_fd),
    "incoming": arg(_store("incoming")),
    **dict.fromkeys(("drive", "hda", "hdb", "hdc", "hdd", "cdrom", "blockdev"), arg(_opt_drive)),
    # accepted without effect
    **dict.fromkeys(("audio", "audiodev", "msg", "sandbox", "overcommit", "k", "compat", "seed", "D",
                     "trace"), ignored(True)),
    **dict.fromkeys(("no-user-config", "full-screen", "mem-prealloc", "only-migratable", "snapshot", "old-param",
                     "win2k-hack"), ignored(False)),
    # accepted with a warning: not modelled
    "cpu": not_modelled(True, "CPU models are not modelled: the vCPU is Unicorn's x86-64"),
    "icount": not_modelled(True, "instruction counting is not modelled: the clock follows host time"),
    "mem-path": not_modelled(True, "guest RAM is anonymous memory"),
    "numa": not_modelled(True, "NUMA is not modelled"),
    "netdev": arg(_opt_net), "net": arg(_opt_net), "nic": arg(_opt_net),
    "debugcon": not_modelled(True, "there is no debug console"), "usbdevice": not_modelled(True, "there is no USB"),
    "option-rom": not_modelled(True, "option ROMs are not loaded"),
    "fw_cfg": not_modelled(True, "there is no fw_cfg device"), "tpmdev": not_modelled(True, "there is no TPM"),
    "fsdev": not_modelled(True, _NO_9P), "virtfs": not_modelled(True, _NO_9P),
    "iscsi": not_modelled(True, "there is no iSCSI"), "spice": not_modelled(True, _NO_DISPLAY),
    "vnc": not_modelled(True, _NO_DISPLAY), "g": not_modelled(True, _NO_DISPLAY),
    "gdb": not_modelled(True, _NO_GDB), "s": not_modelled(False, _NO_GDB),
    "plugin": not_modelled(True, "TCG plugins are not supported"), "set": not_modelled(True, "ignored"),
    "singlestep": not_modelled(False, "ignored"), "semihosting": not_modelled(False, _NO_SEMIHOSTING),
    "semihosting-config": not_modelled(True, _NO_SEMIHOSTING),
    "readconfig": not_modelled(True, "configuration files are not read"),
    "writeconfig": not_modelled(True, "configuration files are not written"),
    "d": not_modelled(True, "QEMU's debug log is not produced"),
    # refused
    "acpitable": refused(True, "-acpitable is not supported by this emulator: the pc board publishes QEMU's "
                         "own ACPI tables only"),
    "smbios": refused(True, "-smbios is not supported by this emulator: the pc board publishes QEMU's default "
                      "SMBIOS tables only"),
    "kernel": refused(True, _NO_KERNEL_BOOT), "initrd": refused(True, _NO_KERNEL_BOOT),
    "append": refused(True, _NO_KERNEL_BOOT), "loadvm": refused(True, "snapshots are not supported by this emulator"),
    "preconfig": refused(False, "--preconfig is not supported by this emulator"),
    # -drive if=floppy is refused the same way (emu.drives): the FDC exists, floppy images are not attached
    **dict.fromkeys(("fda", "fdb"), refused(True, "bus type 'floppy' is not supported by this emulator")),
}


def usage(prog: str) -> str:
    return (
        f"usage: {prog} [options]\n\n"
        "QEMU-compatible emulator for qtest (x86_64 'pc' and 'none' machines).\n\n"
        "Common options:\n"
        "-machine|-M TYPE[,prop=value...]  machine type (pc, none; 'help' lists them)\n"
        "-m SIZE                 RAM size (default unit MiB)\n"
        "-accel qtest|tcg|kvm    accelerators, tried in order\n"
        "-qtest CHARDEV          qtest protocol server on CHARDEV (unix:PATH, tcp:H:P, stdio, chardev:ID)\n"
        "-qtest-log FILE|none    qtest log (default stderr)\n"
        "-qmp CHARDEV            QMP monitor; also -chardev ...,id=X -mon chardev=X,mode=control\n"
        "-chardev socket|stdio|file|null,id=ID,...\n"
        "-S                      do not start the VM\n"
        "-display none -vga none -nodefaults -name NAME -uuid UUID -add-fd fd=N,set=S -incoming URI\n"
        "-version                print the version\n"
    )


def prog_name() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "emu-system-x86_64"


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point. Returns the status for ``-version``/``-help``/command-line
    errors; once a system ran, the process ends here with its status (``os._exit``)."""
    args = sys.argv[1:] if argv is None else argv
    prog = prog_name()
    try:
        cfg = parse_args(args)
    except (CliError, ChardevError) as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return 1
    except EarlyHelp as e:
        sys.stdout.write(str(e))
        return e.status
    if cfg.action == "version":
        sys.stdout.write(VERSION_TEXT)
        return 0
    if cfg.action == "help":
        sys.stdout.write(usage(prog))
        return 0
    for note in cfg.notes:
        sys.stderr.write(f"{prog}: {note}\n")
    if cfg.action == "print-help-text":
        sys.stdout.write(cfg.help_text or "")
        return 0
    from emu.assembly import run_system

    status = run_system(cfg, prog)
    # Exit at once, as QEMU does: Python's finalization (unmapping guest RAM, module teardown)
    # took up to 0.2 s, a window in which a SIGTERM (libqtest's kill_qemu after a failed
    # migration) found the default action back and killed the process by the signal.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
