"""What the command line asked for: ``Config``, filled by ``emu.cli`` and read by ``emu.system``.

A leaf of plain data: it imports nothing of ``emu`` but the action record it holds, so the
parser above it and the assembly below it share it without importing each other.
"""
from __future__ import annotations

from typing import Any

from emu.actions import ActionOptions, RunstateActions


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
        #: per entry of ``accels``: the properties of its ``-accel`` option and the option text
        self.accel_props: list[tuple[dict[str, str], str]] = []
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
        self.device_opts: list[Any] = []
        self.device_ids: set[str] = set()
        #: stdout text of a ``-device help`` or ``-L help`` request (printed instead of running)
        self.help_text: str | None = None
        #: lines printed on stderr after the program name (e.g. ``-device X: warning: ...``)
        self.notes: list[str] = []
        self.bios: str | None = None
        self.data_dirs: list[str] = []  # each -L DIR, in order
        self.list_data_dirs = False  # -L help
        self.nodefaults = False
        #: QEMU's default devices, each dropped by -nodefaults or by the options that replace it
        #: (-serial, -parallel, -vga, -nic/-net/-netdev); see emu.defaults
        self.default_serial = self.default_parallel = self.default_vga = self.default_net = True
        self.parallels: list[str] = []  # each -parallel CHARDEV
        self.display = "none"
        self.pidfile: str | None = None
        #: "help" / "version" when asked for; "print-help-text" prints help_text (-device/-L help)
        self.action: str | None = None
        self.fd_bootchk = True  # -no-fd-bootchk clears it
        #: -action, -no-reboot, -no-shutdown and -watchdog-action, merged (emu.actions)
        self.action_opts = ActionOptions()
        self.actions = RunstateActions()
        self.boot_keyval: dict[str, Any] = {}  # every -boot merged (keyval), checked once all are read
        self.boot: object | None = None  # emu.devices.fw_cfg.BootOptions
        self.no_hpet = False
        self.no_acpi = False
        self.nographic = False
        self.rtc_values: list[str] = []  # each -rtc, merged once all options are read
        self.rtc: object | None = None  # emu.devices.rtc.RtcOptions
        #: ``-option value: text`` lines for options accepted but not modelled (printed as warnings)
        self.warnings: list[str] = []
