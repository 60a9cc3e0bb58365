"""QEMU-compatible command line: ``emu-system-x86_64 [options]``.

Parses the options that libqtest, QEMUMachine and QEMUQtestMachine pass (and the common ones
users type) into a ``Config``. Errors use QEMU's wording, ``<prog>: <option> <arg>: <message>``
on stderr and exit status 1. Building and running the system is ``emu.system``'s job.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

from emu.actions import ACTION_HELP_TEXT, ActionError, ActionOptions, RunstateActions
from emu.chardev import ChardevError, parse_opts

VERSION_TEXT = (
    "QEMU emulator version 9.1.0 (qtest-emu 0.1.0)\n"
    "Copyright (c) 2003-2024 Fabrice Bellard and the QEMU Project developers\n"
)

# Options without an argument.
FLAG_OPTIONS = frozenset({
    "S", "nodefaults", "nographic", "no-reboot", "no-shutdown", "enable-kvm", "no-user-config", "snapshot",
    "version", "help", "h", "full-screen", "no-hpet", "s", "mem-prealloc", "daemonize", "preconfig",
    "only-migratable", "no-fd-bootchk", "old-param", "win2k-hack", "no-acpi", "singlestep", "semihosting",
})
# Options with one argument.
ARG_OPTIONS = frozenset({
    "M", "machine", "m", "accel", "qtest", "qtest-log", "qmp", "qmp-pretty", "chardev", "mon", "monitor",
    "display", "vga", "serial", "parallel", "incoming", "audio", "audiodev", "name", "uuid", "add-fd", "run-with",
    "device", "drive", "object", "cpu", "smp", "bios", "L", "boot", "global", "trace", "D", "d", "rtc", "netdev",
    "net", "k", "icount", "overcommit", "msg", "sandbox", "pidfile", "action", "kernel", "append", "initrd",
    "fw_cfg", "smbios", "numa", "mem-path", "blockdev", "hda", "hdb", "hdc", "hdd", "cdrom", "fda", "fdb", "usbdevice",
    "watchdog-action", "compat", "plugin", "seed", "set", "readconfig", "writeconfig", "g", "debugcon", "option-rom",
    "loadvm", "gdb", "fsdev", "virtfs", "iscsi", "tpmdev", "spice", "vnc", "acpitable", "semihosting-config",
})
# Options accepted without effect because what they configure does not exist here, so the
# result is what QEMU gives too: no display, sound, HPET, ACPI or firmware to configure, drives
# are only read, every device migrates, memory and logging options only tune the host side.
IGNORED_OPTIONS = frozenset({
    "audio", "audiodev", "msg", "sandbox", "overcommit", "k", "compat", "seed", "no-user-config",
    "full-screen", "mem-prealloc", "only-migratable", "L", "snapshot",
    "old-param", "win2k-hack", "no-acpi", "D", "trace",
})
# Options accepted that configure something this emulator does not model: a warning says so.
NOT_MODELLED = {
    "cpu": "CPU models are not modelled: the vCPU is Unicorn's x86-64",
    "smp": "one vCPU is emulated",
    "icount": "instruction counting is not modelled: the clock follows host time",
    "mem-path": "guest RAM is anonymous memory",
    "numa": "NUMA is not modelled",
    "netdev": "there are no network devices", "net": "there are no network devices",
    "parallel": "there is no parallel port", "debugcon": "there is no debug console",
    "usbdevice": "there is no USB", "smbios": "there are no SMBIOS tables", "acpitable": "there is no ACPI",
    "option-rom": "option ROMs are not loaded", "fw_cfg": "there is no fw_cfg device",
    "tpmdev": "there is no TPM", "fsdev": "there is no 9p", "virtfs": "there is no 9p", "iscsi": "there is no iSCSI",
    "spice": "there is no display", "vnc": "there is no display", "gdb": "there is no gdbstub",
    "s": "there is no gdbstub", "plugin": "TCG plugins are not supported", "set": "ignored",
    "singlestep": "ignored", "semihosting": "there is no semihosting", "semihosting-config": "there is no semihosting",
    "readconfig": "configuration files are not read", "writeconfig": "configuration files are not written",
    "g": "there is no display", "d": "QEMU's debug log is not produced",
}
# Options that would change what the guest sees in a way we cannot honour: refused.
REFUSED_OPTIONS = {
    "kernel": "direct kernel boot is not supported by this emulator (boot from a disk image)",
    "initrd": "direct kernel boot is not supported by this emulator (boot from a disk image)",
    "append": "direct kernel boot is not supported by this emulator (boot from a disk image)",
    "loadvm": "snapshots are not supported by this emulator",
    "preconfig": "--preconfig is not supported by this emulator",
}
MACHINE_PROPS = frozenset({
    "type", "accel", "usb", "graphics", "dump-guest-core", "mem-merge", "memory-backend", "kernel_irqchip",
    "kernel-irqchip", "smm", "vmport", "hpet", "sata", "pit", "i8042", "acpi", "suppress-vmdesc", "firmware",
    "confidential-guest-support", "hmat", "nvdimm", "max-ram-below-4g", "smbus", "default-bus-bypass-iommu",
    "pcspk-audiodev", "fd-bootindex", "kernel", "initrd", "append", "dtb", "dumpdtb", "phandle-start",
    "pflash0", "pflash1", "sgx-epc", "boot", "memory-encryption", "igd-passthru", "x-oem-id", "x-oem-table-id",
})
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


class ChardevSpec:
    """One ``-chardev BACKEND,id=ID,...``."""

    __slots__ = ("backend", "id", "opts")

    def __init__(self, backend: str, chr_id: str, opts: dict[str, str]) -> None:
        self.backend, self.id, self.opts = backend, chr_id, opts


class Config:
    """Everything the command line asked for (plain attributes; no dataclass: start-up time)."""

    def __init__(self) -> None:
        self.machine = "pc"
        self.machine_props: dict[str, str] = {}
        self.ram_size: int | None = None
        self.accels: list[str] = []
        self.start_paused = False
        self.qtest: str | None = None
        self.qtest_log: str | None = None  # None: stderr, as QEMU without -qtest-log
        self.qtest_objects: list[dict[str, str]] = []
        #: other ``-object``s (TLS credentials, authz): (the option text, its key=value pairs)
        self.user_objects: list[tuple[str, dict[str, str]]] = []
        self.chardevs: list[ChardevSpec] = []
        self.monitors: list[dict[str, str]] = []  # -mon chardev=ID,mode=...,pretty=...
        self.qmp: list[tuple[str, bool]] = []  # (-qmp spec, pretty)
        self.hmp: list[str] = []
        self.serials: list[str] = []
        self.incoming: str | None = None
        self.name: str | None = None
        self.uuid: str | None = None
        self.add_fds: list[dict[str, str]] = []
        #: ``-global DRIVER.PROP=VALUE``: {(driver, prop): value}; only ``migration.*`` is used
        self.globals: dict[tuple[str, str], str] = {}
        self.exit_with_parent = False
        self.drives: list[str] = []
        self.devices: list[str] = []
        #: the QemuOpts form of each ``-device`` (emu.devices.catalog.DeviceOpts), in order
        self.device_opts: list = []
        self.device_ids: set[str] = set()
        #: stdout text of a ``-device help`` request (printed instead of running)
        self.help_text: str | None = None
        #: lines printed on stderr after the program name (e.g. ``-device X: warning: ...``)
        self.notes: list[str] = []
        self.bios: str | None = None
        self.nodefaults = False
        self.display = "none"
        self.pidfile: str | None = None
        self.action: str | None = None  # "help" / "version" when they were asked for
        self.fd_bootchk = True  # -no-fd-bootchk clears it
        #: -action, -no-reboot, -no-shutdown and -watchdog-action, merged (emu.actions)
        self.action_opts = ActionOptions()
        self.actions = RunstateActions()
        self.boot_keyval: dict = {}  # every -boot merged (keyval), checked once all are read
        self.boot: object | None = None  # emu.devices.fw_cfg.BootOptions
        self.no_hpet = False
        self.nographic = False
        self.rtc_values: list[str] = []  # each -rtc, merged once all options are read
        self.rtc: object | None = None  # emu.devices.rtc.RtcOptions
        #: ``-option value: text`` lines for options accepted but not modelled (printed as warnings)
        self.warnings: list[str] = []


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
        if name in FLAG_OPTIONS:
            _apply_flag(cfg, name)
            continue
        if name not in ARG_OPTIONS:
            raise CliError(f"{arg}: invalid option")
        if i >= len(argv):
            raise CliError(f"{arg}: requires an argument")
        value = argv[i]
        i += 1
        try:
            _apply(cfg, name, value)
        except CliError as e:
            if getattr(e, "bare", False):
                raise
            raise CliError(f"{arg} {value}: {e}") from None
    _device_help(cfg)
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
    for message, hint in cfg.rtc.warnings:  # type: ignore[attr-defined]
        cfg.notes.append(f"{message}\n{hint}".rstrip("\n"))


def _device_help(cfg: Config) -> None:
    """``-device help`` / ``-device NAME,help``: QEMU answers once all options are read, on
    stdout (an unknown NAME is reported on stderr), and exits 0 without building a machine."""
    from emu.devices.catalog import DeviceSpecError, device_help

    for spec, opts in zip(cfg.devices, cfg.device_opts):
        try:
            text = device_help(opts)
        except DeviceSpecError as e:
            cfg.action = "device-help"
            cfg.notes.append(f"-device {spec}: {e}")
            return
        if text is not None:
            cfg.action = "device-help"
            cfg.help_text = text
            return


def _bare(message: str) -> CliError:
    """An error QEMU prints without the ``-option value:`` location."""
    err = CliError(message)
    err.bare = True  # type: ignore[attr-defined]
    return err


def _apply_flag(cfg: Config, name: str) -> None:
    if name == "S":
        cfg.start_paused = True
    elif name == "nodefaults":
        cfg.nodefaults = True
    elif name == "enable-kvm":
        cfg.accels.append("kvm")
    elif name in ("version",):
        cfg.action = "version"
    elif name in ("help", "h"):
        cfg.action = "help"
    elif name == "daemonize":
        raise _bare("-daemonize is not supported by this emulator")
    elif name == "no-reboot":
        _add_action(cfg, "-no-reboot", "reboot=shutdown")
    elif name == "no-shutdown":
        _add_action(cfg, "-no-shutdown", "shutdown=pause")
    elif name == "no-fd-bootchk":
        cfg.fd_bootchk = False
    elif name == "no-hpet":
        cfg.no_hpet = True
    elif name == "nographic":
        cfg.nographic = True
    elif name in REFUSED_OPTIONS:
        raise _bare(f"-{name}: {REFUSED_OPTIONS[name]}")
    elif name in NOT_MODELLED:
        cfg.warnings.append(f"-{name}: {NOT_MODELLED[name]}")


def _apply(cfg: Config, name: str, value: str) -> None:
    """One option with its argument, through the option table."""
    handler = OPTION_HANDLERS.get(name)
    if handler is not None:
        handler(cfg, name, value)
    elif name in REFUSED_OPTIONS:
        raise CliError(REFUSED_OPTIONS[name])
    elif name in NOT_MODELLED:
        cfg.warnings.append(f"-{name} {value}: {NOT_MODELLED[name]}")
    # else: one of IGNORED_OPTIONS, nothing here for it to configure


def _opt_machine(cfg: Config, name: str, value: str) -> None:
    opts = _opts(value, implied="type")
    for key in opts:
        if key not in MACHINE_PROPS:
            from emu.machine import find_machine

            mtype = opts.get("type", cfg.machine)
            mcls = find_machine(mtype)
            raise _bare(f"Property '{mcls.name if mcls else mtype}-machine.{key}' not found")
    if "type" in opts:
        cfg.machine = opts.pop("type")
    if "accel" in opts:
        cfg.accels.extend(a for a in opts.pop("accel").split(":") if a)
    cfg.machine_props.update(opts)


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
    else:  # -hda FILE ... -cdrom FILE
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
        cfg.warnings.append(f"-smp {value}: {NOT_MODELLED['smp']}")


def _setter(attr: str) -> Callable[[Config, str, str], None]:
    """A handler that stores the argument as it is."""
    return lambda cfg, name, value: setattr(cfg, attr, value)


def _appender(attr: str) -> Callable[[Config, str, str], None]:
    """A handler for a repeatable option: each argument is appended to a list."""
    return lambda cfg, name, value: getattr(cfg, attr).append(value)


#: option name -> handler(cfg, name, value); options not here are refused, warned about or ignored
OPTION_HANDLERS: dict[str, Callable[[Config, str, str], None]] = {
    "M": _opt_machine, "machine": _opt_machine, "m": _opt_memory,
    "accel": lambda cfg, name, value: cfg.accels.append(_opts(value, implied="accel").get("accel", "")),
    "qtest": _setter("qtest"), "qtest-log": _setter("qtest_log"), "chardev": _opt_chardev, "mon": _opt_mon,
    "qmp": lambda cfg, name, value: cfg.qmp.append((value, False)),
    "qmp-pretty": lambda cfg, name, value: cfg.qmp.append((value, True)),
    "monitor": _opt_monitor, "serial": _appender("serials"), "display": _opt_display, "vga": _opt_vga,
    "incoming": _setter("incoming"), "name": lambda cfg, name, value: setattr(
        cfg, "name", _opts(value, implied="guest").get("guest")),
    "uuid": _opt_uuid, "global": _opt_global, "add-fd": _opt_add_fd, "run-with": _opt_run_with,
    "object": _opt_object, "device": _opt_device, "bios": _setter("bios"), "rtc": _appender("rtc_values"),
    "boot": _opt_boot, "action": _opt_action, "watchdog-action": _opt_action, "pidfile": _setter("pidfile"),
    "smp": _opt_smp,
    **dict.fromkeys(("drive", "hda", "hdb", "hdc", "hdd", "cdrom", "blockdev"), _opt_drive),
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
    if cfg.action == "device-help":
        sys.stdout.write(cfg.help_text or "")
        return 0
    from emu.system import run_system

    status = run_system(cfg, prog)
    # Exit at once, as QEMU does: Python's finalization (unmapping guest RAM, module teardown)
    # took up to 0.2 s, a window in which a SIGTERM (libqtest's kill_qemu after a failed
    # migration) found the default action back and killed the process by the signal.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
